"""The console's building blocks: the status bar, the tab bar, risk gauges, the equity chart, tables that keep
their cursor across refreshes, the confirmation dialog, and the formatting every screen shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.coordinate import Coordinate
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, DataTable, Input, Static
from textual_plotext import PlotextPlot

from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

#: A gauge turns red past this share of its limit.
GAUGE_HOT = 0.8
#: Points of an equity curve drawn (a long curve is thinned to this many).
CHART_POINTS = 400


# -- formatting -------------------------------------------------------------------------------------------
def fmt_time(ns: int) -> str:
    """Bar or wall time in UTC to the minute: every operator reads the same clock."""
    if ns <= 0:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M")


def fmt_date(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d") if ns > 0 else "-"


def fmt_duration(ns: int) -> str:
    """A lag or an age, to its two largest units."""
    seconds = max(ns, 0) // 1_000_000_000
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {seconds}s" if seconds else f"{minutes}m"
    return f"{seconds}s"


def fmt_money(value: float) -> str:
    return f"{value:,.2f}"


def fmt_qty(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def fmt_pct(value: float, digits: int = 1) -> str:
    return "-" if not math.isfinite(value) else f"{value * 100:.{digits}f}%"


def signed(value: float, text: str | None = None) -> Text:
    """A P&L-like number, green when positive and red when negative."""
    shown = f"{value:+,.2f}" if text is None else text
    return Text(shown, style="green" if value > 0 else "red" if value < 0 else "")


def enum_label(enum: EnumTypeWrapper, value: int, *, lower: bool = False) -> str:
    """An enum value's name without the enum's prefix: RISK_REASON_MAX_POSITION -> MAX_POSITION."""
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    prefix = _enum_prefix(enum)
    name = name[len(prefix) :] if name.startswith(prefix) else name
    return name.lower().replace("_", " ") if lower else name


def _enum_prefix(enum: EnumTypeWrapper) -> str:
    names = list(enum.keys())
    head = names[0]
    for name in names[1:]:
        while not name.startswith(head):
            head = head[:-1]
    return head[: head.rfind("_") + 1]


_ARROWS = {pb.DIRECTION_UP: ("▲", "green"), pb.DIRECTION_DOWN: ("▼", "red"), pb.DIRECTION_FLAT: ("■", "yellow")}


def direction_text(direction: int, suffix: str = "") -> Text:
    arrow, style = _ARROWS.get(direction, ("·", "dim"))
    return Text(f"{arrow}{suffix}", style=style)


@dataclass(frozen=True)
class AlertLine:
    """One alert event of any kind, in the columns the console shows."""

    time_ns: int
    kind: str
    severity: str
    subject: str
    message: str


_CRITICAL_RISK = frozenset({pb.RISK_ACTION_KILL_SWITCH, pb.RISK_ACTION_HALT, pb.RISK_ACTION_LIQUIDATE})


def alert_line(event: pb.Event) -> AlertLine | None:
    """Risk, data, model and operator alerts in one shape; None for any other event."""
    kind = event.WhichOneof("payload")
    if kind == "risk_event":
        e = event.risk_event
        severity = "critical" if e.action in _CRITICAL_RISK else "warning"
        subject = e.header.symbol or enum_label(pb.RiskAction, e.action, lower=True)
        message = f"{enum_label(pb.RiskReason, e.reason, lower=True)}: {e.message}"
        return AlertLine(e.header.event_time_ns, "risk", severity, subject, message)
    if kind == "data_alert":
        d = event.data_alert
        severity = "info" if d.kind == pb.DATA_ALERT_KIND_FRESH else "warning"
        subject = d.header.symbol or d.source or "data"
        return AlertLine(
            d.header.event_time_ns,
            "data",
            severity,
            subject,
            f"{enum_label(pb.DataAlertKind, d.kind, lower=True)}: {d.message}",
        )
    if kind == "model_alert":
        m = event.model_alert
        severity = {pb.MODEL_ALERT_KIND_MODEL_SWAPPED: "info", pb.MODEL_ALERT_KIND_MODEL_FAILED: "critical"}.get(
            m.kind, "warning"
        )
        return AlertLine(
            m.header.event_time_ns,
            "model",
            severity,
            f"{m.model_name} {m.model_version}".strip(),
            f"{enum_label(pb.ModelAlertKind, m.kind, lower=True)}: {m.message}",
        )
    if kind == "operator_alert":
        o = event.operator_alert
        severity = enum_label(pb.AlertSeverity, o.severity, lower=True) if o.severity else "info"
        message = o.message + (f" ({o.action})" if o.action else "") + (" [resolved]" if o.resolved else "")
        return AlertLine(o.header.event_time_ns, "operator", severity, o.source, message)
    return None


_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def severity_text(severity: str) -> Text:
    return Text(severity, style=_SEVERITY_STYLE.get(severity, ""))


# -- the status bar ---------------------------------------------------------------------------------------
_SESSION = {
    api.SESSION_STATE_STARTING: "starting",
    api.SESSION_STATE_RUNNING: "running",
    api.SESSION_STATE_COMPLETED: "completed",
    api.SESSION_STATE_STOPPING: "stopping",
    api.SESSION_STATE_FAILED: "FAILED",
}


def status_line(status: api.GetStatusResponse | None, connected: bool, pending_approvals: int = 0) -> str:
    """The status bar's text, most urgent first so that 80 columns show what matters: trading state, equity,
    day P&L, execution approval (and the approval queue in per-order mode), entries, session, data time."""
    if not connected or status is None:
        return "DISCONNECTED - retrying"
    trading = f"HALTED ({status.halt_reason})" if status.halted else "RUNNING"
    approval = "APPROVED" if status.execution_approved else "REVOKED"
    if status.approval_mode == pb.APPROVAL_MODE_PER_ORDER:
        approval += f" per-order ({pending_approvals} pending)"
    account = status.account
    parts = [trading, f"equity {account.equity:,.2f}", f"day P&L {account.day_pnl:+,.2f}", f"execution {approval}"]
    if status.entries_paused:
        parts.append("entries PAUSED")
    parts += [
        f"session {_SESSION.get(status.session_state, '?')} ({status.bus})",
        f"data {fmt_time(account.header.event_time_ns)}",
    ]
    return " | ".join(parts)


class StatusBar(Static):
    """One line of session state, red when something needs the operator; `text` holds what it shows."""

    text = ""

    def show(self, text: str, *, alarm: bool) -> None:
        self.text = text
        self.set_class(alarm, "alarm")
        self.update(text)


# -- the tab bar ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tab:
    id: str
    label: str
    #: For narrow terminals.
    short: str


class TabBar(Widget):
    """One line of tabs (a full Tabs widget takes two): click one, or use the keys its owner binds."""

    # Tabs look the same under the mouse (a hover style would also make layout snapshots depend on the pointer).
    DEFAULT_CSS = """
    TabBar {
        link-style: none;
        link-color: $foreground;
        link-background: transparent;
        link-style-hover: none;
        link-color-hover: $foreground;
        link-background-hover: transparent;
    }
    """

    active: reactive[str] = reactive("")

    class Selected(Message):
        def __init__(self, bar: TabBar, tab_id: str) -> None:
            super().__init__()
            self.bar = bar
            self.tab_id = tab_id

        @property
        def control(self) -> TabBar:
            return self.bar

    def __init__(self, tabs: Sequence[Tab], *, numbered: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tabs = list(tabs)
        self.numbered = numbered
        self.set_reactive(TabBar.active, self.tabs[0].id if self.tabs else "")

    def _labels(self, short: bool) -> list[str]:
        labels = [t.short if short else t.label for t in self.tabs]
        return [
            f"{i}{' ' if not short else ''}{label}" if self.numbered else label
            for i, label in enumerate(labels, start=1)
        ]

    def render(self) -> Content:
        labels = self._labels(short=False)
        if sum(len(x) + 2 for x in labels) > self.size.width:
            labels = self._labels(short=True)
        parts = []
        for tab, label in zip(self.tabs, labels, strict=True):
            style = "reverse bold" if tab.id == self.active else ""
            parts.append(Content.from_markup(f"[@click=select('{tab.id}')] {label} [/]").stylize(style))
        return Content("").join(parts)

    def action_select(self, tab_id: str) -> None:
        self.post_message(self.Selected(self, tab_id))

    def next_id(self) -> str:
        ids = [t.id for t in self.tabs]
        return ids[(ids.index(self.active) + 1) % len(ids)] if self.active in ids else ids[0]


# -- gauges and charts ------------------------------------------------------------------------------------
def gauge_value(value: float, unit: str) -> str:
    if unit == "fraction":
        return fmt_pct(value)
    if unit == "usd":
        return f"${value:,.0f}"
    return f"{value:g}"


class Gauge(Widget):
    """One risk limit as a bar: how much of it the portfolio uses; red past 80 %."""

    DEFAULT_CSS = "Gauge { height: 1; }"

    def __init__(self, gauge: api.RiskGauge, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.gauge = gauge

    @property
    def used(self) -> float:
        g = self.gauge
        return abs(g.value) / g.limit if g.limit > 0 else 0.0

    def show(self, gauge: api.RiskGauge) -> None:
        self.gauge = gauge
        self.set_class(self.used > GAUGE_HOT, "-hot")
        self.refresh()

    def on_mount(self) -> None:
        self.set_class(self.used > GAUGE_HOT, "-hot")

    @property
    def label(self) -> str:
        """The setting without what every risk limit says: risk.max_daily_loss_pct -> daily loss."""
        name = self.gauge.name.removeprefix("risk.").removeprefix("max_").removesuffix("_pct")
        return name.replace("_", " ")

    def render(self) -> Text:
        g, used = self.gauge, self.used
        name = self.label
        figures = f" {used * 100:3.0f}% {gauge_value(g.value, g.unit)}/{gauge_value(g.limit, g.unit)}"
        name_width = min(16, max(8, self.size.width // 3))
        bar_width = max(4, self.size.width - name_width - len(figures) - 1)
        filled = min(bar_width, round(min(used, 1.0) * bar_width))
        style = "red" if used > GAUGE_HOT else "yellow" if used > 0.5 else "green"
        text = Text(f"{name[:name_width]:<{name_width}} ")
        text.append("█" * filled, style=style)
        text.append("░" * (bar_width - filled), style="dim")
        text.append(figures, style="bold red" if used > GAUGE_HOT else "")
        return text


class EquityChart(PlotextPlot):
    """Equity curves against time (one per backtest run, or the session's).

    The figure is drawn afresh at each render, at the widget's size: plotext keeps state between builds, so a
    figure drawn once and rebuilt at a new size may come out differently from one drawn at that size.
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._curves: list[tuple[str, list[int], list[float]]] = []
        self._title = ""

    def show(self, curves: Sequence[tuple[str, Sequence[int], Sequence[float]]], title: str = "") -> None:
        drawn = [(name, list(t), list(e)) for name, t, e in curves if len(t) and len(t) == len(e)]
        if drawn == self._curves and title == self._title:
            return
        self._curves, self._title = drawn, title
        self.refresh()

    def render(self) -> Text:
        plt = self.plt
        plt.clear_figure()
        plt.title(self._title if self._curves else f"{self._title} (no data yet)".strip())
        for name, times, equity in self._curves:
            step = max(1, math.ceil(len(times) / CHART_POINTS))
            xs = list(range(0, len(times), step))
            if xs[-1] != len(times) - 1:
                xs.append(len(times) - 1)
            plt.plot(xs, [equity[i] for i in xs], label=name or None, marker="braille")
        if self._curves:
            # As many date labels as fit without overlapping: plotext drops overlapping ones in an order that
            # changes from one process to the next.
            times = self._curves[0][1]
            count = max(2, min(5, (self.size.width - 14) // 16))
            ticks = sorted({round(k * (len(times) - 1) / (count - 1)) for k in range(count)})
            plt.xticks(ticks, [fmt_date(times[i]) for i in ticks])
        return super().render()  # type: ignore[return-value]


# -- tables -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """A table row: its key (kept across refreshes), its cells, and the values it sorts by (else the cells)."""

    key: str
    cells: tuple[Any, ...]
    sort: tuple[Any, ...] = ()

    def sort_value(self, column: int) -> tuple[bool, Any]:
        value = self.sort[column] if self.sort else self.cells[column]
        if isinstance(value, Text):
            value = value.plain
        return (value is None, value if value is not None else 0)


class Table(DataTable):
    """A row-cursor table refilled on every poll: it redraws only when the rows changed and keeps the cursor on
    the same row key; sortable ones sort on a header click or `cycle_sort` (the owner's `s` key)."""

    def __init__(
        self, columns: Sequence[str], *, sortable: bool = False, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.labels = list(columns)
        self.sortable = sortable
        self.sort_column: int | None = None
        self.sort_reverse = False
        self._rows: list[Row] = []
        self._shown: list[Row] | None = None

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for i, label in enumerate(self.labels):
            if i == self.sort_column:
                label += " ▼" if self.sort_reverse else " ▲"
            self.add_column(label, key=str(i))

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0:
            return None
        row = min(self.cursor_row, self.row_count - 1)
        return self.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value

    def set_rows(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        """Show these rows; with `columns`, under these column labels (redrawn only when they change)."""
        self._rows = list(rows)
        relabel = columns is not None and list(columns) != self.labels
        if relabel:
            self.labels = list(columns)  # type: ignore[arg-type]
            if self.sort_column is not None and self.sort_column >= len(self.labels):
                self.sort_column = None
        self._draw(force=relabel)

    def _draw(self, *, force: bool = False) -> None:
        rows = self._rows
        if self.sort_column is not None and self.sort_column < len(self.labels):
            column = self.sort_column
            rows = sorted(rows, key=lambda r: r.sort_value(column), reverse=self.sort_reverse)
        if rows == self._shown and not force:
            return
        selected, cursor = self.selected_key, self.cursor_row
        self.clear(columns=force)
        if force:
            self._add_columns()
        for row in rows:
            self.add_row(*row.cells, key=row.key)
        self._shown = rows
        if rows:
            keys = [r.key for r in rows]
            target = keys.index(selected) if selected in keys else min(cursor, len(rows) - 1)
            self.move_cursor(row=target, animate=False)

    def sort_by(self, column: int) -> None:
        self.sort_reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column = column
        self._draw(force=True)

    def cycle_sort(self) -> None:
        """Next column, ascending; a second press on the last column goes back to the first."""
        self.sort_by(0 if self.sort_column is None else (self.sort_column + 1) % len(self.labels))

    def reverse_sort(self) -> None:
        self.sort_by(self.sort_column or 0)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if self.sortable:
            event.stop()
            self.sort_by(event.column_index)


# -- the confirmation dialog ------------------------------------------------------------------------------
class ConfirmScreen(ModalScreen[str | None]):
    """Asks before a mutating call, with the reason the call will carry (edited here, or required).

    Dismisses with the reason, or None when the operator backs out. Enter or `y` confirms; Escape or `n`
    cancels (while typing the reason, Enter confirms and Escape cancels).
    """

    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("n", "cancel", "No", show=False),
        Binding("y", "confirm", "Yes", show=False),
    ]

    def __init__(
        self,
        title: str,
        question: str,
        *,
        reason: str = "",
        require_reason: bool = False,
        danger: bool = False,
        confirm_label: str = "Yes",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.question = question
        self.default_reason = reason
        self.require_reason = require_reason
        self.danger = danger
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="-danger" if self.danger else ""):
            yield Static(self.title_text, classes="dialog-title")
            yield Static(self.question, classes="dialog-question")
            yield Input(
                value="" if self.require_reason else self.default_reason,
                id="reason",
                compact=True,
                placeholder="reason (required)" if self.require_reason else "reason",
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button(
                    self.confirm_label, id="confirm", variant="error" if self.danger else "primary", compact=True
                )
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#reason" if self.require_reason else "#confirm").focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm":
            self.action_confirm()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_confirm()

    def action_confirm(self) -> None:
        reason = self.query_one("#reason", Input).value.strip()
        if self.require_reason and not reason:
            self.notify("a reason is required", severity="warning")
            self.query_one("#reason").focus()
            return
        self.dismiss(reason or self.default_reason or self.title_text)

    def action_cancel(self) -> None:
        self.dismiss(None)
