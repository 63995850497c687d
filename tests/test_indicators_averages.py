"""Moving averages, RSI and MACD: equal to TA-Lib on real and synthetic bars; streaming = batch."""

from __future__ import annotations

import numpy as np
import pytest
import talib

from tests.indicator_harness import assert_matches_reference, assert_streaming_equals_batch, goog_bars, synthetic
from utp.core.indicators import (
    Dema, Ema, Macd, Rsi, Sma, Tema, Wma, dema, ema, macd, rsi, sma, tema, wma,
)  # fmt: skip

CASES = [
    ("sma", sma, Sma, talib.SMA, (2, 20, 50)),
    ("ema", ema, Ema, talib.EMA, (2, 12, 26)),
    ("wma", wma, Wma, talib.WMA, (2, 14, 30)),
    ("dema", dema, Dema, talib.DEMA, (2, 14, 30)),
    ("tema", tema, Tema, talib.TEMA, (2, 14, 30)),
    ("rsi", rsi, Rsi, talib.RSI, (2, 14, 30)),
]


@pytest.mark.parametrize("data", ["goog", "synthetic"])
@pytest.mark.parametrize(("name", "batch", "stream", "reference", "periods"), CASES, ids=[c[0] for c in CASES])
def test_close_indicators_match_talib(data, name, batch, stream, reference, periods) -> None:  # noqa: ANN001
    close = (goog_bars() if data == "goog" else synthetic())["close"]
    for period in periods:
        assert_matches_reference(batch(close, period), reference(close, period), what=f"{name}({period}) on {data}")


@pytest.mark.parametrize(("name", "batch", "stream", "reference", "periods"), CASES, ids=[c[0] for c in CASES])
def test_close_indicators_stream_like_batch(name, batch, stream, reference, periods) -> None:  # noqa: ANN001
    close = goog_bars()["close"]
    for period in periods:
        assert_streaming_equals_batch(lambda n: stream(n, period), lambda x: batch(x, period), {"close": close})


@pytest.mark.parametrize("data", ["goog", "synthetic"])
@pytest.mark.parametrize("periods", [(12, 26, 9), (5, 35, 5), (3, 10, 16)])
def test_macd_matches_talib(data: str, periods: tuple[int, int, int]) -> None:
    close = (goog_bars() if data == "goog" else synthetic())["close"]
    assert_matches_reference(macd(close, *periods), talib.MACD(close, *periods), what=f"macd{periods} on {data}")


@pytest.mark.parametrize("lean", [False, True])
def test_macd_streams_like_batch(lean: bool) -> None:
    assert_streaming_equals_batch(
        lambda n: Macd(n, 12, 26, 9, lean=lean), lambda x: macd(x, 12, 26, 9, lean=lean), {"close": goog_bars()["close"]}
    )


def test_lean_macd_seeds_the_fast_ema_from_the_first_values() -> None:
    close = goog_bars()["close"]
    lean, talib_like = macd(close, lean=True), macd(close)
    # Lean's fast EMA is the plain EMA(12); TA-Lib's starts later; they converge.
    np.testing.assert_allclose(lean.macd[33:], (ema(close, 12) - ema(close, 26))[33:], rtol=1e-12)
    assert not np.allclose(lean.macd[33:40], talib_like.macd[33:40], rtol=1e-9)
    np.testing.assert_allclose(lean.macd[-100:], talib_like.macd[-100:], rtol=1e-9)


def test_lean_conventions_before_readiness() -> None:
    flat_then_moves = np.array([5.0, 5, 5, 5, 6, 4])
    lean = Rsi(1, 3, lean=True).update_current(np.zeros(6, np.int64), flat_then_moves)
    classic = Rsi(1, 3).update_current(np.zeros(6, np.int64), flat_then_moves)
    assert lean.value.tolist()[:4] == [100.0] * 4  # Lean: no loss reads 100, also before readiness
    assert classic.value.tolist()[3] == 0.0  # TA-Lib: no movement at all reads 0
    assert lean.ready.tolist() == [False, False, False, True, True, True]
    assert lean.value[5] == pytest.approx(classic.value[5])
    ema_current = Ema(1, 3).update_current(np.zeros(4, np.int64), np.array([1.0, 2, 3, 4]))
    assert ema_current.value.tolist()[:2] == [0.0, 0.0]  # Lean's EMA reads 0 until ready


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="SMA period"):
        sma(np.ones(5), 0)
    with pytest.raises(ValueError, match="fast period 26 must be below the slow period 12"):
        macd(np.ones(50), 26, 12, 9)
    with pytest.raises(ValueError, match="symbol index outside the universe"):
        Ema(2, 3).update(np.array([2]), np.array([1.0]))


def test_lag_streams_like_batch() -> None:
    from utp.core.indicators import Lag, lag

    close = goog_bars()["close"]
    for n in (1, 5):
        out = lag(close, n)
        assert np.isnan(out[:n]).all() and np.array_equal(out[n:], close[:-n])
        assert_streaming_equals_batch(lambda k: Lag(k, n), lambda x: lag(x, n), {"close": close})
