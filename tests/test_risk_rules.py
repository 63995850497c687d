"""Every portfolio risk rule at, and either side of, its threshold (the kernels of `utp.core.risk_guard`), then
the rules inside execution on real bars: events, closes, the kill switch, and batch-size invariance."""

from __future__ import annotations

import asyncio

import numpy as np
import polars as pl
import pytest

from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock
from utp.core.config import Config, ExitConfig, RiskConfig, load_config
from utp.core.controls import ControlState
from utp.core.kinds import KINDS
from utp.core.portfolio import A_DAY_START, LAST, Q, _NACC, _NPOS
from utp.core.risk_guard import (
    A_BLOCK,
    A_PAUSE,
    G_PEAK,
    GS_BEST,
    GS_EXITING,
    MARK_KILL,
    MARK_LIQUIDATE,
    MARK_OK,
    MINUTE_NS,
    OK,
    R_CVAR,
    R_DAILY_LOSS,
    R_LOSSES,
    R_MAX_POSITIONS,
    R_POSITION_RISK,
    R_RATE,
    R_SECTOR,
    R_SHORT,
    R_SLIPPAGE,
    R_SYMBOL,
    R_SYMBOL_DAY,
    R_TOTAL,
    RiskGuard,
    _LIMITS,
    guard_entry,
    guard_fill,
    guard_mark,
    guard_order,
)
from utp.daemon.session import MarketData, Session
from utp.v1 import events_pb2 as pb

DAY = 86_400 * 10**9
T0 = 20_000 * DAY + 15 * 3_600 * 10**9  # a weekday afternoon, UTC
SYMBOLS = ("AAA", "BBB", "CCC", "DDD")
OFF = {name: 0 for name in _LIMITS}


def make_guard(max_holding_hours: float = 0.0, **limits: float) -> RiskGuard:
    """A guard with only the given limits on (stop for the position-risk rule: 1.5%)."""
    sectors = limits.pop("sectors", {"AAA": "tech", "BBB": "tech", "CCC": "energy"})
    config = RiskConfig(**{**OFF, **limits}, sectors=sectors)  # type: ignore[arg-type]
    exit_config = ExitConfig(stop_loss_pct=0.015, max_holding_hours=max_holding_hours)
    return RiskGuard(config, exit_config, SYMBOLS, expected_slippage_bps=1.0)


def book(*positions: tuple[int, float, float], cash: float = 100_000.0) -> tuple[np.ndarray, np.ndarray, float]:
    """(pos, acct, equity) holding (symbol, shares, last price) and `cash`; the day opened at 100,000."""
    pos, acct = np.zeros((len(SYMBOLS), _NPOS)), np.zeros(_NACC)
    for s, q, last in positions:
        pos[s, Q], pos[s, LAST] = q, last
    acct[A_DAY_START] = 100_000.0
    return pos, acct, cash + float((pos[:, Q] * pos[:, LAST]).sum())


def entry(guard: RiskGuard, pos: np.ndarray, acct: np.ndarray, equity: float, notional: float, *, s: int = 0,
          side: int = 1, t: int = T0) -> tuple[int, float]:  # fmt: skip
    reason, _value, _threshold, allowed = guard_entry(t, s, side, notional, equity, pos, acct, guard.scalars,
                                                      guard.per_symbol, guard.ring, guard.returns, guard.params)  # fmt: skip
    return int(reason), float(allowed)


def mark(guard: RiskGuard, pos: np.ndarray, acct: np.ndarray, equity: float, t: int = T0) -> tuple[int, list[int]]:
    exits = np.zeros(len(SYMBOLS) + 1, np.int64)
    empty = np.empty(0, np.int64)
    verdict, _v, _th = guard_mark(t, equity, pos, acct, guard.scalars, guard.per_symbol, guard.returns, guard.params,
                                  empty, np.empty(0), 0, 0, exits)  # fmt: skip
    return int(verdict), exits[1 : exits[0] + 1].tolist()


# -- the day's loss -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("equity", "expected"), [(95_001.0, OK), (95_000.0, OK), (94_999.0, R_DAILY_LOSS)])
def test_daily_loss_refuses_entries_beyond_five_percent(equity: float, expected: int) -> None:
    guard = make_guard(max_daily_loss_pct=0.05)
    pos, acct, _ = book()
    assert entry(guard, pos, acct, equity, 1_000.0)[0] == expected


@pytest.mark.parametrize(("equity", "expected"), [(90_001.0, MARK_OK), (90_000.0, MARK_OK), (89_999.0, MARK_KILL)])
def test_kill_switch_trips_beyond_ten_percent_and_holds_until_reset(equity: float, expected: int) -> None:
    guard = make_guard(kill_switch_loss_pct=0.10)
    pos, acct, _ = book()
    assert mark(guard, pos, acct, equity)[0] == expected
    # Latched: a recovery does not let go; the operator's resume does.
    assert mark(guard, pos, acct, 100_000.0, T0 + MINUTE_NS)[0] == expected
    guard.reset_kill_switch()
    assert mark(guard, pos, acct, 100_000.0, T0 + 2 * MINUTE_NS)[0] == MARK_OK


@pytest.mark.parametrize(("equity", "expected"), [(90_001.0, MARK_OK), (90_000.0, MARK_OK), (89_999.0, MARK_LIQUIDATE)])
def test_drawdown_from_the_peak_liquidates_beyond_ten_percent(equity: float, expected: int) -> None:
    guard = make_guard(max_drawdown_pct=0.10)
    pos, acct, _ = book()
    acct[A_DAY_START] = equity  # a new day: only the drawdown rule can speak
    assert mark(guard, pos, acct, 100_000.0)[0] == MARK_OK
    assert guard.scalars[G_PEAK] == 100_000.0
    assert mark(guard, pos, acct, equity, T0 + DAY)[0] == expected
    if expected == MARK_LIQUIDATE:  # the peak starts again from there (Lean's MaximumDrawdownPercentPortfolio)
        assert guard.scalars[G_PEAK] == equity


@pytest.mark.parametrize(("last", "exits"), [(95.01, []), (95.0, []), (94.99, [0])])
def test_trailing_stop_closes_a_long_beyond_five_percent_behind_its_best_close(last: float, exits: list[int]) -> None:
    guard = make_guard(trailing_stop_pct=0.05)
    pos, acct, equity = book((0, 100.0, 90.0))
    mark(guard, pos, acct, equity)
    pos[0, LAST] = 100.0  # the best close since it opened
    mark(guard, pos, acct, equity, T0 + DAY)
    assert guard.per_symbol[0, GS_BEST] == 100.0
    pos[0, LAST] = last
    assert mark(guard, pos, acct, equity, T0 + 2 * DAY)[1] == exits


@pytest.mark.parametrize(("last", "exits"), [(104.99, []), (105.0, []), (105.01, [1])])
def test_trailing_stop_closes_a_short_beyond_five_percent_above_its_best_close(last: float, exits: list[int]) -> None:
    guard = make_guard(trailing_stop_pct=0.05)
    pos, acct, equity = book((1, -100.0, 100.0))
    mark(guard, pos, acct, equity)
    pos[1, LAST] = last
    assert mark(guard, pos, acct, equity, T0 + DAY)[1] == exits


def test_trailing_stop_restarts_with_each_new_position_and_fires_once() -> None:
    guard = make_guard(trailing_stop_pct=0.05)
    pos, acct, equity = book((0, 100.0, 100.0))
    mark(guard, pos, acct, equity)
    pos[0, LAST] = 90.0
    assert mark(guard, pos, acct, equity, T0 + DAY)[1] == [0]
    guard.per_symbol[0, GS_EXITING] = 1.0  # execution placed the close
    assert mark(guard, pos, acct, equity, T0 + 2 * DAY)[1] == []  # its exit is on the way
    pos[0, Q] = 0.0
    mark(guard, pos, acct, equity, T0 + 3 * DAY)
    pos[0, Q], pos[0, LAST] = 50.0, 80.0  # a new position: its best close is its first
    assert mark(guard, pos, acct, equity, T0 + 4 * DAY)[1] == []
    assert guard.per_symbol[0, GS_BEST] == 80.0


@pytest.mark.parametrize(("hours", "exits"), [(47.0, []), (48.0, [-3]), (49.0, [-3])])
def test_max_holding_time_closes_a_position_held_that_long(hours: float, exits: list[int]) -> None:
    guard = make_guard(max_holding_hours=48.0)
    pos, acct, equity = book((2, 10.0, 100.0))
    mark(guard, pos, acct, equity)  # opened now
    assert mark(guard, pos, acct, equity, T0 + int(hours * 3_600e9))[1] == exits  # -(s + 1): held too long


# -- exposures --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("notional", "expected"), [(9_999.0, OK), (10_000.0, OK), (10_001.0, R_SECTOR)])
def test_sector_exposure_refuses_beyond_thirty_percent_of_equity(notional: float, expected: int) -> None:
    guard = make_guard(max_sector_exposure_pct=0.30)
    pos, acct, equity = book((1, 200.0, 100.0), cash=80_000.0)  # 20,000 of tech held; equity 100,000
    assert entry(guard, pos, acct, equity, notional, s=0)[0] == expected
    assert entry(guard, pos, acct, equity, 30_000.0, s=2)[0] == OK  # another sector
    assert entry(guard, pos, acct, equity, 30_001.0, s=2)[0] == R_SECTOR
    assert entry(guard, pos, acct, equity, 90_000.0, s=3)[0] == OK  # no sector known: the rule passes it


@pytest.mark.parametrize(("notional", "allowed"), [(9_999.0, 9_999.0), (10_000.0, 10_000.0), (10_001.0, 10_000.0)])
def test_total_exposure_caps_entries_at_what_is_left_of_fifty_thousand(notional: float, allowed: float) -> None:
    guard = make_guard(max_total_exposure=50_000.0)
    pos, acct, equity = book((1, 400.0, 100.0))  # 40,000 gross
    reason, got = entry(guard, pos, acct, equity, notional)
    assert got == pytest.approx(allowed)
    assert reason == (R_TOTAL if notional > allowed else OK)


def test_total_exposure_refuses_once_it_is_full_and_counts_entries_placed_at_the_same_time() -> None:
    guard = make_guard(max_total_exposure=50_000.0)
    pos, acct, equity = book((1, 500.0, 100.0))
    assert entry(guard, pos, acct, equity, 1.0) == (R_TOTAL, 0.0)
    guard = make_guard(max_total_exposure=50_000.0)
    pos, acct, equity = book((1, 400.0, 100.0))
    guard.scalars[7] = 10_000.0  # G_PLACED_VALUE: an entry of 10,000 placed earlier at this bar time
    assert entry(guard, pos, acct, equity, 1.0) == (R_TOTAL, 0.0)


@pytest.mark.parametrize(("notional", "allowed"), [(9_999.0, 9_999.0), (10_000.0, 10_000.0), (10_001.0, 10_000.0)])
def test_symbol_exposure_caps_entries_at_ten_thousand(notional: float, allowed: float) -> None:
    guard = make_guard(max_symbol_exposure=10_000.0)
    pos, acct, equity = book()
    reason, got = entry(guard, pos, acct, equity, notional)
    assert (reason, got) == ((R_SYMBOL if notional > allowed else OK), pytest.approx(allowed))


def test_symbol_exposure_counts_what_is_held_when_adding() -> None:
    guard = make_guard(max_symbol_exposure=10_000.0)
    pos, acct, equity = book((0, 60.0, 100.0))  # 6,000 held
    assert entry(guard, pos, acct, equity, 5_000.0) == (R_SYMBOL, pytest.approx(4_000.0))
    # Turning a short around: what is held is on its way out and does not count.
    pos, acct, equity = book((0, -60.0, 100.0))
    assert entry(guard, pos, acct, equity, 10_000.0) == (OK, 10_000.0)


@pytest.mark.parametrize(("notional", "allowed"), [(133_333.0, 133_333.0), (133_334.0, 133_333.33)])
def test_position_risk_caps_an_entry_whose_loss_to_its_stop_passes_two_percent(notional: float, allowed: float) -> None:
    guard = make_guard(max_position_risk_pct=0.02)  # stop 1.5%: at most 0.02 x 100,000 / 0.015 = 133,333.33
    pos, acct, equity = book()
    reason, got = entry(guard, pos, acct, equity, notional)
    assert got == pytest.approx(allowed, abs=0.01)
    assert reason == (R_POSITION_RISK if notional > 133_333.34 else OK)


@pytest.mark.parametrize(("short", "expected"), [(49_999.0, OK), (50_000.0, OK), (50_001.0, R_SHORT)])
def test_short_exposure_refuses_beyond_half_of_gross(short: float, expected: int) -> None:
    guard = make_guard(max_short_share=0.5)
    pos, acct, equity = book((1, 500.0, 100.0))  # 50,000 long
    assert entry(guard, pos, acct, equity, short, s=2, side=-1)[0] == expected
    assert entry(guard, pos, acct, equity, 80_000.0, s=2, side=1)[0] == OK  # buys are never short exposure


@pytest.mark.parametrize(("held", "expected"), [(2, OK), (3, R_MAX_POSITIONS)])
def test_max_positions(held: int, expected: int) -> None:
    guard = make_guard(max_positions=3)
    pos, acct, equity = book(*[(s, 10.0, 100.0) for s in range(1, 1 + held)])
    assert entry(guard, pos, acct, equity, 1_000.0, s=0)[0] == expected
    assert entry(guard, pos, acct, equity, 1_000.0, s=1)[0] == OK  # adding to a position opens none


# -- throttles ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("placed", "expected"), [(4, OK), (5, R_RATE)])
def test_order_rate_refuses_the_sixth_order_within_a_minute(placed: int, expected: int) -> None:
    guard = make_guard(max_orders_per_minute=5)
    pos, acct, equity = book()
    for k in range(placed):
        guard_order(T0 - 50 * 10**9 + k, 1 + k % 3, guard.scalars, guard.per_symbol, guard.ring)
    assert entry(guard, pos, acct, equity, 1_000.0)[0] == expected
    # An order exactly a minute old no longer counts.
    assert entry(guard, pos, acct, equity, 1_000.0, t=T0 + 10 * 10**9)[0] == OK


@pytest.mark.parametrize(("placed", "expected"), [(2, OK), (3, R_SYMBOL_DAY)])
def test_symbol_order_limit_refuses_the_fourth_order_of_a_day(placed: int, expected: int) -> None:
    guard = make_guard(max_orders_per_symbol_day=3)
    pos, acct, equity = book()
    for k in range(placed):
        guard_order(T0 + k * 3_600 * 10**9 // 10, 0, guard.scalars, guard.per_symbol, guard.ring)
    t = T0 + 3_600 * 10**9
    assert entry(guard, pos, acct, equity, 1_000.0, t=t)[0] == expected
    assert entry(guard, pos, acct, equity, 1_000.0, s=1, t=t)[0] == OK  # other symbols have their own count
    assert entry(guard, pos, acct, equity, 1_000.0, t=t + DAY)[0] == OK  # a new day, a new count


# -- losing streaks and slippage -------------------------------------------------------------------------------
def test_three_losing_trades_in_a_row_pause_entries_until_the_next_day() -> None:
    guard = make_guard(max_consecutive_losses=3)
    pos, acct, equity = book()
    g = guard.scalars, guard.per_symbol, guard.params
    assert guard_fill(T0, 0, -10.0, 1_000.0, 0.0, *g)[0] == OK
    assert guard_fill(T0, 0, +5.0, 1_000.0, 0.0, *g)[0] == OK  # a win starts the count again
    assert guard_fill(T0, 0, -10.0, 1_000.0, 0.0, *g)[0] == OK
    assert guard_fill(T0, 1, 0.0, 1_000.0, 0.0, *g)[0] == OK  # an opening fill is neither
    assert guard_fill(T0, 1, -10.0, 1_000.0, 0.0, *g)[0] == OK
    assert entry(guard, pos, acct, equity, 1_000.0)[0] == OK  # two in a row
    reason, action, value, threshold = guard_fill(T0, 2, -1.0, 1_000.0, 0.0, *g)
    assert (reason, action, value, threshold) == (R_LOSSES, A_PAUSE, 3.0, 3.0)
    assert entry(guard, pos, acct, equity, 1_000.0, t=T0 + 3_600 * 10**9)[0] == R_LOSSES
    assert entry(guard, pos, acct, equity, 1_000.0, t=T0 + DAY)[0] == OK


@pytest.mark.parametrize(("multiple", "blocked"), [(2.99, False), (3.0, False), (3.01, True)])
def test_abnormal_slippage_blocks_the_symbol_for_thirty_minutes(multiple: float, blocked: bool) -> None:
    guard = make_guard(max_slippage_multiple=3.0, slippage_block_minutes=30.0)
    pos, acct, equity = book()
    value = 10_000.0  # expected slippage 1 bp: 1.00
    reason, action, *_ = guard_fill(T0, 0, 0.0, value, multiple * 1.0, guard.scalars, guard.per_symbol, guard.params)
    assert (reason, action) == ((R_SLIPPAGE, A_BLOCK) if blocked else (OK, 0))
    # (Times are kept as doubles: a microsecond before the end is as close as they resolve.)
    assert entry(guard, pos, acct, equity, 1_000.0, t=T0 + 30 * MINUTE_NS - 1_000)[0] == (R_SLIPPAGE if blocked else OK)
    assert entry(guard, pos, acct, equity, 1_000.0, t=T0 + 30 * MINUTE_NS)[0] == OK
    assert entry(guard, pos, acct, equity, 1_000.0, s=1)[0] == OK  # only that symbol


# -- CVaR ---------------------------------------------------------------------------------------------------------
def cvar_guard(rows: int) -> RiskGuard:
    """20 bar times of history in which AAA lost 10% once and BBB never moved: CVaR-95 of a position of value V in
    AAA is V x 10% (the worst 5% of 20 bar times is that one)."""
    guard = make_guard(max_cvar_pct=0.03, cvar_window=50, cvar_min_history=20)
    pos, acct, equity = book()
    for k in range(rows):
        guard.returns[k, 0] = -0.10 if k == 3 else 0.0
    guard.scalars[4], guard.scalars[5] = rows, rows  # G_RET_NEXT, G_RET_ROWS
    return guard


@pytest.mark.parametrize(("notional", "expected"), [(29_999.0, OK), (30_000.0, OK), (30_001.0, R_CVAR)])
def test_cvar_refuses_an_entry_that_takes_the_portfolio_beyond_three_percent(notional: float, expected: int) -> None:
    guard = cvar_guard(20)
    pos, acct, equity = book()
    assert entry(guard, pos, acct, equity, notional)[0] == expected
    assert entry(guard, pos, acct, equity, 90_000.0, s=1)[0] == OK  # BBB never lost


def test_cvar_waits_for_enough_history() -> None:
    guard = cvar_guard(19)
    pos, acct, equity = book()
    assert entry(guard, pos, acct, equity, 90_000.0)[0] == OK


def test_cvar_history_is_recorded_from_the_bars() -> None:
    guard = make_guard(max_cvar_pct=0.03, cvar_window=3)
    pos, acct, equity = book()
    exits = np.zeros(len(SYMBOLS) + 1, np.int64)
    for k, close in enumerate((100.0, 110.0, 99.0, 99.0, 49.5)):
        guard_mark(T0 + k * DAY, equity, pos, acct, guard.scalars, guard.per_symbol, guard.returns, guard.params,
                   np.array([0]), np.array([close]), 0, 1, exits)  # fmt: skip
    # A ring of the last three bar times' returns: -10%, 0%, -50% (the first bar has no return).
    assert sorted(guard.returns[:, 0].round(12).tolist()) == [-0.5, -0.1, 0.0]


# -- inside execution, on real bars ---------------------------------------------------------------------------------
def run_graph(config: Config, market_data: MarketData | None = None) -> dict[str, pl.DataFrame]:
    """The whole engine graph over the configured bars (or `market_data`), as a backtest; the orders, fills and risk
    events it published."""
    async def go() -> dict[str, pl.DataFrame]:
        bus = InProcessBus()
        session = Session(config, bus=bus, clock=SimulatedClock(), controls=ControlState(execution_approved=True),
                          model_sources=[], market_data=market_data)  # fmt: skip
        seen: dict[str, list] = {"order": [], "fill": [], "risk_event": []}

        async def tap(kind: str, messages: list) -> None:
            seen[kind].extend(messages)

        await bus.tap(tap, lambda kind: kind in seen)
        await session.start()
        await session.run()
        await session.stop()
        return {k: KINDS[k].to_frame(v) for k, v in seen.items()}

    return asyncio.run(go())


def goog_config(*, brackets: bool = False, **risk: object) -> Config:
    """The demo's strategy on GOOG (no model) with only the given risk limits on, and no bracket legs unless asked
    (their stop-losses would close most positions before a portfolio rule could)."""
    limits = {f"risk.{k}": v for k, v in {**OFF, **risk}.items()}
    legs = {} if brackets else {"exit.take_profit_pct": 0.0, "exit.stop_loss_pct": 0.0}
    return load_config(["configs/demo.yaml"], environ={}, overrides={
        "inference.packaged_fallback": False, "ensemble.weights": {"rsi": 1.0, "ema_cross": 1.0, "macd": 1.0},
        "risk.max_position_pct": 0.95,
        "market_data.end": "2009-12-31", **limits, **legs})  # fmt: skip


def test_trailing_stops_close_positions_on_real_bars_and_say_why() -> None:
    out = run_graph(goog_config(trailing_stop_pct=0.05))
    events = out["risk_event"]
    assert events.height > 0
    assert set(events["reason"].to_list()) == {pb.RISK_REASON_TRAILING_STOP}
    assert set(events["action"].to_list()) == {pb.RISK_ACTION_EXIT_POSITION}
    assert (events["value"] > 0.05).all()
    assert events["message"].str.contains("fell back").all()
    closes = out["order"].filter(pl.col("reason") == pb.INTENT_REASON_TRAILING_STOP)
    assert closes["client_order_id"].n_unique() == events.height  # one market close per trailing stop
    filled = closes.filter(pl.col("status") == pb.ORDER_STATUS_FILLED)
    assert filled.height == events.height  # each closed the whole position at the next bar
    # A position is closed the bar after its stop: the close's fill is later than the event.
    first = filled.join(events.select("symbol", pl.col("event_time_ns").alias("decided")), on="symbol").filter(
        pl.col("event_time_ns") > pl.col("decided"))
    assert first.height >= events.height


def test_without_rules_nothing_is_said_and_nothing_closed_by_risk() -> None:
    out = run_graph(goog_config())
    assert out["risk_event"].height == 0
    assert out["order"].filter(pl.col("strategy") == "risk").height == 0


def test_the_kill_switch_stops_all_execution() -> None:
    """A daily loss beyond 0.5% on GOOG trips it: after that bar time nothing more is placed at all."""
    out = run_graph(goog_config(kill_switch_loss_pct=0.005, brackets=True))
    kills = out["risk_event"].filter(pl.col("reason") == pb.RISK_REASON_KILL_SWITCH)
    assert kills.height == 1 and kills["action"][0] == pb.RISK_ACTION_KILL_SWITCH
    assert kills["message"][0].startswith("all execution blocked: KILL SWITCH")
    tripped = kills["event_time_ns"][0]
    placed = out["order"].filter(pl.col("status").is_in([pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_HELD]))
    assert placed.filter(pl.col("event_time_ns") > tripped).height == 0
    assert placed.filter(pl.col("event_time_ns") < tripped).height > 0


def test_drawdown_liquidates_every_position() -> None:
    out = run_graph(goog_config(max_drawdown_pct=0.03))
    liquidations = out["risk_event"].filter(pl.col("action") == pb.RISK_ACTION_LIQUIDATE)
    assert liquidations.height > 0
    closes = out["order"].filter(pl.col("reason") == pb.INTENT_REASON_RISK_LIQUIDATION)
    assert closes["client_order_id"].n_unique() == liquidations.height  # one symbol held each time
    assert set(closes.filter(pl.col("status") == pb.ORDER_STATUS_NEW)["event_time_ns"]) == \
        set(liquidations["event_time_ns"])  # fmt: skip


def test_rules_give_the_same_decisions_whatever_the_batch_size() -> None:
    """All rules on, a 20-stock book: one bar time per step and 500 per step give identical orders and events."""
    def config(batch: int) -> Config:
        return load_config(environ={}, overrides={
            "market_data.dataset": "sp500", "market_data.start": "2018-01-01", "market_data.end": "2020-12-31",
            "market_data.batch_bar_times": batch, "features.benchmark": "", "inference.packaged_fallback": False,
            "ensemble.weights": {"rsi": 1.0, "ema_cross": 1.0, "macd": 1.0}, "risk.max_cvar_pct": 0.01,
            "risk.max_total_exposure": 40_000.0})  # fmt: skip

    one, many = run_graph(config(1)), run_graph(config(500))
    events = one["risk_event"]
    assert events.height > 0 and len(set(events["reason"].to_list())) >= 3, events["reason"].value_counts()
    assert one["order"].equals(many["order"])
    assert events.equals(many["risk_event"])


def test_the_exit_monitor_closes_positions_held_too_long_on_real_bars() -> None:
    config = load_config(["configs/demo.yaml"], environ={}, overrides={
        "inference.packaged_fallback": False, "ensemble.weights": {"rsi": 1.0, "ema_cross": 1.0, "macd": 1.0},
        "risk.max_position_pct": 0.95,
        **{f"risk.{k}": v for k, v in OFF.items()}, "exit.take_profit_pct": 0.0, "exit.stop_loss_pct": 0.0,
        "exit.max_holding_hours": 24.0 * 7})  # fmt: skip
    out = run_graph(config)
    events = out["risk_event"]
    assert events.height > 0 and set(events["reason"]) == {pb.RISK_REASON_MAX_HOLDING_TIME}
    assert (events["value"] >= 24.0 * 7).all()
    closes = out["order"].filter(pl.col("reason") == pb.INTENT_REASON_MAX_HOLDING_TIME)
    assert closes["client_order_id"].n_unique() == events.height
