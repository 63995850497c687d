"""The core daemon: one paper session on the chosen bus, its hot state, the operator's flags and watchers.

`utp core` runs it behind the gRPC API (`server.py`). With no options it replays the packaged GOOG bars
at one bar a second on the in-process bus, so a newcomer can watch signals and orders arrive in the
console. With `--nats` the same engines run over JetStream and the session survives being killed: the
restarted daemon resumes every engine from its last commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from utp.core.batch import Batch
from utp.core.bus import Bus, InProcessBus, Subscription
from utp.core.clock import WallClock
from utp.core.config import Config, to_dict
from utp.core.controls import ControlState
from utp.core.jetstream import JetStreamBus
from utp.core.kinds import KINDS, wrap_event
from utp.daemon.session import Session, freeze_startup_heap
from utp.daemon.auth import AuditTrail, ensure_tokens
from utp.storage.state import APPROVALS, ORDERS, POSITIONS, DeferredCheckpointer, ImmediateCheckpointer, StateStore
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

#: Kinds the daemon always follows: GetStatus, the dashboard, the latest signals and the alerts.
_STATUS_KINDS = frozenset({"engine_status", "account_snapshot", "risk_event", "scored_signal", "data_alert",
                           "model_alert", "operator_alert", "risk_decision"})  # fmt: skip
ALERT_KINDS = ("risk_event", "data_alert", "model_alert", "operator_alert")
_EQUITY_POINTS = 20_000
#: Seconds a flatten asked for while halted may send orders through the broker gate.
FLATTEN_GRACE_S = 60.0
_ALERTS_KEPT = 1_000
#: Rejected intents and risk events kept for ListRejections.
REJECTIONS_KEPT = 1_000
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
        #: The session this data folder belongs to (`utp replay --session`); set when the folder is claimed.
        self.session_id = ""
        self.controls = ControlState()
        self.watchers: set[Watcher] = set()
        self._tap: Subscription | None = None  # the bus's tap for watchers, status and metrics (`_tap_wants`)
        self._background: set[asyncio.Task] = set()
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
        self.model_sources: list[Any] = []
        self.audit = AuditTrail(self.store)
        ensure_tokens(data_dir)
        self.signals: dict[str, pb.ScoredSignal] = {}
        self.alerts: deque[pb.Event] = deque(maxlen=_ALERTS_KEPT)
        self.rejections: deque[pb.Event] = deque(maxlen=REJECTIONS_KEPT)
        self.equity: deque[tuple[int, float]] = deque(maxlen=_EQUITY_POINTS)
        self.equity_peak = 0.0
        self._flatten_grace_until = 0.0
        self.scheduler: Any = None  # utp.daemon.scheduler.Scheduler, when operations run
        self.tap_listeners: list[Any] = []  # callables(kind, messages): every tapped batch (metrics)
        self.backtest_listeners: list[Any] = []  # callables(BacktestSummary): each RunBacktest result (metrics)

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
                deliver_in_process=bus_config.deliver_in_process,
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
        self._tap = await bus.tap(self._on_tap, self._tap_wants)
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
        freeze_startup_heap()
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
        self.model_sources = sources
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
            now = time.time_ns()
            self.session_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now / 1e9))}-{secrets.token_hex(4)}"
            if isinstance(bus, JetStreamBus):
                # In the stream before any of the session's events, so that the log alone can rebuild it.
                await bus.publish_manifest(pb.SessionManifest(
                    session_id=self.session_id, stream=bus.stream, subject_root=bus.subjects.root,
                    start_after=start_after, config_json=json.dumps(to_dict(self.config)),  # key order is meaningful (ensemble.weights)
                    version=self.version, created_time_ns=now,
                ))  # fmt: skip
            self.store.set_meta("session", {**identity, "start_after": start_after, "session_id": self.session_id})
            return start_after
        assert isinstance(recorded, dict)
        differs = {k: (recorded.get(k), v) for k, v in identity.items() if recorded.get(k) != v}
        if differs:
            detail = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differs.items())
            raise SessionMismatch(f"{self.data_dir} holds another session ({detail}); use another --data-dir")
        self.session_id = str(recorded.get("session_id", ""))
        return int(recorded.get("start_after", 0))

    # -- events ------------------------------------------------------------------------------------
    def _tap_wants(self, kind: str) -> bool:
        return (kind in _STATUS_KINDS or kind in self.extra_tap_kinds
                or any(w.wants_kind(kind) for w in self.watchers))  # fmt: skip

    #: Kinds tapped for listeners (metrics) besides those the daemon follows.
    extra_tap_kinds: frozenset[str] = frozenset()

    async def _on_tap(self, kind: str, messages: list[Message]) -> None:
        for listener in self.tap_listeners:
            try:
                listener(kind, messages)
            except Exception:  # a listener (metrics) must never stop the session's events
                log.exception("tap listener failed on %s", kind)
        if kind in ALERT_KINDS:
            self.alerts.extend(pb.Event(**{kind: m}) for m in messages)
        if kind == "engine_status":
            for m in messages:
                self.engine_status[m.engine] = m  # type: ignore[attr-defined]
        elif kind == "account_snapshot":
            self.account = messages[-1]  # type: ignore[assignment]
            for m in messages:
                equity = m.equity  # type: ignore[attr-defined]
                self.equity.append((m.header.event_time_ns, equity))  # type: ignore[attr-defined]
                self.equity_peak = max(self.equity_peak, equity)
        elif kind == "scored_signal":
            for m in messages:
                self.signals[m.header.symbol] = m  # type: ignore[assignment, attr-defined]
        elif kind == "risk_decision":
            self.rejections.extend(pb.Event(risk_decision=m) for m in messages if not m.approved)  # type: ignore[attr-defined]
        if kind == "risk_event":
            self.rejections.extend(pb.Event(risk_event=m) for m in messages)
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
        """The operator's approval state, as the hot state (LMDB) holds it: the last gate before a broker. A
        flatten asked for while halted may send its closing orders for FLATTEN_GRACE_S."""
        halted = self.controls.halted and time.monotonic() > self._flatten_grace_until
        return self.controls.execution_approved and not halted

    # -- operator commands -------------------------------------------------------------------------
    async def set_execution_approval(self, approved: bool, reason: str, actor: str) -> ControlState:
        action = pb.CONTROL_ACTION_APPROVE_EXECUTION if approved else pb.CONTROL_ACTION_REVOKE_EXECUTION
        return await self._command(action, reason, actor)

    async def halt(self, reason: str, actor: str) -> ControlState:
        return await self._command(pb.CONTROL_ACTION_HALT, reason or "halted by operator", actor)

    async def resume(self, reason: str, actor: str) -> ControlState:
        return await self._command(pb.CONTROL_ACTION_RESUME, reason, actor)

    async def set_entries_paused(self, paused: bool, reason: str, actor: str) -> ControlState:
        action = pb.CONTROL_ACTION_PAUSE_ENTRIES if paused else pb.CONTROL_ACTION_RESUME_ENTRIES
        return await self._command(action, reason, actor)

    async def set_approval_mode(self, mode: int, reason: str, actor: str) -> ControlState:
        return await self._command(pb.CONTROL_ACTION_SET_APPROVAL_MODE, reason, actor, approval_mode=mode)

    async def flatten(self, symbol: str, halt: bool, reason: str, actor: str) -> tuple[list[str], ControlState]:
        """Close `symbol`'s position (all when empty), and with `halt` halt trading in the same breath: execution
        applies both before its next step, and a flatten goes even while halted."""
        held = sorted(p.header.symbol for p in self.positions() if not symbol or p.header.symbol == symbol)
        if halt or self.controls.halted:
            self._flatten_grace_until = time.monotonic() + FLATTEN_GRACE_S
        async with self._lock:
            await self._publish_command(pb.CONTROL_ACTION_FLATTEN, reason or "flatten by operator", actor or "operator",
                                        symbol=symbol)  # fmt: skip
            if halt:
                await self._publish_command(pb.CONTROL_ACTION_HALT, reason or "emergency halt and flatten",
                                            actor or "operator")  # fmt: skip
        log.warning("operator %s flattened %s%s: %s", actor or "operator", symbol or "every position",
                    " and halted trading" if halt else "", reason)  # fmt: skip
        return held, self.controls

    async def cancel_order(self, client_order_id: str, reason: str, actor: str) -> ControlState:
        return await self._command(pb.CONTROL_ACTION_CANCEL_ORDER, reason, actor, client_order_id=client_order_id)

    async def decide_approvals(self, intent_ids: list[str], approve: bool, reason: str, actor: str) -> ControlState:
        """One command per order (an empty list: every pending order)."""
        action = pb.CONTROL_ACTION_APPROVE_ORDER if approve else pb.CONTROL_ACTION_REJECT_ORDER
        async with self._lock:
            for intent_id in intent_ids or [""]:
                await self._publish_command(action, reason, actor or "operator", intent_id=intent_id)
        log.warning("operator %s %s %s: %s", actor or "operator", "approved" if approve else "rejected",
                    ", ".join(intent_ids) or "every pending order", reason)  # fmt: skip
        return self.controls

    async def _command(self, action: int, reason: str, actor: str, **fields: Any) -> ControlState:
        async with self._lock:
            await self._publish_command(action, reason, actor or "operator", **fields)
            log.warning("operator command %s by %s: %s", pb.ControlAction.Name(action), actor or "operator", reason)
            return self.controls

    async def _publish_command(self, action: int, reason: str, actor: str, *, symbol: str = "", **fields: Any) -> None:
        sequence = self.controls.sequence + 1
        command = pb.ControlCommand(
            header=pb.EventHeader(event_id=f"control_command/{sequence}", event_time_ns=self.clock.now_ns(),
                                  symbol=symbol),
            action=action,
            reason=reason,
            actor=actor,
            sequence=sequence,
            **fields,
        )
        # Durable first: a command the hot state does not hold was never given.
        self.controls = self.controls.apply(command)
        self.store.set_control_state(self.controls)
        await self.bus.publish(Batch("control_command", "utp-core", KINDS["control_command"].to_frame([command]), None))

    # -- dead letters ------------------------------------------------------------------------------
    async def dead_letters(self, limit: int) -> list[api.DeadLetter]:
        """The session's dead letters, oldest first; none on the in-process bus, which never retries a step."""
        if not isinstance(self.bus, JetStreamBus):
            return []
        return [
            api.DeadLetter(sequence=x.sequence, engine=x.engine, kind=KINDS[x.kind].number, subject=x.subject,
                           error=x.error, deliveries=x.deliveries, event=wrap_event(x.kind, x.event))
            for x in await self.bus.read_dead_letters(limit)
        ]  # fmt: skip

    async def replay_dead_letters(self, sequences: list[int], every: bool, drop: bool, reason: str, actor: str
                                  ) -> tuple[int, int, list[str]]:  # fmt: skip
        """Hand the chosen dead letters to their engines (or drop them): (replayed, dropped, errors). A letter is
        removed from the stream only after its engine committed it; one an engine fails on again stays."""
        if not isinstance(self.bus, JetStreamBus):
            raise ValueError("dead letters need a session over JetStream (--nats)")
        letters = await self.bus.read_dead_letters(limit=1_000_000)
        wanted = set(sequences)
        chosen = letters if every else [x for x in letters if x.sequence in wanted]
        errors = [f"{n}: no such dead letter" for n in sorted(wanted - {x.sequence for x in letters})]
        runners = {r.engine.name: r for r in self.session.runners} if self.session is not None else {}
        replayed = dropped = 0
        for letter in chosen:
            if not drop:
                runner = runners.get(letter.engine)
                if runner is None:
                    errors.append(f"{letter.sequence}: no engine {letter.engine!r} in this session")
                    continue
                try:
                    await runner.replay_dead_letter(letter.kind, KINDS[letter.kind].to_frame([letter.event]),
                                                    letter.letter_id)  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - said per letter; the letter stays
                    errors.append(f"{letter.sequence}: {exc}")
                    continue
            await self.bus.drop_dead_letter(letter.sequence)
            if drop:
                dropped += 1
            else:
                replayed += 1
        log.warning("operator %s %s %d dead letter(s) (%d error(s)): %s", actor or "operator",
                    "dropped" if drop else "replayed", dropped or replayed, len(errors), reason)  # fmt: skip
        return replayed, dropped, errors

    # -- queries -----------------------------------------------------------------------------------
    def positions(self) -> list[pb.PositionSnapshot]:
        return [pb.PositionSnapshot.FromString(v) for _, v in self.store.items(POSITIONS)]

    def order(self, client_order_id: str) -> pb.Order | None:
        value = self.store.get(ORDERS, client_order_id)
        return None if value is None else pb.Order.FromString(value)

    def symbols(self) -> list[str]:
        session = self.session
        return list(session.market_data.universe.symbols) if session else list(self.config.market_data.symbols)

    def jobs(self) -> list[api.ScheduledJob]:
        scheduler = self.scheduler
        return [] if scheduler is None else [job_message(j) for j in scheduler.jobs()]

    async def run_job(self, name: str, actor: str, reason: str) -> api.ScheduledJob:
        if self.scheduler is None:
            from utp.daemon.scheduler import UnknownJob

            raise UnknownJob(f"no scheduler runs in this daemon; no job {name!r}")
        log.warning("operator %s runs job %s: %s", actor, name, reason or "no reason given")
        return job_message(await self.scheduler.run_now(name, actor))

    def orders(self, limit: int = 0, working_only: bool = False) -> list[pb.Order]:
        """Orders newest first (by submission time, then client order id), `limit` of them (0: all). Read through the
        store's indexes: a long session's other orders are not decoded."""
        if limit > 0 and not working_only:
            return [pb.Order.FromString(v) for v in self.store.newest_orders(limit)]
        values = self.store.working_orders() if working_only else (v for _, v in self.store.items(ORDERS))
        orders = sorted(map(pb.Order.FromString, values), key=lambda o: (o.submitted_time_ns, o.client_order_id),
                        reverse=True)  # fmt: skip
        return orders[:limit] if limit > 0 else orders

    def approvals(self) -> tuple[list[pb.OrderApproval], list[pb.OrderApproval]]:
        """(pending oldest first, decided newest first) from the hot state execution keeps."""
        rows = [pb.OrderApproval.FromString(v) for _, v in self.store.items(APPROVALS)]
        pending = sorted((a for a in rows if a.state == pb.APPROVAL_STATE_PENDING), key=lambda a: a.header.event_time_ns)
        decided = sorted((a for a in rows if a.state != pb.APPROVAL_STATE_PENDING),
                         key=lambda a: a.header.event_time_ns, reverse=True)  # fmt: skip
        return pending, decided

    def approval_mode(self) -> int:
        per_order = self.controls.per_order(self.config.execution.approval_mode)
        return pb.APPROVAL_MODE_PER_ORDER if per_order else pb.APPROVAL_MODE_BLANKET

    def served_models(self) -> list[api.ServedModel]:
        served = []
        for source in self.model_sources:
            model = source.model_at(0)
            kind = "registry" if hasattr(source, "start") else ("packaged" if model and model.version == "packaged" else "file")
            served.append(api.ServedModel(name=source.name, version=model.version if model else "(none yet)", source=kind))
        return served

    def market_time_ns(self) -> int:
        md = self.engine_status.get("market_data")
        return md.through_time_ns if md is not None else 0

    def gauges(self) -> list[api.RiskGauge]:
        """How close the portfolio is to each seed risk limit (0 limits are off and left out)."""
        risk, account = self.config.risk, self.account or pb.AccountSnapshot()
        equity = account.equity or self.config.execution.initial_cash
        positions = self.positions()
        largest = max((abs(p.market_value) for p in positions), default=0.0)
        sector_values: dict[str, float] = {}
        for p in positions:
            sector = risk.sectors.get(p.header.symbol, "")
            if sector:
                sector_values[sector] = sector_values.get(sector, 0.0) + abs(p.market_value)
        day_loss = max(-account.day_pnl / equity, 0.0) if equity else 0.0
        drawdown = max(1.0 - account.equity / self.equity_peak, 0.0) if self.equity_peak and account.equity else 0.0
        gross = account.gross_exposure
        candidates = [
            ("risk.max_daily_loss_pct", day_loss, risk.max_daily_loss_pct, "fraction"),
            ("risk.kill_switch_loss_pct", day_loss, risk.kill_switch_loss_pct, "fraction"),
            ("risk.max_drawdown_pct", drawdown, risk.max_drawdown_pct, "fraction"),
            ("risk.max_total_exposure", gross, risk.max_total_exposure, "usd"),
            ("risk.max_symbol_exposure", largest, risk.max_symbol_exposure, "usd"),
            ("risk.max_sector_exposure_pct", max(sector_values.values(), default=0.0) / equity if equity else 0.0,
             risk.max_sector_exposure_pct, "fraction"),
            ("risk.max_positions", float(len(positions)), float(risk.max_positions), "count"),
            ("risk.max_short_share", account.short_exposure / gross if gross else 0.0, risk.max_short_share, "fraction"),
        ]  # fmt: skip
        return [api.RiskGauge(name=n, value=v, limit=lim, unit=u) for n, v, lim, u in candidates if lim > 0]

    def dashboard(self, points: int) -> api.GetDashboardResponse:
        points = points or 500
        curve = list(self.equity)[-points:]
        pending, _ = self.approvals()
        response = api.GetDashboardResponse(
            status=self.status(), gauges=self.gauges(), models=self.served_models(),
            alerts=list(reversed(self.alerts))[:20], pending_approvals=len(pending), market_time_ns=self.market_time_ns(),
        )  # fmt: skip
        response.equity_curve.time_ns.extend(t for t, _ in curve)
        response.equity_curve.equity.extend(e for _, e in curve)
        return response

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
            entries_paused=self.controls.entries_paused,
            approval_mode=self.approval_mode(),
            session_id=self.session_id,
        )
        if self.account is not None:
            response.account.CopyFrom(self.account)
        return response

    async def add_watcher(self, kinds: frozenset[str], symbols: frozenset[str]) -> Watcher:
        watcher = Watcher(kinds, symbols)
        self.watchers.add(watcher)
        await self.refresh_tap()
        return watcher

    def remove_watcher(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        if self._tap is not None:
            # Not awaited: the caller may be a stream being cancelled; events of kinds nobody wants are dropped anyway.
            task = asyncio.get_running_loop().create_task(self._tap.refresh())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def refresh_tap(self) -> None:
        """Say that `_tap_wants` may answer otherwise now: the bus may send the tap only the kinds it wanted so far."""
        if self._tap is not None:
            await self._tap.refresh()


def job_message(job: Any) -> api.ScheduledJob:
    """A scheduler's JobStatus as the API's message."""
    return api.ScheduledJob(name=job.name, schedule=job.schedule, description=job.description,
                            next_run_time_ns=job.next_run_ns or 0, last_run_time_ns=job.last_run_ns or 0,
                            last_outcome=job.last_outcome or "", last_detail=job.last_detail or "",
                            running=job.running)  # fmt: skip
