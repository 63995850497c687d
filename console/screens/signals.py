"""4 Signals: the latest ensemble signal of each symbol (ListSignals) with each component's vote — one column
per source (tft, rsi, ema_cross, macd, ...) — and the score, confidence, direction and regime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from utp.console.screens.base import View
from utp.console.widgets import Row, Table, direction_text, enum_label, fmt_money, fmt_time
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

#: Sources in the order the design names them; any other source follows, alphabetically.
KNOWN_SOURCES = ("tft", "lgbm", "rsi", "ema_cross", "macd")
FIXED_COLUMNS = ["symbol", "dir", "score", "conf", "regime"]
TRAILING_COLUMNS = ["price", "bar time"]


def component_sources(signals: Sequence[pb.ScoredSignal]) -> list[str]:
    seen = {c.source for s in signals for c in s.components}
    return [s for s in KNOWN_SOURCES if s in seen] + sorted(seen - set(KNOWN_SOURCES))


def component_cell(component: pb.ComponentSignal | None) -> Text:
    """A vote: its direction, confidence and weight in the ensemble, e.g. "▲.62 w.25"."""
    if component is None:
        return Text("·", style="dim")
    return direction_text(component.direction, f"{component.confidence:.2f} w{component.weight:.2f}".replace("0.", "."))


def signal_row(signal: pb.ScoredSignal, sources: Sequence[str]) -> Row:
    by_source = {c.source: c for c in signal.components}
    score = Text(f"{signal.score:+.2f}", style="green" if signal.score > 0 else "red" if signal.score < 0 else "")
    cells = (
        signal.header.symbol,
        direction_text(signal.direction, " " + enum_label(pb.Direction, signal.direction)),
        score,
        f"{signal.confidence:.2f}",
        enum_label(pb.Regime, signal.regime, lower=True),
        *(component_cell(by_source.get(s)) for s in sources),
        fmt_money(signal.reference_price),
        fmt_time(signal.header.event_time_ns),
    )
    sort = (
        signal.header.symbol,
        signal.direction,
        signal.score,
        signal.confidence,
        signal.regime,
        *(by_source[s].confidence if s in by_source else -1.0 for s in sources),
        signal.reference_price,
        signal.header.event_time_ns,
    )
    return Row(signal.header.symbol, cells, sort)


class SignalsView(View):
    NAME = "signals"
    TITLE = "Signals"
    SHORT = "Signals"
    LIVE = True
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse sort", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        yield Static(
            "each source: direction, confidence and weight in the vote (▲ up ▼ down ■ flat · inactive)",
            classes="summary",
        )
        yield Table(FIXED_COLUMNS + TRAILING_COLUMNS, sortable=True, id="signals")

    def default_focus(self) -> Widget | None:
        return self.query_one("#signals")

    async def load(self) -> None:
        (response,) = await self.fetch(("ListSignals", api.ListSignalsRequest()))
        if response is None:
            return
        signals = sorted(response.signals, key=lambda s: s.header.symbol)
        sources = component_sources(signals)
        self.query_one("#signals", Table).set_rows(
            [signal_row(s, sources) for s in signals], FIXED_COLUMNS + sources + TRAILING_COLUMNS
        )
        self.say("" if signals else "no signal yet: the ensemble scores symbols as bars arrive")

    def action_sort(self) -> None:
        self.query_one("#signals", Table).cycle_sort()

    def action_reverse_sort(self) -> None:
        self.query_one("#signals", Table).reverse_sort()
