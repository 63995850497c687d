"""A paper session end to end against Alpaca: bars from alpaca-py's market-data stream, orders through alpaca-py's
TradingClient and fills from its trade-updates stream, all against the loopback servers that speak Alpaca's APIs.

The same engine graph backtested over the same bars on the simulated broker decides the same orders: one code path,
only the venue differs. Reconciliation against the broker halts trading on a mismatch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tests.loopback.alpaca_trading import AlpacaTradingServer
from tests.loopback.market_data_stream import MarketDataStreamServer
from tests.test_risk_rules import run_graph
from utp.core.bus import InProcessBus
from utp.core.clock import WallClock
from utp.core.config import Config, load_config
from utp.core.controls import ControlState
from utp.core.kinds import KINDS
from utp.core.universe import Universe
from utp.daemon.session import MarketData, Session, live_market_data
from utp.storage.datasets import dataset
from utp.v1 import events_pb2 as pb

MINUTE_NS = 60 * 10**9
T0 = int(datetime(2024, 3, 4, 14, 30, tzinfo=UTC).timestamp()) * 10**9  # 09:30 New York, a Monday
N_BARS = 240

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def servers() -> Iterator[tuple[AlpacaTradingServer, MarketDataStreamServer]]:
    with AlpacaTradingServer(cash=100_000.0) as trading, MarketDataStreamServer() as stream:
        yield trading, stream


def minute_bars() -> pl.DataFrame:
    """Real GOOG daily bars (2004-2005) relabelled one a minute from the open of an NYSE session."""
    goog = dataset("goog").bars(("GOOG",), None, None).head(N_BARS)
    return goog.with_columns((pl.lit(T0) + pl.int_range(pl.len()) * MINUTE_NS).alias("event_time_ns"))


def session_config(trading: AlpacaTradingServer | None, stream: MarketDataStreamServer | None, **extra: object) -> Config:
    """RSI, EMA cross and MACD on GOOG, no costs, the seeds' risk rules on but the day's three orders a symbol."""
    overrides: dict[str, object] = {
        "market_data.symbols": ["GOOG"], "features.benchmark": "",
        "ensemble.weights": {"rsi": 1.0, "ema_cross": 1.0, "macd": 1.0}, "ensemble.min_confidence": 0.0,
        "ensemble.regime_max_volatility": 0.0, "ensemble.regime_scale": {"bull": 1.0, "bear": 1.0, "sideways": 1.0},
        "inference.packaged_fallback": False, "execution.slippage_bps": 0.0, "execution.commission_per_share": 0.0,
        "execution.commission_min": 0.0, "risk.max_orders_per_symbol_day": 0,
        # One session's bars: a universe screened at its open has no history to screen on.
        "risk.universe.enabled": False,
    }  # fmt: skip
    if trading is not None and stream is not None:
        overrides |= {
            "broker.name": "alpaca-paper", "broker.paper_url": trading.url, "broker.stream_url": trading.stream_url,
            "broker.timeout_s": 2.0, "broker.reconcile_interval_s": 0.0,
            "data.primary": "alpaca", "data.alpaca_stream_url": stream.alpaca_url,
        }  # fmt: skip
    return load_config(environ={}, overrides={**overrides, **extra})


ENV = {"APCA_API_KEY_ID": "test-key", "APCA_API_SECRET_KEY": "test-secret"}


async def run_live(config: Config, trading: AlpacaTradingServer, stream: MarketDataStreamServer, bars: pl.DataFrame,
                   *, before_bar: object = None) -> dict[str, pl.DataFrame]:  # fmt: skip
    """Publish each bar on the market-data stream, wait until execution has decided on it, then let the trading
    server see it (so an order decided at a bar's close fills at the next bar's open, as in the backtest)."""
    bus = InProcessBus()
    session = Session(config, bus=bus, clock=WallClock(), controls=ControlState(execution_approved=True),
                      model_sources=[], environ=ENV)  # fmt: skip
    seen: dict[str, list] = {"order": [], "fill": [], "risk_event": [], "account_snapshot": []}

    async def tap(kind: str, messages: list) -> None:
        seen[kind].extend(messages)

    await bus.tap(tap, lambda kind: kind in seen)
    await session.start()
    task = asyncio.create_task(session.run())
    try:
        await asyncio.to_thread(stream.wait_subscribed, "alpaca", ["GOOG"], 10.0)
        for row in bars.iter_rows(named=True):
            if callable(before_bar):
                before_bar(row)
            t = row["event_time_ns"]
            trading.push_bar("GOOG", t, row["open"], row["high"], row["low"], row["close"], row["volume"])
            stream.publish_bar("GOOG", t, row["open"], row["high"], row["low"], row["close"], row["volume"])
            # The first bar may wait for the kernels to compile (a cold numba cache).
            deadline = time.monotonic() + (240 if not seen["account_snapshot"] else 30)
            while not any(a.header.event_time_ns >= t for a in seen["account_snapshot"][-3:]):
                assert time.monotonic() < deadline, f"bar {t} was not processed"
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)  # the last fills' trade updates
    finally:
        await session.stop()
        task.cancel()
    return {k: KINDS[k].to_frame(v) for k, v in seen.items()}


def placed(orders: pl.DataFrame) -> pl.DataFrame:
    """Each order once: its client order id, side, reason, and whether it was a bracket leg."""
    return orders.unique("client_order_id", keep="first", maintain_order=True).select(
        "client_order_id", "side", "reason", (pl.col("parent_client_order_id") != "").alias("leg"),
    ).sort("client_order_id")  # fmt: skip


@pytest.mark.parametrize("execution", [
    {},  # market entries
    # limit entries 3% under the close: many miss, time out and are repriced (a replace at Alpaca) or cancelled
    {"execution.entry_order": "limit", "execution.limit_offset_bps": -300.0, "execution.spread_weight": 0.0},
], ids=["market", "limit"])  # fmt: skip
def test_a_paper_session_on_alpaca_decides_what_the_backtest_decides(servers, execution) -> None:  # noqa: ANN001
    trading, stream = servers
    bars = minute_bars()
    # Reconciled at every bar time: the book and the broker agree all along.
    live = asyncio.run(run_live(session_config(trading, stream, **{"broker.reconcile_interval_s": 1e-6}, **execution),
                                trading, stream, bars))  # fmt: skip
    simulated = run_graph(session_config(None, None, **execution), replace(
        live_market_data(load_config(environ={}, overrides={"market_data.symbols": ["GOOG"]})), bars=bars))

    live_orders, sim_orders = placed(live["order"]), placed(simulated["order"])
    if execution:  # timed-out limits were repriced through Alpaca's replace, as in the backtest
        assert (live["order"]["status"] == pb.ORDER_STATUS_REPLACED).any()
        assert any(o.get("replaces") for o in trading.orders)
    assert sim_orders.filter(~pl.col("leg")).height >= 3  # a few round trips
    assert live_orders.equals(sim_orders)
    # Every order the session placed is at the broker, under the same client order id, once (a bracket's legs are
    # the broker's own orders, with ids of its own: the adapter maps them back to ours).
    at_broker = [o["client_order_id"] for o in trading.orders]
    assert len(at_broker) == len(set(at_broker))
    assert set(live_orders.filter(~pl.col("leg"))["client_order_id"]) <= set(at_broker)
    assert len(trading.orders) == live_orders.height
    assert {o.status for o in live["order"].pipe(KINDS["order"].to_messages)} >= {pb.ORDER_STATUS_FILLED}
    # Fills came from the trade-updates stream; the book agrees with the broker's.
    assert live["fill"].height > 0
    entries = live["fill"].filter(pl.col("reason") == pb.INTENT_REASON_ENTRY)
    assert entries.height >= (1 if execution else 2)
    assert entries.height == simulated["fill"].filter(pl.col("reason") == pb.INTENT_REASON_ENTRY).height
    assert trading.positions().get("GOOG", 0.0) == pytest.approx(_position(live))
    # Nothing went wrong on the way.
    mismatches = live["risk_event"].filter(pl.col("reason") == pb.RISK_REASON_RECONCILIATION)
    assert mismatches.height == 0, mismatches["message"].to_list()


def _position(out: dict[str, pl.DataFrame]) -> float:
    fills = out["fill"]
    signed = pl.when(pl.col("side") == pb.ORDER_SIDE_BUY).then(pl.col("quantity")).otherwise(-pl.col("quantity"))
    return float(fills.select(signed.sum()).item()) if fills.height else 0.0


def test_a_mismatch_with_the_broker_halts_trading(servers) -> None:  # noqa: ANN001
    """The broker holds shares this session never bought: the first reconciliation halts trading and says so."""
    trading, stream = servers
    trading.set_position("GOOG", 7.0, 100.0)
    config = session_config(trading, stream)
    live = asyncio.run(run_live(config, trading, stream, minute_bars().head(60)))
    events = live["risk_event"].filter(pl.col("reason") == pb.RISK_REASON_RECONCILIATION)
    assert events.height == 1
    assert events["action"][0] == pb.RISK_ACTION_HALT
    assert "GOOG" in events["message"][0] and "7" in events["message"][0]
    # Halted from the first bar on: nothing was sent.
    assert live["order"].height == 0
    assert [o for o in trading.orders] == []


def test_the_daemon_refuses_a_live_endpoint_without_every_gate(tmp_path: Path) -> None:
    from utp.core.safety import LiveTradingRefused

    config = session_config(None, None, **{"broker.name": "alpaca-live", "data.primary": ""})
    with pytest.raises(LiveTradingRefused, match="live_enabled"):
        Session(config, bus=InProcessBus(), clock=WallClock(), model_sources=[], environ=ENV,
                market_data=MarketData(dataset("goog"), Universe(("GOOG",)), minute_bars()))  # fmt: skip


# -- `utp core --broker alpaca-paper --data alpaca`, as an operator runs it ---------------------------------------
def write_config(path: Path, trading: AlpacaTradingServer, stream: MarketDataStreamServer, **extra: object) -> Path:
    import yaml

    from utp.core.config import to_dict

    tree = to_dict(session_config(trading, stream, **extra))
    for section, key in (("broker", "name"), ("data", "primary")):  # those come from the command line
        tree[section].pop(key)
    path.write_text(yaml.safe_dump(tree))
    return path


def test_utp_core_runs_a_paper_session_against_alpaca(servers, daemon_factory, tmp_path: Path,  # noqa: ANN001
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from utp.v1 import core_service_pb2 as api

    trading, stream = servers
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config = write_config(tmp_path / "live.yaml", trading, stream, **{"broker.reconcile_interval_s": 0.5})
    daemon = daemon_factory("--config", str(config), "--broker", "alpaca-paper", "--data", "alpaca",
                            "--symbols", "GOOG").start()  # fmt: skip
    status = daemon.status()
    assert (status.mode, status.dataset, list(status.symbols)) == ("alpaca-paper", "live:alpaca", ["GOOG"])
    assert not status.execution_approved
    bars = minute_bars()
    stream.wait_subscribed("alpaca", ["GOOG"], 20.0)

    def feed(rows: pl.DataFrame) -> None:
        for row in rows.iter_rows(named=True):
            t = row["event_time_ns"]
            trading.push_bar("GOOG", t, row["open"], row["high"], row["low"], row["close"], row["volume"])
            stream.publish_bar("GOOG", t, row["open"], row["high"], row["low"], row["close"], row["volume"])
            first = not daemon.status().account.header.event_time_ns  # may wait for the kernels to compile
            daemon.wait_for(lambda s, t=t: s.account.header.event_time_ns >= t, timeout=240 if first else 30,
                            what=f"bar {t}")  # fmt: skip

    # Not approved: decisions are made, nothing reaches the broker.
    feed(bars.head(120))
    assert trading.orders == []
    daemon.stub.SetExecutionApproval(api.SetExecutionApprovalRequest(approved=True, reason="test"), timeout=5)
    feed(bars.slice(120))
    time.sleep(1.0)
    orders = daemon.stub.ListOrders(api.ListOrdersRequest(), timeout=5).orders
    assert orders and all(o.broker == "alpaca-paper" for o in orders)
    at_broker = {o["client_order_id"] for o in trading.orders}
    assert {o.client_order_id for o in orders if not o.parent_client_order_id} <= at_broker
    positions = {p.header.symbol: p.quantity for p in daemon.stub.ListPositions(api.ListPositionsRequest(), timeout=5).positions}
    assert positions.get("GOOG", 0.0) == pytest.approx(trading.positions().get("GOOG", 0.0))
    assert not daemon.status().halted
    # The broker changes behind our back: the next reconciliation halts trading, and the halt is persisted.
    trading.set_position("MSFT", 3.0, 400.0)
    feed(minute_bars().slice(N_BARS - 2, 1).with_columns(pl.col("event_time_ns") + 10 * MINUTE_NS))
    status = daemon.wait_for(lambda s: s.halted, timeout=20, what="the reconciliation halt")
    assert "reconciliation" in status.halt_reason and "MSFT" in status.halt_reason


def test_utp_core_refuses_a_live_endpoint_without_live_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    out = subprocess.run([sys.executable, "-m", "utp.daemon.cli", "core", "--data-dir", str(tmp_path / "d"),
                          "--listen", "127.0.0.1:0", "--broker", "alpaca-live", "--dataset", "goog"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "live_enabled" in out.stderr


def test_faults_at_the_broker_never_duplicate_an_order_and_the_book_stays_reconciled(servers) -> None:  # noqa: ANN001
    """A session through HTTP 503s, an answer lost to a timeout (the order had landed), a dropped trade-updates
    stream, partial fills and a rejection: each order reaches the broker once, and the book agrees with the
    broker's at every bar time (reconciled at each)."""
    trading, stream = servers
    faults = {
        20: lambda: trading.faults.fail_next("POST", "/v2/orders", 503, times=2),
        60: lambda: trading.faults.delay_next("POST", "/v2/orders", 3.0, take_effect=True),
        100: trading.faults.drop_streams,
        120: lambda: trading.faults.partial_fills(0.5),
        160: lambda: trading.faults.reject_next_orders("insufficient buying power"),
    }
    seen = iter(range(10**6))

    def before_bar(row: dict) -> None:
        i = next(seen)
        if i in faults:
            faults[i]()

    config = session_config(trading, stream, **{"broker.reconcile_interval_s": 1e-6, "broker.backoff_s": 0.05})
    live = asyncio.run(run_live(config, trading, stream, minute_bars(), before_bar=before_bar))
    at_broker = [o["client_order_id"] for o in trading.orders]
    assert len(at_broker) == len(set(at_broker))  # never a second order for one client order id
    ours = placed(live["order"]).filter(~pl.col("leg"))
    assert ours.height >= 3
    assert set(ours["client_order_id"]) <= set(at_broker)
    posts = [r for r in trading.requests if r == ("POST", "/v2/orders")]
    assert len(posts) > len([o for o in trading.orders if o.get("order_class") != "bracket" or o.get("legs")])
    mismatches = live["risk_event"].filter(pl.col("reason") == pb.RISK_REASON_RECONCILIATION)
    assert mismatches.height == 0, mismatches["message"].to_list()
    assert trading.positions().get("GOOG", 0.0) == pytest.approx(_position(live))
