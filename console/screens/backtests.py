"""7 Backtests: a form for RunBacktest (data set, symbols, dates, cash, a comparison of one setting), its
progress, and the result: a summary table (one column per run) and the equity curves."""

from __future__ import annotations

import math
import re
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.widget import Widget
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from utp.console.screens.base import View
from utp.console.source import SourceError
from utp.console.widgets import EquityChart, Row, Table, fmt_money, fmt_pct
from utp.v1 import core_service_pb2 as api

DATASETS = (
    ("goog: GOOG daily 2004-2013", "goog"),
    ("eurusd: EURUSD hourly", "eurusd"),
    ("sp500: 20 stocks daily 1990-2022", "sp500"),
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: (label, summary field, how to show it) in the order of the summary table.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("total return", "total_return", "pct"),
    ("annual return", "annual_return", "pct"),
    ("sharpe", "sharpe", "num"),
    ("sortino", "sortino", "num"),
    ("max drawdown", "max_drawdown", "pct"),
    ("calmar", "calmar", "num"),
    ("win rate", "win_rate", "pct"),
    ("profit factor", "profit_factor", "num"),
    ("trades", "trades", "int"),
    ("orders", "orders", "int"),
    ("final equity", "final_equity", "money"),
    ("exposure time", "exposure_time", "pct"),
    ("turnover", "turnover", "num"),
    ("commissions", "commissions", "money"),
    ("bars", "bars", "int"),
)


def metric_text(value: float, how: str) -> str:
    if how == "int":
        return f"{int(value):,}"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return {"pct": fmt_pct(value, 2), "money": fmt_money(value)}.get(how, f"{value:.2f}")


def run_labels(names: list[str]) -> list[str]:
    """Column names of a comparison's runs: their values when every run sets the same key ("equal", "hrp")."""
    keys = {name.partition("=")[0] for name in names}
    if len(keys) == 1 and all("=" in name for name in names):
        return [name.partition("=")[2] for name in names]
    return [name or "result" for name in names]


class BacktestsView(View):
    NAME = "backtests"
    TITLE = "Backtests"
    SHORT = "Backtest"
    BINDINGS: ClassVar[list[Binding]] = [Binding("ctrl+r", "run", "Run / stop")]

    def __init__(self) -> None:
        super().__init__()
        self.results: list[api.BacktestResult] = []

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        with Grid(id="bt-form"):
            yield Label("data set")
            yield Select(DATASETS, value="goog", allow_blank=False, id="bt-dataset", compact=True)
            yield Label("symbols")
            yield Input(id="bt-symbols", compact=True, placeholder="all (or AAPL,MSFT)")
            yield Label("start")
            yield Input(id="bt-start", compact=True, placeholder="YYYY-MM-DD")
            yield Label("end")
            yield Input(id="bt-end", compact=True, placeholder="YYYY-MM-DD")
            yield Label("cash")
            yield Input(id="bt-cash", compact=True, placeholder="configured", type="number")
            yield Label("compare")
            yield Input(id="bt-compare", compact=True, placeholder="KEY=V1,V2 (e.g. portfolio.method=equal,hrp)")
        with Horizontal(id="bt-run-row"):
            yield Button("Run", id="bt-run", variant="primary", compact=True)
            yield ProgressBar(id="bt-progress", show_eta=False, classes="idle")
            yield Static(id="bt-status")
        with Horizontal(id="bt-results"):
            yield Table(["metric"], id="bt-summary", classes="panel")
            yield EquityChart(id="bt-chart", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#bt-summary").border_title = "Result"
        self.query_one("#bt-chart").border_title = "Equity"
        self.query_one("#bt-chart", EquityChart).show([], "equity")

    def default_focus(self) -> Widget | None:
        return self.query_one("#bt-dataset")

    @property
    def running(self) -> bool:
        return any(w.group == "backtest" and w.is_running for w in self.workers)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "bt-run":
            event.stop()
            self.action_run()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not self.running:
            self.action_run()

    def action_run(self) -> None:
        if self.running:
            self.workers.cancel_group(self, "backtest")
            self._finished("stopped")
            return
        request = self.request()
        if request is not None:
            self.run_backtest(request)

    def request(self) -> api.RunBacktestRequest | None:
        """The form as a request, or None after saying what is wrong with it."""

        def text(field_id: str) -> str:
            return self.query_one(field_id, Input).value.strip()

        start, end, cash = text("#bt-start"), text("#bt-end"), text("#bt-cash")
        for name, date in (("start", start), ("end", end)):
            if date and not _DATE.match(date):
                self.notify(f"{name}: {date!r} is not YYYY-MM-DD", severity="error")
                return None
        try:
            initial_cash = float(cash) if cash else 0.0
        except ValueError:
            self.notify(f"cash: {cash!r} is not a number", severity="error")
            return None
        symbols = [s.strip().upper() for s in text("#bt-symbols").replace(" ", ",").split(",") if s.strip()]
        return api.RunBacktestRequest(
            dataset=str(self.query_one("#bt-dataset", Select).value),
            symbols=symbols,
            start_date=start,
            end_date=end,
            initial_cash=initial_cash,
            compare=text("#bt-compare"),
            include_details=True,
            actor=self.console.actor,
            reason="backtest from the console",
        )

    @work(group="backtest", exclusive=True)
    async def run_backtest(self, request: api.RunBacktestRequest) -> None:
        self.results = []
        self.query_one("#bt-run", Button).label = "Stop"
        bar = self.query_one("#bt-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.remove_class("idle")
        self.query_one("#bt-status", Static).update("starting...")
        try:
            async for response in self.console.source.stream("RunBacktest", request):
                payload = response.WhichOneof("payload")
                if payload == "progress":
                    p = response.progress
                    bar.update(total=max(p.bars_total, 1), progress=p.bars_processed)
                    run = f"{p.run}: " if p.run else ""
                    self.query_one("#bt-status", Static).update(f"{run}{p.bars_processed:,}/{p.bars_total:,} bars")
                elif payload == "result":
                    self.results.append(response.result)
                    self.show_results(self.results)
        except SourceError as exc:
            self.notify(exc.explain(), severity="error", timeout=10)
            self._finished(f"failed: {exc.code.name}")
            return
        self._finished(f"done: {len(self.results)} run{'s' if len(self.results) != 1 else ''}")

    def _finished(self, status: str) -> None:
        self.query_one("#bt-run", Button).label = "Run"
        self.query_one("#bt-status", Static).update(status)
        if self.results:
            bar = self.query_one("#bt-progress", ProgressBar)
            bar.update(total=bar.total or 1, progress=bar.total or 1)

    def show_results(self, results: list[api.BacktestResult]) -> None:
        names = run_labels([r.name for r in results])
        rows = [
            Row(label, (label, *(metric_text(getattr(r.summary, field), how) for r in results)))
            for label, field, how in METRICS
        ]
        self.query_one("#bt-summary", Table).set_rows(rows, ["metric", *names])
        curves = [
            (name, list(r.equity_curve.time_ns), list(r.equity_curve.equity))
            for name, r in zip(names, results, strict=True)
        ]
        self.query_one("#bt-chart", EquityChart).show(curves if len(curves) > 1 else [("", *curves[0][1:])], "equity")
