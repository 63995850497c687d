"""What the console's poll costs the daemon: `ListOrders` (the newest 500, and the working ones) over a long session.

    python bench/order_queries.py                 # 100,000 orders, 2% of them working
    python bench/order_queries.py --orders 20000

The daemon answers from the hot-state store, in the event loop its engines share, so every millisecond here is one
the engines wait. The store keeps two indexes of its orders (by submission time, and the working ones), and
`CoreDaemon.orders` reads through them; the reference, measured in the same run on the same store, is a scan that
decodes every order and sorts them (what the daemon did before the indexes). Last line, JSON: `{"orders": ..,
"newest_ms": .., "working_ms": .., "scan_ms": .., "speedup": ..}` (best of `--repeats`; speedup is the scan over
the console's two calls together).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from utp.core.runtime import Checkpoint, RecordWrite
from utp.daemon.core import CoreDaemon
from utp.storage.state import ORDERS, StateStore
from utp.v1 import events_pb2 as pb

SHOWN = 500  # what the console asks for (console.app.ORDERS_SHOWN)


def fill(store: StateStore, orders: int, working_every: int) -> None:
    """`orders` orders as execution writes them (a commit per 100), every `working_every`-th still working."""
    for start in range(0, orders, 100):
        records = []
        for i in range(start, min(start + 100, orders)):
            o = pb.Order(client_order_id=f"utp-{i:08d}", submitted_time_ns=1_700_000_000_000_000_000 + i * 10**9,
                         status=pb.ORDER_STATUS_NEW if i % working_every == 0 else pb.ORDER_STATUS_FILLED,
                         side=pb.ORDER_SIDE_BUY, broker="sim", quantity=10.0, filled_quantity=10.0, average_fill_price=101.25,
                         limit_price=101.5, intent_id=f"intent/{i}", broker_order_id=f"sim-{i}")  # fmt: skip
            o.header.symbol, o.header.event_id, o.header.correlation_id = "GOOG", f"order/{i}", f"bar/GOOG/{i}"
            records.append(RecordWrite(ORDERS, o.client_order_id, o.SerializeToString()))
        store.commit([Checkpoint("execution", b"", {}, records)])


def best_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def scan(store: StateStore) -> list[pb.Order]:
    orders = [pb.Order.FromString(v) for _, v in store.items(ORDERS)]
    orders.sort(key=lambda o: (o.submitted_time_ns, o.client_order_id), reverse=True)
    return orders[:SHOWN]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--working-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        store = StateStore(Path(folder) / "state", fsync=False)
        fill(store, args.orders, args.working_every)
        daemon = SimpleNamespace(store=store)
        newest = CoreDaemon.orders(daemon, SHOWN)  # type: ignore[arg-type]
        if newest != scan(store):
            raise SystemExit("the indexes answer differently from a scan")
        newest_ms = best_ms(lambda: CoreDaemon.orders(daemon, SHOWN), args.repeats)  # type: ignore[arg-type]
        working_ms = best_ms(lambda: CoreDaemon.orders(daemon, SHOWN, working_only=True), args.repeats)  # type: ignore[arg-type]
        scan_ms = best_ms(lambda: scan(store), args.repeats)
        store.close()
    print(f"{args.orders:,} orders: newest {SHOWN} {newest_ms:.2f} ms, working {working_ms:.2f} ms; "
          f"scanning every order {scan_ms:.1f} ms (the console polls both each second)", flush=True)  # fmt: skip
    result = {"orders": args.orders, "newest_ms": round(newest_ms, 3), "working_ms": round(working_ms, 3),
              "scan_ms": round(scan_ms, 3), "speedup": round(2 * scan_ms / (newest_ms + working_ms), 1)}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
