"""`utp engine NAME --session ID --nats URL`: one engine of a JetStream session in a process of its own.

The daemon leaves the engines of `bus.remote_engines` to such processes (`utp core --nats URL --set
bus.remote_engines=[risk]`). The process joins the session by its id: the session's manifest in the stream
gives the configuration, the subject root and where the session's events start, so it needs no configuration
of its own. It runs the engine exactly as the daemon would (the same runner: durable consumers, state and the
stream positions it consumed committed together in its own LMDB folder, outputs published before the commit,
acks after it), so a SIGKILL of the process, or of the daemon, loses nothing and places nothing twice: a
restarted process resumes from its commit. A watchdog restarts the engine from its checkpoint when a step
fails, and a step that keeps failing goes to the dead letters (bus.max_deliveries).

An engine of `bus.partitions` (alpha, features) may run in several such processes at once: they share its
symbol partitions through leases in the NATS server (`core.partitions`), each running its partitions as engines
of their own, and a process that stops or dies hands its partitions to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from utp.core.config import REMOTE_ENGINES, ConfigError
from utp.core.partitions import Partition, PartitionLeases
from utp.core.runtime import EngineRunner

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("engine", help="run one engine of a JetStream session in a process of its own")
    parser.add_argument("name", choices=REMOTE_ENGINES, help="the engine (one of the session's bus.remote_engines)")
    parser.add_argument("--session", required=True, metavar="ID", help="the session (utp ctl status names it)")
    parser.add_argument("--nats", metavar="URL", default="nats://127.0.0.1:4222", help="the NATS server")
    parser.add_argument("--stream", default="UTP", help="the JetStream stream (bus.stream)")
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="the engine's state folder (its own)")
    parser.add_argument("--restart-cooldown", type=float, default=5.0, metavar="S",
                        help="seconds between restarts of a failed engine (default 5)")  # fmt: skip
    parser.add_argument("--log-level", default="INFO")


def run_command(args: argparse.Namespace) -> int:
    from utp.daemon.replay import ReplayError

    try:
        return asyncio.run(run_engine(args.name, args.session, args.nats, args.stream, Path(args.data_dir),
                                      restart_cooldown_s=args.restart_cooldown))  # fmt: skip
    except (ReplayError, ConfigError) as exc:
        print(f"utp engine: {exc}", file=sys.stderr)
        return 2


async def run_engine(name: str, session_id: str, url: str, stream: str, data_dir: Path, *,
                     restart_cooldown_s: float = 5.0) -> int:  # fmt: skip
    """Run engine `name` of session `session_id` until it has processed the whole session or is told to stop."""
    from utp.core.clock import WallClock
    from utp.core.controls import ControlState
    from utp.core.jetstream import JetStreamBus
    from utp.daemon.replay import find_session
    from utp.daemon.session import MarketData, Session, freeze_startup_heap, live_market_data
    from utp.storage.state import ImmediateCheckpointer, StateStore
    from utp.v1 import events_pb2 as pb

    manifest = await find_session(url, session_id, stream)
    from utp.core.config import load_config

    config = load_config(environ={}, documents=[manifest.config_json])
    if name not in config.bus.remote_engines:
        raise ConfigError(f"session {session_id} runs {name} in its daemon (bus.remote_engines is "
                          f"{config.bus.remote_engines or 'empty'}): two of one engine would both act")  # fmt: skip
    # Execution stays in the daemon: no broker is reached from here.
    config = msgspec.structs.replace(config, broker=msgspec.structs.replace(config.broker, name="simulated"))
    store = StateStore(data_dir / "state", fsync=config.state.fsync)
    identity = {"session_id": session_id, "engine": name, "stream": stream, "subject_root": manifest.subject_root}
    recorded = store.meta("engine")
    if recorded is None:
        store.set_meta("engine", identity)
    elif recorded != identity:
        store.close()
        raise ConfigError(f"{data_dir} holds the state of {recorded}; use another --data-dir")
    bus = JetStreamBus(url, stream=stream, subject_root=manifest.subject_root, client_name=f"utp-engine-{name}",
                       duplicate_window_s=config.bus.duplicate_window_s, start_after=manifest.start_after,
                       deliver_in_process=config.bus.deliver_in_process)  # fmt: skip
    await bus.connect()
    market_data = live_market_data(config) if config.data.primary else MarketData.from_config(config)

    def runner_of(partition: Partition | None) -> EngineRunner:
        return Session(config, bus=bus, clock=WallClock(), market_data=market_data,
                       controls=ControlState(execution_approved=config.approve_execution_on_start),
                       checkpointer=ImmediateCheckpointer(store), status_interval_s=config.status_interval_s,
                       partition=partition).remote_runners[name]  # fmt: skip

    if name in config.bus.partitions:
        try:
            # Leases per session: a later session starts with every partition free and none done.
            bucket = "utp-partitions-" + re.sub(r"[^A-Za-z0-9_-]", "_", session_id)
            return await run_partitions(name, config, bus, bucket, runner_of, restart_cooldown_s=restart_cooldown_s)
        finally:
            await bus.close()
            store.close()
    runner = runner_of(None)
    await runner.start()
    freeze_startup_heap()
    watching, stop = _watched(lambda: [runner], restart_cooldown_s)
    print(f"utp engine {name}: session {session_id} on {url} (stream {stream}, subjects {manifest.subject_root}.>), "
          f"state in {data_dir}", flush=True)  # fmt: skip

    async def finished() -> None:
        # A restart after a failure makes a new `finished`: done when the current one is set and not failed.
        while not (runner.finished.is_set() and runner.state == pb.ENGINE_STATE_FINISHED):
            await asyncio.wait([asyncio.create_task(runner.finished.wait()), asyncio.create_task(stop.wait())],
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if stop.is_set():
                return
            await asyncio.sleep(0.1)

    try:
        await finished()
        if runner.state == pb.ENGINE_STATE_FINISHED:
            log.info("%s processed the whole session", name)
            print(f"utp engine {name}: the session is over; everything is processed", flush=True)
    finally:
        watching.cancel()
        await runner.stop()
        await bus.close()
        store.close()
    return 0


def _watched(runners: Callable[[], list[EngineRunner]], cooldown_s: float) -> tuple[asyncio.Task, asyncio.Event]:
    """A watchdog that restarts failed `runners` from their checkpoints, and an event set by SIGTERM or SIGINT."""
    from utp.daemon.watchdog import Check, Watchdogs, failed_engines, restart_failed_engines

    watchdogs = Watchdogs([Check("engines", failed_engines(runners), restart_failed_engines(runners), interval_s=1.0,
                                 cooldown_s=cooldown_s)],
                          lambda alert: log.warning("%s", alert.message))  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return asyncio.create_task(watchdogs.run_forever()), stop


async def run_partitions(name: str, config: Any, bus: Any, bucket: str,
                         make_runner: Callable[[Partition | None], EngineRunner], *, restart_cooldown_s: float = 5.0) -> int:  # fmt: skip
    """Run the partitions of engine `name` this process leases, until every partition has processed the whole
    session or the process is told to stop (it then gives its partitions back)."""
    from utp.daemon.session import freeze_startup_heap
    from utp.v1 import events_pb2 as pb

    count = config.bus.partitions[name]
    lease_s = config.bus.partition_lease_s
    worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    leases = PartitionLeases(bus.js, bucket, name, count, worker, lease_s)
    await leases.open()
    runners: dict[int, EngineRunner] = {}
    marked: set[int] = set()
    watching, stop = _watched(lambda: list(runners.values()), restart_cooldown_s)
    print(f"utp engine {name}: worker {worker} shares {count} partitions (leases of {lease_s:g} s)", flush=True)

    async def give_up(k: int) -> None:
        runner = runners.pop(k, None)
        if runner is not None:
            await runner.stop()
            log.info("%s: stopped partition %d", name, k)

    async def one_round() -> bool:
        """Lease, start and stop partitions; True once every partition has processed the whole session."""
        turn = await leases.rebalance()
        for k in turn.lost:
            await give_up(k)
        for k in turn.surplus:
            await give_up(k)
            await leases.release(k)
            print(f"utp engine {name}: gave partition {k} back", flush=True)
        for k in turn.gained:
            runner = runners[k] = make_runner(Partition(k, count))
            runner.consumer_tag = worker
            runner.fence = lambda k=k: None if leases.holds(k) else f"its lease of partition {k} ran out"
            await runner.start()
            freeze_startup_heap()  # once per process: later calls leave the heap as it is
            print(f"utp engine {name}: took partition {k} (through={runner.through})", flush=True)
        for k, runner in runners.items():
            if k not in marked and runner.state == pb.ENGINE_STATE_FINISHED:
                await leases.mark_done(k)
                marked.add(k)
        return len(await leases.done()) == count

    try:
        while not stop.is_set():
            try:
                if await one_round():
                    print(f"utp engine {name}: the session is over; every partition is processed", flush=True)
                    break
            except Exception as exc:  # noqa: BLE001 - the NATS server away a moment: its runners fence themselves
                log.warning("%s: leasing partitions failed (%s: %s); trying again", name, type(exc).__name__, exc)
            try:
                async with asyncio.timeout(lease_s / 3):
                    await stop.wait()
            except TimeoutError:
                pass
    finally:
        watching.cancel()
        for k in list(runners):
            await give_up(k)
        try:
            await leases.leave()
        except Exception as exc:  # noqa: BLE001 - the leases then expire by themselves
            log.warning("%s: could not give the partitions back (%s); their leases expire in %g s", name, exc, lease_s)
    return 0
