"""Streaming indicators over many symbols at once, as numba kernels.

Each indicator keeps per-symbol state in arrays and consumes rows `(symbol index, value)` in time order:
a live batch is one row per symbol, a backtest batch is thousands of rows, and both give the same values
because the state carries over between calls. Each update returns, per row, the indicator's current
value *as Lean defines it* (also before the indicator is ready, since Lean's alpha models act on those
values) and whether it is ready. Features use the value only where it is ready.

References (warm-up in samples):
* SMA(n): TA-Lib SMA, Lean SimpleMovingAverage; ready after n. Before that Lean's value is the mean of
  the samples so far.
* EMA(n): TA-Lib EMA and Lean ExponentialMovingAverage (master): seeded with the SMA of the first n
  values, k = 2 / (n + 1); ready after n. Before that Lean's value is 0.
* RSI(n), Wilder: TA-Lib RSI and Lean RelativeStrengthIndex with MovingAverageType.Wilders: average gain
  and loss seeded with the mean of the first n changes, then avg = avg + (x - avg) / n; ready after n + 1
  values. Lean's value is 100 when the average loss rounds to 0 (10 decimals), and before readiness is
  computed from the averages of the changes so far (100 on the very first value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass(frozen=True, slots=True)
class IndicatorUpdate:
    value: np.ndarray  # float64 per row, Lean's current value
    ready: np.ndarray  # bool per row

    def where_ready(self) -> np.ndarray:
        """Values with NaN where the indicator is still warming up."""
        return np.where(self.ready, self.value, np.nan)


def _check(sid: np.ndarray, x: np.ndarray, n_symbols: int) -> None:
    if sid.shape != x.shape:
        raise ValueError("symbol indices and values differ in length")
    if sid.size and (sid.min() < 0 or sid.max() >= n_symbols):
        raise ValueError("symbol index outside the universe")


@njit(cache=True)
def _sma_kernel(sid, x, period, ring, pos, count, total, value, ready):  # noqa: ANN001
    for i in range(x.shape[0]):
        s = sid[i]
        if count[s] >= period:
            total[s] -= ring[s, pos[s]]
        ring[s, pos[s]] = x[i]
        total[s] += x[i]
        pos[s] = (pos[s] + 1) % period
        count[s] += 1
        n = min(count[s], period)
        value[i] = total[s] / n
        ready[i] = count[s] >= period


class Sma:
    """Simple moving average per symbol."""

    def __init__(self, n_symbols: int, period: int) -> None:
        if period < 1:
            raise ValueError("SMA period must be >= 1")
        self.n_symbols, self.period = n_symbols, period
        self.ring = np.zeros((n_symbols, period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)
        self.total = np.zeros(n_symbols)

    def update(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        _check(sid, x, self.n_symbols)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _sma_kernel(sid, x, self.period, self.ring, self.pos, self.count, self.total, value, ready)
        return IndicatorUpdate(value, ready)


@njit(cache=True)
def _ema_kernel(sid, x, period, current, count, seed, value, ready):  # noqa: ANN001
    k = 2.0 / (period + 1.0)
    for i in range(x.shape[0]):
        s = sid[i]
        count[s] += 1
        c = count[s]
        if c < period:
            seed[s] += x[i]
            current[s] = 0.0
        elif c == period:
            seed[s] += x[i]
            current[s] = seed[s] / period
        else:
            current[s] = x[i] * k + current[s] * (1.0 - k)
        value[i] = current[s]
        ready[i] = c >= period


class Ema:
    """Exponential moving average per symbol, SMA-seeded."""

    def __init__(self, n_symbols: int, period: int) -> None:
        if period < 1:
            raise ValueError("EMA period must be >= 1")
        self.n_symbols, self.period = n_symbols, period
        self.current = np.zeros(n_symbols)
        self.count = np.zeros(n_symbols, np.int64)
        self.seed = np.zeros(n_symbols)

    def update(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        _check(sid, x, self.n_symbols)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _ema_kernel(sid, x, self.period, self.current, self.count, self.seed, value, ready)
        return IndicatorUpdate(value, ready)


@njit(cache=True)
def _rsi_kernel(sid, x, period, prev, count, gain_acc, loss_acc, value, ready):  # noqa: ANN001
    # gain_acc/loss_acc hold sums of the changes during warm-up and Wilder averages afterwards.
    for i in range(x.shape[0]):
        s = sid[i]
        count[s] += 1
        n = count[s] - 1  # number of changes so far
        if n >= 1:
            change = x[i] - prev[s]
            gain = change if change > 0.0 else 0.0
            loss = -change if change < 0.0 else 0.0
            if n < period:
                gain_acc[s] += gain
                loss_acc[s] += loss
            elif n == period:
                gain_acc[s] = (gain_acc[s] + gain) / period
                loss_acc[s] = (loss_acc[s] + loss) / period
            else:
                gain_acc[s] = (gain_acc[s] * (period - 1) + gain) / period
                loss_acc[s] = (loss_acc[s] * (period - 1) + loss) / period
        prev[s] = x[i]
        scale = 1.0 / n if 0 < n < period else 1.0
        avg_gain = gain_acc[s] * scale
        avg_loss = loss_acc[s] * scale
        if round(avg_loss, 10) == 0.0:
            value[i] = 100.0
        else:
            value[i] = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
        ready[i] = n >= period


class Rsi:
    """Wilder's relative strength index per symbol."""

    def __init__(self, n_symbols: int, period: int) -> None:
        if period < 1:
            raise ValueError("RSI period must be >= 1")
        self.n_symbols, self.period = n_symbols, period
        self.prev = np.zeros(n_symbols)
        self.count = np.zeros(n_symbols, np.int64)
        self.gain_acc = np.zeros(n_symbols)
        self.loss_acc = np.zeros(n_symbols)

    def update(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        _check(sid, x, self.n_symbols)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _rsi_kernel(sid, x, self.period, self.prev, self.count, self.gain_acc, self.loss_acc, value, ready)
        return IndicatorUpdate(value, ready)


@njit(cache=True)
def _returns_kernel(sid, x, horizons, ring, pos, count, out):  # noqa: ANN001
    depth = ring.shape[1]
    for i in range(x.shape[0]):
        s = sid[i]
        for j in range(horizons.shape[0]):
            h = horizons[j]
            if count[s] >= h:
                past = ring[s, (pos[s] - h) % depth]
                out[i, j] = x[i] / past - 1.0
            else:
                out[i, j] = np.nan
        ring[s, pos[s]] = x[i]
        pos[s] = (pos[s] + 1) % depth
        count[s] += 1


class Returns:
    """Simple returns over several horizons (in bars) per symbol: x_t / x_{t-h} - 1; NaN until h bars back exist."""

    def __init__(self, n_symbols: int, horizons: tuple[int, ...]) -> None:
        if not horizons or min(horizons) < 1:
            raise ValueError("return horizons must be >= 1")
        self.n_symbols = n_symbols
        self.horizons = np.asarray(horizons, np.int64)
        self.ring = np.zeros((n_symbols, int(max(horizons))))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Array of shape (rows, horizons)."""
        _check(sid, x, self.n_symbols)
        out = np.empty((x.shape[0], self.horizons.shape[0]))
        _returns_kernel(sid, x, self.horizons, self.ring, self.pos, self.count, out)
        return out
