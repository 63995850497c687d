"""Rolling statistics, volatility estimators and the session VWAP (see `_base` for the one-definition,
two-forms pattern).

TA-Lib has none of these (only TA_STDDEV, the deviation inside the z-score); the tests compare them with
plain numpy/polars references. Lookback = index of the first valid output, 0-based:

* ZSCORE(n)   lookback n-1: (x - m) / s over the last n values, the current one included, with
              m = sum(x_j) / n and s = sqrt(sum((x_j - m)^2) / n) (population, ddof 0); 0 when s is 0.
* VOLUME_ZSCORE(n)  the ZSCORE of the volume.
* REALIZED_VOLATILITY(n, ppy)  lookback n (n+1 closes make n returns): r_t = ln(c_t / c_{t-1}),
              sqrt(sum((r_j - mean(r))^2) / (n - 1)) * sqrt(ppy) over the last n returns (ddof 1).
* PARKINSON_VOLATILITY(n, ppy)  lookback n-1: sqrt(sum(ln(H/L)^2) / (4 n ln 2)) * sqrt(ppy).
* GARMAN_KLASS_VOLATILITY(n, ppy)  lookback n-1: sqrt(max(0, sum(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2) / n))
              * sqrt(ppy).
* SESSION_VWAP  lookback 0: sum(tp * v) / sum(v) over the session's bars so far, tp = (H + L + C) / 3; a
              session is a UTC calendar day of event_time_ns; tp itself while the session has no volume.
* VWAP_DISTANCE  lookback 0: close / SESSION_VWAP - 1.

Before readiness `update_current` gives the statistic of the values seen so far (the z-score or the
volatility of a shorter window; a realized volatility of fewer than two returns reads 0).

Numerics of the rolling windows. Each symbol keeps its window's terms in a ring (the batch form too, so
that both forms hold identical state). The z-scores and the realized volatility update the mean and
M2 = sum((x_j - m)^2) as Welford does, relative to an anchor: running sums of x and x^2 would cancel
catastrophically on price levels (20 minute closes spread over ~1e-3 of their level: x^2 sums lose six
digits, then drift). The range estimators keep a running sum of their terms. Rounding still accumulates,
so every REANCHOR bars the state is recomputed from the ring by two passes, and windows shorter than
DIRECT_BELOW are recomputed on every bar: a window of 2 or 3 closes can be a million times tighter than
usual, and there a running update's error (~1e-16 of a typical window's M2) is no longer small. When the
last n terms are all equal the state is set exactly (mean = the value, M2 = 0), so a flat price or a run of
zero volumes reads a deviation of exactly 0, not rounding residue. (A NaN input spoils a window's values
until the first recomputation after it has left the window.)

Each kernel runs per bar the same shared functions: `_ring_push`, the scalar update (`_moments_update` or
`_sum_update`), on the bars it reports due the recomputation (`_window_moments` or `_window_sum`), then the
value. The updates take no array: numba reference-counts an array passed to an inlined function on every
bar once that function branches into a loop, which made the kernels four times slower. The logarithms are
taken by numpy before the kernels (see `_log_ratio`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from utp.core.indicators._base import KERNEL, STEP, IndicatorUpdate, check_period, mask_warmup, rows, series
from utp.core.kernels import writable

#: Rolling windows are recomputed from their ring every this many bars, or the smallest power of two above
#: the period (a power of two, so that the test is a bit mask, not a division). The running update's error
#: grows with the interval (2e-12 relative on z-scores of the 1M synthetic bars at 256, 2e-10 at 4096);
#: the recomputation costs about 2 * period / interval operations per bar.
REANCHOR = 256
#: Windows shorter than this are recomputed on every bar (see the module's docstring): at 3, the running
#: update's z-scores of the synthetic bars are off by 2e-8; from 4 on, by 5e-11 at most.
DIRECT_BELOW = 4
#: A day in nanoseconds: the session of a bar is event_time_ns // DAY_NS (UTC calendar day).
DAY_NS = 86_400_000_000_000
#: The session day of a symbol that has seen no bar.
NO_SESSION = -(2**63)
LN2 = math.log(2.0)
GARMAN_KLASS_K = 2.0 * LN2 - 1.0


def _reanchor_mask(period: int) -> int:
    """`n & mask == 0` on the bars where a window of `period` is recomputed from its ring."""
    if period < DIRECT_BELOW:
        return 0
    interval = REANCHOR
    while interval < period:
        interval *= 2
    return interval - 1


def _check_periods_per_year(periods_per_year: float) -> float:
    ppy = float(periods_per_year)
    if not (math.isfinite(ppy) and ppy > 0.0):
        raise ValueError(f"periods_per_year must be a finite number > 0, got {periods_per_year!r}")
    return ppy


# -- rolling windows shared by the indicators ----------------------------------------------------------
@njit(**STEP)
def _ring_push(v, ring, row, pos, period):  # noqa: ANN001
    """Writes `v` over the oldest term of ring[row]. Returns the term before v (for the run of equal
    terms), the term v replaces (0 while the ring fills: rings start at 0) and the next position."""
    last = ring[row, pos - 1 if pos > 0 else period - 1]
    trailing = ring[row, pos]
    ring[row, pos] = v
    return last, trailing, pos + 1 if pos + 1 < period else 0


@njit(**STEP)
def _moments_update(v, last, trailing, n, run, anchor, mean, m2, period, inv_period, mask):  # noqa: ANN001
    """Adds `v` to the window of the last `period` terms (all of them while fewer): Welford's update of the
    terms less `anchor` (the window's mean when last recomputed), so that the rounding of `mean` scales with
    how far the level moved since, not with the level. `n` counts the terms, `run` the equal terms ending
    at v. Returns (n, run, anchor, mean, m2, due); on `due` bars the caller recomputes the last three by
    `_window_moments`."""
    n += 1
    run = run + 1 if n > 1 and v == last else 1
    if n == 1:
        anchor = v
    y = v - anchor
    if n <= period:
        delta = y - mean
        mean += delta / n
        m2 += delta * (y - mean)
    else:
        old = mean
        t = trailing - anchor
        delta = y - t
        mean = old + delta * inv_period
        m2 += delta * ((y - mean) + (t - old))
    if run >= min(n, period):
        return n, run, v, 0.0, 0.0, False
    return n, run, anchor, mean, m2, n >= period and (n & mask) == 0


@njit(**STEP)
def _window_moments(ring, row, period):  # noqa: ANN001
    """(anchor, mean, M2) of ring[row] by the corrected two-pass algorithm: the anchor is the rounded mean,
    and the mean of the deviations from it, which the rounding leaves, is kept as `mean`."""
    total = 0.0
    for j in range(period):
        total += ring[row, j]
    anchor = total / period
    s1, s2 = 0.0, 0.0
    for j in range(period):
        d = ring[row, j] - anchor
        s1 += d
        s2 += d * d
    mean = s1 / period
    return anchor, mean, s2 - s1 * mean


@njit(**STEP)
def _sum_update(u, last, trailing, n, run, total, period, mask):  # noqa: ANN001
    """Adds `u` to the running sum of the last `period` terms (all of them while fewer). Returns
    (n, run, total, due); on `due` bars the caller recomputes the total by `_window_sum`."""
    n += 1
    run = run + 1 if n > 1 and u == last else 1
    total += u - trailing
    if run >= min(n, period):
        return n, run, u * min(n, period), False
    return n, run, total, n >= period and (n & mask) == 0


@njit(**STEP)
def _window_sum(ring, row, period):  # noqa: ANN001
    total = 0.0
    for j in range(period):
        total += ring[row, j]
    return total


class _Window:
    """Per-symbol state of a rolling window: the ring of its terms, the write position, the count of terms,
    the run of equal terms; with `moments`, also the anchor, mean and M2 of `_moments_update`."""

    def __init__(self, n_symbols: int, period: int, *, moments: bool = False) -> None:
        self.n_symbols = n_symbols
        self.mask = _reanchor_mask(period)
        self.ring = np.zeros((n_symbols, period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)
        self.run = np.zeros(n_symbols, np.int64)
        if moments:
            self.anchor, self.mean, self.m2 = np.zeros(n_symbols), np.zeros(n_symbols), np.zeros(n_symbols)
        else:
            self.total = np.zeros(n_symbols)

    def output(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.empty(n), np.empty(n, np.bool_)


# -- Z-score ---------------------------------------------------------------------------------------
@njit(**STEP)
def _zscore_value(x, n, anchor, mean, m2, period, inv_period):  # noqa: ANN001
    if m2 <= 0.0:  # a constant window (M2 below 0 is rounding in a nearly constant one)
        return 0.0, n >= period
    return (x - anchor - mean) / np.sqrt(m2 * inv_period if n >= period else m2 / n), n >= period


@njit(**KERNEL)
def _zscore_batch(x, period, mask, out):  # noqa: ANN001
    inv_period = 1.0 / period
    ring = np.zeros((1, period))
    pos, n, run, anchor, mean, m2 = 0, 0, 0, 0.0, 0.0, 0.0
    for i in range(x.shape[0]):
        last, trailing, pos = _ring_push(x[i], ring, 0, pos, period)
        n, run, anchor, mean, m2, due = _moments_update(
            x[i], last, trailing, n, run, anchor, mean, m2, period, inv_period, mask
        )
        if due:
            anchor, mean, m2 = _window_moments(ring, 0, period)
        out[i], _ = _zscore_value(x[i], n, anchor, mean, m2, period, inv_period)


@njit(**KERNEL)
def _zscore_stream(sid, x, period, mask, ring, pos, count, run, anchor, mean, m2, value, ready):  # noqa: ANN001
    inv_period = 1.0 / period
    for i in range(x.shape[0]):
        s = sid[i]
        last, trailing, pos[s] = _ring_push(x[i], ring, s, pos[s], period)
        count[s], run[s], a, m, q, due = _moments_update(
            x[i], last, trailing, count[s], run[s], anchor[s], mean[s], m2[s], period, inv_period, mask
        )
        if due:
            a, m, q = _window_moments(ring, s, period)
        anchor[s], mean[s], m2[s] = a, m, q
        value[i], ready[i] = _zscore_value(x[i], count[s], a, m, q, period, inv_period)


@njit(**KERNEL)
def _moments_batch(x, period, mask, mean_out, deviation_out):  # noqa: ANN001
    inv_period = 1.0 / period
    ring = np.zeros((1, period))
    pos, n, run, anchor, mean, m2 = 0, 0, 0, 0.0, 0.0, 0.0
    for i in range(x.shape[0]):
        last, trailing, pos = _ring_push(x[i], ring, 0, pos, period)
        n, run, anchor, mean, m2, due = _moments_update(
            x[i], last, trailing, n, run, anchor, mean, m2, period, inv_period, mask
        )
        if due:
            anchor, mean, m2 = _window_moments(ring, 0, period)
        mean_out[i] = anchor + mean
        deviation_out[i] = np.sqrt(m2 / min(n, period)) if m2 > 0.0 else 0.0


def _rolling_moments(x: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the population deviation inside `zscore` (lookback period-1), by the same functions;
    the deviation is TA_STDDEV(x, period, 1)."""
    (x,) = series(x)
    period = check_period("Z-score period", period, 2)
    mean, deviation = np.empty_like(x), np.empty_like(x)
    _moments_batch(x, period, _reanchor_mask(period), mean, deviation)
    mask_warmup(period - 1, mean, deviation)
    return mean, deviation


def _zscore(x: np.ndarray, period: int, name: str) -> np.ndarray:
    (x,) = series(x)
    period = check_period(name, period, 2)
    out = np.empty_like(x)
    _zscore_batch(x, period, _reanchor_mask(period), out)
    mask_warmup(period - 1, out)
    return out


def zscore(x: np.ndarray, period: int = 20) -> np.ndarray:
    """Rolling z-score, lookback period-1: (x - m) / s over the last `period` values, the current one
    included, m = sum(x_j)/period, s = sqrt(sum((x_j - m)^2)/period) (ddof 0); 0 where s is 0."""
    return _zscore(x, period, "Z-score period")


def volume_zscore(volume: np.ndarray, period: int = 20) -> np.ndarray:
    """`zscore` of the volume, lookback period-1: (v - m) / s over the last `period` volumes (ddof 0);
    0 where s is 0."""
    return _zscore(volume, period, "Volume z-score period")


class ZScore:
    """Streaming `zscore` (lookback period-1) for `n_symbols` symbols: `update(sid, x)`."""

    _name = "Z-score period"

    def __init__(self, n_symbols: int, period: int = 20) -> None:
        self.period = check_period(self._name, period, 2)
        self.window = _Window(n_symbols, self.period, moments=True)

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        w = self.window
        sid, x = rows(w.n_symbols, sid, x)
        value, ready = w.output(x.shape[0])
        _zscore_stream(
            sid, x, self.period, w.mask, w.ring, w.pos, w.count, w.run, w.anchor, w.mean, w.m2, value, ready
        )  # fmt: skip
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()


class VolumeZScore(ZScore):
    """Streaming `volume_zscore` (lookback period-1): `update(sid, volume)`."""

    _name = "Volume z-score period"


# -- Log ratios, the inputs of the volatility estimators -----------------------------------------
def _log_ratio(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """ln(a / b) by numpy's vectorised log, in both forms: four times faster than numba's per-bar libm call,
    and its results do not depend on how rows are cut into calls (the libm's can differ from it in the last
    bit, so both forms must use the same one). Into `out` if given: the kernels read each bar's input before
    writing its output at the same index, so the output array can hold the input and spare an allocation."""
    out = np.divide(a, b, out=out)
    return np.log(out, out=out)


@njit(**KERNEL)
def _close_ratio_stream(sid, c, prev, out):  # noqa: ANN001
    """c / (the symbol's previous close); NaN on a symbol's first close (prev starts at NaN)."""
    for i in range(c.shape[0]):
        s = sid[i]
        out[i] = c[i] / prev[s]
        prev[s] = c[i]


# -- Realized volatility ---------------------------------------------------------------------------
@njit(**STEP)
def _realized_value(n, m2, period, inv_dof, sqrt_ppy):  # noqa: ANN001
    if m2 <= 0.0 or n < 2:
        return 0.0, n >= period
    return np.sqrt(m2 * inv_dof if n >= period else m2 / (n - 1)) * sqrt_ppy, n >= period


@njit(**KERNEL)
def _realized_batch(r, period, ppy, mask, out):  # noqa: ANN001
    """`r` are the log returns, out[i + 1] the volatility after r[i]."""
    inv_period, inv_dof, sqrt_ppy = 1.0 / period, 1.0 / (period - 1), np.sqrt(ppy)
    ring = np.zeros((1, period))
    pos, n, run, anchor, mean, m2 = 0, 0, 0, 0.0, 0.0, 0.0
    for i in range(r.shape[0]):
        last, trailing, pos = _ring_push(r[i], ring, 0, pos, period)
        n, run, anchor, mean, m2, due = _moments_update(
            r[i], last, trailing, n, run, anchor, mean, m2, period, inv_period, mask
        )
        if due:
            anchor, mean, m2 = _window_moments(ring, 0, period)
        out[i + 1], _ = _realized_value(n, m2, period, inv_dof, sqrt_ppy)


@njit(**KERNEL)
def _realized_stream(sid, r, period, ppy, mask, ring, pos, count, run, anchor, mean, m2, value, ready):  # noqa: ANN001
    """`r` is each row's log return; `count[s]` counts the symbol's closes, one more than its returns."""
    inv_period, inv_dof, sqrt_ppy = 1.0 / period, 1.0 / (period - 1), np.sqrt(ppy)
    for i in range(r.shape[0]):
        s = sid[i]
        count[s] += 1
        if count[s] == 1:  # no return yet
            value[i], ready[i] = 0.0, False
            continue
        last, trailing, pos[s] = _ring_push(r[i], ring, s, pos[s], period)
        n, run[s], a, m, q, due = _moments_update(
            r[i], last, trailing, count[s] - 2, run[s], anchor[s], mean[s], m2[s], period, inv_period, mask
        )
        if due:
            a, m, q = _window_moments(ring, s, period)
        anchor[s], mean[s], m2[s] = a, m, q
        value[i], ready[i] = _realized_value(n, q, period, inv_dof, sqrt_ppy)


def realized_volatility(close: np.ndarray, period: int = 20, periods_per_year: float = 252.0) -> np.ndarray:
    """Annualised close-to-close volatility, lookback `period` (period+1 closes): with r_t = ln(c_t/c_{t-1}),
    sqrt(sum((r_j - mean(r))^2) / (period - 1)) * sqrt(periods_per_year) over the last `period` returns."""
    (close,) = series(close)
    period = check_period("Realized volatility period", period, 2)
    ppy = _check_periods_per_year(periods_per_year)
    out = np.empty_like(close)
    if close.shape[0]:
        out[0] = 0.0
        r = _log_ratio(close[1:], close[:-1], out[1:])
        _realized_batch(r, period, ppy, _reanchor_mask(period), out)
    mask_warmup(period, out)
    return out


class RealizedVolatility:
    """Streaming `realized_volatility` (lookback period) for `n_symbols` symbols: `update(sid, close)`."""

    def __init__(self, n_symbols: int, period: int = 20, periods_per_year: float = 252.0) -> None:
        self.period = check_period("Realized volatility period", period, 2)
        self.periods_per_year = _check_periods_per_year(periods_per_year)
        self.window = _Window(n_symbols, self.period, moments=True)
        self.prev = np.full(n_symbols, np.nan)

    def update_current(self, sid: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        w = self.window
        sid, close = rows(w.n_symbols, sid, close)
        value, ready = w.output(close.shape[0])
        _close_ratio_stream(sid, close, self.prev, value)
        r = np.log(value, out=value)
        _realized_stream(
            sid, r, self.period, self.periods_per_year, w.mask, w.ring, w.pos, w.count, w.run, w.anchor, w.mean,
            w.m2, value, ready,
        )  # fmt: skip
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, close).where_ready()


# -- Parkinson and Garman-Klass: sums of per-bar range terms ---------------------------------------
@njit(**STEP)
def _range_term(hl, co, gk):  # noqa: ANN001
    """The bar's term of Garman-Klass (`gk`) or Parkinson; hl = ln(H/L), co = ln(C/O)."""
    if gk:
        return 0.5 * (hl * hl) - GARMAN_KLASS_K * (co * co)
    return hl * hl


@njit(**STEP)
def _range_vol_value(total, n, period, scale, sqrt_ppy):  # noqa: ANN001
    """`scale` turns the window's sum into a variance: 1/(4 period ln 2) (Parkinson) or 1/period
    (Garman-Klass, whose negative mean reads 0)."""
    if total <= 0.0:
        return 0.0, n >= period
    return np.sqrt(total * scale if n >= period else total * scale * period / n) * sqrt_ppy, n >= period


@njit(**KERNEL)
def _range_vol_batch(hl, co, period, ppy, gk, mask, out):  # noqa: ANN001
    scale = 1.0 / period if gk else 1.0 / (4.0 * period * LN2)
    sqrt_ppy = np.sqrt(ppy)
    ring = np.zeros((1, period))
    pos, n, run, total = 0, 0, 0, 0.0
    for i in range(hl.shape[0]):
        u = _range_term(hl[i], co[i], gk)
        last, trailing, pos = _ring_push(u, ring, 0, pos, period)
        n, run, total, due = _sum_update(u, last, trailing, n, run, total, period, mask)
        if due:
            total = _window_sum(ring, 0, period)
        out[i], _ = _range_vol_value(total, n, period, scale, sqrt_ppy)


@njit(**KERNEL)
def _range_vol_stream(sid, hl, co, period, ppy, gk, mask, ring, pos, count, run, total, value, ready):  # noqa: ANN001
    scale = 1.0 / period if gk else 1.0 / (4.0 * period * LN2)
    sqrt_ppy = np.sqrt(ppy)
    for i in range(hl.shape[0]):
        s = sid[i]
        u = _range_term(hl[i], co[i], gk)
        last, trailing, pos[s] = _ring_push(u, ring, s, pos[s], period)
        count[s], run[s], t, due = _sum_update(u, last, trailing, count[s], run[s], total[s], period, mask)
        if due:
            t = _window_sum(ring, s, period)
        total[s] = t
        value[i], ready[i] = _range_vol_value(t, count[s], period, scale, sqrt_ppy)


def _range_logs(o, h, l, c, garman_klass, out):  # noqa: ANN001, ANN202, E741
    """ln(H/L) (into `out`) and ln(C/O) (the same array for Parkinson)."""
    hl = _log_ratio(h, l, out)
    return hl, (_log_ratio(c, o) if garman_klass else hl)


def _range_volatility(o, h, l, c, period, periods_per_year, garman_klass, name):  # noqa: ANN001, ANN202, E741, PLR0913
    o, h, l, c = series(o, h, l, c)
    period = check_period(name, period)
    ppy = _check_periods_per_year(periods_per_year)
    out = np.empty_like(h)
    _range_vol_batch(
        *_range_logs(o, h, l, c, garman_klass, out), period, ppy, garman_klass, _reanchor_mask(period), out
    )
    mask_warmup(period - 1, out)
    return out


def parkinson_volatility(
    high: np.ndarray, low: np.ndarray, period: int = 20, periods_per_year: float = 252.0
) -> np.ndarray:
    """Parkinson's range volatility, lookback period-1:
    sqrt(sum(ln(H/L)^2) / (4 * period * ln 2)) * sqrt(periods_per_year) over the last `period` bars."""
    return _range_volatility(high, high, low, low, period, periods_per_year, False, "Parkinson volatility period")


def garman_klass_volatility(
    open: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 20,  # noqa: A002
    periods_per_year: float = 252.0,
) -> np.ndarray:  # fmt: skip
    """Garman-Klass volatility, lookback period-1: sqrt(max(0, m)) * sqrt(periods_per_year) where m is the
    mean over the last `period` bars of 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2."""
    return _range_volatility(open, high, low, close, period, periods_per_year, True, "Garman-Klass volatility period")


class _RangeVolatility:
    _name: str
    _garman_klass: bool

    def __init__(self, n_symbols: int, period: int = 20, periods_per_year: float = 252.0) -> None:
        self.period = check_period(self._name, period)
        self.periods_per_year = _check_periods_per_year(periods_per_year)
        self.window = _Window(n_symbols, self.period)

    def _update(self, sid, o, h, l, c) -> IndicatorUpdate:  # noqa: ANN001, E741
        w = self.window
        sid, o, h, l, c = rows(w.n_symbols, sid, o, h, l, c)
        value, ready = w.output(h.shape[0])
        hl, co = _range_logs(o, h, l, c, self._garman_klass, value)
        _range_vol_stream(
            sid, hl, co, self.period, self.periods_per_year, self._garman_klass, w.mask, w.ring, w.pos, w.count, w.run,
            w.total, value, ready,
        )  # fmt: skip
        return IndicatorUpdate(value, ready)


class ParkinsonVolatility(_RangeVolatility):
    """Streaming `parkinson_volatility` (lookback period-1): `update(sid, high, low)`."""

    _name, _garman_klass = "Parkinson volatility period", False

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray) -> IndicatorUpdate:
        return self._update(sid, high, high, low, low)

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        return self.update_current(sid, high, low).where_ready()


class GarmanKlassVolatility(_RangeVolatility):
    """Streaming `garman_klass_volatility` (lookback period-1): `update(sid, open, high, low, close)`."""

    _name, _garman_klass = "Garman-Klass volatility period", True

    def update_current(
        self, sid: np.ndarray, open: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray  # noqa: A002
    ) -> IndicatorUpdate:  # fmt: skip
        return self._update(sid, open, high, low, close)

    def update(
        self, sid: np.ndarray, open: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray  # noqa: A002
    ) -> np.ndarray:  # fmt: skip
        return self.update_current(sid, open, high, low, close).where_ready()


# -- Session VWAP ----------------------------------------------------------------------------------
@njit(**STEP)
def _vwap_step(t, h, l, c, v, day, pv, volume, distance):  # noqa: ANN001, E741
    """`day` is the UTC day (t // DAY_NS) of the symbol's session, `pv` and `volume` its sums so far."""
    d = t // DAY_NS
    if d != day:
        day, pv, volume = d, 0.0, 0.0
    typical = (h + l + c) / 3.0
    pv += typical * v
    volume += v
    vwap = pv / volume if volume > 0.0 else typical
    return (c / vwap - 1.0 if distance else vwap), day, pv, volume


@njit(**KERNEL)
def _vwap_batch(t, h, l, c, v, distance, out):  # noqa: ANN001, E741
    day, pv, volume = NO_SESSION, 0.0, 0.0
    for i in range(t.shape[0]):
        out[i], day, pv, volume = _vwap_step(t[i], h[i], l[i], c[i], v[i], day, pv, volume, distance)


@njit(**KERNEL)
def _vwap_stream(sid, t, h, l, c, v, distance, day, pv, volume, value):  # noqa: ANN001, E741
    for i in range(t.shape[0]):
        s = sid[i]
        value[i], day[s], pv[s], volume[s] = _vwap_step(
            t[i], h[i], l[i], c[i], v[i], day[s], pv[s], volume[s], distance
        )


def _times(event_time_ns: np.ndarray, n: int) -> np.ndarray:
    """Integer nanoseconds (a float64 cannot hold them: 256 ns steps today)."""
    t = np.asarray(event_time_ns)
    if t.dtype.kind == "M":
        t = t.astype("datetime64[ns]").view(np.int64)
    elif t.dtype.kind not in "iu":
        raise ValueError(f"event_time_ns must be integer nanoseconds or datetime64, not {t.dtype}")
    t = writable(t, np.int64)  # writable, as `rows` makes the values: one kernel signature
    if t.shape != (n,):
        raise ValueError("event_time_ns and the bars differ in length")
    return t


def _session_vwap(t, h, l, c, v, distance):  # noqa: ANN001, ANN202, E741
    h, l, c, v = series(h, l, c, v)  # noqa: E741
    t = _times(t, h.shape[0])
    out = np.empty_like(h)
    _vwap_batch(t, h, l, c, v, distance, out)
    return out


def session_vwap(
    event_time_ns: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    """Session VWAP, lookback 0: sum(tp * v) / sum(v) over the session's bars so far, tp = (H + L + C) / 3;
    a session is a UTC calendar day of event_time_ns (integer ns or datetime64); tp while its volume is 0."""
    return _session_vwap(event_time_ns, high, low, close, volume, False)


def vwap_distance(
    event_time_ns: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> np.ndarray:
    """close / session_vwap - 1, lookback 0 (see `session_vwap`)."""
    return _session_vwap(event_time_ns, high, low, close, volume, True)


class SessionVwap:
    """Streaming `session_vwap` (lookback 0, always ready): `update(sid, event_time_ns, high, low, close,
    volume)`. Per symbol: the UTC day of its session and the session's sums of tp * v and v."""

    _distance = False

    def __init__(self, n_symbols: int) -> None:
        self.n_symbols = n_symbols
        self.day = np.full(n_symbols, NO_SESSION, np.int64)
        self.pv = np.zeros(n_symbols)
        self.volume = np.zeros(n_symbols)

    def update_current(
        self, sid: np.ndarray, event_time_ns: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
        volume: np.ndarray,
    ) -> IndicatorUpdate:  # fmt: skip
        sid, h, l, c, v = rows(self.n_symbols, sid, high, low, close, volume)  # noqa: E741
        t = _times(event_time_ns, sid.shape[0])
        value = np.empty(sid.shape[0])
        _vwap_stream(sid, t, h, l, c, v, self._distance, self.day, self.pv, self.volume, value)
        return IndicatorUpdate(value, np.ones(sid.shape[0], np.bool_))

    def update(
        self, sid: np.ndarray, event_time_ns: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
        volume: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        return self.update_current(sid, event_time_ns, high, low, close, volume).value


class VwapDistance(SessionVwap):
    """Streaming `vwap_distance` (lookback 0, always ready): close / session VWAP - 1."""

    _distance = True
