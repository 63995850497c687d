"""Execution: places approved intents with the broker, books fills, publishes orders, fills and the portfolio.

Consumes: `bar`, `risk_decision` (feedback: decisions of bar t arrive after this engine published the
portfolio of bar t, and are placed before bar t+1 is processed), `control_command` (on arrival).
Produces: `order` (one event per status change), `fill`, `position_snapshot`, `account_snapshot`.
Hot state: `orders` by client order id, `positions` by symbol.

The client order id is a hash of the intent id, so an intent delivered twice (a retry, a replay after a
crash) maps to the order that already exists and is never placed again; the broker refuses a known
client order id too. Nothing is placed while trading is halted or execution is not approved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from utp.core.broker import Broker, BrokerError, DuplicateOrderError
from utp.core.config import ExecutionConfig
from utp.core.controls import ControlState
from utp.core.ids import client_order_id
from utp.core.kinds import KINDS
from utp.core.portfolio import Portfolio
from utp.core.runtime import Engine, EngineContext, Input, InputMode
from utp.storage.state import ORDERS, POSITIONS
from utp.v1 import events_pb2 as pb


class ExecutionEngine(Engine):
    name = "execution"
    inputs = (
        Input("bar"),
        Input("risk_decision", InputMode.FEEDBACK),
        Input("control_command", InputMode.COMMAND),
    )
    outputs = ("order", "fill", "position_snapshot", "account_snapshot")
    feedback_outputs = frozenset({"order"})

    def __init__(self, config: ExecutionConfig, broker: Broker, controls: ControlState) -> None:
        self.config = config
        self.broker = broker
        self.controls = controls
        self.portfolio = Portfolio(config.initial_cash)
        self.orders: dict[str, pb.Order] = {}  # by client order id, every order ever placed
        self.touched: set[str] = set()  # symbols whose position must be re-published at the next bar

    # -- commands and decisions --------------------------------------------------------------------
    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        for command in KINDS[kind].to_messages(frame):
            self.controls = self.controls.apply(command)  # type: ignore[arg-type]

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        if "risk_decision" in frames:
            self._place(ctx, frames["risk_decision"])
        if "bar" in frames:
            self._on_bars(ctx, frames["bar"])

    def _place(self, ctx: EngineContext, decisions: pl.DataFrame) -> None:
        placed = []
        for decision in KINDS["risk_decision"].to_messages(decisions):
            if not decision.approved:  # type: ignore[attr-defined]
                continue
            order = self.place(ctx, decision.intent)  # type: ignore[attr-defined]
            if order is not None:
                placed.append(order)
        if placed:
            ctx.emit("order", KINDS["order"].to_frame(placed))

    def place(self, ctx: EngineContext, intent: pb.OrderIntent) -> pb.Order | None:
        """Place an approved intent; None if it was placed before or must not be placed now."""
        cid = client_order_id(intent.header.event_id)
        if cid in self.orders:
            ctx.log.info("intent %s already placed as %s; not placing it again", intent.header.event_id, cid)
            return None
        if self.controls.halted or not self.controls.execution_approved:
            ctx.log.warning(
                "not placing %s: %s", intent.header.event_id, "halted" if self.controls.halted else "not approved"
            )
            return None
        order = pb.Order(
            header=pb.EventHeader(
                event_id=f"order/{cid}/new",
                correlation_id=intent.header.correlation_id,
                event_time_ns=intent.header.event_time_ns,
                symbol=intent.header.symbol,
            ),
            client_order_id=cid,
            intent_id=intent.header.event_id,
            side=intent.side,
            quantity=intent.quantity,
            order_type=intent.order_type,
            submitted_time_ns=intent.header.event_time_ns,
            reason=intent.reason,
        )
        try:
            order = self.broker.submit(order)
        except DuplicateOrderError as exc:
            ctx.log.warning("%s", exc)
            return None
        except BrokerError as exc:
            ctx.log.error("broker refused %s: %s", cid, exc)
            order.status = pb.ORDER_STATUS_REJECTED
            order.header.event_id = f"order/{cid}/rejected"
        self.orders[cid] = order
        self.touched.add(intent.header.symbol)
        ctx.put_record(ORDERS, cid, order.SerializeToString())
        return order

    # -- bars: fills and marks ---------------------------------------------------------------------
    def _on_bars(self, ctx: EngineContext, bars: pl.DataFrame) -> None:
        fills, filled_orders = [], []
        for report in self.broker.on_bars(bars):
            self.portfolio.apply_fill(report.symbol, report.quantity, report.price, report.commission)
            order = self.orders[report.client_order_id]
            order.status = pb.ORDER_STATUS_FILLED
            order.filled_quantity = abs(report.quantity)
            order.average_fill_price = report.price
            order.header.event_id = f"order/{report.client_order_id}/filled"
            order.header.event_time_ns = report.time_ns
            ctx.put_record(ORDERS, report.client_order_id, order.SerializeToString())
            filled = pb.Order()
            filled.CopyFrom(order)
            filled_orders.append(filled)
            fills.append(
                pb.Fill(
                    header=pb.EventHeader(
                        event_id=f"fill/{report.client_order_id}/1",
                        correlation_id=order.header.correlation_id,
                        event_time_ns=report.time_ns,
                        symbol=report.symbol,
                    ),
                    client_order_id=report.client_order_id,
                    fill_id=f"{report.client_order_id}/1",
                    side=order.side,
                    quantity=abs(report.quantity),
                    price=report.price,
                    commission=report.commission,
                    slippage=report.slippage,
                )
            )
            self.touched.add(report.symbol)
        if filled_orders:
            ctx.emit("order", KINDS["order"].to_frame(filled_orders))
            ctx.emit("fill", KINDS["fill"].to_frame(fills))
        last_time = int(bars["event_time_ns"][-1])
        for symbol, close in bars.select("symbol", "close").iter_rows():
            self.portfolio.mark(symbol, close)
        self.portfolio.close_day(last_time)
        self._publish_portfolio(ctx, last_time)

    def _publish_portfolio(self, ctx: EngineContext, time_ns: int) -> None:
        pending: dict[str, float] = {}
        for order in self.broker.open_orders():
            sign = 1.0 if order.side == pb.ORDER_SIDE_BUY else -1.0
            pending[order.header.symbol] = pending.get(order.header.symbol, 0.0) + sign * order.quantity
        symbols = sorted({*self.portfolio.positions, *pending, *self.touched})
        snapshots = []
        for symbol in symbols:
            pos = self.portfolio.position(symbol)
            corr = f"{symbol}@{time_ns}"
            snapshot = pb.PositionSnapshot(
                header=pb.EventHeader(
                    event_id=f"position_snapshot/{corr}", correlation_id=corr, event_time_ns=time_ns, symbol=symbol
                ),
                quantity=pos.quantity,
                average_price=pos.average_price,
                last_price=pos.last_price,
                market_value=pos.market_value,
                unrealized_pnl=pos.unrealized_pnl,
                realized_pnl=pos.realized_pnl,
                pending_quantity=pending.get(symbol, 0.0),
            )
            snapshots.append(snapshot)
            if pos.quantity:
                ctx.put_record(POSITIONS, symbol, snapshot.SerializeToString())
            else:
                ctx.delete_record(POSITIONS, symbol)
        self.touched.clear()
        self.portfolio.drop_flat()
        if snapshots:
            ctx.emit("position_snapshot", KINDS["position_snapshot"].to_frame(snapshots))
        p = self.portfolio
        account = pb.AccountSnapshot(
            header=pb.EventHeader(event_id=f"account_snapshot/{time_ns}", correlation_id=f"@{time_ns}", event_time_ns=time_ns),
            cash=p.cash,
            equity=p.equity,
            gross_exposure=p.gross_exposure,
            net_exposure=p.net_exposure,
            realized_pnl=p.realized_pnl,
            unrealized_pnl=p.unrealized_pnl,
            day_pnl=p.day_pnl,
            commissions=p.commissions,
            open_positions=p.open_positions,
        )
        ctx.emit("account_snapshot", KINDS["account_snapshot"].to_frame([account]))

    def snapshot(self) -> Any:
        return {
            "broker": self.broker,
            "controls": self.controls,
            "portfolio": self.portfolio,
            "orders": {cid: o.SerializeToString() for cid, o in self.orders.items()},
            "touched": set(self.touched),
        }

    def restore(self, state: Any) -> None:
        self.broker, self.controls, self.portfolio = state["broker"], state["controls"], state["portfolio"]
        self.orders = {cid: pb.Order.FromString(raw) for cid, raw in state["orders"].items()}
        self.touched = state["touched"]
