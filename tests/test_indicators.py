"""Streaming indicators: equal to straightforward reference definitions, however the rows are batched."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utp.core.indicators import Ema, Returns, Rsi, Sma
from utp.storage.datasets import dataset


@pytest.fixture(scope="module")
def closes() -> np.ndarray:
    return dataset("goog").bars()["close"].to_numpy()


def reference_sma(x: np.ndarray, n: int) -> tuple[list[float], list[bool]]:
    values = [float(np.mean(x[max(0, i - n + 1) : i + 1])) for i in range(len(x))]
    return values, [i + 1 >= n for i in range(len(x))]


def reference_ema(x: np.ndarray, n: int) -> tuple[list[float], list[bool]]:
    """Lean master / TA-Lib: 0 before ready, SMA of the first n at n, then the recurrence."""
    k, values, current = 2 / (n + 1), [], 0.0
    for i, v in enumerate(x):
        if i + 1 < n:
            current = 0.0
        elif i + 1 == n:
            current = float(np.mean(x[:n]))
        else:
            current = v * k + current * (1 - k)
        values.append(current)
    return values, [i + 1 >= n for i in range(len(x))]


def reference_rsi(x: np.ndarray, n: int) -> tuple[list[float], list[bool]]:
    """Wilder RSI as Lean defines it, including its values during warm-up."""
    gains, losses, values = [], [], []
    avg_gain = avg_loss = 0.0
    for i in range(len(x)):
        if i > 0:
            change = x[i] - x[i - 1]
            gains.append(max(change, 0.0))
            losses.append(max(-change, 0.0))
        m = len(gains)
        if 0 < m <= n:
            avg_gain, avg_loss = sum(gains) / m, sum(losses) / m
        elif m > n:
            avg_gain = (avg_gain * (n - 1) + gains[-1]) / n
            avg_loss = (avg_loss * (n - 1) + losses[-1]) / n
        values.append(100.0 if round(avg_loss, 10) == 0 else 100.0 - 100.0 / (1.0 + avg_gain / avg_loss))
    return values, [i >= n for i in range(len(x))]


@pytest.mark.parametrize(
    ("make", "reference", "period"),
    [(Sma, reference_sma, 20), (Sma, reference_sma, 50), (Ema, reference_ema, 12), (Ema, reference_ema, 26),
     (Rsi, reference_rsi, 14), (Rsi, reference_rsi, 2)],  # fmt: skip
)
def test_indicator_matches_reference_on_goog(make, reference, period: int, closes: np.ndarray) -> None:
    update = make(1, period).update(np.zeros(closes.size, np.int32), closes)
    expected, ready = reference(closes, period)
    np.testing.assert_allclose(update.value, expected, rtol=1e-9, atol=1e-9)
    assert update.ready.tolist() == ready
    assert np.isnan(update.where_ready()[: period - 1]).all()


@pytest.mark.parametrize("make", [lambda: Sma(3, 20), lambda: Ema(3, 12), lambda: Rsi(3, 14)])
def test_streaming_equals_batch_for_any_chunking_and_interleaving(make, closes: np.ndarray) -> None:
    # Three symbols: the GOOG closes, scaled copies, interleaved row by row as a live feed would be.
    x = np.stack([closes, closes * 1.5, closes[::-1].copy()], axis=1).reshape(-1)
    sid = np.tile(np.arange(3, dtype=np.int32), closes.size)
    whole = make().update(sid, x)
    rng = np.random.default_rng(7)
    chunked = make()
    cuts = np.sort(rng.choice(np.arange(1, x.size), size=200, replace=False))
    values = np.concatenate([chunked.update(s, v).value for s, v in zip(np.split(sid, cuts), np.split(x, cuts), strict=True)])
    assert np.array_equal(values, whole.value)  # bit for bit
    alone = make().update(np.zeros(closes.size, np.int32), closes[::-1].copy())
    assert np.array_equal(alone.value, whole.value[2::3])


def test_returns_over_horizons(closes: np.ndarray) -> None:
    out = Returns(1, (1, 5)).update(np.zeros(closes.size, np.int32), closes)
    assert math.isnan(out[0, 0]) and math.isnan(out[4, 1])
    np.testing.assert_allclose(out[1:, 0], closes[1:] / closes[:-1] - 1, rtol=1e-12)
    np.testing.assert_allclose(out[5:, 1], closes[5:] / closes[:-5] - 1, rtol=1e-12)


def test_symbol_index_outside_the_universe_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the universe"):
        Ema(2, 3).update(np.array([2], np.int32), np.array([1.0]))
