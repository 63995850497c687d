"""Exit: decides how every position will be closed, when it is opened — the protective legs of each entry.

Consumes: `risk_decision`. Produces: `order_intent`: for each approved entry (a non-zero target), a
take-profit limit at reference x (1 + take_profit_pct) and a stop-loss stop at reference x
(1 - stop_loss_pct) (mirrored for shorts), where the reference is the close the entry was decided on.
Both name the entry as their parent and share one OCO group: execution places them with the entry as a
bracket, they rest at the broker from the entry's fill, sized to what it filled, and the first to fill
cancels the other. A signal exit of the position cancels them.

Because the exits rest at the broker (as the seeds' Alpaca bracket orders do), they trigger inside the
bar on its high and low, and no engine has to look at every position on every bar to catch them: the
engine graph stays free of cycles, so a backtest runs whole batches of bars per step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from utp.core.config import ExitConfig
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input
from utp.v1 import events_pb2 as pb


class ExitEngine(Engine):
    name = "exit"
    inputs = (Input("risk_decision"),)
    outputs = ("order_intent",)

    def __init__(self, config: ExitConfig) -> None:
        self.config = config

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        decisions = frames.get("risk_decision")
        if decisions is None or not decisions.height:
            return
        legs = self.legs_for(decisions)
        if legs.height:
            ctx.emit("order_intent", legs)

    def legs_for(self, decisions: pl.DataFrame) -> pl.DataFrame:
        """The protective legs of the approved entries among `decisions`, sorted by time."""
        if self.config.take_profit_pct <= 0 and self.config.stop_loss_pct <= 0:
            return KINDS["order_intent"].empty_frame()
        entries = decisions.filter(pl.col("approved")).unnest("intent", separator=".").filter(
            pl.col("intent.target_percent").fill_null(0.0) != 0.0
        )  # fmt: skip
        legs = []
        for pct, order_type, reason, price_column, sign in (
            (self.config.take_profit_pct, pb.ORDER_TYPE_LIMIT, pb.INTENT_REASON_TAKE_PROFIT, "limit_price", 1.0),
            (self.config.stop_loss_pct, pb.ORDER_TYPE_STOP, pb.INTENT_REASON_STOP_LOSS, "stop_price", -1.0),
        ):
            if pct <= 0 or not entries.height:
                continue
            direction = np.where(entries["intent.target_percent"].to_numpy() > 0, 1.0, -1.0)
            reference = entries["intent.reference_price"].to_numpy()
            level = reference * (1.0 + sign * pct * direction)
            parent = pl.col("intent.header").struct.field("event_id")
            tag = "tp" if reason == pb.INTENT_REASON_TAKE_PROFIT else "sl"
            legs.append(
                entries.select(
                    (pl.lit(f"order_intent/exit/{tag}/") + pl.col("correlation_id")).alias("event_id"),
                    "correlation_id",
                    "event_time_ns",
                    "symbol",
                    pl.Series("side", np.where(direction > 0, pb.ORDER_SIDE_SELL, pb.ORDER_SIDE_BUY).astype(np.int32)),
                    pl.lit(0.0).alias("quantity"),
                    pl.lit(order_type, pl.Int32).alias("order_type"),
                    pl.lit(reason, pl.Int32).alias("reason"),
                    pl.col("intent.reference_price").alias("reference_price"),
                    pl.lit(True).alias("reduce_only"),
                    pl.lit("exit").alias("source"),
                    pl.lit(None, pl.Float64).alias("target_percent"),
                    pl.Series("limit_price", level if price_column == "limit_price" else np.zeros(len(level))),
                    pl.Series("stop_price", level if price_column == "stop_price" else np.zeros(len(level))),
                    pl.lit(pb.TIME_IN_FORCE_GTC, pl.Int32).alias("time_in_force"),
                    parent.alias("parent_intent_id"),
                    parent.alias("oco_group"),
                    pl.col("intent.strategy").alias("strategy"),
                    pl.lit(0.0).alias("rebalance_band"),
                )
            )
        if not legs:
            return KINDS["order_intent"].empty_frame()
        # At each bar time: the take-profits, then the stop-losses.
        frame = pl.concat(legs).sort("event_time_ns", maintain_order=True)
        return frame.cast(KINDS["order_intent"].schema)  # type: ignore[arg-type]
