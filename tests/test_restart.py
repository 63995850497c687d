"""A paper session over JetStream survives SIGKILL: same orders and positions, no order placed twice."""

from __future__ import annotations

import asyncio
import signal
import time

import nats

from utp.core.config import load_config
from utp.core.jetstream import distinct_events, read_stored
from utp.core.kinds import KINDS
from utp.daemon.session import Session
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb
from tests.test_graph import run

SETTINGS = {"market_data.end": "2008-06-30", "risk.max_position_pct": 0.95, "state.fsync": False,
            "approve_execution_on_start": True, "risk.universe.enabled": False}  # fmt: skip


def daemon_args(nats_url: str, stream: str, root: str, *, settings: dict = SETTINGS, rate: float = 150) -> list[str]:
    args = ["--nats", nats_url, "--replay-rate", str(rate), "--set", f"bus.stream={stream}", "--set", f"bus.subject_root={root}"]
    for key, value in settings.items():
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return args


def order_rows(orders) -> list[tuple]:  # noqa: ANN001
    return sorted((o.client_order_id, o.side, o.quantity, o.status, round(o.average_fill_price, 9)) for o in orders)


def position_rows(positions) -> list[tuple]:  # noqa: ANN001
    return sorted((p.header.symbol, p.quantity, round(p.average_price, 9)) for p in positions)


def reference(session: Session) -> tuple[list[tuple], list[tuple]]:
    """Final orders (latest status per client order id) and open positions of an uninterrupted run."""
    latest: dict[str, pb.Order] = {}
    for order in session.collector.order_events:
        latest[order.client_order_id] = order
    execution = next(e for e in session.engines if e.name == "execution")
    positions = [p for p in execution.portfolio.positions.values() if p.quantity]
    symbols = [s for s, p in execution.portfolio.positions.items() if p.quantity]
    return order_rows(latest.values()), sorted(
        (s, p.quantity, round(p.average_price, 9)) for s, p in zip(symbols, positions, strict=True)
    )


async def new_order_events(url: str, stream: str, root: str) -> list[pb.Order]:
    """Every NEW order event stored in the stream: what was submitted, as the bus recorded it."""
    nc = await nats.connect(url)
    stored = await read_stored(nc.jetstream(), stream, f"{root}.order.>")
    await nc.close()
    return [order for order in distinct_events(KINDS["order"], stored) if order.status == pb.ORDER_STATUS_NEW]


def test_a_session_killed_with_sigkill_ends_as_if_uninterrupted(daemon_factory, nats_url, stream_names) -> None:  # noqa: ANN001
    stream, root = stream_names
    config = load_config(environ={}, overrides={**SETTINGS, "market_data.batch_bar_times": 1000})
    expected_orders, expected_positions = reference(run(config))
    assert len(expected_orders) > 10

    first = daemon_factory(*daemon_args(nats_url, stream, root)).start()
    deadline = time.monotonic() + 120
    while len(first.stub.ListOrders(api.ListOrdersRequest()).orders) < len(expected_orders) // 3:
        assert time.monotonic() < deadline, "the session made no progress"
        time.sleep(0.05)
    orders_at_kill = len(first.stub.ListOrders(api.ListOrdersRequest()).orders)
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    assert orders_at_kill < len(expected_orders), "killed too late to test anything"

    second = daemon_factory(*daemon_args(nats_url, stream, root), data_dir=first.data_dir).start()
    second.wait_for(lambda s: s.session_state == api.SESSION_STATE_COMPLETED, timeout=240, what="the session to complete")
    assert "market_data restored at through=" in second.log(), "the restarted daemon should resume, not start over"
    orders = second.stub.ListOrders(api.ListOrdersRequest()).orders
    positions = second.stub.ListPositions(api.ListPositionsRequest()).positions
    assert order_rows(orders) == expected_orders
    assert position_rows(positions) == expected_positions

    submitted = asyncio.run(new_order_events(nats_url, stream, root))
    ids = [o.client_order_id for o in submitted]
    assert len(ids) == len(set(ids)) == len(expected_orders), "an order was submitted twice or lost"
