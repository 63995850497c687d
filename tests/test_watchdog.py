"""Watchdogs with real probes: a real folder's disk, this process's memory, a broker ping that fails then works."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import shutil
from pathlib import Path

import pandas as pd
import pytest

from utp.daemon.watchdog import (
    Alert,
    Check,
    Problem,
    Watchdogs,
    broker_connectivity,
    data_feed_staleness,
    disk,
    engine_lag,
    exchange_session,
    memory,
    process_rss_bytes,
    release_memory,
)
from utp.v1 import events_pb2 as pb

S = 1_000_000_000


def ny(text: str) -> int:
    return pd.Timestamp(text, tz="America/New_York").value


class FlakyBroker:
    """A broker whose ping fails while it is down; reconnecting brings it back."""

    def __init__(self) -> None:
        self.up = False
        self.pings = 0
        self.reconnects = 0

    async def ping(self) -> None:
        self.pings += 1
        await asyncio.sleep(0)
        if not self.up:
            raise ConnectionError("connection reset by peer")

    async def reconnect(self, problem: Problem) -> str:
        self.reconnects += 1
        self.up = True
        return f"reconnected after: {problem.message}"


async def test_alert_then_recovery_then_resolved() -> None:
    broker = FlakyBroker()
    events: list[object] = []

    async def recover(problem: Problem) -> str:
        events.append("recover")
        return await broker.reconnect(problem)

    check = Check("broker", broker_connectivity(broker.ping), recover, interval_s=30)
    dogs = Watchdogs([check], events.append, wall_ns=lambda: 1234)
    await dogs.check_once(0.0)
    assert events[0] == "recover"
    alert = events[1]
    assert alert == Alert(
        source="watchdog:broker",
        severity="critical",
        message="the broker is unreachable: ConnectionError: connection reset by peer",
        action="reconnected after: the broker is unreachable: ConnectionError: connection reset by peer",
        resolved=False,
        time_ns=1234,
    )
    assert not dogs.statuses()[0].healthy

    await dogs.check_once(10.0)  # not due yet: nothing probed
    assert broker.pings == 1
    await dogs.check_once(30.0)
    assert broker.pings == 2
    resolved = events[2]
    assert isinstance(resolved, Alert) and resolved.resolved and resolved.source == "watchdog:broker"
    assert resolved.severity == "critical" and "healthy again" in resolved.message
    assert len(events) == 3 and dogs.statuses()[0].healthy
    message = resolved.to_proto("alert-1")
    assert message.resolved and message.severity == pb.ALERT_SEVERITY_CRITICAL and message.header.event_id == "alert-1"

    await dogs.check_once(60.0)  # still fine: no more alerts
    assert len(events) == 3


async def test_recovery_respects_the_cooldown_and_the_failure_threshold() -> None:
    broker = FlakyBroker()
    alerts: list[Alert] = []
    attempts: list[float] = []
    now = 0.0

    async def reconnect_that_does_not_help(problem: Problem) -> str:
        attempts.append(now)
        return "reconnect sent"

    check = Check(
        "broker", broker_connectivity(broker.ping), reconnect_that_does_not_help,
        interval_s=10, failures_before_action=3, cooldown_s=100,
    )  # fmt: skip
    dogs = Watchdogs([check], alerts.append)
    for now in (0.0, 10.0):
        await dogs.check_once(now)
    assert alerts == [] and attempts == []  # two failures: below the threshold of three
    for now in range(20, 120, 10):
        await dogs.check_once(float(now))
    # Third failure at 20 s: recover + alert; quiet through the cooldown; again at 120 s.
    assert attempts == [20.0]
    assert len(alerts) == 1 and alerts[0].action == "reconnect sent"
    now = 120.0
    await dogs.check_once(now)
    assert attempts == [20.0, 120.0] and len(alerts) == 2
    assert dogs.statuses()[0].consecutive_failures == 13


async def test_a_recovery_that_raises_is_reported_and_the_watchdog_keeps_running() -> None:
    broker = FlakyBroker()
    alerts: list[Alert] = []
    calls = 0

    async def reconnect(problem: Problem) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("gateway refused the login")
        return await broker.reconnect(problem)

    check = Check("broker", broker_connectivity(broker.ping), reconnect, interval_s=5, cooldown_s=10)
    dogs = Watchdogs([check], alerts.append)
    await dogs.check_once(0.0)
    assert alerts[0].action == "recovery failed: RuntimeError: gateway refused the login"
    assert not alerts[0].resolved
    await dogs.check_once(5.0)  # still down, cooling down: quiet
    assert len(alerts) == 1
    await dogs.check_once(10.0)  # cooled down: the second attempt works
    assert alerts[1].action.startswith("reconnected") and not alerts[1].resolved
    await dogs.check_once(15.0)
    assert alerts[2].resolved and len(alerts) == 3


async def test_run_forever_probes_on_intervals_and_survives_failing_recoveries() -> None:
    broker = FlakyBroker()
    alerts: list[Alert] = []
    clock = [0.0]

    async def broken_reconnect(problem: Problem) -> str:
        if clock[0] < 60:
            raise OSError("network unreachable")
        return await broker.reconnect(problem)

    class Done(Exception):
        pass

    async def fake_sleep(seconds: float) -> None:
        clock[0] += seconds
        if clock[0] > 100:
            raise Done

    check = Check("broker", broker_connectivity(broker.ping), broken_reconnect, interval_s=20, cooldown_s=40)
    dogs = Watchdogs([check], alerts.append, monotonic=lambda: clock[0])
    with pytest.raises(Done):
        await dogs.run_forever(fake_sleep)
    # Probes at 0, 20, ..., 100; recoveries at 0 (fails), 40 (fails), 80 (works); resolved at 100.
    assert broker.pings == 6
    assert [(a.action.split(":")[0], a.resolved) for a in alerts] == [
        ("recovery failed", False),
        ("recovery failed", False),
        ("reconnected after", False),
        ("", True),
    ]


async def test_probe_failures_and_escalation_without_a_recovery() -> None:
    alerts: list[Alert] = []
    answers: list[Problem | None | Exception] = [
        Problem("warning", "slow"),
        Problem("warning", "slower"),
        Problem("critical", "stuck"),
        ValueError("probe bug"),
        None,
    ]

    async def probe() -> Problem | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def hangs() -> Problem | None:
        await asyncio.sleep(30)
        return None

    dogs = Watchdogs(
        [Check("feed", probe, None, interval_s=1), Check("hung", hangs, None, interval_s=1, probe_timeout_s=0.05)],
        alerts.append,
    )
    for now in range(5):
        await dogs.check_once(float(now))
    feed = [(a.severity, a.message, a.action, a.resolved) for a in alerts if a.source == "watchdog:feed"]
    assert feed == [
        ("warning", "slow", "", False),
        ("critical", "stuck", "", False),  # escalation re-alerts; the probe's own failure does not
        ("critical", "feed is healthy again (was: feed probe failed: ValueError: probe bug)", "", True),
    ]
    hung = [a for a in alerts if a.source == "watchdog:hung"]
    assert len(hung) == 1 and hung[0].message == "hung probe did not answer within 0.05 s"


# -- probes ----------------------------------------------------------------------------------------------------
async def test_disk_probe_on_a_real_folder(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    assert await disk(tmp_path, min_free_bytes=1)() is None
    assert await disk(tmp_path, min_free_fraction=0.0)() is None
    short = await disk(tmp_path, min_free_bytes=usage.total + 1)()
    assert short is not None and short.severity == "critical" and str(tmp_path) in short.message
    by_fraction = await disk(tmp_path, min_free_fraction=1.0)()
    assert by_fraction is not None and "100%" in by_fraction.message
    with pytest.raises(FileNotFoundError):
        await disk(tmp_path / "missing", min_free_bytes=1)()
    with pytest.raises(ValueError):
        disk(tmp_path)


async def test_disk_watchdog_alerts_and_runs_the_cleanup(tmp_path: Path) -> None:
    for n in range(3):
        (tmp_path / f"old-{n}.parquet").write_bytes(b"x" * 1000)
    alerts: list[Alert] = []

    async def clean_old_files(problem: Problem) -> str:
        removed = sorted(tmp_path.glob("old-*.parquet"))
        for path in removed:
            path.unlink()
        return f"removed {len(removed)} old files"

    usage = shutil.disk_usage(tmp_path)
    check = Check("disk", disk(tmp_path, min_free_bytes=usage.total + 1), clean_old_files, interval_s=60)
    await Watchdogs([check], alerts.append).check_once(0.0)
    assert [(a.source, a.severity, a.action) for a in alerts] == [("watchdog:disk", "critical", "removed 3 old files")]
    assert list(tmp_path.iterdir()) == []


async def test_memory_probe_reads_this_process_rss(tmp_path: Path) -> None:
    rss = process_rss_bytes()
    # Cross-checked against the kernel's other account of the same number: resident pages in statm.
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    assert 10 * 1024**2 < rss
    assert abs(rss - resident_pages * os.sysconf("SC_PAGE_SIZE")) < 16 * 1024**2
    # Without /proc the peak stands in.
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fallback = process_rss_bytes(tmp_path / "no-proc-status")
    assert peak_before <= fallback <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tiny = await memory(1)()
    assert tiny is not None and tiny.severity == "critical" and "over the limit 1 B" in tiny.message
    near = await memory(rss * 100, warn_fraction=0.001)()
    assert near is not None and near.severity == "warning"
    assert await memory(1 << 40)() is None


async def test_memory_recovery_drops_caches_and_collects_garbage() -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None
            self.payload = bytearray(64 * 1024)

    def make_cycles() -> None:
        for _ in range(200):  # 200 unreachable pairs of 64 KiB: only the cycle collector frees them
            a, b = Node(), Node()
            a.other, b.other = b, a

    cache: dict[int, bytes] = {n: bytes(1024) for n in range(100)}
    gc.disable()
    try:
        make_cycles()
        readings = iter([500 * 1024**2, 480 * 1024**2])
        action = await release_memory(drop_caches=[cache.clear], rss=lambda: next(readings))(
            Problem("critical", "resident memory is over the limit"))  # fmt: skip
    finally:
        gc.enable()
    assert not cache
    collected = int(action.split(" objects collected")[0].rsplit(" ", 1)[1])
    assert collected >= 400
    assert action.startswith("released memory: 20.0 MiB freed (500.0 MiB -> 480.0 MiB)")
    # Wired into a watchdog, the alert carries what it did.
    alerts: list[Alert] = []
    check = Check("memory", memory(1), release_memory(), interval_s=60)
    await Watchdogs([check], alerts.append).check_once(0.0)
    assert alerts[0].action.startswith("released memory: ") and alerts[0].severity == "critical"


async def test_broker_probe_times_out_a_hung_ping() -> None:
    async def hung_ping() -> None:
        await asyncio.sleep(30)

    problem = await broker_connectivity(hung_ping, timeout_s=0.05)()
    assert problem == Problem("critical", "the broker did not answer within 0.05 s")


async def test_data_feed_staleness_only_in_session_with_a_grace_at_the_open() -> None:
    now = [ny("2025-11-24 09:00")]
    last_bar: list[int | None] = [ny("2025-11-21 15:59")]
    probe = data_feed_staleness(lambda: last_bar[0], lambda: now[0], 120, exchange_session("XNYS"))
    assert await probe() is None  # before the open a quiet feed is normal
    now[0] = ny("2025-11-24 09:30")
    assert await probe() is None  # the session just opened: the first bar has two minutes
    now[0] = ny("2025-11-24 09:33")
    stale = await probe()
    assert stale is not None and stale.severity == "critical" and "limit 120 s" in stale.message
    last_bar[0] = ny("2025-11-24 09:32")
    assert await probe() is None
    now[0] = ny("2025-11-27 11:00")  # Thanksgiving: closed
    assert await probe() is None
    last_bar[0] = None
    now[0] = ny("2025-11-28 10:00")
    assert await probe() is None
    now[0] = ny("2025-11-28 10:05")
    missing = await probe()
    assert missing is not None and missing.message.startswith("no bar has arrived 300 s into the session")
    now[0] = ny("2025-11-28 13:30")  # the half day closed at 13:00
    assert await probe() is None


def test_exchange_session_knows_half_days_holidays_and_weekends() -> None:
    is_open = exchange_session("XNYS")
    assert is_open(ny("2025-11-24 10:00")) and is_open(ny("2025-11-28 12:30"))
    assert not is_open(ny("2025-11-28 13:30")) and not is_open(ny("2025-12-25 11:00"))
    assert not is_open(ny("2025-11-22 11:00")) and not is_open(ny("2026-07-03 11:00"))
    assert is_open(ny("2031-03-04 10:00"))  # past the calendar's default range: it widens


async def test_engine_lag_flags_lagging_and_silent_engines() -> None:
    now = 1_000_000 * S
    statuses: dict[str, tuple[int, int]] = {
        "market_data": (now - 60 * S, now - 1 * S),
        "features": (now - 90 * S, now - 2 * S),
        "alpha": (now - 400 * S, now - 5 * S),
    }
    in_session = [True]
    probe = engine_lag(lambda: statuses, max_lag_s=120, now_ns=lambda: now, expected_update_s=60,
                       missed_updates=3, in_session=lambda _: in_session[0])  # fmt: skip
    lag = await probe()
    assert lag == Problem("warning", "behind the leading engine by more than 120 s: alpha 340 s")
    statuses["alpha"] = (now - 70 * S, now - 200 * S)
    down = await probe()
    assert down == Problem("critical", "no status for over 180 s from: alpha")
    in_session[0] = False
    assert await probe() is None  # silence out of session is normal
    statuses["risk"] = (-(2**63), now)  # not started yet: no lag to measure
    statuses["backtest"] = (2**63 - 1, now)  # finished: not the leader
    assert await probe() is None
    assert await engine_lag(dict, max_lag_s=1)() is None
