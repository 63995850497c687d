"""The columnar wire form of batches (`EventBatch`): lossless for every kind, split into parts the same way every
time, refused with the reason when malformed; and over JetStream, a batch of several parts arrives as one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest

from utp.core import wire
from utp.core.batch import Batch
from utp.core.jetstream import JetStreamBus
from utp.core.kinds import KINDS, kind
from utp.v1 import events_pb2 as pb
from tests.test_contracts import _sample


def _frame(name: str) -> pl.DataFrame:
    """Two events with every field set and one with nothing but a header (null optionals, empty lists)."""
    k = kind(name)
    messages = [_sample(k.message(), seed) for seed in (1, 2)]
    bare = k.message(header=pb.EventHeader(event_id="bare", event_time_ns=5, symbol="ZZZ"))
    if name == "feature_vector":
        for m in (*messages, bare):  # the wide frame form needs the same feature names in a batch
            del m.names[:], m.values[:]
            m.names.extend(["a", "b"])
            m.values.extend([1.5, -2.0])
    return k.to_frame([*messages, bare])


def _round_trip(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    data = wire.to_event_batch(kind(name), frame).SerializeToString()
    return wire.to_frame(pb.EventBatch.FromString(data))


@pytest.mark.parametrize("name", sorted(n for n, k in KINDS.items() if k.watermarked))
def test_every_watermarked_kind_crosses_the_wire_unchanged(name: str) -> None:
    frame = _frame(name)
    back = _round_trip(name, frame)
    assert back.schema == frame.schema and back.equals(frame)
    assert kind(name).to_messages(back) == kind(name).to_messages(frame)  # nulls stay unset, lists keep length
    empty = kind(name).empty_frame()
    assert _round_trip(name, empty).schema == empty.schema and _round_trip(name, empty).height == 0


def test_a_nested_column_with_null_and_empty_rows_keeps_them_apart() -> None:
    frame = _frame("scored_signal")
    assert frame["components"].list.len().to_list() == [2, 2, 0]
    back = _round_trip("scored_signal", frame)
    assert back["components"].list.len().to_list() == [2, 2, 0]
    assert back["components"][0].to_list() == frame["components"][0].to_list()


def _bars(n: int, width: int = 16) -> pl.DataFrame:
    k = kind("bar")
    symbols = [f"S{i:0{width}d}" for i in range(n)]
    return pl.DataFrame({
        "event_id": [f"bar/{s}@7" for s in symbols], "correlation_id": [f"{s}@7" for s in symbols],
        "event_time_ns": np.full(n, 7, np.int64), "symbol": symbols,
        "open": np.arange(n, dtype=float), "high": np.arange(n, dtype=float) + 1, "low": np.arange(n, dtype=float),
        "close": np.arange(n, dtype=float) + 0.5, "volume": np.full(n, 100.0), "interval_ns": np.full(n, 60, np.int64),
    }, schema=k.schema)  # fmt: skip


def test_a_large_batch_goes_in_parts_within_the_budget_and_always_the_same_parts() -> None:
    frame = _bars(3000)
    parts = list(wire.parts(kind("bar"), frame, 1 << 14))
    assert len(parts) > 1 and all(len(p) <= 1 << 14 for p in parts)
    assert parts == list(wire.parts(kind("bar"), frame, 1 << 14))  # the same ids when re-published
    joined = pl.concat([wire.to_frame(pb.EventBatch.FromString(p)) for p in parts])
    assert joined.equals(frame)
    # Rows far longer than the schema suggests: parts are halved until they fit.
    long = _bars(400, width=3000)
    assert all(len(p) <= 1 << 16 for p in wire.parts(kind("bar"), long, 1 << 16))
    # The last part carries the watermark, set without decoding the columns again.
    mark = pb.Watermark(kind=pb.EVENT_KIND_BAR, producer="md", through_time_ns=7, event_count=3000)
    last = pb.EventBatch.FromString(wire.with_watermark(parts[-1], len(parts) - 1, mark))
    assert last.part == len(parts) - 1 and last.watermark == mark and last.rows == wire.to_frame(last).height


def _batch_of(frame: pl.DataFrame) -> pb.EventBatch:
    return wire.to_event_batch(kind("bar"), frame)


@pytest.mark.parametrize(("spoil", "reason"), [
    (lambda b: b.columns[4].ClearField("doubles") or b.columns[4].int64s.values.extend([1, 2, 3]),
     "column bar.open holds doubles, sent as int64s"),
    (lambda b: b.columns[5].doubles.values.append(1.0), "column bar.high has 4 entries for 3 rows"),
    (lambda b: b.columns[6].valid.extend([True]), "column bar.low has 1 validity entries for 3 rows"),
    (lambda b: b.columns.pop(), "bar batch lacks columns ['interval_ns']"),
    (lambda b: b.columns.add(name="colour").strings.values.extend(["a", "b", "c"]),
     "bar batch has columns its kind does not: ['colour']"),
    (lambda b: b.columns.append(b.columns[0]), "bar batch repeats a column"),
    (lambda b: setattr(b, "kind", 999), "unknown event kind 999"),
    (lambda b: setattr(b, "rows", -1), "negative row count -1"),
])  # fmt: skip
def test_a_malformed_batch_is_refused_with_the_reason(spoil, reason: str) -> None:  # noqa: ANN001
    batch = _batch_of(_bars(3))
    spoil(batch)
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        wire.to_frame(pb.EventBatch.FromString(batch.SerializeToString()))


def test_malformed_nested_columns_and_features_are_refused() -> None:
    batch = wire.to_event_batch(kind("scored_signal"), _frame("scored_signal"))
    components = next(c for c in batch.columns if c.name == "components")
    components.lists.offsets[1] = 9
    with pytest.raises(ValueError, match="list column scored_signal.components has bad offsets"):
        wire.to_frame(batch)
    features = wire.to_event_batch(kind("feature_vector"), _frame("feature_vector"))
    features.columns.add(name="c").strings.values.extend(["x", "y", "z"])
    with pytest.raises(ValueError, match="column feature_vector.c holds doubles, sent as strings"):
        wire.to_frame(features)


def test_a_batch_of_several_parts_arrives_whole_and_once(nats_url: str, stream_names: tuple[str, str]) -> None:
    stream, root = stream_names
    frame = _bars(20_000)

    async def go() -> tuple[list[Batch], int, int]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        await bus.connect()
        try:
            got: list[Batch] = []

            async def keep(batch: Batch) -> None:
                got.append(batch)

            await bus.subscribe("bar", "reader", keep)
            await bus.publish(Batch("bar", "md", frame, 7))
            stored = await bus.last_sequence()
            await bus.publish(Batch("bar", "md", frame, 7))  # re-published after a crash: dropped by the server
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.05)
            return got, stored, await bus.last_sequence()
        finally:
            await bus.close()

    got, stored, after = asyncio.run(go())
    assert stored > 1 and after == stored  # several parts, none stored twice
    (batch,) = got
    assert batch.frame.equals(frame) and batch.through_ns == 7 and batch.producer == "md"


def _at(frame: pl.DataFrame, t: int) -> pl.DataFrame:
    """`frame`'s rows at bar time `t`, with ids of their own."""
    return frame.with_columns(event_time_ns=pl.lit(t, pl.Int64), event_id=pl.col("event_id") + f"/{t}")


async def _read_backlog(nats_url: str, stream_names: tuple[str, str], backlog: list[Batch],
                        done: Callable[[list[Batch]], object], **bus_options: int) -> list[Batch]:
    """What a consumer that subscribes after all of `backlog` was stored is handed, once `done` says so (or 20 s)."""
    stream, root = stream_names
    bus = JetStreamBus(nats_url, stream=stream, subject_root=root, **bus_options)
    await bus.connect()
    try:
        for batch in backlog:
            await bus.publish(batch)
        got: list[Batch] = []

        async def keep(batch: Batch) -> None:
            got.append(batch)

        await bus.subscribe("bar", "reader", keep)
        for _ in range(400):
            if done(got):
                break
            await asyncio.sleep(0.05)
        return got
    finally:
        await bus.close()


@pytest.mark.parametrize(("rows", "batches", "largest"), [(450, 16, 400), (50_000, 3, 300)])
def test_a_backlog_reaches_a_consumer_in_fewer_larger_batches_never_across_producers(
    nats_url: str, stream_names: tuple[str, str], rows: int, batches: int, largest: int
) -> None:
    frame = _bars(100)
    sent = [("md" if i % 7 else "other", i) for i in range(1, 43)]  # a batch per bar time; "other" now and then
    backlog = [Batch("bar", producer, _at(frame, t), t) for producer, t in sent]
    got = asyncio.run(_read_backlog(nats_url, stream_names, backlog, lambda got: sum(b.frame.height for b in got)
                                    == 100 * len(sent), coalesce_rows=rows, coalesce_batches=batches))  # fmt: skip
    assert sum(b.frame.height for b in got) == 100 * len(sent)
    assert len(got) < len(sent) and 100 < max(b.frame.height for b in got) <= largest  # joined, within the caps
    for producer in ("md", "other"):
        times = [t for b in got if b.producer == producer for t in b.frame["event_time_ns"].unique(maintain_order=True)]
        assert times == [t for p, t in sent if p == producer]  # every bar time once, in order
        for b in got:  # a batch holds one producer's rows only, up to its watermark
            if b.producer == producer:
                assert set(b.frame["event_time_ns"]) <= {t for p, t in sent if p == producer}
                assert b.through_ns == b.frame["event_time_ns"].max()


def test_a_backlog_joined_after_a_producer_restart_holds_each_row_once(nats_url: str, stream_names: tuple[str, str]) -> None:
    # The producer published bar times 1, 2 and 3 (with a row of 4 early in 3's batch), was killed, and from an
    # older checkpoint published 2 to 5 again in one batch: other message ids, so the server stores both.
    frame = _bars(10)
    sent = [([1], 1), ([2], 2), ([3, 4], 3), ([2, 3, 4, 5], 5)]
    backlog = [Batch("bar", "md", pl.concat([_at(frame, t) for t in times]), through) for times, through in sent]
    got = asyncio.run(_read_backlog(nats_url, stream_names, backlog, lambda got: got and got[-1].through_ns == 5))
    assert len(got) < len(sent)  # joined
    delivered = pl.concat([b.frame for b in got])
    assert delivered["event_id"].is_unique().all() and delivered.height == 50


def test_partitions_publishing_at_once_arrive_as_their_own_batches(nats_url: str, stream_names: tuple[str, str]) -> None:
    # Two processes share an engine's symbols; each publishes its multi-part batches on its partition's subject at
    # the same time as the other, so their parts interleave in the stream. A consumer of the whole kind gets each
    # producer's batch whole.
    stream, root = stream_names
    frames = {p: _bars(20_000).with_columns(symbol=pl.col("symbol") + f"-{p}", event_id=pl.col("event_id") + f"-{p}")
              for p in ("p0", "p1")}  # fmt: skip

    async def go() -> tuple[list[Batch], list[str]]:
        buses = [JetStreamBus(nats_url, stream=stream, subject_root=root) for _ in frames]
        for bus in buses:
            await bus.connect()
        try:
            got: list[Batch] = []

            async def keep(batch: Batch) -> None:
                got.append(batch)

            await buses[0].subscribe("bar", "reader", keep)
            await asyncio.gather(*(bus.publish(Batch("bar", f"f.{p}", frame, 7, partition=p))
                                   for bus, (p, frame) in zip(buses, frames.items(), strict=True)))  # fmt: skip
            for _ in range(200):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.05)
            info = await buses[0]._js.stream_info(stream, subjects_filter=f"{root}.bar.>")
            return got, sorted(info.state.subjects or {})
        finally:
            for bus in buses:
                await bus.close()

    got, subjects = asyncio.run(go())
    assert subjects == [f"{root}.bar._batch.p0", f"{root}.bar._batch.p1"]
    assert sorted(b.producer for b in got) == ["f.p0", "f.p1"]
    for batch in got:
        assert batch.frame.equals(frames[batch.producer.removeprefix("f.")]) and batch.through_ns == 7


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "over-the-server"])
def test_a_consumer_of_one_partition_receives_only_that_partitions_batches(
    nats_url: str, stream_names: tuple[str, str], in_process: bool
) -> None:
    # Market data splits its bars into partitions: a process running partition p1 of alpha takes p1's subject alone,
    # whether the batches reach it in process (published on its own bus) or from the server.
    stream, root = stream_names
    frames = {p: _bars(5).with_columns(symbol=pl.col("symbol") + f"-{p}", event_id=pl.col("event_id") + f"-{p}")
              for p in ("p0", "p1")}  # fmt: skip

    async def go() -> tuple[list[Batch], list[Batch]]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root, deliver_in_process=in_process)
        await bus.connect()
        try:
            one: list[Batch] = []
            every: list[Batch] = []

            async def keep_one(batch: Batch) -> None:
                one.append(batch)

            async def keep_every(batch: Batch) -> None:
                every.append(batch)

            await bus.subscribe("bar", "p1-reader", keep_one, partition="p1")
            await bus.subscribe("bar", "reader", keep_every)
            for t in (7, 8):
                for p, frame in frames.items():
                    await bus.publish(Batch("bar", f"md.{p}", frame.with_columns(event_time_ns=pl.lit(t, pl.Int64),
                                                                                 event_id=pl.col("event_id") + f"@{t}"),
                                            t, partition=p))  # fmt: skip
            for _ in range(200):
                if len(every) >= 4 and len(one) >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more comes
            info = await bus._js.consumer_info(stream, "p1-reader")
            assert info.config.filter_subject == f"{root}.bar._batch.p1"
            return one, every
        finally:
            await bus.close()

    one, every = asyncio.run(go())
    assert [(b.producer, b.through_ns) for b in one if not b.only_position] == [("md.p1", 7), ("md.p1", 8)]
    assert all(b.frame["symbol"].str.ends_with("-p1").all() for b in one if not b.only_position)
    assert sorted((b.producer, b.through_ns) for b in every if not b.only_position) == [
        ("md.p0", 7), ("md.p0", 8), ("md.p1", 7), ("md.p1", 8)]


def test_a_subscription_to_one_partition_of_a_kind_without_batches_is_refused(
    nats_url: str, stream_names: tuple[str, str]
) -> None:
    stream, root = stream_names

    async def go() -> None:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        await bus.connect()
        try:
            async def nothing(batch: Batch) -> None: ...

            with pytest.raises(ValueError, match="not published in batches"):
                await bus.subscribe("control_command", "c", nothing, partition="p0")
        finally:
            await bus.close()

    asyncio.run(go())


def test_consumers_of_one_bus_decode_each_stored_part_once(nats_url: str, stream_names: tuple[str, str]) -> None:
    from utp.core.jetstream import _DecodedParts

    data = wire.to_event_batch(kind("bar"), _bars(3)).SerializeToString()
    parts = _DecodedParts()
    first = parts.get(7, data)
    assert parts.get(7, data)[1] is first[1]  # decoded once
    other = wire.to_event_batch(kind("bar"), _bars(4)).SerializeToString()
    assert parts.get(7, other)[1].height == 4  # a stream created again numbers from 1 again: new bytes, new decode

    stream, root = stream_names

    async def go() -> dict[str, list[Batch]]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        await bus.connect()
        try:
            got: dict[str, list[Batch]] = {"features": [], "alpha": []}
            for name, batches in got.items():
                await bus.subscribe("bar", name, _keeper(batches))
            await bus.publish(Batch("bar", "md", _bars(50), 7))
            for _ in range(200):
                if all(got.values()):
                    break
                await asyncio.sleep(0.05)
            return got
        finally:
            await bus.close()

    got = asyncio.run(go())
    assert got["features"][0].frame is got["alpha"][0].frame  # one decode, both engines


def _keeper(batches: list[Batch]) -> Callable[[Batch], object]:
    async def keep(batch: Batch) -> None:
        batches.append(batch)

    return keep


def test_consumers_in_the_publishing_process_take_each_batch_once_in_order_by_whichever_path(
    nats_url: str, stream_names: tuple[str, str]
) -> None:
    """A batch published on a bus goes to that bus's own consumers as it is published (no server round trip, no
    decode), flagged `stored` until the server has it; a consumer takes it so only when it has applied the batch
    before it, else the server brings it in order. Either way each batch arrives once, in order; the stored parts
    of batches taken in process are skipped, and the consumer is told its position may move past them."""
    stream, root = stream_names
    frame = _bars(30)

    async def go() -> tuple[list[Batch], list[int], int, int]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        await bus.connect()
        try:
            rows: list[Batch] = []
            marks: list[int] = []

            async def keep(batch: Batch) -> None:
                if batch.only_position:
                    marks.append(batch.position)  # type: ignore[arg-type]
                    return
                if batch.stored is not None:
                    await batch.stored  # resolves once the server has it
                rows.append(batch)

            await bus.publish(Batch("bar", "md", _at(frame, 1), 1))  # before anyone consumes: the server brings it
            await bus.subscribe("bar", "reader", keep)
            await bus.publish(Batch("bar", "md", _at(frame, 2), 2))  # back to back: maybe before 1 was applied
            for t in range(3, 9):
                await asyncio.sleep(0.1)
                await bus.publish(Batch("bar", "md", _at(frame, t), t))
            last = await bus.last_sequence()
            for _ in range(200):
                if rows and rows[-1].through_ns == 8 and marks and marks[-1] == last:
                    break
                await asyncio.sleep(0.05)
            return rows, marks, last, bus.handed_in_process
        finally:
            await bus.close()

    rows, marks, last, in_process = asyncio.run(go())
    throughs = [b.through_ns for b in rows]
    assert throughs == sorted(set(throughs)) and throughs[-1] == 8  # in order (batches of a backlog join)
    assert pl.concat([b.frame for b in rows]).equals(pl.concat([_at(frame, t) for t in range(1, 9)]))
    assert rows[0].stored is None and rows[0].position is not None  # from the server
    assert in_process >= 5 and all(b.stored is not None and b.position is None for b in rows[-5:])  # as published
    assert marks == sorted(marks) and marks[-1] == last  # the position moves past the parts skipped


def test_a_consumer_busy_behind_the_server_takes_what_it_missed_from_the_server_first(
    nats_url: str, stream_names: tuple[str, str]
) -> None:
    """A consumer still applying an older batch from the server when newer ones are published in its process takes
    nothing in process out of turn: rows of a producer never arrive past rows of the same producer not yet taken.
    Nor does it keep more than `in_process_queue` batches waiting in memory: the server brings the rest."""
    stream, root = stream_names
    frame = _bars(5)

    async def go() -> tuple[list[int], list[str], int]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        bus.in_process_queue = 2  # behind by more: the rest comes from the server
        await bus.connect()
        try:
            seen: list[int] = []
            ids: list[str] = []

            async def slow(batch: Batch) -> None:
                if batch.only_position:
                    return
                if not seen:
                    await asyncio.sleep(0.5)  # the first batch keeps it busy while more are published
                seen.append(batch.through_ns)  # type: ignore[arg-type]
                ids.extend(batch.frame["event_id"].to_list())

            for t in range(1, 4):
                await bus.publish(Batch("bar", "md", _at(frame, t), t))
            sub = await bus.subscribe("bar", "reader", slow)
            await asyncio.sleep(0.1)
            for t in range(4, 10):
                await bus.publish(Batch("bar", "md", _at(frame, t), t))
            waiting = len(sub.pull.local)  # type: ignore[attr-defined]
            for _ in range(200):
                if seen and seen[-1] == 9:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return seen, ids, waiting
        finally:
            await bus.close()

    seen, ids, waiting = asyncio.run(go())
    assert waiting <= 2, waiting  # the consumer was still busy: two batches wait in memory, the server keeps the rest
    assert seen == sorted(seen) and len(set(seen)) == len(seen) and seen[-1] == 9, seen  # batches of a backlog join
    assert ids == pl.concat([_at(frame, t) for t in range(1, 10)])["event_id"].to_list()  # every row once, in order
