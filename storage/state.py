"""Hot state in LMDB: engine checkpoints and their last processed bus positions, orders by client order
id, positions, the operator's approval and halt flags, and quarantined input.

Every write is part of one LMDB transaction, so an engine's state, its records (orders, positions) and
the bus position it has consumed up to always move together: after a crash the engine resumes exactly
where its last commit left it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import lmdb

from utp.core.controls import ControlState
from utp.core.runtime import Checkpoint, RecordWrite
from utp.v1 import events_pb2 as pb

#: Tables (LMDB named databases).
CHECKPOINTS = "checkpoints"  # engine name -> pickled runner and engine state
PROGRESS = "progress"  # "<engine>/<input kind>" -> last committed bus position (decimal)
ORDERS = "orders"  # client order id -> utp.v1.Order
POSITIONS = "positions"  # symbol -> utp.v1.PositionSnapshot (open positions only)
FLAGS = "flags"  # "control" -> ControlState as JSON
QUARANTINE = "quarantine"  # "<time>/<symbol>/<reason>" -> utp.v1.RejectedBar
META = "meta"  # session metadata, JSON values
AUDIT = "audit"  # "<wall time ns, 20 digits>" -> utp.v1.AuditEntry (operator actions)
APPROVALS = "approvals"  # target intent id -> utp.v1.OrderApproval (per-order approval queue, latest state)
# Indexes of ORDERS that the store keeps in the same transaction as each order's write, so that the newest orders
# and the working ones are read without decoding every order of a long session (the console asks twice a second).
ORDERS_BY_TIME = "orders_by_time"  # "<submitted time ns + 2**63, 20 digits>/<client order id>" -> client order id
WORKING_ORDERS = "working_orders"  # client order id -> b"" while the order is working
TABLES = (CHECKPOINTS, PROGRESS, ORDERS, POSITIONS, FLAGS, QUARANTINE, META, AUDIT, APPROVALS, ORDERS_BY_TIME,
          WORKING_ORDERS)  # fmt: skip

#: Order statuses in which an order may still fill or be cancelled.
WORKING_STATUSES = frozenset({pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PARTIALLY_FILLED, pb.ORDER_STATUS_HELD})


def _time_key(order: pb.Order) -> bytes:
    # Offset so that the digits sort as the signed times do.
    return f"{order.submitted_time_ns + 2**63:020d}/{order.client_order_id}".encode()


class StateStore:
    """An LMDB environment in a folder, with the platform's tables."""

    def __init__(self, path: str | Path, *, map_size: int = 1 << 30, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # sync=False keeps writes safe across a process crash (they are in the page cache) but not across
        # a power loss; fsync=True (the default) survives both.
        self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=len(TABLES) + 1, sync=fsync, metasync=fsync)
        self._dbs = {name: self.env.open_db(name.encode()) for name in TABLES}
        self._index_orders()

    def close(self) -> None:
        self.env.close()

    # -- generic access ----------------------------------------------------------------------------
    def get(self, table: str, key: str) -> bytes | None:
        with self.env.begin(db=self._dbs[table]) as txn:
            value = txn.get(key.encode())
            return None if value is None else bytes(value)

    def items(self, table: str) -> Iterator[tuple[str, bytes]]:
        with self.env.begin(db=self._dbs[table]) as txn:
            rows = [(k.decode(), bytes(v)) for k, v in txn.cursor()]
        return iter(rows)

    def items_reversed(self, table: str) -> Iterator[tuple[str, bytes]]:
        """Rows from the last key backwards, read lazily (for "newest first" over a long table)."""
        with self.env.begin(db=self._dbs[table]) as txn:
            cursor = txn.cursor()
            if not cursor.last():
                return
            while True:
                yield cursor.key().decode(), bytes(cursor.value())
                if not cursor.prev():
                    return

    def put(self, table: str, key: str, value: bytes) -> None:
        with self.env.begin(write=True, db=self._dbs[table]) as txn:
            txn.put(key.encode(), value)

    def count(self, table: str) -> int:
        with self.env.begin(db=self._dbs[table]) as txn:
            return txn.stat(self._dbs[table])["entries"]

    def write(self, writes: Iterable[RecordWrite]) -> None:
        with self.env.begin(write=True) as txn:
            self._apply(txn, writes)

    def _apply(self, txn: lmdb.Transaction, writes: Iterable[RecordWrite]) -> None:
        for w in writes:
            db = self._dbs[w.table]
            key = w.key.encode()
            if w.table == ORDERS:
                self._unindex_order(txn, key)
            if w.value is None:
                txn.delete(key, db=db)
            else:
                txn.put(key, w.value, db=db)
                if w.table == ORDERS:
                    self._index_order(txn, key, w.value)

    # -- orders ------------------------------------------------------------------------------------
    def _index_order(self, txn: lmdb.Transaction, key: bytes, value: bytes) -> None:
        order = pb.Order.FromString(value)
        txn.put(_time_key(order), key, db=self._dbs[ORDERS_BY_TIME])
        if order.status in WORKING_STATUSES:
            txn.put(key, b"", db=self._dbs[WORKING_ORDERS])

    def _unindex_order(self, txn: lmdb.Transaction, key: bytes) -> None:
        old = txn.get(key, db=self._dbs[ORDERS])
        if old is not None:
            txn.delete(_time_key(pb.Order.FromString(old)), db=self._dbs[ORDERS_BY_TIME])
        txn.delete(key, db=self._dbs[WORKING_ORDERS])

    def _index_orders(self) -> None:
        """Index the orders of a store written before the indexes existed (or by a version that did not keep them)."""
        if self.count(ORDERS) == self.count(ORDERS_BY_TIME):
            return
        with self.env.begin(write=True) as txn:
            for db in (ORDERS_BY_TIME, WORKING_ORDERS):
                txn.drop(self._dbs[db], delete=False)
            for key, value in txn.cursor(db=self._dbs[ORDERS]):
                self._index_order(txn, bytes(key), bytes(value))

    def newest_orders(self, limit: int) -> list[bytes]:
        """The `limit` orders submitted last (serialized `utp.v1.Order`), newest first; ties by client order id,
        the greater first."""
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._dbs[ORDERS_BY_TIME])
            out: list[bytes] = []
            if not cursor.last():
                return out
            orders = self._dbs[ORDERS]
            while len(out) < limit:
                value = txn.get(cursor.value(), db=orders)
                if value is not None:
                    out.append(bytes(value))
                if not cursor.prev():
                    break
            return out

    def working_orders(self) -> list[bytes]:
        """Every working order (serialized `utp.v1.Order`), in client order id order."""
        with self.env.begin() as txn:
            orders = self._dbs[ORDERS]
            values = (txn.get(key, db=orders) for key in txn.cursor(db=self._dbs[WORKING_ORDERS]).iternext(values=False))
            return [bytes(v) for v in values if v is not None]

    # -- checkpoints -------------------------------------------------------------------------------
    def commit(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Write engine checkpoints, their bus positions and their records in one transaction."""
        with self.env.begin(write=True) as txn:
            for cp in checkpoints:
                txn.put(cp.engine.encode(), cp.state, db=self._dbs[CHECKPOINTS])
                for kind, position in cp.positions.items():
                    txn.put(f"{cp.engine}/{kind}".encode(), str(position).encode(), db=self._dbs[PROGRESS])
                self._apply(txn, cp.records)

    def load_checkpoint(self, engine: str) -> Checkpoint | None:
        with self.env.begin() as txn:
            state = txn.get(engine.encode(), db=self._dbs[CHECKPOINTS])
            if state is None:
                return None
            prefix = f"{engine}/".encode()
            positions: dict[str, int] = {}
            cursor = txn.cursor(db=self._dbs[PROGRESS])
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    positions[key[len(prefix) :].decode()] = int(value)
            return Checkpoint(engine, bytes(state), positions)

    # -- flags and metadata ------------------------------------------------------------------------
    def control_state(self) -> ControlState:
        raw = self.get(FLAGS, "control")
        return ControlState() if raw is None else ControlState(**json.loads(raw))

    def set_control_state(self, flags: ControlState) -> None:
        self.write([RecordWrite(FLAGS, "control", json.dumps(asdict(flags)).encode())])

    def meta(self, key: str) -> object | None:
        raw = self.get(META, key)
        return None if raw is None else json.loads(raw)

    def set_meta(self, key: str, value: object) -> None:
        self.write([RecordWrite(META, key, json.dumps(value).encode())])


class ImmediateCheckpointer:
    """Commits each checkpoint at once: for JetStream, where the bus acks right after the commit."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def load(self, engine: str) -> Checkpoint | None:
        return self.store.load_checkpoint(engine)

    def save(self, checkpoint: Checkpoint) -> None:
        self.store.commit([checkpoint])

    def flush(self) -> None:
        pass


class DeferredCheckpointer:
    """Stages checkpoints and commits all engines together on `flush`.

    The in-process bus keeps nothing across a crash, so engine states are only consistent with each
    other when no batch is in flight: the source flushes after each batch has run through the graph.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._staged: dict[str, Checkpoint] = {}

    def load(self, engine: str) -> Checkpoint | None:
        return self.store.load_checkpoint(engine)

    def save(self, checkpoint: Checkpoint) -> None:
        staged = self._staged.get(checkpoint.engine)
        if staged is not None:
            checkpoint.records[:0] = staged.records  # keep earlier records, in order
        self._staged[checkpoint.engine] = checkpoint

    def flush(self) -> None:
        if self._staged:
            self.store.commit(self._staged.values())
            self._staged.clear()
