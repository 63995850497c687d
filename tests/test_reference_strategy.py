"""The issue's correctness test: the reference strategy (configs/reference.yaml: EMA(12)/EMA(26) cross,
long only, all-in on a cross up, flat on a cross down, next-open fills, no costs) gives exactly the same
trades — entry and exit bars, prices and sizes — through utp's whole engine graph as in backtesting.py and
backtrader, on the real GOOG data and on synthetic minute bars; and utp's vectorised path agrees with the
event-driven one."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.peers import (
    DEFAULT_CASH, PeerRun, PeerTrade, compare_trades, reference_signals, run_backtesting_py, run_backtrader, run_utp,
)  # fmt: skip
from utp.core.vectorized import backtest_signals, ema_cross_signals
from utp.storage.datasets import dataset, synthetic_bars

DAY_NS = 86_400 * 10**9


@pytest.fixture(scope="module")
def goog() -> pl.DataFrame:
    return dataset("goog").bars()


@pytest.fixture(scope="module")
def goog_utp(goog: pl.DataFrame) -> PeerRun:
    return run_utp(goog, interval_ns=DAY_NS, periods_per_year=252.0)


def test_utp_trades_exactly_as_backtesting_py_and_backtrader_on_goog(goog: pl.DataFrame, goog_utp: PeerRun) -> None:
    signals = reference_signals(goog["close"].to_numpy())
    assert len(goog_utp.trades) == 25  # a real test: the strategy trades, the last trade still open
    for peer in (run_backtesting_py(goog, DEFAULT_CASH, signals=signals), run_backtrader(goog, DEFAULT_CASH, signals=signals)):
        assert compare_trades(goog_utp, peer) == [], peer.name
        assert goog_utp.final_equity == pytest.approx(peer.final_equity, rel=1e-12)


def test_utp_trades_exactly_as_backtesting_py_on_synthetic_minutes() -> None:
    bars = synthetic_bars(30_000)
    utp = run_utp(bars, batch_bar_times=997)  # an odd batch size: batches never change a decision
    peer = run_backtesting_py(bars, DEFAULT_CASH)
    assert len(utp.trades) > 400 and compare_trades(utp, peer) == []
    assert utp.final_equity == pytest.approx(peer.final_equity, rel=1e-12)


def test_the_vectorised_path_gives_the_event_paths_trades(goog: pl.DataFrame, goog_utp: PeerRun) -> None:
    open_, close = goog["open"].to_numpy(), goog["close"].to_numpy()
    entries, exits = ema_cross_signals(close)
    result = backtest_signals(open_, close, entries, exits, initial_cash=DEFAULT_CASH)
    t = result.trades
    vector = PeerRun("vector", [
        PeerTrade(int(t.entry_bar[k]), None if t.exit_bar[k] < 0 else int(t.exit_bar[k]), float(t.entry_price[k]),
                  None if t.exit_bar[k] < 0 else float(t.exit_price[k]), int(t.quantity[k]))
        for k in range(len(t))
    ], result.final_equity, 0.0, None, len(close))  # fmt: skip
    assert compare_trades(goog_utp, vector) == []
    assert result.final_equity == pytest.approx(goog_utp.final_equity, rel=1e-12)
    assert np.array_equal(entries, reference_signals(close)[0])
