"""The operations scheduler: jobs that run at set times on the exchange calendar.

Three jobs run the platform's day (`standard_jobs`): `nightly` at 02:00 New York in the night before
every trading session (retrain and walk-forward when due), `pre_market` at 08:30 on every session (data
sync, universe refresh, model freshness) and `end_of_day` 30 minutes after the session's close. The
end-of-day job follows the actual close: 16:30 on a regular day, 13:30 on a half day (the day after
Thanksgiving, Christmas Eve), because its work (reconcile, the day's report) is about the session that
just ended and there is no reason to wait three idle hours for it.

Times are wall-clock times in the job's time zone on the session's date, so they survive DST changes: a
time in the hour skipped when clocks spring forward runs at the same UTC instant as the hour before the
change would have (02:30 becomes 03:30 EDT), and a time in the hour repeated in the autumn runs on its
first occurrence. A "night before a session" ends at noon of the session's date: a job at 02:00 runs on
the session's date, one at 22:00 on the calendar day before.

A missed run (the daemon was down at its time) is not replayed, except that at start a job whose most
recent due time is within `catch_up_s` and later than its last run runs once at once: a daemon restarted
at 08:40 still syncs the data before the open, while one started in the afternoon does not run a stale
pre-market job. The same window applies if the loop wakes late (a suspended host): later than
`catch_up_s`, the occurrence is skipped.

The daemon persists `state()` (the last run of each job) after every result and hands it to `restore()`
on start, so that the catch-up rule knows what already ran.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import exchange_calendars
import pandas as pd

from utp.v1 import core_service_pb2 as api

log = logging.getLogger(__name__)

NEW_YORK = "America/New_York"
CalendarDays = Literal["sessions", "nights_before_sessions"]
Outcome = Literal["ok", "failed", "running", ""]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NS_PER_S = 1_000_000_000
#: Longest one-line detail kept for a run: it travels in ListJobs and alerts.
_DETAIL_CHARS = 500
#: A run that fired this much after its due time is reported as a catch-up rather than on time.
_ON_TIME_NS = 60 * _NS_PER_S


class NowClock(Protocol):
    def now_ns(self) -> int:
        """Current time in ns since the Unix epoch."""
        ...


class _SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


class SchedulerError(Exception):
    """Base of the scheduler's operator-facing errors."""


class UnknownJob(SchedulerError, LookupError):
    """No job of that name (gRPC: NOT_FOUND)."""


class JobBusy(SchedulerError):
    """The job is running already (gRPC: FAILED_PRECONDITION)."""


@dataclass
class JobSpec:
    """What runs when. `run` returns a one-line account of what it did; raising means the run failed."""

    name: str
    description: str
    #: Wall-clock time in `timezone` (on a regular session for jobs that follow an early close).
    at: dt.time
    timezone: str
    calendar_days: CalendarDays
    run: Callable[[], Awaitable[str]]
    #: Sessions only: on an early-close day the run moves earlier by as much as the close did.
    follow_early_close: bool = False
    #: A run still going after this long is cancelled and counted as failed; None waits for ever.
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.calendar_days not in ("sessions", "nights_before_sessions"):
            raise ValueError(f"job {self.name}: calendar_days must be 'sessions' or 'nights_before_sessions'")
        if self.follow_early_close and self.calendar_days != "sessions":
            raise ValueError(f"job {self.name}: follow_early_close needs calendar_days='sessions'")
        ZoneInfo(self.timezone)  # an unknown zone fails here, at configuration, not at the first run


@dataclass(frozen=True)
class JobStatus:
    name: str
    #: e.g. "08:30 America/New_York on trading days".
    schedule: str
    description: str
    next_run_ns: int
    #: When the last (or current) run started; 0 = never ran.
    last_run_ns: int
    last_outcome: Outcome
    #: What the last run did, or its error.
    last_detail: str
    running: bool
    #: Who started the last run: "scheduler", "catch-up" or the operator given to run_now.
    last_actor: str = ""
    #: When the last run ended; 0 while it runs or if it never ran.
    last_finished_ns: int = 0

    def to_proto(self) -> api.ScheduledJob:
        return api.ScheduledJob(
            name=self.name,
            schedule=self.schedule,
            description=self.description,
            next_run_time_ns=self.next_run_ns,
            last_run_time_ns=self.last_run_ns,
            last_outcome=self.last_outcome,
            last_detail=self.last_detail,
            running=self.running,
        )


@dataclass
class _LastRun:
    started_ns: int = 0
    finished_ns: int = 0
    outcome: Outcome = ""
    detail: str = ""
    actor: str = ""


def _to_ns(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 1] + "…"


def standard_jobs(
    *,
    pre_market: Callable[[], Awaitable[str]],
    end_of_day: Callable[[], Awaitable[str]],
    nightly: Callable[[], Awaitable[str]],
    timezone: str = NEW_YORK,
) -> list[JobSpec]:
    """The platform's three jobs on the NYSE day, running the given coroutines."""
    return [
        JobSpec(
            name="nightly",
            description="Retrain the models and run the walk-forward validation when they are due",
            at=dt.time(2, 0),
            timezone=timezone,
            calendar_days="nights_before_sessions",
            run=nightly,
        ),
        JobSpec(
            name="pre_market",
            description="Sync the latest bars, refresh the universe and check the models are fresh",
            at=dt.time(8, 30),
            timezone=timezone,
            calendar_days="sessions",
            run=pre_market,
        ),
        JobSpec(
            name="end_of_day",
            description="Close the trading day: reconcile with the broker, record the account, write the report",
            at=dt.time(16, 30),
            timezone=timezone,
            calendar_days="sessions",
            run=end_of_day,
            follow_early_close=True,
        ),
    ]


class Scheduler:
    """Runs `JobSpec`s at their times on an exchange calendar; see the module's docstring for the rules."""

    def __init__(
        self,
        jobs: Iterable[JobSpec],
        *,
        calendar: str | exchange_calendars.ExchangeCalendar = "XNYS",
        clock: NowClock | None = None,
        catch_up_s: float = 3600.0,
        on_result: Callable[[JobStatus], None] | None = None,
    ) -> None:
        self._specs: dict[str, JobSpec] = {}
        for spec in jobs:
            if spec.name in self._specs:
                raise ValueError(f"two jobs are named {spec.name!r}")
            self._specs[spec.name] = spec
        # A calendar given by name is rebuilt wider whenever a query nears its ends, so a daemon that runs
        # for years never falls off it; a calendar object is used as it is.
        self._calendar_name = calendar if isinstance(calendar, str) else None
        self._calendar = (
            calendar
            if not isinstance(calendar, str)
            else self._build_calendar(calendar, pd.Timestamp.now().normalize())
        )
        self._clock: NowClock = clock or _SystemClock()
        self.catch_up_s = catch_up_s
        self.on_result = on_result
        self._last = {name: _LastRun() for name in self._specs}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[JobStatus]] = set()
        self._loop_due: dict[str, int] | None = None

    # -- calendar ----------------------------------------------------------------------------------
    @staticmethod
    def _build_calendar(
        name: str, around: pd.Timestamp, have: exchange_calendars.ExchangeCalendar | None = None
    ) -> exchange_calendars.ExchangeCalendar:
        start = around - pd.DateOffset(years=2)
        end = around + pd.DateOffset(years=3)
        if have is not None:
            start = min(start, have.first_session)
            end = max(end, have.last_session)
        return exchange_calendars.get_calendar(name, start=start, end=end)

    def _covering(self, day: dt.date) -> exchange_calendars.ExchangeCalendar:
        stamp = pd.Timestamp(day)
        margin = pd.Timedelta(days=20)
        cal = self._calendar
        if self._calendar_name is not None and not (cal.first_session + margin <= stamp <= cal.last_session - margin):
            self._calendar = cal = self._build_calendar(self._calendar_name, stamp, cal)
        return cal

    def _regular_close(self, session: pd.Timestamp) -> dt.time:
        applicable = [close for start, close in self._calendar.close_times if start is None or start <= session]
        return applicable[-1]

    def _occurrence_ns(self, spec: JobSpec, session: pd.Timestamp) -> int:
        day = session.date()
        if spec.calendar_days == "nights_before_sessions" and spec.at >= dt.time(12, 0):
            day -= dt.timedelta(days=1)
        when = _to_ns(dt.datetime.combine(day, spec.at, tzinfo=ZoneInfo(spec.timezone)))
        if spec.follow_early_close:
            cal = self._calendar
            regular = _to_ns(dt.datetime.combine(session.date(), self._regular_close(session), tzinfo=cal.tz))
            actual = cal.session_close(session).value
            when -= max(0, regular - actual)
        return when

    def _local_date(self, spec: JobSpec, ns: int) -> dt.date:
        return dt.datetime.fromtimestamp(ns / _NS_PER_S, tz=ZoneInfo(spec.timezone)).date()

    def _spec(self, name: str) -> JobSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownJob(f"no job named {name!r} (jobs: {', '.join(self._specs)})") from None

    def next_run(self, name: str, after_ns: int) -> int:
        """The first time strictly after `after_ns` (UTC ns) that the job is due."""
        spec = self._spec(name)
        day = self._local_date(spec, after_ns) - dt.timedelta(days=2)
        self._covering(day + dt.timedelta(days=15))
        cal = self._covering(day)
        session = cal.date_to_session(pd.Timestamp(day), direction="next")
        # Occurrences rise with the session (at most a day's shift either way), so the first one past
        # `after_ns` is found within a few sessions of its date.
        while True:
            when = self._occurrence_ns(spec, session)
            if when > after_ns:
                return when
            session = self._covering(session.date() + dt.timedelta(days=10)).next_session(session)

    def previous_run(self, name: str, at_or_before_ns: int) -> int:
        """The job's most recent due time at or before `at_or_before_ns` (UTC ns)."""
        spec = self._spec(name)
        day = self._local_date(spec, at_or_before_ns) + dt.timedelta(days=2)
        self._covering(day - dt.timedelta(days=15))
        cal = self._covering(day)
        session = cal.date_to_session(pd.Timestamp(day), direction="previous")
        while True:
            when = self._occurrence_ns(spec, session)
            if when <= at_or_before_ns:
                return when
            session = self._covering(session.date() - dt.timedelta(days=10)).previous_session(session)

    def schedule_text(self, name: str) -> str:
        spec = self._spec(name)
        days = "trading days" if spec.calendar_days == "sessions" else "nights before trading days"
        text = f"{spec.at:%H:%M} {spec.timezone} on {days}"
        if spec.follow_early_close:
            close = self._regular_close(self._calendar.last_session)
            delta = dt.datetime.combine(dt.date.min, spec.at) - dt.datetime.combine(dt.date.min, close)
            minutes = int(delta.total_seconds() // 60)
            side = "after" if minutes >= 0 else "before"
            text += f", {abs(minutes)} min {side} an early close"
        return text

    # -- status and persistence ----------------------------------------------------------------------
    def status(self, name: str) -> JobStatus:
        spec = self._spec(name)
        last = self._last[name]
        now = self._clock.now_ns()
        next_ns = self.next_run(name, now)
        if self._loop_due is not None and name in self._loop_due:
            next_ns = min(next_ns, self._loop_due[name])  # a catch-up run waiting to fire
        return JobStatus(
            name=name,
            schedule=self.schedule_text(name),
            description=spec.description,
            next_run_ns=next_ns,
            last_run_ns=last.started_ns,
            last_outcome=last.outcome,
            last_detail=last.detail,
            running=name in self._running,
            last_actor=last.actor,
            last_finished_ns=last.finished_ns,
        )

    def jobs(self) -> list[JobStatus]:
        return [self.status(name) for name in self._specs]

    def state(self) -> dict[str, Any]:
        """The last run of every job, as JSON-able data for the daemon to persist."""
        return {
            "version": 1,
            "jobs": {
                name: {
                    "last_run_ns": last.started_ns,
                    "last_finished_ns": last.finished_ns,
                    "last_outcome": last.outcome,
                    "last_detail": last.detail,
                    "last_actor": last.actor,
                }
                for name, last in self._last.items()
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Takes back what `state()` returned; jobs no longer configured are ignored."""
        for name, saved in (state or {}).get("jobs", {}).items():
            if name not in self._last or name in self._running or not isinstance(saved, dict):
                continue
            outcome = saved.get("last_outcome", "")
            detail = str(saved.get("last_detail", ""))
            if outcome == "running":
                # The daemon stopped while the job ran: whatever it did is unfinished.
                outcome, detail = "failed", "interrupted: the daemon stopped while it ran"
            if outcome not in ("ok", "failed", ""):
                outcome = ""
            self._last[name] = _LastRun(
                started_ns=int(saved.get("last_run_ns", 0) or 0),
                finished_ns=int(saved.get("last_finished_ns", 0) or 0),
                outcome=outcome,
                detail=detail,
                actor=str(saved.get("last_actor", "")),
            )

    # -- running -------------------------------------------------------------------------------------
    def _begin(self, name: str, actor: str) -> asyncio.Task[JobStatus]:
        """Marks the job running (synchronously, so no second start can slip in) and starts it."""
        spec = self._spec(name)
        if name in self._running:
            raise JobBusy(f"job {name} is running (started {self._last[name].actor or 'earlier'})")
        self._running.add(name)
        self._last[name] = _LastRun(started_ns=self._clock.now_ns(), outcome="running", actor=actor)
        task = asyncio.get_running_loop().create_task(self._execute(spec, actor), name=f"job:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _execute(self, spec: JobSpec, actor: str) -> JobStatus:
        log.info("job %s starting (%s)", spec.name, actor)
        outcome: Outcome = "failed"
        try:
            run = spec.run()
            result = await (asyncio.wait_for(run, spec.timeout_s) if spec.timeout_s is not None else run)
            outcome, detail = "ok", _one_line("" if result is None else str(result))
        except asyncio.CancelledError:
            detail = "cancelled: the daemon is stopping"
            self._finish(spec.name, outcome, detail)
            raise
        except TimeoutError:
            detail = f"timed out after {spec.timeout_s:g} s"
        except Exception as exc:
            log.exception("job %s failed", spec.name)
            detail = _one_line(f"{type(exc).__name__}: {exc}")
        return self._finish(spec.name, outcome, detail)

    def _finish(self, name: str, outcome: Outcome, detail: str) -> JobStatus:
        last = self._last[name]
        self._last[name] = replace(last, finished_ns=self._clock.now_ns(), outcome=outcome, detail=detail)
        self._running.discard(name)
        status = self.status(name)
        log.log(logging.INFO if outcome == "ok" else logging.ERROR, "job %s %s: %s", name, outcome, detail)
        if self.on_result is not None:
            try:
                self.on_result(status)
            except Exception:  # an alerting failure must not take the scheduler down
                log.exception("on_result failed for job %s", name)
        return status

    async def run_now(self, name: str, actor: str) -> JobStatus:
        """Runs the job at once and answers when it has finished; UnknownJob, JobBusy."""
        task = self._begin(name, actor or "operator")
        # Shielded: an operator whose call is cancelled (a closed console) does not abort the job.
        return await asyncio.shield(task)

    async def run_forever(
        self,
        clock: NowClock | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep_s: float = 60.0,
    ) -> None:
        """Runs every job at its times until cancelled; jobs it started are cancelled with it.

        Sleeps are at most `max_sleep_s`, so a wall clock that jumps (NTP, a resumed host) is noticed.
        """
        if clock is not None:
            self._clock = clock
        now = self._clock.now_ns()
        catch_up_ns = int(self.catch_up_s * _NS_PER_S)
        due: dict[str, int] = {}
        for name in self._specs:
            previous = self.previous_run(name, now)
            if now - previous <= catch_up_ns and self._last[name].started_ns < previous:
                due[name] = previous
            else:
                due[name] = self.next_run(name, now)
        self._loop_due = due
        started: set[asyncio.Task[JobStatus]] = set()
        try:
            while True:
                now = self._clock.now_ns()
                for name in sorted(self._specs, key=lambda n: due[n]):
                    if due[name] > now:
                        continue
                    late_ns = now - due[name]
                    if late_ns > catch_up_ns:
                        log.warning("job %s skipped: due %.0f s ago, past the catch-up window", name, late_ns / 1e9)
                    elif name in self._running:
                        log.warning("job %s skipped: still running from %s", name, self._last[name].actor)
                    else:
                        task = self._begin(name, "scheduler" if late_ns < _ON_TIME_NS else "catch-up")
                        started.add(task)
                        task.add_done_callback(started.discard)
                    due[name] = self.next_run(name, max(now, due[name]))
                wait_s = (min(due.values()) - now) / _NS_PER_S if due else max_sleep_s
                await sleep(min(max(wait_s, 0.0), max_sleep_s))
        finally:
            self._loop_due = None
            for task in started:
                task.cancel()
            if started:
                await asyncio.gather(*started, return_exceptions=True)
