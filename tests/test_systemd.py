"""sd_notify over real datagram sockets (a path and an abstract one), and the packaged systemd unit."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from utp.daemon import systemd

UNIT = Path(__file__).resolve().parents[1] / "configs" / "utp-core.service"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in a temp folder standing in for systemd's, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_notify_sends_datagrams_to_the_socket_path(notify_socket: socket.socket) -> None:
    assert systemd.ready("serving on 127.0.0.1:50051\nsession paper")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:50051 session paper"
    assert systemd.watchdog_ping()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert systemd.status("3 engines running")
    assert notify_socket.recv(4096) == b"STATUS=3 engines running"
    assert systemd.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"utp-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_notify_without_systemd_or_with_a_dead_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready() is False and systemd.watchdog_ping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_watchdog_interval_from_the_environment() -> None:
    pid = str(os.getpid())
    assert systemd.watchdog_interval_s({}) is None
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


async def test_keep_watchdog_fed_pings_at_half_the_timeout_while_healthy(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    health = iter([True, True, False, True])
    sleeps: list[float] = []

    class Done(Exception):
        pass

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 4:
            raise Done

    with pytest.raises(Done):
        await systemd.keep_watchdog_fed(healthy=lambda: next(health), sleep=fake_sleep)
    assert sleeps == [15.0] * 4
    notify_socket.settimeout(0.2)
    pings = []
    try:
        while True:
            pings.append(notify_socket.recv(4096))
    except TimeoutError:
        pass
    assert pings == [b"WATCHDOG=1"] * 3  # none while unhealthy

    monkeypatch.delenv("WATCHDOG_USEC")
    await systemd.keep_watchdog_fed(sleep=fake_sleep)  # no watchdog configured: returns at once
    assert len(sleeps) == 4


# -- the unit file -------------------------------------------------------------------------------------------
def read_unit(path: Path = UNIT) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(path)
    return parser


def test_unit_file_runs_as_a_hardened_notify_service() -> None:
    unit = read_unit()
    assert unit["Unit"]["StartLimitIntervalSec"] == "600" and unit["Unit"]["StartLimitBurst"] == "5"
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "User": "utp",
        "Group": "utp",
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "PrivateDevices": "true",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectKernelLogs": "true",
        "ProtectControlGroups": "true",
        "ProtectClock": "true",
        "ProtectHostname": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "true",
        "RestrictRealtime": "true",
        "RestrictSUIDSGID": "true",
        "LockPersonality": "true",
        "MemoryDenyWriteExecute": "no",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "ReadWritePaths": "/var/lib/utp",
        "StateDirectory": "utp",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert service["ExecStart"].split()[:2] == ["/opt/utp/bin/utp", "core"]
    assert "--data-dir /var/lib/utp" in service["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # The JIT exception is explained where it is made.
    text = UNIT.read_text()
    assert "numba" in text.split("MemoryDenyWriteExecute=no")[0].rsplit("\n\n", 1)[-1]


def verify(unit_text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    # verify insists that ExecStart's program exists: point it at this Python, keep everything else.
    folder.mkdir()
    copy = folder / "utp-core.service"
    copy.write_text(unit_text.replace("/opt/utp/bin/utp", sys.executable))
    return subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # systemd-analyze is part of systemd, on every machine this unit is meant for.
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed to verify the unit"
    result = verify(UNIT.read_text(), tmp_path / "good")
    assert (result.returncode, result.stdout.strip(), result.stderr.strip()) == (0, "", "")
    # And it is a real check: a misspelt key and a bad time span are reported.
    broken = UNIT.read_text().replace("ProtectClock=", "ProtectClok=").replace("WatchdogSec=30", "WatchdogSec=x")
    result = verify(broken, tmp_path / "bad")
    assert "Unknown key 'ProtectClok'" in result.stderr and "Failed to parse sec value" in result.stderr
