"""The operations scheduler on the real NYSE calendar: due times, the run loop on a fake clock, catch-up."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable

import pandas as pd
import pytest

from utp.daemon.scheduler import JobBusy, JobSpec, JobStatus, Scheduler, UnknownJob, standard_jobs


def ny(text: str) -> int:
    return pd.Timestamp(text, tz="America/New_York").value


def utc(text: str) -> int:
    return pd.Timestamp(text, tz="UTC").value


class EndOfSimulation(Exception):
    pass


class FakeClock:
    """Time that moves only when the scheduler sleeps; ends the run at `end_ns`."""

    def __init__(self, start_ns: int, end_ns: int) -> None:
        self.now = start_ns
        self.end_ns = end_ns
        self.sleeps: list[float] = []

    def now_ns(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)  # the jobs started before this sleep run at the time they were due
        self.now += round(seconds * 1e9)
        if self.now >= self.end_ns:
            raise EndOfSimulation


def recording_jobs(ran: list[tuple[str, int]], clock: FakeClock) -> list[JobSpec]:
    def job(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            ran.append((name, clock.now_ns()))
            return f"{name} done\nsecond line"

        return run

    return standard_jobs(pre_market=job("pre_market"), end_of_day=job("end_of_day"), nightly=job("nightly"))


async def never() -> str:
    raise AssertionError("a job that must not run ran")


@pytest.fixture(scope="module")
def scheduler() -> Scheduler:
    return Scheduler(standard_jobs(pre_market=never, end_of_day=never, nightly=never))


# -- due times ---------------------------------------------------------------------------------------------
def test_next_run_skips_the_weekend(scheduler: Scheduler) -> None:
    friday_evening = ny("2025-11-21 17:00")
    assert scheduler.next_run("nightly", friday_evening) == ny("2025-11-24 02:00")
    assert scheduler.next_run("pre_market", friday_evening) == ny("2025-11-24 08:30")
    assert scheduler.next_run("end_of_day", friday_evening) == ny("2025-11-24 16:30")
    # Strictly after: at the due time itself the next one is the following session's.
    assert scheduler.next_run("pre_market", ny("2025-11-24 08:30")) == ny("2025-11-25 08:30")
    assert scheduler.previous_run("pre_market", ny("2025-11-24 08:30")) == ny("2025-11-24 08:30")
    assert scheduler.previous_run("end_of_day", ny("2025-11-23 12:00")) == ny("2025-11-21 16:30")


def test_next_run_skips_holidays(scheduler: Scheduler) -> None:
    # Christmas 2025 is a Thursday: no session, so no night before it either.
    assert scheduler.next_run("nightly", ny("2025-12-24 03:00")) == ny("2025-12-26 02:00")
    assert scheduler.next_run("pre_market", ny("2025-12-24 09:00")) == ny("2025-12-26 08:30")
    # 2026-07-03 is Independence Day observed (a Friday): the next session is Monday the 6th.
    assert scheduler.next_run("pre_market", ny("2026-07-02 09:00")) == utc("2026-07-06 12:30")
    assert scheduler.next_run("end_of_day", ny("2026-07-02 17:00")) == utc("2026-07-06 20:30")
    assert scheduler.previous_run("nightly", ny("2026-07-05 23:00")) == ny("2026-07-02 02:00")


def test_end_of_day_follows_the_early_close_of_half_days(scheduler: Scheduler) -> None:
    # The day after Thanksgiving and Christmas Eve close at 13:00: end of day runs at 13:30.
    assert scheduler.next_run("end_of_day", ny("2025-11-26 17:00")) == utc("2025-11-28 18:30")
    assert scheduler.next_run("end_of_day", ny("2025-12-24 09:00")) == utc("2025-12-24 18:30")
    assert scheduler.next_run("pre_market", ny("2025-11-26 17:00")) == ny("2025-11-28 08:30")
    assert scheduler.status("end_of_day").schedule == (
        "16:30 America/New_York on trading days, 30 min after an early close"
    )
    # A job that does not follow the close keeps its wall-clock time on half days.
    fixed = Scheduler([JobSpec("report", "", dt.time(16, 30), "America/New_York", "sessions", never)])
    assert fixed.next_run("report", ny("2025-12-24 09:00")) == ny("2025-12-24 16:30")


def test_next_run_across_dst_changes(scheduler: Scheduler) -> None:
    # Clocks spring forward on Sunday 2026-03-08: 08:30 is 13:30 UTC on Friday and 12:30 UTC on Monday.
    assert scheduler.previous_run("pre_market", ny("2026-03-07 12:00")) == utc("2026-03-06 13:30")
    assert scheduler.next_run("pre_market", ny("2026-03-06 09:00")) == utc("2026-03-09 12:30")
    assert scheduler.next_run("nightly", ny("2026-03-06 03:00")) == utc("2026-03-09 06:00")
    # And fall back on Sunday 2026-11-01.
    assert scheduler.previous_run("pre_market", ny("2026-10-31 12:00")) == utc("2026-10-30 12:30")
    assert scheduler.next_run("pre_market", ny("2026-10-30 09:00")) == utc("2026-11-02 13:30")
    assert scheduler.next_run("end_of_day", ny("2026-10-30 17:00")) == utc("2026-11-02 21:30")
    assert scheduler.next_run("nightly", ny("2026-10-30 03:00")) == utc("2026-11-02 07:00")
    # Years past the calendar's initial range: it widens (2031's spring change is on 9 March).
    assert scheduler.next_run("pre_market", ny("2031-03-07 09:00")) == utc("2031-03-10 12:30")


def test_evening_job_of_nights_before_sessions_runs_the_calendar_day_before(scheduler: Scheduler) -> None:
    evening = Scheduler([JobSpec("prep", "", dt.time(22, 0), "America/New_York", "nights_before_sessions", never)])
    # The night before Monday's session starts on Sunday evening; Friday evening precedes no session.
    assert evening.next_run("prep", ny("2025-11-21 09:00")) == ny("2025-11-23 22:00")
    assert evening.next_run("prep", ny("2025-11-23 23:00")) == ny("2025-11-24 22:00")
    assert evening.schedule_text("prep") == "22:00 America/New_York on nights before trading days"


def test_unknown_job_names_are_refused(scheduler: Scheduler) -> None:
    with pytest.raises(UnknownJob, match="no job named 'weekly'"):
        scheduler.next_run("weekly", ny("2025-11-21 09:00"))
    with pytest.raises(ValueError, match="follow_early_close"):
        JobSpec("x", "", dt.time(2), "America/New_York", "nights_before_sessions", never, follow_early_close=True)


# -- the run loop ------------------------------------------------------------------------------------------
async def simulate(scheduler: Scheduler, clock: FakeClock) -> None:
    with pytest.raises(EndOfSimulation):
        await scheduler.run_forever(clock, sleep=clock.sleep)


async def test_run_forever_runs_each_job_at_its_time_through_thanksgiving_week() -> None:
    clock = FakeClock(ny("2025-11-23 00:00"), ny("2025-11-30 00:00"))
    ran: list[tuple[str, int]] = []
    results: list[JobStatus] = []
    scheduler = Scheduler(recording_jobs(ran, clock), clock=clock, on_result=results.append)
    await simulate(scheduler, clock)

    expected = []
    for day in ("2025-11-24", "2025-11-25", "2025-11-26"):  # Thursday the 27th is Thanksgiving
        expected += [("nightly", ny(f"{day} 02:00")), ("pre_market", ny(f"{day} 08:30"))]
        expected += [("end_of_day", ny(f"{day} 16:30"))]
    expected += [("nightly", ny("2025-11-28 02:00")), ("pre_market", ny("2025-11-28 08:30"))]
    expected += [("end_of_day", ny("2025-11-28 13:30"))]  # the half day closes at 13:00
    assert ran == expected
    assert [(r.name, r.last_run_ns, r.last_outcome, r.last_actor) for r in results] == [
        (name, at, "ok", "scheduler") for name, at in expected
    ]
    assert all(r.last_detail == f"{r.name} done second line" and not r.running for r in results)
    assert max(clock.sleeps) <= 60.0
    after = {job.name: job for job in scheduler.jobs()}
    assert after["pre_market"].next_run_ns == ny("2025-12-01 08:30")
    assert after["end_of_day"].last_run_ns == ny("2025-11-28 13:30")
    assert after["end_of_day"].last_finished_ns >= after["end_of_day"].last_run_ns


async def test_run_forever_keeps_local_times_across_the_spring_dst_change() -> None:
    clock = FakeClock(ny("2026-03-06 00:00"), ny("2026-03-10 00:00"))
    ran: list[tuple[str, int]] = []
    scheduler = Scheduler(recording_jobs(ran, clock), clock=clock)
    await simulate(scheduler, clock)
    assert ran == [
        ("nightly", utc("2026-03-06 07:00")),
        ("pre_market", utc("2026-03-06 13:30")),
        ("end_of_day", utc("2026-03-06 21:30")),
        ("nightly", utc("2026-03-09 06:00")),
        ("pre_market", utc("2026-03-09 12:30")),
        ("end_of_day", utc("2026-03-09 20:30")),
    ]


async def test_a_failing_job_is_recorded_failed_and_the_others_still_run() -> None:
    clock = FakeClock(ny("2025-11-24 00:00"), ny("2025-11-25 00:00"))
    ran: list[tuple[str, int]] = []
    results: list[JobStatus] = []
    jobs = recording_jobs(ran, clock)

    async def broken_sync() -> str:
        raise RuntimeError("vendor feed down")

    jobs[1].run = broken_sync
    scheduler = Scheduler(jobs, clock=clock, on_result=results.append)
    await simulate(scheduler, clock)

    assert [(r.name, r.last_outcome) for r in results] == [
        ("nightly", "ok"),
        ("pre_market", "failed"),
        ("end_of_day", "ok"),
    ]
    failed = scheduler.status("pre_market")
    assert failed.last_outcome == "failed" and failed.last_detail == "RuntimeError: vendor feed down"
    assert failed.last_run_ns == ny("2025-11-24 08:30") and not failed.running


async def test_an_on_result_callback_that_raises_does_not_stop_the_scheduler() -> None:
    clock = FakeClock(ny("2025-11-24 00:00"), ny("2025-11-25 00:00"))
    ran: list[tuple[str, int]] = []

    def broken_alerting(status: JobStatus) -> None:
        raise ConnectionError("alert sink down")

    scheduler = Scheduler(recording_jobs(ran, clock), clock=clock, on_result=broken_alerting)
    await simulate(scheduler, clock)
    assert [name for name, _ in ran] == ["nightly", "pre_market", "end_of_day"]


# -- run_now -----------------------------------------------------------------------------------------------
async def test_run_now_on_a_running_job_raises_job_busy() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def long_retrain() -> str:
        started.set()
        await release.wait()
        return "retrained 3 models"

    scheduler = Scheduler(standard_jobs(pre_market=never, end_of_day=never, nightly=long_retrain))
    first = asyncio.create_task(scheduler.run_now("nightly", "alice"))
    await started.wait()
    running = scheduler.status("nightly")
    assert running.running and running.last_outcome == "running" and running.last_actor == "alice"
    with pytest.raises(JobBusy, match="nightly is running"):
        await scheduler.run_now("nightly", "bob")
    with pytest.raises(UnknownJob):
        await scheduler.run_now("weekly", "bob")
    release.set()
    done = await first
    assert (done.last_outcome, done.last_detail, done.running, done.last_actor) == (
        "ok",
        "retrained 3 models",
        False,
        "alice",
    )


async def test_run_now_keeps_running_when_its_caller_goes_away() -> None:
    release = asyncio.Event()
    results: list[JobStatus] = []

    async def sync() -> str:
        await release.wait()
        return "synced"

    scheduler = Scheduler(standard_jobs(pre_market=sync, end_of_day=never, nightly=never), on_result=results.append)
    caller = asyncio.create_task(scheduler.run_now("pre_market", "console"))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert scheduler.status("pre_market").running
    release.set()
    for _ in range(100):
        if results:
            break
        await asyncio.sleep(0.01)
    assert [(r.name, r.last_outcome, r.last_detail) for r in results] == [("pre_market", "ok", "synced")]


async def test_a_job_past_its_timeout_is_failed() -> None:
    async def hangs() -> str:
        await asyncio.sleep(30)
        return "never"

    spec = JobSpec("sync", "", dt.time(8, 30), "America/New_York", "sessions", hangs, timeout_s=0.05)
    status = await Scheduler([spec]).run_now("sync", "ops")
    assert (status.last_outcome, status.last_detail) == ("failed", "timed out after 0.05 s")


# -- catch-up and persistence ------------------------------------------------------------------------------
async def test_a_run_missed_within_the_catch_up_window_runs_once_at_start() -> None:
    # The daemon starts at 08:45 on a Monday: pre-market (08:30) is 15 minutes late and runs at once,
    # nightly (02:00) is long past the hour's window and is not replayed.
    clock = FakeClock(ny("2025-11-24 08:45"), ny("2025-11-24 23:00"))
    ran: list[tuple[str, int]] = []
    results: list[JobStatus] = []
    scheduler = Scheduler(recording_jobs(ran, clock), clock=clock, on_result=results.append)
    await simulate(scheduler, clock)
    assert ran == [("pre_market", ny("2025-11-24 08:45")), ("end_of_day", ny("2025-11-24 16:30"))]
    assert [r.last_actor for r in results] == ["catch-up", "scheduler"]


async def test_no_catch_up_when_the_job_already_ran_or_the_window_passed() -> None:
    clock = FakeClock(ny("2025-11-24 08:45"), ny("2025-11-24 12:00"))
    ran: list[tuple[str, int]] = []
    scheduler = Scheduler(recording_jobs(ran, clock), clock=clock)
    # It ran at 08:30 before the daemon restarted.
    state = {"version": 1, "jobs": {"pre_market": {"last_run_ns": ny("2025-11-24 08:30"), "last_outcome": "ok"}}}
    scheduler.restore(state)
    await simulate(scheduler, clock)
    assert ran == []

    late = FakeClock(ny("2025-11-24 10:00"), ny("2025-11-24 12:00"))
    scheduler = Scheduler(recording_jobs(ran, late), clock=late)
    await simulate(scheduler, late)
    assert ran == []  # 90 minutes late: past the default hour

    wide = FakeClock(ny("2025-11-24 10:00"), ny("2025-11-24 12:00"))
    scheduler = Scheduler(recording_jobs(ran, wide), clock=wide, catch_up_s=4 * 3600)
    await simulate(scheduler, wide)
    assert ran == [("pre_market", ny("2025-11-24 10:00"))]


async def test_state_round_trips_through_json_and_an_interrupted_run_reads_failed() -> None:
    release = asyncio.Event()

    async def sync() -> str:
        await release.wait()
        return "synced 500 symbols"

    first = Scheduler(standard_jobs(pre_market=sync, end_of_day=never, nightly=never))
    done = asyncio.create_task(first.run_now("pre_market", "alice"))
    await asyncio.sleep(0)
    saved_while_running = json.loads(json.dumps(first.state()))
    release.set()
    finished = await done
    saved = json.loads(json.dumps(first.state()))

    second = Scheduler(standard_jobs(pre_market=never, end_of_day=never, nightly=never))
    second.restore(saved)
    restored = second.status("pre_market")
    assert (restored.last_run_ns, restored.last_finished_ns, restored.last_outcome, restored.last_detail) == (
        finished.last_run_ns,
        finished.last_finished_ns,
        "ok",
        "synced 500 symbols",
    )
    assert restored.last_actor == "alice" and second.status("nightly").last_outcome == ""

    third = Scheduler(standard_jobs(pre_market=never, end_of_day=never, nightly=never))
    third.restore(saved_while_running)
    interrupted = third.status("pre_market")
    assert interrupted.last_outcome == "failed" and "interrupted" in interrupted.last_detail
    assert not interrupted.running


def test_job_status_converts_to_the_list_jobs_message(scheduler: Scheduler) -> None:
    message = scheduler.status("pre_market").to_proto()
    assert message.name == "pre_market"
    assert message.schedule == "08:30 America/New_York on trading days"
    assert message.next_run_time_ns == scheduler.status("pre_market").next_run_ns > 0
