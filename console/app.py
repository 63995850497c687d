"""The operator console: watch positions, orders and fills; approve or revoke execution; halt and resume.

It talks to the daemon only through gRPC (CoreService), so it works the same locally, over an SSH tunnel
(`ssh -L 50051:127.0.0.1:50051 host`, then `utp console`), and against a daemon on JetStream. Every call
runs in a worker so the screen never blocks; when the daemon goes away the console says so and keeps
retrying until it is back.

Keys: a approve execution, r revoke it, h halt, u resume (un-halt), q quit.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Static

from utp.v1 import core_service_pb2 as api
from utp.v1 import core_service_pb2_grpc as api_grpc
from utp.v1 import events_pb2 as pb

POLL_SECONDS = 1.0
RETRY_SECONDS = 1.0
LOG_ROWS = 500
_SIDE = {pb.ORDER_SIDE_BUY: "BUY", pb.ORDER_SIDE_SELL: "SELL"}
_ORDER_STATUS = {
    pb.ORDER_STATUS_NEW: "NEW",
    pb.ORDER_STATUS_PARTIALLY_FILLED: "PARTIAL",
    pb.ORDER_STATUS_FILLED: "FILLED",
    pb.ORDER_STATUS_CANCELED: "CANCELED",
    pb.ORDER_STATUS_REJECTED: "REJECTED",
}
_SESSION = {
    api.SESSION_STATE_STARTING: "starting",
    api.SESSION_STATE_RUNNING: "running",
    api.SESSION_STATE_COMPLETED: "completed",
    api.SESSION_STATE_STOPPING: "stopping",
    api.SESSION_STATE_FAILED: "FAILED",
}


def _time(ns: int) -> str:
    if ns <= 0:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")


def status_line(status: api.GetStatusResponse | None, connected: bool) -> str:
    """The status bar's text: trading state, equity, day P&L, approval, session."""
    if not connected or status is None:
        return "DISCONNECTED - retrying"
    trading = f"HALTED ({status.halt_reason})" if status.halted else "RUNNING"
    approval = "APPROVED" if status.execution_approved else "REVOKED"
    account = status.account
    return (
        f"{trading} | equity {account.equity:,.2f} | day P&L {account.day_pnl:+,.2f} | "
        f"execution {approval} | session {_SESSION.get(status.session_state, '?')} ({status.bus}) | "
        f"data {_time(account.header.event_time_ns)}"
    )


class StatusBar(Static):
    """One line of session state; `text` holds what it shows."""

    text = ""

    def show(self, text: str, *, alarm: bool) -> None:
        self.text = text
        self.set_class(alarm, "alarm")
        self.update(text)


class ConsoleApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "utp console"
    BINDINGS = [
        Binding("a", "approve", "Approve execution"),
        Binding("r", "revoke", "Revoke execution"),
        Binding("h", "halt", "Halt"),
        Binding("u", "resume", "Resume"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.sub_title = target
        self.channel: grpc.aio.Channel | None = None
        self.stub: api_grpc.CoreServiceStub | None = None
        self.status: api.GetStatusResponse | None = None
        self.connected = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar("connecting...", id="status")
        with Vertical(id="main"):
            yield Static("Positions", classes="title")
            yield DataTable(id="positions", cursor_type="row", zebra_stripes=True)
            yield Static("Orders, fills and rejected intents (newest at the bottom)", classes="title")
            yield DataTable(id="log", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#positions", DataTable).add_columns(
            "symbol", "quantity", "avg price", "last", "market value", "unrealized", "realized"
        )
        self.query_one("#log", DataTable).add_columns("time", "event", "symbol", "side", "quantity", "price", "detail")
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = api_grpc.CoreServiceStub(self.channel)
        self.poll_status()
        self.watch_events()

    async def on_unmount(self) -> None:
        if self.channel is not None:
            await self.channel.close(grace=None)

    # -- background workers ------------------------------------------------------------------------
    @work(exclusive=True, group="poll")
    async def poll_status(self) -> None:
        assert self.stub is not None
        while True:
            try:
                status = await self.stub.GetStatus(api.GetStatusRequest(), timeout=5)
                positions = await self.stub.ListPositions(api.ListPositionsRequest(), timeout=5)
                self.connected = True
                self.status = status
                self._show_positions(positions.positions)
            except grpc.aio.AioRpcError:
                self.connected = False
            self._show_status()
            await asyncio.sleep(POLL_SECONDS if self.connected else RETRY_SECONDS)

    @work(exclusive=True, group="watch")
    async def watch_events(self) -> None:
        assert self.stub is not None
        kinds = [pb.EVENT_KIND_ORDER, pb.EVENT_KIND_FILL, pb.EVENT_KIND_RISK_DECISION]
        while True:
            try:
                async for response in self.stub.WatchEvents(api.WatchEventsRequest(kinds=kinds)):
                    self._log_event(response.event)
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(RETRY_SECONDS)  # the daemon went away or restarted: watch again

    # -- actions -----------------------------------------------------------------------------------
    def action_approve(self) -> None:
        self._command("approve")

    def action_revoke(self) -> None:
        self._command("revoke")

    def action_halt(self) -> None:
        self._command("halt")

    def action_resume(self) -> None:
        self._command("resume")

    @work(group="commands")
    async def _command(self, name: str) -> None:
        assert self.stub is not None
        actor, reason = "console", f"{name} from the console"
        try:
            if name in ("approve", "revoke"):
                await self.stub.SetExecutionApproval(
                    api.SetExecutionApprovalRequest(approved=name == "approve", reason=reason, actor=actor), timeout=5
                )
            elif name == "halt":
                await self.stub.Halt(api.HaltRequest(reason=reason, actor=actor), timeout=5)
            else:
                await self.stub.Resume(api.ResumeRequest(reason=reason, actor=actor), timeout=5)
            self.status = await self.stub.GetStatus(api.GetStatusRequest(), timeout=5)
            self.connected = True
            self.notify(f"{name}: done")
        except grpc.aio.AioRpcError as exc:
            self.notify(f"{name} failed: {exc.details() or exc.code().name}", severity="error")
        self._show_status()

    # -- rendering ---------------------------------------------------------------------------------
    def _show_status(self) -> None:
        alarm = not self.connected or self.status is None or self.status.halted
        self.query_one(StatusBar).show(status_line(self.status, self.connected), alarm=alarm)

    def _show_positions(self, positions: list[pb.PositionSnapshot]) -> None:
        table = self.query_one("#positions", DataTable)
        table.clear()
        for p in sorted(positions, key=lambda p: p.header.symbol):
            table.add_row(
                p.header.symbol,
                f"{p.quantity:g}",
                f"{p.average_price:,.2f}",
                f"{p.last_price:,.2f}",
                f"{p.market_value:,.2f}",
                f"{p.unrealized_pnl:+,.2f}",
                f"{p.realized_pnl:+,.2f}",
            )

    def _log_event(self, event: pb.Event) -> None:
        kind = event.WhichOneof("payload")
        if kind == "order":
            o = event.order
            row = ("order " + _ORDER_STATUS.get(o.status, "?"), o.header.symbol, _SIDE.get(o.side, "?"),
                   f"{o.quantity:g}", f"{o.average_fill_price:,.2f}" if o.average_fill_price else "", o.client_order_id)  # fmt: skip
            time_ns = o.header.event_time_ns
        elif kind == "fill":
            f = event.fill
            row = ("fill", f.header.symbol, _SIDE.get(f.side, "?"), f"{f.quantity:g}", f"{f.price:,.2f}",
                   f"commission {f.commission:.2f}")  # fmt: skip
            time_ns = f.header.event_time_ns
        elif kind == "risk_decision" and not event.risk_decision.approved:
            d = event.risk_decision
            row = ("REJECTED", d.header.symbol, _SIDE.get(d.intent.side, "?"), f"{d.intent.quantity:g}",
                   f"{d.intent.reference_price:,.2f}", f"{pb.RiskReason.Name(d.reason)}: {d.message}")  # fmt: skip
            time_ns = d.header.event_time_ns
        else:
            return
        table = self.query_one("#log", DataTable)
        table.add_row(_time(time_ns), *row)
        if table.row_count > LOG_ROWS:
            table.remove_row(next(iter(table.rows)))
        table.move_cursor(row=table.row_count - 1)
