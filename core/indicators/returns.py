"""Simple returns over several horizons per symbol (streaming; features use it)."""

from __future__ import annotations

import numpy as np
from numba import njit

from utp.core.indicators._base import KERNEL, rows


@njit(**KERNEL)
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
        sid, x = rows(self.n_symbols, sid, x)
        out = np.empty((x.shape[0], self.horizons.shape[0]))
        _returns_kernel(sid, x, self.horizons, self.ring, self.pos, self.count, out)
        return out
