"""Cash to the cent: the books of a 20-stock backtest rebuilt from its fill log alone.

The whole engine graph runs over the 20 `sp500` stocks for four years with commissions (per share, with a
minimum, plus bps), shorts and a borrow fee. The test then keeps its own ledger in plain Python from the
fills and the bars only, following the conventions written in `utp.core.portfolio`'s docstring (a fill's
commission comes out of cash and is not realized P&L; realized P&L is booked when a position shrinks, at
the fill price against the average price; a fill through zero closes the old position and opens the rest
at the fill price; shorts pay `borrow_rate` a year on their market value at the previous marks for the time
since the previous bar time), and checks that every account snapshot, every position snapshot, the summary
and the attribution tables agree with it to the cent.

The ledger keeps a cost basis per symbol (money paid for the shares still held) rather than an average
price, so it reaches the average price by a different route than the portfolio kernel does.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

import polars as pl
import pytest

from utp.core.batch import Batch
from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock
from utp.core.config import load_config
from utp.core.controls import ControlState
from utp.daemon.session import Session
from utp.storage.datasets import SP500_SYMBOLS
from utp.v1 import events_pb2 as pb

CENT = 0.005
YEAR_NS = 365 * 86_400 * 10**9
BORROW_RATE = 0.03
INITIAL_CASH = 100_000.0
CONFIG = {
    "market_data.dataset": "sp500",
    "market_data.start": "2015-01-01",
    "market_data.end": "2018-12-31",
    "market_data.batch_bar_times": 250,  # several steps, so books carry across batches
    "risk.max_position_pct": 0.05,
    "risk.allow_short": True,
    "execution.initial_cash": INITIAL_CASH,
    "execution.commission_per_share": 0.005,
    "execution.commission_min": 1.0,
    "execution.commission_bps": 1.0,
    "execution.borrow_rate": BORROW_RATE,
}


@dataclass
class Run:
    session: Session
    bars: pl.DataFrame
    fills: pl.DataFrame
    accounts: pl.DataFrame
    positions: pl.DataFrame


@pytest.fixture(scope="module")
def run() -> Run:
    config = load_config(environ={}, overrides=CONFIG)
    bus = InProcessBus()
    session = Session(config, bus=bus, clock=SimulatedClock(), controls=ControlState(execution_approved=True),
                      collect_results=True)  # fmt: skip
    positions: list[pl.DataFrame] = []

    async def on_positions(batch: Batch) -> None:
        positions.append(batch.frame)

    async def go() -> None:
        await session.start()
        # The collector keeps fills and account snapshots; position snapshots are taken off the bus here.
        await bus.subscribe("position_snapshot", "accounting-test", on_positions)
        await session.run()

    asyncio.run(go())
    collector = session.collector
    assert collector is not None and collector.result is not None
    return Run(session, session.market_data.bars, collector.fill_frame, collector._all("account_snapshot"),
               pl.concat([p for p in positions if p.height]))  # fmt: skip


# -- the test's own ledger -----------------------------------------------------------------------------
@dataclass
class Holding:
    quantity: float = 0.0
    cost: float = 0.0  # money paid for the shares held (negative for a short: money received)
    realized: float = 0.0
    commissions: float = 0.0
    borrow: float = 0.0
    last: float = 0.0

    @property
    def average_price(self) -> float:
        return self.cost / self.quantity if self.quantity else 0.0

    @property
    def unrealized(self) -> float:
        return self.quantity * self.last - self.cost


@dataclass
class Ledger:
    cash: float
    holdings: dict[str, Holding] = field(default_factory=lambda: defaultdict(Holding))
    closed_trades: int = 0  # positions brought back to (or through) zero

    def fill(self, symbol: str, quantity: float, price: float, commission: float) -> None:
        h = self.holdings[symbol]
        self.cash -= quantity * price + commission
        h.commissions += commission
        if h.quantity == 0 or (h.quantity > 0) == (quantity > 0):
            h.quantity += quantity
            h.cost += quantity * price
            return
        closed = min(abs(quantity), abs(h.quantity))
        share = closed / abs(h.quantity)
        basis = h.cost * share  # the cost of the shares this fill closes
        proceeds = price * closed * (1 if h.quantity > 0 else -1)
        h.realized += proceeds - basis
        h.cost -= basis
        h.quantity += quantity
        if abs(h.quantity) < 1e-9 or abs(quantity) > closed:
            self.closed_trades += 1
        if abs(h.quantity) < 1e-9:
            h.quantity, h.cost = 0.0, 0.0
        elif abs(quantity) > closed:  # through zero: what is left opens at the fill price
            h.cost = h.quantity * price

    def borrow(self, years: float) -> None:
        for h in self.holdings.values():
            if h.quantity < 0:
                fee = -h.quantity * h.last * BORROW_RATE * years
                h.borrow += fee
                self.cash -= fee

    def account(self) -> dict[str, float]:
        values = [h.quantity * h.last for h in self.holdings.values() if h.quantity]
        long_value = sum(v for v in values if v > 0)
        short_value = -sum(v for v in values if v < 0)
        return {
            "cash": self.cash,
            "equity": self.cash + long_value - short_value,
            "gross_exposure": long_value + short_value,
            "net_exposure": long_value - short_value,
            "long_exposure": long_value,
            "short_exposure": short_value,
            "realized_pnl": sum(h.realized for h in self.holdings.values()),
            "unrealized_pnl": sum(h.unrealized for h in self.holdings.values()),
            "commissions": sum(h.commissions for h in self.holdings.values()),
            "borrow_costs": sum(h.borrow for h in self.holdings.values()),
            "open_positions": float(len(values)),
        }


@dataclass
class Replay:
    ledger: Ledger
    accounts: dict[int, dict[str, float]]  # bar time -> the ledger's account after it
    positions_checked: int


def replay(run: Run) -> Replay:
    """Walk the bar times: borrow for the time since the previous one, then that time's fills (in log
    order), then its closes; compare the position snapshots of that time on the way."""
    ledger = Ledger(INITIAL_CASH)
    fills_at: dict[int, list[tuple]] = defaultdict(list)
    for symbol, side, quantity, price, commission, t in run.fills.select(
        "symbol", "side", "quantity", "price", "commission", "event_time_ns"
    ).iter_rows():
        fills_at[t].append((symbol, quantity if side == pb.ORDER_SIDE_BUY else -quantity, price, commission))
    snapshots_at: dict[int, list[dict]] = defaultdict(list)
    for row in run.positions.iter_rows(named=True):
        snapshots_at[row["event_time_ns"]].append(row)

    accounts: dict[int, dict[str, float]] = {}
    checked = 0
    previous: int | None = None
    for (t,), bars in run.bars.group_by("event_time_ns", maintain_order=True):
        if previous is not None:
            ledger.borrow((t - previous) / YEAR_NS)
        for fill in fills_at.pop(t, []):
            ledger.fill(*fill)
        for symbol, close in bars.select("symbol", "close").iter_rows():
            ledger.holdings[symbol].last = close
        for snap in snapshots_at.pop(t, []):
            h = ledger.holdings[snap["symbol"]]
            where = f"{snap['symbol']} at {t}"
            assert snap["quantity"] == h.quantity, where
            assert snap["average_price"] == pytest.approx(h.average_price, abs=1e-6), where
            assert snap["last_price"] == h.last, where
            assert abs(snap["realized_pnl"] - h.realized) < CENT, where
            assert abs(snap["unrealized_pnl"] - h.unrealized) < CENT, where
            assert abs(snap["market_value"] - h.quantity * h.last) < CENT, where
            assert abs(snap["commissions"] - h.commissions) < CENT, where
            checked += 1
        accounts[t] = ledger.account()
        previous = t
    assert not fills_at, f"fills at times without bars: {sorted(fills_at)[:3]}"
    assert not snapshots_at, f"position snapshots at times without bars: {sorted(snapshots_at)[:3]}"
    return Replay(ledger, accounts, checked)


@pytest.fixture(scope="module")
def replayed(run: Run) -> Replay:
    return replay(run)


# -- the tests -----------------------------------------------------------------------------------------
def test_the_run_exercises_what_the_books_must_handle(run: Run) -> None:
    fills = run.fills
    assert run.bars["symbol"].n_unique() == len(SP500_SYMBOLS) == 20
    assert fills.height > 1_000
    assert fills["symbol"].n_unique() == 20
    result = run.session.collector.result
    assert any(t.side == pb.ORDER_SIDE_SELL for t in result.trades)  # shorts
    per_share = fills["quantity"] * 0.005
    # Commissions at the minimum and above it (the bps part is always on top).
    assert (per_share < 1.0).any() and (per_share > 1.0).any()
    assert (fills["commission"] > 0).all()


def test_every_position_snapshot_agrees_with_the_ledger(run: Run, replayed: Replay) -> None:
    # The comparisons are made inside `replay`, at the bar time of each snapshot.
    assert replayed.positions_checked == run.positions.height > run.fills["symbol"].n_unique()


def test_every_account_snapshot_agrees_to_the_cent(run: Run, replayed: Replay) -> None:
    accounts = run.accounts
    assert accounts.height == run.bars["event_time_ns"].n_unique()  # one per bar time
    worst: dict[str, float] = defaultdict(float)
    for row in accounts.iter_rows(named=True):
        expected = replayed.accounts[row["event_time_ns"]]
        for name, value in expected.items():
            worst[name] = max(worst[name], abs(row[name] - value))
    assert all(diff < CENT for diff in worst.values()), dict(worst)
    # The borrow fee and the short side really moved money in this run.
    assert max(a["borrow_costs"] for a in replayed.accounts.values()) > 1.0
    assert max(a["short_exposure"] for a in replayed.accounts.values()) > 0


def test_day_pnl_is_the_change_of_equity_since_the_previous_day(run: Run) -> None:
    equity = [INITIAL_CASH, *run.accounts["equity"].to_list()]
    for i, day_pnl in enumerate(run.accounts["day_pnl"].to_list()):  # daily bars: one bar time a day
        assert abs(day_pnl - (equity[i + 1] - equity[i])) < CENT


def test_summary_and_final_equity_at_the_last_closes(run: Run, replayed: Replay) -> None:
    summary = run.session.collector.result.summary
    ledger = replayed.ledger
    last_close = dict(run.bars.group_by("symbol").agg(pl.col("close").last()).iter_rows())
    final_equity = ledger.cash + sum(h.quantity * last_close[s] for s, h in ledger.holdings.items())
    assert abs(summary.final_equity - final_equity) < CENT
    assert abs(summary.commissions - sum(run.fills["commission"].to_list())) < CENT
    assert summary.fills == run.fills.height
    assert summary.trades == ledger.closed_trades


def test_attribution_adds_up_to_the_books(run: Run, replayed: Replay) -> None:
    """A symbol's trades earn its realized and unrealized P&L less its commissions; the borrow fee is an
    account cost outside the trades, so all trades together miss the equity change by exactly that."""
    result = run.session.collector.result
    holdings = replayed.ledger.holdings
    by_symbol = {a.key: a for a in result.by_symbol}
    assert set(by_symbol) == set(holdings)
    for symbol, h in holdings.items():
        assert abs(by_symbol[symbol].pnl - (h.realized + h.unrealized - h.commissions)) < CENT, symbol
        assert by_symbol[symbol].trades == sum(1 for t in result.trades if t.symbol == symbol)
    total = sum(a.pnl for a in result.by_symbol)
    borrow = sum(h.borrow for h in holdings.values())
    assert abs(total - borrow - (result.summary.final_equity - INITIAL_CASH)) < CENT
    assert abs(sum(a.pnl for a in result.by_strategy) - total) < CENT
    assert sum(a.trades for a in result.by_strategy) == len(result.trades)
