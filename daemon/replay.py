"""Deterministic replay: `utp replay --session ID` rebuilds a past session over JetStream from its log.

A session's log is everything under its subject root after the stream position it started at: its
`SessionManifest` (the configuration it ran with), the bars its market data engine published, the operator's
commands, and for each engine that takes commands, where in its steps it applied them (`CommandsApplied`).
Replay runs the same engine graph in-process on a simulated clock: the recorded bars one bar time at a time,
each engine's commands applied between the same two steps as in the session. Decisions depend on the bars
and on where commands took effect, never on batch sizes or delivery timing, so the replay produces the
session's decision log again; what it produced is compared with what the session recorded, event by event.

What can make a replay differ, and is then reported: a session whose models changed while it ran (the
replay serves the configuration's models as they are now), and a session at a real broker (its fills came
from the broker; the replay fills at the simulated one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import nats.js.errors
import numpy as np
import polars as pl
from google.protobuf.message import DecodeError, Message

from utp.core.batch import END, Batch
from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock
from utp.core.config import Config, ConfigError, load_config
from utp.core.controls import ControlState
from utp.core.jetstream import events_in, read_stored
from utp.core.kinds import KINDS, TIME
from utp.core.subjects import APPLIED_TOKEN, MANIFEST_TOKEN, Subjects
from utp.core.universe import Universe
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

#: The decision log a replay reproduces, in the graph's order.
DECISION_KINDS = ("prediction", "alpha_signal", "scored_signal", "portfolio_target", "risk_decision",
                  "order_intent", "order", "fill")  # fmt: skip


class ReplayError(RuntimeError):
    """The session cannot be replayed (not found, nothing recorded); the message says why."""


@dataclass
class RecordedSession:
    """What a session's log holds."""

    manifest: pb.SessionManifest
    #: Stream sequences read: (start_after, last].
    last_sequence: int
    bars: pl.DataFrame
    commands: dict[str, Message]
    #: Per engine: (through_ns, command event ids) in the order the records were written.
    applied: dict[str, list[tuple[int, list[str]]]]
    #: Per decision kind: event id -> serialized event, first publication kept (a re-publish is the same event).
    events: dict[str, dict[str, bytes]]


@dataclass
class KindComparison:
    recorded: int = 0
    replayed: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.missing or self.extra or self.different)


@dataclass
class ReplayReport:
    session_id: str
    bars: int
    bar_times: int
    commands_applied: int
    kinds: dict[str, KindComparison]
    notes: list[str]

    @property
    def identical(self) -> bool:
        return all(k.identical for k in self.kinds.values())

    def summary(self) -> dict[str, Any]:
        return {
            "session": self.session_id, "bars": self.bars, "bar_times": self.bar_times,
            "commands_applied": self.commands_applied, "identical": self.identical,
            "kinds": {name: {"recorded": k.recorded, "replayed": k.replayed, "missing": len(k.missing),
                             "extra": len(k.extra), "different": len(k.different)} for name, k in self.kinds.items()},
        }  # fmt: skip


# -- reading the log ---------------------------------------------------------------------------------------
async def _manifests(js: Any, stream: str, last: int | None) -> list[pb.SessionManifest]:
    """Every session manifest in the stream up to `last`, oldest first (one subject root per stream subject)."""
    info = await js.stream_info(stream)
    found: list[tuple[int, pb.SessionManifest]] = []
    for subject in info.config.subjects or []:
        root = subject[:-2] if subject.endswith(".>") else ""
        if not root or "." in root or "*" in root:
            continue
        for m in await read_stored(js, stream, f"{root}.{MANIFEST_TOKEN}", 1, last):
            try:
                found.append((m.metadata.sequence.stream, pb.SessionManifest.FromString(m.data)))
            except DecodeError as exc:
                log.error("replay: unreadable session manifest at %d: %s", m.metadata.sequence.stream, exc)
    return [manifest for _, manifest in sorted(found, key=lambda item: item[0])]


async def list_sessions(url: str, stream: str = "UTP") -> list[pb.SessionManifest]:
    """Every session manifest in the stream, oldest first."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        js = nc.jetstream(timeout=10.0)
        try:
            return await _manifests(js, stream, None)
        except nats.js.errors.NotFoundError as exc:
            raise ReplayError(f"no stream {stream!r} on {url}") from exc
    finally:
        await nc.close()


async def find_session(url: str, session_id: str, stream: str = "UTP") -> pb.SessionManifest:
    """The manifest of a session; ReplayError naming the latest sessions when there is none."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        js = nc.jetstream(timeout=10.0)
        try:
            manifests = await _manifests(js, stream, None)
        except nats.js.errors.NotFoundError as exc:
            raise ReplayError(f"no stream {stream!r} on {url}") from exc
    finally:
        await nc.close()
    return _pick(manifests, session_id, stream)


def _pick(manifests: list[pb.SessionManifest], session_id: str, stream: str) -> pb.SessionManifest:
    for manifest in manifests:
        if manifest.session_id == session_id:
            return manifest
    known = ", ".join(m.session_id for m in manifests[-10:]) or "none"
    raise ReplayError(f"no session {session_id!r} in stream {stream!r} (latest sessions: {known})")


async def read_session(url: str, session_id: str, stream: str = "UTP") -> RecordedSession:
    """A session's log, from its manifest to the next session on the same subject root (or the stream's end)."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        js = nc.jetstream(timeout=10.0)
        try:
            info = await js.stream_info(stream)
        except Exception as exc:  # noqa: BLE001 - said as it is
            raise ReplayError(f"stream {stream!r} on {url}: {exc}") from exc
        end = int(info.state.last_seq)
        manifests = await _manifests(js, stream, end)
        manifest = _pick(manifests, session_id, stream)
        later = [m.start_after for m in manifests if m.subject_root == manifest.subject_root
                 and m.start_after > manifest.start_after]  # fmt: skip
        last = min(later) if later else end
        subjects = Subjects(manifest.subject_root)
        messages = await read_stored(js, stream, subjects.everything(), manifest.start_after + 1, last)
    finally:
        await nc.close()
    return _decode(manifest, last, subjects, messages)


def _decode(manifest: pb.SessionManifest, last: int, subjects: Subjects, messages: list[Any]) -> RecordedSession:
    bars: list[Message] = []
    seen_bars: set[str] = set()
    commands: dict[str, Message] = {}
    applied: dict[str, list[tuple[int, list[str]]]] = defaultdict(list)
    events: dict[str, dict[str, bytes]] = {k: {} for k in DECISION_KINDS}
    for m in messages:
        parts = m.subject.split(".", 2)
        if len(parts) < 3:
            continue
        token = parts[1]
        try:
            if token == APPLIED_TOKEN:
                record = pb.CommandsApplied.FromString(m.data)
                applied[record.engine].append((record.through_time_ns, list(record.event_ids)))
            elif token == "bar":
                for bar in events_in(KINDS[token], m):
                    if bar.header.event_id not in seen_bars:  # type: ignore[attr-defined]
                        seen_bars.add(bar.header.event_id)  # type: ignore[attr-defined]
                        bars.append(bar)
            elif token == "control_command":
                for command in events_in(KINDS[token], m):
                    commands.setdefault(command.header.event_id, command)  # type: ignore[attr-defined]
            elif token in events:
                for event in events_in(KINDS[token], m):
                    events[token].setdefault(event.header.event_id, event.SerializeToString())  # type: ignore[attr-defined]
        except (DecodeError, ValueError) as exc:
            log.error("replay: unreadable message on %s at %d: %s", m.subject, m.metadata.sequence.stream, exc)
    frame = KINDS["bar"].to_frame(bars) if bars else KINDS["bar"].empty_frame()
    frame = frame.sort(TIME, maintain_order=True)
    return RecordedSession(manifest, last, frame, commands, dict(applied), events)


# -- rebuilding the session ----------------------------------------------------------------------------
def session_config(manifest: pb.SessionManifest) -> Config:
    """The session's configuration, on the in-process bus and the simulated broker."""
    try:
        config = load_config(environ={}, documents=[manifest.config_json])
    except ConfigError as exc:
        raise ReplayError(f"session {manifest.session_id}: its configuration no longer loads: {exc}") from exc
    return msgspec.structs.replace(
        config,
        # Every engine in-process, whole: the bars as the session's consumers merged them (partitions in order).
        bus=msgspec.structs.replace(config.bus, nats_url="", remote_engines=[], partitions={}),
        broker=msgspec.structs.replace(config.broker, name="simulated"),
    )


def _market_data(config: Config, bars: pl.DataFrame) -> Any:
    from utp.daemon.session import MarketData, live_market_data
    from utp.storage.datasets import STORE_DATASET, Dataset, dataset

    md = config.market_data
    if config.data.primary:
        ds = live_market_data(config).dataset
    elif md.dataset == STORE_DATASET:
        times = np.unique(bars[TIME].to_numpy())
        interval = int(np.diff(times).min()) if times.size > 1 else 86_400 * 10**9
        ds = Dataset(STORE_DATASET, "the bar store, as recorded", tuple(sorted(set(bars["symbol"].to_list()))), interval,
                     periods_per_year=252 * max(1.0, 390 * 60 * 10**9 / interval), _load=lambda: bars)  # fmt: skip
    else:
        ds = dataset(md.dataset)
    symbols = tuple(md.symbols) or ds.symbols
    return MarketData(ds, Universe(symbols), bars)


async def replay(recorded: RecordedSession) -> ReplayReport:
    """Run the recorded session again and compare its decision log with the recorded one."""
    from utp.daemon.session import Session

    manifest = recorded.manifest
    config = session_config(manifest)
    notes: list[str] = []
    original = json.loads(manifest.config_json)
    if original.get("broker", {}).get("name", "simulated") != "simulated":
        notes.append(f"the session's orders went to {original['broker']['name']}; the replay fills them at the "
                     "simulated broker, so orders and fills after the first fill may differ")  # fmt: skip
    market_data = _market_data(config, recorded.bars)
    bus = InProcessBus()
    clock = SimulatedClock()
    initial = ControlState(execution_approved=config.approve_execution_on_start)
    session = Session(config, bus=bus, clock=clock, market_data=market_data, controls=initial)
    replayed: dict[str, dict[str, bytes]] = {k: {} for k in DECISION_KINDS}

    async def record(kind: str, messages: list[Message]) -> None:
        for message in messages:
            replayed[kind].setdefault(message.header.event_id, message.SerializeToString())  # type: ignore[attr-defined]

    await bus.tap(record, lambda kind: kind in replayed)
    await session.start()
    runners = {r.engine.name: r for r in session.runners}
    # Each engine's commands, by the step after which they took effect.
    schedule: list[tuple[int, str, list[Message]]] = []
    for engine, records in recorded.applied.items():
        if engine not in runners:
            notes.append(f"commands applied by {engine}, which the replayed graph does not have, are left out")
            continue
        for through, ids in records:
            found = [recorded.commands[i] for i in ids if i in recorded.commands]
            if len(found) < len(ids):
                notes.append(f"{len(ids) - len(found)} command(s) {engine} applied are not in the log")
            if found:
                schedule.append((through, engine, found))
    schedule.sort(key=lambda item: item[0])  # stable: an engine's records keep their order
    applied = 0

    async def apply_through(limit: int) -> None:
        nonlocal applied
        while schedule and schedule[0][0] < limit:
            _, engine, commands = schedule.pop(0)
            await runners[engine].apply_commands("control_command", KINDS["control_command"].to_frame(commands))
            applied += len(commands)

    bars = recorded.bars
    times = bars[TIME].to_numpy()
    starts = np.flatnonzero(np.r_[True, times[1:] != times[:-1]]) if times.size else np.array([], dtype=np.int64)
    bounds = np.r_[starts, times.size]
    for i in range(starts.size):
        t = int(times[starts[i]])
        await apply_through(t)  # every command applied after the step through an earlier time
        clock.observe(t)
        await bus.publish(Batch("bar", "market_data", bars.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])), t))
    await apply_through(END)
    await bus.publish(Batch("bar", "market_data", KINDS["bar"].empty_frame(), END))
    await asyncio.gather(*(r.finished.wait() for r in session.runners))
    failed = [r.last_error for r in session.runners if r.state == pb.ENGINE_STATE_FAILED]
    if failed:
        raise ReplayError("the replay failed: " + "; ".join(failed))
    await session.stop()
    return ReplayReport(manifest.session_id, bars.height, int(starts.size), applied,
                        {k: compare(recorded.events[k], replayed[k]) for k in DECISION_KINDS}, notes)  # fmt: skip


def compare(recorded: dict[str, bytes], replayed: dict[str, bytes]) -> KindComparison:
    """Event by event, by id; the same id with other content is different."""
    return KindComparison(
        recorded=len(recorded),
        replayed=len(replayed),
        missing=sorted(recorded.keys() - replayed.keys()),
        extra=sorted(replayed.keys() - recorded.keys()),
        different=sorted(i for i in recorded.keys() & replayed.keys() if recorded[i] != replayed[i]),
    )


# -- the command -------------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    parser = sub.add_parser("replay", help="rebuild a past session from its JetStream log and compare its decisions")
    parser.add_argument("--session", metavar="ID", help="the session (GetStatus.session_id); without it, list sessions")
    parser.add_argument("--nats", metavar="URL", default="nats://127.0.0.1:4222", help="the NATS server")
    parser.add_argument("--stream", default="UTP", help="the JetStream stream (bus.stream)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON only")
    parser.add_argument("--show", type=int, default=5, metavar="N", help="event ids shown per difference")
    parser.set_defaults(log_level="WARNING")


def run_command(args: argparse.Namespace) -> int:
    try:
        if not args.session:
            manifests = asyncio.run(list_sessions(args.nats, args.stream))
            if not manifests:
                print(f"no sessions in stream {args.stream!r}")
            for m in manifests:
                print(f"{m.session_id}  root={m.subject_root}  start_after={m.start_after}  version={m.version}")
            return 0
        recorded = asyncio.run(read_session(args.nats, args.session, args.stream))
        report = asyncio.run(replay(recorded))
    except ReplayError as exc:
        print(f"utp replay: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"session {report.session_id}: {report.bars} bars at {report.bar_times} bar times, "
              f"{report.commands_applied} command applications replayed")  # fmt: skip
        for name, k in report.kinds.items():
            verdict = "identical" if k.identical else "DIFFERS"
            print(f"  {name:<17} recorded {k.recorded:>7}  replayed {k.replayed:>7}  {verdict}")
            for label, ids in (("missing", k.missing), ("extra", k.extra), ("different", k.different)):
                if ids:
                    print(f"    {label} {len(ids)}: {', '.join(ids[: args.show])}{' ...' if len(ids) > args.show else ''}")
        for note in report.notes:
            print(f"  note: {note}")
        print("the replay reproduces the session's decision log" if report.identical
              else "the replay DIFFERS from the session's decision log")  # fmt: skip
    print(json.dumps(report.summary()))
    return 0 if report.identical else 1
