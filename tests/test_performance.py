"""Performance statistics: equal to empyrical-reloaded on the same returns; the rest against plain code."""

from __future__ import annotations

import empyrical
import numpy as np
import pytest

from utp.core import performance as perf
from utp.storage.datasets import dataset, load_sp500_index


@pytest.fixture(scope="module")
def returns() -> tuple[np.ndarray, np.ndarray]:
    """Real daily returns: GOOG against the S&P 500 index on the same dates."""
    goog = dataset("goog").bars()
    index = load_sp500_index()
    joined = goog.join(index, on="event_time_ns", suffix="_index").sort("event_time_ns")
    r = joined["close"].pct_change().drop_nulls().to_numpy()
    b = joined["close_index"].pct_change().drop_nulls().to_numpy()
    return r, b


CASES = [
    ("total_return", lambda r, b: perf.total_return(r), lambda r, b: empyrical.cum_returns_final(r)),
    ("annual_return", lambda r, b: perf.annual_return(r, 252), lambda r, b: empyrical.annual_return(r)),
    ("annual_volatility", lambda r, b: perf.annual_volatility(r, 252), lambda r, b: empyrical.annual_volatility(r)),
    ("sharpe", lambda r, b: perf.sharpe_ratio(r, 252), lambda r, b: empyrical.sharpe_ratio(r)),
    ("sortino", lambda r, b: perf.sortino_ratio(r, 252), lambda r, b: empyrical.sortino_ratio(r)),
    ("downside_risk", lambda r, b: perf.downside_risk(r, 252), lambda r, b: empyrical.downside_risk(r)),
    ("max_drawdown", lambda r, b: perf.max_drawdown(r), lambda r, b: empyrical.max_drawdown(r)),
    ("calmar", lambda r, b: perf.calmar_ratio(r, 252), lambda r, b: empyrical.calmar_ratio(r)),
    ("beta", lambda r, b: perf.beta(r, b), lambda r, b: empyrical.beta(r, b)),
    ("alpha", lambda r, b: perf.alpha(r, b, 252), lambda r, b: empyrical.alpha(r, b)),
    ("information_ratio", lambda r, b: perf.information_ratio(r, b, 252) / np.sqrt(252),
     lambda r, b: empyrical.excess_sharpe(r, b)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "ours", "theirs"), CASES, ids=[c[0] for c in CASES])
def test_statistics_equal_empyrical(returns, name, ours, theirs) -> None:  # noqa: ANN001
    r, b = returns
    for sample in (r, r[:300], r[-700:] * -1.0):  # whole, short, and a losing mirror image
        bench = b[: len(sample)] if sample is not r else b
        assert ours(sample, bench) == pytest.approx(theirs(sample, bench), rel=1e-9, abs=1e-12), name


def test_periods_per_year_is_the_annualization_factor(returns) -> None:  # noqa: ANN001
    r, _ = returns
    assert perf.sharpe_ratio(r, 6240) == pytest.approx(empyrical.sharpe_ratio(r, annualization=6240), rel=1e-9)
    assert perf.annual_return(r, 52) == pytest.approx(empyrical.annual_return(r, annualization=52), rel=1e-9)


def test_drawdown_duration_is_the_longest_time_under_water() -> None:
    r = np.array([0.1, -0.05, -0.05, 0.02, 0.2, -0.01, 0.02, -0.3])
    # wealth: 1.1 peak; under water for bars 1..3 (3 bars), regained at bar 4; bar 5 under (1), regained
    # at 6? 1.1*.95*.95*1.02*1.2 = 1.215; *0.99 = 1.203 < 1.215; *1.02 = 1.227 > peak; bar 7 under: 1 bar.
    assert perf.max_drawdown_duration(r) == 3
    assert perf.max_drawdown_duration(np.array([0.1, -0.1, -0.1, -0.1])) == 3  # never regained: to the end
    assert perf.max_drawdown_duration(np.array([0.01, 0.02])) == 0


def test_trade_statistics() -> None:
    stats = perf.trade_stats([100.0, -50.0, 25.0, 0.0, -25.0])
    assert stats.trades == 5 and stats.win_rate == pytest.approx(0.4)
    assert stats.profit_factor == pytest.approx(125 / 75)
    assert stats.average_win == pytest.approx(62.5) and stats.average_loss == pytest.approx(-37.5)
    assert perf.trade_stats([10.0]).profit_factor == float("inf")
    assert np.isnan(perf.trade_stats([]).win_rate)


def test_compute_metrics_gathers_everything(returns) -> None:  # noqa: ANN001
    r, b = returns
    equity = 100_000 * np.cumprod(1 + r)
    metrics = perf.compute_metrics(
        r, 252, benchmark=b, trade_pnls=[5.0, -2.0], traded_notional=4_000_000.0, equity=equity,
        invested=np.r_[np.zeros(100, bool), np.ones(len(r) - 100, bool)],
    )  # fmt: skip
    assert metrics.sharpe == pytest.approx(empyrical.sharpe_ratio(r), rel=1e-9)
    assert metrics.alpha == pytest.approx(empyrical.alpha(r, b), rel=1e-9)
    assert metrics.turnover == pytest.approx(4_000_000 / 2 / equity.mean() / (len(r) / 252))
    assert metrics.exposure_time == pytest.approx((len(r) - 100) / len(r))
    assert metrics.trades == 2 and metrics.win_rate == 0.5
    assert set(metrics.as_dict()) >= {"sortino", "calmar", "information_ratio", "max_drawdown_duration"}
