"""6 Models: the registry's versions (champion and challenger, the gate, out-of-sample figures); retrain one
(TriggerRetrain, its stages streamed into a progress bar and a log), promote a version or roll back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, DataTable, Input, ProgressBar, RadioButton, RadioSet, RichLog, Static

from utp.console.screens.base import View
from utp.console.source import SourceError
from utp.console.widgets import Row, Table, fmt_time
from utp.v1 import core_service_pb2 as api

COLUMNS = ["model", "version", "aliases", "gate", "oos sharpe", "win rate", "min fold", "DSR", "created", "run"]
MODEL_KINDS = ("lgbm", "tft")
#: Stages of a retrain besides its folds: data, backtest, gate, ensemble calibration, registered.
_FIXED_STAGES = 5


def _tag_number(tags: dict[str, str], key: str) -> str:
    try:
        return f"{float(tags[key]):.2f}"
    except (KeyError, ValueError):
        return "-"


def version_row(v: api.ModelVersion) -> Row:
    tags = dict(v.tags)
    aliases = Text(", ".join(v.aliases), style="bold green" if "champion" in v.aliases else "")
    gate = Text("passed", style="green") if v.gate_passed else Text("failed", style="red")
    cells = (
        v.name,
        v.version,
        aliases,
        gate,
        _tag_number(tags, "oos_sharpe"),
        _tag_number(tags, "oos_win_rate"),
        _tag_number(tags, "min_fold_sharpe"),
        _tag_number(tags, "deflated_sharpe"),
        fmt_time(v.created_ms * 1_000_000),
        v.run_id[:8],
    )
    return Row(f"{v.name}/{v.version}", cells)


def parse_settings(text: str) -> list[str]:
    """`KEY=VALUE; KEY=VALUE`: semicolons separate, since values may hold commas and spaces
    ("train.symbols=[AAPL, JPM]")."""
    return [part.strip() for part in text.split(";") if part.strip()]


@dataclass(frozen=True)
class RetrainChoice:
    model: str
    settings: list[str]
    promote: bool
    reason: str


class RetrainScreen(ModalScreen[RetrainChoice | None]):
    """Which model to retrain, with which settings over the daemon's, and whether to promote it if it passes."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Retrain a model", classes="dialog-title")
            yield Static(
                "Walk-forward training, the gate, MLflow and the registry, in a process of the daemon.",
                classes="dialog-question",
            )
            with RadioSet(id="model-kind"):
                for i, kind in enumerate(MODEL_KINDS):
                    yield RadioButton(kind, value=i == 0, id=f"kind-{kind}")
            yield Input(id="settings", compact=True, placeholder="settings: KEY=VALUE; KEY=VALUE (e.g. train.folds=6)")
            yield Checkbox("promote to champion if it passes the gate", id="promote", compact=True)
            yield Input(value="retrain from the console", id="reason", compact=True, placeholder="reason")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start", id="confirm", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one(RadioSet).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm":
            self.action_start()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_start()

    def action_start(self) -> None:
        pressed = self.query_one(RadioSet).pressed_button
        model = str(pressed.label) if pressed is not None else MODEL_KINDS[0]
        self.dismiss(
            RetrainChoice(
                model,
                parse_settings(self.query_one("#settings", Input).value),
                self.query_one("#promote", Checkbox).value,
                self.query_one("#reason", Input).value.strip() or "retrain from the console",
            )
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


class ModelsView(View):
    NAME = "models"
    TITLE = "Models"
    SHORT = "Models"
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("t", "retrain", "Retrain"),
        Binding("p", "promote", "Promote"),
        Binding("b", "rollback", "Roll back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, api.ModelVersion] = {}
        self.last_result: api.RetrainResult | None = None

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        yield Table(COLUMNS, sortable=True, id="models")
        yield Static(id="model-detail", classes="summary")
        with Vertical(id="retrain", classes="panel"):
            yield ProgressBar(id="retrain-progress", show_eta=False, classes="idle")
            yield RichLog(id="retrain-log", wrap=True, markup=False, max_lines=500)

    def on_mount(self) -> None:
        self.query_one("#retrain").border_title = "Retrain (t)"
        self.query_one("#retrain-log", RichLog).write("t retrains a model: its stages and result appear here")

    def default_focus(self) -> Widget | None:
        return self.query_one("#models")

    async def load(self) -> None:
        (response,) = await self.fetch(("ListModels", api.ListModelsRequest()))
        if response is None:
            return
        self.versions = {f"{v.name}/{v.version}": v for v in response.versions}
        self.query_one("#models", Table).set_rows([version_row(v) for v in response.versions])
        self.say("" if self.versions else "no model registered yet: t retrains one")
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _selected(self) -> api.ModelVersion | None:
        key = self.query_one("#models", Table).selected_key
        return self.versions.get(key) if key else None

    def _show_detail(self) -> None:
        version = self._selected()
        if version is None:
            self.query_one("#model-detail", Static).update("")
            return
        shown = {k: v for k, v in sorted(version.tags.items()) if not k.startswith("onnx")}
        text = f"{version.name} {version.version}: " + "  ".join(f"{k}={v}" for k, v in shown.items())
        self.query_one("#model-detail", Static).update(text)

    # -- actions -----------------------------------------------------------------------------------------
    @work(group="actions")
    async def action_promote(self) -> None:
        version = self._selected()
        if version is None:
            self.notify("select a model version to promote", severity="warning")
            return
        name, number = version.name, version.version
        gate = "" if version.gate_passed else " It did NOT pass the gate: the daemon will refuse."
        await self.act(
            "PromoteModel",
            lambda reason, actor: api.PromoteModelRequest(name=name, version=number, reason=reason, actor=actor),
            title=f"Promote {name} {number}",
            question=f"Make {name} {number} champion? The session serves it from its next bar time.{gate}",
            reason=f"promote {name} {number} from the console",
            done=f"{name} {number} is champion",
        )

    @work(group="actions")
    async def action_rollback(self) -> None:
        version = self._selected()
        name = version.name if version is not None else ""
        if not name:
            self.notify("select a version of the model to roll back", severity="warning")
            return
        await self.act(
            "PromoteModel",
            lambda reason, actor: api.PromoteModelRequest(name=name, rollback=True, reason=reason, actor=actor),
            title=f"Roll back {name}",
            question=f"Point {name}'s champion back at the previous champion?",
            reason=f"roll back {name} from the console",
            done=f"{name} rolled back",
            danger=True,
        )

    def action_retrain(self) -> None:
        if any(w.group == "retrain" and w.is_running for w in self.workers):
            self.notify("a retrain is running already", severity="warning")
            return
        self.app.push_screen(RetrainScreen(), self._start_retrain)

    def _start_retrain(self, choice: RetrainChoice | None) -> None:
        if choice is not None:
            self.retrain(choice)

    @work(group="retrain", exclusive=True)
    async def retrain(self, choice: RetrainChoice) -> None:
        """Stream the retrain's stages into the log; its result ends it."""
        log, bar = self.query_one("#retrain-log", RichLog), self.query_one("#retrain-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.remove_class("idle")
        log.write(f"retraining {choice.model} {' '.join(choice.settings)}".strip())
        request = api.TriggerRetrainRequest(
            model=choice.model,
            set=choice.settings,
            promote=choice.promote,
            reason=choice.reason,
            actor=self.console.actor,
        )
        try:
            async for response in self.console.source.stream("TriggerRetrain", request):
                if response.WhichOneof("payload") == "progress":
                    self._progress(response.progress, choice.promote)
                else:
                    self._result(response.result)
        except SourceError as exc:
            log.write(f"failed: {exc}")
            self.notify(exc.explain(), severity="error", timeout=10)
            bar.update(total=1, progress=0)
            return
        await self.load()

    def _progress(self, progress: api.RetrainProgress, promote: bool) -> None:
        log, bar = self.query_one("#retrain-log", RichLog), self.query_one("#retrain-progress", ProgressBar)
        try:
            detail = json.loads(progress.detail_json or "{}")
        except ValueError:
            detail = {}
        if progress.stage == "fold" and isinstance(detail.get("of"), int) and bar.total is None:
            done = bar.progress
            bar.update(total=detail["of"] + _FIXED_STAGES + int(promote), progress=done)
        bar.advance(1)
        facts = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in detail.items())
        log.write(f"{progress.stage}: {facts}")

    def _result(self, result: api.RetrainResult) -> None:
        self.last_result = result
        bar = self.query_one("#retrain-progress", ProgressBar)
        bar.update(total=bar.total or bar.progress or 1, progress=bar.total or bar.progress or 1)
        gate = "passed the gate" if result.gate_passed else f"failed the gate ({'; '.join(result.gate_reasons)})"
        summary = (
            f"{result.model} {result.version} registered: {gate}; OOS Sharpe {result.oos_sharpe:.2f}, "
            f"win rate {result.oos_win_rate:.2f}, DSR {result.deflated_sharpe:.2f}"
            + ("; promoted to champion" if result.promoted else "")
        )
        self.query_one("#retrain-log", RichLog).write(summary)
        self.notify(summary, timeout=10)
