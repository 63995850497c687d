"""Rolling statistics, volatility estimators and the session VWAP: equal to plain numpy/polars references on
real and synthetic bars (TA-Lib has none of them, except the deviation inside the z-score); streaming =
batch bit for bit."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view

from tests.indicator_harness import assert_matches_reference, assert_streaming_equals_batch, goog_bars, synthetic
from utp.core.indicators.statistics import (
    GarmanKlassVolatility, ParkinsonVolatility, RealizedVolatility, SessionVwap, VolumeZScore, VwapDistance, ZScore,
    _rolling_moments, garman_klass_volatility, parkinson_volatility, realized_volatility, session_vwap, volume_zscore,
    vwap_distance, zscore,
)  # fmt: skip

DATA = ["goog", "synthetic"]
MINUTES_PER_YEAR = 252.0 * 390.0


def bars(data: str) -> dict[str, np.ndarray]:
    return goog_bars() if data == "goog" else synthetic()


# -- references: full windows only, NaN before ------------------------------------------------------
def padded(values: np.ndarray, lookback: int) -> np.ndarray:
    return np.r_[np.full(lookback, np.nan), values]


def window_mean_var(x: np.ndarray, period: int, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every window x[i-period+1..i] by the textbook two passes; the squared deviations
    are summed column by column, as a (n, period) temporary would take half a gigabyte on the 1M bars."""
    w = sliding_window_view(x, period)
    mean = w.mean(axis=1)
    squares = sum((w[:, j] - mean) ** 2 for j in range(period))
    return mean, squares / (period - ddof)


def reference_zscore(x: np.ndarray, period: int) -> np.ndarray:
    mean, var = window_mean_var(x, period, 0)
    sd = np.sqrt(var)
    z = np.zeros_like(sd)
    np.divide(x[period - 1 :] - mean, sd, out=z, where=sd > 0.0)
    return padded(z, period - 1)


def exact_zscore(window: np.ndarray) -> float:
    """The z-score of the last value, in exact rational arithmetic (the square root aside)."""
    values = [Fraction(float(v)) for v in window]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return float(values[-1] - mean) / math.sqrt(var) if var else 0.0


def reference_realized(close: np.ndarray, period: int, ppy: float) -> np.ndarray:
    returns = np.log(close[1:] / close[:-1])
    _, var = window_mean_var(returns, period, 1)
    return padded(np.sqrt(var) * np.sqrt(ppy), period)


def reference_parkinson(high: np.ndarray, low: np.ndarray, period: int, ppy: float) -> np.ndarray:
    total = sliding_window_view(np.log(high / low) ** 2, period).sum(axis=1)
    return padded(np.sqrt(total / (4.0 * period * math.log(2.0))) * np.sqrt(ppy), period - 1)


def reference_garman_klass(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, period: int, ppy: float
) -> np.ndarray:
    term = 0.5 * np.log(h / low) ** 2 - (2.0 * math.log(2.0) - 1.0) * np.log(c / o) ** 2
    mean = sliding_window_view(term, period).mean(axis=1)
    return padded(np.sqrt(np.maximum(mean, 0.0)) * np.sqrt(ppy), period - 1)


def reference_vwap(
    t: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    frame = pl.DataFrame({"t": t, "high": high, "low": low, "close": close, "volume": volume}).with_row_index()
    sessions = (
        frame.with_columns(
            day=pl.from_epoch("t", time_unit="ns").dt.date(),
            tp=(pl.col("high") + pl.col("low") + pl.col("close")) / 3.0,
        )
        .group_by("day", maintain_order=True)
        .agg("index", "tp", pv=(pl.col("tp") * pl.col("volume")).cum_sum(), v=pl.col("volume").cum_sum())
        .explode("index", "tp", "pv", "v")
        .sort("index")
    )
    return (
        sessions.select(pl.when(pl.col("v") > 0).then(pl.col("pv") / pl.col("v")).otherwise(pl.col("tp")))
        .to_series()
        .to_numpy()
    )


# -- agreement with the references ----------------------------------------------------------------
# Periods 2 and 3 take the every-bar recomputation, 4 and up the running update (see DIRECT_BELOW).
# On the synthetic bars the float64 reference itself is off by up to 5e-8 at periods 2 and 3 (some pairs of
# minute closes differ by 1e-9 of their level); those periods are checked on the GOOG bars, and below.
Z_PERIODS = {"goog": (2, 3, 4, 20, 60), "synthetic": (4, 30)}


@pytest.mark.parametrize("data", DATA)
def test_zscore_matches_reference(data: str) -> None:
    b = bars(data)
    for period in Z_PERIODS[data]:
        assert_matches_reference(
            zscore(b["close"], period), reference_zscore(b["close"], period), what=f"zscore({period}) on {data}"
        )
        assert_matches_reference(
            volume_zscore(b["volume"], period),
            reference_zscore(b["volume"], period),
            what=f"volume_zscore({period}) on {data}",
        )


def test_zscore_of_two_values_is_exactly_plus_or_minus_one() -> None:
    # Mathematically +-1 whatever the two closes; the naive float64 two-pass is off by up to 5e-8 here, where
    # two consecutive minute closes differ by a billionth. The recomputation keeps its deviations exact.
    close = synthetic()["close"]
    z = zscore(close, 2)[1:]
    distinct = close[1:] != close[:-1]
    assert np.abs(np.abs(z[distinct]) - 1.0).max() < 1e-12
    assert (z[~distinct] == 0.0).all()


@pytest.mark.parametrize("data", DATA)
def test_zscore_deviation_and_mean_match_talib(data: str) -> None:
    close = bars(data)["close"]
    for period in (2, 5, 20):
        mean, deviation = _rolling_moments(close, period)
        assert_matches_reference(deviation, talib.STDDEV(close, period, 1), what=f"deviation({period}) on {data}")
        assert_matches_reference(mean, talib.SMA(close, period), what=f"mean({period}) on {data}")


@pytest.mark.parametrize("data", DATA)
def test_realized_volatility_matches_reference(data: str) -> None:
    close = bars(data)["close"]
    for period, ppy in ((2, 252.0), (20, 252.0), (60, MINUTES_PER_YEAR)):
        assert_matches_reference(
            realized_volatility(close, period, ppy),
            reference_realized(close, period, ppy),
            what=f"realized({period}) on {data}",
        )


@pytest.mark.parametrize("data", DATA)
def test_range_volatilities_match_reference(data: str) -> None:
    b = bars(data)
    o, h, low, c = b["open"], b["high"], b["low"], b["close"]
    for period, ppy in ((1, 252.0), (5, 252.0), (20, MINUTES_PER_YEAR)):
        assert_matches_reference(
            parkinson_volatility(h, low, period, ppy),
            reference_parkinson(h, low, period, ppy),
            what=f"parkinson({period}) on {data}",
        )
        assert_matches_reference(
            garman_klass_volatility(o, h, low, c, period, ppy),
            reference_garman_klass(o, h, low, c, period, ppy),
            what=f"garman_klass({period}) on {data}",
        )


@pytest.mark.parametrize("data", DATA)
def test_session_vwap_matches_reference(data: str) -> None:
    b = bars(data)
    args = (b["event_time_ns"], b["high"], b["low"], b["close"], b["volume"])
    expected = reference_vwap(*args)
    assert_matches_reference(session_vwap(*args), expected, what=f"session_vwap on {data}")
    assert_matches_reference(vwap_distance(*args), b["close"] / expected - 1.0, what=f"vwap_distance on {data}")


# -- streaming = batch ------------------------------------------------------------------------------
# 3000 rows per symbol cross several recomputations from the ring (every 256 bars at these periods).
STREAMS = [
    ("zscore", lambda p: (lambda n: ZScore(n, p), lambda x: zscore(x, p)), ("close",), (2, 3, 20)),
    ("volume_zscore", lambda p: (lambda n: VolumeZScore(n, p), lambda v: volume_zscore(v, p)), ("volume",), (2, 20)),
    (
        "realized",
        lambda p: (lambda n: RealizedVolatility(n, p, 252.0), lambda c: realized_volatility(c, p, 252.0)),
        ("close",),
        (2, 3, 20),
    ),
    (
        "parkinson",
        lambda p: (lambda n: ParkinsonVolatility(n, p), lambda h, low: parkinson_volatility(h, low, p)),
        ("high", "low"),
        (1, 2, 20),
    ),
    (
        "garman_klass",
        lambda p: (
            lambda n: GarmanKlassVolatility(n, p),
            lambda o, h, low, c: garman_klass_volatility(o, h, low, c, p),
        ),
        ("open", "high", "low", "close"),
        (1, 2, 20),
    ),
]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize(("name", "make", "columns", "periods"), STREAMS, ids=[s[0] for s in STREAMS])
def test_rolling_indicators_stream_like_batch(data, name, make, columns, periods) -> None:  # noqa: ANN001
    b = bars(data)
    for period in periods:
        stream, batch = make(period)
        assert_streaming_equals_batch(stream, batch, {c: b[c] for c in columns})


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize(("stream", "batch"), [(SessionVwap, session_vwap), (VwapDistance, vwap_distance)])
def test_session_vwap_streams_like_batch(data: str, stream: type, batch) -> None:  # noqa: ANN001
    b = bars(data)
    inputs = {c: b[c] for c in ("event_time_ns", "high", "low", "close", "volume")}
    assert_streaming_equals_batch(stream, batch, inputs, time_key="event_time_ns")


# -- definitions on small, hand-checked series -------------------------------------------------------
def test_a_constant_window_has_zero_deviation_exactly() -> None:
    # After varied values, running updates leave rounding residue (deviations of 1e-8 at a level of 1e8,
    # volatilities of 1e-9) when the window turns constant; the deviation must then be exactly 0.
    for seed in range(6):
        rng = np.random.default_rng(seed)
        level = np.r_[1e8 + rng.normal(0.0, 1.0, 300), np.full(8, 1e8 + 0.3)]
        volume = np.r_[rng.lognormal(10.0, 1.0, 300).round(), np.zeros(25)]
        high = np.r_[100.0 * np.exp(np.abs(rng.normal(0.0, 0.01, 300))), np.full(25, 100.0)]
        flat = np.full(325, 100.0)
        close = np.r_[100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, 300))), np.full(25, 50.0)]
        assert _rolling_moments(level, 4)[1][-5:].tolist() == [0.0] * 5, seed
        assert zscore(level, 4)[-5:].tolist() == [0.0] * 5, seed
        assert volume_zscore(volume, 20)[-6:].tolist() == [0.0] * 6, seed
        assert ZScore(1, 4).update_current(np.zeros(level.size, np.int64), level).value[-5:].tolist() == [0.0] * 5
        assert realized_volatility(close, 20)[-5:].tolist() == [0.0] * 5, seed
        assert parkinson_volatility(high, flat, 20)[-6:].tolist() == [0.0] * 6, seed
        assert garman_klass_volatility(flat, high, flat, high, 20)[-6:].tolist() == [0.0] * 6, seed
    doubling = 2.0 ** np.arange(10)  # every return is exactly ln 2: a constant window of returns
    assert realized_volatility(doubling, 3)[3:].tolist() == [0.0] * 7


def test_zscore_at_a_high_level_is_exact() -> None:
    level = 1e8 + np.array([0.1, 0.7, 0.3, 0.9, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.5])
    z = zscore(level, 4)
    assert z[8:10].tolist() == [0.0, 0.0]
    # Equal to the exact z-score of these doubles (a float64 two-pass reference is off by 2e-7 here).
    assert z[3:8].tolist() + [z[10]] == pytest.approx(
        [exact_zscore(level[i - 3 : i + 1]) for i in (3, 4, 5, 6, 7, 10)], rel=1e-12
    )


def test_garman_klass_clamps_a_negative_mean_to_zero() -> None:
    # A bar whose open-close move exceeds its high-low range (bad data) gives a negative term.
    o, h, low, c = np.array([100.0, 100.0]), np.array([100.5, 100.5]), np.array([99.5, 99.5]), np.array([110.0, 90.0])
    assert garman_klass_volatility(o, h, low, c, 2).tolist() == [pytest.approx(float("nan"), nan_ok=True), 0.0]


def test_formulas_on_small_series() -> None:
    close = np.array([100.0, 101.0, 99.0, 102.0, 104.0])
    r = np.log(close[1:] / close[:-1])
    assert realized_volatility(close, 3, 4.0)[3:] == pytest.approx(
        [np.std(r[:3], ddof=1) * 2.0, np.std(r[1:], ddof=1) * 2.0], rel=1e-14
    )
    high, low = np.array([101.0, 103.0, 102.0]), np.array([99.0, 100.0, 98.0])
    expected = math.sqrt(sum(math.log(h / lo) ** 2 for h, lo in zip(high, low, strict=True)) / (4 * 3 * math.log(2.0)))
    assert parkinson_volatility(high, low, 3, 1.0)[2] == pytest.approx(expected, rel=1e-14)
    x = np.array([1.0, 2.0, 4.0, 8.0])
    assert zscore(x, 4)[3] == pytest.approx((8.0 - 3.75) / np.std(x), rel=1e-14)


def test_values_before_readiness() -> None:
    # update_current gives the statistic of the values so far; update and the batch give NaN there.
    z = ZScore(1, 4)
    first = z.update_current(np.zeros(3, np.int64), np.array([1.0, 2.0, 3.0]))
    assert first.value.tolist() == [0.0, 1.0, pytest.approx(math.sqrt(1.5))]
    assert not first.ready.any()
    assert z.update(np.zeros(2, np.int64), np.array([4.0, 5.0])).tolist() == zscore(np.arange(1.0, 6.0), 4)[3:].tolist()
    rv = RealizedVolatility(1, 3, 1.0).update_current(np.zeros(4, np.int64), np.array([100.0, 110.0, 99.0, 100.0]))
    r = np.log([1.1, 0.9])
    assert rv.value.tolist() == [
        0.0,
        0.0,
        pytest.approx(np.std(r, ddof=1)),
        pytest.approx(realized_volatility(np.array([100.0, 110.0, 99.0, 100.0]), 3, 1.0)[3]),
    ]
    assert rv.ready.tolist() == [False, False, False, True]


def test_session_vwap_resets_when_the_utc_day_changes() -> None:
    day = 86_400 * 10**9
    minute = 60 * 10**9
    t = np.array([day - 2 * minute, day - minute, day, day + minute, 2 * day + 5 * minute], np.int64)
    high = np.array([12.0, 15.0, 30.0, 33.0, 9.0])
    low = np.array([9.0, 12.0, 27.0, 30.0, 6.0])
    close = np.array([9.0, 12.0, 27.0, 27.0, 6.0])  # typical prices 10, 13, 28, 30, 7
    volume = np.array([1.0, 3.0, 0.0, 2.0, 4.0])
    expected = [10.0, (10.0 + 39.0) / 4.0, 28.0, 30.0, 7.0]  # a new day starts afresh; no volume yet: the typical price
    assert session_vwap(t, high, low, close, volume).tolist() == pytest.approx(expected, rel=1e-15)
    assert vwap_distance(t, high, low, close, volume).tolist() == pytest.approx(
        (close / np.array(expected) - 1.0).tolist(), rel=1e-15
    )
    assert session_vwap(t.astype("datetime64[ns]"), high, low, close, volume).tolist() == pytest.approx(
        expected, rel=1e-15
    )
    # Two symbols, one row at a time: each symbol's session is its own.
    stream = SessionVwap(2)
    row = [np.array([s]) for s in (0, 1, 0, 1, 0)]
    got = [stream.update(row[i], *(a[i : i + 1] for a in (t, high, low, close, volume)))[0] for i in range(5)]
    assert got == pytest.approx([10.0, 13.0, 28.0, 30.0, 7.0], rel=1e-15)


def test_bad_arguments_are_refused() -> None:
    x = np.linspace(1.0, 2.0, 30)
    with pytest.raises(ValueError, match="Z-score period"):
        zscore(x, 1)
    with pytest.raises(ValueError, match="Volume z-score period"):
        VolumeZScore(2, 0)
    with pytest.raises(ValueError, match="Realized volatility period"):
        realized_volatility(x, 1)
    with pytest.raises(ValueError, match="Parkinson volatility period"):
        parkinson_volatility(x, x, 0)
    with pytest.raises(ValueError, match="Garman-Klass volatility period"):
        GarmanKlassVolatility(2, 2.5)
    for ppy in (0.0, -252.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="periods_per_year"):
            realized_volatility(x, 5, ppy)
    with pytest.raises(ValueError, match="periods_per_year"):
        ParkinsonVolatility(2, 5, 0.0)
    with pytest.raises(ValueError, match="same length"):
        parkinson_volatility(x, x[:-1], 5)
    with pytest.raises(ValueError, match="integer nanoseconds"):
        session_vwap(x, x, x, x, x)
    with pytest.raises(ValueError, match="differ in length"):
        session_vwap(np.arange(29), x, x, x, x)
    with pytest.raises(ValueError, match="symbol index outside the universe"):
        ZScore(2, 5).update(np.array([2]), np.array([1.0]))
