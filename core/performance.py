"""Performance statistics of a backtest (vectorised numpy).

Return-based statistics follow empyrical's definitions exactly (tests compare with `empyrical-reloaded`
to 1e-9 on the same returns), with `periods_per_year` as its annualization factor:

* total_return = prod(1 + r) - 1; annual_return = (1 + total)^(ppy / n) - 1
* annual_volatility = std(r, ddof=1) * sqrt(ppy); sharpe = mean(r) / std(r, ddof=1) * sqrt(ppy) (zero risk-free)
* downside_risk = sqrt(mean(min(r, 0)^2)) * sqrt(ppy); sortino = mean(r) * ppy / downside_risk
* max_drawdown: the largest fall of the wealth curve prod(1 + r) from its running peak (a negative
  fraction, as empyrical; the curve starts after the first return); calmar = annual_return / |max_drawdown|
* beta = cov(r, b) / var(b) with both demeaned over the bars where r exists; alpha = (mean(r - beta b) + 1)^ppy - 1
* information_ratio = mean(r - b) / std(r - b, ddof=1) * sqrt(ppy) (empyrical's excess_sharpe, annualised)

The rest are not in empyrical and are tested against plain re-implementations:
* max_drawdown_duration: the longest run of bars from a peak of the wealth curve until it is regained
  (to the end if it never is)
* trade statistics (from round trips): win_rate, profit_factor = gross wins / |gross losses|,
  average_win, average_loss
* turnover = traded notional / 2 / average equity, per year; exposure_time = share of bars holding any
  position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def simple_returns(equity: np.ndarray) -> np.ndarray:
    equity = np.asarray(equity, np.float64)
    if equity.size < 2:
        return np.empty(0)
    return equity[1:] / equity[:-1] - 1.0


def total_return(returns: np.ndarray) -> float:
    returns = np.asarray(returns, np.float64)
    return float(np.prod(1.0 + returns) - 1.0) if returns.size else float("nan")


def annual_return(returns: np.ndarray, periods_per_year: float) -> float:
    returns = np.asarray(returns, np.float64)
    if returns.size < 1:
        return float("nan")
    return float((1.0 + total_return(returns)) ** (1.0 / (returns.size / periods_per_year)) - 1.0)


def annual_volatility(returns: np.ndarray, periods_per_year: float) -> float:
    returns = np.asarray(returns, np.float64)
    if returns.size < 2:
        return float("nan")
    return float(np.std(returns, ddof=1) * math.sqrt(periods_per_year))


def sharpe_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    returns = np.asarray(returns, np.float64)
    if returns.size < 2:
        return float("nan")
    std = np.std(returns, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(returns) / std * math.sqrt(periods_per_year))


def downside_risk(returns: np.ndarray, periods_per_year: float) -> float:
    returns = np.asarray(returns, np.float64)
    if returns.size < 1:
        return float("nan")
    downside = np.minimum(returns, 0.0)
    return float(math.sqrt(np.mean(downside * downside)) * math.sqrt(periods_per_year))


def sortino_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    returns = np.asarray(returns, np.float64)
    if returns.size < 2:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(returns) * periods_per_year / downside_risk(returns, periods_per_year))


def _wealth(returns: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 + np.asarray(returns, np.float64))


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall from a running peak of the wealth curve, as a negative fraction (0 when none)."""
    returns = np.asarray(returns, np.float64)
    if returns.size < 1:
        return float("nan")
    wealth = _wealth(returns)
    peaks = np.maximum.accumulate(wealth)
    return float(np.min((wealth - peaks) / peaks))


def max_drawdown_duration(returns: np.ndarray) -> int:
    """Longest number of bars spent below a previous peak of the wealth curve."""
    wealth = _wealth(returns)
    if wealth.size == 0:
        return 0
    under = np.r_[False, wealth < np.maximum.accumulate(wealth), False].astype(np.int8)
    edges = np.diff(under)  # +1 where a run under the peak starts, -1 after it ends
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max()) if starts.size else 0


def calmar_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    drawdown = max_drawdown(returns)
    if not drawdown < 0:
        return float("nan")
    value = annual_return(returns, periods_per_year) / abs(drawdown)
    return float("nan") if math.isinf(value) else value


def beta(returns: np.ndarray, benchmark: np.ndarray) -> float:
    returns, benchmark = np.asarray(returns, np.float64), np.asarray(benchmark, np.float64)
    if returns.size < 1 or benchmark.size < 2:
        return float("nan")
    independent = np.where(np.isnan(returns), np.nan, benchmark)
    residual = independent - np.nanmean(independent)
    covariance = np.nanmean(residual * returns)
    variance = np.nanmean(residual * residual)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(covariance / variance)


def alpha(returns: np.ndarray, benchmark: np.ndarray, periods_per_year: float) -> float:
    returns, benchmark = np.asarray(returns, np.float64), np.asarray(benchmark, np.float64)
    if returns.size < 2:
        return float("nan")
    series = returns - beta(returns, benchmark) * benchmark
    return float((np.nanmean(series) + 1.0) ** periods_per_year - 1.0)


def information_ratio(returns: np.ndarray, benchmark: np.ndarray, periods_per_year: float) -> float:
    active = np.asarray(returns, np.float64) - np.asarray(benchmark, np.float64)
    if active.size < 2:
        return float("nan")
    tracking_error = np.nan_to_num(np.nanstd(active, ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(active) / tracking_error * math.sqrt(periods_per_year))


@dataclass(frozen=True, slots=True)
class TradeStats:
    trades: int
    win_rate: float
    profit_factor: float
    average_win: float
    average_loss: float


def trade_stats(pnls: Sequence[float]) -> TradeStats:
    """Statistics of round-trip P&Ls (net of costs). A trade at exactly 0 is neither a win nor a loss."""
    pnl = np.asarray(pnls, np.float64)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    gross_loss = -losses.sum()
    return TradeStats(
        trades=int(pnl.size),
        win_rate=float(wins.size / pnl.size) if pnl.size else float("nan"),
        profit_factor=float(wins.sum() / gross_loss) if gross_loss > 0 else (float("inf") if wins.size else float("nan")),
        average_win=float(wins.mean()) if wins.size else float("nan"),
        average_loss=float(losses.mean()) if losses.size else float("nan"),
    )


@dataclass(frozen=True, slots=True)
class Metrics:
    total_return: float
    annual_return: float
    annual_volatility: float
    sharpe: float
    sortino: float
    calmar: float
    max_drawdown: float
    max_drawdown_duration: int
    alpha: float
    beta: float
    information_ratio: float
    trades: int
    win_rate: float
    profit_factor: float
    average_win: float
    average_loss: float
    turnover: float
    exposure_time: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compute_metrics(
    returns: np.ndarray,
    periods_per_year: float,
    *,
    benchmark: np.ndarray | None = None,
    trade_pnls: Sequence[float] = (),
    traded_notional: float = 0.0,
    equity: np.ndarray | None = None,
    invested: np.ndarray | None = None,
) -> Metrics:
    """Every statistic of a backtest. `benchmark` holds the benchmark's returns on the same bars; `equity`
    the equity at each bar (for turnover); `invested` whether any position was held at each bar."""
    returns = np.asarray(returns, np.float64)
    trades = trade_stats(trade_pnls)
    has_benchmark = benchmark is not None and len(benchmark) == len(returns)
    years = returns.size / periods_per_year if periods_per_year else float("nan")
    mean_equity = float(np.mean(equity)) if equity is not None and len(equity) else float("nan")
    return Metrics(
        total_return=total_return(returns),
        annual_return=annual_return(returns, periods_per_year),
        annual_volatility=annual_volatility(returns, periods_per_year),
        sharpe=sharpe_ratio(returns, periods_per_year),
        sortino=sortino_ratio(returns, periods_per_year),
        calmar=calmar_ratio(returns, periods_per_year),
        max_drawdown=max_drawdown(returns),
        max_drawdown_duration=max_drawdown_duration(returns),
        alpha=alpha(returns, benchmark, periods_per_year) if has_benchmark else float("nan"),
        beta=beta(returns, benchmark) if has_benchmark else float("nan"),
        information_ratio=information_ratio(returns, benchmark, periods_per_year) if has_benchmark else float("nan"),
        trades=trades.trades,
        win_rate=trades.win_rate,
        profit_factor=trades.profit_factor,
        average_win=trades.average_win,
        average_loss=trades.average_loss,
        turnover=traded_notional / 2.0 / mean_equity / years if years and mean_equity else float("nan"),
        exposure_time=float(np.mean(invested)) if invested is not None and len(invested) else float("nan"),
    )
