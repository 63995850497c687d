"""Engines on their own: the ensemble vote, risk checks, idempotent execution, accounting."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from utp.core.broker import SimulatedBroker
from utp.core.config import EnsembleConfig, ExecutionConfig, ExitConfig, PortfolioConfig, RiskConfig
from utp.core.controls import ControlState
from utp.core.ids import client_order_id
from utp.core.kinds import KINDS
from utp.core.portfolio import Portfolio
from utp.core.universe import Universe
from utp.engines.ensemble import EnsembleEngine
from utp.engines.execution import ExecutionEngine
from utp.engines.exit import ExitEngine
from utp.engines.portfolio import PortfolioConstructionEngine
from utp.engines.risk import RiskEngine
from utp.v1 import events_pb2 as pb

DAY = 86_400 * 10**9


def header(kind: str, symbol: str, t: int, source: str = "") -> pb.EventHeader:
    corr = f"{symbol}@{t}"
    return pb.EventHeader(event_id=f"{kind}/{source}/{corr}", correlation_id=corr, event_time_ns=t, symbol=symbol)


class FakeContext:
    """Collects what an engine emits and writes (engines only see this interface)."""

    def __init__(self) -> None:
        self.emitted: dict[str, list[pl.DataFrame]] = {}
        self.records: list[tuple[str, str, bytes | None]] = []
        self.log = logging.getLogger("test")
        self.rejected = 0
        self.keeps_records = True

    def emit(self, kind: str, frame: pl.DataFrame) -> None:
        self.emitted.setdefault(kind, []).append(frame)

    def put_record(self, table: str, key: str, value: bytes) -> None:
        self.records.append((table, key, value))

    def delete_record(self, table: str, key: str) -> None:
        self.records.append((table, key, None))

    def count_rejected(self, n: int = 1) -> None:
        self.rejected += n

    def messages(self, kind: str) -> list:
        return [m for f in self.emitted.get(kind, []) for m in KINDS[kind].to_messages(f)]


# -- ensemble --------------------------------------------------------------------------------------
#: The vote tests read the weighted vote itself; the regime's confidence scale has tests of its own.
UNSCALED = {"bull": 1.0, "bear": 1.0, "sideways": 1.0}


def features(times: list[int], symbol: str = "AAA", close: float = 10.0) -> pl.DataFrame:
    n = len(times)
    return pl.DataFrame(
        {
            "event_id": [f"feature_vector/{symbol}@{t}" for t in times],
            "correlation_id": [f"{symbol}@{t}" for t in times],
            "event_time_ns": times,
            "symbol": [symbol] * n,
            "feature_set_version": ["v"] * n,
            "close": [close] * n,
            "close_to_sma_50": [close / 10.5 - 1] * n,
            "sma_20_to_sma_50": [11.0 / 10.5 - 1] * n,
            "realized_vol_20": [0.01] * n,
        }
    )


def alphas(rows: list[tuple[int, str, int, int]], symbol: str = "AAA") -> pl.DataFrame:
    signals = [
        pb.AlphaSignal(header=header("alpha_signal", symbol, t, source), source_model=source, direction=d, period_bars=p)
        for t, source, d, p in rows
    ]
    return KINDS["alpha_signal"].to_frame(signals)


def test_ensemble_renormalises_weights_over_active_sources_and_expires_signals() -> None:
    engine = EnsembleEngine(EnsembleConfig(min_confidence=0.65, regime_scale=UNSCALED), Universe(["AAA"]))
    times = [i * DAY for i in range(1, 8)]
    scored = KINDS["scored_signal"].to_messages(
        engine.score(alphas([(times[0], "rsi", pb.DIRECTION_UP, 3), (times[1], "ema_cross", pb.DIRECTION_DOWN, 2)]),
                     features(times))
    )  # fmt: skip
    # bar 0: only rsi active -> weights renormalise to rsi = 1, score +1 (UP)
    # bar 1: rsi up + ema_cross down with equal weights -> score 0 (FLAT)
    # bar 3: ema_cross expired after 2 bars (bars 1, 2) and rsi after 3 (bars 0, 1, 2) -> nothing active
    assert [(s.header.event_time_ns, s.direction, round(s.score, 9)) for s in scored] == [
        (times[0], pb.DIRECTION_UP, 1.0),
        (times[1], pb.DIRECTION_FLAT, 0.0),
        (times[3], pb.DIRECTION_FLAT, 0.0),
    ]
    assert [(c.source, c.weight) for c in scored[1].components] == [("rsi", 0.5), ("ema_cross", 0.5)]
    assert scored[0].active_alphas == ["rsi"] and scored[2].active_alphas == []
    assert scored[0].regime == pb.REGIME_SIDEWAYS  # close 10 < sma50 10.5 < sma20 11


def test_a_cancelled_signal_leaves_the_vote() -> None:
    engine = EnsembleEngine(EnsembleConfig(min_confidence=0.0, regime_scale=UNSCALED), Universe(["AAA"]))
    times = [i * DAY for i in range(1, 5)]
    signals = [
        pb.AlphaSignal(header=header("alpha_signal", "AAA", times[0], "macd"), source_model="macd",
                       direction=pb.DIRECTION_UP, period_bars=12),
        pb.AlphaSignal(header=header("alpha_signal", "AAA", times[0], "rsi"), source_model="rsi",
                       direction=pb.DIRECTION_DOWN, period_bars=12),
        pb.AlphaSignal(header=header("alpha_signal", "AAA", times[2], "macd"), source_model="macd",
                       direction=pb.DIRECTION_FLAT, cancel=True),
    ]  # fmt: skip
    scored = KINDS["scored_signal"].to_messages(engine.score(KINDS["alpha_signal"].to_frame(signals), features(times)))
    # bar 0: macd up (0.1) and rsi down (0.2) -> (0.1 - 0.2) / 0.3; bar 2: macd withdrawn -> rsi alone, -1
    assert [(s.header.event_time_ns, round(s.score, 9)) for s in scored] == [(times[0], round(-0.1 / 0.3, 9)), (times[2], -1.0)]
    assert scored[1].active_alphas == ["rsi"]


def test_ensemble_gate_and_confidence_weighting() -> None:
    engine = EnsembleEngine(EnsembleConfig(weights={"rsi": 0.2, "ema_cross": 0.8}, min_confidence=0.65, regime_scale=UNSCALED), Universe(["AAA"]))
    times = [DAY, 2 * DAY]
    scored = KINDS["scored_signal"].to_messages(
        engine.score(alphas([(times[0], "rsi", pb.DIRECTION_UP, 5), (times[1], "ema_cross", pb.DIRECTION_DOWN, 5)]),
                     features(times))
    )  # fmt: skip
    # bar 1: (0.2 * 1 - 0.8 * 1) / 1.0 = -0.6 -> below the 0.65 gate -> FLAT, score kept
    assert scored[1].direction == pb.DIRECTION_FLAT and scored[1].score == pytest.approx(-0.6)
    assert scored[1].confidence == pytest.approx(0.6)


def test_ensemble_state_carries_across_batches() -> None:
    config, universe = EnsembleConfig(), Universe(["AAA"])
    times = [i * DAY for i in range(1, 6)]
    signal = alphas([(times[0], "rsi", pb.DIRECTION_UP, 2)])
    whole = EnsembleEngine(config, universe).score(signal, features(times))
    split = EnsembleEngine(config, universe)
    parts = [split.score(signal, features(times[:1]))]
    parts += [split.score(alphas([]), features([t])) for t in times[1:]]
    assert pl.concat(parts).equals(whole)


# -- risk ------------------------------------------------------------------------------------------
APPROVED = ControlState(execution_approved=True)


def scored(rows: list[tuple[str, int, int, float]]) -> pl.DataFrame:
    """Scored signals from (symbol, time, direction, reference price)."""
    return KINDS["scored_signal"].to_frame([
        pb.ScoredSignal(header=header("scored_signal", sym, t), direction=d, confidence=1.0, score=1.0,
                        reference_price=price, active_alphas=["ema_cross"])
        for sym, t, d, price in rows
    ])  # fmt: skip


def fixed_targets(signals: pl.DataFrame, risk: RiskConfig | None = None) -> pl.DataFrame:
    """The fixed method's portfolio targets for scored signals (the step before risk)."""
    universe = Universe(("AAA", "BBB", "CCC"))
    return PortfolioConstructionEngine(PortfolioConfig(), risk or RiskConfig(), universe).fixed_targets(signals)


def decide(signals: pl.DataFrame, risk: RiskConfig | None = None, controls: ControlState = APPROVED) -> pl.DataFrame:
    risk = risk or RiskConfig()
    return RiskEngine(risk, controls).decide(fixed_targets(signals, risk))


def test_fixed_construction_turns_directions_into_targets_and_risk_approves_them() -> None:
    signals = scored([("AAA", DAY, pb.DIRECTION_UP, 10.0), ("BBB", DAY, pb.DIRECTION_DOWN, 10.0),
                      ("CCC", DAY, pb.DIRECTION_FLAT, 10.0)])  # fmt: skip
    targets = fixed_targets(signals, RiskConfig(max_position_pct=0.25))
    assert targets["symbol"].to_list() == ["AAA", "BBB"]  # FLAT asks for nothing
    assert targets["target_percent"].to_list() == [0.25, 0.0] and targets["rebalance_band"].to_list() == [0.0, 0.0]
    long_only = decide(signals, RiskConfig(max_position_pct=0.25))
    intents = long_only.unnest("intent", separator=".")
    assert intents["intent.target_percent"].to_list() == [0.25, 0.0]
    assert intents["intent.reason"].to_list() == [pb.INTENT_REASON_ENTRY, pb.INTENT_REASON_SIGNAL_EXIT]
    assert intents["intent.strategy"].to_list() == ["ema_cross"] * 2 and long_only["approved"].all()
    shorts = decide(signals, RiskConfig(max_position_pct=0.25, allow_short=True))
    assert shorts.unnest("intent", separator=".")["intent.target_percent"].to_list() == [0.25, -0.25]


def test_risk_caps_targets_and_refuses_shorts_unless_allowed() -> None:
    targets = fixed_targets(scored([("AAA", DAY, pb.DIRECTION_UP, 10.0), ("BBB", DAY, pb.DIRECTION_DOWN, 10.0)]),
                            RiskConfig(max_position_pct=0.8, allow_short=True))  # fmt: skip
    decisions = RiskEngine(RiskConfig(max_position_pct=0.5), APPROVED).decide(targets)
    intents = decisions.unnest("intent", separator=".")
    assert intents["intent.target_percent"].to_list() == [0.5, -0.5]
    assert decisions["approved"].to_list() == [True, False]
    assert decisions["reason"].to_list() == [pb.RISK_REASON_APPROVED, pb.RISK_REASON_SHORT_NOT_ALLOWED]
    assert "at the cap" in decisions["message"][0] and "short" in decisions["message"][1]


@pytest.mark.parametrize(
    ("controls", "reason"),
    [(ControlState(), pb.RISK_REASON_EXECUTION_NOT_APPROVED),
     (ControlState(halted=True, execution_approved=True), pb.RISK_REASON_HALTED)],  # fmt: skip
)
def test_risk_gates_reject_everything_while_closed(controls: ControlState, reason: int) -> None:
    decisions = decide(scored([("AAA", DAY, pb.DIRECTION_UP, 10.0)]), controls=controls)
    assert not decisions["approved"][0] and decisions["reason"][0] == reason


@pytest.mark.parametrize("price", [0.0, -1.0, float("nan"), float("inf")])
def test_risk_refuses_a_signal_without_a_sane_price(price: float) -> None:
    decisions = decide(scored([("AAA", DAY, pb.DIRECTION_UP, price)]))
    assert not decisions["approved"][0] and decisions["reason"][0] == pb.RISK_REASON_INVALID_INTENT
    assert "a positive price" in decisions["message"][0]


# -- exit ------------------------------------------------------------------------------------------
def test_exit_guards_each_entry_with_a_take_profit_and_a_stop_loss() -> None:
    decisions = decide(scored([("AAA", DAY, pb.DIRECTION_UP, 100.0), ("BBB", DAY, pb.DIRECTION_DOWN, 50.0)]),
                       RiskConfig(allow_short=True))  # fmt: skip
    legs = ExitEngine(ExitConfig(take_profit_pct=0.03, stop_loss_pct=0.015)).legs_for(decisions)
    got = {(r["symbol"], r["order_type"]): r for r in legs.to_dicts()}
    tp, sl = got[("AAA", pb.ORDER_TYPE_LIMIT)], got[("AAA", pb.ORDER_TYPE_STOP)]
    assert tp["side"] == sl["side"] == pb.ORDER_SIDE_SELL and tp["reduce_only"]
    assert tp["limit_price"] == pytest.approx(103.0) and sl["stop_price"] == pytest.approx(98.5)
    parent = decisions.unnest("intent", separator=".")["intent.header"][0]["event_id"]
    assert tp["parent_intent_id"] == sl["oco_group"] == parent
    short_tp, short_sl = got[("BBB", pb.ORDER_TYPE_LIMIT)], got[("BBB", pb.ORDER_TYPE_STOP)]
    assert short_tp["side"] == pb.ORDER_SIDE_BUY and short_tp["limit_price"] == pytest.approx(48.5)
    assert short_sl["stop_price"] == pytest.approx(50.75)
    assert ExitEngine(ExitConfig(take_profit_pct=0.0, stop_loss_pct=0.0)).legs_for(decisions).height == 0


# -- execution -------------------------------------------------------------------------------------
def bars(rows: list[tuple[int, str, float, float, float, float]]) -> pl.DataFrame:
    """Bars from (time, symbol, open, high, low, close)."""
    return pl.DataFrame(
        {"event_id": [f"bar/{r[1]}@{r[0]}" for r in rows], "correlation_id": [f"{r[1]}@{r[0]}" for r in rows],
         "event_time_ns": [r[0] for r in rows], "symbol": [r[1] for r in rows], "open": [float(r[2]) for r in rows],
         "high": [float(r[3]) for r in rows], "low": [float(r[4]) for r in rows], "close": [float(r[5]) for r in rows],
         "volume": [1e6] * len(rows), "interval_ns": [DAY] * len(rows)}  # fmt: skip
    )


def execution(controls: ControlState = APPROVED, symbols: tuple[str, ...] = ("AAA", "BBB"), **config: object) -> ExecutionEngine:
    costless = {"slippage_bps": 0.0, "commission_per_share": 0.0, "commission_min": 0.0, "commission_bps": 0.0}
    cfg = ExecutionConfig(**{"initial_cash": 10_000.0, **costless, **config})  # type: ignore[arg-type]
    broker = SimulatedBroker(symbols, slippage_bps=cfg.slippage_bps, commission_per_share=cfg.commission_per_share,
                             commission_min=cfg.commission_min, commission_bps=cfg.commission_bps)  # fmt: skip
    return ExecutionEngine(cfg, broker, controls, Universe(symbols))


def step(engine: ExecutionEngine, ctx: FakeContext, bar_rows: list, signals: list, *, risk: RiskConfig | None = None,
         exits: ExitConfig | None = None) -> None:  # fmt: skip
    """One step of the graph's tail: risk's decisions and exit's legs for `signals`, executed with the bars."""
    frames = {"bar": bars(bar_rows)}
    if signals:
        decisions = decide(scored(signals), risk or RiskConfig(max_position_pct=0.5))
        frames["risk_decision"] = decisions
        frames["order_intent"] = ExitEngine(exits or ExitConfig(take_profit_pct=0.0, stop_loss_pct=0.0)).legs_for(decisions)
    engine.on_step(ctx, bar_rows[-1][0], frames)


def test_an_entry_is_a_notional_market_order_filled_at_the_next_open() -> None:
    engine, ctx = execution(slippage_bps=10.0, commission_per_share=0.01, commission_min=1.0), FakeContext()
    step(engine, ctx, [(DAY, "AAA", 19, 19, 19, 19)], [("AAA", DAY, pb.DIRECTION_UP, 19.0)])
    (new,) = ctx.messages("order")
    assert new.status == pb.ORDER_STATUS_NEW and new.notional == pytest.approx(5_000.0)  # 50% of equity
    step(engine, ctx, [(2 * DAY, "AAA", 20.0, 21.0, 19.5, 21.0)], [])
    (fill,) = ctx.messages("fill")
    assert fill.price == pytest.approx(20.02) and fill.quantity == 249  # 249 x 20.02 + 2.49 <= 5000
    assert fill.commission == pytest.approx(2.49) and fill.slippage == pytest.approx(249 * 0.02)
    account = ctx.messages("account_snapshot")[-1]
    assert account.cash == pytest.approx(10_000 - 249 * 20.02 - 2.49)
    assert account.equity == pytest.approx(account.cash + 249 * 21.0)
    position = ctx.messages("position_snapshot")[-1]
    assert position.quantity == 249 and position.unrealized_pnl == pytest.approx(249 * (21.0 - 20.02))
    assert ("positions", "AAA") in {(t, k) for t, k, _ in ctx.records}


def test_a_target_already_held_does_nothing_and_a_flat_target_closes() -> None:
    engine, ctx = execution(), FakeContext()
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, pb.DIRECTION_UP, 10.0)])
    step(engine, ctx, [(2 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 2 * DAY, pb.DIRECTION_UP, 10.0)])
    assert len([o for o in ctx.messages("order") if o.status == pb.ORDER_STATUS_NEW]) == 1  # no rebalancing
    step(engine, ctx, [(3 * DAY, "AAA", 11, 11, 11, 11)], [("AAA", 3 * DAY, pb.DIRECTION_DOWN, 11.0)])
    step(engine, ctx, [(4 * DAY, "AAA", 12, 12, 12, 12)], [])
    sells = [f for f in ctx.messages("fill") if f.side == pb.ORDER_SIDE_SELL]
    assert len(sells) == 1 and sells[0].quantity == 500 and sells[0].price == 12.0
    assert sells[0].reason == pb.INTENT_REASON_SIGNAL_EXIT
    assert engine.portfolio.positions == {} and engine.portfolio.cash == pytest.approx(10_000 + 500 * 2)


def test_a_reversal_closes_the_long_and_opens_the_short() -> None:
    engine, ctx = execution(), FakeContext()
    risk = RiskConfig(max_position_pct=0.5, allow_short=True)
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, pb.DIRECTION_UP, 10.0)], risk=risk)
    step(engine, ctx, [(2 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 2 * DAY, pb.DIRECTION_DOWN, 10.0)], risk=risk)
    step(engine, ctx, [(3 * DAY, "AAA", 10, 10, 10, 10)], [])
    assert [(f.side, f.quantity) for f in ctx.messages("fill")] == [
        (pb.ORDER_SIDE_BUY, 500), (pb.ORDER_SIDE_SELL, 500), (pb.ORDER_SIDE_SELL, 500)]  # fmt: skip
    assert engine.portfolio.positions["AAA"].quantity == -500


def test_entries_of_one_bar_time_share_the_cash() -> None:
    engine, ctx = execution(), FakeContext()
    risk = RiskConfig(max_position_pct=0.75)
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10), (DAY, "BBB", 10, 10, 10, 10)],
         [("AAA", DAY, pb.DIRECTION_UP, 10.0), ("BBB", DAY, pb.DIRECTION_UP, 10.0)], risk=risk)  # fmt: skip
    notional = {o.header.symbol: o.notional for o in ctx.messages("order")}
    assert notional == {"AAA": pytest.approx(7_500.0), "BBB": pytest.approx(2_500.0)}


def test_a_bracket_guards_the_entry_and_its_legs_cancel_each_other() -> None:
    engine, ctx = execution(), FakeContext()
    exits = ExitConfig(take_profit_pct=0.1, stop_loss_pct=0.05)
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, pb.DIRECTION_UP, 10.0)], exits=exits)
    assert [o.status for o in ctx.messages("order")] == [pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_HELD, pb.ORDER_STATUS_HELD]
    step(engine, ctx, [(2 * DAY, "AAA", 10, 10.5, 9.8, 10.2), (3 * DAY, "AAA", 10.3, 11.2, 10.1, 11.0)], [])
    fills = ctx.messages("fill")
    assert [(f.side, f.price, f.reason) for f in fills] == [
        (pb.ORDER_SIDE_BUY, 10.0, pb.INTENT_REASON_ENTRY), (pb.ORDER_SIDE_SELL, 11.0, pb.INTENT_REASON_TAKE_PROFIT)]  # fmt: skip
    last = {o.client_order_id: o for o in ctx.messages("order")}
    stops = [o for o in last.values() if o.order_type == pb.ORDER_TYPE_STOP]
    assert stops[0].status == pb.ORDER_STATUS_CANCELED and stops[0].message == "one-cancels-other"
    assert engine.portfolio.positions == {} and engine.broker.open_orders() == []


def _entries_with_legs(n: int) -> tuple[ExecutionEngine, FakeContext, tuple[str, ...]]:
    """An execution engine after one bar time with an entry and its two legs for each of `n` symbols."""
    symbols = tuple(f"S{i:03d}" for i in range(n))
    engine, ctx = execution(symbols=symbols, initial_cash=1e9), FakeContext()
    risk = RiskConfig(max_position_pct=0.001, max_positions=1000, max_total_exposure=1e12, max_symbol_exposure=1e12,
                      max_orders_per_minute=0, max_orders_per_symbol_day=0)  # fmt: skip
    targets = PortfolioConstructionEngine(PortfolioConfig(), risk, Universe(symbols)).fixed_targets(
        scored([(s, DAY, pb.DIRECTION_UP, 10.0) for s in symbols]))  # fmt: skip
    decisions = RiskEngine(risk, APPROVED).decide(targets)
    legs = ExitEngine(ExitConfig(take_profit_pct=0.5, stop_loss_pct=0.5)).legs_for(decisions)
    assert decisions.height == n and legs.height == 2 * n
    engine.on_step(ctx, DAY, {"bar": bars([(DAY, s, 10, 10, 10, 10) for s in symbols]), "risk_decision": decisions,
                              "order_intent": legs})  # fmt: skip
    return engine, ctx, symbols


def test_a_bar_time_of_many_symbols_with_many_resting_legs_fits_the_event_buffer() -> None:
    # Room for a bar time's events is sized by the open orders of the symbols at that time. Sized by every open
    # order on every bar (300 bars x 900 open orders), the buffer grew past what the entries' step needed, and
    # with bars x open orders in a long session (past its largest size, the step never ended).
    engine, ctx, symbols = _entries_with_legs(300)
    after_entries = engine._events.shape[0]
    for day in (2, 3):  # the entries fill at the first open; their legs rest through the second bar time
        engine.on_step(ctx, day * DAY, {"bar": bars([(day * DAY, s, 10, 10.5, 9.5, 10) for s in symbols])})
    assert len(ctx.messages("fill")) == 300 and len(engine.broker.open_orders()) == 600
    assert engine._events.shape[0] == after_entries  # 3 per open order of the bar time's symbols, 3 per bar


def test_hundreds_of_entries_with_their_legs_at_one_bar_time_fit_the_event_buffer() -> None:
    # A decision cancels only its own symbol's orders: room for each decision is its symbol's open and new
    # orders. Sized by every open and new order per decision (700 x 2,800), the step needed more than the
    # buffer's largest size (1M rows) and never ended.
    engine, ctx, _ = _entries_with_legs(700)
    assert len(ctx.messages("order")) == 700 * 3  # each entry and its two legs
    assert engine._events.shape[0] <= 1 << 14


def test_a_new_target_cancels_the_resting_legs() -> None:
    engine, ctx = execution(), FakeContext()
    exits = ExitConfig(take_profit_pct=0.5, stop_loss_pct=0.5)
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, pb.DIRECTION_UP, 10.0)], exits=exits)
    step(engine, ctx, [(2 * DAY, "AAA", 10, 10, 10, 10)], [("AAA", 2 * DAY, pb.DIRECTION_DOWN, 10.0)], exits=exits)
    cancelled = [o for o in ctx.messages("order") if o.status == pb.ORDER_STATUS_CANCELED]
    assert len(cancelled) == 2 and {o.message for o in cancelled} == {"replaced by a new target"}
    step(engine, ctx, [(3 * DAY, "AAA", 10, 10, 10, 10)], [])
    assert engine.portfolio.positions == {} and engine.broker.open_orders() == []


def test_a_retried_intent_never_becomes_a_second_order() -> None:
    engine, ctx = execution(), FakeContext()
    signal = [("AAA", DAY, pb.DIRECTION_UP, 10.0)]
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], signal)
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], signal)  # delivered again (a replay)
    (placed,) = ctx.messages("order")
    decision_id = decide(scored(signal))["intent"][0]["header"]["event_id"]
    assert placed.client_order_id == client_order_id(decision_id)


def test_nothing_is_placed_while_halted() -> None:
    engine, ctx = execution(ControlState(halted=True, execution_approved=True)), FakeContext()
    step(engine, ctx, [(DAY, "AAA", 10, 10, 10, 10)], [("AAA", DAY, pb.DIRECTION_UP, 10.0)])
    assert ctx.messages("order") == [] and engine.broker.open_orders() == []
    assert len(ctx.messages("account_snapshot")) == 1  # the books still move


# -- accounting ------------------------------------------------------------------------------------
def test_portfolio_average_price_realized_pnl_and_crossing_zero() -> None:
    p = Portfolio(("AAA",), 1_000.0)
    p.apply_fill("AAA", 10, 10.0, 1.0)
    p.apply_fill("AAA", 10, 12.0, 1.0)
    assert p.positions["AAA"].average_price == pytest.approx(11.0)
    assert p.apply_fill("AAA", -25, 13.0, 1.0) == pytest.approx(40.0)  # closes 20 at +2
    assert p.positions["AAA"].quantity == -5 and p.positions["AAA"].average_price == 13.0
    p.mark("AAA", 12.0)
    assert p.cash == pytest.approx(1_000 - 100 - 120 + 325 - 3)
    assert p.equity == pytest.approx(p.cash - 5 * 12.0)
    assert p.unrealized_pnl == pytest.approx(5.0) and p.commissions == 3.0
    assert p.gross_exposure == pytest.approx(60.0) and p.net_exposure == pytest.approx(-60.0)


@pytest.mark.parametrize("size", [3, 500, 3000])
def test_universe_indices_stay_right_when_the_same_symbol_column_comes_again(size: int) -> None:
    # The last column looked up is remembered (engines pass a bar time's symbols along unchanged); a column that
    # differs in any way, or the remembered answer modified by a caller, must not give stale indices.
    symbols = [f"S{i:04d}" for i in range(size)]
    universe = Universe(symbols)
    column = pl.Series("symbol", symbols)
    first = universe.indices(column)
    assert first.tolist() == list(range(size))
    first[:] = -7  # a caller's copy, not the remembered one
    assert universe.indices(column.alias("other")).tolist() == list(range(size))
    reordered = pl.Series("symbol", [*symbols[1:], "NOPE", symbols[0]])
    assert universe.indices(reordered).tolist() == [*range(1, size), -1, 0]
    assert universe.indices(column).tolist() == list(range(size))
