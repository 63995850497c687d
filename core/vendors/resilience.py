"""Retries and a circuit breaker for calls to a remote broker.

A broker that is briefly overloaded (HTTP 429, 5xx, a timeout, a dropped connection) is worth asking again
after a pause; one that refused a request on its merits (any other 4xx) will refuse it again, so that is
never retried. When failures pile up, the circuit breaker stops sending anything for a while: hammering a
struggling broker makes things worse, and the engine must learn at once that orders cannot go out instead
of waiting on timeouts one after another.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests

from utp.core.broker import BrokerError
from utp.core.config import BrokerConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class BrokerUnavailableError(BrokerError):
    """The broker could not be reached or kept failing; whether the request took effect may be unknown."""


class CircuitOpenError(BrokerUnavailableError):
    """The circuit breaker is open: the request was not sent at all."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retries` more attempts after the first, waiting backoff_s, 2 x backoff_s, ... capped at backoff_max_s."""

    retries: int = 3
    backoff_s: float = 0.25
    backoff_max_s: float = 8.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"retry policy needs retries, backoff_s and backoff_max_s >= 0, not {self}")

    @classmethod
    def from_config(cls, config: BrokerConfig) -> RetryPolicy:
        return cls(config.retries, config.backoff_s, config.backoff_max_s)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 = the first)."""
        return min(self.backoff_s * 2.0 ** (attempt - 1), self.backoff_max_s)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed request, if the error carries one (alpaca-py's APIError, requests' HTTPError)."""
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Worth asking again: rate limits, server errors, timeouts and broken connections. Refusals on the request's
    merits (400, 401, 403, 404, 422, ...) are not: the same request would be refused again."""
    if isinstance(exc, CircuitOpenError):
        return False
    if isinstance(exc, (requests.Timeout, requests.ConnectionError, TimeoutError, ConnectionError)):
        return True
    status = http_status(exc)
    if status is not None:
        return status == 429 or 500 <= status <= 599
    return False


class CircuitBreaker:
    """closed -> open after `failures` failures within `window_s`; open refuses everything for `cooldown_s`;
    then half-open lets one trial call through: its success closes the circuit, its failure re-opens it.

    `listeners` are called with (old state, new state) on every transition (the daemon raises an alert).
    Not thread-safe by itself: one engine thread drives it.
    """

    def __init__(self, failures: int, window_s: float, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic, name: str = "broker") -> None:  # fmt: skip
        if failures < 1 or window_s <= 0 or cooldown_s < 0:
            raise ValueError("circuit breaker needs failures >= 1, window_s > 0 and cooldown_s >= 0")
        self.failures, self.window_s, self.cooldown_s = failures, window_s, cooldown_s
        self.clock = clock
        self.name = name
        self.listeners: list[Callable[[str, str], None]] = []
        #: Called on every failure the breaker counts (metrics of broker errors).
        self.failure_listeners: list[Callable[[], None]] = []
        self.transitions: list[tuple[str, str]] = []
        self._state = CLOSED
        self._recent: deque[float] = deque()
        self._opened_at = 0.0
        self._trial_out = False

    @classmethod
    def from_config(cls, config: BrokerConfig, clock: Callable[[], float] = time.monotonic,
                    name: str = "broker") -> CircuitBreaker:  # fmt: skip
        return cls(config.breaker_failures, config.breaker_window_s, config.breaker_cooldown_s, clock, name)

    @property
    def state(self) -> str:
        """The state now (an open circuit whose cooldown has passed reads half-open)."""
        if self._state == OPEN and self.clock() - self._opened_at >= self.cooldown_s:
            self._move(HALF_OPEN)
            self._trial_out = False
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one trial call until its outcome is recorded."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial_out:
            self._trial_out = True
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until the open circuit lets a trial call through (0 when not open)."""
        if self.state != OPEN:
            return 0.0
        return max(self.cooldown_s - (self.clock() - self._opened_at), 0.0)

    def record_success(self) -> None:
        """A call went through. Closes a half-open circuit; in a closed one, earlier failures still count
        (failures within the window open it, however many calls succeeded between them)."""
        self._trial_out = False
        if self.state != CLOSED:
            self._recent.clear()
            self._move(CLOSED)

    def record_failure(self) -> None:
        for listener in self.failure_listeners:
            listener()
        now = self.clock()
        state = self.state
        if state == HALF_OPEN:
            self._open(now)
            return
        if state == OPEN:
            return
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.failures:
            self._open(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._recent.clear()
        self._trial_out = False
        self._move(OPEN)

    def _move(self, new: str) -> None:
        old, self._state = self._state, new
        if old == new:
            return
        self.transitions.append((old, new))
        if new == OPEN:
            log.warning("%s circuit breaker open: %d failures within %gs; nothing is sent for %gs",
                        self.name, self.failures, self.window_s, self.cooldown_s)  # fmt: skip
        else:
            log.info("%s circuit breaker %s -> %s", self.name, old, new)
        for listener in list(self.listeners):
            try:
                listener(old, new)
            except Exception:  # an alerting hook must never break order flow
                log.exception("circuit breaker listener failed")


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, breaker: CircuitBreaker | None = None, *,
                    sleep: Callable[[float], None] = time.sleep, describe: str = "broker request",
                    on_retry: Callable[[int, BaseException], None] | None = None) -> T:  # fmt: skip
    """Call `fn` until it succeeds, a non-retryable error comes (raised as is) or the retries run out
    (BrokerUnavailableError from the last error). With `breaker`, nothing is sent while it is open
    (CircuitOpenError) and every retryable failure counts towards opening it; refusals on the merits do not,
    since they say nothing about the broker's health. `on_retry(attempt, error)` runs before each retry.
    """
    attempt = 0
    while True:
        if breaker is not None and not breaker.allow():
            raise CircuitOpenError(f"{describe}: the {breaker.name} circuit breaker is open after repeated failures; "
                                   f"not sent (next trial in {breaker.retry_in():.1f}s)")  # fmt: skip
        attempt += 1
        try:
            result = fn()
        except Exception as exc:
            if not is_retryable(exc):
                if breaker is not None:
                    breaker.record_success()  # the broker answered: it is up, even if it said no
                raise
            if breaker is not None:
                breaker.record_failure()
            if attempt > policy.retries:
                raise BrokerUnavailableError(
                    f"{describe} failed after {attempt} attempts: {describe_error(exc)}") from exc
            log.warning("%s failed (attempt %d of %d), retrying: %s", describe, attempt, policy.retries + 1,
                        describe_error(exc))  # fmt: skip
            if on_retry is not None:
                on_retry(attempt, exc)
            sleep(policy.delay(attempt))
            continue
        if breaker is not None:
            breaker.record_success()
        return result


def describe_error(exc: BaseException) -> str:
    """A one-line account of a failed request: its HTTP status and the broker's message when there is one."""
    status = http_status(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"HTTP {status}: {text}" if status is not None else f"{type(exc).__name__}: {text}"
