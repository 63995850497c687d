"""The engine runtime: how an engine consumes batches, steps through time and publishes its outputs.

An engine declares the kinds it consumes (`inputs`) and produces (`outputs`) and implements `on_step`.
Its runner subscribes it to the bus, joins its inputs by event time, calls it, publishes what it emitted
with watermarks, and checkpoints its state. The same runner drives an engine in a backtest (in-process
bus, simulated clock, no persistence) and in a live session (JetStream, wall clock, LMDB).

Joining rules, which make decisions independent of batch sizes and of delivery order between streams:

* JOINED inputs define the engine's steps. The runner hands the engine every row up to time T once
  every joined input's watermark has reached T, so an engine always sees all of its inputs for a bar
  time together, however the streams were batched or interleaved on the way.
* FEEDBACK inputs close a cycle in the graph (execution consumes risk decisions, which depend on the
  positions execution publishes). A joined row at time t is processed only when every feedback input
  is complete through the time the engine has already processed; feedback rows are handed over as soon
  as they arrive. Outputs listed in `feedback_outputs` carry a watermark no further than the feedback.
* COMMAND inputs (operator commands) are applied as soon as they arrive and take no part in joins.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import polars as pl

from utp.core.batch import END, NOTHING, Batch, not_yet_taken
from utp.core.bus import Bus, Subscription
from utp.core.clock import Clock
from utp.core.ids import event_id
from utp.core.kinds import KINDS, TIME, concat
from utp.core.partitions import Partition, split
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


class InputMode(enum.Enum):
    JOINED = "joined"
    FEEDBACK = "feedback"
    COMMAND = "command"


@dataclass(frozen=True, slots=True)
class Input:
    kind: str
    mode: InputMode = InputMode.JOINED


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """A write to a hot-state table, committed atomically with the engine's checkpoint."""

    table: str
    key: str
    value: bytes | None  # None deletes


@dataclass(slots=True)
class Checkpoint:
    engine: str
    state: bytes
    # Transport position of the last batch committed per input kind (JetStream stream sequence).
    positions: dict[str, int]
    records: list[RecordWrite] = field(default_factory=list)


class Checkpointer(Protocol):
    """Where runners keep their state. `storage.state` implements it on LMDB."""

    def load(self, engine: str) -> Checkpoint | None: ...

    def save(self, checkpoint: Checkpoint) -> None: ...

    def flush(self) -> None: ...


@dataclass(slots=True)
class DeadLetter:
    """Input rows an engine failed on `deliveries` times, taken out of its stream so that it can go on."""

    engine: str
    kind: str
    frame: pl.DataFrame
    error: str
    deliveries: int


class EngineFailure(RuntimeError):
    """An engine raised while handling input; its state is unchanged and nothing was acknowledged."""


class EngineContext:
    """What an engine may touch: the clock, its log, its outputs and its hot-state records."""

    def __init__(self, runner: _RunnerBase) -> None:
        self._runner = runner
        self.clock: Clock = runner.clock
        self.log = logging.getLogger(f"utp.engine.{runner.engine.name}")
        #: Whether hot-state records are kept (a session with LMDB); a backtest skips building them.
        self.keeps_records = runner.checkpointer is not None

    def emit(self, kind: str, frame: pl.DataFrame) -> None:
        """Queue rows of an output kind for publishing; rows must be sorted by event time."""
        self._runner._queue_output(kind, frame)

    def put_record(self, table: str, key: str, value: bytes) -> None:
        self._runner._records.append(RecordWrite(table, key, value))

    def delete_record(self, table: str, key: str) -> None:
        self._runner._records.append(RecordWrite(table, key, None))

    def count_rejected(self, n: int = 1) -> None:
        self._runner.events_rejected += n


class Engine(ABC):
    """One engine: one clear job, named input and output kinds, state that can be snapshotted."""

    name: str
    inputs: tuple[Input, ...] = ()
    outputs: tuple[str, ...] = ()
    #: Outputs caused by feedback inputs; their watermark waits for the feedback (see module doc).
    feedback_outputs: frozenset[str] = frozenset()
    #: Its steps act outside the process (orders to a broker): it steps on a batch handed over in process only once
    #: the bus has stored it, so that nothing leaves the process because of an event the bus might not keep.
    acts_outside: bool = False
    #: Its state is committed after every step, however often its runner may commit (`checkpoint_interval_s`): its
    #: steps take in what cannot be had again (a real broker's reports), so a crash cannot replay them.
    commits_every_step: bool = False

    def start(self, ctx: EngineContext) -> None:  # noqa: B027 - optional hook
        """Called once before the first input, after a restore if there was one."""

    @abstractmethod
    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        """Process input rows. `frames` maps input kinds to rows (sorted by time) handed over now:
        all rows of joined inputs in (previous through, through_ns], or newly arrived feedback rows."""

    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:  # noqa: B027
        """Apply command rows (COMMAND inputs) as they arrive."""

    def finish(self, ctx: EngineContext) -> None:  # noqa: B027 - optional hook
        """Called once when every input has ended."""

    def snapshot(self) -> Any:
        """Picklable state to checkpoint; restored with `restore`."""
        return None

    def restore(self, state: Any) -> None:  # noqa: B027 - optional hook
        """Inverse of `snapshot`."""


class SourceEngine(Engine):
    """An engine that produces batches from outside the bus (market data)."""

    #: Watermark of what the source has emitted so far; END once it is exhausted.
    through_ns: int = NOTHING
    #: Seconds to wait between batches; 0 = as fast as possible.
    pace_seconds: float = 0.0

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        raise TypeError("a source engine has no inputs")

    @abstractmethod
    def produce(self, ctx: EngineContext) -> bool:
        """Emit the next batch; return False when there is nothing more. A call that emits nothing, writes no
        record and leaves `through_ns` as it was is not checkpointed (a live source polls far more often than
        bars come), so state changed by such a call alone may be lost in a crash."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called when the runner stops (maybe more than once): release what `start` took (a live feed)."""


@dataclass(slots=True)
class _ProducerState:
    """What one producer of an input has delivered: its watermark, its rows not stepped yet, and the ids of rows
    it carried beyond its watermark."""

    watermark: int = NOTHING
    pending: pl.DataFrame | None = None
    #: (event_id, time) of rows taken in beyond the watermark, until it passes them: a re-publication of such a
    #: row (a producer restarted from an older checkpoint cuts its batches elsewhere) is not caught by time.
    early: pl.DataFrame | None = None

    def accept(self, batch: Batch) -> None:
        """Take a batch's rows that earlier batches did not carry, and its watermark."""
        frame = batch.frame
        if frame.height:
            frame = not_yet_taken(frame, self.watermark, None if self.early is None else self.early["event_id"])
            if frame.height:
                self.pending = frame if self.pending is None else pl.concat([self.pending, frame])
        if batch.through_ns is not None and batch.through_ns > self.watermark:
            self.watermark = batch.through_ns
        if self.early is not None or (frame.height and frame[TIME][-1] > self.watermark):
            early = frame.select("event_id", TIME)
            if self.early is not None:
                early = pl.concat([self.early, early])
            early = early.filter(pl.col(TIME) > self.watermark)
            self.early = early if early.height else None

    def take_through(self, through_ns: int) -> pl.DataFrame | None:
        if self.pending is None:
            return None
        head, tail = _split_through(self.pending, through_ns)
        self.pending = tail if tail.height else None
        return head if head.height else None


#: The producer of rows restored from a checkpoint written before inputs kept their producers apart: the
#: first producer that delivers takes them over.
_UNNAMED = "\x00restored"


@dataclass(slots=True)
class _InputState:
    spec: Input
    position: int | None = None
    #: Per producer, by name. Several processes may share the producing engine's symbols (partitions): each
    #: publishes its own batches and watermarks, and the input is complete through a time only once each is.
    producers: dict[str, _ProducerState] = field(default_factory=dict)
    #: The producers the input waits for; empty: whichever have delivered (one producer per kind).
    expected: tuple[str, ...] = ()

    @property
    def watermark(self) -> int:
        if self.expected:
            return min(self.producers[p].watermark if p in self.producers else NOTHING for p in self.expected)
        return max((p.watermark for p in self.producers.values()), default=NOTHING)

    def producer(self, name: str) -> _ProducerState:
        state = self.producers.get(name)
        if state is None:
            state = self.producers[name] = self.producers.pop(_UNNAMED, None) or _ProducerState()
        return state

    def next_time(self) -> int | None:
        times = [p.pending[TIME][0] for p in self.producers.values() if p.pending is not None]
        return min(times) if times else None

    def take_through(self, through_ns: int) -> pl.DataFrame | None:
        """Every producer's rows up to `through_ns`, in time order; rows of one time by producer (partitions by
        number: the order a splitting producer publishes them in, and so the order they lie in the stream), so
        the engine sees the same order however the producers' batches interleaved on the way."""
        heads = [h for _, p in sorted(self.producers.items(), key=_producer_order)
                 if (h := p.take_through(through_ns)) is not None]  # fmt: skip
        if len(heads) <= 1:
            return heads[0] if heads else None
        return pl.concat(heads, how="vertical").sort(TIME, maintain_order=True)

    def take_all(self) -> pl.DataFrame | None:
        return self.take_through(END)


def _producer_order(item: tuple[str, object]) -> tuple[str, int]:
    """("alpha.p10", _) -> ("alpha", 10): partitions in number order, after their engine's other names."""
    base, _, token = item[0].rpartition(".")
    if base and token[:1] == "p" and token[1:].isdigit():
        return base, int(token[1:])
    return item[0], -1


def _split_through(frame: pl.DataFrame, through_ns: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows with time <= through_ns, the rest); O(1) slices of a time-sorted frame."""
    k = int(np.searchsorted(frame[TIME].to_numpy(), through_ns, side="right"))
    return frame.slice(0, k), frame.slice(k)


class _RunnerBase:
    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        clock: Clock,
        checkpointer: Checkpointer | None = None,
        *,
        status_interval_s: float | None = None,
        partition: Partition | None = None,
        split_outputs: Mapping[str, int] | None = None,
    ) -> None:
        for kind in engine.outputs:
            if kind not in KINDS:
                raise ValueError(f"{engine.name}: unknown output kind {kind!r}")
        split_outputs = dict(split_outputs or {})
        for kind, count in split_outputs.items():
            if kind not in engine.outputs or not KINDS[kind].watermarked or count < 1:
                raise ValueError(f"{engine.name} cannot split {kind!r} into {count} partitions")
        if split_outputs and partition is not None:
            raise ValueError(f"{engine.name} is one partition already; it cannot split its outputs again")
        self.engine = engine
        #: This runner's engine is one partition of several processes sharing the engine's symbols: it publishes
        #: as producer `<engine>.<partition>` on the partition's subjects, with its own checkpoint and consumers.
        self.partition = partition
        self.producer = engine.name if partition is None else f"{engine.name}.{partition.name}"
        self._partition_name = None if partition is None else partition.name
        #: Asked before each publish: a reason this runner may not publish any more (a partition's lease that
        #: expired while its process was held up: another process may hold the partition now), or None.
        self.fence: Callable[[], str | None] | None = None
        #: Output kinds whose rows go out split by their symbol's partition (kind -> partitions): partition k's as
        #: producer `<engine>.p<k>` on that partition's subject, each with the step's watermark, so that a process
        #: running partition k of a consumer receives only its rows (`EngineRunner(split_inputs=...)`). Market data's
        #: runner splits its bars this way when engines reading them are partitioned.
        self.split_outputs = split_outputs
        self.bus = bus
        self.clock = clock
        self.checkpointer = checkpointer
        self.status_interval_ns = None if status_interval_s is None else int(status_interval_s * 1e9)
        self.ctx = EngineContext(self)
        self.state = pb.ENGINE_STATE_STARTING
        self.last_error = ""
        self.events_in = 0
        self.events_out = 0
        self.events_rejected = 0
        self.through = NOTHING
        self._emitted: dict[str, list[pl.DataFrame]] = {}
        self._records: list[RecordWrite] = []
        self._published_wm: dict[str, int] = {k: NOTHING for k in engine.outputs if KINDS[k].watermarked}
        self._last_status_ns = NOTHING
        self.finished = asyncio.Event()

    # -- outputs -----------------------------------------------------------------------------------
    def _queue_output(self, kind: str, frame: pl.DataFrame) -> None:
        if kind not in self.engine.outputs:
            raise ValueError(f"{self.engine.name} emitted {kind!r}, which is not among its outputs")
        if frame.height:
            self._emitted.setdefault(kind, []).append(frame)

    def _output_watermark(self, kind: str) -> int:
        return self.through

    async def _publish_outputs(self) -> None:
        if self.fence is not None and (reason := self.fence()) is not None:
            raise EngineFailure(f"{self.producer} may not publish: {reason}")
        for kind in self.engine.outputs:
            frames = self._emitted.pop(kind, [])
            rows = concat(frames) if frames else KINDS[kind].empty_frame()
            if not KINDS[kind].watermarked:
                if rows.height:
                    await self.bus.publish(Batch(kind, self.producer, rows, None, partition=self._partition_name))
                    self.events_out += rows.height
                continue
            watermark = self._output_watermark(kind)
            previous = self._published_wm[kind]
            if not rows.height and watermark <= previous:
                continue
            if rows.height:
                if not rows[TIME].is_sorted():
                    rows = rows.sort(TIME, maintain_order=True)
                if rows[TIME][0] <= previous:
                    raise EngineFailure(
                        f"{self.engine.name} emitted {kind} at {rows[TIME][0]}, not after its watermark {previous}"
                    )
            watermark = max(watermark, previous)
            if count := self.split_outputs.get(kind):
                for k, part in enumerate(split(rows, count)):
                    name = Partition(k, count).name
                    await self.bus.publish(Batch(kind, f"{self.producer}.{name}", part, watermark, partition=name))
            else:
                await self.bus.publish(Batch(kind, self.producer, rows, watermark, partition=self._partition_name))
            self._published_wm[kind] = watermark
            self.events_out += rows.height

    # -- state -------------------------------------------------------------------------------------
    def _runner_state(self) -> dict[str, Any]:
        return {
            "through": self.through,
            "published_wm": dict(self._published_wm),
            "counters": (self.events_in, self.events_out, self.events_rejected),
        }

    def _restore_runner_state(self, state: dict[str, Any]) -> None:
        self.through = state["through"]
        self._published_wm.update(state["published_wm"])
        self.events_in, self.events_out, self.events_rejected = state["counters"]

    def _positions(self) -> dict[str, int]:
        return {}

    def _checkpoint(self) -> None:
        if self.checkpointer is None:
            self._records.clear()
            return
        blob = pickle.dumps(
            {"runner": self._runner_state(), "engine": self.engine.snapshot()}, protocol=pickle.HIGHEST_PROTOCOL
        )
        self.checkpointer.save(Checkpoint(self.producer, blob, self._positions(), list(self._records)))
        self._records.clear()

    def _restore(self) -> dict[str, int]:
        if self.checkpointer is None:
            return {}
        checkpoint = self.checkpointer.load(self.producer)
        if checkpoint is None:
            return {}
        state = pickle.loads(checkpoint.state)  # our own checkpoint, written by _checkpoint
        self._restore_runner_state(state["runner"])
        self.engine.restore(state["engine"])
        log.info("%s restored at through=%s", self.engine.name, self.through)
        return checkpoint.positions

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> pb.EngineStatus:
        now = self.clock.now_ns()
        return pb.EngineStatus(
            # Operational, not a decision: stamped with the clock so ids stay unique across restarts.
            header=pb.EventHeader(event_id=event_id("engine_status", self.engine.name, now), event_time_ns=now),
            engine=self.engine.name,
            state=self.state,
            through_time_ns=self.through,
            events_in=self.events_in,
            events_out=self.events_out,
            events_rejected=self.events_rejected,
            last_error=self.last_error,
        )

    async def _publish_status(self, *, force: bool = False) -> None:
        now = self.clock.now_ns()
        if not force and (self.status_interval_ns is None or now - self._last_status_ns < self.status_interval_ns):
            return
        if not self.bus.listened("engine_status"):  # informational: not built when nobody could see it
            return
        self._last_status_ns = now
        frame = KINDS["engine_status"].to_frame([self.status()])
        await self.bus.publish(Batch("engine_status", self.engine.name, frame, None))

    async def _set_state(self, state: int) -> None:
        self.state = state
        if state in (pb.ENGINE_STATE_FINISHED, pb.ENGINE_STATE_FAILED, pb.ENGINE_STATE_STOPPED):
            self.finished.set()
        try:
            await self._publish_status(force=True)
        except Exception:  # status is informational; never let it mask the real state change
            log.exception("%s: could not publish status", self.engine.name)

    async def _fail(self, where: str, exc: BaseException) -> EngineFailure:
        """Mark the engine failed (its committed state stays as it was) and say so on the bus."""
        message = f"{self.engine.name} failed {where}: {type(exc).__name__}: {exc}"
        log.error(message, exc_info=exc)
        self.last_error = message
        await self._set_state(pb.ENGINE_STATE_FAILED)
        return EngineFailure(message)


class EngineRunner(_RunnerBase):
    """Runs an engine with inputs: subscribes, joins, steps, publishes, checkpoints."""

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        clock: Clock,
        checkpointer: Checkpointer | None = None,
        *,
        status_interval_s: float | None = None,
        max_deliveries: int | None = None,
        producers: Mapping[str, Sequence[str]] | None = None,
        partition: Partition | None = None,
        split_inputs: Sequence[str] = (),
        checkpoint_interval_s: float = 0.0,
    ) -> None:
        super().__init__(engine, bus, clock, checkpointer, status_interval_s=status_interval_s, partition=partition)
        if split_inputs and partition is None:
            raise ValueError(f"{engine.name} is not a partition: it takes every partition of {', '.join(split_inputs)}")
        #: Input kinds whose producer splits its rows into this runner's partitions (`split_outputs`): it subscribes
        #: to its own partition's subject, and the rows need no filtering.
        self.split_inputs = frozenset(split_inputs)
        #: Per input kind, the producers whose watermarks must all pass a time before that input's does (the
        #: partitions of an engine that several processes share); a kind not named: whichever producer delivers.
        self.producers = {kind: tuple(sorted(names)) for kind, names in (producers or {}).items()}
        #: Failed deliveries of one step (or command batch) after which its rows go to the dead letters instead
        #: of the engine; None: a step that keeps failing keeps the engine failed.
        self.max_deliveries = max_deliveries
        # Failures per step, kept across restarts of this runner: key -> [deliveries failed, last error].
        self._failures: dict[tuple, list] = {}
        self._step: tuple[tuple, Mapping[str, pl.DataFrame]] | None = None
        # A step over several bar times failed: until through reaches this, steps are one bar time each, so that
        # a row that keeps failing takes only its own bar time's rows with it (batch size never changes a
        # decision).
        self._narrow_until = NOTHING
        self._dead: list[DeadLetter] = []
        #: Rows sent to the dead letters.
        self.dead_lettered = 0
        # Dead letters replayed into the engine (their ids), checkpointed: a replay applies once.
        self._replayed: set[str] = set()
        if not engine.inputs:
            raise ValueError(f"{engine.name} has no inputs; run it with SourceRunner")
        self._inputs = self._new_inputs()
        self._joined = [s for s in self._inputs.values() if s.spec.mode is InputMode.JOINED]
        self._feedback = [s for s in self._inputs.values() if s.spec.mode is InputMode.FEEDBACK]
        if not self._joined:
            raise ValueError(f"{engine.name} needs at least one joined input")
        self._lock = asyncio.Lock()
        #: The bus's `Batch.stored` of batches applied but not yet held by it: no checkpoint before they all are.
        self._unstored: list[asyncio.Future] = []
        self._subscriptions: list[Subscription] = []
        self._subscription_of: dict[str, Subscription] = {}  # input kind -> its subscription
        self._finish_called = False
        #: Times `restart` ran.
        self.restarts = 0
        #: A step's checkpoint is committed this many seconds after it (0: right after it), with those of every step
        #: applied meanwhile. A checkpoint pickles the engine's whole state and commits it: deferred, it is made
        #: once per interval instead of once per step, and after the steps of a bar time rather than between them
        #: (the bar's decision does not wait for it). On a bus that delivers again from the committed positions,
        #: this loses nothing: a crash replays the steps since the last commit, which publish what they published
        #: before (the same message ids, or rows consumers drop as carried already). Never for an engine that
        #: `commits_every_step` (a real broker's reports are not delivered again).
        self.checkpoint_interval_s = 0.0 if engine.commits_every_step else checkpoint_interval_s
        #: Applied steps not committed yet, and the task that commits them once the interval has passed.
        self._uncommitted = False
        self._commit_later: asyncio.Task | None = None
        #: Appended to its durable consumers' names: a partition's consumers are its holder's own, so that two
        #: processes that both think they hold it (one held up past its lease) never split one consumer's messages.
        self.consumer_tag = ""

    def _new_inputs(self) -> dict[str, _InputState]:
        return {i.kind: _InputState(i, expected=self.producers.get(i.kind, ())) for i in self.engine.inputs}

    async def start(self) -> None:
        positions = self._restore()
        self.engine.start(self.ctx)
        for state in self._inputs.values():
            consumer = f"{self.producer}-{state.spec.kind}" + (f"-{self.consumer_tag}" if self.consumer_tag else "")
            handler = self._handler(state)
            only = self.partition.name if self.partition is not None and state.spec.kind in self.split_inputs else None
            sub = await self.bus.subscribe(
                state.spec.kind, consumer, handler, resume_after=positions.get(state.spec.kind), partition=only
            )
            self._subscriptions.append(sub)
            self._subscription_of[state.spec.kind] = sub
        if self.state == pb.ENGINE_STATE_FAILED:
            return  # a batch delivered while it subscribed failed it: leave it failed (a watchdog restarts it)
        await self._set_state(pb.ENGINE_STATE_FINISHED if self._all_done() else pb.ENGINE_STATE_RUNNING)

    async def stop(self) -> None:
        for sub in self._subscriptions:
            await sub.close()
        async with self._lock:
            self._cancel_commit_later()
            if self._uncommitted:
                await self._commit(now=True)  # what it applied and the bus holds (and acks it); the rest comes again
        self._subscriptions.clear()
        self._subscription_of.clear()
        if self.state == pb.ENGINE_STATE_RUNNING:
            await self._set_state(pb.ENGINE_STATE_STOPPED)

    async def restart(self) -> None:
        """Run a failed (or stopped) engine again from its last committed checkpoint: its state as committed, and
        its inputs from the bus positions that state covers. Only a durable bus (JetStream) delivers again what
        came after them; on the in-process bus what the engine missed is gone, so restarting there is refused."""
        if not self.bus.durable:
            raise EngineFailure(f"{self.engine.name} cannot restart in place: the {self.bus.name} bus keeps nothing "
                                "to deliver again; restart the daemon (every engine resumes from its checkpoint)")  # fmt: skip
        if self.checkpointer is None or self.checkpointer.load(self.producer) is None:
            # Its state after the failed step is undefined, and there is no committed one to go back to.
            raise EngineFailure(f"{self.engine.name} cannot restart in place: it has no checkpoint yet")
        async with self._lock:
            for sub in self._subscriptions:
                await sub.close()
            self._subscriptions.clear()
            self._subscription_of.clear()
            self._inputs = self._new_inputs()
            self._joined = [s for s in self._inputs.values() if s.spec.mode is InputMode.JOINED]
            self._feedback = [s for s in self._inputs.values() if s.spec.mode is InputMode.FEEDBACK]
            self._emitted.clear()
            self._records.clear()
            self._dead.clear()
            self._unstored.clear()
            self._cancel_commit_later()
            self._uncommitted = False
            self._step = None
            self.through = NOTHING
            self._published_wm = dict.fromkeys(self._published_wm, NOTHING)
            self.last_error = ""
            self.state = pb.ENGINE_STATE_STARTING  # batches may arrive while it subscribes: take them
            self.finished = asyncio.Event()
            self.restarts += 1
        log.warning("%s: restarting from its last checkpoint (restart %d)", self.engine.name, self.restarts)
        await self.start()

    async def apply_commands(self, kind: str, frame: pl.DataFrame) -> None:
        """Apply command rows now, as if they had arrived on the bus (`utp replay` applies a session's commands
        where they took effect)."""
        async with self._lock:
            await self._on_batch(self._inputs[kind], Batch(kind, "replay", frame, None))

    def _handler(self, state: _InputState):  # noqa: ANN202 - a closure per input
        async def handle(batch: Batch) -> None:
            async with self._lock:
                await self._on_batch(state, batch)
            if batch.stored is not None and not batch.stored.done():
                # Outside the lock: the engine's other inputs step meanwhile (ensemble takes alpha's signals while
                # the features it stepped on are still being stored). This input takes nothing more before it is.
                await self._until_stored(batch)
                async with self._lock:
                    await self._commit()

        return handle

    async def _on_batch(self, state: _InputState, batch: Batch) -> None:
        if self.state == pb.ENGINE_STATE_FAILED:
            raise EngineFailure(f"{self.engine.name} has failed: {self.last_error}")
        if batch.only_position:
            # What lies before it was applied in process already; committed with the next step's checkpoint (a
            # crash before then resumes from the older position, and the rows delivered again are dropped).
            if batch.position is not None and batch.position > (state.position or 0):
                state.position = batch.position
            return
        self.events_in += batch.frame.height
        if self.engine.acts_outside:
            await self._until_stored(batch)
        try:
            if state.spec.mode is InputMode.COMMAND:
                key = ("command", state.spec.kind, *batch.frame["event_id"].to_list())
                if batch.frame.height and not self._dead_letter_if_exhausted(key, {state.spec.kind: batch.frame}):
                    self._step = (key, {})
                    self.engine.on_command(self.ctx, state.spec.kind, batch.frame)
                    self._step = None
                    await self.bus.record_applied(self.engine.name, state.spec.kind,
                                                  batch.frame["event_id"].to_list(), self.through)  # fmt: skip
            else:
                self._accept(state, batch)
                self._advance()
        except Exception as exc:
            self._count_failure(exc)
            raise await self._fail(f"on {batch.kind} from {batch.producer}", exc) from exc
        if batch.position is not None:
            state.position = batch.position
        try:
            await self._publish_dead_letters()
            await self._publish_outputs()
        except Exception as exc:
            raise await self._fail("publishing", exc) from exc
        # Its effects are committed only once the bus holds it: a batch handed over in process before the server
        # stored it is committed by its handler when it is (`_handler`).
        if batch.stored is not None and not batch.stored.done():
            self._unstored.append(batch.stored)
            return
        await self._until_stored(batch)
        await self._commit()

    async def _commit(self, *, now: bool = False) -> None:
        """Checkpoint the engine, unless it applied a batch the bus does not hold yet: the engine's state is committed
        only when everything it applied is stored, by whichever handler sees that last. A batch the bus failed to
        store fails its handler, and then the engine, so nothing is committed past it. With a
        `checkpoint_interval_s`, the commit is made that long after the first step it covers (`_commit_when_due`),
        unless `now` or the engine has processed its whole session."""
        if self.state == pb.ENGINE_STATE_FAILED:
            return
        if any(not f.done() or f.cancelled() or f.exception() is not None for f in self._unstored):
            return
        self._unstored.clear()
        if not now and self.checkpoint_interval_s > 0 and not self._all_done():
            self._uncommitted = True
            if self._commit_later is None:
                self._commit_later = asyncio.create_task(self._commit_when_due())
            return
        self._cancel_commit_later()  # this commit covers what it would have
        self._checkpoint()
        await self._publish_status()
        if self.state == pb.ENGINE_STATE_RUNNING and self._all_done():
            await self._set_state(pb.ENGINE_STATE_FINISHED)

    async def _commit_when_due(self) -> None:
        await asyncio.sleep(self.checkpoint_interval_s)
        async with self._lock:
            self._commit_later = None
            if not self._uncommitted:
                return
            try:
                # A batch applied meanwhile and not stored yet: its handler commits once it is.
                await self._commit(now=True)
            except Exception as exc:
                await self._fail("committing its checkpoint", exc)

    def _cancel_commit_later(self) -> None:
        if self._commit_later is not None:
            self._commit_later.cancel()
            self._commit_later = None

    async def _until_all_stored(self) -> None:
        """Wait until the bus holds every batch applied so far, so that a checkpoint now commits nothing unstored."""
        try:
            await asyncio.gather(*self._unstored)
        except Exception as exc:
            raise await self._fail("waiting for the bus to store what it applied", exc) from exc
        self._unstored.clear()

    async def _until_stored(self, batch: Batch) -> None:
        """Wait until the bus holds a batch handed over in process before it did (`Batch.stored`); fail if it never
        will."""
        if batch.stored is None:
            return
        try:
            await batch.stored
        except Exception as exc:
            raise await self._fail(f"waiting for the bus to store {batch.kind} from {batch.producer}", exc) from exc

    def _accept(self, state: _InputState, batch: Batch) -> None:
        if self.partition is not None and state.spec.kind not in self.split_inputs:
            # The partition's symbols only (the producer's watermark holds for them).
            batch = replace(batch, frame=self.partition.keep(batch.frame))
        state.producer(batch.producer).accept(batch)

    def _advance(self) -> None:
        for fb in self._feedback:
            rows = fb.take_all()
            if rows is not None:
                self.engine.on_step(self.ctx, self.through, {fb.spec.kind: rows})
        while True:
            frontier = min(s.watermark for s in self._joined)
            if frontier <= self.through:
                return
            if any(fb.watermark < self.through for fb in self._feedback):
                return
            target = frontier
            if self._feedback or self.through < self._narrow_until:
                # One step at a time: the next step needs the feedback this one will cause.
                next_times = [t for s in self._joined if (t := s.next_time()) is not None]
                if next_times:
                    target = min(frontier, min(next_times))
            frames: dict[str, pl.DataFrame] = {}
            for s in self._joined:
                head = s.take_through(target)
                if head is not None:
                    frames[s.spec.kind] = head
            if frames and not self._dead_letter_if_exhausted(("step", target), frames):
                self._step = (("step", target), frames)
                self.engine.on_step(self.ctx, target, frames)
                self._step = None
            self.through = target

    def _all_done(self) -> bool:
        return self.through == END and all(fb.watermark == END for fb in self._feedback)

    # -- dead letters ------------------------------------------------------------------------------
    def _count_failure(self, exc: BaseException) -> None:
        """Charge a failure to the step (or command batch) the engine was in; nothing when it failed elsewhere."""
        if self._step is None:
            return
        key, frames = self._step
        self._step = None
        entry = self._failures.setdefault(key, [0, ""])
        entry[0] += 1
        entry[1] = f"{type(exc).__name__}: {exc}"
        times = {t for f in frames.values() for t in (f[TIME][0], f[TIME][-1])} if frames else set()
        if len(times) > 1:
            self._narrow_until = max(self._narrow_until, key[1])

    def _dead_letter_if_exhausted(self, key: tuple, frames: Mapping[str, pl.DataFrame]) -> bool:
        """Whether this step's rows go to the dead letters (it failed max_deliveries times) instead of the engine."""
        entry = self._failures.get(key)
        if self.max_deliveries is None or entry is None or entry[0] < self.max_deliveries:
            return False
        for kind, rows in frames.items():
            self._dead.append(DeadLetter(self.engine.name, kind, rows, entry[1], entry[0]))
        log.error("%s: %d delivery(ies) of %s failed (%s); its rows go to the dead letters",
                  self.engine.name, entry[0], key, entry[1])  # fmt: skip
        return True

    async def _publish_dead_letters(self) -> None:
        """Durable before the checkpoint (and the ack) that passes over them."""
        while self._dead:
            letter = self._dead[0]
            await self.bus.dead_letter(letter)
            self._dead.pop(0)
            self.dead_lettered += letter.frame.height

    async def replay_dead_letter(self, kind: str, frame: pl.DataFrame, letter_id: str) -> bool:
        """Hand dead-lettered rows to the engine again (once it is fixed), now: commands as commands, other rows
        as late rows of the engine's current step. Returns False when this letter was replayed before (its effect
        is in the checkpoint). Raises EngineFailure when the engine fails on it again (it restarts from its
        checkpoint, which the replay never reached)."""
        if kind not in self._inputs:
            raise ValueError(f"{self.engine.name} does not take {kind}")
        async with self._lock:
            if letter_id in self._replayed:
                return False
            if self.state == pb.ENGINE_STATE_FAILED:
                raise EngineFailure(f"{self.engine.name} has failed: {self.last_error}")
            try:
                if self._inputs[kind].spec.mode is InputMode.COMMAND:
                    self.engine.on_command(self.ctx, kind, frame)
                else:
                    self.engine.on_step(self.ctx, self.through, {kind: frame})
            except Exception as exc:
                raise await self._fail(f"replaying a dead letter of {kind}", exc) from exc
            self._replayed.add(letter_id)
            try:
                await self._publish_outputs()
            except Exception as exc:
                raise await self._fail("publishing", exc) from exc
            await self._until_all_stored()
            self._checkpoint()
            return True

    async def _set_state(self, state: int) -> None:
        if state == pb.ENGINE_STATE_FINISHED and not self._finish_called:
            self._finish_called = True
            self.engine.finish(self.ctx)
            await self._publish_outputs()
            await self._until_all_stored()
            self._checkpoint()
        await super()._set_state(state)

    def _checkpoint(self) -> None:
        super()._checkpoint()
        self._uncommitted = False
        # Committed (or, with no checkpointer, done with): the bus may ack what was delivered up to the positions.
        for kind, state in self._inputs.items():
            sub = self._subscription_of.get(kind)
            if sub is not None and state.position is not None:
                sub.committed(state.position)

    def _output_watermark(self, kind: str) -> int:
        if kind in self.engine.feedback_outputs and self._feedback:
            return min(self.through, *(fb.watermark for fb in self._feedback))
        return self.through

    def _positions(self) -> dict[str, int]:
        return {k: s.position for k, s in self._inputs.items() if s.position is not None}

    def _runner_state(self) -> dict[str, Any]:
        state = super()._runner_state()
        state["inputs"] = {k: {name: (p.watermark, p.pending, p.early) for name, p in s.producers.items()}
                           for k, s in self._inputs.items()}  # fmt: skip
        state["finish_called"] = self._finish_called
        state["replayed"] = set(self._replayed)
        return state

    def _restore_runner_state(self, state: dict[str, Any]) -> None:
        super()._restore_runner_state(state)
        self._finish_called = state["finish_called"]
        self._replayed = set(state.get("replayed", ()))
        for kind, producers in state["inputs"].items():
            if kind not in self._inputs:
                continue
            if isinstance(producers, tuple):  # a checkpoint from before inputs kept their producers apart
                watermark, pending, *early = producers
                producers = {_UNNAMED: (watermark, pending, early[0] if early else None)}
            self._inputs[kind].producers = {name: _ProducerState(*p) for name, p in producers.items()}

    def _restore(self) -> dict[str, int]:
        positions = super()._restore()
        for kind, position in positions.items():
            if kind in self._inputs:
                self._inputs[kind].position = position
        return positions


class SourceRunner(_RunnerBase):
    """Runs a source engine: produce a batch, publish it, checkpoint, pace, repeat."""

    engine: SourceEngine
    _stopping = False

    async def start(self) -> None:
        self._restore()
        self.engine.start(self.ctx)
        await self._set_state(pb.ENGINE_STATE_RUNNING)

    async def run(self) -> None:
        """Produce until the source is exhausted (it sets `through_ns` to END) or `stop` is called."""
        engine = self.engine
        while not self._stopping and self.through != END:
            before = self.through
            try:
                more = engine.produce(self.ctx)
            except Exception as exc:
                raise await self._fail("producing", exc) from exc
            self.through = engine.through_ns if more else END
            if more:
                self.clock.observe(self.through)
            changed = bool(self._emitted or self._records) or self.through != before
            await self._publish_outputs()
            if changed:
                self._checkpoint()
            if self.checkpointer is not None:
                self.checkpointer.flush()
            await self._publish_status()
            if more:
                # Pacing, or at least a yield so gRPC and other tasks run between batches.
                await self.clock.sleep(engine.pace_seconds) if engine.pace_seconds > 0 else await asyncio.sleep(0)
        if self.through == END:
            await self._set_state(pb.ENGINE_STATE_FINISHED)

    def _output_watermark(self, kind: str) -> int:
        return self.through

    async def stop(self) -> None:
        self._stopping = True
        # Off the event loop: closing a live feed joins its streams' threads.
        await asyncio.to_thread(self.engine.close)
        if self.state == pb.ENGINE_STATE_RUNNING:
            await self._set_state(pb.ENGINE_STATE_STOPPED)
