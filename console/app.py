"""The operator console: watch and steer a running `utp core` daemon from a terminal.

It talks to the daemon only through gRPC (CoreService, with a bearer token), so it works the same locally, over
an SSH tunnel (`ssh -L 50051:127.0.0.1:50051 host`, then `utp console`) and against a daemon on JetStream;
several consoles may watch one daemon at once. Every call runs in a worker so the screen never blocks. It
polls GetDashboard (GetStatus on a daemon without it) every second and follows WatchEvents for rejected intents
and alerts; when the daemon goes away the status bar says so and both keep retrying until it is back.

Nine screens, keys 1-9 or a click on the tab bar: dashboard, positions, orders, signals, approvals, models,
backtests, audit and admin. `?` lists every key, ctrl+p finds every action by name, h halts and u resumes from
anywhere. Every call that changes the daemon asks first and carries a reason and the actor "console:<user>".
"""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

import grpc
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.css.query import NoMatches
from textual.widgets import ContentSwitcher, Footer, Header, Input
from textual.worker import Worker

from utp.console.screens.admin import AdminView
from utp.console.screens.approvals import ApprovalsView
from utp.console.screens.audit import AuditView
from utp.console.screens.backtests import BacktestsView
from utp.console.screens.base import View
from utp.console.screens.dashboard import DashboardView
from utp.console.screens.help import HelpScreen
from utp.console.screens.models import ModelsView
from utp.console.screens.orders import OPEN_STATUSES, OrdersView
from utp.console.screens.positions import PositionsView
from utp.console.screens.signals import SignalsView
from utp.console.source import DataSource, GrpcSource, SourceError
from utp.console.state import ConsoleState
from utp.console.widgets import StatusBar, Tab, TabBar, status_line
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

__all__ = ["ConsoleApp", "StatusBar", "status_line", "default_actor"]

POLL_SECONDS = 1.0
RETRY_SECONDS = 1.0
#: Equity points the dashboard asks for, and orders the Orders screen lists.
EQUITY_POINTS = 500
ORDERS_SHOWN = 500
VIEWS: tuple[type[View], ...] = (
    DashboardView,
    PositionsView,
    OrdersView,
    SignalsView,
    ApprovalsView,
    ModelsView,
    BacktestsView,
    AuditView,
    AdminView,
)
_WATCH_KINDS = [
    pb.EVENT_KIND_RISK_DECISION,
    pb.EVENT_KIND_RISK_EVENT,
    pb.EVENT_KIND_ORDER_APPROVAL,
    pb.EVENT_KIND_OPERATOR_ALERT,
]
#: What an older daemon (one without approval and operator-alert events) can stream.
_WATCH_KINDS_BASIC = [pb.EVENT_KIND_RISK_DECISION, pb.EVENT_KIND_RISK_EVENT]


def default_actor() -> str:
    """Who the daemon's audit trail names for this console's calls."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no $USER: a container's anonymous uid
        user = f"uid{os.getuid()}"
    return f"console:{user}"


class ConsoleCommands(Provider):
    """Every screen and every action of every screen, by name (ctrl+p)."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        return self.app.palette_commands()  # type: ignore[attr-defined]

    async def discover(self) -> Hits:
        for name, help_text, command in self._commands():
            yield DiscoveryHit(name, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, command in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), command, text=name, help=help_text)


class ConsoleApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "utp console"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (32, "-tall")]
    BINDINGS: ClassVar[list[Binding]] = [
        *(Binding(str(i), f"show_view('{view.NAME}')", view.TITLE, show=False) for i, view in enumerate(VIEWS, 1)),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("h", "halt", "Halt trading", show=False),
        Binding("u", "resume", "Resume trading", show=False),
        Binding("f5", "refresh", "Refresh", show=False),
        Binding("escape", "leave_input", "Leave the input", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        token: str = "",
        *,
        tls: bool = False,
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        server_name: str = "",
        source: DataSource | None = None,
        actor: str | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        """`target` and `token` (see utp.daemon.auth.resolve_token) reach the daemon, over TLS when `tls` or a
        certificate is given; `source` replaces the daemon with canned data (snapshots and screenshots only)."""
        super().__init__()
        self.target = target
        self.source: DataSource = source or GrpcSource(
            target, token, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, server_name=server_name
        )
        self.sub_title = self.source.label
        self.actor = actor or default_actor()
        self.poll_seconds = poll_seconds
        self.state = ConsoleState()
        self.views: dict[str, View] = {}
        self._poll_lock = asyncio.Lock()

    def compose(self) -> ComposeResult:
        # Kept as attributes: app.query_one searches the screen on top, which is a dialog at times.
        views = [view_type() for view_type in VIEWS]
        self.views = {view.NAME: view for view in views}
        self.status_bar = StatusBar("connecting...", id="status")
        self.tab_bar = TabBar([Tab(v.NAME, v.TITLE, v.SHORT) for v in views], numbered=True, id="tabs")
        self.switcher = ContentSwitcher(initial=views[0].id, id="views")
        yield Header()
        yield self.status_bar
        yield self.tab_bar
        with self.switcher:
            yield from views
        yield Footer()

    def on_mount(self) -> None:
        self.show_view(VIEWS[0].NAME)
        self._poll_forever()
        self._watch_forever()

    async def on_unmount(self) -> None:
        await self.source.close()

    @property
    def active_view(self) -> View:
        current = self.switcher.current or ""
        return self.views.get(current.removesuffix("-view"), self.views[VIEWS[0].NAME])

    # -- polling and the event stream --------------------------------------------------------------------
    @work(exclusive=True, group="poll")
    async def _poll_forever(self) -> None:
        while True:
            await self.poll_once()
            view = self.active_view
            if view.LIVE and self.state.connected and not self.state.problem:
                await self._load(view)
            await asyncio.sleep(self.poll_seconds if self.state.connected else RETRY_SECONDS)

    async def poll_once(self) -> None:
        """Fetch status (the dashboard), positions and orders once; redraw the status bar and the screen."""
        async with self._poll_lock:
            await self._poll()
        if self.closing:
            return  # its screens are being taken down under the answer that just came
        self._show_status()
        self.active_view.show_state(self.state)

    async def _poll(self) -> None:
        state = self.state
        try:
            dashboard = None
            if state.dashboard_supported:
                try:
                    dashboard = await self.source.call("GetDashboard", api.GetDashboardRequest(points=EQUITY_POINTS), 5)
                except SourceError as exc:
                    if not exc.unimplemented:
                        raise
                    state.dashboard_supported = False
            if dashboard is None:
                dashboard = api.GetDashboardResponse(
                    status=await self.source.call("GetStatus", api.GetStatusRequest(), 5)
                )
            positions = await self.source.call("ListPositions", api.ListPositionsRequest(), 5)
            orders = await self.source.call("ListOrders", api.ListOrdersRequest(limit=ORDERS_SHOWN), 5)
            # The Open tab needs every working order, and a protective leg can be older than the newest 500.
            working = await self.source.call("ListOrders", api.ListOrdersRequest(limit=ORDERS_SHOWN,
                                                                                 working_only=True), 5)
        except SourceError as exc:
            if exc.unreachable:
                if state.connected:
                    state.dashboard_supported = True  # the daemon that comes back may be a newer one
                state.connected, state.problem = False, ""
            else:
                state.connected, state.problem = True, exc.explain()
            return
        state.connected, state.problem = True, ""
        state.dashboard = dashboard
        state.positions = list(positions.positions)
        state.orders = list(orders.orders)
        newest = {o.client_order_id for o in state.orders}
        # An older daemon ignores working_only and answers the newest orders again: keep only working ones.
        state.orders += [o for o in working.orders if o.status in OPEN_STATUSES and o.client_order_id not in newest]

    @work(exclusive=True, group="watch")
    async def _watch_forever(self) -> None:
        kinds = _WATCH_KINDS
        while True:
            try:
                async for response in self.source.stream("WatchEvents", api.WatchEventsRequest(kinds=kinds)):
                    self._on_event(response.event)
            except SourceError as exc:
                if exc.code == grpc.StatusCode.INVALID_ARGUMENT and kinds is _WATCH_KINDS:
                    kinds = _WATCH_KINDS_BASIC  # an older daemon: follow what it knows
                    continue
            await asyncio.sleep(RETRY_SECONDS)  # the daemon went away or restarted: watch again

    def _on_event(self, event: pb.Event) -> None:
        kind = event.WhichOneof("payload")
        if kind == "risk_event" or (kind == "risk_decision" and not event.risk_decision.approved):
            self.state.rejected.appendleft(event)
        elif kind == "order_approval" and self.active_view.NAME == ApprovalsView.NAME:
            self.reload_view(self.active_view)
        elif kind == "operator_alert":
            alert = event.operator_alert
            if alert.severity == pb.ALERT_SEVERITY_CRITICAL and not alert.resolved:
                self.notify(f"{alert.source}: {alert.message}", title="critical alert", severity="error", timeout=15)

    def _show_status(self) -> None:
        state, bar = self.state, self.status_bar
        if state.problem:
            bar.show(f"ERROR {state.problem}", alarm=True)
            return
        status = state.status
        text = status_line(status, state.connected, state.dashboard.pending_approvals)
        if not state.connected:
            text += f" ({self.source.label})"
        alarm = status is None or status.halted or status.session_state == api.SESSION_STATE_FAILED
        bar.show(text, alarm=alarm)
        bar.set_class(status is not None and not status.halted and status.entries_paused, "warn")

    # -- screens -----------------------------------------------------------------------------------------
    def show_view(self, name: str) -> Worker:
        """Switch to a screen and focus it (so that its keys work); returns the worker loading its data."""
        view = self.views[name]
        self.switcher.current = view.id
        self.tab_bar.active = name
        view.show_state(self.state)
        target = view.default_focus()
        if target is not None:
            target.focus()
        return self.reload_view(view)

    def reload_view(self, view: View) -> Worker:
        return self.run_worker(self._load(view), group=f"load-{view.NAME}", exclusive=True)

    @property
    def closing(self) -> bool:
        """The console is shutting down (exit sets `_exit`; a test's shutdown only stops the app's loop)."""
        return not self.is_running or not self.active_view.is_attached

    async def _load(self, view: View) -> None:
        # A read in flight when the operator quits answers after Textual has removed the screen's widgets, but
        # before it cancels the app's workers: that is no error. While the console runs, a missing widget is.
        try:
            await view.load()
        except NoMatches:
            if not self.closing:
                raise

    def on_tab_bar_selected(self, event: TabBar.Selected) -> None:
        if event.bar.id == "tabs":
            self.show_view(event.tab_id)

    def action_show_view(self, name: str) -> None:
        self.show_view(name)

    async def run_view_action(self, name: str, action: str) -> None:
        self.show_view(name)
        await self.views[name].run_action(action)

    @property
    def admin(self) -> AdminView:
        return self.views[AdminView.NAME]  # type: ignore[return-value]

    def action_halt(self) -> None:
        self.admin.action_halt()

    def action_resume(self) -> None:
        self.admin.action_resume()

    async def action_refresh(self) -> None:
        await self.poll_once()
        self.reload_view(self.active_view)

    def action_leave_input(self) -> None:
        """Escape from a text field back to the screen's table, so that its keys work again."""
        if isinstance(self.focused, Input):
            target = self.active_view.default_focus()
            if target is not None and target is not self.focused:
                target.focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.binding_sections()))

    def binding_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Every key: those that work everywhere, then each screen's."""
        everywhere = [
            ("1-9", "switch screen (or click the tab bar)"),
            ("ctrl+p", "command palette: every action by name"),
        ]
        everywhere += _keys(b for b in self.BINDINGS if not b.key.isdigit() and b.key != "escape")
        everywhere.append(("escape", "leave a text field / close a dialog"))
        sections = [("Everywhere", everywhere)]
        for i, view in enumerate(self.views.values(), 1):
            sections.append((f"{i} {view.TITLE}", _keys(view.BINDINGS)))
        return sections

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        commands: list[tuple[str, str, Callable[[], Any]]] = []
        for i, view in enumerate(self.views.values(), 1):
            commands.append((f"Go to {view.TITLE}", f"key {i}", partial(self.show_view, view.NAME)))
        for view in self.views.values():
            for binding in _bindings(view.BINDINGS):
                commands.append(
                    (
                        f"{view.TITLE}: {binding.description}",
                        f"key {binding.key_display or binding.key}",
                        partial(self.run_view_action, view.NAME, binding.action),
                    )
                )
        commands += [
            ("Refresh now", "key f5", self.action_refresh),
            ("Help: every key", "key ?", self.action_help),
            ("Quit the console", "key q", self.exit),
        ]
        return commands


def _bindings(bindings: Iterable[Binding | tuple[str, ...]]) -> list[Binding]:
    return [b for b in bindings if isinstance(b, Binding) and b.description]


def _keys(bindings: Iterable[Binding | tuple[str, ...]]) -> list[tuple[str, str]]:
    return [(b.key_display or b.key, b.description) for b in _bindings(bindings)]
