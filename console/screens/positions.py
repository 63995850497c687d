"""2 Positions: open positions, sortable; close one or all (Flatten), each after a confirmation."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from utp.console.screens.base import View
from utp.console.state import ConsoleState
from utp.console.widgets import Row, Table, fmt_money, fmt_pct, fmt_qty, signed
from utp.v1 import core_service_pb2 as api

COLUMNS = ["symbol", "qty", "avg price", "last", "mkt value", "% equity", "unrealized", "realized", "pending"]


class PositionsView(View):
    NAME = "positions"
    TITLE = "Positions"
    SHORT = "Pos"
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
        Binding("c", "close_selected", "Close position"),
        Binding("C", "close_all", "Close all"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        yield Static(id="positions-summary", classes="summary")
        yield Table(COLUMNS, sortable=True, id="positions")

    def default_focus(self) -> Widget | None:
        return self.query_one("#positions")

    @property
    def table(self) -> Table:
        return self.query_one("#positions", Table)

    def show_state(self, state: ConsoleState) -> None:
        equity = state.dashboard.status.account.equity or 1.0
        rows = []
        for p in state.positions:
            symbol = p.header.symbol
            cells = (
                symbol,
                fmt_qty(p.quantity),
                fmt_money(p.average_price),
                fmt_money(p.last_price),
                fmt_money(p.market_value),
                fmt_pct(p.market_value / equity),
                signed(p.unrealized_pnl),
                signed(p.realized_pnl),
                fmt_qty(p.pending_quantity) if p.pending_quantity else "",
            )
            sort = (
                symbol,
                p.quantity,
                p.average_price,
                p.last_price,
                p.market_value,
                p.market_value / equity,
                p.unrealized_pnl,
                p.realized_pnl,
                p.pending_quantity,
            )
            rows.append(Row(symbol, cells, sort))
        self.table.set_rows(rows)
        unrealized = sum(p.unrealized_pnl for p in state.positions)
        gross = sum(abs(p.market_value) for p in state.positions)
        summary = f"{len(rows)} open | gross {fmt_money(gross)} | unrealized {unrealized:+,.2f}"
        self.query_one("#positions-summary", Static).update(summary if rows else "no open positions")

    def action_sort(self) -> None:
        self.table.cycle_sort()

    def action_reverse_sort(self) -> None:
        self.table.reverse_sort()

    @work(group="actions")
    async def action_close_selected(self) -> None:
        symbol = self.table.selected_key
        if symbol is None:
            self.notify("no position selected", severity="warning")
            return
        await self.act(
            "Flatten",
            lambda reason, actor: api.FlattenRequest(symbol=symbol, reason=reason, actor=actor),
            title=f"Close {symbol}",
            question=f"Close the whole {symbol} position at the next bar time (its working orders are cancelled)?",
            reason=f"close {symbol} from the console",
            done=f"closing {symbol}",
        )

    @work(group="actions")
    async def action_close_all(self) -> None:
        count = self.table.row_count
        await self.act(
            "Flatten",
            lambda reason, actor: api.FlattenRequest(reason=reason, actor=actor),
            title="Close every position",
            question=f"Close all {count} positions at the next bar time? Trading goes on afterwards.",
            reason="close all positions from the console",
            done="closing every position",
            danger=True,
        )
