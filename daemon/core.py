"""The core daemon: one paper session on the chosen bus, its hot state, the operator's flags and watchers.

`utp core` runs it behind the gRPC API (`server.py`). With no options it replays the packaged GOOG bars
at one bar a second on the in-process bus, so a newcomer can watch signals and orders arrive in the
console. With `--nats` the same engines run over JetStream and the session survives being killed: the
restarted daemon resumes every engine from its last commit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from utp.core.batch import Batch
from utp.core.bus import Bus, InProcessBus
from utp.core.clock import WallClock
from utp.core.config import Config
from utp.core.controls import ControlState
from utp.core.jetstream import JetStreamBus
from utp.core.kinds import KINDS
from utp.daemon.session import Session
from utp.storage.state import ORDERS, POSITIONS, DeferredCheckpointer, ImmediateCheckpointer, StateStore
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

#: Kinds the daemon always follows, for GetStatus.
_STATUS_KINDS = frozenset({"engine_status", "account_snapshot", "risk_event"})
#: Risk events after which the daemon halts trading (persisted, so a restart stays halted).
_HALTING = frozenset({pb.RISK_ACTION_KILL_SWITCH, pb.RISK_ACTION_HALT})


class SessionMismatch(RuntimeError):
    """The data folder belongs to a session with other settings."""


@dataclass(eq=False)
class Watcher:
    """One WatchEvents stream: its filters and a bounded queue."""

    kinds: frozenset[str]
    symbols: frozenset[str]
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))
    overflowed: bool = False

    def wants_kind(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds

    def wants(self, kind: str, message: Message) -> bool:
        if not self.wants_kind(kind):
            return False
        symbol = message.header.symbol  # type: ignore[attr-defined]
        return not self.symbols or not symbol or symbol in self.symbols

    def offer(self, event: pb.Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class CoreDaemon:
    def __init__(self, config: Config, data_dir: Path, *, version: str = "") -> None:
        self.config = config
        self.data_dir = data_dir
        self.version = version
        self.store = StateStore(data_dir / "state", fsync=config.state.fsync)
        self.bus: Bus
        self.session: Session | None = None
        self.controls = ControlState()
        self.watchers: set[Watcher] = set()
        self.engine_status: dict[str, pb.EngineStatus] = {}
        self.account: pb.AccountSnapshot | None = None
        self.state = api.SESSION_STATE_STARTING
        self._run_task: asyncio.Task | None = None
        self._halting: asyncio.Task | None = None  # a halt a risk event asked for
        self._lock = asyncio.Lock()
        self.clock = WallClock()
        self._registry: Any = None
        self._registry_lock = threading.Lock()
        self.model_watchers: list[Any] = []

    def registry(self) -> Any:
        """The model registry (MLflow under <data dir>/mlflow, or models.mlflow_uri), opened once; blocking
        (MLflow's import and a new database take seconds), so call it off the event loop."""
        with self._registry_lock:
            if self._registry is None:
                from utp.core.ml.registry import ModelRegistry

                self._registry = ModelRegistry(self.data_dir / "mlflow", self.config.models.mlflow_uri or None)
            return self._registry

    async def model_registry(self) -> Any:
        return await asyncio.to_thread(self.registry)

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        bus_config = self.config.bus
        if bus_config.nats_url:
            bus = JetStreamBus(
                bus_config.nats_url,
                stream=bus_config.stream,
                subject_root=bus_config.subject_root,
                duplicate_window_s=bus_config.duplicate_window_s,
                client_name="utp-core",
            )
            await bus.connect()
            bus.start_after = await self._claim_session(bus)
            checkpointer = ImmediateCheckpointer(self.store)
        else:
            bus = InProcessBus()
            await self._claim_session(bus)
            checkpointer = DeferredCheckpointer(self.store)  # type: ignore[assignment]
        self.bus = bus
        self.controls = self.store.control_state()
        if self.controls.sequence == 0 and self.config.approve_execution_on_start:
            self.controls = ControlState(execution_approved=True)
            self.store.set_control_state(self.controls)
        await bus.tap(self._on_tap, self._tap_wants)
        self.session = Session(
            self.config,
            bus=bus,
            clock=self.clock,
            controls=self.controls,
            checkpointer=checkpointer,
            status_interval_s=self.config.status_interval_s,
            model_sources=await self._model_sources(),
            approval=self.execution_allowed,
        )
        await self.session.start()
        # Engines restored older checkpoints may hold older flags: state the current ones once more.
        await self._publish_command(pb.CONTROL_ACTION_HALT if self.controls.halted else pb.CONTROL_ACTION_RESUME,
                                    self.controls.halt_reason or "daemon start", "utp-core")
        await self._publish_command(
            pb.CONTROL_ACTION_APPROVE_EXECUTION if self.controls.execution_approved else pb.CONTROL_ACTION_REVOKE_EXECUTION,
            "daemon start",
            "utp-core",
        )
        self.state = api.SESSION_STATE_RUNNING
        self._run_task = asyncio.create_task(self._run(), name="session")

    async def _model_sources(self) -> list[Any]:
        """The champions the session serves, followed for hot reload. The registry is opened by the
        watchers' threads, so the session starts at once (on the packaged model, if any) and the champion
        takes over from the bar after it has loaded."""
        from utp.daemon.models import model_sources

        sources = await asyncio.to_thread(model_sources, self.config, self.registry, live=True)
        self.model_watchers = [s for s in sources if hasattr(s, "start")]
        for watcher in self.model_watchers:
            watcher.start()
        return sources

    async def _run(self) -> None:
        assert self.session is not None
        try:
            await self.session.run()
            self.state = api.SESSION_STATE_COMPLETED
            log.info("session completed: every bar of the data set has been processed")
        except asyncio.CancelledError:
            raise
        except Exception:
            self.state = api.SESSION_STATE_FAILED
            log.exception("session failed")

    async def stop(self) -> None:
        self.state = api.SESSION_STATE_STOPPING
        if self.session is not None:
            await self.session.source_runner.stop()
        if self._run_task is not None:
            self._run_task.cancel()
            try:
                await self._run_task
            except (asyncio.CancelledError, Exception):  # noqa: S110 - stopping; _run logged failures
                pass
        if self.session is not None:
            await self.session.stop()
            if isinstance(self.session.source_runner.checkpointer, DeferredCheckpointer):
                self.session.source_runner.checkpointer.flush()
        for model_watcher in self.model_watchers:
            await asyncio.to_thread(model_watcher.stop)
        await self.bus.close()
        for watcher in self.watchers:
            watcher.offer(pb.Event())  # wakes the stream so it ends
        self.store.close()

    def _session_identity(self, bus: Bus) -> dict[str, object]:
        """What a data folder's checkpoints belong to; restarting with anything else would mix sessions."""
        md = self.config.market_data
        identity: dict[str, object] = {
            "bus": bus.name, "dataset": md.dataset, "symbols": list(md.symbols), "start": md.start, "end": md.end,
        }  # fmt: skip
        if self.config.data.primary:  # live bars: the session is its symbols on that source, not a data set
            identity.update(dataset="", start="", end="", live=self.config.data.primary)
        if isinstance(bus, JetStreamBus):
            identity.update(stream=bus.stream, subject_root=bus.subjects.root)
        return identity

    async def _claim_session(self, bus: Bus) -> int:
        """Record this folder's session on first start (with the stream position it starts after), or
        check that a restart is the same session. Returns the stream position to start after."""
        identity = self._session_identity(bus)
        recorded = self.store.meta("session")
        if recorded is None:
            start_after = await bus.last_sequence() if isinstance(bus, JetStreamBus) else 0
            self.store.set_meta("session", {**identity, "start_after": start_after})
            return start_after
        assert isinstance(recorded, dict)
        differs = {k: (recorded.get(k), v) for k, v in identity.items() if recorded.get(k) != v}
        if differs:
            detail = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differs.items())
            raise SessionMismatch(f"{self.data_dir} holds another session ({detail}); use another --data-dir")
        return int(recorded.get("start_after", 0))

    # -- events ------------------------------------------------------------------------------------
    def _tap_wants(self, kind: str) -> bool:
        return kind in _STATUS_KINDS or any(w.wants_kind(kind) for w in self.watchers)

    async def _on_tap(self, kind: str, messages: list[Message]) -> None:
        if kind == "engine_status":
            for m in messages:
                self.engine_status[m.engine] = m  # type: ignore[attr-defined]
        elif kind == "account_snapshot":
            self.account = messages[-1]  # type: ignore[assignment]
        elif kind == "risk_event":
            for m in messages:
                if m.action in _HALTING and not self.controls.halted:  # type: ignore[attr-defined]
                    # Not awaited here: a command publishes on the bus, whose delivery may be what called us.
                    log.error("risk: %s: halting trading", m.message)  # type: ignore[attr-defined]
                    self._halting = asyncio.create_task(self.halt(m.message, "risk"))
        for watcher in list(self.watchers):
            for message in messages:
                if watcher.wants(kind, message):
                    watcher.offer(pb.Event(**{kind: message}))

    def execution_allowed(self) -> bool:
        """The operator's approval state, as the hot state (LMDB) holds it: the last gate before a broker."""
        return self.controls.execution_approved and not self.controls.halted

    # -- operator commands -------------------------------------------------------------------------
    async def set_execution_approval(self, approved: bool, reason: str, actor: str) -> ControlState:
        action = pb.CONTROL_ACTION_APPROVE_EXECUTION if approved else pb.CONTROL_ACTION_REVOKE_EXECUTION
        return await self._command(action, reason, actor)

    async def halt(self, reason: str, actor: str) -> ControlState:
        return await self._command(pb.CONTROL_ACTION_HALT, reason or "halted by operator", actor)

    async def resume(self, reason: str, actor: str) -> ControlState:
        return await self._command(pb.CONTROL_ACTION_RESUME, reason, actor)

    async def _command(self, action: int, reason: str, actor: str) -> ControlState:
        async with self._lock:
            await self._publish_command(action, reason, actor or "operator")
            log.warning("operator command %s by %s: %s", pb.ControlAction.Name(action), actor or "operator", reason)
            return self.controls

    async def _publish_command(self, action: int, reason: str, actor: str) -> None:
        sequence = self.controls.sequence + 1
        command = pb.ControlCommand(
            header=pb.EventHeader(event_id=f"control_command/{sequence}", event_time_ns=self.clock.now_ns()),
            action=action,
            reason=reason,
            actor=actor,
            sequence=sequence,
        )
        # Durable first: a command the hot state does not hold was never given.
        self.controls = self.controls.apply(command)
        self.store.set_control_state(self.controls)
        await self.bus.publish(Batch("control_command", "utp-core", KINDS["control_command"].to_frame([command]), None))

    # -- queries -----------------------------------------------------------------------------------
    def positions(self) -> list[pb.PositionSnapshot]:
        return [pb.PositionSnapshot.FromString(v) for _, v in self.store.items(POSITIONS)]

    def orders(self, limit: int = 0) -> list[pb.Order]:
        orders = [pb.Order.FromString(v) for _, v in self.store.items(ORDERS)]
        orders.sort(key=lambda o: (o.submitted_time_ns, o.client_order_id), reverse=True)
        return orders[:limit] if limit > 0 else orders

    def status(self) -> api.GetStatusResponse:
        md = self.config.market_data
        session = self.session
        engines = [self.engine_status[name] for name in sorted(self.engine_status)]
        broker = self.config.broker
        response = api.GetStatusResponse(
            mode="live" if broker.name == "alpaca-live" else ("paper" if broker.name == "simulated" else broker.name),
            bus=self.bus.name,
            nats_url=self.config.bus.nats_url,
            session_state=self.state,
            halted=self.controls.halted,
            halt_reason=self.controls.halt_reason,
            execution_approved=self.controls.execution_approved,
            engines=engines,
            dataset=f"live:{self.config.data.primary}" if self.config.data.primary else md.dataset,
            symbols=list(session.market_data.universe.symbols) if session else list(md.symbols),
            version=self.version,
        )
        if self.account is not None:
            response.account.CopyFrom(self.account)
        return response

    def add_watcher(self, kinds: frozenset[str], symbols: frozenset[str]) -> Watcher:
        watcher = Watcher(kinds, symbols)
        self.watchers.add(watcher)
        return watcher

    def remove_watcher(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

