"""Risk: turns scored signals into target positions and checks every one before execution.

Consumes: `scored_signal`, `control_command` (on arrival). Produces: `risk_decision` (approved or rejected,
with a reason code), whose intent is a *target*: the position wanted as a signed share of equity.

Portfolio construction (Lean's step between alpha and execution): UP asks for +`max_position_pct` of
equity, DOWN for flat (or -`max_position_pct` with `allow_short`), FLAT for nothing. Execution turns a
target into an order from the portfolio as it stands when it places it, and does nothing for a target
on the side already held; so risk needs no portfolio state and the engine graph has no cycle: every
engine processes a whole batch of bar times in one step, live and in a backtest alike.

Checks, in order (the first that fails is the reason): a sane signal (finite, positive reference price);
not halted; execution approved by the operator. The target never exceeds `max_position_pct` and is
never short unless allowed, by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from utp.core.config import RiskConfig
from utp.core.controls import ControlState
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input, InputMode
from utp.v1 import events_pb2 as pb

_REASON_TEXT = {
    pb.RISK_REASON_APPROVED: "approved",
    pb.RISK_REASON_HALTED: "trading is halted",
    pb.RISK_REASON_EXECUTION_NOT_APPROVED: "execution is not approved by the operator",
    pb.RISK_REASON_INVALID_INTENT: "invalid intent",
}


class RiskEngine(Engine):
    name = "risk"
    inputs = (Input("scored_signal"), Input("control_command", InputMode.COMMAND))
    outputs = ("risk_decision",)

    def __init__(self, config: RiskConfig, controls: ControlState) -> None:
        self.config = config
        self.controls = controls

    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        for command in KINDS[kind].to_messages(frame):
            self.controls = self.controls.apply(command)  # type: ignore[arg-type]
            ctx.log.info("control %s -> %s", pb.ControlAction.Name(command.action), self.controls)  # type: ignore[attr-defined]

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        signals = frames.get("scored_signal")
        if signals is None or not signals.height:
            return
        decisions = self.decide(signals)
        if decisions.height:
            ctx.emit("risk_decision", decisions)

    def targets(self, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(target share of equity, intent reason) per signal direction; NaN target = no intent."""
        cap = self.config.max_position_pct
        down = -cap if self.config.allow_short else 0.0
        target = np.where(direction == pb.DIRECTION_UP, cap, np.where(direction == pb.DIRECTION_DOWN, down, np.nan))
        reason = np.where(target != 0.0, pb.INTENT_REASON_ENTRY, pb.INTENT_REASON_SIGNAL_EXIT).astype(np.int32)
        return target, reason

    def check(self, reference_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reason code, message) per intent; RISK_REASON_APPROVED where every check passes."""
        n = reference_price.shape[0]
        sane = np.isfinite(reference_price) & (reference_price > 0)
        if self.controls.halted:
            code, text = pb.RISK_REASON_HALTED, self.controls.halt_reason or _REASON_TEXT[pb.RISK_REASON_HALTED]
        elif not self.controls.execution_approved:
            code, text = pb.RISK_REASON_EXECUTION_NOT_APPROVED, _REASON_TEXT[pb.RISK_REASON_EXECUTION_NOT_APPROVED]
        else:
            code, text = pb.RISK_REASON_APPROVED, _REASON_TEXT[pb.RISK_REASON_APPROVED]
        codes = np.where(sane, code, pb.RISK_REASON_INVALID_INTENT).astype(np.int32)
        messages = np.full(n, text, dtype=object)
        if not sane.all():
            messages[~sane] = [f"reference price {p} is not a positive number" for p in reference_price[~sane]]
        return codes, messages

    def decide(self, signals: pl.DataFrame) -> pl.DataFrame:
        """Risk decisions for scored signals (one per signal that asks for a position)."""
        target, reason = self.targets(signals["direction"].to_numpy())
        keep = ~np.isnan(target)
        if not keep.any():
            return KINDS["risk_decision"].empty_frame()
        rows = signals.filter(pl.Series(keep))
        target, reason = target[keep], reason[keep]
        price = rows["reference_price"].to_numpy()
        codes, messages = self.check(price)
        intent_id = pl.lit("order_intent/risk/") + pl.col("correlation_id")
        side = np.where(target > 0, pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL).astype(np.int32)
        intents = rows.select(
            pl.struct(
                pl.struct(
                    intent_id.alias("event_id"), "correlation_id", "event_time_ns", "symbol"
                ).alias("header"),
                pl.Series("side", side),
                pl.lit(0.0).alias("quantity"),
                pl.lit(pb.ORDER_TYPE_MARKET, pl.Int32).alias("order_type"),
                pl.Series("reason", reason),
                pl.col("reference_price"),
                pl.Series("reduce_only", target == 0.0),
                pl.lit("risk").alias("source"),
                pl.Series("target_percent", target),
                pl.lit(0.0).alias("limit_price"),
                pl.lit(0.0).alias("stop_price"),
                pl.lit(pb.TIME_IN_FORCE_UNSPECIFIED, pl.Int32).alias("time_in_force"),
                pl.lit("").alias("parent_intent_id"),
                pl.lit("").alias("oco_group"),
                pl.col("active_alphas").list.join("+").alias("strategy"),
            ).alias("intent"),
            (pl.lit("risk_decision/") + intent_id).alias("event_id"),
            "correlation_id",
            "event_time_ns",
            "symbol",
        )
        schema = KINDS["risk_decision"].schema
        return pl.DataFrame(
            {
                "event_id": intents["event_id"],
                "correlation_id": intents["correlation_id"],
                "event_time_ns": intents["event_time_ns"],
                "symbol": intents["symbol"],
                "intent": intents["intent"],
                "approved": codes == pb.RISK_REASON_APPROVED,
                "reason": codes,
                "message": pl.Series(messages.tolist(), dtype=pl.Utf8),
            }
        ).cast(schema)  # type: ignore[arg-type]

    def snapshot(self) -> Any:
        return {"controls": self.controls}

    def restore(self, state: Any) -> None:
        self.controls = state["controls"]
