"""Lagged values: x[t - n] per symbol (batch and streaming), for features built on past bars."""

from __future__ import annotations

import numpy as np
from numba import njit

from utp.core.indicators._base import KERNEL, NAN, IndicatorUpdate, check_period, rows, series


@njit(**KERNEL)
def _lag_stream(sid, x, lag, ring, pos, count, value, ready):  # noqa: ANN001
    for i in range(x.shape[0]):
        s = sid[i]
        ready[i] = count[s] >= lag
        value[i] = ring[s, pos[s]] if ready[i] else NAN  # the oldest of the last `lag` values
        ring[s, pos[s]] = x[i]
        pos[s] = pos[s] + 1 if pos[s] + 1 < lag else 0
        count[s] += 1


def lag(x: np.ndarray, n: int = 1) -> np.ndarray:
    """x shifted n bars later: lag(x, n)[t] = x[t - n]; NaN for the first n bars."""
    (x,) = series(x)
    n = check_period("lag", n)
    out = np.full_like(x, NAN)
    out[n:] = x[:-n]
    return out


class Lag:
    def __init__(self, n_symbols: int, n: int = 1) -> None:
        self.n_symbols, self.n = n_symbols, check_period("lag", n)
        self.ring = np.zeros((n_symbols, self.n))
        self.pos = np.zeros(n_symbols, np.int64)
        self.count = np.zeros(n_symbols, np.int64)

    def update_current(self, sid: np.ndarray, x: np.ndarray) -> IndicatorUpdate:
        sid, x = rows(self.n_symbols, sid, x)
        value, ready = np.empty(x.shape[0]), np.empty(x.shape[0], np.bool_)
        _lag_stream(sid, x, self.n, self.ring, self.pos, self.count, value, ready)
        return IndicatorUpdate(value, ready)

    def update(self, sid: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.update_current(sid, x).where_ready()
