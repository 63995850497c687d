"""3 Orders: open, filled and rejected — the last being intents risk refused and risk events (ListRejections,
with risk's reason) and orders the broker rejected. Cancel a working order (CancelOrder)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Static
from textual.worker import Worker

from utp.console.screens.base import View
from utp.console.source import SourceError
from utp.console.state import REJECTED_KEPT, ConsoleState
from utp.console.widgets import Row, Tab, TabBar, Table, enum_label, fmt_money, fmt_pct, fmt_qty, fmt_time
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

OPEN_STATUSES = frozenset(
    {pb.ORDER_STATUS_UNSPECIFIED, pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PARTIALLY_FILLED, pb.ORDER_STATUS_HELD}
)
ORDER_COLUMNS = [
    "time",
    "symbol",
    "side",
    "type",
    "qty",
    "filled",
    "avg fill",
    "limit/stop",
    "status",
    "reason",
    "strategy",
    "client order id",
]
REJECTED_COLUMNS = ["time", "symbol", "source", "side", "qty/target", "price", "risk reason", "message"]
_TABS = [
    Tab("open", "Open", "Open"),
    Tab("filled", "Filled", "Filled"),
    Tab("rejected", "Rejected", "Rej"),
    Tab("all", "All orders", "All"),
]
_STATUS_STYLE = {
    pb.ORDER_STATUS_FILLED: "green",
    pb.ORDER_STATUS_REJECTED: "red",
    pb.ORDER_STATUS_CANCELED: "dim",
    pb.ORDER_STATUS_EXPIRED: "dim",
    pb.ORDER_STATUS_PARTIALLY_FILLED: "yellow",
}


def order_row(o: pb.Order) -> Row:
    time_ns = o.submitted_time_ns or o.header.event_time_ns
    quantity = fmt_qty(o.quantity) if o.quantity else f"${o.notional:,.0f}" if o.notional else "-"
    prices = " / ".join(fmt_money(p) for p in (o.limit_price, o.stop_price) if p)
    status = Text(enum_label(pb.OrderStatus, o.status), style=_STATUS_STYLE.get(o.status, ""))
    cells = (
        fmt_time(time_ns),
        o.header.symbol,
        enum_label(pb.OrderSide, o.side),
        enum_label(pb.OrderType, o.order_type),
        quantity,
        fmt_qty(o.filled_quantity),
        fmt_money(o.average_fill_price) if o.average_fill_price else "",
        prices,
        status,
        enum_label(pb.IntentReason, o.reason, lower=True),
        o.strategy,
        o.client_order_id,
    )
    return Row(o.client_order_id, cells)


def rejected_row(event: pb.Event) -> Row | None:
    """A rejected intent, a risk event or a broker-rejected order as one row of the Rejected tab."""
    kind = event.WhichOneof("payload")
    if kind == "risk_decision":
        d = event.risk_decision
        intent = d.intent
        size = fmt_pct(intent.target_percent) if intent.HasField("target_percent") else fmt_qty(intent.quantity)
        cells = (
            fmt_time(d.header.event_time_ns),
            d.header.symbol,
            f"risk ({intent.source or 'intent'})",
            enum_label(pb.OrderSide, intent.side),
            size,
            fmt_money(intent.reference_price),
            Text(enum_label(pb.RiskReason, d.reason, lower=True), style="red"),
            d.message,
        )
        return Row(d.header.event_id or f"decision/{id(event)}", cells)
    if kind == "risk_event":
        e = event.risk_event
        cells = (
            fmt_time(e.header.event_time_ns),
            e.header.symbol or "-",
            f"risk rule: {enum_label(pb.RiskAction, e.action, lower=True)}",
            "",
            f"{e.value:.4g}/{e.threshold:.4g}",
            "",
            Text(enum_label(pb.RiskReason, e.reason, lower=True), style="red"),
            e.message,
        )
        return Row(e.header.event_id or f"risk/{id(event)}", cells)
    if kind == "order":
        o = event.order
        cells = (
            fmt_time(o.header.event_time_ns),
            o.header.symbol,
            f"broker ({o.broker})",
            enum_label(pb.OrderSide, o.side),
            fmt_qty(o.quantity),
            fmt_money(o.limit_price) if o.limit_price else "",
            Text("broker rejected", style="red"),
            o.message,
        )
        return Row(o.client_order_id, cells)
    return None


class OrdersView(View):
    NAME = "orders"
    TITLE = "Orders"
    SHORT = "Orders"
    LIVE = True  # the Rejected tab reads ListRejections on every poll; the other tabs use the app's poll
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("v", "next_tab", "Open/filled/rejected"),
        Binding("x", "cancel_selected", "Cancel order"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        yield TabBar(_TABS, id="order-tabs")
        with ContentSwitcher(initial="order-table", id="order-switcher"):
            yield Table(ORDER_COLUMNS, sortable=True, id="order-table")
            yield Table(REJECTED_COLUMNS, sortable=True, id="rejected-table")

    @property
    def tab(self) -> str:
        return self.query_one("#order-tabs", TabBar).active

    def default_focus(self) -> Widget | None:
        return self.query_one("#rejected-table" if self.tab == "rejected" else "#order-table")

    def on_tab_bar_selected(self, event: TabBar.Selected) -> None:
        event.stop()
        self.select_tab(event.tab_id)

    def action_next_tab(self) -> None:
        self.select_tab(self.query_one("#order-tabs", TabBar).next_id())

    def select_tab(self, tab: str) -> Worker:
        """Show a tab; returns the worker loading it (the rejections, for the Rejected tab)."""
        self.query_one("#order-tabs", TabBar).active = tab
        self.query_one(ContentSwitcher).current = "rejected-table" if tab == "rejected" else "order-table"
        self.show_state(self.console.state)
        focus = self.default_focus()
        if focus is not None:
            focus.focus()
        return self.console.reload_view(self)

    async def load(self) -> None:
        state = self.console.state
        if self.tab != "rejected" or not state.rejections_supported:
            return
        request = api.ListRejectionsRequest(limit=REJECTED_KEPT)
        try:
            state.listed_rejections = list((await self.console.source.call("ListRejections", request, 10)).rejections)
        except SourceError as exc:
            if not exc.unimplemented:
                self.say(exc.explain(), error=True)
                return
            state.rejections_supported = False  # an older daemon: what the event stream brought will do
        self.show_state(state)

    def show_state(self, state: ConsoleState) -> None:
        tab = self.tab
        if tab == "rejected":
            events = state.listed_rejections if state.rejections_supported else list(state.rejected)
            events = events + [pb.Event(order=o) for o in state.orders if o.status == pb.ORDER_STATUS_REJECTED]
            rows = [row for row in map(rejected_row, events) if row is not None]
            self.query_one("#rejected-table", Table).set_rows(rows)
            if rows:
                self.say("")
            elif state.rejections_supported:
                self.say("nothing rejected")
            else:
                self.say("nothing rejected since the console started (rejections stream in as they happen)")
            return
        if tab == "open":
            orders = [o for o in state.orders if o.status in OPEN_STATUSES]
        elif tab == "filled":
            orders = [o for o in state.orders if o.status == pb.ORDER_STATUS_FILLED]
        else:
            orders = list(state.orders)
        self.query_one("#order-table", Table).set_rows([order_row(o) for o in orders])
        self.say(
            "" if orders else {"open": "no working orders", "filled": "no filled orders"}.get(tab, "no orders yet")
        )

    def _selected_order(self) -> pb.Order | None:
        key = self.query_one("#order-table", Table).selected_key
        return next((o for o in self.console.state.orders if o.client_order_id == key), None)

    @work(group="actions")
    async def action_cancel_selected(self) -> None:
        order = self._selected_order() if self.tab != "rejected" else None
        if order is None or order.status not in OPEN_STATUSES:
            self.notify("select a working order (Open tab) to cancel", severity="warning")
            return
        coid = order.client_order_id
        await self.act(
            "CancelOrder",
            lambda reason, actor: api.CancelOrderRequest(client_order_id=coid, reason=reason, actor=actor),
            title=f"Cancel {coid}",
            question=f"Cancel the working {enum_label(pb.OrderSide, order.side)} order for {order.header.symbol}"
            " (an entry takes its protective legs with it)?",
            reason=f"cancel {coid} from the console",
            done=f"cancelling {coid}",
        )
