"""Market data: replays recorded bars or takes live ones from vendors, refuses bad ones, publishes the rest.

Consumes: nothing (a source).
Produces: `bar` (replay: batches of `batch_bar_times` bar times; live: one bar time per batch),
`rejected_bar` (each refused bar with its reason), and live only `data_alert` (a symbol stale / fresh again,
a failover, a source that stopped with an error).

A bar is refused, counted, logged and quarantined (hot state, table `quarantine`) when a price or the
volume is not finite, a price is <= 0, high < low, open or close lies outside [low, high], the volume
is negative, the symbol is not in the universe, or it is not newer than the last accepted bar of its
symbol and than every bar time already published (duplicate / out of order). The run goes on.

With an `OutlierDetector` (live: data.outliers, on by default; replay: market_data.outliers) the bars that
pass those checks are also judged against their symbol's recent behaviour, in time order: a close far beyond
its recent volatility (OUTLIER_PRICE) or a volume far above its recent median (OUTLIER_VOLUME) is refused
the same way, with a message saying what moved and by how much. The detector's state is part of the
checkpoint, and batch size never changes what it flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import polars as pl
from numba import njit

from utp.core.batch import NOTHING
from utp.core.config import ConfigError, DataConfig
from utp.core.filters import exchange_sessions
from utp.core.ids import correlation_id_expr
from utp.core.kernels import entry
from utp.core.kinds import KINDS
from utp.core.quality import OutlierDetector, OutlierReason
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
    pb.BAR_REJECT_REASON_OUTLIER_PRICE: "close jumped far beyond the symbol's recent volatility",
    pb.BAR_REJECT_REASON_OUTLIER_VOLUME: "volume far above the symbol's recent median volume",
}


@entry
@njit(cache=True)
def _validate(sid, times, o, h, lo, c, v, last_time, floor, out_reason):  # noqa: ANN001
    """Reject reason per row, the first failing check naming it (0 = accepted); advances each symbol's last
    accepted time. The numbers are the BarRejectReason values.

    Rows come in runs of one time. A run may not go back before a time an earlier run published, as if each
    run were its own batch: otherwise a bar recorded late would pass when its run shares a batch with a later
    one and be refused when it does not, and the batch size would change what is published."""
    published = floor  # the newest time accepted by an earlier run (or batch)
    accepted = floor  # the newest time accepted so far
    for i in range(times.shape[0]):
        if i > 0 and times[i] != times[i - 1]:
            published = max(published, accepted)
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
        elif times[i] < last_time[s] or times[i] <= published:
            out_reason[i] = 6  # OUT_OF_ORDER
        else:
            out_reason[i] = 0
            last_time[s] = times[i]
            accepted = max(accepted, times[i])


def validate_bars(raw: pl.DataFrame, universe: Universe, last_time: np.ndarray, floor: int) -> np.ndarray:
    """Reject reason per row (0 = accepted). Updates `last_time` for accepted rows.

    `floor` is the watermark already published: nothing at or before it may be published again.
    """
    out = np.empty(raw.height, np.int32)
    _validate(universe.indices(raw["symbol"]), raw["event_time_ns"].to_numpy(),
              *(raw[col].to_numpy().astype(np.float64, copy=False) for col in ("open", "high", "low", "close", "volume")),
              last_time, floor, out)  # fmt: skip
    return out


def bar_frame(accepted: pl.DataFrame, interval_ns: int) -> pl.DataFrame:
    """Accepted bar rows (time-sorted) as `bar` events."""
    return accepted.select(  # one query: each costs ~0.2 ms however few the rows
        ("bar/" + correlation_id_expr()).alias("event_id"),
        correlation_id_expr().alias("correlation_id"),
        "event_time_ns",
        "symbol",
        "open", "high", "low", "close", "volume",
        pl.lit(interval_ns, pl.Int64).alias("interval_ns"),
    )  # fmt: skip


def quarantine_bars(ctx: EngineContext, rows: pl.DataFrame, reasons: np.ndarray, interval_ns: int, *,
                    origin: str, details: Sequence[str | None] | None = None) -> int:  # fmt: skip
    """Log, quarantine (hot state) and emit as `rejected_bar` each refused row; returns how many.

    `rows` carry a `row` column numbering them within their `origin` ("record" of a replay, "arrival" of a
    live feed): it tells an operator which input it was and keeps event ids unique when a symbol sends two
    bad bars for one time. `details`, parallel to the rows, replace the reason's generic text where not None
    (an outlier says what moved and by how much).
    """
    messages = []
    explained = details if details is not None else [None] * rows.height
    for row, code, given in zip(rows.iter_rows(named=True), reasons.tolist(), explained, strict=True):
        detail = given or _REASON_TEXT[code]
        if code == pb.BAR_REJECT_REASON_HIGH_BELOW_LOW:
            detail = f"high {row['high']} < low {row['low']}"
        corr = f"{row['symbol']}@{row['event_time_ns']}"
        bar = pb.Bar(
            header=pb.EventHeader(
                event_id=f"bar/{corr}", correlation_id=corr, event_time_ns=row["event_time_ns"], symbol=row["symbol"]
            ),
            open=row["open"], high=row["high"], low=row["low"], close=row["close"], volume=row["volume"],
            interval_ns=interval_ns,
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
            message=f"{row['symbol']} bar at {row['event_time_ns']} ({origin} {row['row']}): {detail}",
        )
        ctx.log.warning("rejected bar: %s", rejected.message)
        ctx.put_record(QUARANTINE, rejected.header.event_id, rejected.SerializeToString())
        messages.append(rejected)
    ctx.emit("rejected_bar", KINDS["rejected_bar"].to_frame(messages))
    ctx.count_rejected(len(messages))
    return len(messages)


# --------------------------------------------------------------------------------------------------------------
# Outliers
# --------------------------------------------------------------------------------------------------------------

_OUTLIER_TO_REJECT = {
    OutlierReason.PRICE_JUMP: pb.BAR_REJECT_REASON_OUTLIER_PRICE,
    OutlierReason.VOLUME_SPIKE: pb.BAR_REJECT_REASON_OUTLIER_VOLUME,
    # Validation refuses such bars before the detector sees them; mapped for completeness.
    OutlierReason.INVALID: pb.BAR_REJECT_REASON_NON_FINITE,
}
# The detector's robust volatility (utp.core.quality): the larger of the scaled median and mean |log return|.
_MAD_TO_SIGMA = 1.4826
_MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2.0)


def outlier_detector(data: DataConfig, n_symbols: int) -> OutlierDetector:
    """The detector a market-data engine runs, with data.outlier_sigma / outlier_min_move /
    outlier_volume_multiple (ConfigError naming a bad one)."""
    settings = {"max_move_sigma": ("data.outlier_sigma", data.outlier_sigma),
                "min_move": ("data.outlier_min_move", data.outlier_min_move),
                "max_volume_multiple": ("data.outlier_volume_multiple", data.outlier_volume_multiple)}  # fmt: skip
    for key, value in settings.values():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{key} must be a number > 0, got {value}")
    return OutlierDetector(n_symbols, **{name: value for name, (_, value) in settings.items()})


def flag_outliers(detector: OutlierDetector, universe: Universe, rows: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """BarRejectReason per row of `rows` (valid bars, in time order per symbol; 0 = accepted) and, for each
    flagged row in row order, what moved and by how much. Advances the detector with the accepted rows."""
    sid = universe.indices(rows["symbol"]).astype(np.int64)
    close = rows["close"].to_numpy().astype(np.float64, copy=False)
    volume = rows["volume"].to_numpy().astype(np.float64, copy=False)
    before = detector.snapshot()
    codes = detector.check(sid, close, volume)
    reasons = np.zeros(rows.height, np.int32)
    flagged = np.flatnonzero(codes)
    if not flagged.size:
        return reasons, []
    for i in flagged.tolist():
        reasons[i] = _OUTLIER_TO_REJECT[OutlierReason(int(codes[i]))]
    # Explaining a flag needs the symbol's state just before its row: replay the batch from the state before
    # it, in a scratch detector, stopping at each flagged row (flags are rare, so this costs next to nothing).
    scratch = OutlierDetector(detector.n_symbols, window=detector.window, max_move_sigma=detector.max_move_sigma,
                              min_move=detector.min_move, max_volume_multiple=detector.max_volume_multiple,
                              warmup_max_move=detector.warmup_max_move, confirm_bars=detector.confirm_bars)  # fmt: skip
    scratch.restore(before)
    details, done = [], 0
    for i in flagged.tolist():
        scratch.check(sid[done:i], close[done:i], volume[done:i])
        details.append(_explain(scratch, int(codes[i]), int(sid[i]), float(close[i]), float(volume[i])))
        scratch.check(sid[i : i + 1], close[i : i + 1], volume[i : i + 1])
        done = i + 1
    return reasons, details


def _explain(detector: OutlierDetector, code: int, s: int, close: float, volume: float) -> str:
    state = detector.snapshot()
    if code == OutlierReason.VOLUME_SPIKE:
        median = float(np.median(state["vol_buf"][s]))
        return (f"volume {volume:g} is {volume / median:.1f}x its recent median volume {median:g} "
                f"(limit {detector.max_volume_multiple:g}x)")  # fmt: skip
    if code != OutlierReason.PRICE_JUMP:
        return f"close {close:g} / volume {volume:g} is not a valid price and volume"
    previous = float(state["last_close"][s])
    move = math.log(close / previous)
    moved = f"close {close:g} is a {move:+.2f} log move from {previous:g}"
    window = detector.window
    if state["ret_n"][s] < window:
        return (f"{moved}, beyond the warm-up limit {detector.warmup_max_move:g} "
                f"({int(state['ret_n'][s])} of {window} returns known)")  # fmt: skip
    returns = state["abs_ret"][s]
    sigma = max(_MAD_TO_SIGMA * float(np.median(returns)), _MEAN_ABS_TO_SIGMA * float(np.mean(returns)))
    times = f"{abs(move) / sigma:.1f}x" if sigma > 0 else "infinitely many times"
    return (f"{moved}, {times} its recent volatility {sigma:.4f} "
            f"(limits {detector.max_move_sigma:g}x and {detector.min_move:g})")  # fmt: skip


def _refusals(rows: pl.DataFrame, reasons: np.ndarray, details: Sequence[str] | None = None) -> pl.DataFrame:
    """Refused rows with their reason and explanation (None: the reason's generic text) as columns."""
    return rows.with_columns(
        pl.Series("_reason", reasons, pl.Int32),
        pl.Series("_detail", list(details) if details is not None else [None] * rows.height, pl.String),
    )


class MarketDataEngine(SourceEngine):
    """Replays recorded bars (in their recorded order) through validation (and `outliers`, when given) into
    `bar` batches."""

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
        outliers: OutlierDetector | None = None,
    ) -> None:
        self.raw = bars.select("event_time_ns", "symbol", "open", "high", "low", "close", "volume")
        self.universe = universe
        self.interval_ns = interval_ns
        self.pace_seconds = 1.0 / replay_rate if replay_rate > 0 else 0.0
        if outliers is not None and outliers.n_symbols != len(universe):
            raise ValueError(f"the outlier detector covers {outliers.n_symbols} symbols, the universe {len(universe)}")
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
        self.outliers = outliers

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
        raw = self.raw.slice(lo, hi - lo).with_row_index("row", offset=lo)
        reason = validate_bars(raw, self.universe, self.last_time, self.through_ns)
        refused = reason != 0
        accepted = raw.filter(pl.Series(~refused)) if refused.any() else raw
        if accepted.height and not accepted["event_time_ns"].is_sorted():  # recorded out of order across symbols
            accepted = accepted.sort("event_time_ns", maintain_order=True)
        refusals = [_refusals(raw.filter(pl.Series(refused)), reason[refused])] if refused.any() else []
        if self.outliers is not None and accepted.height:
            flags, explained = flag_outliers(self.outliers, self.universe, accepted)
            if explained:
                flagged = flags != 0
                refusals.append(_refusals(accepted.filter(pl.Series(flagged)), flags[flagged], explained))
                accepted = accepted.filter(pl.Series(~flagged))
        if accepted.height:
            bars = bar_frame(accepted, self.interval_ns)
            ctx.emit("bar", bars)
            self.through_ns = max(self.through_ns, int(bars["event_time_ns"][-1]))
            self.bars_published += bars.height
        if refusals:
            # In record order, whichever check refused them, so that batch size cannot change their order.
            rows = pl.concat(refusals).sort("row") if len(refusals) > 1 else refusals[0]
            self.bars_rejected += quarantine_bars(ctx, rows, rows["_reason"].to_numpy(), self.interval_ns,
                                                  origin="record", details=rows["_detail"].to_list())  # fmt: skip
        self.next_batch += 1
        return True

    def snapshot(self) -> Any:
        return {
            "next_batch": self.next_batch,
            "through_ns": self.through_ns,
            "last_time": self.last_time.copy(),
            "bars_published": self.bars_published,
            "bars_rejected": self.bars_rejected,
            "outliers": self.outliers.snapshot() if self.outliers is not None else None,
        }

    def restore(self, state: Any) -> None:
        self.next_batch = state["next_batch"]
        self.through_ns = state["through_ns"]
        self.last_time = state["last_time"]
        self.bars_published = state["bars_published"]
        self.bars_rejected = state["bars_rejected"]
        if self.outliers is not None and state.get("outliers") is not None:
            self.outliers.restore(state["outliers"])


class BarFeed(Protocol):
    """Live bars (core.feeds.FailoverFeed): `poll` returns what arrived since the last poll, without waiting.

    Read when present, as FailoverFeed has them: `active` (the source bars come from now) and `primary` /
    `secondary` (its streams, each with `name` and `error`: why it stopped by itself, None while it runs).
    """

    #: Every notice so far (a failover, a switch back), oldest first.
    notices: list[str]

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def poll(self) -> pl.DataFrame: ...


class LiveMarketDataEngine(SourceEngine):
    """Bars from a live feed, one bar time per batch, through the same validation and quarantine as a replay.

    Vendors send each symbol's bar for a minute separately and not always together, so the bars of a bar time
    are held until it is complete: every universe symbol has sent it, or a bar of a later time has arrived
    (the vendor has moved on: whatever is missing is not coming in order), or `settle_s` of the context's
    clock has passed since its first bar came (a quiet symbol must not stall the others). Bar times go out
    oldest first; a bar for a time already published is refused as out of order, since every decision at
    that time has been taken without it.

    What an operator must know about the data becomes a `data_alert`, once per change:

    * STALE when a symbol has had no published bar for more than `max_bar_age_s` of an open session of
      `calendar`, and FRESH when its bars come back. The age runs from its last bar time, but never from
      before the session opened or the engine started: the overnight gap, or the minutes a new feed needs to
      connect, are not staleness. Outside sessions nothing becomes stale.
    * FAILOVER for each notice of the feed (a failover, a switch back).
    * SOURCE_ERROR when one of the feed's streams stops with an error (rejected credentials, ...).

    A live source never ends by itself: `produce` always returns True and the runner polls every
    `poll_interval_s` until it is stopped, which stops the feed (`close`). The checkpoint keeps the watermark
    and the last time per symbol, so a restarted session never publishes a bar time twice; bars held when
    the process ends were never published and are not kept (the new feed does not send them again). It also
    keeps which symbols are stale, so a restart neither repeats a STALE alert nor forgets the FRESH one.
    """

    name = "market_data"
    outputs = ("bar", "rejected_bar", "data_alert")

    def __init__(self, feed: BarFeed, universe: Universe, *, interval_ns: int, settle_s: float = 2.0,
                 poll_interval_s: float = 0.05, outliers: OutlierDetector | None = None,
                 max_bar_age_s: float = 1800.0, calendar: str = "XNYS") -> None:  # fmt: skip
        if settle_s < 0:
            raise ValueError(f"settle_s must be >= 0 seconds, not {settle_s}")
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0 seconds, not {poll_interval_s}")
        if not (math.isfinite(max_bar_age_s) and max_bar_age_s > 0):
            raise ValueError(f"max_bar_age_s must be > 0 seconds, not {max_bar_age_s}")
        if outliers is not None and outliers.n_symbols != len(universe):
            raise ValueError(f"the outlier detector covers {outliers.n_symbols} symbols, the universe {len(universe)}")
        self.feed = feed
        self.universe = universe
        self.interval_ns = interval_ns
        self.settle_ns = int(settle_s * 1e9)
        self.poll_interval_s = poll_interval_s
        self.max_bar_age_ns = int(max_bar_age_s * 1e9)
        self.sessions = exchange_sessions(calendar)
        #: Bars not published yet, by bar time, and the clock time the first of each arrived.
        self.held: dict[int, list[pl.DataFrame]] = {}
        self._first_arrival_ns: dict[int, int] = {}
        self._next_ready = False
        self._notices_read = 0
        self._feed_running = False
        self._started_ns = NOTHING
        self._errors_told: dict[str, str] = {}
        self._calendar_warned = False
        # State (checkpointed):
        self.through_ns = NOTHING
        self.last_time = np.full(len(universe), NOTHING, np.int64)
        self.bars_received = 0
        self.bars_published = 0
        self.bars_rejected = 0
        self.feed_notices = 0
        self.outliers = outliers
        #: Per symbol: the time of its last published bar, and whether a STALE alert is standing.
        self.last_bar_ns = np.full(len(universe), NOTHING, np.int64)
        self.stale = np.zeros(len(universe), bool)
        self.data_alerts = 0

    @property
    def pace_seconds(self) -> float:  # type: ignore[override]
        # No pause while bar times are ready (catching up after a burst), one poll interval otherwise.
        return 0.0 if self._next_ready else self.poll_interval_s

    def start(self, ctx: EngineContext) -> None:
        self._started_ns = ctx.clock.now_ns()
        self.feed.start()
        self._feed_running = True

    def close(self) -> None:
        if self._feed_running:
            self._feed_running = False
            self.feed.stop()

    def produce(self, ctx: EngineContext) -> bool:
        now = ctx.clock.now_ns()
        if self._started_ns == NOTHING:
            self._started_ns = now
        arrived = self.feed.poll()
        alerts = self._feed_alerts(ctx, now)
        if arrived.height:
            self._take(ctx, arrived, now, alerts)
        if self._ready(now):
            self._publish_oldest(ctx, now, alerts)
        alerts.extend(self._newly_stale(ctx, now))
        if alerts:
            ctx.emit("data_alert", KINDS["data_alert"].to_frame(alerts))
        self._next_ready = self._ready(now)
        return True

    # -- alerts ------------------------------------------------------------------------------------------------

    def _alert(self, kind: int, now: int, message: str, *, symbol: str = "", source: str = "",
               age_ns: int = 0) -> pb.DataAlert:  # fmt: skip
        label = pb.DataAlertKind.Name(kind).removeprefix("DATA_ALERT_KIND_").lower()
        self.data_alerts += 1
        key = f"{label}/{symbol or source}/{now}/{self.data_alerts}"
        return pb.DataAlert(header=pb.EventHeader(event_id=f"data_alert/{key}", correlation_id=key,
                                                  event_time_ns=now, symbol=symbol),
                            kind=kind, message=message, source=source, age_s=age_ns / 1e9)  # fmt: skip

    def _active_source(self) -> str:
        return str(getattr(self.feed, "active", ""))

    def _feed_alerts(self, ctx: EngineContext, now: int) -> list[pb.DataAlert]:
        """A FAILOVER alert per new notice of the feed, a SOURCE_ERROR one per stream that stopped with an error."""
        alerts = []
        notices = self.feed.notices
        for notice in notices[self._notices_read:]:
            ctx.log.warning("market data feed: %s", notice)
            self.feed_notices += 1
            alerts.append(self._alert(pb.DATA_ALERT_KIND_FAILOVER, now, notice, source=self._active_source()))
        self._notices_read = len(notices)
        for stream in (getattr(self.feed, "primary", None), getattr(self.feed, "secondary", None)):
            error = getattr(stream, "error", None)
            name = str(getattr(stream, "name", ""))
            if not error:
                self._errors_told.pop(name, None)  # reconnected: the same error again is news again
            elif self._errors_told.get(name) != error:
                self._errors_told[name] = error
                ctx.log.error("market data source %s stopped: %s", name, error)
                alerts.append(self._alert(pb.DATA_ALERT_KIND_SOURCE_ERROR, now, f"{name} stopped: {error}",
                                          source=name))  # fmt: skip
        return alerts

    def _newly_stale(self, ctx: EngineContext, now: int) -> list[pb.DataAlert]:
        """STALE alerts for the symbols that have just passed max_bar_age_s without a bar inside a session."""
        try:
            session = int(self.sessions.index_at(now))
        except ValueError as exc:  # past the calendar's last known session: freshness cannot be judged
            if not self._calendar_warned:
                self._calendar_warned = True
                ctx.log.error("market data freshness is not checked: %s", exc)
            return []
        opened = int(self.sessions.open_ns[session])
        if now < opened:  # between sessions (the session found is the next one)
            return []
        since = np.maximum(self.last_bar_ns, max(opened, self._started_ns))
        newly = np.flatnonzero((now - since > self.max_bar_age_ns) & ~self.stale)
        alerts = []
        for s in newly.tolist():
            symbol, age = self.universe.symbols[s], now - int(since[s])
            last = int(self.last_bar_ns[s])
            seen = f"last bar {_utc(last)}" if last != NOTHING else "no bar yet"
            message = (f"{symbol}: no bar for {_minutes(age)} of an open session ({seen}; "
                       f"limit {_minutes(self.max_bar_age_ns)})")  # fmt: skip
            ctx.log.warning("market data stale: %s", message)
            alerts.append(self._alert(pb.DATA_ALERT_KIND_STALE, now, message, symbol=symbol,
                                      source=self._active_source(), age_ns=age))  # fmt: skip
            self.stale[s] = True
        return alerts

    def _fresh_again(self, ctx: EngineContext, bars: pl.DataFrame, now: int) -> list[pb.DataAlert]:
        """Record the bar times just published; FRESH alerts for the symbols among them that were stale."""
        sid = self.universe.indices(bars["symbol"])
        times = bars["event_time_ns"].to_numpy()
        alerts = []
        for s in np.unique(sid[self.stale[sid]]).tolist():
            symbol = self.universe.symbols[s]
            newest = int(times[sid == s].max())
            last = int(self.last_bar_ns[s])
            gap = newest - last if last != NOTHING else 0
            after = f"{_minutes(gap)} after its previous one at {_utc(last)}" if last != NOTHING else "its first"
            message = f"{symbol}: bars again, {_utc(newest)} is {after}"
            ctx.log.warning("market data fresh: %s", message)
            alerts.append(self._alert(pb.DATA_ALERT_KIND_FRESH, now, message, symbol=symbol,
                                      source=self._active_source(), age_ns=gap))  # fmt: skip
            self.stale[s] = False
        np.maximum.at(self.last_bar_ns, sid, times)
        return alerts

    # -- bars --------------------------------------------------------------------------------------------------

    def _take(self, ctx: EngineContext, arrived: pl.DataFrame, now: int, alerts: list[pb.DataAlert]) -> None:
        """Hold new bars by bar time; refuse at once those for a time already published."""
        arrived = arrived.select("event_time_ns", "symbol", "open", "high", "low", "close", "volume")
        arrived = arrived.with_row_index("row", offset=self.bars_received)
        self.bars_received += arrived.height
        late = arrived["event_time_ns"] <= self.through_ns
        if late.any():
            self._validate_and_emit(ctx, arrived.filter(late), now, alerts)
            arrived = arrived.filter(~late)
        for (bar_time,), rows in arrived.partition_by("event_time_ns", as_dict=True, maintain_order=True).items():
            self.held.setdefault(bar_time, []).append(rows)
            self._first_arrival_ns.setdefault(bar_time, now)

    def _ready(self, now: int) -> bool:
        """Whether the oldest held bar time may be published now (see the class docstring)."""
        if not self.held:
            return False
        oldest = min(self.held)
        if len(self.held) > 1 or now - self._first_arrival_ns[oldest] >= self.settle_ns:
            return True
        symbols = set().union(*(rows["symbol"].to_list() for rows in self.held[oldest]))
        return all(symbol in symbols for symbol in self.universe.symbols)

    def _publish_oldest(self, ctx: EngineContext, now: int, alerts: list[pb.DataAlert]) -> None:
        bar_time = min(self.held)
        rows = pl.concat(self.held.pop(bar_time))
        del self._first_arrival_ns[bar_time]
        # Universe order within the time, arrival order within a symbol (a repeat after the first is the duplicate).
        order = np.argsort(self.universe.indices(rows["symbol"]), kind="stable")
        self._validate_and_emit(ctx, rows[order], now, alerts)
        # Published even when every bar of it was refused: the decisions at this time are taken now.
        self.through_ns = max(self.through_ns, bar_time)

    def _validate_and_emit(self, ctx: EngineContext, rows: pl.DataFrame, now: int,
                           alerts: list[pb.DataAlert]) -> None:  # fmt: skip
        reason = validate_bars(rows, self.universe, self.last_time, self.through_ns)
        refused = reason != 0
        details: list[str | None] = [None] * rows.height
        if self.outliers is not None and not refused.all():
            valid = np.flatnonzero(~refused)  # one bar time (or late bars, all refused): already in time order
            flags, explained = flag_outliers(self.outliers, self.universe, rows[valid])
            flagged = flags != 0
            if flagged.any():
                reason[valid[flagged]] = flags[flagged]
                for i, detail in zip(valid[flagged].tolist(), explained, strict=True):
                    details[i] = detail
                refused = reason != 0
        accepted = rows.filter(pl.Series(~refused)) if refused.any() else rows
        if accepted.height:
            bars = bar_frame(accepted, self.interval_ns)
            ctx.emit("bar", bars)
            self.bars_published += bars.height
            alerts.extend(self._fresh_again(ctx, bars, now))
        if refused.any():
            why = [detail for detail, no in zip(details, refused.tolist(), strict=True) if no]
            self.bars_rejected += quarantine_bars(ctx, rows.filter(pl.Series(refused)), reason[refused],
                                                  self.interval_ns, origin="arrival", details=why)  # fmt: skip

    def snapshot(self) -> Any:
        return {
            "through_ns": self.through_ns,
            "last_time": self.last_time.copy(),
            "bars_received": self.bars_received,
            "bars_published": self.bars_published,
            "bars_rejected": self.bars_rejected,
            "feed_notices": self.feed_notices,
            "outliers": self.outliers.snapshot() if self.outliers is not None else None,
            "last_bar_ns": self.last_bar_ns.copy(),
            "stale": self.stale.copy(),
            "data_alerts": self.data_alerts,
        }

    def restore(self, state: Any) -> None:
        self.through_ns = state["through_ns"]
        self.last_time = state["last_time"]
        self.bars_received = state["bars_received"]
        self.bars_published = state["bars_published"]
        self.bars_rejected = state["bars_rejected"]
        self.feed_notices = state["feed_notices"]
        if self.outliers is not None and state.get("outliers") is not None:
            self.outliers.restore(state["outliers"])
        # Checkpoints from before freshness existed have none of these.
        if "last_bar_ns" in state:
            self.last_bar_ns = state["last_bar_ns"]
            self.stale = state["stale"]
            self.data_alerts = state["data_alerts"]


def _utc(time_ns: int) -> str:
    return str(np.datetime64(int(time_ns), "ns").astype("datetime64[s]")).replace("T", " ") + " UTC"


def _minutes(ns: int) -> str:
    return f"{ns / 60e9:.1f} min"
