"""Screenshots of every console screen on canned data, for the docs:

    python -m utp.console.screenshots docs/console

writes one SVG per screen (and the help and a confirmation dialog) at 120x40. `stage` puts the app in the
state a screenshot (or a layout snapshot test) shows: a screen with its data loaded and, for the research
screens, the canned run finished.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input, Select

from utp.console.app import VIEWS, ConsoleApp
from utp.console.fixtures import canned_source

SIZE = (120, 40)
#: Extra states beyond "each screen as it opens": (name, screen, what to do there).
EXTRAS = (
    ("orders-rejected", "orders", "rejected"),
    ("models-retrain", "models", "retrain"),
    ("help", "dashboard", "help"),
    ("confirm-halt", "admin", "halt"),
)


def canned_app() -> ConsoleApp:
    return ConsoleApp(source=canned_source(), actor="console:ann")


async def stage(app: ConsoleApp, pilot: Pilot, view: str, extra: str = "") -> None:
    """Show `view` with its data loaded; `extra` goes one step further (see EXTRAS)."""
    await app.poll_once()
    await app.show_view(view).wait()
    screen = app.views[view]
    if view == "backtests":  # the form filled in and run
        screen.query_one("#bt-dataset", Select).value = "sp500"
        screen.query_one("#bt-compare", Input).value = "portfolio.method=equal,hrp"
        await screen.run_backtest(screen.request()).wait()  # type: ignore[attr-defined]
    if extra == "rejected":
        await screen.select_tab("rejected").wait()  # type: ignore[attr-defined]
    elif extra == "retrain":
        from utp.console.screens.models import RetrainChoice

        choice = RetrainChoice("lgbm", ["train.folds=2"], False, "nightly by hand")
        await screen.retrain(choice).wait()  # type: ignore[attr-defined]
    elif extra == "help":
        app.action_help()
    elif extra == "halt":
        app.action_halt()
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


async def shoot(folder: Path, name: str, view: str, extra: str = "", size: tuple[int, int] = SIZE) -> Path:
    app = canned_app()
    async with app.run_test(size=size) as pilot:
        await stage(app, pilot, view, extra)
        app.save_screenshot(f"{name}.svg", str(folder))
    return folder / f"{name}.svg"


async def shoot_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    shots = [(f"{i}-{view.NAME}", view.NAME, "") for i, view in enumerate(VIEWS, 1)]
    shots += [(name, view, extra) for name, view, extra in EXTRAS]
    return [await shoot(folder, *shot) for shot in shots]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utp.console.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the SVGs go, e.g. docs/console")
    args = parser.parse_args(argv)
    for path in asyncio.run(shoot_all(args.folder)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
