"""What the console knows about the daemon between polls, shared by every screen."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

#: Rejected intents and risk events kept for the Orders screen (newest first).
REJECTED_KEPT = 500


@dataclass
class ConsoleState:
    """The latest poll (GetDashboard, or GetStatus where the daemon has no dashboard) and the event stream."""

    connected: bool = False
    #: Why the daemon answers but refuses (a bad token), shown instead of the status line.
    problem: str = ""
    dashboard: api.GetDashboardResponse = field(default_factory=api.GetDashboardResponse)
    #: False once the daemon answered GetDashboard with UNIMPLEMENTED: poll GetStatus instead.
    dashboard_supported: bool = True
    positions: list[pb.PositionSnapshot] = field(default_factory=list)
    orders: list[pb.Order] = field(default_factory=list)
    #: Risk decisions that rejected an intent, and risk events, from WatchEvents (newest first).
    rejected: deque[pb.Event] = field(default_factory=lambda: deque(maxlen=REJECTED_KEPT))
    #: The same as the daemon keeps them (ListRejections, newest first): what happened before the console came.
    listed_rejections: list[pb.Event] = field(default_factory=list)
    #: False once the daemon answered ListRejections with UNIMPLEMENTED: show what WatchEvents brought.
    rejections_supported: bool = True

    @property
    def status(self) -> api.GetStatusResponse | None:
        return self.dashboard.status if self.connected and self.dashboard.HasField("status") else None

    @property
    def market_time_ns(self) -> int:
        """The newest bar time; without the dashboard, the market-data engine's progress stands in for it."""
        if self.dashboard.market_time_ns:
            return self.dashboard.market_time_ns
        engines = self.dashboard.status.engines
        times = [e.through_time_ns for e in engines if e.engine == "market_data"] or [
            e.through_time_ns for e in engines
        ]
        return max(times, default=0)
