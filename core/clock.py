"""Clocks: the only way engines learn the time.

Decisions never depend on the clock: they depend on event times carried by the data. The clock is for
pacing a replay, timestamps on operational messages (status) and timers. A backtest uses a
SimulatedClock that the data drives; a live or paper session uses the WallClock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from utp.core.batch import NOTHING


class Clock(Protocol):
    def now_ns(self) -> int:
        """Current time in ns since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait; returns at once on a simulated clock."""
        ...

    def observe(self, data_time_ns: int) -> None:
        """Told the time of the newest data; a simulated clock moves to it, the wall clock ignores it."""
        ...

    @property
    def simulated(self) -> bool: ...


class WallClock:
    """Real time, for live and paper sessions."""

    simulated = False

    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def observe(self, data_time_ns: int) -> None:
        pass


class SimulatedClock:
    """Time as far as the data has gone: the market-data source advances it to each batch's last bar."""

    simulated = True

    def __init__(self, start_ns: int = NOTHING) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def observe(self, data_time_ns: int) -> None:
        # Time never runs backwards, even if a source replays an older batch after a restart.
        if data_time_ns > self._now:
            self._now = data_time_ns

    async def sleep(self, seconds: float) -> None:
        # Yield so other tasks run, but no real waiting: a backtest runs as fast as it can.
        await asyncio.sleep(0)
