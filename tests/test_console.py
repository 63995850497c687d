"""The console against a real daemon: each screen's keys steer it, the status bar shows it, and what the daemon
holds afterwards (through its own stub) is what the operator asked for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from textual.pilot import Pilot
from textual.widgets import Input

from utp.console.app import ORDERS_SHOWN, ConsoleApp, StatusBar, default_actor, status_line
from utp.console.source import GrpcSource
from utp.console.screens.models import RetrainScreen
from utp.console.widgets import ConfirmScreen, Table
from utp.daemon.auth import read_token, token_path
from utp.storage.state import ORDERS, StateStore
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb
from tests.test_operations import ctl

APPROVED = ("--set", "approve_execution_on_start=true")
#: Small enough to train in a test, as tests/test_daemon.py's retrain test.
RETRAIN_SETTINGS = [
    "train.start=2014-06-01",
    "train.train_bars=250",
    "train.test_bars=30",
    "train.folds=2",
    "train.lgbm={n_estimators: 20}",
    "train.symbols=[AAPL, JPM, XOM]",
]


async def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def console(daemon, **kwargs: object) -> ConsoleApp:  # noqa: ANN001
    return ConsoleApp(daemon.target, daemon.token, **kwargs)  # type: ignore[arg-type]


async def confirm(app: ConsoleApp, pilot: Pilot, reason: str | None = None) -> None:
    """Answer the confirmation dialog the last key opened: yes, with `reason` typed in when given."""
    await wait_until(lambda: isinstance(app.screen, ConfirmScreen), 10, "the confirmation dialog")
    if reason is not None:
        app.screen.query_one("#reason", Input).value = reason
        app.screen.query_one("#reason", Input).focus()
        await pilot.pause()
    await pilot.press("enter")
    await wait_until(lambda: not isinstance(app.screen, ConfirmScreen), 10, "the dialog to close")


def audited(daemon, method: str) -> list[api.AuditEntry]:  # noqa: ANN001
    return list(daemon.stub.ListAudit(api.ListAuditRequest(method=method), timeout=10).entries)


async def test_halt_key_halts_the_daemon_and_no_further_order_is_made(daemon_factory) -> None:  # noqa: ANN001
    # Two consoles on one daemon: the operator's (admin token) and a watcher's (read-only token, over another
    # connection). What one does, the other sees; the watcher may look but not steer.
    daemon = daemon_factory("--replay-rate", "40", *APPROVED, "--set", "risk.max_position_pct=0.95").start()
    app = console(daemon)
    watcher = ConsoleApp(daemon.target, read_token(token_path(daemon.data_dir, "read")), actor="console:watcher")
    async with app.run_test(size=(100, 30)) as pilot, watcher.run_test(size=(80, 24)) as watching:
        bar, watcher_bar = app.query_one(StatusBar), watcher.query_one(StatusBar)
        await wait_until(lambda: bar.text.startswith("RUNNING") and "APPROVED" in bar.text)
        await wait_until(lambda: watcher_bar.text.startswith("RUNNING"))
        await watching.press("9", "e")  # pause entries (Admin): the read-only token may not
        await confirm(watcher, watching)
        await wait_until(lambda: audited(daemon, "SetEntriesPaused"), 10, "the refusal in the audit trail")
        refused = audited(daemon, "SetEntriesPaused")[0]
        assert (refused.outcome, refused.actor, refused.role) == ("PERMISSION_DENIED", "console:watcher", "read")
        assert not daemon.status().entries_paused
        # Let the session trade first, so "no further order" means something.
        await wait_until(lambda: len(daemon.stub.ListOrders(api.ListOrdersRequest()).orders) >= 2, timeout=60)

        await pilot.press("h")
        await confirm(app, pilot)
        await wait_until(lambda: bar.text.startswith("HALTED"))
        await wait_until(lambda: watcher_bar.text.startswith("HALTED"), 10, "the other console to see the halt")
        status = daemon.status()
        assert status.halted and "console" in status.halt_reason
        assert bar.has_class("alarm")
        entry = audited(daemon, "Halt")[0]
        assert entry.actor == default_actor() and entry.reason == "halt from the console" and entry.outcome == "OK"
        orders_at_halt = len(daemon.stub.ListOrders(api.ListOrdersRequest()).orders)
        data_time_at_halt = status.account.header.event_time_ns
        await wait_until(lambda: daemon.status().account.header.event_time_ns > data_time_at_halt + 20 * 86_400 * 10**9)
        assert len(daemon.stub.ListOrders(api.ListOrdersRequest()).orders) == orders_at_halt

        await pilot.press("u")
        await confirm(app, pilot)
        await wait_until(lambda: bar.text.startswith("RUNNING"))
        # Revoking execution moved from the old global `r` to the Approvals screen (and Admin): G.
        await pilot.press("5", "G")
        await confirm(app, pilot)
        await wait_until(lambda: "REVOKED" in bar.text)
        assert not daemon.status().execution_approved


async def test_a_declined_confirmation_changes_nothing(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "20").start()
    app = console(daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(lambda: app.query_one(StatusBar).text.startswith("RUNNING"))
        await pilot.press("h")
        await wait_until(lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")
        await wait_until(lambda: not isinstance(app.screen, ConfirmScreen))
        await asyncio.sleep(1.5)
        assert not daemon.status().halted and audited(daemon, "Halt") == []
        # Execution is revoked, so risk rejects every intent: the Orders screen's Rejected tab shows them,
        # from the event stream, with risk's reason.
        await pilot.press("3", "v", "v")
        rejected = app.views["orders"].query_one("#rejected-table", Table)
        await wait_until(lambda: rejected.row_count > 0, 60, "a rejected intent")
        assert rejected.get_row_at(0)[6].plain == "execution not approved"


async def test_console_says_when_the_daemon_is_gone_and_reconnects(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "20").start()
    app = console(daemon)
    async with app.run_test(size=(80, 24)) as pilot:  # the smallest terminal the console supports
        bar = app.query_one(StatusBar)
        await wait_until(lambda: bar.text.startswith("RUNNING"))
        daemon.kill()
        await wait_until(lambda: bar.text.startswith("DISCONNECTED"))
        restarted = daemon_factory(*daemon.args, data_dir=daemon.data_dir)  # stopped with the test's daemons
        restarted.port, restarted.target = daemon.port, daemon.target
        restarted.start()
        await wait_until(lambda: bar.text.startswith("RUNNING"), timeout=60)
        await pilot.press("q")


async def test_a_wrong_token_is_shown_not_retried_silently(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "20").start()
    app = ConsoleApp(daemon.target, "not-the-token")
    async with app.run_test(size=(80, 24)):
        bar = app.query_one(StatusBar)
        await wait_until(lambda: "UNAUTHENTICATED" in bar.text)
        assert bar.has_class("alarm") and "--token" in bar.text


async def test_every_screen_renders_a_live_daemon_in_80x24(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--dataset", "sp500", "--replay-rate", "20", *APPROVED).start()
    app = console(daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(lambda: app.query_one(StatusBar).text.startswith("RUNNING"))
        await wait_until(lambda: daemon.stub.ListSignals(api.ListSignalsRequest()).signals, 60, "signals")
        for key, view in zip("123456789", app.views.values(), strict=True):
            await pilot.press(key)
            await wait_until(lambda view=view: app.active_view is view)
            await pilot.pause(0.5)
            assert "-error" not in app.active_view.note().classes, f"{view.NAME}: {app.active_view.note().render()}"
        # Signals: one column per component source, from the daemon's own list.
        await pilot.press("4")
        table = app.views["signals"].query_one(Table)
        await wait_until(lambda: table.row_count > 0)
        sources = {c.source for s in daemon.stub.ListSignals(api.ListSignalsRequest()).signals for c in s.components}
        assert sources and sources <= set(table.labels)
        await pilot.press("s")
        assert table.sort_column == 0
        # The help screen and the command palette know every screen's actions.
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        commands = {name: command for name, _, command in app.palette_commands()}
        assert {"Approvals: Approve", "Admin: Halt + flatten", "Go to Backtests", "Models: Retrain"} <= set(commands)
        await commands["Orders: Open/filled/rejected"]()
        assert app.active_view.NAME == "orders" and app.views["orders"].tab == "filled"
        # The mouse: a click on the tab bar switches screens (" 1Dash  2Pos " in 80 columns), one on a column
        # header sorts by it, a second one reverses.
        await pilot.click("#tabs", offset=(9, 0))
        await wait_until(lambda: app.active_view.NAME == "positions")
        positions = app.views["positions"].query_one(Table)
        await pilot.click("#positions", offset=(2, 0))
        await pilot.click("#positions", offset=(2, 0))
        assert positions.sort_column == 0 and positions.sort_reverse


async def test_approve_one_order_and_reject_another(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory(
        "--dataset",
        "sp500",
        "--replay-rate",
        "3",
        *APPROVED,
        "--set",
        "execution.approval_mode=per_order",
        "--set",
        "execution.approval_timeout_s=1000000000.0",
    ).start()
    app = console(daemon)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        pending = app.views["approvals"].query_one("#pending", Table)
        decided: dict[str, pb.OrderApproval] = {}
        tried: set[str | None] = set()

        async def decide(key: str, reason: str | None) -> None:
            """Decide the first waiting order; a newer target may supersede it first, then try the next one."""
            for _ in range(10):
                await wait_until(
                    lambda: pending.row_count > 0 and pending.selected_key not in tried,
                    120,
                    "an order waiting for approval",
                )
                intent_id = pending.selected_key
                tried.add(intent_id)
                await pilot.press(key)
                await confirm(app, pilot, reason)
                await pilot.pause(0.5)
                mine = [
                    a
                    for a in daemon.stub.ListApprovals(api.ListApprovalsRequest(decided=50)).decided
                    if a.intent_id == intent_id and a.actor == default_actor()
                ]
                if mine:
                    decided[key] = mine[0]
                    return
            raise AssertionError(f"no order could be decided with {key}")

        await decide("a", None)
        await decide("r", "too big for today")
    assert decided["a"].state == pb.APPROVAL_STATE_APPROVED and decided["a"].message == "approved from the console"
    assert decided["r"].state == pb.APPROVAL_STATE_REJECTED and decided["r"].message == "too big for today"
    entries = audited(daemon, "DecideApprovals")
    assert {e.reason for e in entries if e.outcome == "OK"} >= {"approved from the console", "too big for today"}


async def test_approval_mode_switches_from_the_console(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "20").start()
    app = console(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        bar = app.query_one(StatusBar)
        await wait_until(lambda: bar.text.startswith("RUNNING"))
        await pilot.press("5", "m")
        await confirm(app, pilot)
        await wait_until(lambda: daemon.status().approval_mode == pb.APPROVAL_MODE_PER_ORDER)
        await wait_until(lambda: "per-order" in bar.text)
        await pilot.press("g")
        await confirm(app, pilot)
        await wait_until(lambda: daemon.status().execution_approved)


class _AnswersAfterTeardown(GrpcSource):
    """The daemon over gRPC, except that, once armed, a ListApprovals answer is held until the approvals
    screen's widgets have been removed: the order of events when the operator quits during a slow read."""

    def __init__(self, app_of: Callable[[], ConsoleApp], *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.app_of, self.armed, self.answered_after_teardown = app_of, False, False
        self.holding = False  # the answer has come and waits for the teardown

    async def call(self, method: str, request, timeout: float = 10.0):  # noqa: ANN001, ANN201
        answer = await super().call(method, request, timeout)
        if self.armed and method == "ListApprovals":
            self.holding = True
            view = self.app_of().views["approvals"]
            while view.query("#pending"):
                await asyncio.sleep(0)
            self.answered_after_teardown = True
        return answer


async def test_quitting_while_a_screen_loads_is_no_error(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory().start()
    source = _AnswersAfterTeardown(lambda: app, daemon.target, daemon.token)
    app = ConsoleApp(source=source, poll_seconds=3600)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("5")
        await wait_until(lambda: "approval" in str(app.views["approvals"].query_one("#approval-mode").render()))
        source.armed = True
        app.reload_view(app.views["approvals"])
        # Quit only once the daemon has answered: on a loaded machine the call itself could still be on its way
        # at the teardown, which then cancels it, and the answer never lands anywhere.
        await wait_until(lambda: source.holding, what="the daemon's answer")
    # Leaving run_test re-raises what the app died of: with the answer landing on a removed table, NoMatches.
    assert source.answered_after_teardown


async def test_close_all_positions_while_halted(daemon_factory) -> None:  # noqa: ANN001
    # Without bracket legs a halted session holds its positions until the operator closes them.
    daemon = daemon_factory(
        "--replay-rate",
        "40",
        *APPROVED,
        "--set",
        "risk.max_position_pct=0.95",
        "--set",
        "exit.take_profit_pct=0",
        "--set",
        "exit.stop_loss_pct=0",
    ).start()
    app = console(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        for attempt in range(6):
            await wait_until(lambda: daemon.stub.ListPositions(api.ListPositionsRequest()).positions, 60, "a position")
            await pilot.press("h")
            await confirm(app, pilot)
            await wait_until(lambda: daemon.status().halted)
            if daemon.stub.ListPositions(api.ListPositionsRequest()).positions:
                break
            # A signal exit came between the position and the halt (bars replay fast, and a loaded machine is
            # slow to halt): let it trade again, and halt with a position.
            assert attempt < 5, "every halt came after the position had been closed by a signal"
            await pilot.press("u")
            await confirm(app, pilot)
            await wait_until(lambda: not daemon.status().halted)
        await pilot.press("2")
        table = app.views["positions"].query_one(Table)
        await wait_until(lambda: table.row_count > 0)
        await pilot.press("C")
        await confirm(app, pilot)
        await wait_until(lambda: not daemon.stub.ListPositions(api.ListPositionsRequest()).positions, 60, "no position")
        await wait_until(lambda: table.row_count == 0)
        flatten = audited(daemon, "Flatten")[0]
        assert flatten.outcome == "OK" and flatten.actor == default_actor()


async def test_emergency_halt_and_flatten(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "40", *APPROVED, "--set", "risk.max_position_pct=0.95").start()
    app = console(daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(lambda: daemon.stub.ListPositions(api.ListPositionsRequest()).positions, 60, "a position")
        await pilot.press("9", "F")
        await confirm(app, pilot)
        await wait_until(lambda: daemon.status().halted)
        await wait_until(lambda: not daemon.stub.ListPositions(api.ListPositionsRequest()).positions, 60, "no position")
        await wait_until(lambda: app.query_one(StatusBar).text.startswith("HALTED"))
        request = audited(daemon, "Flatten")[0].request_json
        assert '"halt": true' in request


async def test_admin_pauses_and_resumes_entries(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "20").start()
    app = console(daemon)
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.query_one(StatusBar)
        await wait_until(lambda: bar.text.startswith("RUNNING"))
        await pilot.press("9", "e")
        await confirm(app, pilot, "lunch")
        await wait_until(lambda: daemon.status().entries_paused)
        await wait_until(lambda: "entries PAUSED" in bar.text)
        assert audited(daemon, "SetEntriesPaused")[0].reason == "lunch"
        await pilot.press("E")
        await confirm(app, pilot)
        await wait_until(lambda: not daemon.status().entries_paused)
        # The audit screen lists both, and filters by method on the daemon.
        await pilot.press("8")
        audit = app.views["audit"].query_one("#audit", Table)
        await wait_until(lambda: audit.row_count >= 2)
        await pilot.press("slash")
        app.focused.value = "method=SetEntriesPaused"  # type: ignore[union-attr]
        await pilot.press("enter")
        await wait_until(
            lambda: audit.row_count == 2 and all(audit.get_row_at(i)[3] == "SetEntriesPaused" for i in range(2))
        )


async def test_cancel_a_working_order(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "10", *APPROVED, "--set", "risk.max_position_pct=0.95").start()
    working = (pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PARTIALLY_FILLED, pb.ORDER_STATUS_HELD)

    def working_orders() -> list[pb.Order]:
        return [o for o in daemon.stub.ListOrders(api.ListOrdersRequest()).orders if o.status in working]

    # Working orders (protective legs) live a few bars, a fraction of a second each at this rate: the console
    # polls often, and the test waits for its Open tab to catch one rather than for the daemon to have one.
    app = console(daemon, poll_seconds=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        table = app.views["orders"].query_one("#order-table", Table)
        await wait_until(lambda: table.row_count > 0, 240, "a working order on the Open tab")
        coid = table.selected_key
        await pilot.press("x")
        await confirm(app, pilot)
        await pilot.pause(1)
        entry = audited(daemon, "CancelOrder")[0]
        if entry.outcome == "OK":
            await wait_until(lambda: coid not in {o.client_order_id for o in working_orders()}, 30, "the order to go")
        else:  # it filled between the click and the call: the daemon says so, and the console said so too
            assert entry.outcome == grpc.StatusCode.FAILED_PRECONDITION.name


async def test_the_open_tab_shows_a_working_order_older_than_the_newest_it_lists(daemon_factory, tmp_path) -> None:  # noqa: ANN001
    # A protective leg placed before 600 orders that have since filled: the console lists the newest 500 orders,
    # and the Open tab must still show the leg.
    store = StateStore(tmp_path / "data" / "state", fsync=False)
    for i in range(601):
        order = pb.Order(client_order_id=f"c{i:04d}", side=pb.ORDER_SIDE_SELL, quantity=10.0,
                         status=pb.ORDER_STATUS_NEW if i == 0 else pb.ORDER_STATUS_FILLED,
                         submitted_time_ns=(i + 1) * 10**9)  # fmt: skip
        order.header.symbol = "GOOG"
        store.put(ORDERS, order.client_order_id, order.SerializeToString())
    store.close()
    daemon = daemon_factory("--replay-rate", "1").start()  # execution not approved: no order of its own
    newest = daemon.stub.ListOrders(api.ListOrdersRequest(limit=ORDERS_SHOWN)).orders
    assert len(newest) == ORDERS_SHOWN and "c0000" not in {o.client_order_id for o in newest}
    working = daemon.stub.ListOrders(api.ListOrdersRequest(limit=ORDERS_SHOWN, working_only=True)).orders
    assert [o.client_order_id for o in working] == ["c0000"]
    listed = ctl(daemon, "orders", "--working")
    assert listed.returncode == 0 and [line.split()[2] for line in listed.stdout.splitlines()] == ["c0000"]
    app = console(daemon)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        table = app.views["orders"].query_one("#order-table", Table)
        await wait_until(lambda: table.row_count > 0, 30, "the Open tab's rows")
        assert table.row_count == 1 and table.selected_key == "c0000"
        await pilot.press("v")  # Filled: the newest 500 only
        await wait_until(lambda: table.row_count == ORDERS_SHOWN, 30, "the Filled tab's rows")


async def test_retrain_from_the_models_screen(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "5").start()
    app = console(daemon)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("6", "t")
        await wait_until(lambda: isinstance(app.screen, RetrainScreen))
        app.screen.query_one("#settings", Input).value = "; ".join(RETRAIN_SETTINGS)
        app.screen.query_one("#settings", Input).focus()
        await pilot.press("enter")
        models = app.views["models"]
        await wait_until(lambda: models.last_result is not None, 600, "the retrain's result")
        result = models.last_result
        assert result.model == "lgbm" and result.version == "1" and len(result.folds) == 2
        listed = daemon.stub.ListModels(api.ListModelsRequest(name="lgbm"), timeout=30).versions
        assert [v.version for v in listed] == ["1"] and listed[0].run_id == result.run_id
        table = models.query_one("#models", Table)
        await wait_until(lambda: table.row_count == 1)
        if result.gate_passed:  # promote it from the console; a failed one the daemon refuses, and says why
            await pilot.press("p")
            await confirm(app, pilot)
            await wait_until(
                lambda: "champion" in daemon.stub.ListModels(api.ListModelsRequest(name="lgbm")).versions[0].aliases
            )
        else:
            await pilot.press("p")
            await confirm(app, pilot)
            await wait_until(lambda: audited(daemon, "PromoteModel"), 10)
            assert audited(daemon, "PromoteModel")[0].outcome == "FAILED_PRECONDITION"


async def test_backtest_from_the_form(daemon_factory) -> None:  # noqa: ANN001
    daemon = daemon_factory("--replay-rate", "5").start()
    app = console(daemon)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("7")
        view = app.views["backtests"]
        view.query_one("#bt-start", Input).value = "2010-01-01"
        view.query_one("#bt-end", Input).value = "2011-12-31"
        view.query_one("#bt-compare", Input).value = "portfolio.method=equal,fixed"
        await pilot.press("ctrl+r")
        await wait_until(lambda: len(view.results) == 2 and not view.running, 300, "two results")
        summary = view.query_one("#bt-summary", Table)
        assert summary.labels == ["metric", "equal", "fixed"] and summary.row_count > 10
        assert all(r.summary.bars > 400 and len(r.equity_curve.equity) == r.summary.bars for r in view.results)
        # A bad date is refused before any call.
        view.query_one("#bt-start", Input).value = "2010/01/01"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not view.running
    assert len(audited(daemon, "RunBacktest")) == 1


def test_status_line_shows_equity_pnl_approval_and_state() -> None:
    status = api.GetStatusResponse(
        halted=True,
        halt_reason="kill switch",
        execution_approved=False,
        session_state=api.SESSION_STATE_RUNNING,
        bus="jetstream",
    )
    status.account.equity = 101_234.5
    status.account.day_pnl = -12.25
    line = status_line(status, connected=True)
    assert line.startswith("HALTED (kill switch)")
    assert "equity 101,234.50" in line and "day P&L -12.25" in line and "execution REVOKED" in line
    assert "PAUSED" not in line and "per-order" not in line
    status.entries_paused, status.approval_mode = True, pb.APPROVAL_MODE_PER_ORDER
    line = status_line(status, connected=True, pending_approvals=3)
    assert "execution REVOKED per-order (3 pending)" in line and "entries PAUSED" in line
    assert status_line(None, connected=False).startswith("DISCONNECTED")
