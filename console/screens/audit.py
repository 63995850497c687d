"""8 Audit & logs: the daemon's audit trail (every operator action, allowed or refused), its recent alerts and its
dead letters (input rows an engine kept failing on: `l` replays the selected one into its engine once it is
fixed, `D` drops it), filtered by one line: `method=Halt actor=console:ann outcome=OK` asks the daemon (exact,
case-insensitive), other words keep the rows of every table that contain them all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Input, Static

from utp.console.screens.base import View
from utp.console.widgets import Row, Table, alert_line, fmt_time, severity_text
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

AUDIT_SHOWN = 200
ALERTS_SHOWN = 200
AUDIT_COLUMNS = ["time (UTC)", "actor", "role", "method", "outcome", "reason", "detail", "peer"]
ALERT_COLUMNS = ["bar time", "severity", "kind", "subject", "message"]
DEAD_LETTERS_SHOWN = 200
DEAD_LETTER_COLUMNS = ["#", "bar time", "engine", "kind", "symbol", "deliveries", "error"]
_SERVER_KEYS = ("method", "actor", "outcome")


@dataclass(frozen=True)
class AuditFilter:
    """The filter line: exact fields for ListAudit, and words every shown row must contain."""

    method: str = ""
    actor: str = ""
    outcome: str = ""
    words: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> AuditFilter:
        fields: dict[str, str] = {}
        words = []
        for token in text.split():
            key, sep, value = token.partition("=")
            if sep and key.lower() in _SERVER_KEYS:
                fields[key.lower()] = value
            else:
                words.append(token.lower())
        return cls(**fields, words=tuple(words))

    def keeps(self, row: Row) -> bool:
        text = " ".join(c.plain if isinstance(c, Text) else str(c) for c in row.cells).lower()
        return all(word in text for word in self.words)


def audit_row(entry: api.AuditEntry, index: int) -> Row:
    outcome = Text(entry.outcome, style="green" if entry.outcome == "OK" else "bold red")
    cells = (
        fmt_time(entry.time_ns),
        entry.actor or "-",
        entry.role,
        entry.method,
        outcome,
        entry.reason,
        entry.detail,
        entry.peer,
    )
    return Row(f"{entry.time_ns}/{index}", cells)


def alert_row(event: pb.Event, index: int) -> Row | None:
    line = alert_line(event)
    if line is None:
        return None
    return Row(
        f"{index}", (fmt_time(line.time_ns), severity_text(line.severity), line.kind, line.subject, line.message)
    )


def dead_letter_row(letter: api.DeadLetter) -> Row:
    kind = letter.event.WhichOneof("payload") or "?"
    header = getattr(letter.event, kind).header if kind != "?" else pb.EventHeader()
    cells = (str(letter.sequence), fmt_time(header.event_time_ns), letter.engine, kind, header.symbol or "-",
             str(letter.deliveries), Text(letter.error, style="red"))  # fmt: skip
    return Row(str(letter.sequence), cells)


class AuditView(View):
    NAME = "audit"
    TITLE = "Audit & logs"
    SHORT = "Audit"
    LIVE = True
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("l", "replay_letter", "Replay letter"),
        Binding("D", "drop_letter", "Drop letter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = AuditFilter()

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        yield Input(
            id="audit-filter",
            compact=True,
            placeholder="/ filter: method=Halt actor=console:ann outcome=OK, or any words",
        )
        yield Table(AUDIT_COLUMNS, sortable=True, id="audit", classes="panel")
        yield Table(ALERT_COLUMNS, sortable=True, id="alerts", classes="panel")
        yield Table(DEAD_LETTER_COLUMNS, sortable=True, id="dead-letters", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#audit").border_title = "Audit trail (newest first)"
        self.query_one("#alerts").border_title = "Alerts (newest first)"
        self.query_one("#dead-letters").border_title = "Dead letters (l replay once fixed, D drop)"

    def default_focus(self) -> Widget | None:
        return self.query_one("#audit")

    def action_filter(self) -> None:
        self.query_one("#audit-filter").focus()

    async def on_input_changed(self, event: Input.Changed) -> None:
        self.filter = AuditFilter.parse(event.value)

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.filter = AuditFilter.parse(event.value)
        await self.load()
        self.query_one("#audit").focus()

    async def load(self) -> None:
        f = self.filter
        audit, alerts, letters = await self.fetch(
            ("ListAudit", api.ListAuditRequest(limit=AUDIT_SHOWN, method=f.method, actor=f.actor, outcome=f.outcome)),
            ("ListAlerts", api.ListAlertsRequest(limit=ALERTS_SHOWN)),
            ("ListDeadLetters", api.ListDeadLettersRequest(limit=DEAD_LETTERS_SHOWN)),
        )
        if letters is not None:
            rows = [dead_letter_row(x) for x in letters.letters]
            self.query_one("#dead-letters", Table).set_rows([r for r in rows if f.keeps(r)])
        if audit is not None:
            rows = [audit_row(e, i) for i, e in enumerate(audit.entries)]
            self.query_one("#audit", Table).set_rows([r for r in rows if f.keeps(r)])
        if alerts is not None:
            rows = [r for i, e in enumerate(alerts.alerts) if (r := alert_row(e, i)) is not None]
            self.query_one("#alerts", Table).set_rows([r for r in rows if f.keeps(r)])

    # -- dead letters ------------------------------------------------------------------------------------
    async def _on_letter(self, drop: bool) -> None:
        table = self.query_one("#dead-letters", Table)
        key = table.selected_key
        if key is None:
            self.notify("no dead letter", severity="warning")
            return
        row = table.get_row(key)
        subject = f"dead letter #{key} ({row[3]} {row[4]} at {row[1]}, {row[2]} failed on it {row[5]} times)"
        response = await self.act(
            "ReplayDeadLetters",
            lambda reason, actor: api.ReplayDeadLettersRequest(sequences=[int(key)], drop=drop, reason=reason, actor=actor),
            title="Drop dead letter" if drop else "Replay dead letter",
            question=f"Drop {subject} for good? Say why:" if drop else f"Hand {subject} to {row[2]} again?",
            reason="" if drop else "replayed from the console",
            require_reason=drop,
            danger=drop,
            done="dead letter dropped" if drop else "dead letter handed to its engine",
        )
        if response is not None and response.errors:
            self.notify("; ".join(response.errors), severity="error", timeout=10)

    @work(group="actions")
    async def action_replay_letter(self) -> None:
        await self._on_letter(drop=False)

    @work(group="actions")
    async def action_drop_letter(self) -> None:
        await self._on_letter(drop=True)
