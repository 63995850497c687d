"""Market data: replays recorded bars, refuses bad ones, publishes the rest in batches.

Consumes: nothing (a source).
Produces: `bar` (batches of `batch_bar_times` bar times), `rejected_bar` (each refused bar with its reason).

A bar is refused, counted, logged and quarantined (hot state, table `quarantine`) when a price or the
volume is not finite, a price is <= 0, high < low, open or close lies outside [low, high], the volume
is negative, the symbol is not in the universe, or it is not newer than the last accepted bar of its
symbol and than every bar time already published (duplicate / out of order). The run goes on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from numba import njit

from utp.core.batch import NOTHING
from utp.core.ids import correlation_id_expr
from utp.core.kinds import KINDS
from utp.core.runtime import EngineContext, SourceEngine
from utp.core.universe import Universe
from utp.storage.state import QUARANTINE
from utp.v1 import events_pb2 as pb

_REASON_TEXT = {
    pb.BAR_REJECT_REASON_NON_FINITE: "a price or the volume is not finite",
    pb.BAR_REJECT_REASON_NON_POSITIVE_PRICE: "a price is zero or negative",
    pb.BAR_REJECT_REASON_HIGH_BELOW_LOW: "high is below low",
    pb.BAR_REJECT_REASON_OUTSIDE_RANGE: "open or close lies outside [low, high]",
    pb.BAR_REJECT_REASON_NEGATIVE_VOLUME: "volume is negative",
    pb.BAR_REJECT_REASON_OUT_OF_ORDER: "older than a bar already published",
    pb.BAR_REJECT_REASON_DUPLICATE: "same time as the last bar of the symbol",
    pb.BAR_REJECT_REASON_UNKNOWN_SYMBOL: "symbol is not in the universe",
}


@njit(cache=True)
def _validate(sid, times, o, h, lo, c, v, last_time, floor, out_reason):  # noqa: ANN001
    """Reject reason per row, the first failing check naming it (0 = accepted); advances each symbol's last
    accepted time. The numbers are the BarRejectReason values."""
    for i in range(times.shape[0]):
        s = sid[i]
        if s < 0:
            out_reason[i] = 8  # UNKNOWN_SYMBOL
        elif not (np.isfinite(o[i]) and np.isfinite(h[i]) and np.isfinite(lo[i]) and np.isfinite(c[i])
                  and np.isfinite(v[i])):  # fmt: skip
            out_reason[i] = 1  # NON_FINITE
        elif o[i] <= 0.0 or h[i] <= 0.0 or lo[i] <= 0.0 or c[i] <= 0.0:
            out_reason[i] = 2  # NON_POSITIVE_PRICE
        elif h[i] < lo[i]:
            out_reason[i] = 3  # HIGH_BELOW_LOW
        elif o[i] < lo[i] or o[i] > h[i] or c[i] < lo[i] or c[i] > h[i]:
            out_reason[i] = 4  # OUTSIDE_RANGE
        elif v[i] < 0.0:
            out_reason[i] = 5  # NEGATIVE_VOLUME
        elif times[i] == last_time[s]:
            out_reason[i] = 7  # DUPLICATE
        elif times[i] < last_time[s] or times[i] <= floor:
            out_reason[i] = 6  # OUT_OF_ORDER
        else:
            out_reason[i] = 0
            last_time[s] = times[i]


def validate_bars(raw: pl.DataFrame, universe: Universe, last_time: np.ndarray, floor: int) -> np.ndarray:
    """Reject reason per row (0 = accepted). Updates `last_time` for accepted rows.

    `floor` is the watermark already published: nothing at or before it may be published again.
    """
    out = np.empty(raw.height, np.int32)
    _validate(universe.indices(raw["symbol"]), raw["event_time_ns"].to_numpy(),
              *(raw[col].to_numpy().astype(np.float64, copy=False) for col in ("open", "high", "low", "close", "volume")),
              last_time, floor, out)  # fmt: skip
    return out


class MarketDataEngine(SourceEngine):
    """Replays recorded bars (in their recorded order) through validation into `bar` batches."""

    name = "market_data"
    outputs = ("bar", "rejected_bar")

    def __init__(
        self,
        bars: pl.DataFrame,
        universe: Universe,
        *,
        interval_ns: int,
        batch_bar_times: int = 1,
        replay_rate: float = 0.0,
    ) -> None:
        self.raw = bars.select("event_time_ns", "symbol", "open", "high", "low", "close", "volume")
        self.universe = universe
        self.interval_ns = interval_ns
        self.pace_seconds = 1.0 / replay_rate if replay_rate > 0 else 0.0
        # A batch is `batch_bar_times` runs of rows with the same time, in recorded order.
        times = self.raw["event_time_ns"].to_numpy()
        run_starts = np.flatnonzero(np.r_[True, times[1:] != times[:-1]]) if times.size else np.array([], np.int64)
        self.batch_starts = np.r_[run_starts[::batch_bar_times], times.size].astype(np.int64)
        # State (checkpointed):
        self.next_batch = 0
        self.through_ns = NOTHING
        self.last_time = np.full(len(universe), NOTHING, np.int64)
        self.bars_published = 0
        self.bars_rejected = 0

    @property
    def batches_total(self) -> int:
        return len(self.batch_starts) - 1

    @property
    def bars_total(self) -> int:
        return self.raw.height

    def produce(self, ctx: EngineContext) -> bool:
        if self.next_batch >= self.batches_total:
            return False
        lo, hi = int(self.batch_starts[self.next_batch]), int(self.batch_starts[self.next_batch + 1])
        raw = self.raw.slice(lo, hi - lo)
        reason = validate_bars(raw, self.universe, self.last_time, self.through_ns)
        refused = reason != 0
        accepted = raw.filter(pl.Series(~refused)) if refused.any() else raw
        if accepted.height:
            if not accepted["event_time_ns"].is_sorted():  # recorded out of order across symbols
                accepted = accepted.sort("event_time_ns", maintain_order=True)
            bars = accepted.with_columns(correlation_id_expr().alias("correlation_id")).select(
                ("bar/" + pl.col("correlation_id")).alias("event_id"),
                "correlation_id",
                "event_time_ns",
                "symbol",
                "open", "high", "low", "close", "volume",
                pl.lit(self.interval_ns, pl.Int64).alias("interval_ns"),
            )  # fmt: skip
            ctx.emit("bar", bars)
            self.through_ns = max(self.through_ns, int(bars["event_time_ns"][-1]))
            self.bars_published += bars.height
        if refused.any():
            rows = raw.with_row_index("row", offset=lo).filter(pl.Series(refused))
            self._quarantine(ctx, rows, reason[refused])
        self.next_batch += 1
        return True

    def _quarantine(self, ctx: EngineContext, rows: pl.DataFrame, reasons: np.ndarray) -> None:
        messages = []
        for row, code in zip(rows.iter_rows(named=True), reasons.tolist(), strict=True):
            detail = _REASON_TEXT[code]
            if code == pb.BAR_REJECT_REASON_HIGH_BELOW_LOW:
                detail = f"high {row['high']} < low {row['low']}"
            corr = f"{row['symbol']}@{row['event_time_ns']}"
            bar = pb.Bar(
                header=pb.EventHeader(
                    event_id=f"bar/{corr}", correlation_id=corr, event_time_ns=row["event_time_ns"], symbol=row["symbol"]
                ),
                open=row["open"], high=row["high"], low=row["low"], close=row["close"], volume=row["volume"],
                interval_ns=self.interval_ns,
            )  # fmt: skip
            rejected = pb.RejectedBar(
                header=pb.EventHeader(
                    event_id=f"rejected_bar/{corr}/{row['row']}",
                    correlation_id=corr,
                    event_time_ns=row["event_time_ns"],
                    symbol=row["symbol"],
                ),
                bar=bar,
                reason=code,
                message=f"{row['symbol']} bar at {row['event_time_ns']} (record {row['row']}): {detail}",
            )
            ctx.log.warning("rejected bar: %s", rejected.message)
            ctx.put_record(QUARANTINE, rejected.header.event_id, rejected.SerializeToString())
            messages.append(rejected)
        ctx.emit("rejected_bar", KINDS["rejected_bar"].to_frame(messages))
        ctx.count_rejected(len(messages))
        self.bars_rejected += len(messages)

    def snapshot(self) -> Any:
        return {
            "next_batch": self.next_batch,
            "through_ns": self.through_ns,
            "last_time": self.last_time.copy(),
            "bars_published": self.bars_published,
            "bars_rejected": self.bars_rejected,
        }

    def restore(self, state: Any) -> None:
        self.next_batch = state["next_batch"]
        self.through_ns = state["through_ns"]
        self.last_time = state["last_time"]
        self.bars_published = state["bars_published"]
        self.bars_rejected = state["bars_rejected"]
