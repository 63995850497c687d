"""Engines on their own: the ensemble vote, risk checks, idempotent execution, accounting."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from utp.core.broker import DuplicateOrderError, SimulatedBroker
from utp.core.config import EnsembleConfig, ExecutionConfig, ExitConfig, RiskConfig
from utp.core.controls import ControlState
from utp.core.ids import client_order_id
from utp.core.kinds import KINDS
from utp.core.portfolio import Portfolio
from utp.core.universe import Universe
from utp.engines.ensemble import EnsembleEngine
from utp.engines.execution import ExecutionEngine
from utp.engines.exit import ExitEngine
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
        }
    )


def alphas(rows: list[tuple[int, str, int, int]], symbol: str = "AAA") -> pl.DataFrame:
    signals = [
        pb.AlphaSignal(header=header("alpha_signal", symbol, t, source), source_model=source, direction=d, period_bars=p)
        for t, source, d, p in rows
    ]
    return KINDS["alpha_signal"].to_frame(signals)


def test_ensemble_renormalises_weights_over_active_sources_and_expires_signals() -> None:
    engine = EnsembleEngine(EnsembleConfig(min_confidence=0.65), Universe(["AAA"]))
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
    engine = EnsembleEngine(EnsembleConfig(min_confidence=0.0), Universe(["AAA"]))
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
    engine = EnsembleEngine(EnsembleConfig(weights={"rsi": 0.2, "ema_cross": 0.8}, min_confidence=0.65), Universe(["AAA"]))
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
def scored(symbol: str, t: int, direction: int, price: float) -> pb.ScoredSignal:
    return pb.ScoredSignal(header=header("scored_signal", symbol, t), direction=direction, confidence=1.0,
                           score=1.0, reference_price=price)  # fmt: skip


def risk_engine(controls: ControlState, **config: object) -> RiskEngine:
    engine = RiskEngine(RiskConfig(**config), controls)
    engine.equity, engine.cash = 100_000.0, 100_000.0
    return engine


APPROVED = ControlState(execution_approved=True)


def test_risk_sizes_entries_to_the_maximum_position() -> None:
    engine = risk_engine(APPROVED, max_position_pct=0.1)
    intent = engine._construct(scored("AAA", DAY, pb.DIRECTION_UP, 33.0))
    assert intent is not None and intent.side == pb.ORDER_SIDE_BUY
    assert intent.quantity == 303  # floor(10_000 / 33)
    decision = engine._decide(intent)
    assert decision.approved and decision.reason == pb.RISK_REASON_APPROVED
    # the approved order is pending: a second UP for the same symbol adds nothing
    assert engine._construct(scored("AAA", DAY, pb.DIRECTION_UP, 33.0)) is None


@pytest.mark.parametrize(
    ("controls", "reason"),
    [(ControlState(), pb.RISK_REASON_EXECUTION_NOT_APPROVED),
     (ControlState(halted=True, execution_approved=True), pb.RISK_REASON_HALTED)],  # fmt: skip
)
def test_risk_gates_reject_everything_while_closed(controls: ControlState, reason: int) -> None:
    engine = risk_engine(controls)
    decision = engine._decide(engine._construct(scored("AAA", DAY, pb.DIRECTION_UP, 10.0)))
    assert not decision.approved and decision.reason == reason


def intent(side: int, quantity: float, price: float = 10.0, reduce_only: bool = False) -> pb.OrderIntent:
    return pb.OrderIntent(header=header("order_intent", "AAA", DAY, "test"), side=side, quantity=quantity,
                          order_type=pb.ORDER_TYPE_MARKET, reference_price=price, reduce_only=reduce_only)  # fmt: skip


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        (intent(pb.ORDER_SIDE_BUY, 1000), pb.RISK_REASON_APPROVED),  # 10_000 = 10% of equity: at the limit
        (intent(pb.ORDER_SIDE_BUY, 1001), pb.RISK_REASON_MAX_POSITION),  # just over
        (intent(pb.ORDER_SIDE_SELL, 1), pb.RISK_REASON_SHORT_NOT_ALLOWED),
        (intent(pb.ORDER_SIDE_BUY, -5), pb.RISK_REASON_INVALID_INTENT),
        (intent(pb.ORDER_SIDE_BUY, float("nan")), pb.RISK_REASON_INVALID_INTENT),
        (intent(pb.ORDER_SIDE_BUY, 10, price=0.0), pb.RISK_REASON_INVALID_INTENT),
    ],
)
def test_risk_checks_name_their_reason(order: pb.OrderIntent, reason: int) -> None:
    assert risk_engine(APPROVED).check(order)[0] == reason


def test_risk_rejects_a_buy_the_cash_cannot_pay() -> None:
    engine = risk_engine(APPROVED, max_position_pct=5.0)
    engine.cash = 500.0
    assert engine.check(intent(pb.ORDER_SIDE_BUY, 51))[0] == pb.RISK_REASON_INSUFFICIENT_CASH
    assert engine.check(intent(pb.ORDER_SIDE_BUY, 50))[0] == pb.RISK_REASON_APPROVED


# -- execution -------------------------------------------------------------------------------------
def bars(t: int, open_: float, close: float, symbol: str = "AAA") -> pl.DataFrame:
    return pl.DataFrame(
        {"event_id": [f"bar/{symbol}@{t}"], "correlation_id": [f"{symbol}@{t}"], "event_time_ns": [t],
         "symbol": [symbol], "open": [open_], "high": [max(open_, close)], "low": [min(open_, close)],
         "close": [close], "volume": [1000.0], "interval_ns": [DAY]}  # fmt: skip
    )


def decision(order: pb.OrderIntent) -> pl.DataFrame:
    return KINDS["risk_decision"].to_frame(
        [pb.RiskDecision(header=header("risk_decision", "AAA", DAY), intent=order, approved=True,
                         reason=pb.RISK_REASON_APPROVED)]  # fmt: skip
    )


def execution(controls: ControlState = APPROVED) -> ExecutionEngine:
    broker = SimulatedBroker(slippage_bps=10.0, commission_per_share=0.01, commission_min=1.0)
    return ExecutionEngine(ExecutionConfig(initial_cash=10_000.0), broker, controls)


def test_a_retried_intent_never_becomes_a_second_order() -> None:
    engine, ctx = execution(), FakeContext()
    order = intent(pb.ORDER_SIDE_BUY, 100)
    engine.on_step(ctx, DAY, {"risk_decision": decision(order)})
    engine.on_step(ctx, DAY, {"risk_decision": decision(order)})  # delivered again
    placed = ctx.messages("order")
    assert len(placed) == 1 and placed[0].client_order_id == client_order_id(order.header.event_id)
    with pytest.raises(DuplicateOrderError):
        engine.broker.submit(placed[0])  # the broker refuses the id too


def test_market_orders_fill_at_the_next_open_with_slippage_and_commission() -> None:
    engine, ctx = execution(), FakeContext()
    engine.on_step(ctx, DAY, {"risk_decision": decision(intent(pb.ORDER_SIDE_BUY, 100))})
    engine.on_step(ctx, 2 * DAY, {"bar": bars(2 * DAY, open_=20.0, close=21.0)})
    (fill,) = ctx.messages("fill")
    assert fill.price == pytest.approx(20.0 * 1.001) and fill.commission == pytest.approx(1.0)
    (account,) = ctx.messages("account_snapshot")
    assert account.cash == pytest.approx(10_000 - 100 * 20.02 - 1.0)
    assert account.equity == pytest.approx(account.cash + 100 * 21.0)
    (position,) = ctx.messages("position_snapshot")
    assert position.quantity == 100 and position.unrealized_pnl == pytest.approx(100 * (21.0 - 20.02))


def test_nothing_is_placed_while_halted() -> None:
    engine, ctx = execution(ControlState(halted=True, execution_approved=True)), FakeContext()
    engine.on_step(ctx, DAY, {"risk_decision": decision(intent(pb.ORDER_SIDE_BUY, 100))})
    assert ctx.messages("order") == [] and engine.broker.open_orders() == []


def test_exit_asks_to_close_at_take_profit_and_stop_loss() -> None:
    exit_engine = ExitEngine(ExitConfig(take_profit_pct=0.03, stop_loss_pct=0.015))

    def position(last: float, pending: float = 0.0) -> pb.PositionSnapshot:
        return pb.PositionSnapshot(header=header("position_snapshot", "AAA", DAY), quantity=10, average_price=100.0,
                                   last_price=last, pending_quantity=pending)  # fmt: skip

    assert exit_engine.exit_for(position(103.0)).reason == pb.INTENT_REASON_TAKE_PROFIT
    assert exit_engine.exit_for(position(98.5)).reason == pb.INTENT_REASON_STOP_LOSS
    assert exit_engine.exit_for(position(101.0)) is None
    assert exit_engine.exit_for(position(90.0, pending=-10)) is None  # a close is already on its way
    close = exit_engine.exit_for(position(98.0))
    assert close.side == pb.ORDER_SIDE_SELL and close.quantity == 10 and close.reduce_only


# -- accounting ------------------------------------------------------------------------------------
def test_portfolio_average_price_realized_pnl_and_crossing_zero() -> None:
    p = Portfolio(1_000.0)
    p.apply_fill("AAA", 10, 10.0, 1.0)
    p.apply_fill("AAA", 10, 12.0, 1.0)
    assert p.positions["AAA"].average_price == pytest.approx(11.0)
    assert p.apply_fill("AAA", -25, 13.0, 1.0) == pytest.approx(40.0)  # closes 20 at +2
    assert p.positions["AAA"].quantity == -5 and p.positions["AAA"].average_price == 13.0
    p.mark("AAA", 12.0)
    assert p.cash == pytest.approx(1_000 - 100 - 120 + 325 - 3)
    assert p.equity == pytest.approx(p.cash - 5 * 12.0)
    assert p.unrealized_pnl == pytest.approx(5.0)
