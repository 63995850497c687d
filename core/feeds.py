"""Live bars from one vendor, or from a second one when the first goes quiet.

Both sources stream at once, so the secondary is already connected and current when it is needed: a
failover then costs no reconnect and loses no bar. Only the active source's bars are delivered. Bars are
deduplicated per symbol against the last bar time delivered, which is what makes a switch seamless: the
new source contributes exactly the bars after the last one the old source delivered, no gap and no repeat.

Switching back: the feed stays on the source that works. It returns to the primary only when the
secondary in turn goes quiet while the primary delivers. Going back as soon as the primary delivers a
bar again would flap between sources whenever the primary is intermittent, and each switch is announced
to an operator; the two vendors' bars are the same bars, so nothing is gained by hurrying back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import polars as pl

log = logging.getLogger(__name__)

#: The columns and types of every bar frame (storage.datasets.BAR_COLUMNS, typed). event_time_ns is the bar's
#: START time in nanoseconds since the epoch, UTC.
BAR_SCHEMA: dict[str, type[pl.DataType]] = {
    "event_time_ns": pl.Int64,
    "symbol": pl.Utf8,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
}

BarSink = Callable[[pl.DataFrame], None]


def empty_bars() -> pl.DataFrame:
    return pl.DataFrame(schema=BAR_SCHEMA)


class BarStream(Protocol):
    """A live source of bars. `start` returns at once; `sink` is then called from the stream's own thread."""

    name: str
    #: time.monotonic() of the last frame from the vendor; None before the first.
    last_message_monotonic: float | None

    def start(self, sink: BarSink) -> None: ...

    def stop(self) -> None: ...


class FailoverFeed:
    """Bars from `primary`, or from `secondary` while the primary is quiet; see the module docstring.

    Decisions are taken in `poll`, on the caller's thread and clock, so a test can drive them with a fake
    clock, and a notice never races the bars it explains.
    """

    def __init__(self, primary: BarStream, secondary: BarStream | None, *, failover_after_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_notice: Callable[[str], None] | None = None) -> None:  # fmt: skip
        if failover_after_s <= 0:
            raise ValueError(f"failover_after_s must be > 0 seconds, not {failover_after_s}")
        if secondary is not None and secondary.name == primary.name:
            raise ValueError(f"primary and secondary are both {primary.name!r}; fail over to a different source")
        self.primary = primary
        self.secondary = secondary
        self.failover_after_s = failover_after_s
        self.on_notice = on_notice
        self.active: str = primary.name
        self.notices: list[str] = []
        self._clock = clock
        self._sources = {s.name: s for s in (primary, secondary) if s is not None}
        self._arrivals: queue.SimpleQueue[tuple[str, pl.DataFrame, float]] = queue.SimpleQueue()
        #: Bars received but not delivered yet, by source: the active one's until the next poll, the
        #: inactive one's while they are newer than what was delivered (the bars a switch would need).
        self._pending: dict[str, list[pl.DataFrame]] = {name: [] for name in self._sources}
        self._last_bar_at: dict[str, float | None] = dict.fromkeys(self._sources)
        self._delivered_through: dict[str, int] = {}  # symbol -> last bar time delivered, ns
        self._started_at = 0.0
        self._poll_lock = threading.Lock()

    def start(self) -> None:
        self._started_at = self._clock()
        for name, source in self._sources.items():
            source.start(self._sink_for(name))

    def stop(self) -> None:
        for source in self._sources.values():
            source.stop()

    def reconnect(self) -> list[str]:
        """Restart the sources that ended with an error or have been quiet for `failover_after_s` (the active one
        when none has: the caller saw stale bars); returns their names. Sources without `restart` are skipped."""
        now = self._clock()
        troubled = [name for name, source in self._sources.items()
                    if getattr(source, "error", None) or self._quiet_for(name, now) >= self.failover_after_s]  # fmt: skip
        restarted = []
        for name in troubled or [self.active]:
            restart = getattr(self._sources[name], "restart", None)
            if restart is not None:
                restart()
                restarted.append(name)
        return restarted

    def _sink_for(self, name: str) -> BarSink:
        def sink(frame: pl.DataFrame) -> None:
            self._arrivals.put((name, frame, self._clock()))

        return sink

    def poll(self) -> pl.DataFrame:
        """Every bar of the active source since the last poll, one row per (symbol, time), sorted by time, symbol."""
        with self._poll_lock:
            self._drain_arrivals()
            self._maybe_switch()
            return self._deliver()

    def _drain_arrivals(self) -> None:
        while True:
            try:
                name, frame, arrived_at = self._arrivals.get_nowait()
            except queue.Empty:
                return
            if frame.height:
                self._pending[name].append(frame)
                self._last_bar_at[name] = arrived_at

    def _quiet_for(self, name: str, now: float) -> float:
        last = self._last_bar_at[name]
        return now - (self._started_at if last is None else last)

    def _maybe_switch(self) -> None:
        if self.secondary is None:
            return
        now = self._clock()
        current = self.active
        other = self.secondary.name if current == self.primary.name else self.primary.name
        quiet = self._quiet_for(current, now)
        if quiet < self.failover_after_s or self._quiet_for(other, now) >= self.failover_after_s:
            return
        why = f"{current} quiet for {quiet:.0f} s"
        error = getattr(self._sources[current], "error", None)
        if error:
            why += f" ({error})"
        if other == self.primary.name:
            self._announce(f"{other} is back: {why}, switching back to {other}")
        else:
            self._announce(f"{why}: failing over to {other}")
        self.active = other

    def _announce(self, notice: str) -> None:
        log.warning("%s", notice)
        self.notices.append(notice)
        if self.on_notice is not None:
            try:
                self.on_notice(notice)
            except Exception:  # an observer's bug must not stop the bars
                log.exception("the on_notice hook failed on %r", notice)

    def _deliver(self) -> pl.DataFrame:
        frames, self._pending[self.active] = self._pending[self.active], []
        bars = self._unseen(pl.concat(frames, how="vertical_relaxed")) if frames else empty_bars()
        bars = bars.unique(subset=["symbol", "event_time_ns"], keep="first", maintain_order=True)
        bars = bars.sort(["event_time_ns", "symbol"])
        if bars.height:
            newest = bars.group_by("symbol").agg(pl.col("event_time_ns").max())
            self._delivered_through.update(zip(newest["symbol"].to_list(), newest["event_time_ns"].to_list(),
                                               strict=True))  # fmt: skip
        for name, held in self._pending.items():
            if name != self.active and held:
                self._pending[name] = [f for f in (self._unseen(frame) for frame in held) if f.height]
        return bars

    def _unseen(self, bars: pl.DataFrame) -> pl.DataFrame:
        """The bars newer than the last one delivered for their symbol: a repeat or a late bar would break
        every per-symbol series downstream, which assumes time moves forward."""
        if not self._delivered_through:
            return bars
        through = pl.DataFrame(
            {"symbol": list(self._delivered_through), "_through": list(self._delivered_through.values())},
            schema={"symbol": pl.Utf8, "_through": pl.Int64},
        )
        joined = bars.join(through, on="symbol", how="left", maintain_order="left")
        newer = pl.col("_through").is_null() | (pl.col("event_time_ns") > pl.col("_through"))
        return joined.filter(newer).drop("_through")
