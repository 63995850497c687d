"""Volatility, bands and ranges (see `_base` for the one-definition, two-forms pattern).

The reference is the installed TA-Lib (C library 0.8.1), whose arithmetic differs in places from the
older C sources: the formulas below are read from its machine code and match it to the bit.
References and warm-up (first valid output at index lookback, 0-based):
* STDDEV(n, k)  TA_STDDEV (population), lookback n-1: k * sqrt(variance). TA-Lib 0.8.1's variance does
          not keep plain running sums of x and x^2 (they lose the variance's digits to cancellation): it
          keeps the sums of x - K and (x - K)^2 for a shift K, first the first value, and re-anchors, i.e.
          takes K = the window's mean and recomputes both sums from the window, when the variance falls
          below 1e-6 of the remaining mean square, a leaving square exceeds 1e6 times the remaining sum,
          or 32n bars have passed. We do the same; the streaming form re-anchors from its ring.
* BBANDS(n, up, dn)  TA_BBANDS with the SMA (matype 0), lookback n-1: middle = SMA(n), upper/lower =
          middle +/- up/dn * STDDEV(n), as TA-Lib computes them in one pass (the upper band's product is
          fused when up != dn). percent_b = (close - lower) / (upper - lower), 0.5 where they coincide.
* TRANGE  TA_TRANGE, lookback 1: max(high - low, |close[-1] - high|, |close[-1] - low|).
* ATR(n)  TA_ATR, lookback n: seeded with the mean of the first n true ranges (bars 1..n; bar 0 has
          none), then Wilder's smoothing as atr*a + tr*b with a = (n-1)/n, b = 1 - a, the first product
          fused (TA-Lib 0.8.1's FMA build).
* NATR(n) TA_NATR, lookback n: 100 * ATR / close (0 for a close of exactly 0). n >= 2: TA-Lib's NATR(1)
          returns the true range itself, not normalized, so period 1 is refused rather than copied.
* ADX(n)  TA_ADX, TA_PLUS_DI, TA_MINUS_DI: the DIs have lookback n, the ADX 2n-1, and `adx()` masks each
          output to its own lookback. Wilder sums of +DM, -DM and TR start as plain sums of the n-1 values
          of bars 1..n-1, then s = s - s/n + value; DI = 100*DM/TR (0 unless TR > 0); DX = 100*|DI- - DI+|
          / (DI- + DI+), none unless TR > 0 and |DI- + DI+| >= 1e-14; the first ADX is the mean of the DX
          of bars n..2n-1, then adx = (adx*(n-1) + dx)/n. Without a DX the ADX keeps its value (its seed
          sum skips the bar) and DX repeats the previous one (0 for the first).
* DX(n)   TA_DX, lookback n, as above.
* KELTNER(n, m, k)  no TA-Lib function: middle = TA_EMA(close, n), upper/lower = middle +/- k * TA_ATR(m),
          lookback max(n-1, m).
* DONCHIAN(n)  upper = TA_MAX(high, n), lower = TA_MIN(low, n), middle = (upper + lower)/2, lookback n-1;
          `rolling_max`/`rolling_min` are TA_MAX/TA_MIN (n >= 2, as TA-Lib). Exact extremes with constant
          amortized work per bar (van Herk/Gil-Werman, as TA-Lib 0.8.1), see `_extreme_step`.

Streaming values before readiness are NaN, except the rolling extremes and Donchian, which give the
extremes of the bars seen so far (as Lean's Maximum/Minimum do). Inputs are expected without NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from utp.core.indicators._base import (
    KERNEL, KERNEL_NO_FMA, NAN, STEP, IndicatorUpdate, check_period, mask_warmup, rows, series,
)  # fmt: skip
from utp.core.indicators.averages import _ema_step

#: TA-Lib 0.8.1 re-anchors its variance sums at least every this many windows (32 * period bars).
VAR_REANCHOR_WINDOWS = 32
#: TA-Lib's TA_IS_ZERO: a sum of the DIs below this in magnitude gives no DX (in DX and ADX).
TA_EPSILON = 1e-14
#: Steady batch loops index with unsigned integers (`range(np.uint64(a), np.uint64(b))`, `i - _ONE`):
#: numba then omits its negative-index wraparound, a select per access that LLVM cannot drop for offsets
#: like i - 1 (5% on the ATR, half the speed of the extremes' short loops). Never mix them with
#: signed integers in arithmetic: numba would compute in float64.
_ONE = np.uint64(1)


def _check_factor(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


@intrinsic
def _fma(typingctx, a, b, c):  # noqa: ANN001, ANN202, ARG001
    """a*b + c rounded once. Where TA-Lib's build fuses one product but not its neighbours (the upper band
    of BBANDS but none of its variance sums; the ATR's atr*a but not tr*b), contraction cannot say which:
    the kernel fuses here, explicitly."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202, ARG001
        double = ir.DoubleType()
        fma = builder.module.declare_intrinsic("llvm.fma", [double], ir.FunctionType(double, [double] * 3))
        return builder.call(fma, args)

    return sig, codegen


# -- Variance (STDDEV, BBANDS) ---------------------------------------------------------------------
@njit(**STEP)
def _window_moments(buf, row, start, period, inv):  # noqa: ANN001
    """TA-Lib's re-anchor: K = the window's mean, then the sums of deviations and squares from it, oldest
    first. The window is `buf[row, start:]`, wrapping to the row's start (a ring in the streaming form)."""
    size = buf.shape[1]
    total = 0.0
    j = start
    for _ in range(period):
        total += buf[row, j]
        j = j + 1 if j + 1 < size else 0
    k = total * inv
    s1, s2 = 0.0, 0.0
    j = start
    for _ in range(period):
        d = buf[row, j] - k
        s1 += d
        s2 += d * d
        j = j + 1 if j + 1 < size else 0
    m1 = inv * s1
    mean_square = inv * s2
    var = mean_square - m1 * m1
    if not var >= mean_square * 1e-12:  # cancellation noise (NaN passes, as in TA-Lib)
        var = 0.0
    return k, s1, s2, var


@njit(**STEP)
def _var_reanchor(buf, row, start, period, inv):  # noqa: ANN001
    """The variance of the window and the sums for the next one, recomputed from the window (oldest at
    `start`, which leaves after this bar); the re-anchor countdown restarts."""
    k, s1, s2, var = _window_moments(buf, row, start, period, inv)
    t = buf[row, start] - k
    return var, k, s1 - t, s2 - t * t, VAR_REANCHOR_WINDOWS * period


@njit(**STEP)
def _var_steady(x, oldest, k, s1, s2, counter, inv):  # noqa: ANN001
    """One full-window bar of TA-Lib 0.8.1's variance from its running sums of x - k and (x - k)^2;
    `oldest` is the window's oldest value, which leaves after this bar. `stale` asks the kernel for
    `_var_reanchor` (which needs the window) when TA-Lib would re-anchor: the variance is below 1e-6 of
    the mean square, the leaving square is above 1e6 times the remaining sum, or the countdown ends."""
    d = x - k
    s1 += d
    s2 += d * d
    m1 = inv * s1
    var = inv * s2 - m1 * m1
    t = oldest - k
    tt = t * t
    s2 -= tt
    stale = (inv * s2) * 1e-6 > var or tt > s2 * 1e6 or counter == 1
    return var, s1 - t, s2, counter - 1, stale


@njit(**STEP)
def _var_warmup(x, count, k, s1, s2):  # noqa: ANN001
    """A bar before the window is full (`count` includes it): the shift is the first value (TA-Lib's)."""
    if count == 1:
        k = x
    d = x - k
    s1 += d
    s2 += d * d
    return k, s1, s2


# -- STDDEV ----------------------------------------------------------------------------------------
@njit(**STEP)
def _stddev_value(var, nbdev):  # noqa: ANN001
    return math.sqrt(var) * nbdev


@njit(**STEP)
def _stddev_step(x, oldest, count, k, s1, s2, counter, period, inv):  # noqa: ANN001
    """`count` counts bars, this one included after the call; `oldest` (the window's oldest value) is read
    once the window is full. Returns the variance; the kernel re-anchors when `stale`."""
    count += 1
    if count < period:
        k, s1, s2 = _var_warmup(x, count, k, s1, s2)
        return NAN, False, False, count, k, s1, s2, counter
    var, s1, s2, counter, stale = _var_steady(x, oldest, k, s1, s2, counter, inv)
    return var, True, stale, count, k, s1, s2, counter


@njit(**KERNEL_NO_FMA)
def _stddev_batch(x, period, nbdev, out):  # noqa: ANN001
    n = x.shape[0]
    buf = x.reshape((1, n))
    inv = 1.0 / period
    count, k, s1, s2, counter = 0, 0.0, 0.0, 0.0, VAR_REANCHOR_WINDOWS * period
    warm = min(period - 1, n)
    for i in range(warm):
        out[i], _, _, count, k, s1, s2, counter = _stddev_step(x[i], 0.0, count, k, s1, s2, counter, period, inv)
    lag = np.uint64(period - 1)
    for i in range(np.uint64(warm), np.uint64(n)):  # the step's steady branch
        first = i - lag
        var, s1, s2, counter, stale = _var_steady(x[i], x[first], k, s1, s2, counter, inv)
        if stale:
            var, k, s1, s2, counter = _var_reanchor(buf, 0, np.int64(first), period, inv)
        out[i] = _stddev_value(var, nbdev)


@njit(**KERNEL_NO_FMA)
def _stddev_stream(sid, x, period, nbdev, ring, pos, count, k, s1, s2, counter, value, ready):  # noqa: ANN001
    inv = 1.0 / period
    for i in range(x.shape[0]):
        s = sid[i]
        ring[s, pos[s]] = x[i]
        first = pos[s] + 1 if pos[s] + 1 < period else 0  # the slot of the window's oldest value
        pos[s] = first
        var, ready[i], stale, count[s], k[s], s1[s], s2[s], counter[s] = _stddev_step(
            x[i], ring[s, first], count[s], k[s], s1[s], s2[s], counter[s], period, inv
        )
        if stale:
            var, k[s], s1[s], s2[s], counter[s] = _var_reanchor(ring, s, first, period, inv)
        value[i] = _stddev_value(var, nbdev)


def stddev(close: np.ndarray, period: int = 5, nbdev: float = 1.0) -> np.ndarray:
    """Population standard deviation times `nbdev` (TA_STDDEV), lookback period-1."""
    (close,) = series(close)
    period = check_period("STDDEV period", period, 2)
    nbdev = _check_factor("STDDEV nbdev", nbdev)
    out = np.empty_like(close)
    _stddev_batch(close, period, nbdev, out)
    mask_warmup(period - 1, out)
    return out


class _VarState:
    """Per-symbol state of TA-Lib's variance: the window ring and the shifted sums."""

    def __init__(self, n_symbols: int, period: int) -> None:
        self.n_symbols, self.period = n_symbols, period
        self.ring = np.zeros((n_symbols, period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)
        self.k = np.zeros(n_symbols)
        self.s1 = np.zeros(n_symbols)
        self.s2 = np.zeros(n_symbols)
        self.counter = np.full(n_symbols, VAR_REANCHOR_WINDOWS * period, np.int64)


class Stddev(_VarState):
    def __init__(self, n_symbols: int, period: int = 5, nbdev: float = 1.0) -> None:
        super().__init__(n_symbols, check_period("STDDEV period", period, 2))
        self.nbdev = _check_factor("STDDEV nbdev", nbdev)

    def update_current(self, sid: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, close = rows(self.n_symbols, sid, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _stddev_stream(
            sid, close, self.period, self.nbdev, self.ring, self.pos, self.count, self.k, self.s1, self.s2,
            self.counter, value, ready,
        )  # fmt: skip
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, close).where_ready()


# -- BBANDS ----------------------------------------------------------------------------------------
class BbandsResult(NamedTuple):
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray
    percent_b: np.ndarray


class BbandsUpdate(NamedTuple):
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray
    percent_b: np.ndarray
    ready: np.ndarray


@njit(**STEP)
def _bbands_values(x, var, total, period, up, dn):  # noqa: ANN001
    """The bands from the variance and the SMA's running total, in TA-Lib's order of operations. Nothing
    here depends on the previous bar, so the batch computes it in a second, vectorized pass (TA-Lib's
    divisions and square roots are what limit its speed)."""
    middle = total / period
    sd = 0.0 if var == 0.0 else math.sqrt(var)
    if up == dn:
        band = sd * up
        upper = middle + band
        lower = middle - band
    else:
        upper = _fma(sd, up, middle)
        lower = middle - sd * dn
    width = upper - lower
    percent_b = (x - lower) / width if width != 0.0 else 0.5
    return upper, middle, lower, percent_b


@njit(**STEP)
def _bbands_step(x, oldest, count, total, k, s1, s2, counter, period, inv):  # noqa: ANN001
    """The serial part of a bar: the SMA's running total takes x (`total_in` gives the middle band) and
    drops the window's oldest value; the variance as in `_stddev_step`."""
    total += x
    total_in = total
    var, ready, stale, count, k, s1, s2, counter = _stddev_step(x, oldest, count, k, s1, s2, counter, period, inv)
    if ready:
        total -= oldest
    return var, total_in, ready, stale, count, total, k, s1, s2, counter


@njit(**KERNEL_NO_FMA)
def _bbands_batch(x, period, up, dn, out_upper, out_middle, out_lower, out_b):  # noqa: ANN001
    n = x.shape[0]
    buf = x.reshape((1, n))
    inv = 1.0 / period
    count, total, k, s1, s2, counter = 0, 0.0, 0.0, 0.0, 0.0, VAR_REANCHOR_WINDOWS * period
    warm = min(period - 1, n)
    # serial pass: the variance into out_lower, the SMA's total into out_middle
    for i in range(warm):
        out_lower[i], out_middle[i], _, _, count, total, k, s1, s2, counter = _bbands_step(
            x[i], 0.0, count, total, k, s1, s2, counter, period, inv
        )
    lag = np.uint64(period - 1)
    for i in range(np.uint64(warm), np.uint64(n)):
        oldest = x[i - lag]
        total += x[i]
        out_middle[i] = total
        total -= oldest
        var, s1, s2, counter, stale = _var_steady(x[i], oldest, k, s1, s2, counter, inv)
        if stale:
            var, k, s1, s2, counter = _var_reanchor(buf, 0, np.int64(i - lag), period, inv)
        out_lower[i] = var
    for i in range(n):  # from 0, not `warm`: indices provably >= 0 let it vectorize (warm-up rows give NaN)
        out_upper[i], out_middle[i], out_lower[i], out_b[i] = _bbands_values(
            x[i], out_lower[i], out_middle[i], period, up, dn
        )


@njit(**KERNEL_NO_FMA)
def _bbands_stream(sid, x, period, up, dn, ring, pos, count, total, k, s1, s2, counter, upper, middle, lower, b, ready):  # noqa: ANN001, E501
    inv = 1.0 / period
    for i in range(x.shape[0]):
        s = sid[i]
        ring[s, pos[s]] = x[i]
        first = pos[s] + 1 if pos[s] + 1 < period else 0
        pos[s] = first
        var, total_in, ready[i], stale, count[s], total[s], k[s], s1[s], s2[s], counter[s] = _bbands_step(
            x[i], ring[s, first], count[s], total[s], k[s], s1[s], s2[s], counter[s], period, inv
        )
        if stale:
            var, k[s], s1[s], s2[s], counter[s] = _var_reanchor(ring, s, first, period, inv)
        if ready[i]:
            upper[i], middle[i], lower[i], b[i] = _bbands_values(x[i], var, total_in, period, up, dn)
        else:
            upper[i], middle[i], lower[i], b[i] = NAN, NAN, NAN, NAN


def _bbands_args(period: int, nbdevup: float, nbdevdn: float) -> tuple[int, float, float]:
    return (
        check_period("BBANDS period", period, 2),
        _check_factor("BBANDS nbdevup", nbdevup),
        _check_factor("BBANDS nbdevdn", nbdevdn),
    )


def bbands(close: np.ndarray, period: int = 20, nbdevup: float = 2.0, nbdevdn: float = 2.0) -> BbandsResult:
    """Bollinger bands on the SMA (TA_BBANDS, matype 0) and %B, lookback period-1."""
    (close,) = series(close)
    period, up, dn = _bbands_args(period, nbdevup, nbdevdn)
    out = BbandsResult(*(np.empty_like(close) for _ in range(4)))
    _bbands_batch(close, period, up, dn, *out)
    mask_warmup(period - 1, *out)
    return out


class Bbands(_VarState):
    def __init__(self, n_symbols: int, period: int = 20, nbdevup: float = 2.0, nbdevdn: float = 2.0) -> None:
        period, self.up, self.dn = _bbands_args(period, nbdevup, nbdevdn)
        super().__init__(n_symbols, period)
        self.total = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, close: np.ndarray) -> BbandsUpdate:
        sid, close = rows(self.n_symbols, sid, close)
        n = close.shape[0]
        out = BbandsUpdate(np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.bool_))
        _bbands_stream(
            sid, close, self.period, self.up, self.dn, self.ring, self.pos, self.count, self.total, self.k,
            self.s1, self.s2, self.counter, *out,
        )  # fmt: skip
        return out

    def update(self, sid: np.ndarray, close: np.ndarray) -> BbandsResult:
        u = self.update_current(sid, close)
        return BbandsResult(*(np.where(u.ready, a, np.nan) for a in u[:4]))


# -- True range, ATR, NATR -------------------------------------------------------------------------
@njit(**STEP)
def _true_range(high, low, prev_close):  # noqa: ANN001
    greatest = high - low
    v = abs(prev_close - high)
    if v > greatest:
        greatest = v
    v = abs(prev_close - low)
    if v > greatest:
        greatest = v
    return greatest


@njit(**STEP)
def _trange_step(high, low, close, count, prev_close):  # noqa: ANN001
    count += 1
    value = _true_range(high, low, prev_close) if count > 1 else NAN
    return value, count > 1, count, close


@njit(**KERNEL)
def _trange_batch(high, low, close, out):  # noqa: ANN001
    if high.shape[0]:
        out[0] = NAN
    for i in range(_ONE, np.uint64(high.shape[0])):  # the step's steady branch, the previous close read
        out[i] = _true_range(high[i], low[i], close[i - _ONE])


@njit(**KERNEL)
def _trange_stream(sid, high, low, close, count, prev_close, value, ready):  # noqa: ANN001
    for i in range(high.shape[0]):
        s = sid[i]
        value[i], ready[i], count[s], prev_close[s] = _trange_step(high[i], low[i], close[i], count[s], prev_close[s])


def trange(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """True range (TA_TRANGE), lookback 1."""
    high, low, close = series(high, low, close)
    out = np.empty_like(close)
    _trange_batch(high, low, close, out)
    return out


class _Hlc:
    """Per-symbol bar count and previous close, the state every high/low/close indicator here starts with."""

    def __init__(self, n_symbols: int) -> None:
        self.n_symbols = n_symbols
        self.count = np.zeros(n_symbols, np.int64)
        self.prev_close = np.zeros(n_symbols)


class TrueRange(_Hlc):
    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _trange_stream(sid, high, low, close, self.count, self.prev_close, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, high, low, close).where_ready()


@njit(**STEP)
def _atr_weights(period):  # noqa: ANN001
    """TA-Lib 0.8.1's Wilder weights: a = (n-1)/n on the ATR, b = 1 - a on the true range."""
    a = (period - 1) / period
    return a, 1.0 - a


@njit(**STEP)
def _atr_steady(tr, atr, a, b):  # noqa: ANN001
    """Wilder's smoothing as TA-Lib 0.8.1's FMA build computes it: atr*a + tr*b, the first product fused
    (explicitly, so that it does not depend on which product the compiler would choose to contract)."""
    return _fma(atr, a, tr * b)


@njit(**STEP)
def _atr_step(high, low, close, count, prev_close, atr, period, a, b):  # noqa: ANN001
    """`atr` holds the sum of the true ranges until the seed (bar `period`), the ATR after."""
    count += 1
    if count == 1:
        return NAN, False, count, close, atr
    tr = _true_range(high, low, prev_close)
    if count <= period:
        atr += tr
        return NAN, False, count, close, atr
    if count == period + 1:
        atr += tr
        atr /= period
    else:
        atr = _atr_steady(tr, atr, a, b)
    return atr, True, count, close, atr


@njit(**KERNEL)
def _atr_batch(high, low, close, period, out):  # noqa: ANN001
    n = high.shape[0]
    a, b = _atr_weights(period)
    count, prev_close, atr = 0, 0.0, 0.0
    warm = min(period + 1, n)
    for i in range(warm):
        out[i], _, count, prev_close, atr = _atr_step(high[i], low[i], close[i], count, prev_close, atr, period, a, b)
    for i in range(np.uint64(warm), np.uint64(n)):
        atr = _atr_steady(_true_range(high[i], low[i], close[i - _ONE]), atr, a, b)
        out[i] = atr


@njit(**KERNEL)
def _atr_stream(sid, high, low, close, period, count, prev_close, atr, value, ready):  # noqa: ANN001
    a, b = _atr_weights(period)
    for i in range(high.shape[0]):
        s = sid[i]
        value[i], ready[i], count[s], prev_close[s], atr[s] = _atr_step(
            high[i], low[i], close[i], count[s], prev_close[s], atr[s], period, a, b
        )


@njit(**STEP)
def _natr_value(atr, close):  # noqa: ANN001
    return atr / close * 100.0 if close != 0.0 else 0.0  # TA-Lib 0.8.1: only an exact zero


@njit(**STEP)
def _natr_step(high, low, close, count, prev_close, atr, period, a, b):  # noqa: ANN001
    _, ready, count, prev_close, atr = _atr_step(high, low, close, count, prev_close, atr, period, a, b)
    return (_natr_value(atr, close) if ready else NAN), ready, count, prev_close, atr


@njit(**KERNEL)
def _natr_batch(high, low, close, period, out):  # noqa: ANN001
    n = high.shape[0]
    a, b = _atr_weights(period)
    count, prev_close, atr = 0, 0.0, 0.0
    warm = min(period + 1, n)
    for i in range(warm):
        out[i], _, count, prev_close, atr = _natr_step(high[i], low[i], close[i], count, prev_close, atr, period, a, b)
    for i in range(np.uint64(warm), np.uint64(n)):
        atr = _atr_steady(_true_range(high[i], low[i], close[i - _ONE]), atr, a, b)
        out[i] = _natr_value(atr, close[i])


@njit(**KERNEL)
def _natr_stream(sid, high, low, close, period, count, prev_close, atr, value, ready):  # noqa: ANN001
    a, b = _atr_weights(period)
    for i in range(high.shape[0]):
        s = sid[i]
        value[i], ready[i], count[s], prev_close[s], atr[s] = _natr_step(
            high[i], low[i], close[i], count[s], prev_close[s], atr[s], period, a, b
        )


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Wilder's average true range (TA_ATR), lookback period."""
    high, low, close = series(high, low, close)
    period = check_period("ATR period", period)
    out = np.empty_like(close)
    _atr_batch(high, low, close, period, out)
    mask_warmup(period, out)
    return out


def natr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Normalized average true range, 100 * ATR / close (TA_NATR), lookback period; period >= 2."""
    high, low, close = series(high, low, close)
    period = check_period("NATR period", period, 2)
    out = np.empty_like(close)
    _natr_batch(high, low, close, period, out)
    mask_warmup(period, out)
    return out


class Atr(_Hlc):
    kernel = staticmethod(_atr_stream)
    name, minimum = "ATR", 1

    def __init__(self, n_symbols: int, period: int = 14) -> None:
        super().__init__(n_symbols)
        self.period = check_period(f"{self.name} period", period, self.minimum)
        self.atr = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        self.kernel(sid, high, low, close, self.period, self.count, self.prev_close, self.atr, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, high, low, close).where_ready()


class Natr(Atr):
    kernel = staticmethod(_natr_stream)
    name, minimum = "NATR", 2


# -- ADX, +DI, -DI, DX -----------------------------------------------------------------------------
class AdxResult(NamedTuple):
    adx: np.ndarray
    plus_di: np.ndarray
    minus_di: np.ndarray


class AdxUpdate(NamedTuple):
    adx: np.ndarray
    plus_di: np.ndarray
    minus_di: np.ndarray
    ready: np.ndarray  # the ADX (from bar 2n-1)
    di_ready: np.ndarray  # the DIs (from bar n)


@njit(**STEP)
def _dm_steady(high, low, prev_high, prev_low, prev_close, plus_dm, minus_dm, tr, period):  # noqa: ANN001
    """One bar of Wilder's +DM, -DM and TR sums once seeded, in TA-Lib's order; the DIs and the DX."""
    diff_p = high - prev_high
    diff_m = prev_low - low
    minus_dm -= minus_dm / period
    plus_dm -= plus_dm / period
    if diff_m > 0 and diff_p < diff_m:
        minus_dm += diff_m
    elif diff_p > 0 and diff_p > diff_m:
        plus_dm += diff_p
    tr = tr - tr / period + _true_range(high, low, prev_close)
    # TA-Lib 0.8.1 needs a positive TR for the DIs, and a DI sum that is not TA_IS_ZERO for the DX
    dx, has_dx = NAN, False
    if tr > 0.0:
        minus_di = 100.0 * (minus_dm / tr)
        plus_di = 100.0 * (plus_dm / tr)
        total = minus_di + plus_di
        if total > TA_EPSILON or total < -TA_EPSILON:
            dx, has_dx = 100.0 * (abs(minus_di - plus_di) / total), True
    else:
        minus_di, plus_di = 0.0, 0.0
    return plus_di, minus_di, dx, has_dx, plus_dm, minus_dm, tr


@njit(**STEP)
def _dm_step(high, low, close, count, prev_high, prev_low, prev_close, plus_dm, minus_dm, tr, period):  # noqa: ANN001
    """`count` counts bars, this one included after the call; the DIs and DX are valid from bar `period`
    (count period+1). Bars 1..period-1 seed the sums with plain sums of their period-1 values."""
    count += 1
    if count > period:
        plus_di, minus_di, dx, has_dx, plus_dm, minus_dm, tr = _dm_steady(
            high, low, prev_high, prev_low, prev_close, plus_dm, minus_dm, tr, period
        )
        return plus_di, minus_di, dx, has_dx, True, count, high, low, close, plus_dm, minus_dm, tr
    if count > 1:
        diff_p = high - prev_high
        diff_m = prev_low - low
        if diff_m > 0 and diff_p < diff_m:
            minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            plus_dm += diff_p
        tr += _true_range(high, low, prev_close)
    return NAN, NAN, NAN, False, False, count, high, low, close, plus_dm, minus_dm, tr


@njit(**STEP)
def _adx_steady(dx, has_dx, adx, period):  # noqa: ANN001
    return (adx * (period - 1) + dx) / period if has_dx else adx


@njit(**STEP)
def _adx_smooth(dx, has_dx, count, adx, period):  # noqa: ANN001
    """`adx` holds the sum of the first `period` DX (bars period..2*period-1), then the ADX."""
    if count > 2 * period:
        adx = _adx_steady(dx, has_dx, adx, period)
        return adx, True, adx
    if has_dx:
        adx += dx
    if count == 2 * period:
        adx = adx / period
        return adx, True, adx
    return NAN, False, adx


@njit(**STEP)
def _adx_step(high, low, close, count, ph, pl, pc, plus_dm, minus_dm, tr, adx, period):  # noqa: ANN001
    plus_di, minus_di, dx, has_dx, di_ready, count, ph, pl, pc, plus_dm, minus_dm, tr = _dm_step(
        high, low, close, count, ph, pl, pc, plus_dm, minus_dm, tr, period
    )
    value, ready = NAN, False
    if di_ready:
        value, ready, adx = _adx_smooth(dx, has_dx, count, adx, period)
    return value, plus_di, minus_di, ready, di_ready, count, ph, pl, pc, plus_dm, minus_dm, tr, adx


@njit(**KERNEL_NO_FMA)
def _adx_batch(high, low, close, period, out_adx, out_plus, out_minus):  # noqa: ANN001
    n = high.shape[0]
    count, ph, pl, pc, plus_dm, minus_dm, tr, adx = 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    warm = min(2 * period, n)
    for i in range(warm):
        out_adx[i], out_plus[i], out_minus[i], _, _, count, ph, pl, pc, plus_dm, minus_dm, tr, adx = _adx_step(
            high[i], low[i], close[i], count, ph, pl, pc, plus_dm, minus_dm, tr, adx, period
        )
    for i in range(np.uint64(warm), np.uint64(n)):
        j = i - _ONE
        out_plus[i], out_minus[i], dx, has_dx, plus_dm, minus_dm, tr = _dm_steady(
            high[i], low[i], high[j], low[j], close[j], plus_dm, minus_dm, tr, period
        )
        adx = _adx_steady(dx, has_dx, adx, period)
        out_adx[i] = adx


@njit(**KERNEL_NO_FMA)
def _adx_stream(sid, high, low, close, period, count, prev, sums, adx, out_adx, out_plus, out_minus, ready, di_ready):  # noqa: ANN001, E501
    # prev[s] = (high, low, close) of the symbol's previous bar; sums[s] = (+DM, -DM, TR)
    for i in range(high.shape[0]):
        s = sid[i]
        (out_adx[i], out_plus[i], out_minus[i], ready[i], di_ready[i], count[s], prev[s, 0], prev[s, 1], prev[s, 2],
         sums[s, 0], sums[s, 1], sums[s, 2], adx[s]) = _adx_step(
            high[i], low[i], close[i], count[s], prev[s, 0], prev[s, 1], prev[s, 2], sums[s, 0], sums[s, 1],
            sums[s, 2], adx[s], period,
        )  # fmt: skip


@njit(**STEP)
def _dx_step(high, low, close, count, ph, pl, pc, plus_dm, minus_dm, tr, last_dx, period):  # noqa: ANN001
    """TA-Lib's DX repeats the previous one where it has none (0 for the first)."""
    _, _, dx, has_dx, ready, count, ph, pl, pc, plus_dm, minus_dm, tr = _dm_step(
        high, low, close, count, ph, pl, pc, plus_dm, minus_dm, tr, period
    )
    if ready:
        if has_dx:
            last_dx = dx
        return last_dx, True, count, ph, pl, pc, plus_dm, minus_dm, tr, last_dx
    return NAN, False, count, ph, pl, pc, plus_dm, minus_dm, tr, last_dx


@njit(**KERNEL_NO_FMA)
def _dx_batch(high, low, close, period, out):  # noqa: ANN001
    n = high.shape[0]
    count, ph, pl, pc, plus_dm, minus_dm, tr, last_dx = 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    warm = min(period + 1, n)
    for i in range(warm):
        out[i], _, count, ph, pl, pc, plus_dm, minus_dm, tr, last_dx = _dx_step(
            high[i], low[i], close[i], count, ph, pl, pc, plus_dm, minus_dm, tr, last_dx, period
        )
    for i in range(np.uint64(warm), np.uint64(n)):
        j = i - _ONE
        _, _, dx, has_dx, plus_dm, minus_dm, tr = _dm_steady(
            high[i], low[i], high[j], low[j], close[j], plus_dm, minus_dm, tr, period
        )
        if has_dx:
            last_dx = dx
        out[i] = last_dx


@njit(**KERNEL_NO_FMA)
def _dx_stream(sid, high, low, close, period, count, prev, sums, last_dx, value, ready):  # noqa: ANN001
    for i in range(high.shape[0]):
        s = sid[i]
        (value[i], ready[i], count[s], prev[s, 0], prev[s, 1], prev[s, 2], sums[s, 0], sums[s, 1], sums[s, 2],
         last_dx[s]) = _dx_step(
            high[i], low[i], close[i], count[s], prev[s, 0], prev[s, 1], prev[s, 2], sums[s, 0], sums[s, 1],
            sums[s, 2], last_dx[s], period,
        )  # fmt: skip


def adx(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> AdxResult:
    """Wilder's ADX with +DI and -DI (TA_ADX, TA_PLUS_DI, TA_MINUS_DI). Each output is masked to its own
    TA-Lib lookback: 2*period-1 for the ADX, period for the DIs."""
    high, low, close = series(high, low, close)
    period = check_period("ADX period", period, 2)
    out = AdxResult(np.empty_like(close), np.empty_like(close), np.empty_like(close))
    _adx_batch(high, low, close, period, *out)
    mask_warmup(2 * period - 1, out.adx)
    mask_warmup(period, out.plus_di, out.minus_di)
    return out


def dx(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Wilder's directional movement index (TA_DX), lookback period."""
    high, low, close = series(high, low, close)
    period = check_period("DX period", period, 2)
    out = np.empty_like(close)
    _dx_batch(high, low, close, period, out)
    mask_warmup(period, out)
    return out


class _DirectionalState:
    def __init__(self, n_symbols: int, period: int, name: str) -> None:
        self.n_symbols, self.period = n_symbols, check_period(f"{name} period", period, 2)
        self.count = np.zeros(n_symbols, np.int64)
        self.prev = np.zeros((n_symbols, 3))
        self.sums = np.zeros((n_symbols, 3))


class Adx(_DirectionalState):
    def __init__(self, n_symbols: int, period: int = 14) -> None:
        super().__init__(n_symbols, period, "ADX")
        self.adx = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> AdxUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        n = close.shape[0]
        out = AdxUpdate(np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.bool_), np.empty(n, np.bool_))
        _adx_stream(sid, high, low, close, self.period, self.count, self.prev, self.sums, self.adx, *out)
        return out

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> AdxResult:
        u = self.update_current(sid, high, low, close)
        return AdxResult(
            np.where(u.ready, u.adx, np.nan),
            np.where(u.di_ready, u.plus_di, np.nan),
            np.where(u.di_ready, u.minus_di, np.nan),
        )


class Dx(_DirectionalState):
    def __init__(self, n_symbols: int, period: int = 14) -> None:
        super().__init__(n_symbols, period, "DX")
        self.last_dx = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _dx_stream(sid, high, low, close, self.period, self.count, self.prev, self.sums, self.last_dx, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, high, low, close).where_ready()


# -- Keltner channels ------------------------------------------------------------------------------
class KeltnerResult(NamedTuple):
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray


class KeltnerUpdate(NamedTuple):
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray
    ready: np.ndarray


@njit(**STEP)
def _keltner_bands(middle, atr_value, multiplier):  # noqa: ANN001
    # one product used twice, so it is rounded once, as in the reference EMA + k*ATR computed in numpy
    band = multiplier * atr_value
    return middle + band, middle - band


@njit(**STEP)
def _keltner_step(high, low, close, count, ema, seed, atr_count, prev_close, atr, period, atr_period, k, a, b, multiplier):  # noqa: ANN001, E501
    middle, ema_ready, count, ema, seed = _ema_step(close, count, ema, seed, period, k)
    atr_value, atr_ready, atr_count, prev_close, atr = _atr_step(
        high, low, close, atr_count, prev_close, atr, atr_period, a, b
    )
    if ema_ready and atr_ready:
        upper, lower = _keltner_bands(middle, atr_value, multiplier)
        return upper, middle, lower, True, count, ema, seed, atr_count, prev_close, atr
    return NAN, NAN, NAN, False, count, ema, seed, atr_count, prev_close, atr


@njit(**KERNEL)
def _keltner_batch(high, low, close, period, atr_period, multiplier, out_upper, out_middle, out_lower):  # noqa: ANN001
    n = close.shape[0]
    k = 2.0 / (period + 1.0)
    a, b = _atr_weights(atr_period)
    count, ema, seed, atr_count, prev_close, atr = 0, 0.0, 0.0, 0, 0.0, 0.0
    warm = min(max(period, atr_period + 1), n)
    for i in range(warm):
        out_upper[i], out_middle[i], out_lower[i], _, count, ema, seed, atr_count, prev_close, atr = _keltner_step(
            high[i], low[i], close[i], count, ema, seed, atr_count, prev_close, atr, period, atr_period, k, a, b,
            multiplier,
        )
    for i in range(np.uint64(warm), np.uint64(n)):
        ema = (close[i] - ema) * k + ema  # the EMA step's steady branch
        atr = _atr_steady(_true_range(high[i], low[i], close[i - _ONE]), atr, a, b)
        out_middle[i] = ema
        out_upper[i], out_lower[i] = _keltner_bands(ema, atr, multiplier)


@njit(**KERNEL)
def _keltner_stream(sid, high, low, close, period, atr_period, multiplier, count, ema, seed, atr_count, prev_close, atr, upper, middle, lower, ready):  # noqa: ANN001, E501
    k = 2.0 / (period + 1.0)
    a, b = _atr_weights(atr_period)
    for i in range(close.shape[0]):
        s = sid[i]
        upper[i], middle[i], lower[i], ready[i], count[s], ema[s], seed[s], atr_count[s], prev_close[s], atr[s] = (
            _keltner_step(
                high[i], low[i], close[i], count[s], ema[s], seed[s], atr_count[s], prev_close[s], atr[s], period,
                atr_period, k, a, b, multiplier,
            )
        )  # fmt: skip


def _keltner_args(period: int, atr_period: int, multiplier: float) -> tuple[int, int, float]:
    return (
        check_period("Keltner period", period),
        check_period("Keltner ATR period", atr_period),
        _check_factor("Keltner multiplier", multiplier),
    )


def keltner(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    period: int = 20,
    atr_period: int = 10,
    multiplier: float = 2.0,
) -> KeltnerResult:
    """Keltner channels: TA_EMA(close, period) +/- multiplier * TA_ATR(atr_period) (no TA-Lib function;
    the reference is that composition), lookback max(period-1, atr_period)."""
    high, low, close = series(high, low, close)
    period, atr_period, multiplier = _keltner_args(period, atr_period, multiplier)
    out = KeltnerResult(np.empty_like(close), np.empty_like(close), np.empty_like(close))
    _keltner_batch(high, low, close, period, atr_period, multiplier, *out)
    mask_warmup(max(period - 1, atr_period), *out)
    return out


class Keltner:
    def __init__(self, n_symbols: int, period: int = 20, atr_period: int = 10, multiplier: float = 2.0) -> None:
        self.n_symbols = n_symbols
        self.period, self.atr_period, self.multiplier = _keltner_args(period, atr_period, multiplier)
        self.count = np.zeros(n_symbols, np.int64)
        self.ema = np.zeros(n_symbols)
        self.seed = np.zeros(n_symbols)
        self.atr_count = np.zeros(n_symbols, np.int64)
        self.prev_close = np.zeros(n_symbols)
        self.atr = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> KeltnerUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        n = close.shape[0]
        out = KeltnerUpdate(np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.bool_))
        _keltner_stream(
            sid, high, low, close, self.period, self.atr_period, self.multiplier, self.count, self.ema, self.seed,
            self.atr_count, self.prev_close, self.atr, *out,
        )  # fmt: skip
        return out

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> KeltnerResult:
        u = self.update_current(sid, high, low, close)
        return KeltnerResult(*(np.where(u.ready, a, np.nan) for a in u[:3]))


# -- Rolling extremes and Donchian channels --------------------------------------------------------
# van Herk/Gil-Werman, as TA-Lib 0.8.1's MAX/MIN: bars are cut into blocks of `period`; the window ending
# at a bar is the tail of the previous block plus the head of the current one, so its extreme is that of
# the previous block's suffix extreme (from the bar's position + 1) and the current block's prefix extreme.
# Suffix extremes are computed once per completed block: constant amortized work, exact values.
@njit(**STEP)
def _beats(a, b, is_max):  # noqa: ANN001
    return (a > b) if is_max else (a < b)


@njit(**STEP)
def _extreme_step(x, prev, phase, best, period, is_max):  # noqa: ANN001
    """One bar: `phase` is its position in its block, `best` the extreme of the block's earlier bars, `prev`
    the previous block's suffix extreme from position phase + 1 (the neutral -inf/+inf at the block's end
    and during the first block). Selects, not branches: the comparisons are unpredictable. A phase of 0
    after the call means the block is complete."""
    grown = x if _beats(x, best, is_max) else best
    best = x if phase == 0 else grown
    value = prev if _beats(prev, best, is_max) else best
    phase = phase + 1 if phase + 1 < period else 0
    return value, phase, best


@njit(**STEP)
def _suffix_extremes(src, src_row, start, dst, dst_row, period, is_max):  # noqa: ANN001
    """dst[dst_row, j] = extreme of src[src_row, start + j : start + period], for a completed block.
    Unsigned indices here and in `_extreme_series` (see `_ONE`): these loops are short, and numba's
    negative-index wraparound cost them half their speed."""
    r, w = np.uint64(src_row), np.uint64(dst_row)
    last = start + period - 1
    acc = src[r, np.uint64(last)]
    dst[w, np.uint64(period - 1)] = acc
    for t in range(1, period):
        v = src[r, np.uint64(last - t)]
        acc = acc if _beats(acc, v, is_max) else v
        dst[w, np.uint64(period - 1 - t)] = acc


@njit(**STEP)
def _extreme_series(x, period, is_max, out):  # noqa: ANN001
    """The batch form: the step over each block (the block's position is the loop's), then the block's
    suffix extremes for the next one."""
    n = x.shape[0]
    src = x.reshape((1, n))
    suffix = np.full((1, period + 1), -np.inf if is_max else np.inf)
    best = 0.0
    for start in range(0, n, period):
        m = min(period, n - start)
        for j in range(m):
            i = np.uint64(start + j)
            out[i], _, best = _extreme_step(x[i], suffix[0, np.uint64(j + 1)], j, best, period, is_max)
        if m == period:
            _suffix_extremes(src, 0, start, suffix, 0, period, is_max)


@njit(**KERNEL)
def _rolling_max_batch(x, period, out):  # noqa: ANN001
    _extreme_series(x, period, True, out)


@njit(**KERNEL)
def _rolling_min_batch(x, period, out):  # noqa: ANN001
    _extreme_series(x, period, False, out)


@njit(**STEP)
def _extreme_stream(sid, x, period, is_max, suffix, phase, best, count, value, ready):  # noqa: ANN001
    """Ring row s of `suffix` (`period` + 1 slots, the last neutral) holds the previous block's suffix
    extremes ahead of the symbol's phase and the current block's values behind it. Arrays reach a helper
    only when a block completes: passed on every row, numba would count references on every row."""
    for i in range(x.shape[0]):
        s = sid[i]
        ph = phase[s]
        value[i], phase[s], best[s] = _extreme_step(x[i], suffix[s, ph + 1], ph, best[s], period, is_max)
        suffix[s, ph] = x[i]
        if phase[s] == 0:
            _suffix_extremes(suffix, s, 0, suffix, s, period, is_max)
        count[s] += 1
        ready[i] = count[s] >= period


@njit(**KERNEL)
def _rolling_max_stream(sid, x, period, suffix, phase, best, count, value, ready):  # noqa: ANN001
    _extreme_stream(sid, x, period, True, suffix, phase, best, count, value, ready)


@njit(**KERNEL)
def _rolling_min_stream(sid, x, period, suffix, phase, best, count, value, ready):  # noqa: ANN001
    _extreme_stream(sid, x, period, False, suffix, phase, best, count, value, ready)


def rolling_max(x: np.ndarray, period: int = 30) -> np.ndarray:
    """Highest value over the last `period` bars (TA_MAX), lookback period-1."""
    (x,) = series(x)
    period = check_period("MAX period", period, 2)
    out = np.empty_like(x)
    _rolling_max_batch(x, period, out)
    mask_warmup(period - 1, out)
    return out


def rolling_min(x: np.ndarray, period: int = 30) -> np.ndarray:
    """Lowest value over the last `period` bars (TA_MIN), lookback period-1."""
    (x,) = series(x)
    period = check_period("MIN period", period, 2)
    out = np.empty_like(x)
    _rolling_min_batch(x, period, out)
    mask_warmup(period - 1, out)
    return out


class _Extremes:
    """Per-symbol van Herk/Gil-Werman state: `depth` rings per symbol (row s*depth + j), each with
    `period` + 1 slots, the last one the neutral element."""

    def __init__(self, n_symbols: int, period: int, neutral: tuple[float, ...]) -> None:
        depth = len(neutral)
        self.n_symbols, self.period = n_symbols, period
        self.suffix = np.empty((n_symbols * depth, period + 1))
        self.suffix[:] = np.tile(np.asarray(neutral), n_symbols)[:, None]
        self.phase = np.zeros(n_symbols * depth, np.int64)
        self.best = np.zeros(n_symbols * depth)
        self.count = np.zeros(n_symbols, np.int64)


class RollingMax(_Extremes):
    kernel = staticmethod(_rolling_max_stream)
    name, neutral = "MAX", -np.inf

    def __init__(self, n_symbols: int, period: int = 30) -> None:
        super().__init__(n_symbols, check_period(f"{self.name} period", period, 2), (self.neutral,))

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        self.kernel(sid, x, self.period, self.suffix, self.phase, self.best, self.count, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()


class RollingMin(RollingMax):
    kernel = staticmethod(_rolling_min_stream)
    name, neutral = "MIN", np.inf


class DonchianResult(NamedTuple):
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray


class DonchianUpdate(NamedTuple):
    upper: np.ndarray
    middle: np.ndarray
    lower: np.ndarray
    ready: np.ndarray


@njit(**STEP)
def _donchian_middle(upper, lower):  # noqa: ANN001
    return (upper + lower) / 2.0


@njit(**KERNEL)
def _donchian_batch(high, low, period, out_upper, out_middle, out_lower):  # noqa: ANN001
    _extreme_series(high, period, True, out_upper)
    _extreme_series(low, period, False, out_lower)
    for i in range(high.shape[0]):
        out_middle[i] = _donchian_middle(out_upper[i], out_lower[i])


@njit(**KERNEL)
def _donchian_stream(sid, high, low, period, suffix, phase, best, count, upper, middle, lower, ready):  # noqa: ANN001
    # ring rows 2s (highs, max) and 2s + 1 (lows, min), as in `_extreme_stream`
    for i in range(high.shape[0]):
        s = sid[i]
        r = 2 * s
        ph = phase[r]
        q = r + 1
        upper[i], phase[r], best[r] = _extreme_step(high[i], suffix[r, ph + 1], ph, best[r], period, True)
        suffix[r, ph] = high[i]
        lower[i], phase[q], best[q] = _extreme_step(low[i], suffix[q, ph + 1], ph, best[q], period, False)
        suffix[q, ph] = low[i]
        if phase[r] == 0:
            _suffix_extremes(suffix, r, 0, suffix, r, period, True)
            _suffix_extremes(suffix, q, 0, suffix, q, period, False)
        middle[i] = _donchian_middle(upper[i], lower[i])
        count[s] += 1
        ready[i] = count[s] >= period


def donchian(high: np.ndarray, low: np.ndarray, period: int = 20) -> DonchianResult:
    """Donchian channels: TA_MAX(high), TA_MIN(low) and their midpoint, lookback period-1."""
    high, low = series(high, low)
    period = check_period("Donchian period", period, 2)
    out = DonchianResult(np.empty_like(high), np.empty_like(high), np.empty_like(high))
    _donchian_batch(high, low, period, *out)
    mask_warmup(period - 1, *out)
    return out


class Donchian(_Extremes):
    def __init__(self, n_symbols: int, period: int = 20) -> None:
        super().__init__(n_symbols, check_period("Donchian period", period, 2), (-np.inf, np.inf))

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray) -> DonchianUpdate:
        sid, high, low = rows(self.n_symbols, sid, high, low)
        n = high.shape[0]
        out = DonchianUpdate(np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.bool_))
        _donchian_stream(sid, high, low, self.period, self.suffix, self.phase, self.best, self.count, *out)
        return out

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray) -> DonchianResult:
        u = self.update_current(sid, high, low)
        return DonchianResult(*(np.where(u.ready, a, np.nan) for a in u[:3]))
