"""An engine whose symbols several `utp engine` processes share (bus.partitions): partitions by a stable hash,
leases in the NATS server, and a process that stops handing its partitions to another without loss."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import nats
import polars as pl
import pytest

from utp.core.config import ConfigError, load_config
from utp.core.jetstream import JetStreamBus
from utp.core.partitions import Partition, PartitionLeases, partition_of, split
from utp.daemon.replay import read_session, replay
from utp.v1 import core_service_pb2 as api
from tests.test_engine_process import engine_process
from tests.test_graph import run
from tests.test_restart import daemon_args, new_order_events, order_rows, position_rows, reference

SYMBOLS = ["AAPL", "JPM", "XOM", "KO"]  # partitions of 2: AAPL and KO in p0, JPM and XOM in p1
SETTINGS = {"market_data.dataset": "sp500", "market_data.symbols": f"[{','.join(SYMBOLS)}]",
            "market_data.start": "2004-01-01", "market_data.end": "2006-06-30", "risk.max_position_pct": 0.25,
            "state.fsync": False, "approve_execution_on_start": True, "risk.universe.enabled": False}  # fmt: skip


def test_partitions_split_symbols_the_same_way_everywhere() -> None:
    assert [partition_of(s, 2) for s in SYMBOLS] == [0, 1, 1, 0]  # CRC-32: no per-process salt
    frame = pl.DataFrame({"symbol": SYMBOLS, "x": range(4)})
    assert Partition(1, 2).keep(frame)["symbol"].to_list() == ["JPM", "XOM"]
    with pytest.raises(ValueError, match="does not exist"):
        Partition(2, 2)


def test_only_per_symbol_remote_engines_can_be_partitioned() -> None:
    base = {"bus.nats_url": "nats://127.0.0.1:4222"}
    with pytest.raises(ConfigError, match="keeps state across symbols"):
        load_config(environ={}, overrides={**base, "bus.remote_engines": ["risk"], "bus.partitions": {"risk": 2}})
    with pytest.raises(ConfigError, match="not among bus.remote_engines"):
        load_config(environ={}, overrides={**base, "bus.partitions": {"alpha": 2}})
    with pytest.raises(ConfigError, match="ranks symbols"):
        load_config(environ={}, overrides={**base, "bus.remote_engines": ["features"], "bus.partitions": {"features": 2}})
    load_config(environ={}, overrides={**base, "bus.remote_engines": ["alpha"], "bus.partitions": {"alpha": 2}})
    both = {**base, "bus.remote_engines": ["features", "alpha"], "features.rank_features": []}
    with pytest.raises(ConfigError, match="read the same bars"):
        load_config(environ={}, overrides={**both, "bus.partitions": {"alpha": 2, "features": 3}})
    load_config(environ={}, overrides={**both, "bus.partitions": {"alpha": 2, "features": 2}})


def test_split_keeps_each_partitions_rows_in_their_order() -> None:
    frame = pl.DataFrame({"symbol": SYMBOLS * 2, "x": range(8)})
    parts = split(frame, 2)
    assert [p["symbol"].to_list() for p in parts] == [[s for s in SYMBOLS * 2 if Partition(k, 2).owns(s)] for k in (0, 1)]
    assert pl.concat(parts).sort("x").equals(frame)
    assert [p.height for p in split(frame.clear(), 3)] == [0, 0, 0]


def test_processes_lease_a_fair_share_and_take_over_what_a_stopped_one_gave_back(
    nats_url: str, stream_names: tuple[str, str]
) -> None:
    stream, root = stream_names

    async def go() -> list[tuple]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        await bus.connect()
        try:
            a, b = (PartitionLeases(bus.js, f"leases-{root}", "alpha", 4, w, 30.0) for w in ("a", "b"))
            await a.open()
            await b.open()
            seen = [tuple((await a.rebalance()).gained)]  # alone: takes all 4
            first_b = await b.rebalance()  # two members now: b's share is 2, none free yet
            turn_a = await a.rebalance()  # a holds more than its share: gives 2 back
            seen += [tuple(first_b.gained), tuple(turn_a.surplus)]
            for k in turn_a.surplus:
                await a.release(k)
            seen.append(tuple((await b.rebalance()).gained))
            await a.mark_done(0)
            await a.leave()  # a stops: everything it held is free
            seen.append(tuple(sorted((await b.rebalance()).gained)))  # 0 is done: nobody needs it
            seen.append(tuple(sorted(b.held)))
            return seen
        finally:
            await bus.close()

    assert asyncio.run(go()) == [(0, 1, 2, 3), (), (2, 3), (2, 3), (1,), (1, 2, 3)]


def test_a_lease_not_renewed_in_time_is_no_longer_held_by_its_own_clock(nats_url: str, stream_names: tuple[str, str]) -> None:
    stream, root = stream_names

    async def go() -> list[bool]:
        bus = JetStreamBus(nats_url, stream=stream, subject_root=root)
        await bus.connect()
        try:
            leases = PartitionLeases(bus.js, f"short-{root}", "alpha", 1, "a", 1.0)
            await leases.open()
            seen = [(await leases.rebalance()).gained == [0] and leases.holds(0)]
            await asyncio.sleep(1.2)  # held up past the lease: a publish now would be fenced
            seen.append(leases.holds(0))
            await leases.rebalance()  # renewed (or lost and taken again): held again
            seen.append(leases.holds(0))
            return seen
        finally:
            await bus.close()

    assert asyncio.run(go()) == [True, False, True]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_two_processes_share_alpha_one_stops_mid_session_and_the_orders_do_not_change(
    nats_url, stream_names, daemon_factory, tmp_path: Path, stop: signal.Signals  # noqa: ANN001
) -> None:
    # Stopped, a process gives its partition back at once; killed, its lease expires (bus.partition_lease_s).
    stream, root = stream_names
    config = load_config(environ={}, overrides={**{k: v for k, v in SETTINGS.items() if k != "market_data.symbols"},
                                                "market_data.symbols": SYMBOLS, "market_data.batch_bar_times": 1000})  # fmt: skip
    expected_orders, expected_positions = reference(run(config))
    assert len(expected_orders) > 10

    settings = {**SETTINGS, "bus.remote_engines": "[alpha]", "bus.partitions": "{alpha: 2}", "bus.partition_lease_s": 2}
    daemon = daemon_factory(*daemon_args(nats_url, stream, root, settings=settings, rate=100)).start()
    session_id = daemon.status().session_id
    logs = {w: tmp_path / f"{w}.log" for w in ("a", "b")}
    workers = {w: engine_process("alpha", session_id, nats_url, stream, tmp_path / w, logs[w]) for w in ("a", "b")}
    try:
        # Each takes one partition; then a is told to stop a third of the way through, and b takes its partition over.
        deadline = time.monotonic() + 120
        while not all("took partition" in logs[w].read_text() for w in ("a", "b")):
            assert time.monotonic() < deadline, {w: logs[w].read_text()[-2000:] for w in logs}
            time.sleep(0.1)
        first, last = 1072915200 * 10**9, 1151625600 * 10**9  # 2004-01-01, 2006-06-30
        deadline = time.monotonic() + 120
        while (s := next((e for e in daemon.status().engines if e.engine == "ensemble"), None)) is None or (
                s.through_time_ns < first + (last - first) // 3):  # fmt: skip
            assert time.monotonic() < deadline, "the session made no progress"
            time.sleep(0.05)
        workers["a"].send_signal(stop)
        assert workers["a"].wait(60) == (0 if stop == signal.SIGTERM else -signal.SIGKILL), logs["a"].read_text()[-3000:]
        assert "the session is over" not in logs["a"].read_text(), "stopped too late to test anything"
        assert workers["b"].wait(240) == 0, logs["b"].read_text()[-3000:]
        b_log = logs["b"].read_text()
        # b held both partitions in the end (whichever it took first, and the one a held when it stopped).
        assert b_log.count("took partition") >= 2 and "every partition is processed" in b_log
        daemon.wait_for(lambda s: s.session_state == api.SESSION_STATE_COMPLETED, timeout=240,
                        what="the session to complete")  # fmt: skip
        deadline = time.monotonic() + 60
        while order_rows(daemon.stub.ListOrders(api.ListOrdersRequest()).orders) != expected_orders:
            assert time.monotonic() < deadline, "the orders differ from the in-process run's"
            time.sleep(0.2)
        assert position_rows(daemon.stub.ListPositions(api.ListPositionsRequest()).positions) == expected_positions
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
    ids = [o.client_order_id for o in asyncio.run(new_order_events(nats_url, stream, root))]
    assert len(ids) == len(set(ids)) == len(expected_orders), "an order was submitted twice or lost"
    # The bars went out split into alpha's partitions, so each process was sent its own partition's bars only.
    assert asyncio.run(bar_subjects(nats_url, stream, root)) == [f"{root}.bar._batch.p0", f"{root}.bar._batch.p1"]
    # Its log replays in one process to the same decisions: the bars taken in the order the consumers merged them.
    report = asyncio.run(replay(asyncio.run(read_session(nats_url, session_id, stream))))
    assert report.identical, {k: (v.missing[:3], v.extra[:3], v.different[:3]) for k, v in report.kinds.items()
                              if not v.identical}  # fmt: skip


async def bar_subjects(url: str, stream: str, root: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=f"{root}.bar.>")
        return sorted(info.state.subjects or {})
    finally:
        await nc.close()
