"""The triple safety gate: endpoint (paper, or live only when explicitly enabled), dry run, operator approval."""

from __future__ import annotations

import pytest

from utp.core.config import BrokerConfig
from utp.core.safety import DRY_RUN, NOT_APPROVED, LiveTradingRefused, SafetyGate


def test_paper_broker_uses_the_paper_endpoint_and_obeys_approval_each_time() -> None:
    approved = [False]
    gate = SafetyGate(BrokerConfig(name="alpaca-paper"), lambda: approved[0])
    assert gate.endpoint() == "https://paper-api.alpaca.markets" and not gate.live
    assert gate.check_submit() == NOT_APPROVED == "execution is not approved by the operator"
    approved[0] = True
    assert gate.check_submit() is None
    approved[0] = False  # a revocation takes effect on the next order
    assert gate.check_submit() == NOT_APPROVED


def test_live_broker_without_live_enabled_is_refused_at_construction() -> None:
    with pytest.raises(LiveTradingRefused, match="live_enabled"):
        SafetyGate(BrokerConfig(name="alpaca-live"), lambda: True)


def test_live_broker_with_live_enabled_uses_the_live_endpoint_and_still_needs_approval() -> None:
    gate = SafetyGate(BrokerConfig(name="alpaca-live", live_enabled=True), lambda: False)
    assert gate.endpoint() == "https://api.alpaca.markets" and gate.live
    assert gate.check_submit() == NOT_APPROVED


def test_paper_broker_pointed_at_the_live_url_is_refused() -> None:
    config = BrokerConfig(name="alpaca-paper", paper_url="https://api.alpaca.markets/")
    with pytest.raises(LiveTradingRefused, match="live endpoint"):
        SafetyGate(config, lambda: True)


def test_dry_run_sends_nothing_even_when_approved_and_live_enabled() -> None:
    gate = SafetyGate(BrokerConfig(name="alpaca-live", live_enabled=True, dry_run=True), lambda: True)
    assert gate.check_submit() == DRY_RUN == "dry run: not sent to the broker"


def test_an_approval_that_cannot_be_read_is_no_approval() -> None:
    def broken() -> bool:
        raise OSError("LMDB unreadable")

    reason = SafetyGate(BrokerConfig(name="alpaca-paper"), broken).check_submit()
    assert reason is not None and reason.startswith(NOT_APPROVED) and "LMDB unreadable" in reason


def test_a_broker_that_is_not_alpaca_is_refused() -> None:
    with pytest.raises(LiveTradingRefused, match="not an Alpaca broker"):
        SafetyGate(BrokerConfig(name="simulated"), lambda: True)
