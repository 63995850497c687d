"""Exit: watches open positions and asks to close those that reached their take-profit or stop-loss.

Consumes: `position_snapshot`. Produces: `order_intent` (reduce-only, reason TAKE_PROFIT / STOP_LOSS).

The return of a position is measured on the bar's close against its average price (sign-adjusted for
shorts): >= take_profit_pct closes it with a profit, <= -stop_loss_pct with a loss. The close order is
a market order, so it fills at the next bar's open; intrabar triggers on highs and lows come with the
full simulated broker's bracket orders. While a close is pending no new exit is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from utp.core.config import ExitConfig
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input
from utp.v1 import events_pb2 as pb


class ExitEngine(Engine):
    name = "exit"
    inputs = (Input("position_snapshot"),)
    outputs = ("order_intent",)

    def __init__(self, config: ExitConfig) -> None:
        self.config = config

    def exit_for(self, position: pb.PositionSnapshot) -> pb.OrderIntent | None:
        """The intent that closes `position`, or None if it should stay open."""
        q = position.quantity
        if q == 0 or position.average_price <= 0 or position.pending_quantity * q < 0:
            return None  # flat, unknown cost, or already being reduced
        direction = 1.0 if q > 0 else -1.0
        ret = (position.last_price / position.average_price - 1.0) * direction
        if ret >= self.config.take_profit_pct:
            reason = pb.INTENT_REASON_TAKE_PROFIT
        elif ret <= -self.config.stop_loss_pct:
            reason = pb.INTENT_REASON_STOP_LOSS
        else:
            return None
        header = pb.EventHeader()
        header.CopyFrom(position.header)
        header.event_id = f"order_intent/exit/{position.header.correlation_id}"
        return pb.OrderIntent(
            header=header,
            side=pb.ORDER_SIDE_SELL if q > 0 else pb.ORDER_SIDE_BUY,
            quantity=abs(q),
            order_type=pb.ORDER_TYPE_MARKET,
            reason=reason,
            reference_price=position.last_price,
            target_quantity=0.0,
            reduce_only=True,
            source="exit",
        )

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        intents = [
            intent
            for position in KINDS["position_snapshot"].to_messages(frames["position_snapshot"])
            if (intent := self.exit_for(position)) is not None  # type: ignore[arg-type]
        ]
        if intents:
            ctx.emit("order_intent", KINDS["order_intent"].to_frame(intents))
