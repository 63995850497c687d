"""Load and soak: 500 symbols of one-minute bars through the full engine graph over NATS JetStream on loopback.

    python bench/live_latency.py                   # 500 symbols: as fast as it goes, then at a fixed rate
    python bench/live_latency.py --soak-minutes 30 # and a 30-minute soak at the fixed rate (RSS at start and end)

The bars are real: GOOG's daily OHLCV (the `backtesting` package) as one-minute bars, each symbol a copy scaled
and shifted in time by its own number of rows, so that the symbols' signals differ. Every engine of a paper
session (market data, features, alpha, ensemble, portfolio, risk, exit, execution) runs in this process on the
JetStream bus, the wall clock and the simulated broker, as `utp core --nats` runs them, and, as there, commits its
checkpoint, bus positions and records to hot state (LMDB, in a temporary folder) `state.checkpoint_interval_ms`
after the steps it covers (`--checkpoint-interval-ms 0`: after every step it applies, as before stop 25), and the
process freezes its startup heap once the engines have started (`freeze_startup_heap`).
`--no-state` leaves the checkpoints out (the engines and the bus alone: what the figures of stops before 24 counted);
`--fsync` syncs every commit to disk, the daemon's default (`state.fsync`), which the figures otherwise leave out.

Latency is bar publish -> risk decision: for every risk decision, the time the bus held it (its publish acked by
the server) minus the time market data began to publish its bar time's bars (one clock, stamped by the bus the
session runs on). Engines that share the process take a batch as it is published, before the server has stored
it (they commit nothing before it is), so the decision may be made before the bar is stored; the figure counts
from the start of the bar's publish all the same (`--over-the-server`: every batch goes through the server, for
comparison). `sent_p50_ms` and `sent_p99_ms` count to the decision handed to the connection instead (made and sent,
not yet acked): the engines' share, apart from the wait for the server's ack and for the event loop to read it.
`bars_per_s` is the bars of the run over its wall time, from the session's start to its end. Lost and duplicated
compare the decisions with those of the same graph on the in-process bus and a simulated clock (the reference):
a decision of the reference never seen is lost, one seen twice is duplicated (seen by a tap on the bus). Last line,
JSON: `{"symbols": 500, "bars_per_s": .., "p50_ms": .., "p99_ms": .., "lost": 0, "duplicated": 0, ...}` where
bars_per_s is the as-fast-as-possible run and the latencies are the fixed-rate run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import tempfile
import time
import uuid
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from utp.core.batch import Batch
from utp.core.bus import Bus, InProcessBus
from utp.core.clock import SimulatedClock, WallClock
from utp.core.config import Config, load_config
from utp.core.controls import ControlState
from utp.core.jetstream import JetStreamBus
from utp.core.universe import Universe
from utp.daemon.session import MarketData, Session, freeze_startup_heap
from utp.storage.datasets import BAR_COLUMNS, Dataset, dataset
from utp.storage.state import ImmediateCheckpointer, StateStore

MINUTE_NS = 60 * 10**9
START_NS = 1_704_205_800 * 10**9  # 2024-01-02 14:30 UTC, the open


def minute_bars(symbols: int, bar_times: int) -> MarketData:
    """`bar_times` one-minute bars of `symbols` symbols from GOOG's daily bars (see the module's docstring)."""
    goog = dataset("goog").bars(("GOOG",))
    n = goog.height
    names = tuple(f"S{i:03d}" for i in range(symbols))
    rows = np.arange(bar_times)
    frames = []
    for i, name in enumerate(names):
        take = (rows + 7 * i) % n
        scale = 1.0 + i / symbols
        part = goog[take]
        frames.append(pl.DataFrame({
            "event_time_ns": START_NS + rows * MINUTE_NS, "symbol": [name] * bar_times,
            **{c: part[c].to_numpy() * scale for c in ("open", "high", "low", "close")}, "volume": part["volume"].to_numpy(),
        }))  # fmt: skip
    bars = pl.concat(frames).sort("event_time_ns", maintain_order=True).select(BAR_COLUMNS).cast(goog.schema)
    one_minute = Dataset("minutes", "GOOG daily bars replayed as one-minute bars of many symbols", names, MINUTE_NS,
                         periods_per_year=252 * 390, _load=lambda: bars)  # fmt: skip
    return MarketData(one_minute, Universe(names), bars)


def config(rate: float, *, fsync: bool = False, checkpoint_interval_ms: int | None = None) -> Config:
    interval = {} if checkpoint_interval_ms is None else {"state.checkpoint_interval_ms": checkpoint_interval_ms}
    return load_config(environ={}, overrides={
        "market_data.replay_rate": rate, "market_data.batch_bar_times": 1,
        # One-minute bars around the clock and a universe with no history: the session and screen filters would
        # refuse every entry, and the decisions are what is measured.
        "risk.filters.market_hours": False, "risk.universe.enabled": False, "risk.filters.min_avg_volume": 0.0,
        "risk.max_positions": 500, "risk.max_total_exposure": 1000000000000.0, "risk.max_orders_per_minute": 0,
        "risk.max_orders_per_symbol_day": 0, "state.fsync": fsync, **interval,
    })  # fmt: skip


class Tap:
    """Which risk decisions reached a subscriber on the bus (to count lost and duplicated ones), when each bar time's
bars began to be published and when each decision was stored (monotonic ns, `TimedBus`), and the memory in use
once the first decision came (the soak's start: every engine running and its kernels compiled).

Its own records stay small so that the soak's RSS is the session's: bar times are kept for the last
KEEP_BAR_TIMES only (a decision later than that counts as `late`, its latency unknown), and each decision is a
float, and its id outside the soak."""

    KEEP_BAR_TIMES = 120

    def __init__(self, *, keep_ids: bool = True) -> None:
        #: Whether to count decisions by id (lost, duplicated); the soak does not, so that its RSS is the session's.
        self.keep_ids = keep_ids
        self.bar_published: dict[int, int] = {}  # bar time -> when its bars began to be published; oldest first
        self.latencies_ms = array("d")
        #: Bar publish -> the decision handed to the connection (sent, not yet acked): the engines' share of the latency.
        self.sent_ms = array("d")
        self.late = 0
        self.decision_ids: Counter[str] = Counter()
        self.first_bar_ns = 0
        self.rss_warm_mb = 0.0  # once the first decision is made: every engine is running and compiled
        #: The memory in use at the first decision after each whole minute since the first: flat, or growing?
        self.rss_by_minute_mb: list[float] = []
        self._first_decision_ns = 0

    def publishing_bars(self, times: np.ndarray) -> None:
        now = time.monotonic_ns()
        if not self.first_bar_ns:
            self.first_bar_ns = now
        for t in np.unique(times).tolist():
            if t not in self.bar_published:
                self.bar_published[t] = now
                while len(self.bar_published) > self.KEEP_BAR_TIMES:
                    del self.bar_published[next(iter(self.bar_published))]

    def _since_bars(self, times: np.ndarray, now: int, into: array) -> int:
        """Append to `into` the ms from each decision's bars' publish to `now`; the number of decisions whose bar
        time is no longer kept."""
        unknown = 0
        for t in times.tolist():
            published = self.bar_published.get(t)
            if published is not None:
                into.append((now - published) / 1e6)
            else:
                unknown += 1
        return unknown

    def decisions_sent(self, times: np.ndarray) -> None:
        self._since_bars(times, time.monotonic_ns(), self.sent_ms)

    def decisions_stored(self, times: np.ndarray) -> None:
        now = time.monotonic_ns()
        if not self.rss_warm_mb:
            self.rss_warm_mb = _rss_mb()
            self._first_decision_ns = now
        elif now - self._first_decision_ns >= (len(self.rss_by_minute_mb) + 1) * 60 * 10**9:
            self.rss_by_minute_mb.append(_rss_mb())
        self.late += self._since_bars(times, now, self.latencies_ms)

    async def on_events(self, kind: str, messages: list) -> None:
        if not self.keep_ids:
            return
        for m in messages:
            self.decision_ids[m.header.event_id] += 1


class TimedBus(JetStreamBus):
    """The JetStream bus, stamping when bars begin to be published and when risk decisions are stored."""

    def __init__(self, url: str, tap: Tap, **options: object) -> None:
        super().__init__(url, **options)  # type: ignore[arg-type]
        self.timing = tap

    async def publish(self, batch: Batch) -> None:
        if batch.kind == "bar" and batch.frame.height:
            self.timing.publishing_bars(batch.frame["event_time_ns"].to_numpy())
        await super().publish(batch)
        if batch.kind == "risk_decision" and batch.frame.height:
            self.timing.decisions_stored(batch.frame["event_time_ns"].to_numpy())

    def _deliver_in_process(self, batch: Batch, subject: str, batch_id: str) -> asyncio.Future | None:
        # Called once every part of a batch is handed to the connection, before the acks are awaited.
        if batch.kind == "risk_decision" and batch.frame.height:
            self.timing.decisions_sent(batch.frame["event_time_ns"].to_numpy())
        return super()._deliver_in_process(batch, subject, batch_id)


async def run_session(market_data: MarketData, rate: float, bus: Bus, tap: Tap | None = None, *,
                      state: Path | None = None, fsync: bool = False,
                      checkpoint_interval_ms: int | None = None) -> tuple[Tap, float, dict]:
    """One session of the graph; over JetStream with `state`, every engine commits its checkpoint, positions and records
    to hot state in that folder, as `utp core --nats` does (`ImmediateCheckpointer`, `state.checkpoint_interval_ms`)."""
    simulated = isinstance(bus, InProcessBus)
    tap = tap or Tap()
    if not simulated:
        await bus.connect()  # type: ignore[attr-defined]
    store = StateStore(state, fsync=fsync) if state is not None and not simulated else None
    settings = config(rate, fsync=fsync, checkpoint_interval_ms=checkpoint_interval_ms)
    session = Session(settings, bus=bus, clock=SimulatedClock() if simulated else WallClock(),
                      market_data=market_data, controls=ControlState(execution_approved=True),
                      checkpointer=ImmediateCheckpointer(store) if store is not None else None)  # fmt: skip
    await bus.tap(tap.on_events, lambda kind: kind == "risk_decision")
    try:
        await session.start()
        if not simulated:
            freeze_startup_heap()  # as `utp core` does once its engines have started
        started = time.monotonic()
        await session.run()
        elapsed = time.monotonic() - started
        end_rss = _rss_mb()  # at the end of the run, before anything is torn down
        await asyncio.sleep(0.5)  # the tap's last messages
    finally:
        await session.stop()
        if not simulated:
            await bus.close()
        if store is not None:
            store.close()
    if not simulated:
        print(f"batches handed over in process: {bus.handed_in_process}", flush=True)  # type: ignore[attr-defined]
    return tap, elapsed, {"start_rss_mb": tap.rss_warm_mb, "end_rss_mb": end_rss}


def _rss_mb() -> float:
    """Resident memory now (Linux /proc), else the peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def jetstream_bus(url: str, tap: Tap, *, in_process: bool = True) -> TimedBus:
    tag = uuid.uuid4().hex[:8]
    return TimedBus(url, tap, stream=f"BENCH_{tag.upper()}", subject_root=f"bench{tag}", deliver_in_process=in_process)


async def drop_stream(bus: JetStreamBus, url: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(bus.stream)
    except Exception:  # noqa: S110 - best effort: a bench leaves no stream behind when it can
        pass
    await nc.close()


def p50_p99(ms: np.ndarray) -> tuple[float, float]:
    return (float(np.percentile(ms, 50)), float(np.percentile(ms, 99))) if ms.size else (float("nan"), float("nan"))


def latencies(tap: Tap) -> np.ndarray:
    if tap.late:
        print(f"{tap.late} decisions came over {Tap.KEEP_BAR_TIMES} bar times after their bar", flush=True)
    return np.frombuffer(tap.latencies_ms, dtype=np.float64)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default=os.environ.get("UTP_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--bar-times", type=int, default=240, help="bar times of the as-fast-as-possible run")
    parser.add_argument("--rate", type=float, default=2.0, help="bar times per second of the fixed-rate run")
    parser.add_argument("--fixed-bar-times", type=int, default=60, help="bar times of the fixed-rate run")
    parser.add_argument("--over-the-server", action="store_true",
                        help="engines of the process take batches from the server, not as they are published")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="a soak at --rate this long (0: none)")
    parser.add_argument("--no-state", action="store_true",
                        help="engines keep no hot state (no checkpoints): the engines and the bus alone, for comparison")
    parser.add_argument("--fsync", action="store_true", help="hot state synced to disk at every commit (`state.fsync`, "
                        "the daemon's default); without it, safe across a process crash but not a power loss")
    parser.add_argument("--checkpoint-interval-ms", type=int, default=None,
                        help="state.checkpoint_interval_ms (default: the config's); 0 commits after every step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    folder = tempfile.TemporaryDirectory(prefix="utp-bench-state-")

    def hot_state(name: str) -> Path | None:
        return None if args.no_state else Path(folder.name) / name

    result: dict = {"symbols": args.symbols, "in_process": not args.over_the_server, "hot_state": not args.no_state,
                    "fsync": args.fsync}  # fmt: skip
    fast_data = minute_bars(args.symbols, args.bar_times)
    asyncio.run(run_session(minute_bars(args.symbols, 10), 0.0, InProcessBus()))  # kernels loaded, imports done
    reference, no_wire_elapsed, _ = asyncio.run(run_session(fast_data, 0.0, InProcessBus()))
    tap = Tap()
    bus = jetstream_bus(args.nats, tap, in_process=not args.over_the_server)
    tap, elapsed, _ = asyncio.run(run_session(fast_data, 0.0, bus, tap, state=hot_state("fast"), fsync=args.fsync,
                                                checkpoint_interval_ms=args.checkpoint_interval_ms))
    asyncio.run(drop_stream(bus, args.nats))
    bars = fast_data.bars.height
    lost = len(set(reference.decision_ids) - set(tap.decision_ids))
    duplicated = sum(n - 1 for n in tap.decision_ids.values() if n > 1)
    print(f"as fast as possible: {bars} bars ({args.bar_times} bar times x {args.symbols} symbols) in {elapsed:.2f} s = "
          f"{bars / elapsed:,.0f} bars/s; {len(reference.decision_ids)} decisions, lost {lost}, duplicated {duplicated}",
          flush=True)  # fmt: skip
    print(f"the same graph on the in-process bus (no wire): {bars / no_wire_elapsed:,.0f} bars/s", flush=True)
    result.update(bars_per_s=round(bars / elapsed), decisions=len(reference.decision_ids), lost=lost, duplicated=duplicated,
                  no_wire_bars_per_s=round(bars / no_wire_elapsed))  # fmt: skip

    fixed_data = minute_bars(args.symbols, args.fixed_bar_times)
    fixed_reference, _, _ = asyncio.run(run_session(fixed_data, 0.0, InProcessBus()))
    fixed = Tap()
    bus = jetstream_bus(args.nats, fixed, in_process=not args.over_the_server)
    fixed, fixed_elapsed, _ = asyncio.run(run_session(fixed_data, args.rate, bus, fixed, state=hot_state("fixed"),
                                                      fsync=args.fsync, checkpoint_interval_ms=args.checkpoint_interval_ms))  # fmt: skip
    asyncio.run(drop_stream(bus, args.nats))
    ms = latencies(fixed)
    result["lost"] += len(set(fixed_reference.decision_ids) - set(fixed.decision_ids))
    result["duplicated"] += sum(n - 1 for n in fixed.decision_ids.values() if n > 1)
    p50, p99 = p50_p99(ms)
    print(f"fixed rate {args.rate:g} bar times/s ({args.rate * args.symbols:,.0f} bars/s): {ms.size} decisions, "
          f"bar -> decision p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ms.max() if ms.size else float('nan'):.2f} ms",
          flush=True)  # fmt: skip
    sent_p50, sent_p99 = p50_p99(np.frombuffer(fixed.sent_ms, dtype=np.float64))
    print(f"  of which bar -> decision sent (made, handed to the connection, not yet acked): p50 {sent_p50:.2f} ms, "
          f"p99 {sent_p99:.2f} ms", flush=True)  # fmt: skip
    result.update(p50_ms=round(p50, 3), p99_ms=round(p99, 3), sent_p50_ms=round(sent_p50, 3), sent_p99_ms=round(sent_p99, 3),
                  fixed_rate_bars_per_s=args.rate * args.symbols, late=fixed.late)  # fmt: skip

    if args.soak_minutes > 0:
        soak_times = max(1, int(args.soak_minutes * 60 * args.rate))
        soak = Tap(keep_ids=False)
        bus = jetstream_bus(args.nats, soak, in_process=not args.over_the_server)
        soak, soak_elapsed, rss = asyncio.run(run_session(minute_bars(args.symbols, soak_times), args.rate, bus, soak,
                                                          state=hot_state("soak"), fsync=args.fsync,
                                                          checkpoint_interval_ms=args.checkpoint_interval_ms))  # fmt: skip
        asyncio.run(drop_stream(bus, args.nats))
        _, soak_p99 = p50_p99(latencies(soak))
        print(f"soak: {soak_times} bar times over {soak_elapsed / 60:.1f} min; RSS {rss['start_rss_mb']} MB at the first decision, "
              f"{rss['end_rss_mb']} MB at the end; p99 {soak_p99:.2f} ms", flush=True)  # fmt: skip
        print(f"soak: RSS after each minute, MB: {soak.rss_by_minute_mb}", flush=True)
        result.update(soak_minutes=round(soak_elapsed / 60, 1), soak_p99_ms=round(soak_p99, 3), soak_late=soak.late, **rss,
                      rss_by_minute_mb=soak.rss_by_minute_mb)  # fmt: skip
    folder.cleanup()
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
