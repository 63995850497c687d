"""`?`: every key of the console, those that work everywhere and each screen's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table(show_header=False, box=None, padding=(0, 1), expand=True)
        table.add_column("key", style="bold", no_wrap=True, min_width=8)
        table.add_column("action", ratio=1)
        for title, keys in self.sections:
            table.add_row(f"[reverse] {title} [/]", "")
            for key, description in keys:
                table.add_row(key, description)
            table.add_row("", "")
        with VerticalScroll(id="help"):
            yield Static(
                "Keys (escape closes; the mouse works too: tabs, table headers, buttons)", classes="dialog-title"
            )
            yield Static(table)

    def on_mount(self) -> None:
        self.query_one("#help").focus()
