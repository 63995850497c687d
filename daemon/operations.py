"""The daemon's operations around its session: Prometheus metrics, the scheduler's jobs, the watchdogs and
systemd's readiness and watchdog. `utp core` starts them after the session and stops them before it.

Alerts from the watchdogs and failed jobs are published as `operator_alert` events on the session's bus, so
the console, WatchEvents, ListAlerts and the metrics all see them the same way as risk and data alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from utp.core.batch import Batch
from utp.core.kinds import KINDS
from utp.daemon import systemd
from utp.daemon.core import CoreDaemon
from utp.daemon.scheduler import JobStatus, Scheduler, standard_jobs
from utp.daemon.watchdog import (
    Alert,
    Check,
    Problem,
    Watchdogs,
    data_feed_staleness,
    disk,
    exchange_session,
    failed_engines,
    memory,
    reconnect_feed,
    release_memory,
    restart_failed_engines,
)
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

_SEVERITY = {"info": pb.ALERT_SEVERITY_INFO, "warning": pb.ALERT_SEVERITY_WARNING,
             "critical": pb.ALERT_SEVERITY_CRITICAL}  # fmt: skip
_TICK_S = 5.0
_MB = 1 << 20


class Operations:
    """Metrics, scheduler, watchdogs and systemd notifications of one daemon."""

    def __init__(self, daemon: CoreDaemon) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.metrics: Any = None
        self.scheduler: Scheduler | None = None
        self.watchdogs: Watchdogs | None = None
        self._tasks: list[asyncio.Task] = []
        self._alerts = 0
        self._through: dict[str, int] = {}  # engine -> the bar time it has processed through
        #: (bar time, wall time) each time market data advanced: how long ago an engine's next bar arrived.
        self._source_times: deque[tuple[int, int]] = deque(maxlen=100_000)
        self._scheduler_file = daemon.data_dir / "scheduler.json"

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        ops = self.config.operations
        self._start_metrics()
        self.daemon.tap_listeners.append(self._on_tap)
        await self.daemon.refresh_tap()  # the metrics' kinds
        self._watch_breaker()
        if ops.scheduler:
            self.scheduler = Scheduler(standard_jobs(pre_market=self.pre_market, end_of_day=self.end_of_day,
                                                     nightly=self.nightly), on_result=self._on_job)  # fmt: skip
            if self._scheduler_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    self.scheduler.restore(json.loads(self._scheduler_file.read_text()))
            self.daemon.scheduler = self.scheduler
            self._tasks.append(asyncio.create_task(self.scheduler.run_forever(), name="scheduler"))
        if ops.watchdogs:
            self.watchdogs = Watchdogs(self._checks(), self._on_alert)
            self._tasks.append(asyncio.create_task(self.watchdogs.run_forever(), name="watchdogs"))
        self._tasks.append(asyncio.create_task(self._tick_forever(), name="metrics tick"))
        self._tasks.append(asyncio.create_task(self._quietly(self._model_figures()), name="model figures"))
        self._tasks.append(asyncio.create_task(systemd.keep_watchdog_fed(healthy=self._healthy), name="sd watchdog"))

    @staticmethod
    async def _quietly(job: Any) -> None:
        try:
            await job
        except Exception:  # figures for a metric: never worth stopping the daemon for
            log.exception("could not read the served models' figures")

    def ready(self, listen: str) -> None:
        systemd.ready(f"serving on {listen}")

    async def stop(self) -> None:
        systemd.stopping()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.metrics is not None:
            self.metrics.close()

    def _healthy(self) -> bool:
        from utp.v1 import core_service_pb2 as api

        return self.daemon.state in (api.SESSION_STATE_RUNNING, api.SESSION_STATE_COMPLETED)

    # -- metrics -------------------------------------------------------------------------------------
    def _start_metrics(self) -> None:
        listen = self.config.server.metrics_listen
        if not listen:
            return
        from utp.core.metrics import METRIC_KINDS, PlatformMetrics, parse_listen

        live = bool(self.config.data.primary)
        metrics = PlatformMetrics(live=live, fill_slippage=self.config.broker.name == "simulated")
        try:
            metrics.serve(*parse_listen(listen))
        except (OSError, ValueError) as exc:  # trading goes on without its metrics; the operator hears of it
            log.error("no Prometheus metrics: cannot listen on %s (server.metrics_listen): %s", listen, exc)
            return
        self.metrics = metrics
        self.daemon.backtest_listeners.append(metrics.observe_backtest)
        self.daemon.extra_tap_kinds = frozenset(METRIC_KINDS)
        self.metrics.set_expected_slippage_bps(self.config.risk.expected_slippage_bps or self.config.execution.slippage_bps)
        log.info("Prometheus metrics on http://%s/metrics", listen)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_rpc(method, code, seconds)

    def _on_tap(self, kind: str, messages: list[Any]) -> None:
        now = time.time_ns()
        if kind == "engine_status":
            for m in messages:
                self._through[m.engine] = m.through_time_ns
                if m.engine == "market_data" and (not self._source_times or m.through_time_ns > self._source_times[-1][0]):
                    self._source_times.append((m.through_time_ns, now))
        if self.metrics is not None:
            self.metrics.observe(kind, messages, now)

    async def _tick_forever(self) -> None:
        while True:
            if self.metrics is not None:
                controls = self.daemon.controls
                self.metrics.set_controls(controls.halted, controls.execution_approved, controls.entries_paused)
                self.metrics.set_models((m.name, m.version, m.source) for m in self.daemon.served_models())
                self.metrics.set_consumer_lags(self.engine_lags_s(time.time_ns()))
                await asyncio.to_thread(self.metrics.tick, time.time_ns())
            await asyncio.sleep(_TICK_S)

    # -- alerts --------------------------------------------------------------------------------------
    def _on_alert(self, alert: Alert) -> None:
        self.publish_alert(alert.source, alert.severity, alert.message, alert.action, alert.resolved)

    def publish_alert(self, source: str, severity: str, message: str, action: str = "", resolved: bool = False) -> None:
        """An operator alert on the bus (the daemon's tap files it under alerts; metrics count it)."""
        self._alerts += 1
        now = time.time_ns()
        alert = pb.OperatorAlert(header=pb.EventHeader(event_id=f"operator_alert/{now}/{self._alerts}", event_time_ns=now),
                                 severity=_SEVERITY.get(severity, pb.ALERT_SEVERITY_WARNING), source=source,
                                 message=message, action=action, resolved=resolved)  # fmt: skip
        level = logging.INFO if resolved else logging.WARNING
        log.log(level, "alert %s%s: %s%s", source, " resolved" if resolved else "", message, f" ({action})" if action else "")
        batch = Batch("operator_alert", "utp-core", KINDS["operator_alert"].to_frame([alert]), None)
        task = asyncio.get_running_loop().create_task(self.daemon.bus.publish(batch))
        self._tasks.append(task)
        self._tasks = [t for t in self._tasks if not t.done() or t is task]

    # -- watchdogs -----------------------------------------------------------------------------------
    def _checks(self) -> list[Check]:
        ops, daemon = self.config.operations, self.daemon
        interval = ops.watchdog_interval_s
        in_session = exchange_session(self.config.risk.filters.calendar or "XNYS")
        checks = [
            Check("engine_lag", self._engine_lag_probe(ops.engine_max_lag_s), None, interval),
            Check("engines", failed_engines(self._runners), restart_failed_engines(self._runners), interval,
                  cooldown_s=60),
            Check("memory", memory(int(ops.max_rss_mb * _MB)), release_memory(), interval, cooldown_s=600),
            Check("disk", disk(daemon.data_dir, min_free_bytes=int(ops.min_free_disk_mb * _MB)),
                  self._pause_entries_for_disk, interval * 4),
        ]  # fmt: skip
        if self.config.data.primary:  # live bars: a quiet feed during the session is a problem
            # Switching to the secondary source is the feed's own job (FailoverFeed); when bars are stale anyway
            # every source is in trouble, and the recovery connects the troubled ones again.
            checks.append(Check("data_feed", data_feed_staleness(
                lambda: daemon.market_time_ns() or None, time.time_ns, self.config.data.max_bar_age_s, in_session),
                reconnect_feed(getattr(daemon.session.source, "feed", None)), interval))  # fmt: skip
        broker = getattr(daemon.session, "external_broker", None)
        if broker is not None and getattr(broker, "breaker", None) is not None:
            checks.append(Check("broker", self._broker_probe(broker.breaker), None, interval))
        return checks

    def _runners(self) -> list[Any]:
        session = self.daemon.session
        return list(session.runners) if session is not None else []

    def _watch_breaker(self) -> None:
        """Every transition of the broker's circuit breaker becomes an operator alert (it may change on the
        broker's stream thread: the alert is published from the daemon's loop)."""
        broker = getattr(self.daemon.session, "external_broker", None)
        breaker = getattr(broker, "breaker", None)
        if breaker is None:
            return
        loop = asyncio.get_running_loop()

        def transition(old: str, new: str) -> None:
            severity = "info" if new == "closed" else ("warning" if new == "half_open" else "critical")
            text = {"open": "orders are not sent until it lets a trial through",
                    "half_open": "a trial order may go", "closed": "orders flow again"}.get(new, "")  # fmt: skip
            loop.call_soon_threadsafe(self.publish_alert, "breaker", severity,
                                      f"the {breaker.name} circuit breaker went {old} -> {new}: {text}", "",
                                      new == "closed")  # fmt: skip

        breaker.listeners.append(transition)
        if self.metrics is not None:
            metrics = self.metrics
            breaker.failure_listeners.append(lambda: metrics.observe_broker_error("retryable"))

    def engine_lags_s(self, now_ns: int) -> dict[str, float]:
        """Each engine's lag in wall seconds: how long ago market data published the first bar time the engine
        has not processed yet (0 when it is up to date). Bar time alone would make a daily bar look a day late."""
        lags = {}
        times = list(self._source_times)
        for engine, through in self._through.items():
            if engine == "market_data":
                continue
            waiting = next((wall for bar_time, wall in times if bar_time > through), None)
            lags[engine] = 0.0 if waiting is None else (now_ns - waiting) / 1e9
        return lags

    def _engine_lag_probe(self, max_lag_s: float) -> Any:
        async def probe() -> Problem | None:
            behind = {e: lag for e, lag in self.engine_lags_s(time.time_ns()).items() if lag > max_lag_s}
            if not behind:
                return None
            worst = ", ".join(f"{e} {lag:.0f} s" for e, lag in sorted(behind.items(), key=lambda x: -x[1]))
            return Problem("critical" if max(behind.values()) > 4 * max_lag_s else "warning",
                           f"engines behind market data by more than {max_lag_s:g} s: {worst}")  # fmt: skip

        return probe

    async def _pause_entries_for_disk(self, problem: Problem) -> str:
        """The disk watchdog's recovery: no new positions while the hot state (LMDB) and the logs may fail to
        write. Exits, stops and flattens still go; the operator resumes entries once space is freed."""
        if self.daemon.controls.entries_paused:
            return "new entries already paused"
        await self.daemon.set_entries_paused(True, f"disk almost full: {problem.message}", "watchdog:disk")
        return "paused new entries until the operator resumes them (exits still go)"

    @staticmethod
    def _broker_probe(breaker: Any) -> Any:
        async def probe() -> Problem | None:
            state = breaker.state
            if state != "closed":
                return Problem("critical", f"the broker's circuit breaker is {state}: orders wait")
            return None

        return probe

    # -- jobs ----------------------------------------------------------------------------------------
    def _on_job(self, status: JobStatus) -> None:
        with contextlib.suppress(OSError):
            self._scheduler_file.write_text(json.dumps(self.scheduler.state() if self.scheduler else {}))
        if status.last_outcome == "failed":
            self.publish_alert(f"scheduler:{status.name}", "warning", f"job {status.name} failed: {status.last_detail}")

    async def _model_figures(self) -> None:
        """The served champions' out-of-sample Sharpe (their gate figures) for the ModelOOSSharpeLow alert."""
        if self.metrics is None:
            return
        for model in self.daemon.served_models():
            if model.source != "registry" or model.version == "(none yet)":
                continue
            registry = await self.daemon.model_registry()
            versions = await asyncio.to_thread(registry.versions, model.name)
            tags = next((v.tags for v in versions if v.version == model.version), {})
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.metrics.set_model_oos_sharpe(model.name, float(tags["oos_sharpe"]))

    async def pre_market(self) -> str:
        """Before the open: the models' freshness, the data's, the universe."""
        daemon, ops = self.daemon, self.config.operations
        await self._model_figures()
        notes = [f"universe {len(daemon.symbols())} symbols"]
        market = daemon.market_time_ns()
        notes.append(f"data through {_day(market)}" if market else "no bar yet")
        if ops.model_max_age_days > 0:
            stale = []
            for model in daemon.served_models():
                if model.source != "registry" or model.version == "(none yet)":
                    continue
                registry = await daemon.model_registry()
                versions = await asyncio.to_thread(registry.versions, model.name)
                created = next((v.created_ms for v in versions if v.version == model.version), 0)
                age_days = (time.time() * 1e3 - created) / 86_400_000 if created else float("inf")
                if age_days > ops.model_max_age_days:
                    stale.append(f"{model.name} v{model.version} is {age_days:.0f} days old")
            if stale:
                self.publish_alert("scheduler:pre_market", "warning", "stale models: " + "; ".join(stale))
                notes.append("stale: " + "; ".join(stale))
            else:
                notes.append("models fresh")
        return ", ".join(notes)

    async def end_of_day(self) -> str:
        """After the close: flatten when asked to, and the day's report (account, positions, orders, alerts)."""
        daemon = self.daemon
        notes = []
        if self.config.operations.end_of_day_flatten and daemon.positions():
            symbols, _ = await daemon.flatten("", False, "end of day: intraday positions are closed", "scheduler")
            notes.append(f"flattened {', '.join(symbols)}")
        path = await asyncio.to_thread(self._daily_report)
        notes.append(f"report {path}")
        return "; ".join(notes)

    def _daily_report(self) -> Path:
        from google.protobuf.json_format import MessageToDict

        daemon = self.daemon
        today = datetime.now(UTC).date().isoformat()
        folder = daemon.data_dir / "reports" / "daily"
        folder.mkdir(parents=True, exist_ok=True)
        status = daemon.status()
        orders = daemon.orders(500)
        report = {
            "date": today,
            "account": MessageToDict(status.account, preserving_proto_field_name=True),
            "halted": status.halted, "halt_reason": status.halt_reason,
            "positions": [MessageToDict(p, preserving_proto_field_name=True) for p in daemon.positions()],
            "orders": [MessageToDict(o, preserving_proto_field_name=True) for o in orders],
            "alerts": [MessageToDict(a, preserving_proto_field_name=True) for a in list(daemon.alerts)[-200:]],
            "gauges": [MessageToDict(g, preserving_proto_field_name=True) for g in daemon.gauges()],
        }  # fmt: skip
        path = folder / f"{today}.json"
        path.write_text(json.dumps(report, indent=1, sort_keys=True))
        return path

    async def nightly(self) -> str:
        """Retrain the configured models when the last retrain is old enough (a process each, `utp train`)."""
        ops = self.config.operations
        if ops.retrain_every_days <= 0:
            return "retraining is off (operations.retrain_every_days: 0)"
        marker = self.daemon.data_dir / "last_retrain.json"
        last = json.loads(marker.read_text()).get("time", 0.0) if marker.exists() else 0.0
        if time.time() - last < ops.retrain_every_days * 86_400:
            return f"not due: last retrain {datetime.fromtimestamp(last, UTC):%Y-%m-%d}"
        done = []
        for model in ops.retrain_models:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "utp.daemon.cli", "train", "--model", model, "--data-dir", str(self.daemon.data_dir),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)  # fmt: skip
            output, _ = await process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"utp train --model {model} failed ({process.returncode}): "
                                   f"{output.decode(errors='replace').strip().splitlines()[-1:]}")  # fmt: skip
            done.append(model)
        marker.write_text(json.dumps({"time": time.time(), "models": done}))
        return f"retrained {', '.join(done)}"


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")
