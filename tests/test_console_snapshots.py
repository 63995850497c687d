"""Layout snapshots of every console screen, in the smallest terminal it supports (80x24) and a large one
(120x40), on the canned daemon state of utp.console.fixtures (the behaviour tests in test_console.py use a
real daemon). A changed layout fails until it is reviewed and accepted with `pytest --snapshot-update`; the
SVGs live in tests/__snapshots__/test_console_snapshots/."""

from __future__ import annotations

import pytest
from textual.pilot import Pilot

from utp.console.app import VIEWS
from utp.console.screenshots import EXTRAS, canned_app, stage

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("view", [v.NAME for v in VIEWS])
def test_screen_layout(snap_compare, view: str, size: str) -> None:  # noqa: ANN001
    app = canned_app()

    async def show(pilot: Pilot) -> None:
        await stage(app, pilot, view)

    assert snap_compare(app, terminal_size=SIZES[size], run_before=show)


@pytest.mark.parametrize(("name", "view", "extra"), EXTRAS, ids=[name for name, _, _ in EXTRAS])
def test_dialog_and_tab_layout(snap_compare, name: str, view: str, extra: str) -> None:  # noqa: ANN001
    app = canned_app()

    async def show(pilot: Pilot) -> None:
        await stage(app, pilot, view, extra)

    assert snap_compare(app, terminal_size=SIZES["80x24"], run_before=show)
