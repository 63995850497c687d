"""Watchdogs: probes of the daemon's health, recovery actions and operator alerts.

Each `Check` probes something on its interval. When a probe reports a `Problem` on
`failures_before_action` consecutive probes, the watchdog runs the check's recovery (at most once per
`cooldown_s`, across episodes, so a flapping feed does not reconnect in a tight loop) and then raises an
`Alert` that says what the recovery did or how it failed, so that one alert carries the whole story.
While the problem lasts it stays quiet, except when the cooldown lets it try to recover again or the
problem turns from warning to critical. When the probe is fine again after an alert, a resolved alert
closes it.

A probe that raises or hangs past its timeout is itself a critical problem: a health check that cannot
answer is no evidence of health. Recovery actions are bounded too, so one stuck reconnect cannot stop the
other watchdogs, which run concurrently.

The probe builders cover the platform's usual suspects: a stale data feed during the session, engines
that lag or stop reporting, the broker, the process's memory and the state folder's disk.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import resource
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import exchange_calendars
import pandas as pd

from utp.core.batch import END, NOTHING
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

Severity = Literal["warning", "critical"]
_RANK = {"warning": 1, "critical": 2}
_PROTO_SEVERITY = {"warning": pb.ALERT_SEVERITY_WARNING, "critical": pb.ALERT_SEVERITY_CRITICAL}


@dataclass(frozen=True)
class Problem:
    severity: Severity
    message: str


@dataclass(frozen=True)
class Alert:
    #: "watchdog:<check name>".
    source: str
    severity: Severity
    message: str
    #: What the recovery did ("reconnected"), how it failed ("recovery failed: ..."), or "".
    action: str
    #: The condition is over.
    resolved: bool
    #: Wall-clock time of the alert, ns since the epoch.
    time_ns: int = 0

    def to_proto(self, event_id: str = "") -> pb.OperatorAlert:
        return pb.OperatorAlert(
            header=pb.EventHeader(event_id=event_id, event_time_ns=self.time_ns),
            severity=_PROTO_SEVERITY[self.severity],
            source=self.source,
            message=self.message,
            action=self.action,
            resolved=self.resolved,
        )


Probe = Callable[[], Awaitable[Problem | None]]
Recover = Callable[[Problem], Awaitable[str]]


@dataclass
class Check:
    name: str
    #: None when all is well.
    probe: Probe
    #: Returns what it did; raising means the recovery failed. None: alert only.
    recover: Recover | None
    interval_s: float
    failures_before_action: int = 1
    cooldown_s: float = 300.0
    #: A probe that has not answered after this long is a critical problem (default: `interval_s`).
    probe_timeout_s: float | None = None
    recover_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.failures_before_action < 1 or self.cooldown_s < 0:
            raise ValueError(f"check {self.name}: interval_s > 0, failures_before_action >= 1, cooldown_s >= 0")


@dataclass(frozen=True)
class CheckStatus:
    name: str
    healthy: bool
    #: The problem of the latest probe, if any.
    problem: Problem | None
    consecutive_failures: int
    #: What the latest recovery did ("" if none ran yet).
    last_action: str
    #: Monotonic time of the latest probe; None before the first.
    last_probe_s: float | None


@dataclass
class _CheckState:
    failures: int = 0
    problem: Problem | None = None
    #: Severity of the alert still open (not yet resolved), or None.
    alerted: Severity | None = None
    last_recover_s: float | None = None
    last_action: str = ""
    last_probe_s: float | None = None


class Watchdogs:
    def __init__(
        self,
        checks: Iterable[Check],
        alert: Callable[[Alert], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.checks: dict[str, Check] = {}
        for check in checks:
            if check.name in self.checks:
                raise ValueError(f"two checks are named {check.name!r}")
            self.checks[check.name] = check
        self._alert = alert
        self._monotonic = monotonic
        self._wall_ns = wall_ns
        self._state = {name: _CheckState() for name in self.checks}

    def statuses(self) -> list[CheckStatus]:
        return [
            CheckStatus(
                name=name,
                healthy=state.problem is None,
                problem=state.problem,
                consecutive_failures=state.failures,
                last_action=state.last_action,
                last_probe_s=state.last_probe_s,
            )
            for name, state in self._state.items()
        ]

    def _due(self, name: str, now_s: float) -> bool:
        last = self._state[name].last_probe_s
        return last is None or now_s - last >= self.checks[name].interval_s - 1e-9

    def next_due_s(self) -> float:
        """Monotonic time at which the next check is due."""
        return min(
            (state.last_probe_s if state.last_probe_s is not None else float("-inf")) + self.checks[name].interval_s
            for name, state in self._state.items()
        )

    async def check_once(self, now_s: float | None = None) -> None:
        """Probes every check due at `now_s` (monotonic seconds; every check on the first call)."""
        now = self._monotonic() if now_s is None else now_s
        due = [name for name in self.checks if self._due(name, now)]
        await asyncio.gather(*(self._evaluate(self.checks[name], self._state[name], now) for name in due))

    async def run_forever(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Probes each check on its interval until cancelled."""
        if not self.checks:
            return
        while True:
            await self.check_once(self._monotonic())
            await sleep(max(0.0, self.next_due_s() - self._monotonic()))

    async def _probe(self, check: Check) -> Problem | None:
        timeout = check.probe_timeout_s if check.probe_timeout_s is not None else check.interval_s
        try:
            return await asyncio.wait_for(check.probe(), timeout)
        except TimeoutError:
            return Problem("critical", f"{check.name} probe did not answer within {timeout:g} s")
        except Exception as exc:
            log.warning("watchdog %s: probe raised", check.name, exc_info=True)
            return Problem("critical", f"{check.name} probe failed: {type(exc).__name__}: {exc}")

    async def _recover(self, check: Check, problem: Problem) -> str:
        assert check.recover is not None
        try:
            done = await asyncio.wait_for(check.recover(problem), check.recover_timeout_s)
            return str(done) if done else "recovery ran"
        except TimeoutError:
            return f"recovery failed: timed out after {check.recover_timeout_s:g} s"
        except Exception as exc:
            log.exception("watchdog %s: recovery failed", check.name)
            return f"recovery failed: {type(exc).__name__}: {exc}"

    def _emit(self, check: Check, severity: Severity, message: str, action: str, resolved: bool) -> None:
        alert = Alert(f"watchdog:{check.name}", severity, message, action, resolved, self._wall_ns())
        log.log(logging.INFO if resolved else logging.WARNING, "%s %s: %s [%s]",
                alert.source, "resolved" if resolved else severity, message, action)  # fmt: skip
        try:
            self._alert(alert)
        except Exception:  # the alert sink failing must not stop the watchdogs
            log.exception("watchdog %s: could not deliver the alert", check.name)

    async def _evaluate(self, check: Check, state: _CheckState, now_s: float) -> None:
        problem = await self._probe(check)
        state.last_probe_s = now_s
        if problem is None:
            if state.alerted is not None and state.problem is not None:
                self._emit(check, state.alerted, f"{check.name} is healthy again (was: {state.problem.message})",
                           "", resolved=True)  # fmt: skip
            state.failures, state.problem, state.alerted = 0, None, None
            return
        state.failures += 1
        state.problem = problem
        if state.failures < check.failures_before_action:
            return
        cooled = state.last_recover_s is None or now_s - state.last_recover_s >= check.cooldown_s
        if check.recover is not None and cooled:
            state.last_recover_s = now_s
            state.last_action = await self._recover(check, problem)
            self._emit(check, problem.severity, problem.message, state.last_action, resolved=False)
            state.alerted = problem.severity
        elif state.alerted is None or _RANK[problem.severity] > _RANK[state.alerted]:
            action = ""
            if check.recover is not None and state.last_recover_s is not None:
                wait = check.cooldown_s - (now_s - state.last_recover_s)
                action = f"recovery cooling down ({wait:.0f} s left; last: {state.last_action})"
            self._emit(check, problem.severity, problem.message, action, resolved=False)
            state.alerted = problem.severity


# -- probe builders ------------------------------------------------------------------------------------------
def exchange_session(calendar: str = "XNYS") -> Callable[[int], bool]:
    """Whether the exchange is open at a UTC ns time (regular hours, half days and holidays included)."""
    cal = exchange_calendars.get_calendar(calendar)

    def is_open(now_ns: int) -> bool:
        nonlocal cal
        minute = pd.Timestamp(now_ns, tz="UTC")
        if not cal.first_minute <= minute <= cal.last_minute:
            # A daemon that outlives the calendar's default range (a year ahead) gets a wider one.
            cal = exchange_calendars.get_calendar(
                calendar, start=(minute - pd.DateOffset(years=1)).tz_localize(None).normalize(),
                end=(minute + pd.DateOffset(years=2)).tz_localize(None).normalize(),
            )  # fmt: skip
        return bool(cal.is_open_on_minute(minute))

    return is_open


def data_feed_staleness(
    last_bar_time_ns: Callable[[], int | None],
    now_ns: Callable[[], int],
    max_age_s: float,
    in_session: Callable[[int], bool],
    *,
    severity: Severity = "critical",
) -> Probe:
    """A problem when, during the session, the newest bar is older than `max_age_s`.

    Out of session a quiet feed is normal. The age counts from the later of the newest bar and the
    moment this probe first saw the session open (or started), so the first bars of the day, or of a
    daemon started mid-session, get `max_age_s` to arrive.
    """
    session_seen_ns: int | None = None

    async def probe() -> Problem | None:
        nonlocal session_seen_ns
        now = now_ns()
        if not in_session(now):
            session_seen_ns = None
            return None
        if session_seen_ns is None:
            session_seen_ns = now
        last = last_bar_time_ns()
        age_s = (now - max(last if last is not None else NOTHING, session_seen_ns)) / 1e9
        if age_s <= max_age_s:
            return None
        if last is None:
            return Problem(severity, f"no bar has arrived {age_s:.0f} s into the session (limit {max_age_s:g} s)")
        return Problem(severity, f"the newest bar is {(now - last) / 1e9:.0f} s old (limit {max_age_s:g} s)")

    return probe


def reconnect_feed(feed: object) -> Recover:
    """The data-feed watchdog's recovery: connect again the live sources that ended or went quiet
    (`FailoverFeed.reconnect`, run off the event loop: stopping a vendor's client takes a moment)."""

    async def recover(problem: Problem) -> str:  # noqa: ARG001 - the Recover signature
        reconnect = getattr(feed, "reconnect", None)
        if reconnect is None:
            return "no live feed to reconnect"
        names = await asyncio.to_thread(reconnect)
        return f"reconnected {', '.join(names)}" if names else "no source could reconnect"

    return recover


def failed_engines(runners: Callable[[], Iterable[Any]]) -> Probe:
    """A critical problem while any engine runner has failed, with each one's error."""

    async def probe() -> Problem | None:
        failed = [r for r in runners() if r.state == pb.ENGINE_STATE_FAILED]
        if not failed:
            return None
        return Problem("critical", "failed: " + "; ".join(r.last_error or r.engine.name for r in failed))

    return probe


def restart_failed_engines(runners: Callable[[], Iterable[Any]]) -> Recover:
    """The engines watchdog's recovery: restart each failed engine from its last checkpoint (EngineRunner.restart;
    on a durable bus only, which delivers again what came after it). Raises, so the alert says the recovery
    failed and why, when none could restart."""

    async def recover(problem: Problem) -> str:  # noqa: ARG001 - the Recover signature
        restarted, refused = [], []
        for runner in [r for r in runners() if r.state == pb.ENGINE_STATE_FAILED]:
            try:
                await runner.restart()
            except Exception as exc:  # one engine that cannot restart must not keep the others down
                refused.append(str(exc))
            else:
                restarted.append(runner.engine.name)
        if refused and not restarted:
            raise RuntimeError("; ".join(refused))
        done = f"restarted {', '.join(restarted)} from the last checkpoint" if restarted else "nothing to restart"
        return done + (f"; not restarted: {'; '.join(refused)}" if refused else "")

    return recover


def engine_lag(
    statuses: Callable[[], Mapping[str, tuple[int, int]]],
    max_lag_s: float,
    *,
    now_ns: Callable[[], int] = time.time_ns,
    expected_update_s: float = 60.0,
    missed_updates: int = 3,
    in_session: Callable[[int], bool] | None = None,
) -> Probe:
    """Engines behind the leading engine by more than `max_lag_s` of event time (warning), or silent (critical).

    `statuses` maps engine name -> (through_time_ns, wall time ns its status arrived); give it only
    the engines that should be running (not finished ones). An engine whose status has not arrived for
    `missed_updates` x `expected_update_s` (how often a busy engine reports: the bar interval live) is
    down. Engines report only when they process data, so with `in_session` silence out of session is
    not counted as down.
    """

    async def probe() -> Problem | None:
        now = now_ns()
        snapshot = dict(statuses())
        if not snapshot:
            return None
        silent_limit_ns = missed_updates * expected_update_s * 1e9
        watching_silence = in_session is None or in_session(now)
        down = sorted(name for name, (_, arrived) in snapshot.items() if now - arrived > silent_limit_ns)
        started = {name: through for name, (through, _) in snapshot.items() if NOTHING < through < END}
        leader = max(started.values(), default=None)
        lagging = sorted(
            (name, (leader - through) / 1e9)
            for name, through in started.items()
            if leader is not None and leader - through > max_lag_s * 1e9
        )
        behind = ", ".join(f"{name} {lag:.0f} s" for name, lag in lagging)
        if down and watching_silence:
            message = f"no status for over {silent_limit_ns / 1e9:.0f} s from: {', '.join(down)}"
            return Problem("critical", message + (f"; behind the leading engine: {behind}" if behind else ""))
        if lagging:
            return Problem("warning", f"behind the leading engine by more than {max_lag_s:g} s: {behind}")
        return None

    return probe


def broker_connectivity(ping: Callable[[], Awaitable[None]], *, timeout_s: float = 10.0) -> Probe:
    """A critical problem when the broker's ping raises or does not answer within `timeout_s`."""

    async def probe() -> Problem | None:
        try:
            await asyncio.wait_for(ping(), timeout_s)
        except TimeoutError:
            return Problem("critical", f"the broker did not answer within {timeout_s:g} s")
        except Exception as exc:
            return Problem("critical", f"the broker is unreachable: {type(exc).__name__}: {exc}")
        return None

    return probe


def process_rss_bytes(status_path: str | Path = "/proc/self/status") -> int:
    """This process's resident memory now (VmRSS); where /proc is missing, its peak (getrusage)."""
    try:
        with open(status_path) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    value, unit = line.split()[1:3]
                    return int(value) * {"kB": 1024, "mB": 1024**2, "gB": 1024**3}.get(unit, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def memory(max_rss_bytes: int, *, warn_fraction: float = 0.9, rss: Callable[[], int] = process_rss_bytes) -> Probe:
    """Critical at `max_rss_bytes` of resident memory, a warning from `warn_fraction` of it."""

    async def probe() -> Problem | None:
        used = rss()
        if used >= max_rss_bytes:
            return Problem("critical", f"resident memory {_size(used)} is over the limit {_size(max_rss_bytes)}")
        if used >= warn_fraction * max_rss_bytes:
            return Problem("warning", f"resident memory {_size(used)} is near the limit {_size(max_rss_bytes)}")
        return None

    return probe


def _malloc_trim() -> bool:
    """Hands freed heap pages back to the OS (glibc's malloc_trim); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def release_memory(*, drop_caches: Iterable[Callable[[], object]] = (),
                   rss: Callable[[], int] = process_rss_bytes) -> Recover:  # fmt: skip
    """The memory watchdog's recovery: empty the given caches, collect garbage (cycles polars frames and
    protobuf messages leave behind) and return freed heap to the OS; says how much resident memory it freed.
    It cannot fix a leak, which the alert still reports, but it buys time before the OOM killer."""
    caches = list(drop_caches)

    async def recover(problem: Problem) -> str:  # noqa: ARG001 - the Recover signature
        before = rss()
        for drop in caches:
            drop()
        collected = gc.collect()
        trimmed = _malloc_trim()
        after = rss()
        return (f"released memory: {_size(max(before - after, 0))} freed ({_size(before)} -> {_size(after)}), "
                f"{collected} objects collected{', heap trimmed' if trimmed else ''}")  # fmt: skip

    return recover


def disk(path: str | Path, *, min_free_bytes: int | None = None, min_free_fraction: float | None = None) -> Probe:
    """Critical when the file system holding `path` has less free space than either threshold."""
    if min_free_bytes is None and min_free_fraction is None:
        raise ValueError("disk(): give min_free_bytes or min_free_fraction")

    async def probe() -> Problem | None:
        usage = shutil.disk_usage(path)
        fraction = usage.free / usage.total if usage.total else 0.0
        short = (min_free_bytes is not None and usage.free < min_free_bytes) or (
            min_free_fraction is not None and fraction < min_free_fraction
        )
        if not short:
            return None
        limits = []
        if min_free_bytes is not None:
            limits.append(_size(min_free_bytes))
        if min_free_fraction is not None:
            limits.append(f"{min_free_fraction:.0%}")
        return Problem(
            "critical",
            f"{path}: {_size(usage.free)} free ({fraction:.1%} of {_size(usage.total)}), below {' / '.join(limits)}",
        )

    return probe
