"""The hot-state store's order indexes: the newest and the working orders, read without decoding every order."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import lmdb
import pytest

from utp.core.runtime import Checkpoint, RecordWrite
from utp.daemon.core import CoreDaemon
from utp.storage.state import ORDERS, ORDERS_BY_TIME, WORKING_ORDERS, WORKING_STATUSES, StateStore
from utp.v1 import events_pb2 as pb

STATUSES = (pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PARTIALLY_FILLED, pb.ORDER_STATUS_HELD, pb.ORDER_STATUS_FILLED,
            pb.ORDER_STATUS_CANCELED, pb.ORDER_STATUS_REJECTED)  # fmt: skip


def order(client_order_id: str, submitted_time_ns: int, status: int) -> pb.Order:
    o = pb.Order(client_order_id=client_order_id, submitted_time_ns=submitted_time_ns, status=status)  # type: ignore[arg-type]
    o.header.symbol = "GOOG"
    o.header.event_id = f"order/{client_order_id}/{status}"
    return o


def newest_by_scan(store: StateStore) -> list[pb.Order]:
    orders = [pb.Order.FromString(v) for _, v in store.items(ORDERS)]
    return sorted(orders, key=lambda o: (o.submitted_time_ns, o.client_order_id), reverse=True)


def random_history(store: StateStore, seed: int) -> None:
    """Orders written as execution writes them (in checkpoints, several per commit), then updated: status changes, a
    few re-submitted at another time, a few deleted. Times tie on purpose, and some are negative."""
    rng = random.Random(seed)
    ids = [f"utp-{rng.choice('abc')}{i}" + "/x" * rng.randint(0, 1) for i in range(300)]
    for start in range(0, 900, 30):
        records = []
        for _ in range(30):
            cid = rng.choice(ids)
            if rng.random() < 0.05:
                records.append(RecordWrite(ORDERS, cid, None))
            else:
                t = rng.choice((-5, 0, 7, 7, 1_700_000_000_000_000_000, rng.randint(0, 10**6)))
                records.append(RecordWrite(ORDERS, cid, order(cid, t, rng.choice(STATUSES)).SerializeToString()))
        store.commit([Checkpoint("execution", b"state", {"order_intent": start}, records)])


@pytest.mark.parametrize("seed", range(5))
def test_the_order_indexes_follow_every_write_and_answer_as_a_scan_would(tmp_path: Path, seed: int) -> None:
    store = StateStore(tmp_path / "state", fsync=False)
    random_history(store, seed)
    expected = newest_by_scan(store)
    assert len(expected) > 100
    for limit in (1, 7, 100, len(expected), len(expected) + 5):
        assert [pb.Order.FromString(v) for v in store.newest_orders(limit)] == expected[:limit]
    working = sorted((pb.Order.FromString(v) for v in store.working_orders()), key=lambda o: o.client_order_id)
    assert working == sorted((o for o in expected if o.status in WORKING_STATUSES), key=lambda o: o.client_order_id)
    assert store.count(ORDERS_BY_TIME) == len(expected)

    # The daemon's ListOrders answer, through the indexes only: a scan of every order would fail here.
    class NoScan(StateStore):
        def items(self, table: str):  # noqa: ANN202
            if table == ORDERS:
                raise AssertionError("read every order")
            return super().items(table)

    store.close()
    daemon = SimpleNamespace(store=NoScan(tmp_path / "state", fsync=False))
    assert CoreDaemon.orders(daemon, 50) == expected[:50]  # type: ignore[arg-type]
    working_newest = [o for o in expected if o.status in WORKING_STATUSES]
    assert CoreDaemon.orders(daemon, 20, working_only=True) == working_newest[:20]  # type: ignore[arg-type]
    assert CoreDaemon.orders(daemon, 0, working_only=True) == working_newest  # type: ignore[arg-type]
    daemon.store.close()


def test_a_store_written_before_the_order_indexes_is_indexed_when_opened(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state", fsync=False)
    random_history(store, 11)
    expected = newest_by_scan(store)
    store.close()
    # As an older version left it: the orders, and no index tables at all.
    env = lmdb.open(str(tmp_path / "state"), max_dbs=20)
    with env.begin(write=True) as txn:
        for name in (ORDERS_BY_TIME, WORKING_ORDERS):
            txn.drop(env.open_db(name.encode(), txn=txn), delete=True)
    env.close()

    store = StateStore(tmp_path / "state", fsync=False)
    assert [pb.Order.FromString(v) for v in store.newest_orders(len(expected))] == expected
    assert {pb.Order.FromString(v).client_order_id for v in store.working_orders()} == {
        o.client_order_id for o in expected if o.status in WORKING_STATUSES
    }
    store.close()
