"""Risk: checks every target position before execution.

Consumes: `portfolio_target`, `control_command` (on arrival). Produces: `risk_decision` (approved or
rejected, with a reason code), whose intent is a *target*: the position wanted as a signed share of equity.

Portfolio construction (engines/portfolio.py) decides the weights; risk caps each at `max_position_pct`
of equity and refuses a short unless `allow_short`. Execution turns a target into an order from the
portfolio as it stands when it places it; so risk needs no portfolio state and the engine graph has no
cycle: every engine processes a whole batch of bar times in one step, live and in a backtest alike.

Checks, in order (the first that fails is the reason): a sane target (finite weight, positive reference
price); no short unless allowed; not halted; execution approved by the operator. A target beyond
`max_position_pct` is approved at the cap, and its message says so.
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
    pb.RISK_REASON_SHORT_NOT_ALLOWED: "a short position is not allowed (risk.allow_short is off)",
}


class RiskEngine(Engine):
    name = "risk"
    inputs = (Input("portfolio_target"), Input("control_command", InputMode.COMMAND))
    outputs = ("risk_decision",)

    def __init__(self, config: RiskConfig, controls: ControlState) -> None:
        self.config = config
        self.controls = controls

    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        for command in KINDS[kind].to_messages(frame):
            self.controls = self.controls.apply(command)  # type: ignore[arg-type]
            ctx.log.info("control %s -> %s", pb.ControlAction.Name(command.action), self.controls)  # type: ignore[attr-defined]

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        targets = frames.get("portfolio_target")
        if targets is None or not targets.height:
            return
        decisions = self.decide(targets)
        if decisions.height:
            ctx.emit("risk_decision", decisions)

    def check(self, target: np.ndarray, reference_price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reason code, message) per target; RISK_REASON_APPROVED where every check passes."""
        n = reference_price.shape[0]
        sane = np.isfinite(reference_price) & (reference_price > 0) & np.isfinite(target)
        short_ok = self.config.allow_short | (target >= 0)
        if self.controls.halted:
            code, text = pb.RISK_REASON_HALTED, self.controls.halt_reason or _REASON_TEXT[pb.RISK_REASON_HALTED]
        elif not self.controls.execution_approved:
            code, text = pb.RISK_REASON_EXECUTION_NOT_APPROVED, _REASON_TEXT[pb.RISK_REASON_EXECUTION_NOT_APPROVED]
        else:
            code, text = pb.RISK_REASON_APPROVED, _REASON_TEXT[pb.RISK_REASON_APPROVED]
        codes = np.where(sane, np.where(short_ok, code, pb.RISK_REASON_SHORT_NOT_ALLOWED), pb.RISK_REASON_INVALID_INTENT)
        messages = np.full(n, text, dtype=object)
        if not short_ok.all():
            messages[~short_ok] = _REASON_TEXT[pb.RISK_REASON_SHORT_NOT_ALLOWED]
        capped = sane & short_ok & (np.abs(np.nan_to_num(target)) > self.config.max_position_pct)
        if code == pb.RISK_REASON_APPROVED and capped.any():
            messages[capped] = [f"approved at the cap: {t:+.4f} of equity > max_position_pct "
                                f"{self.config.max_position_pct:g}" for t in target[capped]]  # fmt: skip
        if not sane.all():
            messages[~sane] = [f"target {t} at reference price {p}: not a finite weight and a positive price"
                               for t, p in zip(target[~sane], reference_price[~sane], strict=True)]  # fmt: skip
        return codes.astype(np.int32), messages

    def decide(self, targets: pl.DataFrame) -> pl.DataFrame:
        """Risk decisions for portfolio targets (one per target)."""
        if not targets.height:
            return KINDS["risk_decision"].empty_frame()
        wanted = targets["target_percent"].to_numpy()
        price = targets["reference_price"].to_numpy()
        codes, messages = self.check(wanted, price)
        cap = self.config.max_position_pct
        target = np.clip(np.nan_to_num(wanted), -cap, cap)
        reason = np.where(target != 0.0, pb.INTENT_REASON_ENTRY, pb.INTENT_REASON_SIGNAL_EXIT).astype(np.int32)
        intent_id = pl.lit("order_intent/risk/") + pl.col("correlation_id")
        side = np.where(target > 0, pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL).astype(np.int32)
        intents = targets.select(
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
                pl.col("strategy"),
                pl.col("rebalance_band"),
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
