"""Volatility, bands and ranges: equal to TA-Lib on real and synthetic bars; streaming = batch."""

from __future__ import annotations

import numpy as np
import pytest
import talib

from tests.indicator_harness import assert_matches_reference, assert_streaming_equals_batch, goog_bars, synthetic
from utp.core.indicators.bands import (
    Adx, Atr, Bbands, Donchian, Dx, Keltner, Natr, RollingMax, RollingMin, Stddev, TrueRange, adx, atr, bbands,
    donchian, dx, keltner, natr, rolling_max, rolling_min, stddev, trange,
)  # fmt: skip

DATA = ["goog", "synthetic"]


def bars(data: str) -> dict[str, np.ndarray]:
    return goog_bars() if data == "goog" else synthetic()


def hlc(data: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = bars(data)
    return b["high"], b["low"], b["close"]


# -- references: TA-Lib, and its compositions where TA-Lib has no such function --------------------
def percent_b(close: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    width = upper - lower
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(width == 0.0, 0.5, (close - lower) / width)


def bbands_reference(close: np.ndarray, period: int, up: float, dn: float) -> tuple[np.ndarray, ...]:
    upper, middle, lower = talib.BBANDS(close, period, up, dn, 0)
    return upper, middle, lower, percent_b(close, upper, lower)


def keltner_reference(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int, atr_period: int, k: float
) -> tuple[np.ndarray, ...]:
    middle, band = talib.EMA(close, period), k * talib.ATR(high, low, close, atr_period)
    middle = np.where(np.isnan(band), np.nan, middle)  # the channel starts when both are ready
    return middle + band, middle, middle - band


def donchian_reference(high: np.ndarray, low: np.ndarray, period: int) -> tuple[np.ndarray, ...]:
    upper, lower = talib.MAX(high, period), talib.MIN(low, period)
    return upper, (upper + lower) / 2, lower


# Each case: ours and the reference, given (high, low, close); the periods cover 2 (TA-Lib's minimum for
# most, where seeds and warm-ups are shortest), the defaults and a long window.
HLC_CASES = {
    "stddev(2)": (lambda h, l, c: stddev(c, 2), lambda h, l, c: talib.STDDEV(c, 2, 1.0)),
    "stddev(5)": (lambda h, l, c: stddev(c, 5), lambda h, l, c: talib.STDDEV(c, 5, 1.0)),
    "stddev(20,2.5)": (lambda h, l, c: stddev(c, 20, 2.5), lambda h, l, c: talib.STDDEV(c, 20, 2.5)),
    "bbands(20)": (lambda h, l, c: bbands(c), lambda h, l, c: bbands_reference(c, 20, 2.0, 2.0)),
    "bbands(2,1,1)": (lambda h, l, c: bbands(c, 2, 1.0, 1.0), lambda h, l, c: bbands_reference(c, 2, 1.0, 1.0)),
    "bbands(10,1.7,2.3)": (lambda h, l, c: bbands(c, 10, 1.7, 2.3), lambda h, l, c: bbands_reference(c, 10, 1.7, 2.3)),
    "bbands(50,2.5,1)": (lambda h, l, c: bbands(c, 50, 2.5, 1.0), lambda h, l, c: bbands_reference(c, 50, 2.5, 1.0)),
    "trange": (lambda h, l, c: trange(h, l, c), lambda h, l, c: talib.TRANGE(h, l, c)),
    "atr(1)": (lambda h, l, c: atr(h, l, c, 1), lambda h, l, c: talib.ATR(h, l, c, 1)),
    "atr(14)": (lambda h, l, c: atr(h, l, c), lambda h, l, c: talib.ATR(h, l, c, 14)),
    "atr(30)": (lambda h, l, c: atr(h, l, c, 30), lambda h, l, c: talib.ATR(h, l, c, 30)),
    "natr(2)": (lambda h, l, c: natr(h, l, c, 2), lambda h, l, c: talib.NATR(h, l, c, 2)),
    "natr(14)": (lambda h, l, c: natr(h, l, c), lambda h, l, c: talib.NATR(h, l, c, 14)),
    "adx(2)": (
        lambda h, l, c: adx(h, l, c, 2),
        lambda h, l, c: (talib.ADX(h, l, c, 2), talib.PLUS_DI(h, l, c, 2), talib.MINUS_DI(h, l, c, 2)),
    ),
    "adx(14)": (
        lambda h, l, c: adx(h, l, c),
        lambda h, l, c: (talib.ADX(h, l, c, 14), talib.PLUS_DI(h, l, c, 14), talib.MINUS_DI(h, l, c, 14)),
    ),
    "dx(2)": (lambda h, l, c: dx(h, l, c, 2), lambda h, l, c: talib.DX(h, l, c, 2)),
    "dx(14)": (lambda h, l, c: dx(h, l, c), lambda h, l, c: talib.DX(h, l, c, 14)),
    "keltner(20,10,2)": (lambda h, l, c: keltner(h, l, c), lambda h, l, c: keltner_reference(h, l, c, 20, 10, 2.0)),
    "keltner(5,14,1.5)": (
        lambda h, l, c: keltner(h, l, c, 5, 14, 1.5), lambda h, l, c: keltner_reference(h, l, c, 5, 14, 1.5)
    ),
    "keltner(2,1,3.3)": (
        lambda h, l, c: keltner(h, l, c, 2, 1, 3.3), lambda h, l, c: keltner_reference(h, l, c, 2, 1, 3.3)
    ),
    "max(2)": (lambda h, l, c: rolling_max(h, 2), lambda h, l, c: talib.MAX(h, 2)),
    "max(30)": (lambda h, l, c: rolling_max(h), lambda h, l, c: talib.MAX(h, 30)),
    "min(3)": (lambda h, l, c: rolling_min(l, 3), lambda h, l, c: talib.MIN(l, 3)),
    "min(30)": (lambda h, l, c: rolling_min(l), lambda h, l, c: talib.MIN(l, 30)),
    "donchian(20)": (lambda h, l, c: donchian(h, l), lambda h, l, c: donchian_reference(h, l, 20)),
    "donchian(55)": (lambda h, l, c: donchian(h, l, 55), lambda h, l, c: donchian_reference(h, l, 55)),
}


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("case", list(HLC_CASES))
def test_matches_talib(case: str, data: str) -> None:
    ours, reference = HLC_CASES[case]
    h, l, c = hlc(data)  # noqa: E741
    assert_matches_reference(ours(h, l, c), reference(h, l, c), what=f"{case} on {data}")


@pytest.mark.parametrize("case", list(HLC_CASES))
def test_equal_to_the_bit_on_a_million_bars(case: str) -> None:
    """TA-Lib 0.8.1's order of operations, FMA and re-anchoring are mirrored: no rounding differs (this
    pins the installed TA-Lib; another version may round differently within the 1e-9 above)."""
    ours, reference = HLC_CASES[case]
    h, l, c = hlc("synthetic")  # noqa: E741
    assert_matches_reference(ours(h, l, c), reference(h, l, c), rtol=0.0, what=f"{case} on synthetic")


def degenerate_bars(n: int = 1200) -> dict[str, np.ndarray]:
    """GOOG bars made awkward: identical bars first (a true range of exactly 0), a range without direction
    (the same high and low for 150 bars: the DMs decay, the TR does not), identical bars again (zero
    variance), a zero close and a jump to 1e6 + GOOG (cancellation in the variance sums)."""
    g = {k: v[:n].copy() for k, v in goog_bars().items()}
    ohlc = ("open", "high", "low", "close")
    for k in ohlc:
        g[k][:40] = g["close"][40]
        g[k][700:760] = g["close"][699]
    g["high"][300:450], g["low"][300:450] = g["high"][299], g["low"][299]
    g["open"][300:450] = g["close"][300:450] = (g["high"][299] + g["low"][299]) / 2
    g["close"][150] = g["low"][150] = 0.0
    for k in ohlc:
        g[k][900:] += 1e6
    return g


@pytest.mark.parametrize("case", list(HLC_CASES))
def test_degenerate_bars_match_talib(case: str) -> None:
    ours, reference = HLC_CASES[case]
    g = degenerate_bars()
    h, l, c = g["high"], g["low"], g["close"]  # noqa: E741
    assert_matches_reference(ours(h, l, c), reference(h, l, c), rtol=0.0, what=f"{case} on degenerate bars")


@pytest.mark.parametrize("period", [2, 3])
def test_directional_movement_without_range_or_direction(period: int) -> None:
    """TA-Lib 0.8.1: no DI (0) while the TR sum is 0; no DX while the DI sum is below 1e-14 (the previous
    DX repeats, 0 at first, and the ADX holds)."""
    g = degenerate_bars()
    h, l, c = g["high"], g["low"], g["close"]  # noqa: E741
    out, d = adx(h, l, c, period), dx(h, l, c, period)
    assert_matches_reference(
        out, (talib.ADX(h, l, c, period), talib.PLUS_DI(h, l, c, period), talib.MINUS_DI(h, l, c, period)), rtol=0.0
    )
    assert_matches_reference(d, talib.DX(h, l, c, period), rtol=0.0)
    assert (out.plus_di[period:40] == 0.0).all() and (out.minus_di[period:40] == 0.0).all()
    assert (d[period:40] == 0.0).all()
    assert (d[420:450] == d[419]).all() and (out.adx[420:450] == out.adx[419]).all()
    assert out.plus_di[449] + out.minus_di[449] < 1e-14


def test_bands_coincide_on_flat_closes() -> None:
    c = degenerate_bars()["close"]
    bands = bbands(c, 20)
    assert (bands.upper[720:760] == bands.lower[720:760]).all()
    assert (bands.percent_b[720:760] == 0.5).all()
    assert (stddev(c, 20)[720:760] == 0.0).all()


def test_variance_is_reanchored_against_cancellation() -> None:
    """Prices near 1e8 with unit noise: plain running sums of x and x^2 lose all digits of the variance;
    TA-Lib's (and our) re-anchored sums keep it close to the exact population deviation."""
    x = 1e8 + np.random.default_rng(3).normal(0.0, 1.0, 20_000)
    period = 20
    exact = np.lib.stride_tricks.sliding_window_view(x, period).std(axis=1)
    ours = stddev(x, period)
    assert_matches_reference(ours, talib.STDDEV(x, period, 1.0), rtol=0.0)
    np.testing.assert_allclose(ours[period - 1 :], exact, rtol=1e-6)


@pytest.mark.parametrize("period", [2, 5, 20])
def test_streaming_ring_reanchors_like_the_batch(period: int) -> None:
    """Flat closes, a jump and the countdown make both forms re-anchor; the stream unrolls its ring
    (oldest first) and gets the batch's sums to the bit."""
    close = {"close": degenerate_bars()["close"]}
    assert_streaming_equals_batch(lambda n: Stddev(n, period, 2.0), lambda x: stddev(x, period, 2.0), close)
    assert_streaming_equals_batch(lambda n: Bbands(n, period, 1.5, 2.5), lambda x: bbands(x, period, 1.5, 2.5), close)


STREAMS = {
    "stddev": (lambda n: Stddev(n, 5, 1.5), lambda c: stddev(c, 5, 1.5), ("close",)),
    "bbands": (lambda n: Bbands(n, 20), lambda c: bbands(c, 20), ("close",)),
    "bbands_asymmetric": (lambda n: Bbands(n, 7, 1.0, 2.5), lambda c: bbands(c, 7, 1.0, 2.5), ("close",)),
    "trange": (TrueRange, trange, ("high", "low", "close")),
    "atr": (lambda n: Atr(n, 14), lambda h, l, c: atr(h, l, c, 14), ("high", "low", "close")),
    "atr1": (lambda n: Atr(n, 1), lambda h, l, c: atr(h, l, c, 1), ("high", "low", "close")),
    "natr": (lambda n: Natr(n, 5), lambda h, l, c: natr(h, l, c, 5), ("high", "low", "close")),
    "adx": (lambda n: Adx(n, 14), lambda h, l, c: adx(h, l, c, 14), ("high", "low", "close")),
    "adx2": (lambda n: Adx(n, 2), lambda h, l, c: adx(h, l, c, 2), ("high", "low", "close")),
    "dx": (lambda n: Dx(n, 14), lambda h, l, c: dx(h, l, c, 14), ("high", "low", "close")),
    "keltner": (lambda n: Keltner(n), lambda h, l, c: keltner(h, l, c), ("high", "low", "close")),
    "keltner_long_atr": (
        lambda n: Keltner(n, 5, 30, 1.5), lambda h, l, c: keltner(h, l, c, 5, 30, 1.5), ("high", "low", "close")
    ),
    "max": (lambda n: RollingMax(n, 20), lambda x: rolling_max(x, 20), ("high",)),
    "max2": (lambda n: RollingMax(n, 2), lambda x: rolling_max(x, 2), ("high",)),
    "min": (lambda n: RollingMin(n, 7), lambda x: rolling_min(x, 7), ("low",)),
    "donchian": (lambda n: Donchian(n, 20), lambda h, l: donchian(h, l, 20), ("high", "low")),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_streams_like_batch(name: str) -> None:
    make, batch, keys = STREAMS[name]
    g = goog_bars()
    assert_streaming_equals_batch(make, batch, {k: g[k] for k in keys})


def test_adx_outputs_have_their_own_lookbacks() -> None:
    h, l, c = hlc("goog")  # noqa: E741
    out = adx(h, l, c, 14)
    assert np.isnan(out.adx[:27]).all() and not np.isnan(out.adx[27])  # ADX: 2n-1
    assert np.isnan(out.plus_di[:14]).all() and not np.isnan(out.plus_di[14])  # DIs: n
    assert not np.isnan(out.minus_di[14:]).any()
    u = Adx(1, 14).update_current(np.zeros(40, np.int64), h[:40], l[:40], c[:40])
    assert u.di_ready.tolist() == [False] * 14 + [True] * 26
    assert u.ready.tolist() == [False] * 27 + [True] * 13
    np.testing.assert_array_equal(u.plus_di[14:], out.plus_di[14:40])


def test_values_before_readiness() -> None:
    """The extremes report the window so far (as Lean's Maximum/Minimum); the others NaN."""
    high, low = np.array([3.0, 5.0, 4.0, 1.0, 2.0]), np.array([1.0, 0.5, 2.0, 0.0, 1.0])
    u = Donchian(1, 3).update_current(np.zeros(5, np.int64), high, low)
    assert u.upper.tolist() == [3.0, 5.0, 5.0, 5.0, 4.0]
    assert u.lower.tolist() == [1.0, 0.5, 0.5, 0.0, 0.0]
    assert u.middle.tolist() == [2.0, 2.75, 2.75, 2.5, 2.0]
    assert u.ready.tolist() == [False, False, True, True, True]
    assert RollingMin(1, 2).update_current(np.zeros(5, np.int64), low).value.tolist() == [1.0, 0.5, 0.5, 0.0, 0.0]
    b = Bbands(1, 3).update_current(np.zeros(5, np.int64), high)
    assert np.isnan(b.upper[:2]).all() and not np.isnan(b.upper[2:]).any()
    a = Atr(1, 2).update_current(np.zeros(5, np.int64), high, low, high)
    assert np.isnan(a.value[:2]).all() and a.ready.tolist() == [False, False, True, True, True]


def test_percent_b_position_within_the_bands() -> None:
    close = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    b = bbands(close, 3, 2.0, 2.0)
    sd = np.std(close[2:5])
    assert b.percent_b[4] == pytest.approx((5.0 - (4.0 - 2.0 * sd)) / (4.0 * sd))
    assert b.percent_b[7] == 0.5  # three equal closes: no deviation
    assert (bbands(close, 3, 0.0, 0.0).percent_b[2:] == 0.5).all()  # zero-width bands by construction


def test_bad_arguments_are_refused() -> None:
    x = np.ones(10)
    with pytest.raises(ValueError, match="BBANDS period"):
        bbands(x, 1)
    with pytest.raises(ValueError, match="BBANDS nbdevup"):
        bbands(x, 5, float("nan"))
    with pytest.raises(ValueError, match="STDDEV period"):
        Stddev(2, 1)
    with pytest.raises(ValueError, match="ATR period"):
        atr(x, x, x, 0)
    with pytest.raises(ValueError, match="NATR period"):  # TA-Lib's NATR(1) is the raw true range
        natr(x, x, x, 1)
    with pytest.raises(ValueError, match="ADX period"):
        adx(x, x, x, 1)
    with pytest.raises(ValueError, match="DX period"):
        Dx(1, 1.5)
    with pytest.raises(ValueError, match="Keltner ATR period"):
        keltner(x, x, x, 20, 0)
    with pytest.raises(ValueError, match="Keltner multiplier"):
        Keltner(1, 20, 10, float("inf"))
    with pytest.raises(ValueError, match="Donchian period"):
        donchian(x, x, 1)
    with pytest.raises(ValueError, match="MAX period"):
        RollingMax(1, 1)
    with pytest.raises(ValueError, match="MIN period"):
        rolling_min(x, 0)
    with pytest.raises(ValueError, match="same length"):
        trange(x, x, np.ones(9))
    with pytest.raises(ValueError, match="symbol index outside the universe"):
        Atr(2).update(np.array([2]), x[:1], x[:1], x[:1])
