"""The same engine graph on a real NATS JetStream server: parity with the in-process bus, resuming after a
crash, and quarantine of malformed messages."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from utp.core.clock import WallClock
from utp.core.config import Config, load_config
from utp.core.controls import ControlState
from utp.core import wire
from utp.core.jetstream import JetStreamBus
from utp.core.kinds import KINDS
from utp.core.bus import InProcessBus
from utp.core.runtime import Checkpointer, EngineFailure
from utp.daemon.watchdog import Alert, Check, Watchdogs, failed_engines, restart_failed_engines
from utp.daemon.session import Session
from utp.storage.state import ImmediateCheckpointer, StateStore
from utp.v1 import events_pb2 as pb
from tests.test_graph import order_log, run

GOOG = {"market_data.dataset": "goog", "market_data.end": "2006-06-30", "risk.max_position_pct": 0.95,
        "market_data.replay_rate": 0}  # fmt: skip
SP500 = {"market_data.dataset": "sp500", "market_data.symbols": ["AAPL", "JPM", "XOM"],
         "market_data.start": "2005-01-01", "market_data.end": "2006-12-31", "risk.max_position_pct": 0.3,
         "market_data.replay_rate": 0}  # fmt: skip


def config(overrides: dict, batch: int) -> Config:
    return load_config(environ={}, overrides={**overrides, "market_data.batch_bar_times": batch})


async def jetstream_session(
    cfg: Config, url: str, stream: str, root: str, checkpointer: Checkpointer | None = None
) -> Session:
    bus = JetStreamBus(url, stream=stream, subject_root=root)
    await bus.connect()
    session = Session(
        cfg, bus=bus, clock=WallClock(), controls=ControlState(execution_approved=True),
        checkpointer=checkpointer, collect_results=True,
    )  # fmt: skip
    await session.start()
    return session


@pytest.mark.parametrize(("overrides", "batch"), [(GOOG, 1), (SP500, 5)], ids=["goog-batch1", "sp500-batch5"])
def test_parity_in_process_and_jetstream(nats_url: str, stream_names: tuple[str, str], overrides: dict, batch: int) -> None:
    cfg = config(overrides, batch)
    reference = order_log(run(cfg))
    assert len(reference) > 10

    async def go() -> list[bytes]:
        session = await jetstream_session(cfg, nats_url, *stream_names)
        try:
            await asyncio.wait_for(session.run(), 240)
            return order_log(session)
        finally:
            await session.stop()
            await session.bus.close()

    assert asyncio.run(go()) == reference


def test_a_crashed_session_resumes_from_its_commits_without_loss_or_duplicates(
    nats_url: str, stream_names: tuple[str, str], tmp_path: Path
) -> None:
    cfg = config(GOOG, 1)
    reference = run(cfg)

    async def crash_midway() -> None:
        store = StateStore(tmp_path / "state", fsync=False)
        session = await jetstream_session(cfg, nats_url, *stream_names, ImmediateCheckpointer(store))
        source = asyncio.create_task(session.source_runner.run())
        while session.source.next_batch < session.source.batches_total // 2:
            await asyncio.sleep(0.01)
        # Crash: the connection drops and every task dies wherever it was, committed or not.
        await session.bus._nc.close()
        source.cancel()
        for task in asyncio.all_tasks():
            if task.get_name().startswith("consume-"):
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await source
        store.close()

    async def restart() -> Session:
        store = StateStore(tmp_path / "state", fsync=False)
        session = await jetstream_session(cfg, nats_url, *stream_names, ImmediateCheckpointer(store))
        assert session.source.next_batch > 0, "the source should resume from its checkpoint"
        try:
            await asyncio.wait_for(session.run(), 240)
        finally:
            await session.stop()
            await session.bus.close()
            store.close()
        return session

    asyncio.run(crash_midway())
    resumed = asyncio.run(restart())
    # The restarted collector saw the whole stream from the start of its consumer: every order once.
    expected_orders = [o for o in reference.collector.order_events]
    got = resumed.collector
    assert [o.SerializeToString() for o in got.order_events] == [o.SerializeToString() for o in expected_orders]
    assert [f.SerializeToString() for f in got.fills] == [f.SerializeToString() for f in reference.collector.fills]
    assert got.result.summary.final_equity == reference.collector.result.summary.final_equity


def test_malformed_messages_are_quarantined_and_the_run_goes_on(nats_url: str, stream_names: tuple[str, str]) -> None:
    cfg = config(GOOG, 50)
    reference = order_log(run(cfg))
    stream, root = stream_names
    quarantined: list[tuple[str, str]] = []

    async def go() -> list[bytes]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root,
                           quarantine=lambda subject, data, reason: quarantined.append((subject, reason)))  # fmt: skip
        await bus.connect()
        js = bus._js
        await js.publish(f"{root}.bar._batch", b"\xff\x00garbage", headers={"Nats-Msg-Id": "garbage-1"})
        lone = pb.Bar(header=pb.EventHeader(event_id="bar/GOOG@1", correlation_id="GOOG@1", event_time_ns=1,
                                            symbol="GOOG"), open=1, high=1, low=1, close=1, volume=1)  # fmt: skip
        await js.publish(f"{root}.bar.GOOG", lone.SerializeToString(), headers={"Nats-Msg-Id": "lone"})
        # A part of a batch whose watermark comes with the first real one: its unknown symbol must not stop it.
        stranger = KINDS["bar"].to_frame([pb.Bar(header=pb.EventHeader(
            event_id="bar/ZZZ@1", correlation_id="ZZZ@1", event_time_ns=1, symbol="ZZZ"), open=1, high=1, low=1,
            close=1, volume=1)])  # fmt: skip
        await js.publish(f"{root}.bar._batch", wire.to_event_batch(KINDS["bar"], stranger).SerializeToString(),
                         headers={"Nats-Msg-Id": "stranger"})  # fmt: skip
        columns_missing = pb.EventBatch(kind=pb.EVENT_KIND_BAR, rows=1)
        await js.publish(f"{root}.bar._batch", columns_missing.SerializeToString(), headers={"Nats-Msg-Id": "no-cols"})
        session = Session(cfg, bus=bus, clock=WallClock(), controls=ControlState(execution_approved=True),
                          collect_results=True)  # fmt: skip
        await session.start()
        try:
            await asyncio.wait_for(session.run(), 240)
            features = next(r for r in session.runners if r.engine.name == "features")
            assert features.events_rejected == 1  # the ZZZ bar: counted and dropped, not indexed
            return order_log(session)
        finally:
            await session.stop()
            await bus.close()

    assert asyncio.run(go()) == reference
    reasons = [reason for _, reason in quarantined]
    assert any("not a usable EventBatch: Error parsing" in r for r in reasons)
    assert any("a single event of a kind with watermarks" in r for r in reasons)
    assert any("bar batch lacks columns" in r for r in reasons)


def test_a_failed_engine_restarts_from_its_checkpoint_and_the_orders_do_not_change(
    nats_url: str, stream_names: tuple[str, str], tmp_path: Path
) -> None:
    # The engines watchdog's recovery on JetStream: risk fails once mid-run (a transient fault injected into its
    # step), the watchdog restarts it from its last committed checkpoint, the stream delivers again what came
    # after, and the session places exactly the orders of an undisturbed run.
    cfg = config(GOOG, 1)
    reference = order_log(run(cfg))

    async def go() -> tuple[list[bytes], int, list[Alert]]:
        store = StateStore(tmp_path / "state", fsync=False)
        session = await jetstream_session(cfg, nats_url, *stream_names, ImmediateCheckpointer(store))
        risk = next(r for r in session.runners if r.engine.name == "risk")
        step, steps = risk.engine.on_step, [0]

        def flaky_step(*args: object) -> None:
            steps[0] += 1
            if steps[0] == 200:
                raise OSError("transient fault: the step's disk read timed out")
            step(*args)

        risk.engine.on_step = flaky_step  # type: ignore[method-assign]
        alerts: list[Alert] = []
        runners = lambda: session.runners  # noqa: E731
        watchdogs = Watchdogs([Check("engines", failed_engines(runners), restart_failed_engines(runners),
                                     interval_s=0.2)], alerts.append)  # fmt: skip
        watching = asyncio.create_task(watchdogs.run_forever())
        try:
            await asyncio.wait_for(session.run(), 240)
            return order_log(session), risk.restarts, alerts
        finally:
            watching.cancel()
            await session.stop()
            await session.bus.close()
            store.close()

    orders, restarts, alerts = asyncio.run(go())
    assert restarts == 1
    assert alerts[0].severity == "critical" and "transient fault" in alerts[0].message
    assert alerts[0].action == "restarted risk from the last checkpoint"
    assert alerts[-1].resolved
    assert orders == reference


def test_an_engine_on_the_in_process_bus_refuses_to_restart_in_place() -> None:
    async def go() -> str:
        session = Session(config(GOOG, 1), bus=InProcessBus(), clock=WallClock(), controls=ControlState(),
                          collect_results=True)  # fmt: skip
        await session.start()
        risk = next(r for r in session.runners if r.engine.name == "risk")
        with pytest.raises(EngineFailure, match="in_process bus keeps nothing to deliver again") as refused:
            await risk.restart()
        return str(refused.value)

    assert "restart the daemon" in asyncio.run(go())


def test_a_consumer_told_to_stop_as_a_message_arrives_stops() -> None:
    # A message and the cancellation landing in the same turn of the loop: asyncio.wait_for (Python 3.11) returned
    # the message and dropped the cancellation, and the consumer pulled on for ever (a daemon that would not stop).
    from collections import deque

    from utp.core.jetstream import _ContinuousPull

    async def go() -> bool:
        pull = _ContinuousPull.__new__(_ContinuousPull)  # only its arrivals: no connection needed
        pull.arrived, pull.local, pull.wake = deque(), deque(), asyncio.Event()
        waiting = asyncio.create_task(pull._next_arrival(5.0))
        await asyncio.sleep(0.01)
        pull.arrived.append("a message")
        pull.wake.set()
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(go()), "the cancellation was swallowed"


def test_a_publish_the_server_never_acks_fails_instead_of_waiting_for_ever(nats_url: str, stream_names) -> None:  # noqa: ANN001
    # A stream that acks nothing stands for a connection that lost the messages: the engine's publish must end.
    import dataclasses

    from utp.core.batch import Batch
    from utp.core.jetstream import PublishNotAcked

    stream, root = stream_names

    async def go() -> None:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root, ack_timeout_s=0.5)
        await bus.connect()
        try:
            info = await bus._js.stream_info(stream)
            await bus._js.update_stream(dataclasses.replace(info.config, no_ack=True))
            frame = KINDS["bar"].to_frame([pb.Bar(header=pb.EventHeader(event_id="b/1", event_time_ns=1, symbol="A"))])
            with pytest.raises(PublishNotAcked, match="acked 0 of 1 messages within 0.5 s"):
                await bus.publish(Batch("bar", "md", frame, 1))
        finally:
            await bus.close()

    asyncio.run(go())


def test_the_server_deletes_consumers_nobody_pulls_from_and_a_new_one_resumes_at_the_commit(
    nats_url: str, stream_names: tuple[str, str]
) -> None:
    """Durable consumers of a process that died (a partition holder's carry its id) do not pile up on the server:
    it deletes one idle for `consumer_inactive_s`; one created again starts after the position the engine
    committed, so nothing is lost by it."""
    import nats.js.errors

    from utp.core.batch import Batch
    from tests.test_runtime import bars

    stream, root = stream_names

    async def go() -> tuple[bool, list[int]]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root, consumer_inactive_s=1.0)
        await bus.connect()
        try:
            got: list[int] = []

            async def keep(batch: Batch) -> None:
                got.extend(batch.frame["event_time_ns"].to_list())

            sub = await bus.subscribe("bar", "holder-bar-dead", keep)
            await bus.publish(Batch("bar", "md", bars([1]), 1))
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
            committed = await bus.last_sequence()
            await sub.close()  # the holder is gone: nobody pulls
            deleted = False
            for _ in range(40):
                await asyncio.sleep(0.25)
                try:
                    await bus.js.consumer_info(stream, "holder-bar-dead")
                except nats.js.errors.NotFoundError:
                    deleted = True
                    break
            await bus.publish(Batch("bar", "md", bars([2]), 2))
            await bus.subscribe("bar", "holder-bar-dead", keep, resume_after=committed)
            for _ in range(100):
                if len(got) > 1:
                    break
                await asyncio.sleep(0.05)
            return deleted, got
        finally:
            await bus.close()

    deleted, got = asyncio.run(go())
    assert deleted
    assert got == [1, 2]


def test_a_tap_is_sent_only_the_kinds_it_wants_and_takes_more_once_refreshed(nats_url: str, stream_names) -> None:  # noqa: ANN001
    """The server sends a tap the kinds it wants, not every subject: a process that publishes bars and feature vectors
    and taps its risk decisions no longer reads its own bars back. A watcher asking for more is served once the tap is
    refreshed."""
    from utp.core.batch import Batch
    from tests.test_runtime import bars

    stream, root = stream_names
    wanted = {"risk_decision"}
    seen: list[str] = []

    async def go() -> tuple[int, int]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        await bus.connect()

        async def watch(kind: str, messages: list) -> None:
            seen.extend(kind for _ in messages)

        tap = await bus.tap(watch, lambda kind: kind in wanted)
        many = bars(list(range(1, 2001)))
        before = bus._nc.stats["in_bytes"]
        await bus.publish(Batch("bar", "md", many, 2000))
        await asyncio.sleep(0.5)
        not_sent = bus._nc.stats["in_bytes"] - before  # the acks only

        wanted.add("bar")
        await tap.refresh()
        await bus.publish(Batch("bar", "md", bars([2001, 2002]), 2002))
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        await bus.close()
        return not_sent, len(next(wire.parts(KINDS["bar"], many, 1 << 30)))

    not_sent, size = asyncio.run(go())
    assert not_sent < size / 10, f"{not_sent} bytes came back for a {size}-byte batch nobody tapped"
    assert seen == ["bar", "bar"]


def test_nothing_is_acked_before_the_engine_has_committed_its_effects(nats_url: str, stream_names) -> None:  # noqa: ANN001
    """An engine commits its checkpoint `checkpoint_interval_s` after the steps it covers; the server's ack of what
    it consumed waits for that commit (AckPolicy.ALL, through the committed position), and follows it."""
    from utp.core.batch import Batch
    from utp.core.runtime import EngineRunner, Input
    from tests.test_runtime import Recorder, _Kept, bars

    stream, root = stream_names

    async def go() -> tuple[list[int], list[int]]:
        producer = JetStreamBus(nats_url, stream=stream, subject_root=root, deliver_in_process=False)
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root, deliver_in_process=False)
        await producer.connect()
        await bus.connect()
        try:
            engine = Recorder((Input("bar"),))
            kept = _Kept()
            runner = EngineRunner(engine, bus, WallClock(), kept, checkpoint_interval_s=1.0)
            runner.producer = engine.name = "acker"
            await runner.start()
            for t in (1, 2, 3):
                await producer.publish(Batch("bar", "md", bars([t]), t))
            for _ in range(100):
                if len(engine.calls) == 3:
                    break
                await asyncio.sleep(0.02)
            floors = []  # the server's ack floor: before the commit, then after it
            info = await bus.js.consumer_info(stream, "acker-bar")
            floors.append(info.ack_floor.stream_seq)
            committed_before = [c.positions.get("bar", 0) for c in kept.saved]
            await asyncio.sleep(1.5)
            info = await bus.js.consumer_info(stream, "acker-bar")
            floors.append(info.ack_floor.stream_seq)
            await runner.stop()
            return floors, committed_before + [kept.saved[-1].positions["bar"]]
        finally:
            await bus.close()
            await producer.close()

    floors, committed = asyncio.run(go())
    assert floors[0] <= max(committed[:-1], default=0)  # applied, not committed: not acked
    assert floors[0] < committed[-1] and floors[1] == committed[-1]  # committed through the third bar: acked
