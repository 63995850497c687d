"""Retries only for what is worth retrying, with capped exponential backoff; the circuit breaker's states."""

from __future__ import annotations

import json

import pytest
import requests
from alpaca.common.exceptions import APIError

from utp.core.broker import BrokerError
from utp.core.config import BrokerConfig
from utp.core.vendors.resilience import (
    BrokerUnavailableError,
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    call_with_retry,
    describe_error,
    is_retryable,
)


def api_error(status: int, message: str = "nope") -> APIError:
    """alpaca-py's error exactly as its RESTClient raises it: from requests' HTTPError on the response."""
    response = requests.Response()
    response.status_code = status
    body = json.dumps({"code": status * 100000, "message": message})
    return APIError(body, requests.HTTPError(f"{status} error", response=response))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_rate_limits_and_server_errors_are_retryable(status: int) -> None:
    assert is_retryable(api_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_refusals_on_the_merits_are_not_retryable(status: int) -> None:
    assert not is_retryable(api_error(status))


def test_timeouts_and_broken_connections_are_retryable_other_errors_not() -> None:
    assert is_retryable(requests.ReadTimeout("slow"))
    assert is_retryable(requests.ConnectTimeout("slow"))
    assert is_retryable(requests.ConnectionError("reset"))
    assert not is_retryable(ValueError("bad request built"))
    assert not is_retryable(CircuitOpenError("open"))


def test_backoff_doubles_up_to_the_cap_and_comes_from_config() -> None:
    policy = RetryPolicy.from_config(BrokerConfig(retries=5, backoff_s=0.5, backoff_max_s=3.0))
    assert policy == RetryPolicy(5, 0.5, 3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(-1, 0.1, 1.0)


def test_retries_a_retryable_failure_then_succeeds_with_backoff() -> None:
    sleeps: list[float] = []
    outcomes = [api_error(503), requests.ReadTimeout("slow"), "ok"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call_with_retry(flaky, RetryPolicy(3, 0.25, 8.0), sleep=sleeps.append) == "ok"
    assert sleeps == [0.25, 0.5]


def test_a_refusal_is_raised_at_once_without_retry() -> None:
    calls, sleeps = [], []

    def refused() -> None:
        calls.append(1)
        raise api_error(422, "qty must be > 0")

    with pytest.raises(APIError):
        call_with_retry(refused, RetryPolicy(3, 0.1, 1.0), sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == []


def test_exhausted_retries_raise_broker_unavailable_naming_the_last_error() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise api_error(500, "internal server error")

    with pytest.raises(BrokerUnavailableError, match=r"submit x failed after 3 attempts: HTTP 500") as info:
        call_with_retry(down, RetryPolicy(2, 0.0, 0.0), sleep=lambda _: None, describe="submit x")
    assert isinstance(info.value, BrokerError) and len(calls) == 3
    assert describe_error(api_error(500, "internal")).startswith("HTTP 500")


def test_breaker_opens_after_failures_within_the_window_only() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 60.0, 30.0, clock)
    breaker.record_failure()
    clock.now += 61  # the first failure leaves the window
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_success()  # successes between failures do not forgive them
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_in() == pytest.approx(30.0)


def test_breaker_half_open_lets_one_trial_through_success_closes_failure_reopens() -> None:
    clock = Clock()
    seen: list[tuple[str, str]] = []
    breaker = CircuitBreaker(2, 60.0, 30.0, clock)
    breaker.listeners.append(lambda old, new: seen.append((old, new)))
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 29.9
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial only
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 30
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
                    ("half_open", "closed")]  # fmt: skip
    assert breaker.transitions == seen


def test_a_failing_listener_does_not_break_the_breaker() -> None:
    breaker = CircuitBreaker(1, 60.0, 30.0, Clock())

    def broken(_old: str, _new: str) -> None:
        raise RuntimeError("alert sink down")

    breaker.listeners.append(broken)
    breaker.record_failure()
    assert breaker.state == "open"


def test_open_circuit_raises_without_calling_and_failures_open_it_mid_retry() -> None:
    clock = Clock()
    breaker = CircuitBreaker.from_config(BrokerConfig(breaker_failures=2, breaker_window_s=60, breaker_cooldown_s=30),
                                         clock)  # fmt: skip
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise api_error(503)

    with pytest.raises(CircuitOpenError, match="circuit breaker is open"):
        call_with_retry(down, RetryPolicy(5, 0.0, 0.0), breaker, sleep=lambda _: None)
    assert len(calls) == 2  # the breaker stopped the retries once open
    with pytest.raises(CircuitOpenError):
        call_with_retry(lambda: calls.append(1), RetryPolicy(5, 0.0, 0.0), breaker, sleep=lambda _: None)
    assert len(calls) == 2
    clock.now += 30
    assert call_with_retry(lambda: "back", RetryPolicy(0, 0.0, 0.0), breaker) == "back"
    assert breaker.state == "closed"


def test_a_refusal_counts_as_the_broker_answering() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 60.0, 0.0, clock)
    breaker.record_failure()
    assert breaker.state == "half_open"  # no cooldown

    def refused() -> None:
        raise api_error(403, "forbidden")

    with pytest.raises(APIError):
        call_with_retry(refused, RetryPolicy(0, 0.0, 0.0), breaker)
    assert breaker.state == "closed"


def test_breaker_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failures >= 1"):
        CircuitBreaker(0, 60.0, 30.0)
