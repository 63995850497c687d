"""1 Dashboard: the session at a glance — equity (or P&L), exposure, risk limits, engines and their lag, the
models in service, the approval queue, scheduled jobs and the latest alerts (all from one GetDashboard)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Static

from utp.console.screens.base import View
from utp.console.state import ConsoleState
from utp.console.widgets import (
    EquityChart,
    Gauge,
    Row,
    Table,
    alert_line,
    enum_label,
    fmt_duration,
    fmt_money,
    fmt_pct,
    fmt_time,
    severity_text,
    signed,
)
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

#: Alerts listed on the dashboard (the Audit screen has them all).
ALERTS_SHOWN = 8
_ENGINE_STYLE = {
    pb.ENGINE_STATE_FAILED: "bold red",
    pb.ENGINE_STATE_STOPPED: "yellow",
    pb.ENGINE_STATE_STARTING: "yellow",
}


class Exposure(Widget):
    """The account's exposure: money and share of equity in a wide panel, shares only in a narrow one."""

    DEFAULT_CSS = "Exposure { height: auto; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.account = pb.AccountSnapshot()

    def show(self, account: pb.AccountSnapshot) -> None:
        self.account = account
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 3 if width < 60 else 4

    def render(self) -> Text:
        a = self.account
        equity = a.equity or 1.0
        wide = self.size.width >= 60

        def share(label: str, value: float) -> str:
            return (
                f"{label} {fmt_money(value)} ({fmt_pct(value / equity)})"
                if wide
                else f"{label} {fmt_pct(value / equity, 0)}"
            )

        money = fmt_money if wide else (lambda v: f"{v:,.0f}")
        text = Text(
            f"equity {money(a.equity)}  cash {money(a.cash)}  {'positions' if wide else 'pos'} {a.open_positions}\n"
        )
        text.append("day ").append(signed(a.day_pnl, f"{a.day_pnl:+,.0f}")).append(
            "  unrealized " if wide else "  unr "
        )
        text.append(signed(a.unrealized_pnl, f"{a.unrealized_pnl:+,.0f}")).append("  realized " if wide else "  real ")
        text.append(signed(a.realized_pnl, f"{a.realized_pnl:+,.0f}")).append("\n")
        exposures = [
            share("gross", a.gross_exposure),
            share("net", a.net_exposure),
            share("long", a.long_exposure),
            share("short", a.short_exposure),
        ]
        text.append("  ".join(exposures[:2]) + "\n" + "  ".join(exposures[2:]) if wide else " ".join(exposures))
        return text


class DashboardView(View):
    NAME = "dashboard"
    TITLE = "Dashboard"
    SHORT = "Dash"
    BINDINGS: ClassVar[list[Binding]] = [Binding("p", "toggle_chart", "Equity / P&L")]

    def __init__(self) -> None:
        super().__init__()
        self.chart_pnl = False
        self._gauge_names: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        with Grid(id="dash-grid"):
            yield EquityChart(id="equity", classes="panel")
            with VerticalScroll(id="risk", classes="panel"):
                yield Exposure(id="exposure")
                yield Vertical(id="gauges")
            yield Table(["engine", "state", "lag", "in", "out", "rej", "error"], id="engines", classes="panel")
            with VerticalScroll(id="dash-info", classes="panel"):
                yield Static(id="info")

    def on_mount(self) -> None:
        self.query_one("#equity").border_title = "Equity"
        self.query_one("#risk").border_title = "Exposure and risk limits"
        self.query_one("#engines").border_title = "Engines (lag behind the newest bar)"
        self.query_one("#dash-info").border_title = "Models, approvals, jobs, alerts"

    def default_focus(self) -> Widget | None:
        return self.query_one("#engines")

    def action_toggle_chart(self) -> None:
        self.chart_pnl = not self.chart_pnl
        self.show_state(self.console.state)

    def show_state(self, state: ConsoleState) -> None:
        dashboard = state.dashboard
        self.say(
            ""
            if state.dashboard_supported
            else "this daemon has no GetDashboard: equity, gauges, models, jobs and alerts are unavailable"
        )
        self._show_chart(dashboard)
        self._show_exposure(dashboard.status.account)
        self._show_gauges(list(dashboard.gauges))
        self._show_engines(dashboard.status.engines, state.market_time_ns)
        self.query_one("#info", Static).update(self._info(dashboard))

    def _show_chart(self, dashboard: api.GetDashboardResponse) -> None:
        curve = dashboard.equity_curve
        equity = list(curve.equity)
        chart = self.query_one(EquityChart)
        if not equity:
            chart.show([], "equity")
            return
        change = equity[-1] - equity[0]
        title = f"P&L {change:+,.0f}" if self.chart_pnl else f"equity {equity[-1]:,.0f} ({change:+,.0f})"
        values = [e - equity[0] for e in equity] if self.chart_pnl else equity
        chart.show([("", list(curve.time_ns), values)], title)

    def _show_exposure(self, account: pb.AccountSnapshot) -> None:
        self.query_one(Exposure).show(account)

    def _show_gauges(self, gauges: list[api.RiskGauge]) -> None:
        box = self.query_one("#gauges", Vertical)
        names = [g.name for g in gauges]
        if names != self._gauge_names:
            box.remove_children()
            box.mount_all([Gauge(g) for g in gauges])
            self._gauge_names = names
            return
        for widget, gauge in zip(box.query(Gauge), gauges, strict=False):
            widget.show(gauge)

    def _show_engines(self, engines: list[pb.EngineStatus], market_time_ns: int) -> None:
        rows = []
        for e in engines:  # in the daemon's order: the pipeline's
            lag = fmt_duration(market_time_ns - e.through_time_ns) if e.through_time_ns and market_time_ns else "-"
            state = Text(enum_label(pb.EngineState, e.state), style=_ENGINE_STYLE.get(e.state, ""))
            rows.append(
                Row(
                    e.engine,
                    (
                        e.engine,
                        state,
                        lag,
                        f"{e.events_in:,}",
                        f"{e.events_out:,}",
                        f"{e.events_rejected:,}",
                        e.last_error,
                    ),
                )
            )
        self.query_one("#engines", Table).set_rows(rows)

    def _info(self, dashboard: api.GetDashboardResponse) -> Text:
        status = dashboard.status
        text = Text()
        text.append("Models ", style="bold")
        served = ", ".join(f"{m.name} {m.version} ({m.source})" for m in dashboard.models)
        text.append((served or "none reported") + "\n")
        text.append("Approvals ", style="bold")
        if status.approval_mode == pb.APPROVAL_MODE_PER_ORDER:
            pending = dashboard.pending_approvals
            text.append(f"{pending} pending (per-order)\n", style="bold yellow" if pending else "")
        else:
            text.append("blanket: " + ("execution approved\n" if status.execution_approved else "execution REVOKED\n"))
        text.append("Jobs\n", style="bold")
        for job in dashboard.jobs:
            outcome = "running" if job.running else job.last_outcome or "never ran"
            text.append(f"  {job.name} next {fmt_time(job.next_run_time_ns)[5:] or '-'} ")
            text.append(outcome, style="red" if outcome == "failed" else "")
            text.append("\n")
        if not dashboard.jobs:
            text.append("  none reported\n")
        text.append("Alerts\n", style="bold")
        lines = [line for line in map(alert_line, dashboard.alerts[:ALERTS_SHOWN]) if line is not None]
        for line in lines:
            text.append(f"  {fmt_time(line.time_ns)} ").append(severity_text(line.severity))
            text.append(f" {line.kind} {line.subject}: {line.message}\n")
        if not lines:
            text.append("  none\n")
        return text
