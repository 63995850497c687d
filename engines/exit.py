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

from utp.core.columns import flags, formatted, take
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
        intent = decisions.get_column("intent").struct.unnest()
        target = intent.get_column("target_percent")
        # An entry: approved, with a target that is not zero (a null target is none; NaN counts, as != 0).
        entry = flags(decisions.get_column("approved")) & (target.to_numpy() != 0.0)
        if target.null_count():
            entry &= ~flags(target.is_null())
        rows = np.flatnonzero(entry)
        if not rows.size:
            return KINDS["order_intent"].empty_frame()
        direction = np.where(target.to_numpy()[rows] > 0, 1.0, -1.0)
        reference = intent.get_column("reference_price").to_numpy()[rows]
        # (pct, order type, reason, price sign) of each kind of leg configured.
        legs = [leg for leg in (
            (self.config.take_profit_pct, pb.ORDER_TYPE_LIMIT, pb.INTENT_REASON_TAKE_PROFIT, 1.0),
            (self.config.stop_loss_pct, pb.ORDER_TYPE_STOP, pb.INTENT_REASON_STOP_LOSS, -1.0),
        ) if leg[0] > 0]  # fmt: skip
        # Each leg kind's rows one after the other, then at each bar time: the take-profits, then the stop-losses.
        source = np.tile(rows, len(legs))
        times = decisions.get_column("event_time_ns").to_numpy()
        order = np.argsort(times[source], kind="stable")
        source = source[order]
        n = source.size
        per_leg = np.array(legs)[np.repeat(np.arange(len(legs)), rows.size)[order]]
        entry_at = np.tile(np.arange(rows.size), len(legs))[order]
        level = reference[entry_at] * (1.0 + per_leg[:, 3] * per_leg[:, 0] * direction[entry_at])
        order_type = per_leg[:, 1].astype(np.int32)
        tag = pl.Series(["tp" if r == pb.INTENT_REASON_TAKE_PROFIT else "sl" for r in per_leg[:, 2].tolist()])
        correlation = take(decisions.get_column("correlation_id"), source)
        parent = take(intent.get_column("header").struct.unnest().get_column("event_id"), source)
        return KINDS["order_intent"].frame({
            "event_id": formatted("event_id", "order_intent/exit/{}/{}", tag, correlation),
            "correlation_id": correlation,
            "event_time_ns": times[source],
            "symbol": take(decisions.get_column("symbol"), source),
            "side": np.where(direction[entry_at] > 0, pb.ORDER_SIDE_SELL, pb.ORDER_SIDE_BUY).astype(np.int32),
            "quantity": 0.0,
            "order_type": order_type,
            "reason": per_leg[:, 2].astype(np.int32),
            "reference_price": reference[entry_at],
            "reduce_only": True,
            "source": "exit",
            "target_percent": None,
            "limit_price": np.where(order_type == pb.ORDER_TYPE_LIMIT, level, 0.0),
            "stop_price": np.where(order_type == pb.ORDER_TYPE_STOP, level, 0.0),
            "time_in_force": pb.TIME_IN_FORCE_GTC,
            "parent_intent_id": parent,
            "oco_group": parent,
            "strategy": take(intent.get_column("strategy"), source),
            "rebalance_band": 0.0,
        }, n)
