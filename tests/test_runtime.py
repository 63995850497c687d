"""The engine runtime with toy engines: joins by time, feedback, commands, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import polars as pl
import pytest

from utp.core.batch import END, Batch
from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock
from utp.core.kinds import KINDS
from utp.core.partitions import Partition, partition_of, producers_of
from utp.core.runtime import Engine, EngineContext, EngineFailure, EngineRunner, Input, InputMode, SourceEngine, SourceRunner
from utp.v1 import events_pb2 as pb


def bars(times: list[int], symbol: str = "A") -> pl.DataFrame:
    return KINDS["bar"].to_frame(
        [pb.Bar(header=pb.EventHeader(event_id=f"bar/{symbol}@{t}", correlation_id=f"{symbol}@{t}", event_time_ns=t,
                                      symbol=symbol), close=float(t)) for t in times]  # fmt: skip
    )


def alphas(times: list[int]) -> pl.DataFrame:
    return KINDS["alpha_signal"].to_frame(
        [pb.AlphaSignal(header=pb.EventHeader(event_id=f"a/{t}", event_time_ns=t, symbol="A")) for t in times]
    )


class Recorder(Engine):
    """Records what it is handed; echoes each joined bar time as a scored signal."""

    name = "recorder"
    outputs = ("scored_signal",)

    def __init__(self, inputs: tuple[Input, ...], fail_at: int | None = None) -> None:
        self.inputs = inputs
        self.calls: list[tuple[int, dict[str, list[int]]]] = []
        self.commands: list[int] = []
        self.fail_at = fail_at

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        if self.fail_at is not None and through_ns >= self.fail_at:
            raise ZeroDivisionError("boom")
        self.calls.append((through_ns, {k: f["event_time_ns"].to_list() for k, f in frames.items()}))

    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        self.commands.append(frame.height)


async def started(engine: Engine, producers: dict[str, tuple[str, ...]] | None = None,
                  ) -> tuple[InProcessBus, EngineRunner, list[Batch]]:  # fmt: skip
    bus = InProcessBus()
    runner = EngineRunner(engine, bus, SimulatedClock(), producers=producers)
    await runner.start()
    published: list[Batch] = []

    async def record(batch: Batch) -> None:
        published.append(batch)

    for kind in engine.outputs:
        await bus.subscribe(kind, "test", record)
    return bus, runner, published


def test_joined_inputs_are_handed_over_only_when_both_are_complete() -> None:
    async def go() -> Recorder:
        engine = Recorder((Input("bar"), Input("alpha_signal")))
        bus, runner, _ = await started(engine)
        await bus.publish(Batch("bar", "p", bars([1, 2, 3]), 3))  # bars ahead
        assert engine.calls == []
        await bus.publish(Batch("alpha_signal", "p", alphas([1]), 1))
        await bus.publish(Batch("alpha_signal", "p", alphas([3]), 4))
        await bus.publish(Batch("bar", "p", bars([4]), END))
        await bus.publish(Batch("alpha_signal", "p", alphas([]), END))
        assert runner.state == pb.ENGINE_STATE_FINISHED
        return engine

    engine = asyncio.run(go())
    assert engine.calls == [
        (1, {"bar": [1], "alpha_signal": [1]}),
        (3, {"bar": [2, 3], "alpha_signal": [3]}),  # one call for everything complete through 3
        (4, {"bar": [4]}),
    ]


def test_feedback_inputs_gate_each_step_and_hold_back_their_outputs_watermark() -> None:
    class Stepper(Recorder):
        outputs = ("order", "fill")
        feedback_outputs = frozenset({"order"})

    async def go() -> tuple[Stepper, list[Batch]]:
        engine = Stepper((Input("bar"), Input("risk_decision", InputMode.FEEDBACK)))
        bus, runner, published = await started(engine)
        await bus.publish(Batch("bar", "p", bars([1, 2, 3]), 3))
        assert [c[0] for c in engine.calls] == [1]  # the first step needs no feedback; the next waits
        await bus.publish(Batch("risk_decision", "risk", KINDS["risk_decision"].empty_frame(), 1))
        assert [c[0] for c in engine.calls] == [1, 2]
        return engine, published

    engine, published = asyncio.run(go())
    marks = [(b.kind, b.through_ns) for b in published]
    assert ("fill", 1) in marks and ("fill", 2) in marks
    assert ("order", 1) in marks and ("order", 2) not in marks  # orders wait for the feedback of step 2


def test_rows_published_again_in_batches_cut_elsewhere_are_taken_once() -> None:
    # A producer restarted from an older checkpoint publishes again what it had published, cut into other
    # batches: rows at or before the watermark are caught by time, rows that were early by their event id.
    def decisions(times: list[int]) -> pl.DataFrame:
        return KINDS["risk_decision"].to_frame(
            [pb.RiskDecision(header=pb.EventHeader(event_id=f"d/{t}", event_time_ns=t, symbol="A")) for t in times]
        )

    async def go() -> Recorder:
        engine = Recorder((Input("bar"), Input("risk_decision", InputMode.FEEDBACK)))
        bus, runner, _ = await started(engine)
        await bus.publish(Batch("bar", "p", bars([1, 2, 3, 4]), 4))
        await bus.publish(Batch("risk_decision", "risk", decisions([1, 2]), 1))  # 2 is early
        await bus.publish(Batch("risk_decision", "risk", decisions([1, 2, 3]), 2))  # again, cut elsewhere
        await bus.publish(Batch("risk_decision", "risk", decisions([2, 3, 4]), 4))
        assert runner._inputs["risk_decision"].producers["risk"].early is None  # nothing is early once the watermark passed it
        return engine

    engine = asyncio.run(go())
    handed = [t for _, frames in engine.calls for t in frames.get("risk_decision", [])]
    assert handed == [1, 2, 3, 4]


class SymbolRecorder(Engine):
    """Records the (time, symbol) rows of each step."""

    name = "symbols"
    outputs = ("scored_signal",)
    inputs = (Input("bar"),)

    def __init__(self) -> None:
        self.steps: list[tuple[int, list[tuple[int, str]]]] = []

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        bar = frames["bar"]
        self.steps.append((through_ns, list(zip(bar["event_time_ns"].to_list(), bar["symbol"].to_list(), strict=True))))


def test_an_input_of_several_producers_steps_when_each_is_complete_in_one_order_whatever_arrives_first() -> None:
    # Two processes share the producing engine's symbols (partitions p0: A, p1: B), each with its own batches and
    # watermark; the consumer steps through a time once both have passed it, and takes each row once.
    def both(first: str) -> list[tuple[int, list[tuple[int, str]]]]:
        async def go() -> SymbolRecorder:
            engine = SymbolRecorder()
            bus, runner, _ = await started(engine, producers={"bar": ("f.p0", "f.p1")})
            batches = {"f.p0": Batch("bar", "f.p0", bars([1, 2], "A"), 2), "f.p1": Batch("bar", "f.p1", bars([1], "B"), 1)}
            await bus.publish(batches[first])
            assert engine.steps == []  # the other producer has said nothing yet
            await bus.publish(batches["f.p1" if first == "f.p0" else "f.p0"])
            await bus.publish(Batch("bar", "f.p1", bars([1, 2], "B"), 2))  # p1 restarted: its 1 again, cut elsewhere
            await bus.publish(Batch("bar", "f.p0", bars([3], "A"), END))
            assert runner.state == pb.ENGINE_STATE_RUNNING  # p1 is not done
            await bus.publish(Batch("bar", "f.p1", bars([3], "B"), END))
            assert runner.state == pb.ENGINE_STATE_FINISHED
            return engine

        return asyncio.run(go()).steps

    steps = both("f.p0")
    assert steps == [(1, [(1, "A"), (1, "B")]), (2, [(2, "A"), (2, "B")]), (END, [(3, "A"), (3, "B")])]
    assert both("f.p1") == steps


def test_partitions_are_merged_in_number_order_not_name_order() -> None:
    # "f.p10" sorts before "f.p2" as a string; a producer that splits its rows publishes p2 first.
    async def go() -> SymbolRecorder:
        engine = SymbolRecorder()
        bus, _, _ = await started(engine, producers={"bar": ("f.p10", "f.p2")})
        await bus.publish(Batch("bar", "f.p10", bars([1], "Z"), END))
        await bus.publish(Batch("bar", "f.p2", bars([1], "A"), END))
        return engine

    assert asyncio.run(go()).steps == [(END, [(1, "A"), (1, "Z")])]


class ListedSource(SourceEngine):
    """Publishes one prepared frame of bars per call."""

    name = "md"
    outputs = ("bar",)

    def __init__(self, frames: list[tuple[pl.DataFrame, int]]) -> None:
        self.frames = list(frames)

    def produce(self, ctx: EngineContext) -> bool:
        if not self.frames:
            return False
        frame, self.through_ns = self.frames.pop(0)
        ctx.emit("bar", frame)
        return True


def test_a_source_that_splits_its_bars_reaches_each_partition_with_its_own_rows_only() -> None:
    symbols = [f"S{i}" for i in range(12)]
    mine = {k: [s for s in symbols if partition_of(s, 3) == k] for k in range(3)}
    assert all(mine.values())
    frames = [(pl.concat([bars([t], s) for s in symbols]), t) for t in (1, 2, 3)]

    async def go() -> tuple[dict[int, SymbolRecorder], SymbolRecorder, dict[int, EngineRunner]]:
        bus = InProcessBus()
        parts = {k: SymbolRecorder() for k in range(3)}
        runners = {k: EngineRunner(parts[k], bus, SimulatedClock(), producers={"bar": (f"md.p{k}",)},
                                   partition=Partition(k, 3), split_inputs=("bar",)) for k in range(3)}  # fmt: skip
        whole = SymbolRecorder()
        runners[-1] = EngineRunner(whole, bus, SimulatedClock(), producers={"bar": producers_of("md", 3)})
        for runner in runners.values():
            await runner.start()
        source = SourceRunner(ListedSource(frames), bus, SimulatedClock(), split_outputs={"bar": 3})
        await source.start()
        await source.run()
        return parts, whole, runners

    parts, whole, runners = asyncio.run(go())
    for k, engine in parts.items():
        # Only its own rows ever reached it (nothing filtered out on arrival), and each bar time in its step.
        assert runners[k].events_in == 3 * len(mine[k])
        assert engine.steps == [(t, [(t, s) for s in mine[k]]) for t in (1, 2, 3)]
    # Whoever takes every partition steps once all are through, rows in partition order.
    in_order = [s for k in range(3) for s in mine[k]]
    assert whole.steps == [(t, [(t, s) for s in in_order]) for t in (1, 2, 3)]
    assert all(r.state == pb.ENGINE_STATE_FINISHED for r in runners.values())


def test_a_runner_splits_only_what_it_can() -> None:
    bus = InProcessBus()
    with pytest.raises(ValueError, match="cannot split 'rejected_bar'"):
        SourceRunner(ListedSource([]), bus, SimulatedClock(), split_outputs={"rejected_bar": 2})
    with pytest.raises(ValueError, match="one partition already"):
        SourceRunner(ListedSource([]), bus, SimulatedClock(), split_outputs={"bar": 2}, partition=Partition(0, 2))
    with pytest.raises(ValueError, match="not a partition"):
        EngineRunner(SymbolRecorder(), bus, SimulatedClock(), split_inputs=("bar",))


def test_a_checkpoint_from_before_inputs_kept_their_producers_apart_restores_to_the_first_producer() -> None:
    async def go() -> Recorder:
        engine = Recorder((Input("bar"),))
        bus, runner, _ = await started(engine)
        pending = bars([3])  # taken early, beyond the watermark 2
        legacy = (2, pending, pending.select("event_id", "event_time_ns"))
        runner._restore_runner_state({**runner._runner_state(), "inputs": {"bar": legacy}})
        runner.through = 2
        await bus.publish(Batch("bar", "md", bars([2, 3, 4]), 4))  # 2 and 3 were taken before the checkpoint
        return engine

    engine = asyncio.run(go())
    assert engine.calls == [(4, {"bar": [3, 4]})]


def test_a_fenced_runner_fails_instead_of_publishing() -> None:
    # A partition whose lease ran out while its process was held up: another process may hold it now.
    async def go() -> EngineRunner:
        bus, runner, _ = await started(Recorder((Input("bar"),)))
        runner.fence = lambda: "its lease of partition 0 ran out"
        with pytest.raises(EngineFailure, match="may not publish: its lease of partition 0 ran out"):
            await bus.publish(Batch("bar", "md", bars([1]), 1))
        return runner

    runner = asyncio.run(go())
    assert runner.state == pb.ENGINE_STATE_FAILED and runner.through == 1  # it stepped, and then stopped short


def test_commands_are_applied_on_arrival_and_never_wait() -> None:
    async def go() -> Recorder:
        engine = Recorder((Input("bar"), Input("control_command", InputMode.COMMAND)))
        bus, _, _ = await started(engine)
        command = pb.ControlCommand(header=pb.EventHeader(event_id="c/1"), action=pb.CONTROL_ACTION_HALT, sequence=1)
        await bus.publish(Batch("control_command", "core", KINDS["control_command"].to_frame([command]), None))
        return engine

    assert asyncio.run(go()).commands == [1]


def test_a_failing_engine_stops_says_why_and_publishes_its_state() -> None:
    async def go() -> tuple[EngineRunner, list[pb.EngineStatus]]:
        engine = Recorder((Input("bar"),), fail_at=2)
        bus, runner, _ = await started(engine)
        statuses: list[pb.EngineStatus] = []

        async def on_status(kind: str, messages: list) -> None:
            statuses.extend(messages)

        await bus.tap(on_status, lambda kind: kind == "engine_status")
        await bus.publish(Batch("bar", "p", bars([1]), 1))
        with pytest.raises(EngineFailure, match="ZeroDivisionError: boom"):
            await bus.publish(Batch("bar", "p", bars([2]), 2))
        with pytest.raises(EngineFailure, match="has failed"):
            await bus.publish(Batch("bar", "p", bars([3]), 3))  # it takes nothing more
        return runner, statuses

    runner, statuses = asyncio.run(go())
    assert runner.state == pb.ENGINE_STATE_FAILED and runner.through == 1
    assert statuses[-1].state == pb.ENGINE_STATE_FAILED and "boom" in statuses[-1].last_error


def test_an_engine_may_not_publish_into_the_past() -> None:
    class Liar(Engine):
        name = "liar"
        inputs = (Input("bar"),)
        outputs = ("feature_vector",)

        def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
            ctx.emit("feature_vector", KINDS["feature_vector"].empty_frame().vstack(
                pl.DataFrame({"event_id": ["f"], "correlation_id": ["c"], "event_time_ns": [0], "symbol": ["A"],
                              "feature_set_version": ["v"]})))  # fmt: skip

    async def go() -> None:
        bus, _, _ = await started(Liar())
        await bus.publish(Batch("bar", "p", bars([5]), 5))
        await bus.publish(Batch("bar", "p", bars([6]), 6))

    with pytest.raises(EngineFailure, match="not after its watermark"):
        asyncio.run(go())


class _Kept:
    """Checkpoints in memory."""

    def __init__(self) -> None:
        self.saved: list = []

    def load(self, engine: str):  # noqa: ANN201
        return self.saved[-1] if self.saved else None

    def save(self, checkpoint) -> None:  # noqa: ANN001
        self.saved.append(checkpoint)

    def flush(self) -> None:
        pass


def test_a_batch_handed_over_before_the_bus_stored_it_is_committed_only_once_stored() -> None:
    """In process, JetStream hands a batch to consumers as it is published (Batch.stored); the runner steps on it at
    once but checkpoints only once the server has stored it, and fails, committing nothing, if it never does."""

    async def go() -> None:
        engine = Recorder((Input("bar"),))
        kept = _Kept()
        bus = InProcessBus()
        runner = EngineRunner(engine, bus, SimulatedClock(), kept)
        await runner.start()
        before = len(kept.saved)
        loop = asyncio.get_running_loop()

        stored = loop.create_future()
        handing = asyncio.create_task(bus.publish(Batch("bar", "p", bars([1]), 1, stored=stored)))
        await asyncio.sleep(0.05)
        assert engine.calls == [(1, {"bar": [1]})] and len(kept.saved) == before  # stepped, not committed
        stored.set_result(None)
        await handing
        assert len(kept.saved) == before + 1 and kept.saved[-1].positions == {}  # no stream position moved

        lost = loop.create_future()
        handing = asyncio.create_task(bus.publish(Batch("bar", "p", bars([2]), 2, stored=lost)))
        await asyncio.sleep(0.05)
        lost.set_exception(RuntimeError("the server never acked it"))
        with pytest.raises(EngineFailure, match="waiting for the bus to store bar from p"):
            await handing
        assert runner.state == pb.ENGINE_STATE_FAILED and len(kept.saved) == before + 1

        # An engine that acts outside the process (orders to a broker) steps only once the batch is stored.
        cautious = Recorder((Input("bar"),))
        cautious.acts_outside = True
        runner3 = EngineRunner(cautious, InProcessBus(), SimulatedClock(), _Kept())
        await runner3.start()
        later = loop.create_future()
        handing = asyncio.create_task(runner3._on_batch(runner3._inputs["bar"], Batch("bar", "p", bars([1]), 1, stored=later)))
        await asyncio.sleep(0.05)
        assert cautious.calls == []
        later.set_result(None)
        await handing
        assert cautious.calls == [(1, {"bar": [1]})]

        # The bus's word that the position may move: recorded, committed with the next checkpoint, not a step.
        runner2 = EngineRunner(Recorder((Input("bar"),)), InProcessBus(), SimulatedClock(), _Kept())
        await runner2.start()
        state = runner2._inputs["bar"]
        await runner2._on_batch(state, Batch("bar", "", pl.DataFrame(), None, 41, only_position=True))
        assert state.position == 41 and runner2.events_in == 0 and runner2.engine.calls == []
        await runner2._on_batch(state, Batch("bar", "", pl.DataFrame(), None, 40, only_position=True))
        assert state.position == 41  # never back

    asyncio.run(go())


def test_an_engine_takes_its_other_inputs_while_a_batch_it_applied_waits_to_be_stored() -> None:
    """Ensemble steps on alpha's signals while the feature vectors it took in process are still being stored: a
    batch waiting for the bus holds up the engine's other inputs (it used to hold the engine's lock), never its
    commit: the checkpoint waits for every batch it applied, and a batch never stored fails the engine unsaved."""

    async def go() -> None:
        engine = Recorder((Input("bar"), Input("alpha_signal")))
        kept = _Kept()
        runner = EngineRunner(engine, InProcessBus(), SimulatedClock(), kept)
        await runner.start()
        on_bar, on_alpha = runner._handler(runner._inputs["bar"]), runner._handler(runner._inputs["alpha_signal"])
        before = len(kept.saved)
        loop = asyncio.get_running_loop()

        bar_stored, alpha_stored = loop.create_future(), loop.create_future()
        bar = asyncio.create_task(on_bar(Batch("bar", "p", bars([1]), 1, stored=bar_stored)))
        await asyncio.sleep(0.05)
        alpha = asyncio.create_task(on_alpha(Batch("alpha_signal", "p", alphas([1]), 1, stored=alpha_stored)))
        await asyncio.sleep(0.05)
        assert engine.calls == [(1, {"bar": [1], "alpha_signal": [1]})]  # stepped, the bar still unstored
        alpha_stored.set_result(None)
        await alpha
        assert len(kept.saved) == before and not bar.done()  # the bar it applied is not stored yet
        bar_stored.set_result(None)
        await bar
        assert len(kept.saved) == before + 1

        bar_lost, alpha_stored = loop.create_future(), loop.create_future()
        bar = asyncio.create_task(on_bar(Batch("bar", "p", bars([2]), 2, stored=bar_lost)))
        alpha = asyncio.create_task(on_alpha(Batch("alpha_signal", "p", alphas([2]), 2, stored=alpha_stored)))
        await asyncio.sleep(0.05)
        assert engine.calls[-1] == (2, {"bar": [2], "alpha_signal": [2]})
        bar_lost.set_exception(RuntimeError("the server never acked it"))
        alpha_stored.set_result(None)
        with pytest.raises(EngineFailure, match="waiting for the bus to store bar from p"):
            await bar
        await alpha
        assert runner.state == pb.ENGINE_STATE_FAILED and len(kept.saved) == before + 1  # nothing past the lost bar

    asyncio.run(go())


def test_a_runner_commits_a_checkpoint_interval_after_the_steps_it_covers_on_stop_and_at_the_end() -> None:
    """On JetStream an engine's state is committed `checkpoint_interval_s` after the first step not committed yet,
    with every step applied meanwhile (after a bar time's steps, not between them), what is left when the runner
    stops, and the session's end at once. An engine that `commits_every_step` (execution with a real broker) commits
    after each step all the same."""

    def through(checkpoint) -> int:  # noqa: ANN001
        import pickle

        return pickle.loads(checkpoint.state)["runner"]["through"]

    async def three_steps(engine: Recorder, interval_s: float) -> tuple[InProcessBus, EngineRunner, _Kept, int]:
        """A runner with `interval_s` that has stepped on bars 1, 2 and 3; the commits made before them."""
        kept = _Kept()
        bus = InProcessBus()
        runner = EngineRunner(engine, bus, SimulatedClock(), kept, checkpoint_interval_s=interval_s)
        await runner.start()
        before = len(kept.saved)
        for t in (1, 2, 3):
            await bus.publish(Batch("bar", "p", bars([t]), t))
        return bus, runner, kept, before

    async def go() -> None:
        bus, runner, kept, before = await three_steps(Recorder((Input("bar"),)), 0.3)
        await asyncio.sleep(0.15)
        assert len(kept.saved) == before  # not yet
        await asyncio.sleep(0.3)
        assert len(kept.saved) == before + 1 and through(kept.saved[-1]) == 3  # the three steps in one commit
        await asyncio.sleep(0.35)
        assert len(kept.saved) == before + 1  # nothing new: nothing committed again
        await bus.publish(Batch("bar", "p", bars([4]), 4))
        await bus.publish(Batch("bar", "p", bars([]), END))
        assert through(kept.saved[-1]) == END and runner.state == pb.ENGINE_STATE_FINISHED  # the end: at once
        assert runner._commit_later is None
        committed = len(kept.saved)
        await asyncio.sleep(0.35)
        assert len(kept.saved) == committed  # the step at 4 was in the end's commit: no commit comes later

        _, runner2, kept2, before = await three_steps(Recorder((Input("bar"),)), 30.0)
        assert len(kept2.saved) == before
        await runner2.stop()
        assert through(kept2.saved[-1]) == 3 and runner2._commit_later is None  # stopping commits what is left

        careful = Recorder((Input("bar"),))
        careful.commits_every_step = True
        _, _, kept3, before = await three_steps(careful, 30.0)
        assert len(kept3.saved) == before + 3 and through(kept3.saved[-1]) == 3

    asyncio.run(go())
