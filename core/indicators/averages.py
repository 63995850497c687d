"""Moving averages: SMA, EMA, WMA, DEMA, TEMA (see `_base` for the one-definition, two-forms pattern).

References and warm-up (first valid output at index lookback, 0-based), all equal to TA-Lib's:
* SMA(n)  TA_SMA, lookback n-1. Running total: add the newest value, drop the oldest (TA-Lib's order).
* EMA(n)  TA_EMA (default compatibility), lookback n-1: seeded with the SMA of the first n values,
          then ema = (x - ema) * 2/(n+1) + ema. Lean's ExponentialMovingAverage (master) seeds the same
          way; its value before readiness is 0.
* WMA(n)  TA_WMA, lookback n-1: weights 1..n, newest heaviest, TA-Lib's running sums.
* DEMA(n) TA_DEMA, lookback 2(n-1): 2*EMA(x) - EMA(EMA(x)); each outer EMA is seeded with the SMA of the
          first n values of the one it smooths.
* TEMA(n) TA_TEMA, lookback 3(n-1): 3*EMA1 - 3*EMA2 + EMA3, each EMA of the previous one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from utp.core.indicators._base import KERNEL, KERNEL_NO_FMA, NAN, STEP, IndicatorUpdate, check_period, mask_warmup, rows, series


# -- SMA -------------------------------------------------------------------------------------------
@njit(**STEP)
def _sma_step(x, trailing, count, total, period):  # noqa: ANN001
    """`trailing` is the value leaving the window (0 while it is not full)."""
    total -= trailing
    total += x
    count += 1
    return total / period, count >= period, count, total


@njit(**KERNEL)
def _sma_batch(x, period, out):  # noqa: ANN001
    count, total = 0, 0.0
    for i in range(x.shape[0]):
        trailing = x[i - period] if i >= period else 0.0
        out[i], _, count, total = _sma_step(x[i], trailing, count, total, period)


@njit(**KERNEL)
def _sma_stream(sid, x, period, ring, pos, count, total, value, ready):  # noqa: ANN001
    for i in range(x.shape[0]):
        s = sid[i]
        trailing = ring[s, pos[s]] if count[s] >= period else 0.0
        ring[s, pos[s]] = x[i]
        pos[s] = pos[s] + 1 if pos[s] + 1 < period else 0
        value[i], ready[i], count[s], total[s] = _sma_step(x[i], trailing, count[s], total[s], period)


def sma(x: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average (TA_SMA)."""
    (x,) = series(x)
    period = check_period("SMA period", period)
    out = np.empty_like(x)
    _sma_batch(x, period, out)
    mask_warmup(period - 1, out)
    return out


class Sma:
    def __init__(self, n_symbols: int, period: int) -> None:
        self.n_symbols, self.period = n_symbols, check_period("SMA period", period)
        self.ring = np.zeros((n_symbols, self.period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)
        self.total = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _sma_stream(sid, x, self.period, self.ring, self.pos, self.count, self.total, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()


# -- EMA -------------------------------------------------------------------------------------------
@njit(**STEP)
def _ema_step(x, count, ema, seed, period, k):  # noqa: ANN001
    count += 1
    if count < period:
        seed += x
        return 0.0, False, count, ema, seed  # Lean's EMA reads 0 until ready
    if count == period:
        seed += x
        ema = seed / period
    else:
        ema = (x - ema) * k + ema
    return ema, True, count, ema, seed


@njit(**KERNEL)
def _ema_batch(x, period, out):  # noqa: ANN001
    k = 2.0 / (period + 1.0)
    count, ema, seed = 0, 0.0, 0.0
    for i in range(x.shape[0]):
        out[i], _, count, ema, seed = _ema_step(x[i], count, ema, seed, period, k)


@njit(**KERNEL)
def _ema_stream(sid, x, period, count, ema, seed, value, ready):  # noqa: ANN001
    k = 2.0 / (period + 1.0)
    for i in range(x.shape[0]):
        s = sid[i]
        value[i], ready[i], count[s], ema[s], seed[s] = _ema_step(x[i], count[s], ema[s], seed[s], period, k)


def ema(x: np.ndarray, period: int) -> np.ndarray:
    """Exponential moving average, SMA-seeded (TA_EMA)."""
    (x,) = series(x)
    period = check_period("EMA period", period)
    out = np.empty_like(x)
    _ema_batch(x, period, out)
    mask_warmup(period - 1, out)
    return out


class Ema:
    def __init__(self, n_symbols: int, period: int) -> None:
        self.n_symbols, self.period = n_symbols, check_period("EMA period", period)
        self.count = np.zeros(n_symbols, np.int64)
        self.ema = np.zeros(n_symbols)
        self.seed = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _ema_stream(sid, x, self.period, self.count, self.ema, self.seed, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()


# -- WMA -------------------------------------------------------------------------------------------
#: Every this many bars the WMA's running sums are recomputed from the window: running sums drift
#: (9e-10 relative after a million bars), while TA-Lib's WMA stays within 1e-15 of the exact value.
WMA_REANCHOR = 1000


@njit(**STEP)
def _wma_step(x, trailing, values, start, count, weighted, plain, period, divider):  # noqa: ANN001
    """TA-Lib's running sums: `plain` is the window's sum; `weighted` is kept one step ahead (the window's
    sum is taken off after each output); `trailing` leaves the window (0 until it is full).
    `values[start:start + period]` is the window, oldest first; it is read only to re-anchor the sums."""
    count += 1
    plain += x
    if count < period:
        weighted += x * count
        return NAN, False, count, weighted, plain
    plain -= trailing
    weighted += x * period
    if count % WMA_REANCHOR == 0:
        plain, weighted = 0.0, 0.0
        for j in range(period):
            plain += values[start + j]
            weighted += values[start + j] * (j + 1)
    value = weighted / divider
    weighted -= plain
    return value, True, count, weighted, plain


@njit(**KERNEL_NO_FMA)
def _wma_batch(x, period, out):  # noqa: ANN001
    divider = period * (period + 1) // 2
    count, weighted, plain = 0, 0.0, 0.0
    for i in range(x.shape[0]):
        trailing = x[i - period] if i >= period else 0.0
        out[i], _, count, weighted, plain = _wma_step(
            x[i], trailing, x, i - period + 1, count, weighted, plain, period, divider
        )


@njit(**KERNEL_NO_FMA)
def _wma_stream(sid, x, period, ring, pos, count, weighted, plain, value, ready):  # noqa: ANN001
    divider = period * (period + 1) // 2
    window = np.empty(period)
    for i in range(x.shape[0]):
        s = sid[i]
        trailing = ring[s, pos[s]] if count[s] >= period else 0.0
        ring[s, pos[s]] = x[i]
        pos[s] = pos[s] + 1 if pos[s] + 1 < period else 0
        if (count[s] + 1) % WMA_REANCHOR == 0:  # only then is the window read: unroll the ring, oldest first
            for j in range(period):
                window[j] = ring[s, (pos[s] + j) % period]
        value[i], ready[i], count[s], weighted[s], plain[s] = _wma_step(
            x[i], trailing, window, 0, count[s], weighted[s], plain[s], period, divider
        )


def wma(x: np.ndarray, period: int) -> np.ndarray:
    """Weighted moving average (TA_WMA; drift-free like TA-Lib's, see WMA_REANCHOR)."""
    (x,) = series(x)
    period = check_period("WMA period", period)
    out = np.empty_like(x)
    _wma_batch(x, period, out)
    mask_warmup(period - 1, out)
    return out


class Wma:
    def __init__(self, n_symbols: int, period: int) -> None:
        self.n_symbols, self.period = n_symbols, check_period("WMA period", period)
        self.ring = np.zeros((n_symbols, self.period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)
        self.weighted = np.zeros(n_symbols)
        self.plain = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _wma_stream(sid, x, self.period, self.ring, self.pos, self.count, self.weighted, self.plain, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()


# -- DEMA and TEMA: EMAs of EMAs -------------------------------------------------------------------
@njit(**STEP)
def _dema_step(x, c1, e1, s1, c2, e2, s2, period, k):  # noqa: ANN001
    v1, r1, c1, e1, s1 = _ema_step(x, c1, e1, s1, period, k)
    if not r1:
        return NAN, False, c1, e1, s1, c2, e2, s2
    v2, r2, c2, e2, s2 = _ema_step(v1, c2, e2, s2, period, k)
    return 2.0 * v1 - v2, r2, c1, e1, s1, c2, e2, s2


@njit(**KERNEL)
def _dema_batch(x, period, out):  # noqa: ANN001
    k = 2.0 / (period + 1.0)
    c1, e1, s1, c2, e2, s2 = 0, 0.0, 0.0, 0, 0.0, 0.0
    for i in range(x.shape[0]):
        out[i], _, c1, e1, s1, c2, e2, s2 = _dema_step(x[i], c1, e1, s1, c2, e2, s2, period, k)


@njit(**KERNEL)
def _dema_stream(sid, x, period, count, ema, seed, value, ready):  # noqa: ANN001
    k = 2.0 / (period + 1.0)
    for i in range(x.shape[0]):
        s = sid[i]
        value[i], ready[i], count[s, 0], ema[s, 0], seed[s, 0], count[s, 1], ema[s, 1], seed[s, 1] = _dema_step(
            x[i], count[s, 0], ema[s, 0], seed[s, 0], count[s, 1], ema[s, 1], seed[s, 1], period, k
        )


@njit(**STEP)
def _tema_step(x, c1, e1, s1, c2, e2, s2, c3, e3, s3, period, k):  # noqa: ANN001
    v1, r1, c1, e1, s1 = _ema_step(x, c1, e1, s1, period, k)
    if not r1:
        return NAN, False, c1, e1, s1, c2, e2, s2, c3, e3, s3
    v2, r2, c2, e2, s2 = _ema_step(v1, c2, e2, s2, period, k)
    if not r2:
        return NAN, False, c1, e1, s1, c2, e2, s2, c3, e3, s3
    v3, r3, c3, e3, s3 = _ema_step(v2, c3, e3, s3, period, k)
    return 3.0 * v1 - 3.0 * v2 + v3, r3, c1, e1, s1, c2, e2, s2, c3, e3, s3


@njit(**KERNEL)
def _tema_batch(x, period, out):  # noqa: ANN001
    k = 2.0 / (period + 1.0)
    c1, e1, s1, c2, e2, s2, c3, e3, s3 = 0, 0.0, 0.0, 0, 0.0, 0.0, 0, 0.0, 0.0
    for i in range(x.shape[0]):
        out[i], _, c1, e1, s1, c2, e2, s2, c3, e3, s3 = _tema_step(
            x[i], c1, e1, s1, c2, e2, s2, c3, e3, s3, period, k
        )


@njit(**KERNEL)
def _tema_stream(sid, x, period, count, ema, seed, value, ready):  # noqa: ANN001
    k = 2.0 / (period + 1.0)
    for i in range(x.shape[0]):
        s = sid[i]
        (value[i], ready[i], count[s, 0], ema[s, 0], seed[s, 0], count[s, 1], ema[s, 1], seed[s, 1], count[s, 2],
         ema[s, 2], seed[s, 2]) = _tema_step(
            x[i], count[s, 0], ema[s, 0], seed[s, 0], count[s, 1], ema[s, 1], seed[s, 1], count[s, 2], ema[s, 2],
            seed[s, 2], period, k
        )  # fmt: skip


def dema(x: np.ndarray, period: int) -> np.ndarray:
    """Double exponential moving average (TA_DEMA)."""
    (x,) = series(x)
    period = check_period("DEMA period", period)
    out = np.empty_like(x)
    _dema_batch(x, period, out)
    mask_warmup(2 * (period - 1), out)
    return out


def tema(x: np.ndarray, period: int) -> np.ndarray:
    """Triple exponential moving average (TA_TEMA)."""
    (x,) = series(x)
    period = check_period("TEMA period", period)
    out = np.empty_like(x)
    _tema_batch(x, period, out)
    mask_warmup(3 * (period - 1), out)
    return out


class _ChainedEma:
    depth: int

    def __init__(self, n_symbols: int, period: int) -> None:
        self.n_symbols, self.period = n_symbols, check_period(f"{type(self).__name__.upper()} period", period)
        self.count = np.zeros((n_symbols, self.depth), np.int64)
        self.ema = np.zeros((n_symbols, self.depth))
        self.seed = np.zeros((n_symbols, self.depth))

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        kernel = _dema_stream if self.depth == 2 else _tema_stream
        kernel(sid, x, self.period, self.count, self.ema, self.seed, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()


class Dema(_ChainedEma):
    depth = 2


class Tema(_ChainedEma):
    depth = 3
