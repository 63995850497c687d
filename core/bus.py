"""The bus: one interface, two implementations.

`InProcessBus` (here) is the embedded default and what backtests use: deterministic, ordered, no copies.
`JetStreamBus` (`utp.core.jetstream`) runs the same engines over a NATS JetStream server, where they can
live in separate processes. Both deliver batches of one kind, in publish order, to durable subscribers;
a subscriber's handler returning means its state change is committed, which is when JetStream acks.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from utp.core.batch import Batch

if TYPE_CHECKING:
    from utp.core.runtime import DeadLetter
from utp.core.kinds import KINDS

log = logging.getLogger(__name__)

BatchHandler = Callable[[Batch], Awaitable[None]]
#: Receives the events of one published batch in wire form, for watchers (the daemon's WatchEvents).
TapHandler = Callable[[str, list[Message]], Awaitable[None]]
#: Decides per kind whether a tap wants it, so nobody encodes bars that nobody watches.
KindFilter = Callable[[str], bool]


class Subscription(ABC):
    @abstractmethod
    async def close(self) -> None: ...

    def committed(self, position: int) -> None:  # noqa: B027 - only a bus that acks needs it
        """The subscriber has committed the effects of every batch through `position` (its last batch's position,
        `Batch.position`): what the bus delivered up to there may be acked now, and nothing later."""

    async def refresh(self) -> None:  # noqa: B027 - only a tap on a bus that filters at the source needs it
        """A tap's `KindFilter` may answer otherwise now (a watcher came or went): take what it wants from now on."""


class Bus(ABC):
    """Publish batches; deliver them per kind to durable subscribers and to taps."""

    #: Whether batches outlive their delivery, so that a subscriber can be given them again from a position.
    durable: bool = False

    name: str

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Dead letters this process kept in memory (a durable bus keeps them on the server instead)."""
        if not hasattr(self, "_dead_letters"):
            self._dead_letters: list[DeadLetter] = []
        return self._dead_letters

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections and create server-side resources (idempotent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop deliveries and release connections."""

    @abstractmethod
    async def publish(self, batch: Batch) -> None:
        """Publish a batch; returns once the bus holds it durably (JetStream acked every message)."""

    @abstractmethod
    async def subscribe(
        self, kind: str, consumer: str, handler: BatchHandler, *, resume_after: int | None = None,
        partition: str | None = None,
    ) -> Subscription:
        """Deliver every batch of `kind` to `handler`, in order, one at a time.

        `consumer` names the durable subscription. `resume_after` is the position of the last batch whose
        effects the subscriber has committed (None = from the start of the session; `Subscription.committed` says
        so while it runs, and a bus that acks acks nothing before); the bus delivers
        from the next one, so nothing is lost or applied twice across a restart. `partition`: only the batches
        published for that partition (`Batch.partition`: a producer that splits its rows by symbol partition), so
        that a process running one partition of an engine never receives the others' rows.
        """

    @abstractmethod
    async def tap(self, handler: TapHandler, wants: KindFilter) -> Subscription:
        """Best-effort, non-durable view of the published events of the kinds `wants`, for watchers. A bus may ask
        `wants` only when the tap starts and when it is refreshed (`Subscription.refresh`)."""

    async def record_applied(self, engine: str, kind: str, event_ids: list[str], through_ns: int) -> None:  # noqa: B027
        """Record durably that `engine` applied these commands after its step through `through_ns`, for a
        replay of the session (a bus that keeps nothing has nothing to replay, and skips it)."""

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Keep rows an engine kept failing on, with the error, until an operator replays or drops them; returns
        once they are durable. A bus that keeps nothing keeps them in memory (`dead_letters`)."""
        log.error("dead letters: %d %s row(s) %s failed on %d times: %s", letter.frame.height, letter.kind,
                  letter.engine, letter.deliveries, letter.error)  # fmt: skip
        self.dead_letters.append(letter)

    def listened(self, kind: str) -> bool:  # noqa: ARG002 - a bus that cannot tell says yes
        """Whether a batch of `kind` published now could reach anyone: a publisher of optional events (engine
        status) skips building them when it could not. Durable buses keep batches for consumers to come."""
        return True


@dataclass(eq=False)
class _InProcessSubscription(Subscription):
    bus: InProcessBus
    kind: str | None
    handler: BatchHandler | None = None
    partition: str | None = None
    tap_handler: TapHandler | None = None
    wants: KindFilter | None = None
    closed: bool = field(default=False)

    async def close(self) -> None:
        self.closed = True
        self.bus._remove(self)


class InProcessBus(Bus):
    """Deterministic in-process bus: batches are delivered breadth-first in publish order.

    `publish` enqueues; the outermost publisher runs the delivery loop until the queue is empty, so when
    it returns every consequence of its batch (and of anything published meanwhile) has been handled.
    Frames are passed by reference: a handler must not modify a frame it receives.
    """

    name = "in_process"

    def __init__(self) -> None:
        self._subscriptions: list[_InProcessSubscription] = []
        self._queue: deque[Batch] = deque()
        self._delivering = False

    async def publish(self, batch: Batch) -> None:
        if batch.kind not in KINDS:
            raise ValueError(f"unknown event kind {batch.kind!r}")
        self._queue.append(batch)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                await self._deliver(self._queue.popleft())
        finally:
            self._delivering = False

    async def _deliver(self, batch: Batch) -> None:
        messages: list[Message] | None = None
        for sub in list(self._subscriptions):
            if sub.closed:
                continue
            if sub.handler is not None and sub.kind == batch.kind:
                if sub.partition is None or sub.partition == batch.partition:
                    await sub.handler(batch)
            elif sub.tap_handler is not None and batch.frame.height and sub.wants and sub.wants(batch.kind):
                if messages is None:
                    messages = KINDS[batch.kind].to_messages(batch.frame)
                try:
                    await sub.tap_handler(batch.kind, messages)
                except Exception:  # a watcher must never break the engines
                    log.exception("tap handler failed on %s", batch.kind)

    async def subscribe(
        self, kind: str, consumer: str, handler: BatchHandler, *, resume_after: int | None = None,
        partition: str | None = None,
    ) -> Subscription:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        sub = _InProcessSubscription(self, kind, handler=handler, partition=partition)
        self._subscriptions.append(sub)
        return sub

    async def tap(self, handler: TapHandler, wants: KindFilter) -> Subscription:
        sub = _InProcessSubscription(self, None, tap_handler=handler, wants=wants)
        self._subscriptions.append(sub)
        return sub

    def listened(self, kind: str) -> bool:
        return any(
            not sub.closed and (sub.kind == kind if sub.handler is not None else sub.wants is not None and sub.wants(kind))
            for sub in self._subscriptions
        )

    def _remove(self, sub: _InProcessSubscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    @property
    def idle(self) -> bool:
        return not self._delivering and not self._queue
