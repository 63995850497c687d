"""What every screen of the console shares: its place in the tab bar, its keys, calls with error handling, and
the confirmation step in front of every call that changes the daemon."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from google.protobuf.message import Message
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from utp.console.source import SourceError
from utp.console.state import ConsoleState
from utp.console.widgets import ConfirmScreen
from utp.v1 import core_service_pb2 as api

if TYPE_CHECKING:
    from utp.console.app import ConsoleApp


class View(Vertical):
    """One screen of the console: a pane of the main window, with its own keys while it has the focus.

    `show_state` redraws it from the app's latest poll; `load` fetches what only this screen needs (LIVE
    screens again on every poll while shown). Mutating actions go through `act`, which asks first.
    """

    NAME: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    SHORT: ClassVar[str] = ""
    #: Reload on every poll while shown (else on showing it, after an action, and with f5).
    LIVE: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__(id=f"{self.NAME}-view", classes="view")
        self._last_error = ""

    @property
    def console(self) -> ConsoleApp:
        return self.app  # type: ignore[return-value]

    def note(self) -> Static:
        """The screen's one-line message (errors, empty states), hidden while empty."""
        return self.query_one(".note", Static)

    def say(self, text: str, *, error: bool = False) -> None:
        note = self.note()
        note.update(text)
        note.set_class(not text, "-empty")
        note.set_class(error, "-error")

    def show_state(self, state: ConsoleState) -> None:
        """Redraw from the app's poll; screens that show status, positions or orders override it."""

    async def load(self) -> None:
        """Fetch this screen's own data; screens with RPCs of their own override it."""

    def default_focus(self) -> Widget | None:
        """Where the focus goes when the screen is shown (its main table), so that its keys work at once."""
        focusable = [w for w in self.query("*") if w.focusable and w.display]
        return focusable[0] if focusable else None

    # -- calls -------------------------------------------------------------------------------------------
    async def call(self, method: str, request: Message, *, timeout: float = 10.0) -> Any | None:
        """The daemon's answer, or None after a notification saying why not (for the operator's actions)."""
        try:
            return await self.console.source.call(method, request, timeout=timeout)
        except SourceError as exc:
            self.notify(exc.explain(), severity="error", timeout=8)
            return None

    async def fetch(self, *requests: tuple[str, Message]) -> list[Any | None]:
        """The answers of the screen's reads, in order (None for a failed one). Failures go to the screen's note
        rather than to notifications: a LIVE screen reads every second and must not pile them up."""
        answers: list[Any | None] = []
        errors: list[str] = []
        for method, request in requests:
            try:
                answers.append(await self.console.source.call(method, request, timeout=10.0))
            except SourceError as exc:
                answers.append(None)
                errors.append(exc.explain())
        if errors:
            self._last_error = "; ".join(errors)
            self.say(self._last_error, error=True)
        elif self._last_error:
            self._last_error = ""
            self.say("")
        return answers

    async def confirm(
        self,
        title: str,
        question: str,
        *,
        reason: str,
        require_reason: bool = False,
        danger: bool = False,
        confirm_label: str = "Yes",
    ) -> str | None:
        """Ask the operator (only from a worker); the reason the call will carry, or None for no."""
        screen = ConfirmScreen(
            title, question, reason=reason, require_reason=require_reason, danger=danger, confirm_label=confirm_label
        )
        return await self.app.push_screen_wait(screen)

    async def act(
        self,
        method: str,
        build: Callable[[str, str], Message],
        *,
        title: str,
        question: str,
        reason: str,
        done: str,
        require_reason: bool = False,
        danger: bool = False,
        timeout: float = 30.0,
    ) -> Any | None:
        """Confirm, then call: `build(reason, actor)` makes the request. Refreshes the console afterwards."""
        given = await self.confirm(title, question, reason=reason, require_reason=require_reason, danger=danger)
        if given is None:
            return None
        response = await self.call(method, build(given, self.console.actor), timeout=timeout)
        if response is not None:
            self.notify(done)
            await self.console.poll_once()
            await self.load()
        return response

    async def set_execution(self, approved: bool) -> Any | None:
        """Approve or revoke execution as a whole (the gate every order passes, in either approval mode)."""
        if approved:
            title, question = "Approve execution", "Let orders that risk approves reach the broker?"
        else:
            title, question = "Revoke execution", "Stop every order from reaching the broker (risk rejects them all)?"
        return await self.act(
            "SetExecutionApproval",
            lambda reason, actor: api.SetExecutionApprovalRequest(approved=approved, reason=reason, actor=actor),
            title=title,
            question=question,
            reason=f"{title.lower()} from the console",
            done="execution approved" if approved else "execution revoked",
            danger=not approved,
        )
