"""Bid-ask spreads estimated from bars alone (see `_base` for the one-definition, two-forms pattern).

* Corwin-Schultz (2012), "A Simple Way to Estimate Bid-Ask Spreads from Daily High and Low Prices":
  from two consecutive bars, beta = ln(H_t/L_t)^2 + ln(H_{t-1}/L_{t-1})^2,
  gamma = ln(max(H_t, H_{t-1}) / min(L_t, L_{t-1}))^2, k = 3 - 2*sqrt(2),
  alpha = (sqrt(2 beta) - sqrt(beta)) / k - sqrt(gamma / k), S = 2(e^alpha - 1)/(1 + e^alpha), with
  negative estimates set to 0 as the paper does; the feature is the SMA of S over `period` bars
  (without the paper's overnight adjustment). Lookback: period (the first S needs two bars).
* Roll (1984), "A Simple Implicit Measure of the Effective Bid-Ask Spread": spread = 2*sqrt(-cov) where
  cov is the sample covariance (ddof 1) of consecutive price changes (d_k, d_{k-1}) over the last
  `period` pairs, 0 when cov >= 0; returned relative to the close. Lookback: period + 1.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from utp.core.indicators._base import KERNEL, KERNEL_NO_FMA, NAN, STEP, IndicatorUpdate, check_period, mask_warmup, rows, series
from utp.core.indicators.averages import _sma_step

_K = 3.0 - 2.0 * math.sqrt(2.0)


@njit(**STEP)
def _corwin_schultz_estimate(high, low, prev_high, prev_low):  # noqa: ANN001
    beta = math.log(high / low) ** 2 + math.log(prev_high / prev_low) ** 2
    gamma = math.log(max(high, prev_high) / min(low, prev_low)) ** 2
    alpha = (math.sqrt(2.0 * beta) - math.sqrt(beta)) / _K - math.sqrt(gamma / _K)
    spread = 2.0 * (math.exp(alpha) - 1.0) / (1.0 + math.exp(alpha))
    return spread if spread > 0.0 else 0.0


@njit(**STEP)
def _corwin_schultz_step(high, low, trailing, prev_high, prev_low, count, total, period):  # noqa: ANN001
    """`count` counts bars; the estimates form a series from the second bar on, smoothed by an SMA;
    `trailing` is the estimate leaving that SMA's window (0 until it is full)."""
    count += 1
    if count == 1:
        return NAN, False, 0.0, high, low, count, total
    estimate = _corwin_schultz_estimate(high, low, prev_high, prev_low)
    value, ready, _, total = _sma_step(estimate, trailing, count - 2, total, period)
    return value, ready, estimate, high, low, count, total


# No fused multiply-add: the estimate's square roots and products contract differently in the two kernels
# under some LLVM versions (numba 0.68), which broke batch == stream in the last bit; there is no TA-Lib
# counterpart whose rounding to match.
@njit(**KERNEL_NO_FMA)
def _corwin_schultz_batch(high, low, period, estimates, out):  # noqa: ANN001
    prev_high, prev_low, count, total = 0.0, 0.0, 0, 0.0
    for i in range(high.shape[0]):
        # estimates[j] is the estimate of bar j (from bar 1 on); the SMA drops the one `period` back
        trailing = estimates[i - period] if i - period >= 1 else 0.0
        out[i], _, estimates[i], prev_high, prev_low, count, total = _corwin_schultz_step(
            high[i], low[i], trailing, prev_high, prev_low, count, total, period
        )


@njit(**KERNEL_NO_FMA)
def _corwin_schultz_stream(sid, high, low, period, ring, pos, prev_high, prev_low, count, total, value, ready):  # noqa: ANN001
    for i in range(high.shape[0]):
        s = sid[i]
        estimates_so_far = count[s] - 1  # estimates already in this symbol's SMA window
        trailing = ring[s, pos[s]] if estimates_so_far >= period else 0.0
        value[i], ready[i], estimate, prev_high[s], prev_low[s], count[s], total[s] = _corwin_schultz_step(
            high[i], low[i], trailing, prev_high[s], prev_low[s], count[s], total[s], period
        )
        if count[s] >= 2:
            ring[s, pos[s]] = estimate
            pos[s] = pos[s] + 1 if pos[s] + 1 < period else 0


def corwin_schultz_spread(high: np.ndarray, low: np.ndarray, period: int = 20) -> np.ndarray:
    """Corwin-Schultz relative spread estimate, averaged over `period` bars; lookback `period`."""
    high, low = series(high, low)
    period = check_period("Corwin-Schultz period", period)
    out, estimates = np.empty_like(high), np.zeros_like(high)
    _corwin_schultz_batch(high, low, period, estimates, out)
    mask_warmup(period, out)
    return out


class CorwinSchultzSpread:
    def __init__(self, n_symbols: int, period: int = 20) -> None:
        self.n_symbols, self.period = n_symbols, check_period("Corwin-Schultz period", period)
        self.ring = np.zeros((n_symbols, self.period))
        self.pos = np.zeros(n_symbols, np.int64)
        self.prev_high = np.zeros(n_symbols)
        self.prev_low = np.zeros(n_symbols)
        self.count = np.zeros(n_symbols, np.int64)
        self.total = np.zeros(n_symbols)

    def update_current(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray) -> IndicatorUpdate:
        sid, high, low = rows(self.n_symbols, sid, high, low)
        value, ready = np.empty(high.shape[0]), np.empty(high.shape[0], np.bool_)
        _corwin_schultz_stream(sid, high, low, self.period, self.ring, self.pos, self.prev_high, self.prev_low,
                               self.count, self.total, value, ready)  # fmt: skip
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        return self.update_current(sid, high, low).where_ready()


@njit(**STEP)
def _roll_step(close, changes, start, count, period):  # noqa: ANN001
    """`changes[start:start + period + 1]` holds the last period+1 price changes, oldest first (valid once
    `count` > period + 1); the covariance is computed from them exactly, so nothing drifts."""
    count += 1
    if count <= period + 1:
        return NAN, False, count
    n = period
    mean_x, mean_y = 0.0, 0.0
    for j in range(n):
        mean_x += changes[start + j + 1]
        mean_y += changes[start + j]
    mean_x /= n
    mean_y /= n
    cov = 0.0
    for j in range(n):
        cov += (changes[start + j + 1] - mean_x) * (changes[start + j] - mean_y)
    cov /= n - 1
    spread = 2.0 * math.sqrt(-cov) if cov < 0.0 else 0.0
    return spread / close, True, count


@njit(**KERNEL)
def _roll_batch(close, period, changes, out):  # noqa: ANN001
    count = 0
    for i in range(close.shape[0]):
        if i > 0:
            changes[i] = close[i] - close[i - 1]
        out[i], _, count = _roll_step(close[i], changes, i - period, count, period)


@njit(**KERNEL)
def _roll_stream(sid, close, period, ring, pos, prev, count, value, ready):  # noqa: ANN001
    width = period + 1
    window = np.empty(width)
    for i in range(close.shape[0]):
        s = sid[i]
        if count[s] > 0:
            ring[s, pos[s]] = close[i] - prev[s]
            pos[s] = pos[s] + 1 if pos[s] + 1 < width else 0
        prev[s] = close[i]
        if count[s] + 1 > period + 1:  # unroll the ring, oldest first
            for j in range(width):
                window[j] = ring[s, (pos[s] + j) % width]
        value[i], ready[i], count[s] = _roll_step(close[i], window, 0, count[s], period)


def roll_spread(close: np.ndarray, period: int = 20) -> np.ndarray:
    """Roll's effective spread relative to the close, over `period` pairs of changes; lookback period+1."""
    (close,) = series(close)
    period = check_period("Roll period", period, 2)
    out, changes = np.empty_like(close), np.zeros_like(close)
    _roll_batch(close, period, changes, out)
    mask_warmup(period + 1, out)
    return out


class RollSpread:
    def __init__(self, n_symbols: int, period: int = 20) -> None:
        self.n_symbols, self.period = n_symbols, check_period("Roll period", period, 2)
        self.ring = np.zeros((n_symbols, self.period + 1))
        self.pos = np.zeros(n_symbols, np.int64)
        self.prev = np.zeros(n_symbols)
        self.count = np.zeros(n_symbols, np.int64)

    def update_current(self, sid: np.ndarray, close: np.ndarray) -> IndicatorUpdate:
        sid, close = rows(self.n_symbols, sid, close)
        value, ready = np.empty(close.shape[0]), np.empty(close.shape[0], np.bool_)
        _roll_stream(sid, close, self.period, self.ring, self.pos, self.prev, self.count, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, close: np.ndarray) -> np.ndarray:
        return self.update_current(sid, close).where_ready()
