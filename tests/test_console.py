"""The console against a real daemon: keys steer it, the status bar shows it, halted means no orders."""

from __future__ import annotations

import asyncio
import time

from utp.console.app import ConsoleApp, StatusBar, status_line
from utp.v1 import core_service_pb2 as api


async def wait_until(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_halt_key_halts_the_daemon_and_no_further_order_is_made(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "40", "--set", "approve_execution_on_start=true",
                            "--set", "risk.max_position_pct=0.95").start()  # fmt: skip
    app = ConsoleApp(daemon.target)
    async with app.run_test(size=(100, 30)) as pilot:
        bar = app.query_one(StatusBar)
        await wait_until(lambda: bar.text.startswith("RUNNING") and "APPROVED" in bar.text)
        # Let the session trade first, so "no further order" means something.
        await wait_until(lambda: len(daemon.stub.ListOrders(api.ListOrdersRequest()).orders) >= 2, timeout=60)
        await wait_until(lambda: app.query_one("#log").row_count > 0)

        await pilot.press("h")
        await wait_until(lambda: bar.text.startswith("HALTED"))
        status = daemon.status()
        assert status.halted and "console" in status.halt_reason
        assert bar.has_class("alarm")
        orders_at_halt = len(daemon.stub.ListOrders(api.ListOrdersRequest()).orders)
        data_time_at_halt = status.account.header.event_time_ns
        await wait_until(lambda: daemon.status().account.header.event_time_ns > data_time_at_halt + 20 * 86_400 * 10**9)
        assert len(daemon.stub.ListOrders(api.ListOrdersRequest()).orders) == orders_at_halt

        await pilot.press("u")
        await wait_until(lambda: bar.text.startswith("RUNNING"))
        await pilot.press("r")
        await wait_until(lambda: "REVOKED" in bar.text)
        assert not daemon.status().execution_approved


async def test_console_says_when_the_daemon_is_gone_and_reconnects(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "20").start()
    app = ConsoleApp(daemon.target)
    async with app.run_test(size=(80, 24)) as pilot:  # the smallest terminal the console supports
        bar = app.query_one(StatusBar)
        await wait_until(lambda: bar.text.startswith("RUNNING"))
        daemon.kill()
        await wait_until(lambda: bar.text.startswith("DISCONNECTED"))
        restarted = type(daemon)(daemon.data_dir, daemon.args, daemon.log_path)
        restarted.port, restarted.target = daemon.port, daemon.target
        restarted.start()
        try:
            await wait_until(lambda: bar.text.startswith("RUNNING"), timeout=60)
        finally:
            restarted.stop()
        await pilot.press("q")


def test_status_line_shows_equity_pnl_approval_and_state() -> None:
    status = api.GetStatusResponse(halted=True, halt_reason="kill switch", execution_approved=False,
                                   session_state=api.SESSION_STATE_RUNNING, bus="jetstream")  # fmt: skip
    status.account.equity = 101_234.5
    status.account.day_pnl = -12.25
    line = status_line(status, connected=True)
    assert line.startswith("HALTED (kill switch)")
    assert "equity 101,234.50" in line and "day P&L -12.25" in line and "execution REVOKED" in line
    assert status_line(None, connected=False).startswith("DISCONNECTED")
