"""5 Approvals: in per-order mode the orders waiting for the operator (approve or reject one or all); in blanket
mode the execution gate as a whole. Switch between the modes with `m`."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from utp.console.screens.base import View
from utp.console.state import ConsoleState
from utp.console.widgets import Row, Table, enum_label, fmt_money, fmt_pct, fmt_qty, fmt_time
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

#: Recent decisions listed under the queue.
DECIDED_SHOWN = 20
PENDING_COLUMNS = [
    "symbol",
    "side",
    "est qty",
    "ref price",
    "target",
    "reason",
    "strategy",
    "legs",
    "expires",
    "intent",
]
DECIDED_COLUMNS = ["state", "symbol", "side", "est qty", "by", "why", "intent"]
_STATE_STYLE = {
    pb.APPROVAL_STATE_APPROVED: "green",
    pb.APPROVAL_STATE_REJECTED: "red",
    pb.APPROVAL_STATE_EXPIRED: "dim",
    pb.APPROVAL_STATE_SUPERSEDED: "dim",
}


def pending_row(a: pb.OrderApproval) -> Row:
    cells = (
        a.header.symbol,
        enum_label(pb.OrderSide, a.side),
        fmt_qty(a.estimated_quantity),
        fmt_money(a.reference_price),
        fmt_pct(a.target_percent),
        enum_label(pb.IntentReason, a.reason, lower=True),
        a.strategy,
        str(a.legs),
        fmt_time(a.expires_time_ns),
        a.intent_id,
    )
    return Row(a.intent_id, cells)


def decided_row(a: pb.OrderApproval) -> Row:
    state = Text(enum_label(pb.ApprovalState, a.state, lower=True), style=_STATE_STYLE.get(a.state, ""))
    cells = (
        state,
        a.header.symbol,
        enum_label(pb.OrderSide, a.side),
        fmt_qty(a.estimated_quantity),
        a.actor,
        a.message,
        a.intent_id,
    )
    return Row(a.header.event_id or f"{a.intent_id}/{a.state}", cells)


class ApprovalsView(View):
    NAME = "approvals"
    TITLE = "Approvals"
    SHORT = "Approve"
    LIVE = True
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("a", "approve_selected", "Approve"),
        Binding("r", "reject_selected", "Reject"),
        Binding("A", "approve_all", "Approve all"),
        Binding("R", "reject_all", "Reject all"),
        Binding("m", "toggle_mode", "Blanket/per-order"),
        Binding("g", "approve_execution", "Approve execution"),
        Binding("G", "revoke_execution", "Revoke execution"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.mode = pb.APPROVAL_MODE_UNSPECIFIED

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        yield Static(id="approval-mode", classes="summary")
        yield Table(PENDING_COLUMNS, id="pending", classes="panel")
        yield Table(DECIDED_COLUMNS, id="decided", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#pending").border_title = "Waiting for you (oldest first)"
        self.query_one("#decided").border_title = "Decided (newest first)"

    def default_focus(self) -> Widget | None:
        return self.query_one("#pending")

    @property
    def per_order(self) -> bool:
        return self.mode == pb.APPROVAL_MODE_PER_ORDER

    def show_state(self, state: ConsoleState) -> None:
        if state.status is not None and state.status.approval_mode:
            self.mode = state.status.approval_mode  # a change by another console shows at the next poll
        self._show_mode(state.status)

    def _show_mode(self, status: api.GetStatusResponse | None) -> None:
        gate = "unknown" if status is None else "APPROVED" if status.execution_approved else "REVOKED"
        pending = self.query_one("#pending", Table).row_count
        if self.per_order:
            text = Text.assemble(("PER-ORDER", "bold"), f" approval: {pending} waiting | execution {gate} | m: blanket")
        else:
            text = Text.assemble(
                ("BLANKET", "bold"),
                f" approval: orders go while execution is approved | execution {gate}"
                " | g/G approve/revoke | m: per-order",
            )
        self.query_one("#approval-mode", Static).update(text)

    async def load(self) -> None:
        (response,) = await self.fetch(("ListApprovals", api.ListApprovalsRequest(decided=DECIDED_SHOWN)))
        if response is None:
            return
        self.mode = response.mode
        self.query_one("#pending", Table).set_rows([pending_row(a) for a in response.pending])
        self.query_one("#decided", Table).set_rows([decided_row(a) for a in response.decided])
        self._show_mode(self.console.state.status)

    # -- per-order decisions -----------------------------------------------------------------------------
    def _selected(self) -> str | None:
        if not self.per_order:
            self.notify(
                "blanket mode: nothing waits for approval (g/G approve or revoke execution as a whole)",
                severity="warning",
            )
            return None
        intent_id = self.query_one("#pending", Table).selected_key
        if intent_id is None:
            self.notify("no order is waiting", severity="warning")
        return intent_id

    def _describe(self, intent_id: str) -> str:
        table = self.query_one("#pending", Table)
        row = table.get_row(intent_id)
        return f"{row[1]} {row[2]} {row[0]} at about {row[3]} ({row[5]}, {row[6] or 'no strategy'})"

    async def _decide(self, approve: bool, *, every: bool) -> None:
        """Approve or reject the selected pending order, or every one; a rejection needs a reason."""
        if every:
            if not self.per_order:
                self._selected()  # says why there is nothing to decide
                return
            ids: list[str] = []
            count = self.query_one("#pending", Table).row_count
            subject = f"all {count} waiting orders"
        else:
            intent_id = self._selected()
            if intent_id is None:
                return
            ids, subject = [intent_id], self._describe(intent_id)
        verb = "approve" if approve else "reject"
        await self.act(
            "DecideApprovals",
            lambda reason, actor: api.DecideApprovalsRequest(
                intent_ids=ids, all=every, approve=approve, reason=reason, actor=actor
            ),
            title=f"{verb.capitalize()} {'every pending order' if every else 'order'}",
            question=f"Place {subject}?" if approve else f"Drop {subject}? Say why:",
            reason=(f"approved {'all ' if every else ''}from the console" if approve else ""),
            require_reason=not approve,
            done=f"{'every pending order' if every else 'order'} {verb}d",
            danger=every,
        )

    @work(group="actions")
    async def action_approve_selected(self) -> None:
        await self._decide(True, every=False)

    @work(group="actions")
    async def action_reject_selected(self) -> None:
        await self._decide(False, every=False)

    @work(group="actions")
    async def action_approve_all(self) -> None:
        await self._decide(True, every=True)

    @work(group="actions")
    async def action_reject_all(self) -> None:
        await self._decide(False, every=True)

    # -- the mode and the gate ---------------------------------------------------------------------------
    @work(group="actions")
    async def action_toggle_mode(self) -> None:
        to = pb.APPROVAL_MODE_BLANKET if self.per_order else pb.APPROVAL_MODE_PER_ORDER
        name = enum_label(pb.ApprovalMode, to, lower=True).replace(" ", "-")
        consequence = (
            "every order will wait for your approve/reject"
            if to == pb.APPROVAL_MODE_PER_ORDER
            else "every order risk approves will go while execution is approved; waiting orders are placed"
        )
        response = await self.act(
            "SetApprovalMode",
            lambda reason, actor: api.SetApprovalModeRequest(mode=to, reason=reason, actor=actor),
            title=f"Switch to {name} approval",
            question=f"Switch to {name} approval: {consequence}?",
            reason=f"{name} approval from the console",
            done=f"approval is now {name}",
        )
        if response is not None:
            self.mode = response.mode

    @work(group="actions")
    async def action_approve_execution(self) -> None:
        await self.set_execution(True)

    @work(group="actions")
    async def action_revoke_execution(self) -> None:
        await self.set_execution(False)
