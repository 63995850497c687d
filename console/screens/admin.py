"""9 Admin: the session's controls — pause or resume new entries, halt and resume, approve or revoke execution,
the emergency halt-and-flatten — and the scheduler's jobs (run one now). Every action asks first."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.widget import Widget
from textual.widgets import Button, Static

from utp.console.screens.base import View
from utp.console.state import ConsoleState
from utp.console.widgets import Row, Table, enum_label, fmt_time
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

JOB_COLUMNS = ["job", "schedule", "next run", "last run", "outcome", "what it did", "description"]
#: Jobs can take minutes (the nightly retrain); RunJob answers when the job has finished.
RUN_JOB_TIMEOUT_S = 3600.0
#: (button id, label, action) — the same actions as the keys, for the mouse.
_BUTTONS = (
    ("btn-pause", "Pause entries (e)", "pause_entries"),
    ("btn-unpause", "Resume entries (E)", "resume_entries"),
    ("btn-halt", "Halt (h)", "halt"),
    ("btn-resume", "Resume (u)", "resume"),
    ("btn-approve", "Approve exec (g)", "approve_execution"),
    ("btn-revoke", "Revoke exec (G)", "revoke_execution"),
    ("btn-flatten", "HALT + FLATTEN (F)", "emergency"),
    ("btn-job", "Run job (j)", "run_job"),
)


def controls_text(status: api.GetStatusResponse | None) -> Text:
    if status is None:
        return Text("not connected", style="bold red")
    text = Text()
    text.append("trading ")
    text.append(
        f"HALTED ({status.halt_reason})" if status.halted else "running", style="bold red" if status.halted else "green"
    )
    text.append(" | entries ")
    text.append(
        "PAUSED" if status.entries_paused else "allowed", style="bold yellow" if status.entries_paused else "green"
    )
    text.append(" | execution ")
    text.append(
        "approved" if status.execution_approved else "REVOKED",
        style="green" if status.execution_approved else "bold red",
    )
    mode = enum_label(pb.ApprovalMode, status.approval_mode, lower=True) if status.approval_mode else "as configured"
    text.append(f" | approval {mode.replace(' ', '-')}\n")
    session = enum_label(api.SessionState, status.session_state, lower=True)
    text.append(
        f"session {session} | {status.mode} | bus {status.bus} | {status.dataset or '-'} "
        f"({len(status.symbols)} symbols) | utp {status.version or '?'}",
        style="dim",
    )
    return text


def job_row(job: api.ScheduledJob) -> Row:
    outcome = "running" if job.running else job.last_outcome or "never ran"
    styled = Text(outcome, style={"failed": "bold red", "ok": "green", "running": "yellow"}.get(outcome, "dim"))
    cells = (
        job.name,
        job.schedule,
        fmt_time(job.next_run_time_ns),
        fmt_time(job.last_run_time_ns),
        styled,
        job.last_detail,
        job.description,
    )
    return Row(job.name, cells)


class AdminView(View):
    NAME = "admin"
    TITLE = "Admin"
    SHORT = "Admin"
    LIVE = True
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("e", "pause_entries", "Pause entries"),
        Binding("E", "resume_entries", "Resume entries"),
        Binding("h", "halt", "Halt"),
        Binding("u", "resume", "Resume"),
        Binding("F", "emergency", "Halt + flatten"),
        Binding("g", "approve_execution", "Approve execution", show=False),
        Binding("G", "revoke_execution", "Revoke execution", show=False),
        Binding("j", "run_job", "Run job"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(classes="note -empty")
        yield Static(id="admin-state", classes="summary")
        with Grid(id="admin-buttons"):
            for button_id, label, _ in _BUTTONS:
                yield Button(
                    label, id=button_id, compact=True, variant="error" if button_id == "btn-flatten" else "default"
                )
        yield Table(JOB_COLUMNS, id="jobs", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#jobs").border_title = "Scheduled jobs"

    def default_focus(self) -> Widget | None:
        return self.query_one("#jobs")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        action = next(a for button_id, _, a in _BUTTONS if button_id == event.button.id)
        getattr(self, f"action_{action}")()

    def show_state(self, state: ConsoleState) -> None:
        self.query_one("#admin-state", Static).update(controls_text(state.status))

    async def load(self) -> None:
        (jobs,) = await self.fetch(("ListJobs", api.ListJobsRequest()))
        if jobs is not None:
            self.query_one("#jobs", Table).set_rows([job_row(j) for j in jobs.jobs])

    # -- controls ----------------------------------------------------------------------------------------
    @work(group="actions")
    async def action_pause_entries(self) -> None:
        await self.act(
            "SetEntriesPaused",
            lambda reason, actor: api.SetEntriesPausedRequest(paused=True, reason=reason, actor=actor),
            title="Pause new entries",
            question="No new positions; exits, protective legs and risk exits still go.",
            reason="pause entries from the console",
            done="new entries paused",
        )

    @work(group="actions")
    async def action_resume_entries(self) -> None:
        await self.act(
            "SetEntriesPaused",
            lambda reason, actor: api.SetEntriesPausedRequest(paused=False, reason=reason, actor=actor),
            title="Resume new entries",
            question="Allow new positions again?",
            reason="resume entries from the console",
            done="new entries allowed",
        )

    @work(group="actions")
    async def action_halt(self) -> None:
        await self.act(
            "Halt",
            lambda reason, actor: api.HaltRequest(reason=reason, actor=actor),
            title="Halt trading",
            question="Risk rejects every intent and execution submits nothing until you resume (u).",
            reason="halt from the console",
            done="trading halted",
            danger=True,
        )

    @work(group="actions")
    async def action_resume(self) -> None:
        await self.act(
            "Resume",
            lambda reason, actor: api.ResumeRequest(reason=reason, actor=actor),
            title="Resume trading",
            question="Lift the halt: risk and execution work normally again.",
            reason="resume from the console",
            done="trading resumed",
        )

    @work(group="actions")
    async def action_emergency(self) -> None:
        await self.act(
            "Flatten",
            lambda reason, actor: api.FlattenRequest(halt=True, reason=reason, actor=actor),
            title="EMERGENCY: halt and flatten",
            question="Halt trading now and close EVERY position at the next bar time (needs execution "
            "approval). Nothing new is traded until you resume.",
            reason="emergency halt and flatten from the console",
            done="halted; closing every position",
            danger=True,
        )

    @work(group="actions")
    async def action_approve_execution(self) -> None:
        await self.set_execution(True)

    @work(group="actions")
    async def action_revoke_execution(self) -> None:
        await self.set_execution(False)

    @work(group="actions")
    async def action_run_job(self) -> None:
        name = self.query_one("#jobs", Table).selected_key
        if name is None:
            self.notify("select a job to run", severity="warning")
            return
        response = await self.act(
            "RunJob",
            lambda reason, actor: api.RunJobRequest(name=name, reason=reason, actor=actor),
            title=f"Run {name} now",
            question=f"Run the scheduled job {name} now? (the console waits until it has finished)",
            reason=f"run {name} from the console",
            done=f"{name} finished",
            timeout=RUN_JOB_TIMEOUT_S,
        )
        if response is not None:
            job = response.job
            self.notify(
                f"{job.name}: {job.last_outcome} {job.last_detail}".strip(),
                severity="error" if job.last_outcome == "failed" else "information",
                timeout=10,
            )
