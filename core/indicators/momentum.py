"""RSI and MACD (see `_base` for the one-definition, two-forms pattern).

* RSI(n)  TA_RSI, lookback n. Wilder's averages of gains and losses: the first is the mean of the first n
          changes, then avg = (avg*(n-1) + x) / n, in TA-Lib's order of operations. The value is
          100*g/(g+l) (0 when g+l is 0), as TA-Lib. `lean=True` gives Lean's RelativeStrengthIndex
          instead: 100 - 100/(1 + g/l), 100 when l rounds to 0 (a flat market reads 100, not 0), and
          before readiness the value of the averages of the changes so far (100 on the first value).
* MACD(fast, slow, signal)  TA_MACD, lookback (slow-1)+(signal-1): MACD line = EMA(fast) - EMA(slow),
          signal = EMA(signal) of the line, histogram = line - signal. TA-Lib seeds the fast EMA with
          the mean of the `fast` values ending where the slow EMA's seed ends; `lean=True` seeds it with
          the first `fast` values as Lean's MovingAverageConvergenceDivergence does (the line then differs
          during the first bars and converges). In both, the signal EMA starts once both EMAs are ready
          and is seeded with the mean of its first `signal` inputs; Lean's values before readiness are
          those of its EMAs, which read 0 until ready.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from utp.core.indicators._base import KERNEL, KERNEL_RECIPROCAL, STEP, IndicatorUpdate, check_period, mask_warmup, rows, series


# -- RSI -------------------------------------------------------------------------------------------
@njit(**STEP)
def _rsi_value(g, l, lean):  # noqa: ANN001, E741
    if lean:
        return 100.0 if round(l, 10) == 0.0 else 100.0 - 100.0 / (1.0 + g / l)
    total = g + l
    return 100.0 * (g / total) if (total > 1e-14 or total < -1e-14) else 0.0


@njit(**STEP)
def _rsi_steady(x, prev, gain, loss, period, lean):  # noqa: ANN001
    """One bar once ready: Wilder's smoothing in TA-Lib's order of operations."""
    change = x - prev
    loss *= period - 1
    gain *= period - 1
    if change < 0.0:
        loss -= change
    else:
        gain += change
    loss /= period
    gain /= period
    return _rsi_value(gain, loss, lean), x, gain, loss


@njit(**STEP)
def _rsi_step(x, prev, count, gain, loss, period, lean):  # noqa: ANN001
    """`count` is the number of values seen before `x`; gain/loss hold sums during warm-up and Wilder
    averages once ready."""
    changes = count  # changes so far, this one included
    count += 1
    if changes > period:
        value, prev, gain, loss = _rsi_steady(x, prev, gain, loss, period, lean)
        return value, True, prev, count, gain, loss
    if changes >= 1:
        change = x - prev
        if change < 0.0:
            loss -= change
        else:
            gain += change
        if changes == period:
            gain /= period
            loss /= period
            return _rsi_value(gain, loss, lean), True, x, count, gain, loss
    # Lean, before readiness: the value of the averages of the changes so far (100 with no change yet)
    g, l = (gain / changes, loss / changes) if changes > 0 else (0.0, 0.0)  # noqa: E741
    return _rsi_value(g, l, lean), False, x, count, gain, loss


@njit(**KERNEL_RECIPROCAL)
def _rsi_batch(x, period, lean, out):  # noqa: ANN001
    prev, count, gain, loss = 0.0, 0, 0.0, 0.0
    warm = min(period + 1, x.shape[0])
    for i in range(warm):
        out[i], _, prev, count, gain, loss = _rsi_step(x[i], prev, count, gain, loss, period, lean)
    for i in range(warm, x.shape[0]):  # the step's steady branch, without its bookkeeping
        out[i], prev, gain, loss = _rsi_steady(x[i], prev, gain, loss, period, lean)


@njit(**KERNEL_RECIPROCAL)
def _rsi_stream(sid, x, period, lean, prev, count, gain, loss, value, ready):  # noqa: ANN001
    for i in range(x.shape[0]):
        s = sid[i]
        value[i], ready[i], prev[s], count[s], gain[s], loss[s] = _rsi_step(
            x[i], prev[s], count[s], gain[s], loss[s], period, lean
        )


def rsi(x: np.ndarray, period: int = 14, *, lean: bool = False) -> np.ndarray:
    """Wilder's relative strength index (TA_RSI; `lean=True`: Lean's value convention)."""
    (x,) = series(x)
    period = check_period("RSI period", period)
    out = np.empty_like(x)
    _rsi_batch(x, period, lean, out)
    mask_warmup(period, out)
    return out


class Rsi:
    def __init__(self, n_symbols: int, period: int = 14, *, lean: bool = False) -> None:
        self.n_symbols, self.period, self.lean = n_symbols, check_period("RSI period", period), lean
        self.prev = np.zeros(n_symbols)
        self.count = np.zeros(n_symbols, np.int64)
        self.gain = np.zeros(n_symbols)
        self.loss = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _rsi_stream(sid, x, self.period, self.lean, self.prev, self.count, self.gain, self.loss, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()


# -- MACD ------------------------------------------------------------------------------------------
class MacdResult(NamedTuple):
    macd: np.ndarray
    signal: np.ndarray
    histogram: np.ndarray


@njit(**STEP)
def _macd_step(x, count, fast, slow, signal, fast_sum, slow_sum, signal_sum, fp, sp, gp, lean):  # noqa: ANN001, PLR0913
    fk, sk, gk = 2.0 / (fp + 1.0), 2.0 / (sp + 1.0), 2.0 / (gp + 1.0)
    count += 1
    # The two price EMAs.
    if count < sp:
        slow_sum += x
        if lean:  # Lean: the fast EMA is seeded with the first `fp` values and reads 0 before
            if count < fp:
                fast_sum += x
            elif count == fp:
                fast_sum += x
                fast = fast_sum / fp
            else:
                fast = (x - fast) * fk + fast
        elif count > sp - fp:  # TA-Lib: the fast seed window ends with the slow one
            fast_sum += x
    elif count == sp:
        slow_sum += x
        slow = slow_sum / sp
        if lean:
            fast = (x - fast) * fk + fast
        else:
            fast_sum += x
            fast = fast_sum / fp
    else:
        fast = (x - fast) * fk + fast
        slow = (x - slow) * sk + slow
    line = fast - slow
    # The signal EMA of the line, from the first bar on which both price EMAs are ready.
    ready = False
    if count >= sp:
        lines = count - sp + 1
        if lines < gp:
            signal_sum += line
        elif lines == gp:
            signal_sum += line
            signal = signal_sum / gp
            ready = True
        else:
            signal = (line - signal) * gk + signal
            ready = True
    return line, signal, line - signal, ready, count, fast, slow, signal, fast_sum, slow_sum, signal_sum


@njit(**KERNEL)
def _macd_batch(x, fp, sp, gp, lean, out_line, out_signal, out_hist):  # noqa: ANN001
    count, fast, slow, signal, fast_sum, slow_sum, signal_sum = 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for i in range(x.shape[0]):
        (out_line[i], out_signal[i], out_hist[i], _, count, fast, slow, signal, fast_sum, slow_sum,
         signal_sum) = _macd_step(x[i], count, fast, slow, signal, fast_sum, slow_sum, signal_sum, fp, sp, gp, lean)  # fmt: skip


@njit(**KERNEL)
def _macd_stream(sid, x, fp, sp, gp, lean, count, ema, sums, line, signal, hist, ready):  # noqa: ANN001
    # ema[s] = (fast, slow, signal); sums[s] = (fast, slow, signal) seeds
    for i in range(x.shape[0]):
        s = sid[i]
        # Explicit 2-d indexing: a per-row view (ema[s]) would cost reference counting on every row.
        (line[i], signal[i], hist[i], ready[i], count[s], ema[s, 0], ema[s, 1], ema[s, 2], sums[s, 0], sums[s, 1],
         sums[s, 2]) = _macd_step(
            x[i], count[s], ema[s, 0], ema[s, 1], ema[s, 2], sums[s, 0], sums[s, 1], sums[s, 2], fp, sp, gp, lean
        )  # fmt: skip


def _macd_periods(fast: int, slow: int, signal: int) -> tuple[int, int, int]:
    fast, slow = check_period("MACD fast period", fast, 2), check_period("MACD slow period", slow, 2)
    if fast >= slow:
        raise ValueError(f"MACD fast period {fast} must be below the slow period {slow}")
    return fast, slow, check_period("MACD signal period", signal)


def macd(x: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9, *, lean: bool = False) -> MacdResult:
    """MACD line, signal and histogram (TA_MACD; `lean=True`: Lean's fast-EMA seed)."""
    (x,) = series(x)
    fp, sp, gp = _macd_periods(fast, slow, signal)
    out = MacdResult(np.empty_like(x), np.empty_like(x), np.empty_like(x))
    _macd_batch(x, fp, sp, gp, lean, *out)
    mask_warmup(sp - 1 + gp - 1, *out)
    return out


class MacdUpdate(NamedTuple):
    macd: np.ndarray
    signal: np.ndarray
    histogram: np.ndarray
    ready: np.ndarray


class Macd:
    def __init__(self, n_symbols: int, fast: int = 12, slow: int = 26, signal: int = 9, *, lean: bool = False) -> None:
        self.n_symbols = n_symbols
        self.periods = _macd_periods(fast, slow, signal)
        self.lean = lean
        self.count = np.zeros(n_symbols, np.int64)
        self.ema = np.zeros((n_symbols, 3))
        self.sums = np.zeros((n_symbols, 3))

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> MacdUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        n = x.shape[0]
        out = MacdUpdate(np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.bool_))
        _macd_stream(sid, x, *self.periods, self.lean, self.count, self.ema, self.sums, *out)
        return out

    def update(self, sid: np.ndarray, x: np.ndarray) -> MacdResult:
        u = self.update_current(sid, x)
        return MacdResult(*(np.where(u.ready, a, np.nan) for a in (u.macd, u.signal, u.histogram)))
