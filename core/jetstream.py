"""The bus on NATS JetStream, for sessions whose engines may live in other processes or machines.

Wire format: a batch of a watermarked kind is one columnar protobuf message (`EventBatch`, `utp.core.wire`)
on `<root>.<kind>._batch`, or several parts in order when it is too large for one; the last part carries
the `Watermark`, which counts the rows of every part. Each part has a `Nats-Msg-Id` made of the batch's
producer, kind, watermark, row count, last event id and the part's index, so the server drops a
re-published part (after a crash) within the stream's duplicate window. Subscribers join the parts, check
the count, and hand the batch over as one frame. Events of the kinds without watermarks (commands,
status, alerts) are one protobuf message each on `<root>.<kind>.<symbol>`, with their event id as
`Nats-Msg-Id`.

Delivery: one stream (`UTP` by default) holds every subject under the root. Each engine input is a
durable pull consumer filtered on its kind, created idempotently. The engine commits the stream sequence
of the last batch it has applied together with its state (hot state in LMDB); the consumer is acked
(AckPolicy.ALL) only after that commit, and on start a consumer is reused only if it stands exactly at
the committed position, otherwise re-created there. So a crash anywhere loses nothing and applies
nothing twice.

In process: a batch published through this bus goes at once to this bus's own consumers of its kind as well
(`_LocalBatch`), after it is sent and before the server has acked it. Its `Batch.stored` resolves with the acks;
the runner commits nothing before. A consumer takes it only if it has applied the producer's batch before it, and
skips the stored copy when it comes (by batch id, undecoded), telling its engine the position may move past it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import nats
import nats.errors
import nats.js.errors
import polars as pl
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from utp.core import wire
from utp.core.batch import END, Batch, not_yet_taken
from utp.core.bus import BatchHandler, Bus, KindFilter, Subscription, TapHandler
from utp.core.kinds import KINDS, TIME, Kind
from utp.core.runtime import DeadLetter
from utp.core.subjects import Subjects, is_batch_token
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

#: Called with (subject, payload, reason) for a message that cannot be used; it is skipped, never retried.
QuarantineHandler = Callable[[str, bytes, str], None]


def _log_quarantine(subject: str, payload: bytes, reason: str) -> None:
    log.error("quarantined message on %s (%d bytes): %s", subject, len(payload), reason)


class _DecodedParts:
    """The last batch parts decoded, by stream sequence, shared by the consumers of one bus: the engines of a
    process that consume one kind (five take the bars) decode each part once instead of once each. Frames are
    immutable, so sharing them is safe."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._parts: OrderedDict[int, tuple[bytes, tuple[int, pl.DataFrame, pb.Watermark | None]]] = OrderedDict()

    def get(self, sequence: int, data: bytes) -> tuple[int, pl.DataFrame, pb.Watermark | None]:
        """(kind number, rows, watermark or None) of the part stored at `sequence`; DecodeError or ValueError."""
        known = self._parts.get(sequence)
        # The same bytes too: a stream created again (its store lost) numbers its messages from 1 again.
        if known is not None and known[0] == data:
            return known[1]
        part = pb.EventBatch.FromString(data)
        decoded = (part.kind, wire.to_frame(part), part.watermark if part.HasField("watermark") else None)
        self._parts[sequence] = (data, decoded)
        while len(self._parts) > self.keep:
            self._parts.popitem(last=False)
        return decoded


class _BatchAssembler:
    """Rebuilds batches of one kind from the messages of a consumer, in stream order."""

    def __init__(self, kind: Kind, subjects: Subjects, quarantine: QuarantineHandler,
                 decoded: _DecodedParts | None = None) -> None:  # fmt: skip
        self.kind = kind
        self.subjects = subjects
        self.quarantine = quarantine
        self.decoded = decoded if decoded is not None else _DecodedParts()
        # Parts of the batch in progress, per subject, with the stream sequence of its first: partitions of one
        # engine publish at once, each on its own subject, so their parts interleave in the stream.
        self.parts: dict[str, tuple[int, list[pl.DataFrame]]] = {}

    def safe_position(self, sequence: int) -> int:
        """The position a consumer may commit having applied everything up to `sequence` but the batches still in
        progress: just before the first part of the oldest (a restart there delivers its parts again)."""
        return min([sequence, *(first - 1 for first, _ in self.parts.values())])

    def drop(self, subject: str) -> None:
        """Forget the parts in progress on `subject` (their batch was handed over in process)."""
        self.parts.pop(subject, None)

    def add(self, msg: Msg) -> Batch | None:
        position = msg.metadata.sequence.stream
        try:
            kind_name, symbol = self.subjects.parse(msg.subject)
        except ValueError as exc:
            self.quarantine(msg.subject, msg.data, str(exc))
            return None
        if kind_name != self.kind.name:
            self.quarantine(msg.subject, msg.data, f"expected kind {self.kind.name}")
            return None
        if symbol is None:
            return self._part(msg, position) if self.kind.watermarked else self._refuse(msg, "a batch of a kind without")
        if self.kind.watermarked:
            return self._refuse(msg, "a single event of a kind with")
        try:
            event = self.kind.message.FromString(msg.data)
        except DecodeError as exc:
            self.quarantine(msg.subject, msg.data, f"not a {self.kind.message.DESCRIPTOR.name}: {exc}")
            return None
        return Batch(self.kind.name, "", self.kind.to_frame([event]), None, position)

    def _refuse(self, msg: Msg, what: str) -> None:
        self.quarantine(msg.subject, msg.data, f"{what} watermarks ({self.kind.name})")

    def _part(self, msg: Msg, position: int) -> Batch | None:
        try:
            part_kind, frame, watermark = self.decoded.get(position, msg.data)
            if part_kind != self.kind.number:
                raise ValueError(f"a batch of kind {part_kind} on {self.kind.name}")
        except (DecodeError, ValueError) as exc:
            # The part's rows are lost to this batch; the watermark's count says so when it closes.
            self.quarantine(msg.subject, msg.data, f"not a usable EventBatch: {exc}")
            return None
        parts = self.parts.setdefault(msg.subject, (position, []))[1]
        if frame.height:
            parts.append(frame)
        if watermark is None:
            return None  # acked with the part that closes its batch
        frame = pl.concat(parts, how="vertical") if len(parts) > 1 else (parts[0] if parts else self.kind.empty_frame())
        del self.parts[msg.subject]
        position = self.safe_position(position)
        if frame.height > watermark.event_count:  # a part re-published beyond the server's duplicate window
            frame = frame.unique("event_id", keep="first", maintain_order=True)
        if frame.height < watermark.event_count:
            log.error(
                "%s batch from %s through %d: %d events announced, %d received",
                self.kind.name, watermark.producer, watermark.through_time_ns, watermark.event_count, frame.height,
            )  # fmt: skip
        if frame.height and not frame[TIME].is_sorted():
            frame = frame.sort(TIME, maintain_order=True)
        through = END if watermark.end_of_stream else watermark.through_time_ns
        return Batch(self.kind.name, watermark.producer, frame, through, position)


def _joined(first: Batch, then: Batch) -> Batch:
    """Two consecutive batches of one producer as one: the rows of both, the later watermark and position.
    Rows of `then` that `first` carried already (re-published after a restart) are dropped, as the runner drops
    them between batches."""
    if first.through_ns is not None and then.frame.height:
        early = None
        if first.frame.height and first.frame[TIME][-1] > first.through_ns:
            early = first.frame.filter(pl.col(TIME) > first.through_ns)["event_id"]
        then = Batch(then.kind, then.producer, not_yet_taken(then.frame, first.through_ns, early), then.through_ns,
                     then.position)  # fmt: skip
    if not then.frame.height or not first.frame.height:
        frame = first.frame if first.frame.height else then.frame
    else:
        frame = pl.concat([first.frame, then.frame], how="vertical")
        if not frame[TIME].is_sorted():
            frame = frame.sort(TIME, maintain_order=True)
    through = max(first.through_ns, then.through_ns)  # type: ignore[type-var]
    return Batch(first.kind, first.producer, frame, through, then.position)


@dataclass(eq=False)
class _LocalBatch:
    """A batch published through this bus, handed to this bus's consumers of its kind as it is published: engines
    sharing a process pass it as it is, without waiting for the server to store it, send it back and have it
    decoded. Its `batch.stored` resolves once the server acked it, and the consumer commits nothing before that.
    It is the `number`-th batch this bus published on `subject`; a consumer takes it only if it has applied the
    one before it (by either path), so that a producer's rows reach it in order, and it then skips the stored
    parts of `batch_id` when they come."""

    subject: str
    batch_id: str
    number: int
    batch: Batch


def _batch_id(msg: Msg) -> str | None:
    """The batch id in a batch part's message id (`b/<batch id>/<part>`), or None."""
    msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
    if not msg_id.startswith("b/"):
        return None
    return msg_id[2:msg_id.rfind("/")]


def _retrieve(future: asyncio.Future) -> None:
    """Look at a future's exception so that asyncio does not report it as never retrieved (no consumer took it)."""
    if not future.cancelled():
        future.exception()


class _ContinuousPull:
    """Keeps one pull request of `batch` messages outstanding on a durable consumer and yields messages
    as they arrive (the JetStream pull protocol: $JS.API.CONSUMER.MSG.NEXT). Unlike `fetch`, it never
    lingers for a full batch, so a lone message is handled at once and a backlog streams in."""

    def __init__(self, nc: nats.NATS, stream: str, durable: str, batch: int, expires_s: float = 5.0) -> None:
        self.nc = nc
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = batch
        self.expires_s = expires_s
        self.outstanding = 0
        self.renew_at = 0.0  # monotonic time to ask again, before the outstanding request expires
        self.inbox = nc.new_inbox()
        self.sub = None
        # Messages land here from the subscription's callback: taking one that is already there costs no task
        # and no timer (next_msg's wait_for made both for every message, most of a backlog's cost).
        self.arrived: deque[Msg] = deque()
        #: Batches published in this process (`_LocalBatch`), taken before anything from the server.
        self.local: deque[_LocalBatch] = deque()
        self.wake = asyncio.Event()

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._arrive)

    async def _arrive(self, msg: Msg) -> None:
        self.arrived.append(msg)
        self.wake.set()

    def offer(self, item: _LocalBatch) -> None:
        self.local.append(item)
        self.wake.set()

    async def _next_arrival(self, timeout_s: float) -> Msg | None:
        while not self.arrived:
            if self.local:
                return None
            self.wake.clear()
            # Not wait_for: on Python 3.11 it returns normally when the wake and a cancellation land together,
            # and the consumer, whose loop only ends by cancellation here, went on pulling: a daemon told to stop
            # kept running, idle, for ever.
            async with asyncio.timeout(timeout_s):
                await self.wake.wait()
        return self.arrived.popleft()

    async def next(self) -> Msg | _LocalBatch:
        while True:
            if self.local:
                return self.local.popleft()
            now = time.monotonic()
            if self.outstanding <= 0 or now >= self.renew_at:
                # A new request before the last one expires, never after: a request that expires having
                # delivered part of its batch may end without a status, and waiting for one stalled every
                # consumer of a quiet kind for the whole expiry (a 5 s p99 in bench/live_latency.py). The two
                # overlap for a moment; counting only the new one's batch may ask early, never late.
                request = {"batch": self.batch, "expires": int(self.expires_s * 1e9)}
                await self.nc.publish(self.api, json.dumps(request).encode(), reply=self.inbox)
                self.outstanding, self.renew_at = self.batch, now + self.expires_s * 0.8
            try:
                msg = self.arrived.popleft() if self.arrived else await self._next_arrival(self.renew_at - now)
            except asyncio.TimeoutError:
                continue  # nothing before the renewal: renew
            if msg is None:
                continue  # a local batch came
            status = (msg.headers or {}).get("Status")
            if status is None:
                self.outstanding -= 1
                return msg
            if status != "100":  # 404/408 no messages or expired, 409 exceeded/deleted: ask again
                self.outstanding = 0

    def has_message(self) -> bool:
        """Whether a message is here already, to be had from `next` without waiting (status messages in front
        of it are taken in on the way: a request's expiry must not look like a message)."""
        while self.arrived:
            status = (self.arrived[0].headers or {}).get("Status")
            if status is None:
                return True
            self.arrived.popleft()
            if status != "100":
                self.outstanding = 0
        return False

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


def _cancel(pending: list[asyncio.Future]) -> None:
    """Give up on acks still awaited: nats-py then forgets them and frees their places among its pending publishes
    (a limited number), as gather did for its children when it was cancelled."""
    for future in pending:
        future.cancel()


class PublishNotAcked(RuntimeError):
    """The server did not ack a publish in time: the connection may have lost it."""


async def _unsubscribe(nats_sub: Any) -> None:
    """End a core NATS subscription, quietly: the connection may already be gone."""
    try:
        await nats_sub.unsubscribe()
    except Exception:  # noqa: S110 - closing anyway
        pass


_ACKING: set[asyncio.Task] = set()  # acks under way (a task not referenced may be collected before it runs)


async def _ack(nc: nats.NATS, sequence: int, reply: str) -> None:
    try:
        await nc.publish(reply)  # as nats-py's Msg.ack: an empty message to the ack subject
    except Exception as exc:  # noqa: BLE001 - the connection went: the commit holds, the consumer is re-created there
        log.info("ack of stream sequence %d not sent: %s", sequence, exc)


@dataclass(eq=False)
class _JetStreamSubscription(Subscription):
    name: str
    task: asyncio.Task | None = None
    pull: _ContinuousPull | None = None
    nats_sub: object | None = None
    #: The one batch subject it takes (a partition's), or None: every subject of its kind.
    subject: str | None = None
    closed: bool = False
    error: BaseException | None = field(default=None)
    nc: nats.NATS | None = None
    #: Messages handed over whose effects the subscriber has not committed yet, oldest first, as (stream sequence,
    #: ack subject): acked once it has (`committed`), so that nothing is acked before its effects are durable.
    unacked: deque[tuple[int, str]] = field(default_factory=deque)

    def committed(self, position: int) -> None:
        newest = None
        while self.unacked and self.unacked[0][0] <= position:
            newest = self.unacked.popleft()
        if newest is not None and self.nc is not None and not self.nc.is_closed:
            # AckPolicy.ALL: one ack covers every message up to it. A task: a commit is synchronous, and the ack only
            # goes into the connection's buffer.
            task = asyncio.get_running_loop().create_task(_ack(self.nc, *newest))
            _ACKING.add(task)
            task.add_done_callback(_ACKING.discard)

    async def close(self) -> None:
        self.closed = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: S110 - closing; the loop logged its own errors
                pass
        if self.nats_sub is not None:
            await _unsubscribe(self.nats_sub)


def dead_letter_id(engine: str, kind: str, event_id: str) -> str:
    """A dead letter's identity: the same rows dead-lettered again (after a crash) are the same letter."""
    return f"dlq/{engine}/{kind}/{event_id}"


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as the stream holds it: one event, where it came from and why it is there."""

    sequence: int
    engine: str
    kind: str
    subject: str
    error: str
    deliveries: int
    event: Message
    letter_id: str


def _consumer_name(consumer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", consumer)


class JetStreamBus(Bus):
    name = "jetstream"
    durable = True

    def __init__(
        self,
        url: str,
        *,
        stream: str = "UTP",
        subject_root: str = "utp",
        duplicate_window_s: float = 600.0,
        start_after: int = 0,
        fetch_batch: int = 512,
        coalesce_rows: int = 50_000,
        coalesce_batches: int = 16,
        ack_wait_s: float = 60.0,
        ack_timeout_s: float = 120.0,
        client_name: str = "utp",
        quarantine: QuarantineHandler = _log_quarantine,
        deliver_in_process: bool = True,
        consumer_inactive_s: float = 3600.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subjects = Subjects(subject_root)
        self.duplicate_window_s = duplicate_window_s
        #: Stream sequence after which a session's consumers start when they have committed nothing yet.
        self.start_after = start_after
        self.fetch_batch = fetch_batch
        #: How long a publish waits for the server's acks before it fails (see `_acked`). Generous: on a loaded
        #: machine the event loop is at times held for tens of seconds (numba compiling a kernel in a new
        #: process), and 10 s failed healthy publishes in a fresh-clone run.
        self.ack_timeout_s = ack_timeout_s
        #: Most rows, and most batches, a backlog's batches are joined into before an engine is handed them. The
        #: batches bound how long one hand-over keeps the event loop (an engine that steps one bar time at a time
        #: runs every step of it in one go; the daemon's gRPC server shares the loop).
        self.coalesce_rows = coalesce_rows
        self.coalesce_batches = coalesce_batches
        self.ack_wait_s = ack_wait_s
        self.client_name = client_name
        self.quarantine = quarantine
        self._nc: nats.NATS | None = None
        self._js = None
        self._decoded = _DecodedParts()  # one decode per stored part for all of this bus's consumers
        self._subscriptions: list[Subscription] = []
        #: Whether batches published here go to this bus's own consumers at once as well (`_LocalBatch`), besides
        #: the server, which still stores them and delivers them to everyone else (and to these after a restart).
        self.deliver_in_process = deliver_in_process
        #: Batches a consumer here may have waiting in process; beyond, it is behind, and the server brings the
        #: rest (in order: it takes nothing in process again before it has caught up), so that an engine far
        #: behind holds no backlog in memory.
        self.in_process_queue = 64
        #: The server deletes a durable consumer nobody has pulled from for this long: those of a process that died
        #: (a partition's holder, whose consumers carry its id) do not pile up. Nothing is lost by it: a consumer
        #: is created again at the position its engine committed.
        self.consumer_inactive_s = consumer_inactive_s
        self._local_consumers: dict[str, list[_JetStreamSubscription]] = {}
        self._published_on: dict[str, int] = {}  # subject -> batches published on it through this bus
        #: Batches this bus's consumers took in process (each consumer counts).
        self.handed_in_process = 0
        #: This bus's recent batches, batch id -> (subject, number): how a consumer knows one that came from the server.
        self._recent: OrderedDict[str, tuple[str, int]] = OrderedDict()

    # -- connection and stream ---------------------------------------------------------------------
    @property
    def js(self) -> Any:
        """The JetStream context (for key-value buckets beside the stream); None before `connect`."""
        return self._js

    async def connect(self) -> None:
        self._nc = await nats.connect(
            self.url,
            name=self.client_name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=5,
            allow_reconnect=True,
        )
        self._js = self._nc.jetstream(timeout=10.0)
        await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[self.subjects.everything()],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            duplicate_window=self.duplicate_window_s,
        )
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)
            return
        if list(info.config.subjects or []) != config.subjects or info.config.duplicate_window != config.duplicate_window:
            await self._js.update_stream(config)

    async def last_sequence(self) -> int:
        """Sequence of the newest message in the stream (0 when empty)."""
        info = await self._js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def close(self) -> None:
        for sub in list(self._subscriptions):
            await sub.close()
        self._subscriptions.clear()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await self._nc.close()
        self._nc = None

    # -- publishing --------------------------------------------------------------------------------
    async def publish(self, batch: Batch) -> None:
        kind = KINDS[batch.kind]
        pending = []
        if not kind.watermarked:
            for message in kind.to_messages(batch.frame) if batch.frame.height else []:
                header = message.header  # type: ignore[attr-defined]
                pending.append(await self._js.publish_async(
                    self.subjects.event(kind.name, header.symbol), message.SerializeToString(),
                    headers={"Nats-Msg-Id": header.event_id}))  # fmt: skip
        else:
            assert batch.through_ns is not None
            frame = batch.frame
            watermark = pb.Watermark(kind=kind.number, producer=batch.producer, through_time_ns=batch.through_ns,
                                     event_count=frame.height, end_of_stream=batch.end_of_stream)  # fmt: skip
            last_id = frame["event_id"][-1] if frame.height else ""
            batch_id = f"{batch.producer}/{kind.name}/{batch.through_ns}/{frame.height}/{last_id}"
            subject = self.subjects.batch(kind.name, batch.partition)
            stored = None
            try:
                parts = list(wire.parts(kind, frame, self._part_budget()))
                for index, part in enumerate(parts):
                    data = wire.with_watermark(part, index, watermark if index == len(parts) - 1 else None)
                    pending.append(await self._js.publish_async(subject, data,
                                                                headers={"Nats-Msg-Id": f"b/{batch_id}/{index}"}))
                # Sent first, so that the server stores it (and other processes have it) while the consumers here
                # step on it; they commit nothing before it is stored.
                stored = self._deliver_in_process(batch, subject, batch_id)
                await self._acked(pending)
            except BaseException as exc:
                if stored is not None and not stored.done():
                    failure = exc if isinstance(exc, Exception) else PublishNotAcked(f"publishing was stopped ({exc!r})")
                    stored.set_exception(failure)
                raise
            if stored is not None and not stored.done():
                stored.set_result(None)
            return
        await self._acked(pending)

    def _deliver_in_process(self, batch: Batch, subject: str, batch_id: str) -> asyncio.Future | None:
        """Offer a batch being published to this bus's consumers of its kind (`_LocalBatch`); returns the future
        to resolve once the server has stored it, or None when no consumer here takes the kind."""
        if not self.deliver_in_process:
            return None
        number = self._published_on.get(subject, 0)
        self._published_on[subject] = number + 1
        self._recent[batch_id] = (subject, number)
        while len(self._recent) > 4096:
            self._recent.popitem(last=False)
        consumers = [c for c in self._local_consumers.get(batch.kind, ()) if not c.closed]
        self._local_consumers[batch.kind] = consumers
        # A consumer of one partition takes only that partition's batches.
        consumers = [c for c in consumers if c.subject is None or c.subject == subject]
        if not consumers:
            return None
        stored = asyncio.get_running_loop().create_future()
        stored.add_done_callback(_retrieve)
        item = _LocalBatch(subject, batch_id, number, replace(batch, position=None, stored=stored))
        for consumer in consumers:
            if len(consumer.pull.local) < self.in_process_queue:  # type: ignore[union-attr]
                consumer.pull.offer(item)  # type: ignore[union-attr]
        return stored

    async def _acked(self, pending: list[asyncio.Future]) -> None:
        """Wait for the server's acks of what was just published. nats-py's async publishes have no deadline of
        their own: a message lost with the connection (nats-server restarted) is never acked, and its engine
        waited for ever. After `ack_timeout_s` the publish fails instead; the engine restarts from its checkpoint
        and publishes again (the same message ids, or rows its consumers drop as carried already)."""
        if not pending:
            return
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                # One by one rather than gathered: the server acks a connection's messages in order, and the publisher
                # then resumes one event-loop turn after the last ack instead of two (gather's own callback first).
                # A loaded loop's turn is an engine step or more: the decision's ack is seen that much sooner.
                for future in pending:
                    await future
        except TimeoutError:
            unacked = sum(not f.done() or f.cancelled() for f in pending)
            _cancel(pending)
            raise PublishNotAcked(f"JetStream acked {len(pending) - unacked} of {len(pending)} messages within "
                           f"{self.ack_timeout_s:g} s") from None
        except BaseException:
            _cancel(pending)
            raise

    def _part_budget(self) -> int:
        # A quarter of what the server takes in one message: room for headers, and for a part whose rows are
        # longer than the schema suggests before it is halved.
        limit = self._nc.max_payload if self._nc is not None and self._nc.max_payload else 1 << 20
        return max(1 << 12, min(1 << 18, limit // 4))

    async def record_applied(self, engine: str, kind: str, event_ids: list[str], through_ns: int) -> None:
        record = pb.CommandsApplied(engine=engine, through_time_ns=through_ns, event_ids=event_ids,
                                    kind=KINDS[kind].number)  # fmt: skip
        # The same commands at the same point are one record (a re-publish after a crash before the server's ack).
        msg_id = f"applied/{engine}/{through_ns}/{event_ids[0] if event_ids else ''}/{len(event_ids)}"
        await self._js.publish(self.subjects.applied(engine), record.SerializeToString(), headers={"Nats-Msg-Id": msg_id})

    async def publish_manifest(self, manifest: pb.SessionManifest) -> int:
        """Publish a session's manifest; returns its stream sequence."""
        ack = await self._js.publish(self.subjects.manifest(), manifest.SerializeToString(),
                                     headers={"Nats-Msg-Id": f"session/{manifest.session_id}"})  # fmt: skip
        return int(ack.seq)

    # -- dead letters ------------------------------------------------------------------------------
    async def dead_letter(self, letter: DeadLetter) -> None:
        kind = KINDS[letter.kind]
        error = " ".join(letter.error.split())[:2000]  # one header line
        pending = []
        for message in kind.to_messages(letter.frame):
            header = message.header  # type: ignore[attr-defined]
            pending.append(await self._js.publish_async(
                self.subjects.dead_letter(kind.name, header.symbol),
                message.SerializeToString(),
                headers={"Nats-Msg-Id": dead_letter_id(letter.engine, kind.name, header.event_id),
                         "Utp-Engine": letter.engine, "Utp-Error": error or "unknown error",
                         "Utp-Deliveries": str(letter.deliveries)},
            ))  # fmt: skip
        await self._acked(pending)
        log.error("dead letters: %d %s row(s) %s failed on %d times: %s", letter.frame.height, kind.name,
                  letter.engine, letter.deliveries, error)  # fmt: skip

    async def read_dead_letters(self, limit: int = 1000) -> list[StoredDeadLetter]:
        """The session's dead letters still in the stream, oldest first."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.start_after + 1,
                                ack_policy=AckPolicy.NONE)  # fmt: skip
        sub = await self._js.pull_subscribe(self.subjects.dead_letters(), stream=self.stream, config=config)
        letters: list[StoredDeadLetter] = []
        try:
            while len(letters) < limit and (await sub.consumer_info()).num_pending > 0:
                try:
                    msgs = await sub.fetch(min(500, limit - len(letters)), timeout=2.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                for m in msgs:
                    letter = self._stored_dead_letter(m)
                    if letter is not None:
                        letters.append(letter)
        finally:
            await sub.unsubscribe()
        return letters[:limit]

    def _stored_dead_letter(self, msg: Msg) -> StoredDeadLetter | None:
        parts = msg.subject.split(".", 3)
        headers = msg.headers or {}
        kind = KINDS.get(parts[2]) if len(parts) == 4 else None
        if kind is None:
            log.error("dead letters: a message on %s is not one", msg.subject)
            return None
        try:
            event = kind.message.FromString(msg.data)
        except DecodeError as exc:
            log.error("dead letters: unreadable %s on %s: %s", kind.name, msg.subject, exc)
            return None
        try:
            deliveries = int(headers.get("Utp-Deliveries", "0"))
        except ValueError:
            deliveries = 0
        engine = headers.get("Utp-Engine", "")
        return StoredDeadLetter(
            sequence=msg.metadata.sequence.stream, engine=engine, kind=kind.name, subject=msg.subject,
            error=headers.get("Utp-Error", ""), deliveries=deliveries, event=event,
            letter_id=dead_letter_id(engine, kind.name, event.header.event_id),  # type: ignore[attr-defined]
        )  # fmt: skip

    async def drop_dead_letter(self, sequence: int) -> None:
        """Remove a dead letter from the stream (replayed, or given up by the operator)."""
        try:
            await self._js.delete_msg(self.stream, sequence)
        except nats.js.errors.NotFoundError:
            pass  # gone already

    # -- consuming ---------------------------------------------------------------------------------
    async def subscribe(
        self, kind: str, consumer: str, handler: BatchHandler, *, resume_after: int | None = None,
        partition: str | None = None,
    ) -> Subscription:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        if partition is not None and not KINDS[kind].watermarked:
            raise ValueError(f"{kind} is not published in batches, so not in partitions")
        durable = _consumer_name(consumer)
        position = self.start_after if resume_after is None else resume_after
        # One partition's batch subject: the server sends this consumer nothing of the other partitions.
        only = None if partition is None else self.subjects.batch(kind, partition)
        await self._ensure_consumer(durable, only or self.subjects.of_kind(kind), position)
        pull = _ContinuousPull(self._nc, self.stream, durable, self.fetch_batch)
        await pull.start()
        sub = _JetStreamSubscription(durable, nats_sub=pull.sub, pull=pull, subject=only, nc=self._nc)
        sub.task = asyncio.create_task(self._consume(sub, pull, kind, handler), name=f"consume-{durable}")
        self._subscriptions.append(sub)
        if KINDS[kind].watermarked:
            self._local_consumers.setdefault(kind, []).append(sub)
        return sub

    async def _ensure_consumer(self, durable: str, filter_subject: str, position: int) -> None:
        """Make the durable consumer of `filter_subject` deliver from just after `position` (the last committed
        batch)."""
        try:
            info = await self._js.consumer_info(self.stream, durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            # Reuse it only if everything it delivered is acked and its acked floor is our commit.
            if (
                info.config.filter_subject == filter_subject
                and info.num_ack_pending == 0
                and info.ack_floor.stream_seq == position
            ):
                return
            log.info(
                "re-creating consumer %s at %d (acked up to %d, %d unacked)",
                durable, position + 1, info.ack_floor.stream_seq, info.num_ack_pending,
            )  # fmt: skip
            await self._js.delete_consumer(self.stream, durable)
        await self._js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=filter_subject,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=position + 1,
                ack_policy=AckPolicy.ALL,
                ack_wait=self.ack_wait_s,
                # A batch is acked only when its watermark arrives, so never stop delivering before that.
                max_ack_pending=-1,
                inactive_threshold=self.consumer_inactive_s,
            ),
        )

    async def _consume(self, sub: _JetStreamSubscription, pull: _ContinuousPull, kind: str, handler: BatchHandler) -> None:
        assembler = _BatchAssembler(KINDS[kind], self.subjects, self.quarantine, self._decoded)
        watermarked = KINDS[kind].watermarked
        highest = 0
        # A batch not handed over yet: while more messages are already here (a backlog), the next batches of its
        # producer join it, so that an engine behind steps once over many bar times instead of once per bar
        # time. Nothing waits for this: it is handed over as soon as nothing more has arrived.
        held: Batch | None = None
        held_msg: Msg | None = None
        joined = 0
        # Batches published in this process (`_LocalBatch`): per subject, the number of the newest this consumer
        # has applied by either path; the ids of those it applied, whose stored parts it skips when they come; and
        # the newest part skipped, acked (and its position handed to the engine) once nothing else is waiting.
        applied: dict[str, int] = {}
        applied_ids: OrderedDict[str, None] = OrderedDict()  # by either path: a batch published again is dropped
        held_numbers: dict[str, int] = {}
        held_ids: list[str] = []
        skipped: Msg | None = None

        def settle_held() -> None:
            applied.update(held_numbers)
            held_numbers.clear()
            for batch_id in held_ids:
                applied_ids[batch_id] = None
            held_ids.clear()
            while len(applied_ids) > 1024:
                applied_ids.popitem(last=False)

        async def hand_over_held() -> bool:
            nonlocal held, held_msg
            if not await self._hand_over(sub, handler, held, held_msg):  # type: ignore[arg-type]
                return False
            held = held_msg = None
            settle_held()
            return True

        while not sub.closed:
            if held is not None and not pull.has_message():
                if not await hand_over_held():
                    return
                continue
            if skipped is not None and held is None and not pull.has_message():
                mark = Batch(kind, "", pl.DataFrame(), None, assembler.safe_position(skipped.metadata.sequence.stream),
                             only_position=True)  # fmt: skip
                if not await self._hand_over(sub, handler, mark, skipped):
                    return
                skipped = None
                continue
            try:
                item = await pull.next()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: the client reconnects by itself
                if sub.closed or self._nc is None or self._nc.is_closed:
                    return
                log.warning("%s: pull failed (%s); retrying", sub.name, exc)
                await asyncio.sleep(0.25)
                continue
            if isinstance(item, _LocalBatch):
                if held is not None and not await hand_over_held():  # what came before it, first
                    return
                if applied.get(item.subject, -2) != item.number - 1 or item.batch_id in applied_ids:
                    continue  # not the next of its producer here, or had already: the server brings it in order
                assembler.drop(item.subject)  # its own parts, if the server delivered some already
                if not await self._hand_over(sub, handler, item.batch, None):
                    return
                applied[item.subject] = item.number
                self.handed_in_process += 1
                held_ids.append(item.batch_id)
                settle_held()
                continue
            msg = item
            sequence = msg.metadata.sequence.stream
            if sequence <= highest:  # redelivered after ack_wait; already handled in order
                continue
            highest = sequence
            batch_id = _batch_id(msg) if watermarked else None
            if batch_id is not None and batch_id in applied_ids:
                skipped = msg
                continue
            batch = assembler.add(msg)
            if batch is None:
                if watermarked:
                    continue  # acked with the part that closes its batch
                try:
                    await msg.ack()  # quarantined
                except nats.errors.ConnectionClosedError:
                    return
                continue
            if not watermarked:
                if not await self._hand_over(sub, handler, batch, msg):
                    return
                continue
            if held is not None:
                if (held.producer == batch.producer and joined < self.coalesce_batches
                        and held.frame.height + batch.frame.height <= self.coalesce_rows
                        and (held.frame.schema == batch.frame.schema or not held.frame.height or not batch.frame.height)):
                    held, held_msg, joined = _joined(held, batch), msg, joined + 1
                    self._note_number(held_numbers, held_ids, batch_id)
                    continue
                if not await hand_over_held():
                    return
            held, held_msg, joined = batch, msg, 1
            self._note_number(held_numbers, held_ids, batch_id)

    def _note_number(self, numbers: dict[str, int], ids: list[str], batch_id: str | None) -> None:
        """Note a batch from the server: its id in `ids`, and its number in `numbers` (subject -> number) if this
        bus published it."""
        if batch_id is None:
            return
        ids.append(batch_id)
        known = self._recent.get(batch_id)
        if known is not None and known[1] > numbers.get(known[0], -1):
            numbers[known[0]] = known[1]

    async def _hand_over(self, sub: _JetStreamSubscription, handler: BatchHandler, batch: Batch, msg: Msg | None) -> bool:
        """Handle a batch; its last message is acked (AckPolicy.ALL; none for a batch handed over in process) once
        the subscriber has committed its effects (`committed`); False when the consumer must stop."""
        try:
            await handler(batch)
        except Exception as exc:
            # Nothing of this batch was committed or acked; a restart resumes before it.
            log.error("%s: handler failed, consumer stopped: %s", sub.name, exc)
            sub.error = exc
            return False
        if msg is not None and msg.reply:
            sub.unacked.append((msg.metadata.sequence.stream, msg.reply))
        return not (self._nc is None or self._nc.is_closed)

    async def tap(self, handler: TapHandler, wants: KindFilter) -> Subscription:
        async def on_message(msg: Msg) -> None:
            try:
                kind_name, symbol = self.subjects.parse(msg.subject)
            except ValueError:
                return
            if kind_name not in KINDS or not wants(kind_name):
                return
            kind = KINDS[kind_name]
            try:
                if symbol is None:
                    frame = wire.to_frame(pb.EventBatch.FromString(msg.data))
                    events = kind.to_messages(frame) if frame.height else []
                else:
                    events = [kind.message.FromString(msg.data)]
            except (DecodeError, ValueError):
                return
            if not events:
                return
            try:
                await handler(kind_name, events)
            except Exception:  # a watcher must never break the bus
                log.exception("tap handler failed on %s", kind_name)

        sub = _JetStreamTap(self, wants, on_message)
        await sub.refresh()
        self._subscriptions.append(sub)
        return sub


@dataclass(eq=False)
class _JetStreamTap(Subscription):
    """A tap's subscriptions on the server: one per kind it wants, so that the server sends this process only those
    kinds (a tap on every subject had every bar and feature vector sent back to the process that published them,
    which then read and dropped them: more bytes in than the session's own consumers took)."""

    bus: JetStreamBus
    wants: KindFilter
    callback: Callable[[Msg], Any]
    by_kind: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    # Refreshes one at a time: two at once (a watcher leaving as another comes) would subscribe a kind twice.
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self) -> None:
        async with self._refreshing:
            nc = self.bus._nc
            if self.closed or nc is None or nc.is_closed:
                return
            wanted = {kind for kind in KINDS if self.wants(kind)}
            for kind in sorted(wanted - set(self.by_kind)):
                self.by_kind[kind] = await nc.subscribe(self.bus.subjects.of_kind(kind), cb=self.callback)
            for kind in sorted(set(self.by_kind) - wanted):
                await _unsubscribe(self.by_kind.pop(kind))

    async def close(self) -> None:
        self.closed = True
        for nats_sub in self.by_kind.values():
            await _unsubscribe(nats_sub)
        self.by_kind.clear()


async def read_stored(js: Any, stream: str, subject: str, first: int = 1, last: int | None = None) -> list[Msg]:
    """The stored messages on `subject` (wildcards allowed) with stream sequence in [first, last] (to the end of
    the stream with None), through a read-only ephemeral consumer: no acks, so the server's cap on unacked
    messages never stalls it, and nothing of a session's own consumers moves."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(first, 1),
                            ack_policy=AckPolicy.NONE)  # fmt: skip
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    out: list[Msg] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                # A fetch that times out proves nothing by itself: stop when the consumer has nothing pending.
                if (await sub.consumer_info()).num_pending == 0:
                    return out
                continue
            for m in msgs:
                if last is not None and m.metadata.sequence.stream > last:
                    return out
                out.append(m)
            if msgs and (await sub.consumer_info()).num_pending == 0:
                return out
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001, S110 - an ephemeral consumer goes by itself
            pass


def distinct_events(kind: Kind, stored: Iterable[Msg]) -> list[Message]:
    """The events of `kind` in stored messages, each once, in stream order. A producer restarted from an older
    checkpoint publishes again what it had published, cut into other batches: the server's duplicate window
    keys on the batch, so the stream may hold an event twice, and the second is the same event."""
    seen: set[str] = set()
    events: list[Message] = []
    for msg in stored:
        for event in events_in(kind, msg):
            if event.header.event_id not in seen:  # type: ignore[attr-defined]
                seen.add(event.header.event_id)  # type: ignore[attr-defined]
                events.append(event)
    return events


def events_in(kind: Kind, msg: Msg) -> list[Message]:
    """The events of `kind` a stored message on the kind's subjects holds: the rows of a batch part, or the one
    event of a kind without watermarks. DecodeError or ValueError if it holds neither."""
    if is_batch_token(msg.subject.split(".", 2)[2]):
        frame = wire.to_frame(pb.EventBatch.FromString(msg.data))
        return kind.to_messages(frame) if frame.height else []
    return [kind.message.FromString(msg.data)]
