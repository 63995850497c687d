"""systemd's notify protocol (sd_notify) without libsystemd: readiness, status, stopping and the watchdog.

Under `Type=notify` systemd passes a datagram socket in $NOTIFY_SOCKET (a path, or an abstract socket
written with a leading '@') and waits for READY=1 before it counts the service as started. With
`WatchdogSec=` it also sets $WATCHDOG_USEC (and $WATCHDOG_PID) and restarts the service when no
WATCHDOG=1 arrives within that time, so the daemon pings only while it is really healthy: a wedged event
loop or a failed health check then turns into a restart. Outside systemd every call is a no-op that
returns False.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger(__name__)


def _address(environ: Mapping[str, str]) -> str | None:
    path = environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    if path:
        log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying systemd", path)
    return None


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Sends `state` ("READY=1", "STATUS=...", newline-separated assignments); False if not under systemd."""
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", state.split("\n", 1)[0], exc)
        return False
    return True


def _status_line(text: str) -> str:
    return " ".join(text.split())  # one line: a newline would start another assignment


def ready(status: str = "") -> bool:
    """The daemon is serving; systemd's start job completes."""
    return notify("READY=1" + (f"\nSTATUS={_status_line(status)}" if status else ""))


def status(text: str) -> bool:
    """Free-form status shown by `systemctl status`."""
    return notify(f"STATUS={_status_line(text)}")


def stopping(status: str = "") -> bool:
    """The daemon has begun its shutdown."""
    return notify("STOPPING=1" + (f"\nSTATUS={_status_line(status)}" if status else ""))


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """systemd's watchdog timeout for this process, or None when it has none (or it is meant for another pid)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


async def keep_watchdog_fed(
    interval_s: float | None = None,
    *,
    healthy: Callable[[], bool] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Pings the watchdog at half its timeout while `healthy()` holds, until cancelled.

    Returns at once when systemd set no watchdog. Because the pings come from the event loop, a loop
    blocked for longer than the timeout also stops them, which is the point.
    """
    timeout = watchdog_interval_s() if interval_s is None else interval_s
    if timeout is None:
        return
    was_healthy = True
    while True:
        now_healthy = healthy is None or healthy()
        if now_healthy:
            watchdog_ping()
        elif was_healthy:
            log.error("daemon unhealthy: withholding the systemd watchdog ping (restart in %.0f s)", timeout)
        was_healthy = now_healthy
        await sleep(timeout / 2)
