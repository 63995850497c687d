"""Spread estimates from bars: equal to plain re-implementations of the papers; streaming = batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.indicator_harness import assert_matches_reference, assert_streaming_equals_batch, goog_bars, synthetic
from utp.core.indicators.microstructure import CorwinSchultzSpread, RollSpread, corwin_schultz_spread, roll_spread


def corwin_schultz_reference(high: np.ndarray, low: np.ndarray, period: int) -> np.ndarray:
    k = 3 - 2 * math.sqrt(2)
    estimates = np.full(len(high), np.nan)
    for t in range(1, len(high)):
        beta = math.log(high[t] / low[t]) ** 2 + math.log(high[t - 1] / low[t - 1]) ** 2
        gamma = math.log(max(high[t], high[t - 1]) / min(low[t], low[t - 1])) ** 2
        alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
        estimates[t] = max(2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha)), 0.0)
    out = np.full(len(high), np.nan)
    for t in range(period, len(high)):
        out[t] = estimates[t - period + 1 : t + 1].mean()
    return out


def roll_reference(close: np.ndarray, period: int) -> np.ndarray:
    changes = np.diff(close, prepend=np.nan)
    out = np.full(len(close), np.nan)
    for t in range(period + 1, len(close)):
        cov = np.cov(changes[t - period + 1 : t + 1], changes[t - period : t], ddof=1)[0, 1]
        out[t] = (2 * math.sqrt(-cov) if cov < 0 else 0.0) / close[t]
    return out


@pytest.mark.parametrize("period", [2, 20])
def test_corwin_schultz_matches_the_paper(period: int) -> None:
    for data in (goog_bars(), {k: v[:20_000] for k, v in synthetic().items()}):
        ours = corwin_schultz_spread(data["high"], data["low"], period)
        assert_matches_reference(ours, corwin_schultz_reference(data["high"], data["low"], period))
    assert_streaming_equals_batch(
        lambda n: CorwinSchultzSpread(n, period), lambda h, l: corwin_schultz_spread(h, l, period),  # noqa: E741
        {"high": goog_bars()["high"], "low": goog_bars()["low"]},
    )  # fmt: skip


@pytest.mark.parametrize("period", [2, 20])
def test_roll_spread_matches_the_paper(period: int) -> None:
    for data in (goog_bars(), {k: v[:20_000] for k, v in synthetic().items()}):
        assert_matches_reference(roll_spread(data["close"], period), roll_reference(data["close"], period))
    assert_streaming_equals_batch(lambda n: RollSpread(n, period), lambda c: roll_spread(c, period),
                                  {"close": goog_bars()["close"]})  # fmt: skip


def test_spread_estimates_are_never_negative_and_vanish_without_bounce() -> None:
    assert np.nanmin(corwin_schultz_spread(goog_bars()["high"], goog_bars()["low"])) >= 0
    trending = np.linspace(100, 200, 100)  # steady drift: no bid-ask bounce, no negative autocovariance
    assert np.nanmax(roll_spread(trending, 10)) < 1e-12  # only rounding noise in the equal changes
    bouncing = 100 + np.tile([0.05, -0.05], 50)  # bid-ask bounce of 0.10
    assert roll_spread(bouncing, 10)[-1] == pytest.approx(2 * math.sqrt(0.01 * 10 / 9) / bouncing[-1])
