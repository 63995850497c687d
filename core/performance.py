"""Performance statistics of an equity curve (vectorised numpy).

Conventions follow empyrical: simple per-period returns, Sharpe = mean / std (ddof=1) x sqrt(periods per
year) with a zero risk-free rate; max drawdown = the largest fall from a running peak, as a positive
fraction.
"""

from __future__ import annotations

import numpy as np


def simple_returns(equity: np.ndarray) -> np.ndarray:
    equity = np.asarray(equity, np.float64)
    if equity.size < 2:
        return np.empty(0)
    return equity[1:] / equity[:-1] - 1.0


def sharpe_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    returns = np.asarray(returns, np.float64)
    if returns.size < 2:
        return float("nan")
    std = returns.std(ddof=1)
    if std == 0 or not np.isfinite(std):
        return float("nan")
    return float(returns.mean() / std * np.sqrt(periods_per_year))


def max_drawdown(equity: np.ndarray) -> float:
    equity = np.asarray(equity, np.float64)
    if equity.size == 0:
        return 0.0
    peaks = np.maximum.accumulate(equity)
    return float(-(equity / peaks - 1.0).min())


def total_return(equity: np.ndarray, initial: float) -> float:
    equity = np.asarray(equity, np.float64)
    return float(equity[-1] / initial - 1.0) if equity.size else 0.0
