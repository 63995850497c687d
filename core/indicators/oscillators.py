"""Oscillators: ROC, MOM, STOCH, STOCHF, WILLR, CCI, MFI, OBV (see `_base` for the one-definition,
two-forms pattern).

References and warm-up (first valid output at index lookback, 0-based), all equal to TA-Lib's (the C
library 0.8.1 that the `talib` wrapper 0.8.2 bundles; its order of operations, read from the installed
library, is mirrored so that results agree to the bit):
* ROC(n)   TA_ROC, lookback n: (x / x[n ago] - 1) * 100; 0 where x[n ago] is 0.
* MOM(n)   TA_MOM, lookback n: x - x[n ago].
* STOCHF(k, d)  TA_STOCHF with SMA smoothing, lookback (k-1)+(d-1): fast %K = (close - lowest low) /
           (highest high - lowest low) * 100 over the last k bars; fast %D = SMA(d) of fast %K.
* STOCH(k, sk, sd)  TA_STOCH with SMA smoothing, lookback (k-1)+(sk-1)+(sd-1): slow %K = SMA(sk) of fast
           %K, slow %D = SMA(sd) of slow %K.
* WILLR(n) TA_WILLR, lookback n-1: (highest - close) / (highest - lowest) * -100, clamped into [-100, 0].
* CCI(n)   TA_CCI, lookback n-1: (tp - mean) / (0.015 * mean deviation) over the last n typical prices
           tp = (high + low + close) / 3; the mean and the deviation are summed afresh each bar.
* MFI(n)   TA_MFI, lookback n: 100 * positive flow / total flow over the last n bars, flow = tp * volume
           signed by the change of tp.
* OBV      TA_OBV, lookback 0: starts at the first volume, then adds the volume on an up close and
           subtracts it on a down close.

TA-Lib 0.8 reads a difference as zero when it is within 1e-14 of its operands' magnitude (`TA_EPSILON`):
a flat window gives %K, %R and CCI 0, and a flat typical price moves no money. It also clamps %R and MFI
into their ranges and restarts MFI's running sums at exactly 0 after a window without money flow.

Window extremes (STOCH, STOCHF, WILLR) are exact, by van Herk / Gil-Werman blocks in both forms: constant
work per bar and no branch on the data (see "Window extremes" below).

Before readiness (`update_current`) an output is NaN until the stage that feeds it has a full window;
a stage whose own window is not full yet gives its value over what it holds: the extremes of the bars so
far, the mean of the values so far, the money flow so far.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from utp.core.indicators._base import KERNEL, KERNEL_NO_FMA, NAN, STEP, IndicatorUpdate, check_period, mask_warmup, rows, series

#: TA-Lib 0.8's `TA_EPSILON`: a difference within this fraction of its operands' magnitude is zero.
TA_EPSILON = 1e-14
_INF = np.inf
#: Unsigned indices in the batch kernels of window extremes: numba tests a signed index for wraparound
#: (negative from the end), which costs those kernels a third of their time.
_U0, _U1 = np.uint64(0), np.uint64(1)


def _ready_only(ready: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.where(ready, v, NAN) for v in values)


# -- ROC and MOM -----------------------------------------------------------------------------------
@njit(**STEP)
def _roc_value(x, trailing):  # noqa: ANN001
    """NaN while there is no value `period` bars back (`trailing` NaN); TA-Lib reads 0 where it is 0."""
    return (x / trailing - 1.0) * 100.0 if trailing != 0.0 else 0.0


@njit(**STEP)
def _mom_value(x, trailing):  # noqa: ANN001
    return x - trailing


@njit(**STEP)
def _lag_step(x, ring, row, pos, count, period):  # noqa: ANN001
    """The value `period` bars before `x` (NaN while there is none); ring[row] holds the last `period`
    values, the oldest at `pos`."""
    trailing = ring[row, pos] if count >= period else NAN
    ring[row, pos] = x
    pos = pos + 1 if pos + 1 < period else 0
    return trailing, pos, count + 1


@njit(**KERNEL)
def _roc_batch(x, period, out):  # noqa: ANN001
    # offset views rather than x[i - period]: numba tests a possibly negative index for wraparound,
    # which keeps the loop from vectorizing (3x slower)
    now, then, dest = x[period:], x[: max(x.shape[0] - period, 0)], out[period:]
    for i in range(now.shape[0]):
        dest[i] = _roc_value(now[i], then[i])


@njit(**KERNEL)
def _roc_stream(sid, x, period, ring, pos, count, value, ready):  # noqa: ANN001
    for i in range(x.shape[0]):
        s = sid[i]
        trailing, pos[s], count[s] = _lag_step(x[i], ring, s, pos[s], count[s], period)
        value[i], ready[i] = _roc_value(x[i], trailing), count[s] > period


@njit(**KERNEL)
def _mom_batch(x, period, out):  # noqa: ANN001
    # offset views rather than x[i - period]: numba tests a possibly negative index for wraparound,
    # which keeps the loop from vectorizing (3x slower)
    now, then, dest = x[period:], x[: max(x.shape[0] - period, 0)], out[period:]
    for i in range(now.shape[0]):
        dest[i] = _mom_value(now[i], then[i])


@njit(**KERNEL)
def _mom_stream(sid, x, period, ring, pos, count, value, ready):  # noqa: ANN001
    for i in range(x.shape[0]):
        s = sid[i]
        trailing, pos[s], count[s] = _lag_step(x[i], ring, s, pos[s], count[s], period)
        value[i], ready[i] = _mom_value(x[i], trailing), count[s] > period


def roc(close: np.ndarray, period: int = 10) -> np.ndarray:
    """Rate of change in percent (TA_ROC), lookback `period`."""
    (close,) = series(close)
    period = check_period("ROC period", period)
    out = np.empty_like(close)
    _roc_batch(close, period, out)
    mask_warmup(period, out)
    return out


def mom(close: np.ndarray, period: int = 10) -> np.ndarray:
    """Momentum (TA_MOM), lookback `period`."""
    (close,) = series(close)
    period = check_period("MOM period", period)
    out = np.empty_like(close)
    _mom_batch(close, period, out)
    mask_warmup(period, out)
    return out


@njit(**KERNEL)
def _lag_stream(sid, x, period, ring, pos, count, value, ready):  # noqa: ANN001
    for i in range(x.shape[0]):
        s = sid[i]
        value[i], pos[s], count[s] = _lag_step(x[i], ring, s, pos[s], count[s], period)
        ready[i] = count[s] > period


def lag(x: np.ndarray, n: int = 1) -> np.ndarray:
    """x shifted n bars later: lag(x, n)[t] = x[t - n]; NaN for the first n bars (the value ROC and MOM
    compare with)."""
    (x,) = series(x)
    n = check_period("lag", n)
    out = np.full_like(x, NAN)
    out[n:] = x[:-n]
    return out


class _Lag:
    name: str

    def __init__(self, n_symbols: int, period: int = 10) -> None:
        self.n_symbols, self.period = n_symbols, check_period(f"{self.name} period", period)
        self.ring = np.zeros((n_symbols, self.period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)

    def _kernel(self, *args: object) -> None:
        raise NotImplementedError

    def update_current(self, sid: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, close = rows(self.n_symbols, sid, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        self._kernel(sid, close, self.period, self.ring, self.pos, self.count, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, close).where_ready()


class Lag(_Lag):
    """Streaming `lag`: NaN until `n` bars back exist."""

    name = "lag"

    def __init__(self, n_symbols: int, n: int = 1) -> None:
        super().__init__(n_symbols, n)

    def _kernel(self, *args: object) -> None:
        _lag_stream(*args)


class Roc(_Lag):
    """Streaming `roc`: NaN until `period` bars back exist."""

    name = "ROC"

    def _kernel(self, *args: object) -> None:
        _roc_stream(*args)


class Mom(_Lag):
    """Streaming `mom`: NaN until `period` bars back exist."""

    name = "MOM"

    def _kernel(self, *args: object) -> None:
        _mom_stream(*args)


# -- Window extremes -------------------------------------------------------------------------------
# van Herk / Gil-Werman in both forms: the bars are cut into blocks of `period`; a window ending at a
# block's bar j is the block's bars up to j and the previous block's bars after j, so its extremes are
# the running extremes of the current block combined with the previous block's suffix extremes. Three
# comparisons per bar and series, no branch on the data, constant work per bar (the suffix pass costs
# `period` once per block). The batch reads the previous block from the series; the stream keeps the
# current block per symbol. Both combine the same values by the same comparisons: equal to the bit.
@njit(**STEP)
def _max(a, b):  # noqa: ANN001
    # one explicit comparison, the same in both forms: their results agree even for ties of 0.0 and
    # -0.0 or for NaN, where the builtin's choice of operand is not specified
    return a if a > b else b


@njit(**STEP)
def _min(a, b):  # noqa: ANN001
    return a if a < b else b


@njit(**STEP)
def _block_buffers(period):  # noqa: ANN001
    """Suffix extremes of the previous block: slot j + 1 serves the window ending at the current block's
    bar j (0-based), which starts at the previous block's bar j + 1. The identity while there is no
    previous block, and always in slot `period` (the window that is exactly the current block)."""
    return np.full(period + 1, -_INF), np.full(period + 1, _INF)


@njit(**STEP)
def _block_suffix(high, low, start, period, hi_buf, lo_buf):  # noqa: ANN001
    """Batch: the suffix extremes of the block before the one starting at `start` (unsigned, as
    `period`), read from the series; none before the first block."""
    # no early return, but a loop without iterations: numba's reference-count pruning gives up on an
    # inlined function whose array arguments are released after a branch around a loop, and then
    # increments and decrements them (atomically) on every call (the streaming %R took 45 ns a row so,
    # 7 ns without)
    first = start == _U0
    base = _U0 if first else start - period
    hi, lo = -_INF, _INF
    j = _U0 if first else period
    while j > _U0:
        j -= _U1
        hi = _max(high[base + j], hi)
        lo = _min(low[base + j], lo)
        hi_buf[j] = hi
        lo_buf[j] = lo


@njit(**STEP)
def _block_extremes(h, l, j, hi_buf, lo_buf, hi_run, lo_run):  # noqa: ANN001, E741
    """Batch: highest high and lowest low of the window ending at the current block's bar j - 1."""
    hi_run, lo_run = _max(h, hi_run), _min(l, lo_run)
    return _max(hi_buf[j], hi_run), _min(lo_buf[j], lo_run), hi_run, lo_run


@njit(**STEP)
def _stream_extremes(h, l, block, suffix, run, offset, row, period):  # noqa: ANN001, E741
    """Stream: highest high and lowest low of the last `period` bars of symbol `row`, `h` and `l`
    included. block[row] holds the current block's highs and lows, suffix[row] the previous block's
    suffix extremes, run[row] the current block's running extremes, offset[row] the bar's place in it."""
    j = offset[row]
    block[row, 0, j] = h
    block[row, 1, j] = l
    hi_run, lo_run = _max(h, run[row, 0]), _min(l, run[row, 1])
    hi, lo = _max(suffix[row, 0, j + 1], hi_run), _min(suffix[row, 1, j + 1], lo_run)
    j += 1
    complete = j == period  # the windows ending in the next block start in this one
    # a loop without iterations rather than a branch around it (see `_block_suffix`)
    hi_acc, lo_acc = -_INF, _INF
    for k in range(period - 1 if complete else -1, -1, -1):
        hi_acc = _max(block[row, 0, k], hi_acc)
        lo_acc = _min(block[row, 1, k], lo_acc)
        suffix[row, 0, k] = hi_acc
        suffix[row, 1, k] = lo_acc
    if complete:
        hi_run, lo_run, j = -_INF, _INF, 0
    run[row, 0], run[row, 1], offset[row] = hi_run, lo_run, j
    return hi, lo


class _Window:
    """Per-symbol state of `_stream_extremes`."""

    def __init__(self, n_symbols: int, period: int) -> None:
        self.block = np.zeros((n_symbols, 2, period))
        self.suffix = np.empty((n_symbols, 2, period + 1))
        self.suffix[:, 0], self.suffix[:, 1] = -np.inf, np.inf
        self.run = np.empty((n_symbols, 2))
        self.run[:, 0], self.run[:, 1] = -np.inf, np.inf
        self.offset = np.zeros(n_symbols, np.int64)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.block, self.suffix, self.run, self.offset


@njit(**STEP)
def _flat(diff, scale):  # noqa: ANN001
    """TA-Lib 0.8's TA_IS_ZERO_SCALED: `diff` is no difference within TA_EPSILON of `scale`."""
    return abs(diff) <= scale * TA_EPSILON


# -- WILLR -----------------------------------------------------------------------------------------
@njit(**STEP)
def _willr_value(close, highest, lowest):  # noqa: ANN001
    spread = highest - lowest
    if _flat(spread, abs(highest) + abs(lowest)):
        return 0.0
    r = (highest - close) / spread * -100.0
    return 0.0 if r > 0.0 else (-100.0 if -100.0 > r else r)  # TA-Lib's clamp; NaN passes


@njit(**KERNEL)
def _willr_batch(high, low, close, period, out):  # noqa: ANN001
    hi_buf, lo_buf = _block_buffers(period)
    n, p = np.uint64(close.shape[0]), np.uint64(period)
    for start in range(_U0, n, p):
        _block_suffix(high, low, start, p, hi_buf, lo_buf)
        hi_run, lo_run = -_INF, _INF
        for t in range(start, min(start + p, n)):
            hi, lo, hi_run, lo_run = _block_extremes(high[t], low[t], t - start + _U1, hi_buf, lo_buf, hi_run, lo_run)
            out[t] = _willr_value(close[t], hi, lo)


@njit(**KERNEL)
def _willr_stream(sid, high, low, close, period, block, suffix, run, offset, count, value, ready):  # noqa: ANN001
    for i in range(close.shape[0]):
        s = sid[i]
        hi, lo = _stream_extremes(high[i], low[i], block, suffix, run, offset, s, period)
        count[s] += 1
        value[i], ready[i] = _willr_value(close[i], hi, lo), count[s] >= period


def willr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Williams' %R (TA_WILLR), lookback `period` - 1."""
    high, low, close = series(high, low, close)
    period = check_period("WILLR period", period, 2)
    out = np.empty_like(close)
    _willr_batch(high, low, close, period, out)
    mask_warmup(period - 1, out)
    return out


class Willr:
    """Streaming `willr`; before readiness, %R over the bars so far."""

    def __init__(self, n_symbols: int, period: int = 14) -> None:
        self.n_symbols, self.period = n_symbols, check_period("WILLR period", period, 2)
        self.window = _Window(n_symbols, self.period)
        self.count = np.zeros(n_symbols, np.int64)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _willr_stream(sid, high, low, close, self.period, *self.window.arrays(), self.count, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, high, low, close).where_ready()


# -- STOCHF and STOCH ------------------------------------------------------------------------------
@njit(**STEP)
def _fastk_value(close, highest, lowest):  # noqa: ANN001
    spread = highest - lowest
    if _flat(spread, abs(highest) + abs(lowest)):
        return 0.0
    return (close - lowest) / spread * 100.0


@njit(**STEP)
def _sma_stage(x, trailing, pos, count, total, period):  # noqa: ANN001
    """One input of TA-Lib's SMA, whose running total takes off the input leaving, then adds `x`.
    The caller rings the inputs: `trailing` is the one at `pos` (read only once the window is full), and
    `x` goes there (`pos` advances). Before the window is full, the value is the mean of the inputs so far."""
    total -= trailing if count >= period else 0.0
    total += x
    count += 1
    pos = pos + 1 if pos + 1 < period else 0
    return total / (count if count < period else period), count >= period, pos, count, total


@njit(**STEP)
def _stochf_step(fastk, count, d_trailing, d_pos, d_count, d_total, fk, fd):  # noqa: ANN001
    """`count` counts the bars, this one included; %D smooths %K from the first full %K window on (the
    caller writes `fastk` into the %D ring at `d_pos` after the step, consumed or not: a slot written
    before the smoothing starts is overwritten before it is read)."""
    if count < fk:
        return NAN, False, d_pos, d_count, d_total
    return _sma_stage(fastk, d_trailing, d_pos, d_count, d_total, fd)


@njit(**STEP)
def _stoch_step(fastk, count, k_trailing, k_pos, k_count, k_total, d_trailing, d_pos, d_count, d_total, fk, sk, sd):  # noqa: ANN001, PLR0913
    """Slow %K smooths fast %K from the first full %K window on, slow %D smooths slow %K from its first
    full window on; the caller rings fast %K at `k_pos` and slow %K at `d_pos`, as in `_stochf_step`."""
    if count < fk:
        return NAN, NAN, False, k_pos, k_count, k_total, d_pos, d_count, d_total
    slowk, k_full, k_pos, k_count, k_total = _sma_stage(fastk, k_trailing, k_pos, k_count, k_total, sk)
    if not k_full:
        return slowk, NAN, False, k_pos, k_count, k_total, d_pos, d_count, d_total
    slowd, ready, d_pos, d_count, d_total = _sma_stage(slowk, d_trailing, d_pos, d_count, d_total, sd)
    return slowk, slowd, ready, k_pos, k_count, k_total, d_pos, d_count, d_total


@njit(**KERNEL)
def _stochf_batch(high, low, close, fk, fd, out_k, out_d):  # noqa: ANN001
    hi_buf, lo_buf = _block_buffers(fk)
    d_ring = np.zeros(fd)
    d_pos, d_count, d_total = 0, 0, 0.0
    n, p = np.uint64(close.shape[0]), np.uint64(fk)
    for start in range(_U0, n, p):
        _block_suffix(high, low, start, p, hi_buf, lo_buf)
        hi_run, lo_run = -_INF, _INF
        for t in range(start, min(start + p, n)):
            hi, lo, hi_run, lo_run = _block_extremes(high[t], low[t], t - start + _U1, hi_buf, lo_buf, hi_run, lo_run)
            fastk, slot = _fastk_value(close[t], hi, lo), d_pos
            out_d[t], _, d_pos, d_count, d_total = _stochf_step(
                fastk, np.int64(t) + 1, d_ring[slot], d_pos, d_count, d_total, fk, fd
            )
            d_ring[slot] = fastk
            out_k[t] = fastk


@njit(**KERNEL)
def _stochf_stream(sid, high, low, close, fk, fd, block, suffix, run, offset, count, d_ring, d_state, d_total,  # noqa: ANN001, PLR0913
                   out_k, out_d, ready):  # fmt: skip
    # d_state[s] = (%D ring position, %D inputs so far)
    for i in range(close.shape[0]):
        s = sid[i]
        hi, lo = _stream_extremes(high[i], low[i], block, suffix, run, offset, s, fk)
        count[s] += 1
        fastk, slot = _fastk_value(close[i], hi, lo), d_state[s, 0]
        out_d[i], ready[i], d_state[s, 0], d_state[s, 1], d_total[s] = _stochf_step(
            fastk, count[s], d_ring[s, slot], slot, d_state[s, 1], d_total[s], fk, fd
        )
        d_ring[s, slot] = fastk
        out_k[i] = fastk


@njit(**KERNEL)
def _stoch_batch(high, low, close, fk, sk, sd, out_k, out_d):  # noqa: ANN001
    hi_buf, lo_buf = _block_buffers(fk)
    k_ring, d_ring = np.zeros(sk), np.zeros(sd)
    k_pos, k_count, k_total, d_pos, d_count, d_total = 0, 0, 0.0, 0, 0, 0.0
    n, p = np.uint64(close.shape[0]), np.uint64(fk)
    for start in range(_U0, n, p):
        _block_suffix(high, low, start, p, hi_buf, lo_buf)
        hi_run, lo_run = -_INF, _INF
        for t in range(start, min(start + p, n)):
            hi, lo, hi_run, lo_run = _block_extremes(high[t], low[t], t - start + _U1, hi_buf, lo_buf, hi_run, lo_run)
            fastk, k_slot, d_slot = _fastk_value(close[t], hi, lo), k_pos, d_pos
            out_k[t], out_d[t], _, k_pos, k_count, k_total, d_pos, d_count, d_total = _stoch_step(
                fastk, np.int64(t) + 1, k_ring[k_slot], k_pos, k_count, k_total,
                d_ring[d_slot], d_pos, d_count, d_total, fk, sk, sd,
            )  # fmt: skip
            k_ring[k_slot] = fastk
            d_ring[d_slot] = out_k[t]


@njit(**KERNEL)
def _stoch_stream(sid, high, low, close, fk, sk, sd, block, suffix, run, offset, count, k_ring, d_ring, state,  # noqa: ANN001, PLR0913
                  totals, out_k, out_d, ready):  # fmt: skip
    # state[s] = (%K ring position, %K inputs so far, %D ring position, %D inputs so far); totals[s] = (%K, %D)
    for i in range(close.shape[0]):
        s = sid[i]
        hi, lo = _stream_extremes(high[i], low[i], block, suffix, run, offset, s, fk)
        count[s] += 1
        fastk, k_slot, d_slot = _fastk_value(close[i], hi, lo), state[s, 0], state[s, 2]
        (out_k[i], out_d[i], ready[i], state[s, 0], state[s, 1], totals[s, 0], state[s, 2], state[s, 3],
         totals[s, 1]) = _stoch_step(
            fastk, count[s], k_ring[s, k_slot], k_slot, state[s, 1], totals[s, 0],
            d_ring[s, d_slot], d_slot, state[s, 3], totals[s, 1], fk, sk, sd,
        )  # fmt: skip
        k_ring[s, k_slot] = fastk
        d_ring[s, d_slot] = out_k[i]


class StochFResult(NamedTuple):
    fastk: np.ndarray
    fastd: np.ndarray


class StochFUpdate(NamedTuple):
    fastk: np.ndarray
    fastd: np.ndarray
    ready: np.ndarray


class StochResult(NamedTuple):
    slowk: np.ndarray
    slowd: np.ndarray


class StochUpdate(NamedTuple):
    slowk: np.ndarray
    slowd: np.ndarray
    ready: np.ndarray


def _stochf_periods(fastk: int, fastd: int) -> tuple[int, int]:
    return check_period("STOCHF fastk period", fastk), check_period("STOCHF fastd period", fastd)


def _stoch_periods(fastk: int, slowk: int, slowd: int) -> tuple[int, int, int]:
    return (
        check_period("STOCH fastk period", fastk),
        check_period("STOCH slowk period", slowk),
        check_period("STOCH slowd period", slowd),
    )


def stochf(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, fastk_period: int = 5, fastd_period: int = 3
) -> StochFResult:
    """Fast stochastic %K and %D (TA_STOCHF, SMA smoothing), lookback (fastk_period-1)+(fastd_period-1)."""
    high, low, close = series(high, low, close)
    fk, fd = _stochf_periods(fastk_period, fastd_period)
    out = StochFResult(np.empty_like(close), np.empty_like(close))
    _stochf_batch(high, low, close, fk, fd, *out)
    mask_warmup(fk - 1 + fd - 1, *out)
    return out


def stoch(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    fastk_period: int = 5,
    slowk_period: int = 3,
    slowd_period: int = 3,
) -> StochResult:
    """Slow stochastic %K and %D (TA_STOCH, SMA smoothing), lookback
    (fastk_period-1)+(slowk_period-1)+(slowd_period-1)."""
    high, low, close = series(high, low, close)
    fk, sk, sd = _stoch_periods(fastk_period, slowk_period, slowd_period)
    out = StochResult(np.empty_like(close), np.empty_like(close))
    _stoch_batch(high, low, close, fk, sk, sd, *out)
    mask_warmup(fk - 1 + sk - 1 + sd - 1, *out)
    return out


class StochF:
    """Streaming `stochf`; before readiness, %K over the bars so far and %D the mean of the %K values so
    far (NaN until the first full %K window)."""

    def __init__(self, n_symbols: int, fastk_period: int = 5, fastd_period: int = 3) -> None:
        self.n_symbols = n_symbols
        self.fk, self.fd = _stochf_periods(fastk_period, fastd_period)
        self.window = _Window(n_symbols, self.fk)
        self.count = np.zeros(n_symbols, np.int64)
        self.d_ring = np.zeros((n_symbols, self.fd))
        self.d_state = np.zeros((n_symbols, 2), np.int64)
        self.d_total = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> StochFUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        n = close.shape[0]
        out = StochFUpdate(np.empty(n), np.empty(n), np.empty(n, np.bool_))
        _stochf_stream(sid, high, low, close, self.fk, self.fd, *self.window.arrays(), self.count, self.d_ring,
                       self.d_state, self.d_total, *out)  # fmt: skip
        return out

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> StochFResult:
        u = self.update_current(sid, high, low, close)
        return StochFResult(*_ready_only(u.ready, u.fastk, u.fastd))


class Stoch:
    """Streaming `stoch`; before readiness, slow %K the mean of the fast %K values so far (NaN until the
    first full %K window) and slow %D the mean of the slow %K values so far (NaN until the first full
    slow %K window)."""

    def __init__(self, n_symbols: int, fastk_period: int = 5, slowk_period: int = 3, slowd_period: int = 3) -> None:
        self.n_symbols = n_symbols
        self.fk, self.sk, self.sd = _stoch_periods(fastk_period, slowk_period, slowd_period)
        self.window = _Window(n_symbols, self.fk)
        self.count = np.zeros(n_symbols, np.int64)
        self.k_ring = np.zeros((n_symbols, self.sk))
        self.d_ring = np.zeros((n_symbols, self.sd))
        self.state = np.zeros((n_symbols, 4), np.int64)
        self.totals = np.zeros((n_symbols, 2))

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> StochUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        n = close.shape[0]
        out = StochUpdate(np.empty(n), np.empty(n), np.empty(n, np.bool_))
        _stoch_stream(sid, high, low, close, self.fk, self.sk, self.sd, *self.window.arrays(), self.count,
                      self.k_ring, self.d_ring, self.state, self.totals, *out)  # fmt: skip
        return out

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> StochResult:
        u = self.update_current(sid, high, low, close)
        return StochResult(*_ready_only(u.ready, u.slowk, u.slowd))


# -- CCI -------------------------------------------------------------------------------------------
@njit(**STEP)
def _cci_step(high, low, close, ring, row, pos, count, period):  # noqa: ANN001
    """TA-Lib sums the typical prices and their deviations in ring-slot order (slot = bar number mod
    `period`), not in time order; so does this ring[row], which makes the sums equal to the bit. Before
    the window is full: over the bars so far (slots 0..count-1)."""
    tp = (high + low + close) / 3.0
    ring[row, pos] = tp
    pos = pos + 1 if pos + 1 < period else 0
    count += 1
    m = count if count < period else period
    total = 0.0
    for j in range(m):
        total += ring[row, j]
    mean = total / m
    dev = 0.0
    for j in range(m):
        dev += abs(ring[row, j] - mean)
    dev /= m
    diff = tp - mean
    scale = abs(mean)
    if _flat(diff, scale) or _flat(dev, scale):
        value = 0.0
    else:
        denominator = dev * 0.015
        value = diff / denominator if denominator != 0.0 else 0.0
    return value, count >= period, pos, count


@njit(**KERNEL)
def _cci_batch(high, low, close, period, out):  # noqa: ANN001
    ring = np.zeros((1, period))
    pos, count = 0, 0
    for i in range(close.shape[0]):
        out[i], _, pos, count = _cci_step(high[i], low[i], close[i], ring, 0, pos, count, period)


@njit(**KERNEL)
def _cci_stream(sid, high, low, close, period, ring, pos, count, value, ready):  # noqa: ANN001
    for i in range(close.shape[0]):
        s = sid[i]
        value[i], ready[i], pos[s], count[s] = _cci_step(high[i], low[i], close[i], ring, s, pos[s], count[s], period)


def cci(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Commodity channel index (TA_CCI), lookback `period` - 1."""
    high, low, close = series(high, low, close)
    period = check_period("CCI period", period, 2)
    out = np.empty_like(close)
    _cci_batch(high, low, close, period, out)
    mask_warmup(period - 1, out)
    return out


class Cci:
    """Streaming `cci`; before readiness, over the bars so far."""

    def __init__(self, n_symbols: int, period: int = 14) -> None:
        self.n_symbols, self.period = n_symbols, check_period("CCI period", period, 2)
        self.ring = np.zeros((n_symbols, self.period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, high, low, close = rows(self.n_symbols, sid, high, low, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _cci_stream(sid, high, low, close, self.period, self.ring, self.pos, self.count, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, high, low, close).where_ready()


# -- MFI -------------------------------------------------------------------------------------------
@njit(**STEP)
def _mfi_step(high, low, close, volume, leaving_up, leaving_down, count, prev, pos_sum, neg_sum, null_run, period):  # noqa: ANN001, PLR0913
    """TA-Lib 0.8's MFI. The caller rings each bar's (up, down) flows: `leaving_*` are those of `period`
    bars ago (zeros before; taking off 0 is exact). The running sums take off the flows leaving, then add
    the new ones. A bar whose typical price did not move (within TA_EPSILON) or that carried no volume
    brings no flow; after a whole window of those, the sums restart at exactly 0 (they would hold
    rounding residue otherwise). `count` is the number of bars before this one."""
    tp = (high + low + close) / 3.0
    up_flow, down_flow = 0.0, 0.0
    if count > 0:  # the first bar has no change of typical price, hence no flow
        pos_sum -= leaving_up
        neg_sum -= leaving_down
        change = tp - prev
        flow = 0.0 if _flat(change, abs(tp) + abs(prev)) else volume * tp
        if change < 0.0:
            down_flow = flow
        else:
            up_flow = flow
        pos_sum += up_flow
        neg_sum += down_flow
        null_run = null_run + 1 if flow == 0.0 else 0
        if null_run >= period:
            null_run = period
            pos_sum, neg_sum = 0.0, 0.0
    total = pos_sum + neg_sum
    up = 0.0 if 0.0 > pos_sum else (total if total < pos_sum else pos_sum)  # TA-Lib's clamp into [0, total]
    value = 0.0 if 0.0 >= total else up / total * 100.0
    return value, count >= period, up_flow, down_flow, count + 1, tp, pos_sum, neg_sum, null_run


@njit(**KERNEL)
def _mfi_batch(high, low, close, volume, period, out):  # noqa: ANN001
    up_ring, down_ring = np.zeros(period), np.zeros(period)
    pos, count, prev, pos_sum, neg_sum, null_run = 0, 0, 0.0, 0.0, 0.0, 0
    for i in range(close.shape[0]):
        out[i], _, up_ring[pos], down_ring[pos], count, prev, pos_sum, neg_sum, null_run = _mfi_step(
            high[i], low[i], close[i], volume[i], up_ring[pos], down_ring[pos], count, prev, pos_sum, neg_sum,
            null_run, period,
        )  # fmt: skip
        pos = pos + 1 if pos + 1 < period else 0


@njit(**KERNEL)
def _mfi_stream(sid, high, low, close, volume, period, flows, pos, count, prev, sums, null_run, value, ready):  # noqa: ANN001, PLR0913
    # flows[s] = (up, down) rings; sums[s] = (up, down) running sums
    for i in range(close.shape[0]):
        s = sid[i]
        p = pos[s]
        (value[i], ready[i], flows[s, 0, p], flows[s, 1, p], count[s], prev[s], sums[s, 0], sums[s, 1],
         null_run[s]) = _mfi_step(
            high[i], low[i], close[i], volume[i], flows[s, 0, p], flows[s, 1, p], count[s], prev[s],
            sums[s, 0], sums[s, 1], null_run[s], period,
        )  # fmt: skip
        pos[s] = p + 1 if p + 1 < period else 0


def mfi(high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, period: int = 14) -> np.ndarray:
    """Money flow index (TA_MFI), lookback `period`."""
    high, low, close, volume = series(high, low, close, volume)
    period = check_period("MFI period", period, 2)
    out = np.empty_like(close)
    _mfi_batch(high, low, close, volume, period, out)
    mask_warmup(period, out)
    return out


class Mfi:
    """Streaming `mfi`; before readiness, over the money flow so far (0 on the first bar)."""

    def __init__(self, n_symbols: int, period: int = 14) -> None:
        self.n_symbols, self.period = n_symbols, check_period("MFI period", period, 2)
        self.flows = np.zeros((n_symbols, 2, self.period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)
        self.prev = np.zeros(n_symbols)
        self.sums = np.zeros((n_symbols, 2))
        self.null_run = np.zeros(n_symbols, np.int64)

    def update_current(
        self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
    ) -> IndicatorUpdate:
        sid, high, low, close, volume = rows(self.n_symbols, sid, high, low, close, volume)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _mfi_stream(sid, high, low, close, volume, self.period, self.flows, self.pos, self.count, self.prev,
                    self.sums, self.null_run, value, ready)  # fmt: skip
        return IndicatorUpdate(value, ready)

    def update(
        self, sid: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
    ) -> np.ndarray:
        return self.update_current(sid, high, low, close, volume).where_ready()


# -- OBV -------------------------------------------------------------------------------------------
@njit(**STEP)
def _obv_step(close, volume, prev, obv):  # noqa: ANN001
    """Adds the volume times the sign of the close's change: the product by -1, 0 or 1 is exact, so the
    sum rounds as TA-Lib's add or subtract; a branch on the direction would mispredict on every other
    bar (twice the cost)."""
    direction = (close > prev) - (close < prev)
    moved = obv + direction * volume
    # a flat bar leaves OBV alone, as in TA-Lib, even with a NaN or infinite volume (0 * inf is NaN);
    # `|`, not `or`: one predictable test, not a second one on the direction
    return moved if (direction != 0) | (abs(volume) < _INF) else obv


@njit(**KERNEL_NO_FMA)  # the running sum is the serial chain: an FMA's latency exceeds an add's
def _obv_batch(close, volume, out):  # noqa: ANN001
    if close.shape[0] == 0:
        return
    prev, obv = close[0], volume[0]  # TA-Lib starts at the first bar's volume
    out[0] = obv
    for i in range(1, close.shape[0]):
        obv = _obv_step(close[i], volume[i], prev, obv)
        prev = close[i]
        out[i] = obv


@njit(**KERNEL_NO_FMA)
def _obv_stream(sid, close, volume, count, prev, obv, value, ready):  # noqa: ANN001
    for i in range(close.shape[0]):
        s = sid[i]
        obv[s] = volume[i] if count[s] == 0 else _obv_step(close[i], volume[i], prev[s], obv[s])
        count[s] += 1
        prev[s] = close[i]
        value[i], ready[i] = obv[s], True


def obv(close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """On-balance volume (TA_OBV), lookback 0."""
    close, volume = series(close, volume)
    out = np.empty_like(close)
    _obv_batch(close, volume, out)
    return out


class Obv:
    """Streaming `obv`: ready from the first bar."""

    def __init__(self, n_symbols: int) -> None:
        self.n_symbols = n_symbols
        self.count = np.zeros(n_symbols, np.int64)
        self.prev = np.zeros(n_symbols)
        self.obv = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, close: np.ndarray, volume: np.ndarray) -> IndicatorUpdate:
        sid, close, volume = rows(self.n_symbols, sid, close, volume)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _obv_stream(sid, close, volume, self.count, self.prev, self.obv, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, close: np.ndarray, volume: np.ndarray) -> np.ndarray:
        return self.update_current(sid, close, volume).where_ready()
