"""The live market-data engine: alpaca-py's and polygon-api-client's real streaming clients against the loopback
server, through FailoverFeed, into `bar` batches of one bar time each, bad bars quarantined as in a replay.

The settle delay is measured on the engine's clock; here a clock the test moves by hand, so no test waits it out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import polars as pl
import pytest

from tests.loopback.market_data_stream import MarketDataStreamServer
from utp.core.batch import Batch
from utp.core.bus import InProcessBus
from utp.core.clock import WallClock
from utp.core.config import ConfigError, DataConfig, load_config
from utp.core.feeds import FailoverFeed
from utp.core.runtime import SourceRunner
from utp.core.universe import Universe
from utp.core.vendors.streams import AlpacaBarStream, PolygonBarStream
from utp.daemon.session import Session
from utp.engines.market_data import LiveMarketDataEngine
from utp.storage.datasets import dataset
from utp.storage.state import QUARANTINE, DeferredCheckpointer, StateStore
from utp.v1 import events_pb2 as pb

MINUTE_NS = 60 * 10**9
T0 = int(datetime(2024, 1, 3, 14, 30, tzinfo=UTC).timestamp()) * 10**9  # 09:30 New York, a Wednesday
SYMBOLS = ("AAPL", "MSFT")

# Above `until`'s own 30 s, so that a wait that never ends fails with what it waited for, and with room for the
# streams to connect: on a loaded 2-core machine (the suite on 4 workers in a slow spell) a whole test once took
# over 30 s where it takes 4 s alone.
pytestmark = pytest.mark.timeout(120)


class HandClock:
    """A wall-like clock (not simulated: sleeps really pause) whose time moves only when the test says."""

    simulated = False

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def observe(self, data_time_ns: int) -> None:
        pass

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


@pytest.fixture
def server() -> Iterator[MarketDataStreamServer]:
    with MarketDataStreamServer() as running:
        yield running


@pytest.fixture
def data_config(server: MarketDataStreamServer) -> DataConfig:
    return DataConfig(primary="alpaca", alpaca_stream_url=server.alpaca_url, polygon_stream_host=server.polygon_host,
                      polygon_stream_secure=False)  # fmt: skip


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def price(minute: int, symbol: str) -> float:
    """Prices encode the minute and the symbol, so a misplaced bar shows."""
    return 100.0 + minute + SYMBOLS.index(symbol) / 10


def publish(server: MarketDataStreamServer, minute: int, symbol: str, *, close: float | None = None) -> None:
    p = price(minute, symbol)
    server.publish_bar(symbol, T0 + minute * MINUTE_NS, p, p + 1, p - 1, p + 0.5 if close is None else close,
                       1000 + minute)  # fmt: skip


class Harness:
    """An engine under a real SourceRunner on the in-process bus, with every `bar` batch and rejected bar kept."""

    def __init__(self, engine: LiveMarketDataEngine, clock: object, checkpointer: DeferredCheckpointer | None = None):
        self.engine = engine
        self.bus = InProcessBus()
        self.runner = SourceRunner(engine, self.bus, clock, checkpointer)  # type: ignore[arg-type]
        self.batches: list[Batch] = []
        self.rejected: list[pb.RejectedBar] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        async def on_bar(batch: Batch) -> None:
            if batch.frame.height:
                self.batches.append(batch)

        async def on_rejected(kind: str, messages: list) -> None:  # noqa: ARG001 - tap signature
            self.rejected.extend(messages)

        await self.bus.subscribe("bar", "test", on_bar)
        await self.bus.tap(on_rejected, lambda kind: kind == "rejected_bar")
        await self.runner.start()
        self._task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.runner.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 5)

    def rows(self, i: int) -> list[tuple[int, str, float]]:
        return list(self.batches[i].frame.select("event_time_ns", "symbol", "close").iter_rows())


def expected(minute: int, *symbols: str) -> list[tuple[int, str, float]]:
    return [(T0 + minute * MINUTE_NS, s, price(minute, s) + 0.5) for s in symbols]


def alpaca_engine(server: MarketDataStreamServer, config: DataConfig, symbols: tuple[str, ...] = SYMBOLS,
                  **engine_args: float) -> LiveMarketDataEngine:  # fmt: skip
    stream = AlpacaBarStream(config, symbols, key=server.key, secret=server.secret)
    feed = FailoverFeed(stream, None, failover_after_s=60)
    return LiveMarketDataEngine(feed, Universe(SYMBOLS), interval_ns=MINUTE_NS, **engine_args)


async def test_live_bars_come_out_one_bar_time_per_batch_bad_ones_quarantined(server, data_config) -> None:
    clock = HandClock(T0)
    # TSLA is streamed but not in the universe: its bars must be refused, not published.
    engine = alpaca_engine(server, data_config, (*SYMBOLS, "TSLA"), settle_s=2.0)
    async with Harness(engine, clock) as run:
        await asyncio.to_thread(server.wait_subscribed, "alpaca", (*SYMBOLS, "TSLA"))
        for minute in range(3):
            for symbol in SYMBOLS:
                publish(server, minute, symbol)
        await until(lambda: len(run.batches) == 3, "three bar batches")
        for minute in range(3):
            assert run.rows(minute) == expected(minute, *SYMBOLS)
            assert run.batches[minute].through_ns == T0 + minute * MINUTE_NS
        first = run.batches[0].frame.row(0, named=True)
        assert (first["open"], first["high"], first["low"], first["volume"], first["interval_ns"]) == (
            100.0, 101.0, 99.0, 1000.0, MINUTE_NS)  # fmt: skip
        assert first["event_id"] == f"bar/AAPL@{T0}"

        # A NaN close and a symbol outside the universe are refused; the good bar of the minute goes out.
        server.publish_bar("TSLA", T0 + 3 * MINUTE_NS, 200, 201, 199, 200, 5)
        publish(server, 3, "AAPL", close=math.nan)
        publish(server, 3, "MSFT")
        await until(lambda: len(run.batches) == 4 and len(run.rejected) == 2, "minute 3 and two rejected bars")
        assert run.rows(3) == expected(3, "MSFT")
        reasons = {(r.header.symbol, r.reason) for r in run.rejected}
        assert reasons == {("AAPL", pb.BAR_REJECT_REASON_NON_FINITE), ("TSLA", pb.BAR_REJECT_REASON_UNKNOWN_SYMBOL)}
        assert all("(arrival " in r.message for r in run.rejected)

        # A bar time one symbol never completes is held until settle_s of the engine's clock has passed ...
        publish(server, 4, "AAPL")
        await until(lambda: T0 + 4 * MINUTE_NS in engine.held, "minute 4 held")
        await asyncio.sleep(0.3)
        assert len(run.batches) == 4, "an incomplete bar time went out before settle_s"
        clock.advance(2.0)
        await until(lambda: len(run.batches) == 5, "minute 4 after settle_s")
        assert run.rows(4) == expected(4, "AAPL")
        # ... and the missing bar, arriving after it was published, is refused as out of order.
        publish(server, 4, "MSFT")
        await until(lambda: len(run.rejected) == 3, "the late MSFT bar refused")
        late = run.rejected[-1]
        assert (late.header.symbol, late.header.event_time_ns, late.reason) == (
            "MSFT", T0 + 4 * MINUTE_NS, pb.BAR_REJECT_REASON_OUT_OF_ORDER)  # fmt: skip

        # A bar of a later time completes an unfinished one at once, with no wait.
        publish(server, 5, "AAPL")
        for symbol in SYMBOLS:
            publish(server, 6, symbol)
        await until(lambda: len(run.batches) == 7, "minutes 5 and 6")
        assert run.rows(5) == expected(5, "AAPL") and run.rows(6) == expected(6, *SYMBOLS)
        assert not engine.held
    assert engine.bars_rejected == 3 and run.runner.events_rejected == 3
    assert engine.bars_published == 11
    stream = engine.feed.primary  # type: ignore[attr-defined]
    assert not stream.running, "stopping the runner left the stream's thread running"


async def test_a_restarted_engine_never_publishes_a_bar_time_again(server, data_config, tmp_path) -> None:
    store = StateStore(tmp_path / "state", fsync=False)
    try:
        async with Harness(alpaca_engine(server, data_config), WallClock(), DeferredCheckpointer(store)) as run:
            await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)
            for minute in range(2):
                for symbol in SYMBOLS:
                    publish(server, minute, symbol)
            await until(lambda: len(run.batches) == 2, "minutes 0 and 1")
        await until(lambda: not server.subscribed("alpaca"), "the first stream gone")

        restarted = alpaca_engine(server, data_config)
        async with Harness(restarted, WallClock(), DeferredCheckpointer(store)) as run:
            assert restarted.through_ns == T0 + MINUTE_NS and restarted.bars_published == 4
            await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)
            for minute in (1, 2):  # the new feed knows nothing of minute 1: the engine must refuse it
                for symbol in SYMBOLS:
                    publish(server, minute, symbol)
            await until(lambda: len(run.batches) == 1 and len(run.rejected) == 2, "minute 2 and two refusals")
            assert run.rows(0) == expected(2, *SYMBOLS)
            assert {r.reason for r in run.rejected} == {pb.BAR_REJECT_REASON_DUPLICATE}
        quarantined = [pb.RejectedBar.FromString(v) for _, v in store.items(QUARANTINE)]
        assert sorted(r.header.symbol for r in quarantined) == list(SYMBOLS)
    finally:
        store.close()


async def test_failover_to_polygon_keeps_bars_flowing_and_is_logged(server, data_config, caplog) -> None:
    alpaca = AlpacaBarStream(data_config, SYMBOLS, key=server.key, secret=server.secret)
    polygon = PolygonBarStream(data_config, SYMBOLS, api_key=server.polygon_key)
    feed = FailoverFeed(alpaca, polygon, failover_after_s=0.3)
    engine = LiveMarketDataEngine(feed, Universe(SYMBOLS), interval_ns=MINUTE_NS)
    caplog.set_level(logging.WARNING, logger="utp.engine.market_data")
    async with Harness(engine, WallClock()) as run:
        await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)
        await asyncio.to_thread(server.wait_subscribed, "polygon", SYMBOLS)
        for symbol in SYMBOLS:
            publish(server, 0, symbol)
        await until(lambda: len(run.batches) == 1, "minute 0 from alpaca")
        assert feed.active == "alpaca"
        server.silence("alpaca")  # connected but mute: the failure failover exists for
        for minute in (1, 2):
            for symbol in SYMBOLS:
                publish(server, minute, symbol)
        await until(lambda: len(run.batches) == 3, "minutes 1 and 2 from polygon")
        assert [run.rows(i) for i in range(3)] == [expected(m, *SYMBOLS) for m in range(3)]
        assert feed.active == "polygon" and engine.feed_notices == 1
    logged = [r for r in caplog.records if r.name == "utp.engine.market_data" and r.levelno == logging.WARNING]
    assert any("failing over to polygon" in r.getMessage() for r in logged), [r.getMessage() for r in logged]
    assert not alpaca.running and not polygon.running


def relabelled_goog(minutes: int) -> pl.DataFrame:
    """Real GOOG daily bars as one-minute bars of a New York morning: GOOG the first `minutes` days, GOOGL
    the `minutes` days after them (a second, different real series)."""
    goog = dataset("goog").bars().head(2 * minutes)
    times = pl.Series([T0 + i * MINUTE_NS for i in range(minutes)] * 2)
    symbols = pl.Series(["GOOG"] * minutes + ["GOOGL"] * minutes)
    return goog.with_columns(event_time_ns=times, symbol=symbols).sort("event_time_ns", maintain_order=True)


async def test_a_session_with_live_data_runs_the_graph_on_streamed_bars(server) -> None:
    config = load_config(environ={}, overrides={
        "data.primary": "alpaca", "data.secondary": "polygon", "data.alpaca_stream_url": server.alpaca_url,
        "data.polygon_stream_host": server.polygon_host, "data.polygon_stream_secure": False,
        "market_data.symbols": ["GOOG", "GOOGL"]})  # fmt: skip
    environ = {"APCA_API_KEY_ID": server.key, "APCA_API_SECRET_KEY": server.secret,
               "POLYGON_API_KEY": server.polygon_key}  # fmt: skip
    bus = InProcessBus()
    session = Session(config, bus=bus, clock=WallClock(), environ=environ, model_sources=[])
    assert isinstance(session.source, LiveMarketDataEngine)
    assert session.market_data.universe.symbols == ("GOOG", "GOOGL")
    assert session.market_data.dataset.interval_ns == MINUTE_NS
    assert session.market_data.dataset.periods_per_year == 252 * 390
    seen: dict[str, list] = {"bar": [], "feature_vector": []}

    async def tap(kind: str, messages: list) -> None:
        seen[kind].extend(messages)

    await bus.tap(tap, lambda kind: kind in seen)
    await session.start()
    task = asyncio.create_task(session.run())
    try:
        await asyncio.to_thread(server.wait_subscribed, "alpaca", ("GOOG", "GOOGL"))
        bars = relabelled_goog(60)

        def publish_all() -> None:
            for t, symbol, o, h, lo, c, v in bars.iter_rows():
                server.publish_bar(symbol, t, o, h, lo, c, v)

        await asyncio.to_thread(publish_all)
        last = T0 + 59 * MINUTE_NS
        await until(lambda: all(r.through == last for r in session.all_runners),
                    "every engine through the last bar time", timeout=10)  # fmt: skip
        assert not [r.last_error for r in session.all_runners if r.state != pb.ENGINE_STATE_RUNNING]
        published = sorted((m.header.event_time_ns, m.header.symbol, m.close) for m in seen["bar"])
        assert published == sorted(bars.select("event_time_ns", "symbol", "close").iter_rows())
        assert {m.header.symbol for m in seen["feature_vector"] if m.header.event_time_ns == last} == {"GOOG", "GOOGL"}
    finally:
        started = time.monotonic()
        await session.stop()
        stop_took = time.monotonic() - started
        await asyncio.wait_for(task, 5)
    assert stop_took < 3, f"session.stop() took {stop_took:.1f} s"
    feed = session.source.feed
    assert not feed.primary.running and not feed.secondary.running  # type: ignore[attr-defined]


def test_live_data_settings_that_cannot_work_are_refused() -> None:
    def session(**overrides: object) -> Session:
        config = load_config(environ={}, overrides={"data.primary": "alpaca", **overrides})
        return Session(config, bus=InProcessBus(), clock=WallClock(), environ={}, model_sources=[])

    with pytest.raises(ConfigError, match="live data needs market_data.symbols"):
        session()
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID"):
        session(**{"market_data.symbols": ["AAPL"]})
    with pytest.raises(ConfigError, match="data.primary is 'bloomberg'"):
        session(**{"market_data.symbols": ["AAPL"], "data.primary": "bloomberg"})
