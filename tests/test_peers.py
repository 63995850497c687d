"""The peer harness (`tests.peers`) is sound: backtesting.py, backtrader and vectorbt give the same trades
for the reference strategy, and those trades are what the stated rule gives, on GOOG daily and on 50,000
synthetic minute bars. utp is compared against these peers elsewhere; this proves the yardstick.

vectorbt compiles for seconds on its first call in a process, so each data set is run once per module.
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import combinations

import numpy as np
import polars as pl
import pytest

from tests.peers import (
    DEFAULT_CASH, PeerRun, PeerTrade, compare_trades, reference_signals, run_backtesting_py, run_backtrader,
    run_vectorbt,
)  # fmt: skip
from utp.storage.datasets import dataset, synthetic_bars

# The peers add and subtract the same amounts in different orders; the last bits of the equity may differ.
EQUITY_RTOL = 1e-12
SYNTHETIC_BARS = 50_000


def _all_peers(bars: pl.DataFrame) -> list[PeerRun]:
    signals = reference_signals(bars["close"].to_numpy())
    return [run(bars, DEFAULT_CASH, signals=signals) for run in (run_backtesting_py, run_backtrader, run_vectorbt)]


@pytest.fixture(scope="module")
def goog() -> pl.DataFrame:
    return dataset("goog").bars()


@pytest.fixture(scope="module")
def goog_runs(goog: pl.DataFrame) -> list[PeerRun]:
    return _all_peers(goog)


@pytest.fixture(scope="module")
def synthetic() -> pl.DataFrame:
    return synthetic_bars(SYNTHETIC_BARS)


@pytest.fixture(scope="module")
def synthetic_runs(synthetic: pl.DataFrame) -> list[PeerRun]:
    return _all_peers(synthetic)


def _rule_trades(bars: pl.DataFrame, cash: float) -> tuple[list[PeerTrade], float]:
    """The reference rule as a plain loop, the statement the peers are held to: a signal on bar i fills at
    bar i + 1's open; all-in whole shares when flat, everything out when long."""
    open_, close = bars["open"].to_numpy(), bars["close"].to_numpy()
    entries, exits = reference_signals(close)
    trades: list[PeerTrade] = []
    size, entry = 0, (0, 0.0)
    for i in range(len(close) - 1):
        fill = open_[i + 1]
        if size == 0 and entries[i]:
            size = math.floor(cash / fill)
            cash -= size * fill
            entry = (i + 1, fill)
        elif size > 0 and exits[i]:
            cash += size * fill
            trades.append(PeerTrade(entry[0], i + 1, entry[1], fill, size))
            size = 0
    if size:
        trades.append(PeerTrade(entry[0], None, entry[1], None, size))
    return trades, cash + size * close[-1]


def _assert_agree(runs: list[PeerRun], bars: pl.DataFrame) -> None:
    rule_trades, rule_equity = _rule_trades(bars, DEFAULT_CASH)
    rule = PeerRun("the rule", rule_trades, rule_equity, 0.0, None, bars.height)
    for a, b in combinations([rule, *runs], 2):
        assert compare_trades(a, b) == [], "\n".join(compare_trades(a, b))
        assert a.final_equity == pytest.approx(b.final_equity, rel=EQUITY_RTOL), (a.name, b.name)


def test_the_peers_agree_on_goog(goog: pl.DataFrame, goog_runs: list[PeerRun]) -> None:
    _assert_agree(goog_runs, goog)
    # Pinned so a change in a peer or in the data shows up here, not as a silent shift in every comparison.
    assert [len(r.trades) for r in goog_runs] == [25, 25, 25]
    for run in goog_runs:
        assert run.final_equity == pytest.approx(559_131.34, abs=1e-6)
        assert run.bars == goog.height


def test_the_peers_agree_on_synthetic_minutes(synthetic: pl.DataFrame, synthetic_runs: list[PeerRun]) -> None:
    _assert_agree(synthetic_runs, synthetic)
    assert len(synthetic_runs[0].trades) > 500  # many round trips, so sizing and fill timing are exercised


def test_fills_are_next_opens_and_an_open_trade_stays_open(goog: pl.DataFrame, goog_runs: list[PeerRun]) -> None:
    open_, close = goog["open"].to_numpy(), goog["close"].to_numpy()
    entries, exits = reference_signals(close)
    for run in goog_runs:
        for t in run.trades:
            assert entries[t.entry_index - 1] and t.entry_price == open_[t.entry_index], (run.name, t)
            if t.exit_index is not None:
                assert exits[t.exit_index - 1] and t.exit_price == open_[t.exit_index], (run.name, t)
        *closed, last = run.trades
        assert all(t.exit_index is not None for t in closed)
        # GOOG ends long: the last trade is reported open and the equity marks it at the last close.
        assert last.exit_index is None and last.exit_price is None
        cash = DEFAULT_CASH + sum(t.size * (t.exit_price - t.entry_price) for t in closed)  # type: ignore[operator]
        assert run.final_equity == pytest.approx(cash - last.size * last.entry_price + last.size * close[-1], rel=1e-12)


def test_vectorbt_reports_its_first_call_apart(goog_runs: list[PeerRun], synthetic_runs: list[PeerRun]) -> None:
    # Whichever module fixture ran first paid the compile; the other reports steady state only.
    first_calls = [r.first_call_seconds for r in (*goog_runs, *synthetic_runs) if r.first_call_seconds is not None]
    assert len(first_calls) <= 1
    for run in (*goog_runs, *synthetic_runs):
        assert run.seconds > 0
        if run.name != "vectorbt":
            assert run.first_call_seconds is None


def test_reference_signals_use_ta_lib_emas_and_alternate(goog: pl.DataFrame) -> None:
    talib = pytest.importorskip("talib")
    close = goog["close"].to_numpy()
    entries, exits = reference_signals(close)
    fast, slow = talib.EMA(close, 12), talib.EMA(close, 26)
    above = fast > slow  # NaN compares False: the warm-up is "not above"
    valid = ~np.isnan(slow)
    want_entries = np.r_[False, above[1:] & ~above[:-1] & valid[:-1]]
    want_exits = np.r_[False, ~above[1:] & above[:-1] & valid[:-1]]
    assert np.array_equal(entries, want_entries) and np.array_equal(exits, want_exits)
    assert not (entries[:26].any() or exits[:26].any())  # EMA(26) is defined from bar 25
    signal_bars = np.flatnonzero(entries | exits)
    kinds = entries[signal_bars]
    assert np.all(kinds[1:] != kinds[:-1])  # strictly alternating


def test_compare_trades_names_each_difference(goog_runs: list[PeerRun]) -> None:
    a = goog_runs[0]
    t = a.trades[3]
    assert t.exit_price is not None
    moved = replace(t, entry_index=t.entry_index + 1, exit_price=t.exit_price + 1e-6, size=t.size - 1)
    b = replace(a, name="changed", trades=[*a.trades[:3], moved, *a.trades[4:-1]])
    diffs = compare_trades(a, b)
    assert diffs[0] == f"backtesting.py has {len(a.trades)} trades, changed has {len(a.trades) - 1}"
    assert len(diffs) == 2 and "trade 3" in diffs[1]
    assert "entry bar" in diffs[1] and "exit price" in diffs[1] and "size" in diffs[1] and "exit bar" not in diffs[1]
    within = replace(a, trades=[replace(t, entry_price=t.entry_price * (1 + 1e-12)) for t in a.trades])
    assert compare_trades(a, within) == []
