"""The triple safety gate in front of real money.

Nothing is sent to a broker unless all three hold:

1. the endpoint is the paper one, or live trading was switched on by its own explicit setting
   (`broker.live_enabled`): naming the live broker is not enough, so one mistyped word cannot trade real money;
2. `broker.dry_run` is off (a dry run decides and logs every order and sends none);
3. the operator has approved execution (the persisted control state, read on every order so a revocation
   takes effect at once).

Cancels never go through the gate: reducing risk must never be blocked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from utp.core.broker import BrokerError
from utp.core.config import BrokerConfig

log = logging.getLogger(__name__)

PAPER, LIVE = "alpaca-paper", "alpaca-live"
NOT_APPROVED = "execution is not approved by the operator"
DRY_RUN = "dry run: not sent to the broker"


class LiveTradingRefused(BrokerError):
    """The configuration would reach a real-money endpoint without live trading explicitly enabled."""


def _same_endpoint(a: str, b: str) -> bool:
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


class SafetyGate:
    """Decides, for every order placed or replaced, whether it may go out; `approval` is read each time."""

    def __init__(self, config: BrokerConfig, approval: Callable[[], bool]) -> None:
        self.config = config
        self.approval = approval
        self._endpoint = self._choose_endpoint()
        if config.dry_run:
            log.warning("%s: dry run, orders are decided and logged but never sent", config.name)

    def _choose_endpoint(self) -> str:
        c = self.config
        if c.name == LIVE:
            if not c.live_enabled:
                raise LiveTradingRefused(
                    f"broker {LIVE!r} trades real money and needs the separate setting broker.live_enabled: true; "
                    "it is off, so nothing is sent")  # fmt: skip
            if not c.live_url:
                raise LiveTradingRefused("broker.live_url is empty")
            log.warning("LIVE TRADING ENABLED: orders go to %s (real money)", c.live_url)
            return c.live_url
        if c.name == PAPER:
            if not c.paper_url:
                raise LiveTradingRefused("broker.paper_url is empty")
            if _same_endpoint(c.paper_url, c.live_url):
                raise LiveTradingRefused(
                    f"broker {PAPER!r} is configured with the live endpoint {c.paper_url}; a paper broker never "
                    f"trades real money (use {LIVE!r} with broker.live_enabled for that)")  # fmt: skip
            return c.paper_url
        raise LiveTradingRefused(f"broker {c.name!r} is not an Alpaca broker (expected {PAPER!r} or {LIVE!r})")

    @property
    def live(self) -> bool:
        return self.config.name == LIVE

    def endpoint(self) -> str:
        """The REST endpoint orders go to (checked once, at construction)."""
        return self._endpoint

    def check_submit(self) -> str | None:
        """None when an order may be placed or replaced now, else the reason it may not."""
        if self.config.dry_run:
            return DRY_RUN
        try:
            approved = bool(self.approval())
        except Exception as exc:  # an unreadable approval is no approval
            log.exception("reading the execution approval failed")
            return f"{NOT_APPROVED} (the approval could not be read: {exc})"
        return None if approved else NOT_APPROVED
