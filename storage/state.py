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
TABLES = (CHECKPOINTS, PROGRESS, ORDERS, POSITIONS, FLAGS, QUARANTINE, META, AUDIT, APPROVALS)


class StateStore:
    """An LMDB environment in a folder, with the platform's tables."""

    def __init__(self, path: str | Path, *, map_size: int = 1 << 30, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # sync=False keeps writes safe across a process crash (they are in the page cache) but not across
        # a power loss; fsync=True (the default) survives both.
        self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=len(TABLES) + 1, sync=fsync, metasync=fsync)
        self._dbs = {name: self.env.open_db(name.encode()) for name in TABLES}

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
            if w.value is None:
                txn.delete(w.key.encode(), db=db)
            else:
                txn.put(w.key.encode(), w.value, db=db)

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
