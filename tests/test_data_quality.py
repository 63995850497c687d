"""Data quality in the market-data engines, and the local bar store as a data set.

* Outliers: bars that pass validation but jump far beyond their symbol's recent volatility (or spike far above
  its recent volume) are quarantined with a message saying what moved and by how much, in a replay (with
  market_data.outliers) and live (data.outliers); the batch size never changes which.
* Freshness (live): a symbol without bars for data.max_bar_age_s of an open session becomes one STALE alert and
  one FRESH alert when its bars come back; feed failovers and a source that stopped with an error become alerts.
* `market_data.dataset: store` replays the bar store, split/dividend-adjusted with data.corporate_actions.

Live tests drive the vendors' real streaming clients against the loopback server, on a clock the test moves.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.loopback.market_data_stream import MarketDataStreamServer
from tests.test_live_market_data import HandClock, until
from utp.core.bus import InProcessBus
from utp.core.clock import WallClock
from utp.core.config import ConfigError, DataConfig, load_config
from utp.core.feeds import FailoverFeed
from utp.core.runtime import SourceRunner
from utp.core.universe import Universe
from utp.core.vendors.streams import AlpacaBarStream, PolygonBarStream
from utp.daemon import cli
from utp.daemon.session import MarketData, Session
from utp.daemon.watchdog import Alert, Check, Watchdogs, data_feed_staleness, reconnect_feed
from utp.engines.market_data import LiveMarketDataEngine, MarketDataEngine, outlier_detector
from utp.storage.bars import BarStore
from utp.storage.datasets import DAY_NS, dataset, store_dataset, synthetic_bars
from utp.v1 import events_pb2 as pb

MINUTE_NS = 60 * 10**9
T0 = int(datetime(2024, 1, 3, 14, 30, tzinfo=UTC).timestamp()) * 10**9  # 09:30 New York, a Wednesday
NEXT_OPEN = T0 + DAY_NS  # Thursday 09:30 New York
SYMBOLS = ("AAPL", "MSFT")

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------------------------


class Recorder:
    """A source engine under a real SourceRunner on the in-process bus; keeps every bar, rejected bar and alert."""

    def __init__(self, engine: MarketDataEngine | LiveMarketDataEngine, clock: object) -> None:
        self.engine = engine
        self.bus = InProcessBus()
        self.runner = SourceRunner(engine, self.bus, clock)  # type: ignore[arg-type]
        self.seen: dict[str, list] = {"bar": [], "rejected_bar": [], "data_alert": []}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        async def tap(kind: str, messages: list) -> None:
            self.seen[kind].extend(messages)

        await self.bus.tap(tap, lambda kind: kind in self.seen)
        await self.runner.start()
        self._task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.runner.stop()
        assert self._task is not None
        await asyncio.wait_for(self._task, 5)

    @property
    def rejected(self) -> list[pb.RejectedBar]:
        return self.seen["rejected_bar"]

    def alerts(self, kind: int | None = None) -> list[pb.DataAlert]:
        return [a for a in self.seen["data_alert"] if kind is None or a.kind == kind]


async def replay(bars: pl.DataFrame, universe: Universe, **engine_args: object) -> Recorder:
    engine = MarketDataEngine(bars, universe, interval_ns=DAY_NS, **engine_args)  # type: ignore[arg-type]
    async with Recorder(engine, WallClock()) as run:
        await asyncio.wait_for(run._task, 30)  # type: ignore[arg-type]
    return run


@pytest.fixture
def server() -> Iterator[MarketDataStreamServer]:
    with MarketDataStreamServer() as running:
        yield running


@pytest.fixture
def data_config(server: MarketDataStreamServer) -> DataConfig:
    return DataConfig(primary="alpaca", alpaca_stream_url=server.alpaca_url, polygon_stream_host=server.polygon_host,
                      polygon_stream_secure=False)  # fmt: skip


def alpaca_feed(server: MarketDataStreamServer, config: DataConfig) -> FailoverFeed:
    return FailoverFeed(AlpacaBarStream(config, SYMBOLS, key=server.key, secret=server.secret), None,
                        failover_after_s=600)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Outliers in a replay
# --------------------------------------------------------------------------------------------------------------


def real_bars() -> pl.DataFrame:
    """Real daily bars of four symbols, 2005-2007: GOOG with volumes, AAPL, JPM and XOM closes (volume 0)."""
    goog = dataset("goog").bars(start=date(2005, 1, 1), end=date(2007, 12, 31))
    stocks = dataset("sp500").bars(("AAPL", "JPM", "XOM"), date(2005, 1, 1), date(2007, 12, 31))
    return pl.concat([goog, stocks]).sort("event_time_ns", maintain_order=True)


def inject(bars: pl.DataFrame, symbol: str, day: int, **columns: float) -> tuple[pl.DataFrame, int]:
    """`bars` with the `day`-th bar of `symbol` given these values; returns it and that bar's time."""
    rows = bars.with_row_index("_i").filter(pl.col("symbol") == symbol)
    i, when = rows["_i"][day], rows["event_time_ns"][day]
    changed = bars.with_row_index("_i").with_columns(
        *(pl.when(pl.col("_i") == i).then(pl.lit(value)).otherwise(pl.col(name)).alias(name)
          for name, value in columns.items())
    ).drop("_i")  # fmt: skip
    return changed, int(when)


def bad_ticks() -> tuple[pl.DataFrame, dict[tuple[str, int], int]]:
    """Real bars with three bad ticks (a tripled close, a quartered close, a 400x volume) and one invalid bar;
    also the expected reason of each."""
    bars = real_bars()
    goog_close = bars.filter(pl.col("symbol") == "GOOG")["close"][300]
    bars, jump = inject(bars, "GOOG", 300, close=goog_close * 3, high=goog_close * 3)
    aapl_close = bars.filter(pl.col("symbol") == "AAPL")["close"][500]
    bars, drop = inject(bars, "AAPL", 500, open=aapl_close / 4, high=aapl_close / 4, low=aapl_close / 4,
                        close=aapl_close / 4)  # fmt: skip
    goog_volume = bars.filter(pl.col("symbol") == "GOOG")["volume"][600]
    bars, spike = inject(bars, "GOOG", 600, volume=goog_volume * 400)
    bars, broken = inject(bars, "JPM", 400, close=math.nan)
    expected = {("GOOG", jump): pb.BAR_REJECT_REASON_OUTLIER_PRICE, ("AAPL", drop): pb.BAR_REJECT_REASON_OUTLIER_PRICE,
                ("GOOG", spike): pb.BAR_REJECT_REASON_OUTLIER_VOLUME, ("JPM", broken): pb.BAR_REJECT_REASON_NON_FINITE}
    return bars, expected  # fmt: skip


UNIVERSE = Universe(("GOOG", "AAPL", "JPM", "XOM"))


async def test_replay_quarantines_outliers_the_same_whatever_the_batch_size() -> None:
    bars, expected = bad_ticks()
    runs = {}
    for batch in (1, 1000):
        runs[batch] = await replay(bars, UNIVERSE, batch_bar_times=batch,
                                   outliers=outlier_detector(DataConfig(), len(UNIVERSE)))  # fmt: skip
    one, many = runs[1], runs[1000]
    assert [r.SerializeToString() for r in one.rejected] == [r.SerializeToString() for r in many.rejected]
    assert [b.SerializeToString() for b in one.seen["bar"]] == [b.SerializeToString() for b in many.seen["bar"]]
    # Exactly the bad ticks, in record order: real 2005-2007 data has no genuine move the detector refuses.
    got = {(r.header.symbol, r.header.event_time_ns): r.reason for r in one.rejected}
    assert got == expected
    assert [r.header.event_time_ns for r in one.rejected] == sorted(t for _, t in expected)
    assert one.engine.bars_rejected == 4 and one.runner.events_rejected == 4
    assert one.engine.bars_published == bars.height - 4
    by_reason = {r.reason: r for r in one.rejected if r.header.symbol == "GOOG"}
    jump = by_reason[pb.BAR_REJECT_REASON_OUTLIER_PRICE].message
    goog = real_bars().filter(pl.col("symbol") == "GOOG")["close"]
    moved = f"close {3 * goog[300]:g} is a {math.log(3 * goog[300] / goog[299]):+.2f} log move from {goog[299]:g}, "
    assert moved in jump and re.search(r"\d\.\dx its recent volatility 0\.\d{4} \(limits 10x and 0\.2\)", jump), jump
    spike = by_reason[pb.BAR_REJECT_REASON_OUTLIER_VOLUME].message
    assert "x its recent median volume" in spike and "(limit 50x)" in spike, spike
    # The day after a bad tick is judged against the last good close, so it goes out.
    published = {(b.header.symbol, b.header.event_time_ns) for b in one.seen["bar"]}
    goog_times = bars.filter(pl.col("symbol") == "GOOG")["event_time_ns"].to_list()
    assert ("GOOG", goog_times[301]) in published and ("GOOG", goog_times[601]) in published


async def test_replay_checks_no_outliers_unless_asked() -> None:
    bars, expected = bad_ticks()
    run = await replay(bars, UNIVERSE, batch_bar_times=1000)
    assert [(r.header.symbol, r.reason) for r in run.rejected] == [("JPM", pb.BAR_REJECT_REASON_NON_FINITE)]
    assert run.engine.bars_published == bars.height - 1

    replayed = Session(load_config(environ={}, overrides={"market_data.symbols": ["GOOG"]}), bus=InProcessBus(),
                       clock=WallClock(), model_sources=[])  # fmt: skip
    assert replayed.source.outliers is None  # market_data.outliers defaults to false: packaged sets are vetted
    checked = Session(load_config(environ={}, overrides={"market_data.symbols": ["GOOG"], "market_data.outliers": True,
                                                         "data.outlier_sigma": 7.5}),
                      bus=InProcessBus(), clock=WallClock(), model_sources=[])  # fmt: skip
    assert checked.source.outliers is not None and checked.source.outliers.max_move_sigma == 7.5


async def test_outlier_state_survives_a_checkpoint() -> None:
    """Resuming from a snapshot taken mid-replay flags the same later bars as a replay that never stopped."""
    bars, expected = bad_ticks()
    whole = await replay(bars, UNIVERSE, outliers=outlier_detector(DataConfig(), len(UNIVERSE)))
    # Ten bar times before AAPL's bad tick (one batch each, so the resumed engine's batch numbers line up).
    times = np.unique(bars["event_time_ns"].to_numpy())
    aapl_drop = next(t for (symbol, t), why in expected.items() if symbol == "AAPL")
    cut = int(times[np.searchsorted(times, aapl_drop) - 10])
    first = await replay(bars.filter(pl.col("event_time_ns") < cut), UNIVERSE,
                         outliers=outlier_detector(DataConfig(), len(UNIVERSE)))  # fmt: skip
    saved = pickle.dumps(first.engine.snapshot())  # as a checkpoint keeps it
    state = pickle.loads(saved)
    assert (state["outliers"]["ret_n"] >= 20).all()
    resumed = MarketDataEngine(bars, UNIVERSE, interval_ns=DAY_NS, outliers=outlier_detector(DataConfig(), 4))
    resumed.restore(state)
    async with Recorder(resumed, WallClock()) as run:
        await asyncio.wait_for(run._task, 30)  # type: ignore[arg-type]
    later = [r.SerializeToString() for r in whole.rejected if r.header.event_time_ns >= cut]
    assert len(later) == 2  # the volume spike and AAPL's drop come after the cut
    assert [r.SerializeToString() for r in run.rejected] == later
    assert "x its recent volatility" in run.rejected[0].message
    # Without the restored state the detector would be warming up again, judging AAPL by its warm-up limit.
    fresh = MarketDataEngine(bars, UNIVERSE, interval_ns=DAY_NS, outliers=outlier_detector(DataConfig(), 4))
    fresh.restore({**pickle.loads(saved), "outliers": None})
    async with Recorder(fresh, WallClock()) as cold:
        await asyncio.wait_for(cold._task, 30)  # type: ignore[arg-type]
    assert "beyond the warm-up limit 0.5 (9 of 20 returns known)" in cold.rejected[0].message, cold.rejected[0]


# --------------------------------------------------------------------------------------------------------------
# Outliers live
# --------------------------------------------------------------------------------------------------------------


async def test_live_bars_are_checked_for_outliers(server, data_config) -> None:
    # Two real series as minute bars: GOOG's first 30 days as AAPL, the 30 after as MSFT.
    goog = dataset("goog").bars().head(60)
    series = {"AAPL": goog.head(30), "MSFT": goog.tail(30)}
    clock = HandClock(T0)
    engine = LiveMarketDataEngine(alpaca_feed(server, data_config), Universe(SYMBOLS), interval_ns=MINUTE_NS,
                                  outliers=outlier_detector(data_config, len(SYMBOLS)))  # fmt: skip
    assert "data_alert" in engine.outputs
    async with Recorder(engine, clock) as run:
        await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)

        def publish(minute: int, symbol: str, **changes: float) -> None:
            row = series[symbol].row(minute, named=True) | changes
            server.publish_bar(symbol, T0 + minute * MINUTE_NS, row["open"], row["high"], row["low"], row["close"],
                               row["volume"])  # fmt: skip

        for minute in range(25):
            for symbol in SYMBOLS:
                close = series[symbol]["close"][minute]
                if minute == 23 and symbol == "MSFT":  # a bad tick: a tenth of the price
                    publish(minute, symbol, low=close / 10, close=close / 10)
                else:
                    publish(minute, symbol)
        await until(lambda: len(run.seen["bar"]) == 49, "49 bars and one refused")
    assert [(r.header.symbol, r.header.event_time_ns, r.reason) for r in run.rejected] == [
        ("MSFT", T0 + 23 * MINUTE_NS, pb.BAR_REJECT_REASON_OUTLIER_PRICE)]  # fmt: skip
    message, msft = run.rejected[0].message, series["MSFT"]["close"]
    moved = f"close {msft[23] / 10:g} is a {math.log(msft[23] / 10 / msft[22]):+.2f} log move from {msft[22]:g}, "
    assert "(arrival " in message and moved in message and "x its recent volatility" in message, message
    assert ("MSFT", T0 + 24 * MINUTE_NS) in {(b.header.symbol, b.header.event_time_ns) for b in run.seen["bar"]}
    assert engine.snapshot()["outliers"]["ret_n"].tolist() == [24, 23]


# --------------------------------------------------------------------------------------------------------------
# Freshness and feed alerts
# --------------------------------------------------------------------------------------------------------------


async def test_a_quiet_symbol_is_stale_once_and_fresh_once_during_a_session_only(server, data_config) -> None:
    clock = HandClock(T0 - 3_600 * 10**9)  # 08:30 New York: the session is not open yet
    engine = LiveMarketDataEngine(alpaca_feed(server, data_config), Universe(SYMBOLS), interval_ns=MINUTE_NS,
                                  max_bar_age_s=300)  # fmt: skip
    async with Recorder(engine, clock) as run:
        await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)
        await asyncio.sleep(0.2)
        clock.now = T0 + 4 * MINUTE_NS  # 4 minutes into the session, nothing yet: not stale (limit 5 min)
        await asyncio.sleep(0.2)
        assert run.alerts() == []

        def publish(minute: int, *symbols: str) -> None:
            for symbol in symbols:
                p = 100.0 + minute
                server.publish_bar(symbol, T0 + minute * MINUTE_NS, p, p + 1, p - 1, p, 1000)

        publish(0, *SYMBOLS)
        await until(lambda: len(run.seen["bar"]) == 2, "minute 0")
        for minute in range(1, 8):  # MSFT goes quiet after minute 0
            clock.now = T0 + (minute + 1) * MINUTE_NS
            publish(minute, "AAPL")
            await until(lambda m=minute: engine.through_ns == T0 + (m - 1) * MINUTE_NS, f"minute {minute - 1}")
        await until(lambda: len(run.alerts()) == 1, "MSFT stale")
        stale = run.alerts()[0]
        assert (stale.kind, stale.header.symbol, stale.source) == (pb.DATA_ALERT_KIND_STALE, "MSFT", "alpaca")
        # First seen past the limit at 09:36 (at 09:35 it was exactly 5 minutes: not more).
        assert stale.age_s == 6 * 60 and "MSFT: no bar for 6.0 min" in stale.message, stale
        clock.now += 3 * MINUTE_NS  # AAPL's last bar is 09:37: still fresh at 09:41
        await asyncio.sleep(0.2)
        assert len(run.alerts()) == 1, "a stale symbol was announced twice"

        publish(9, *SYMBOLS)
        await until(lambda: len(run.alerts()) == 2, "MSFT fresh again")
        fresh = run.alerts()[1]
        assert (fresh.kind, fresh.header.symbol, fresh.age_s) == (pb.DATA_ALERT_KIND_FRESH, "MSFT", 9 * 60.0)
        assert "MSFT: bars again" in fresh.message
        assert engine.stale.tolist() == [False, False]

        clock.now = T0 + 7 * 3_600 * 10**9  # 16:30 New York: closed; hours without a bar are not staleness
        await asyncio.sleep(0.3)
        assert len(run.alerts()) == 2
        clock.now = NEXT_OPEN + 4 * MINUTE_NS  # the next session: its age runs from its open, not from yesterday
        await asyncio.sleep(0.2)
        assert len(run.alerts()) == 2
        clock.now = NEXT_OPEN + 6 * MINUTE_NS
        await until(lambda: len(run.alerts()) == 4, "both stale the next morning")
        assert {(a.kind, a.header.symbol) for a in run.alerts()[2:]} == {
            (pb.DATA_ALERT_KIND_STALE, "AAPL"), (pb.DATA_ALERT_KIND_STALE, "MSFT")}  # fmt: skip
        state = engine.snapshot()
    assert state["stale"].tolist() == [True, True] and state["data_alerts"] == 4
    assert len({a.header.event_id for a in run.alerts()}) == 4


async def test_a_source_error_and_a_failover_become_alerts(server, data_config) -> None:
    alpaca = AlpacaBarStream(data_config, SYMBOLS, key=server.key, secret="wrong-secret")
    polygon = PolygonBarStream(data_config, SYMBOLS, api_key=server.polygon_key)
    feed = FailoverFeed(alpaca, polygon, failover_after_s=0.3)
    engine = LiveMarketDataEngine(feed, Universe(SYMBOLS), interval_ns=MINUTE_NS)
    async with Recorder(engine, HandClock(T0)) as run:
        await until(lambda: bool(run.alerts(pb.DATA_ALERT_KIND_SOURCE_ERROR)), "alpaca's error")
        await asyncio.to_thread(server.wait_subscribed, "polygon", SYMBOLS)
        minute = 0
        while feed.active != "polygon":  # polygon must be delivering when alpaca has been quiet long enough
            for symbol in SYMBOLS:
                server.publish_bar(symbol, T0 + minute * MINUTE_NS, 100, 101, 99, 100, 10)
            minute += 1
            await asyncio.sleep(0.1)
            assert minute < 50, "never failed over to polygon"
        await until(lambda: bool(run.alerts(pb.DATA_ALERT_KIND_FAILOVER)), "the failover alert")
        await asyncio.sleep(0.2)
    errors, failovers = run.alerts(pb.DATA_ALERT_KIND_SOURCE_ERROR), run.alerts(pb.DATA_ALERT_KIND_FAILOVER)
    assert len(errors) == 1 and errors[0].source == "alpaca" and "alpaca refused" in errors[0].message, errors
    assert len(failovers) == 1 and failovers[0].source == "polygon", failovers
    assert "failing over to polygon" in failovers[0].message and "alpaca refused" in failovers[0].message
    assert engine.feed_notices == 1


async def test_a_reconnect_brings_back_a_source_that_ended(server, data_config) -> None:
    # The data-feed watchdog's recovery: the account's login was refused (the stream ended, with an alert); once
    # it is fixed, FailoverFeed.reconnect connects again and bars flow; a second refusal is news again.
    server.secret = "rotated-at-the-vendor"
    alpaca = AlpacaBarStream(data_config, SYMBOLS, key=server.key, secret=MarketDataStreamServer.secret)
    feed = FailoverFeed(alpaca, None, failover_after_s=0.3)
    engine = LiveMarketDataEngine(feed, Universe(SYMBOLS), interval_ns=MINUTE_NS)
    async with Recorder(engine, HandClock(T0)) as run:
        await until(lambda: bool(run.alerts(pb.DATA_ALERT_KIND_SOURCE_ERROR)), "alpaca's refused login")
        await until(lambda: not alpaca.running, "the alpaca stream to end")
        server.secret = MarketDataStreamServer.secret  # fixed
        assert await asyncio.to_thread(feed.reconnect) == ["alpaca"]
        assert alpaca.error is None and alpaca.running
        await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)
        for minute in range(3):
            for symbol in SYMBOLS:
                server.publish_bar(symbol, T0 + minute * MINUTE_NS, 100, 101, 99, 100, 10)
        await until(lambda: len(run.seen["bar"]) >= 4, "bars after the reconnect")
        server.secret = "rotated-again"
        server.drop("alpaca")
        await asyncio.to_thread(feed.reconnect)  # also what a watchdog does with a stream it finds quiet
        await until(lambda: len(run.alerts(pb.DATA_ALERT_KIND_SOURCE_ERROR)) == 2, "the second refusal")
    assert {(b.header.symbol, b.header.event_time_ns) for b in run.seen["bar"]} >= {
        (s, T0 + m * MINUTE_NS) for s in SYMBOLS for m in range(2)}  # fmt: skip
    assert all("alpaca refused" in a.message for a in run.alerts(pb.DATA_ALERT_KIND_SOURCE_ERROR))


async def test_the_data_feed_watchdog_reconnects_a_live_sessions_feed(server) -> None:
    config = load_config(environ={}, overrides={
        "data.primary": "alpaca", "data.alpaca_stream_url": server.alpaca_url, "market_data.symbols": list(SYMBOLS)})
    environ = {"APCA_API_KEY_ID": server.key, "APCA_API_SECRET_KEY": server.secret}
    session = Session(config, bus=InProcessBus(), clock=WallClock(), environ=environ, model_sources=[])
    feed = session.source.feed
    assert isinstance(feed, FailoverFeed)
    alerts: list[Alert] = []
    now = [T0]
    stale = data_feed_staleness(lambda: None, lambda: now[0], 60, lambda _: True)
    watchdogs = Watchdogs([Check("data_feed", stale, reconnect_feed(feed), interval_s=1)], alerts.append)
    feed.start()
    try:
        await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)
        await watchdogs.check_once(0.0)  # the session has just opened: no bar is due yet
        assert alerts == []
        server.silence("alpaca")
        handshake = feed.primary.last_message_monotonic
        now[0] += 61 * 10**9
        await watchdogs.check_once(1.0)
        assert [(a.source, a.severity, a.action) for a in alerts] == [("watchdog:data_feed", "critical", "reconnected alpaca")]
        assert "no bar has arrived 61 s into the session" in alerts[0].message
        # A new connection: its handshake is heard although the vendor sends no bars.
        await until(lambda: (feed.primary.last_message_monotonic or 0) > (handshake or 0), "a new connection")
        await asyncio.to_thread(server.wait_subscribed, "alpaca", SYMBOLS)
        assert feed.primary.running and feed.primary.error is None
    finally:
        feed.stop()


def test_a_live_session_checks_outliers_and_freshness_with_the_data_settings(server) -> None:
    config = load_config(environ={}, overrides={
        "data.primary": "alpaca", "data.alpaca_stream_url": server.alpaca_url, "market_data.symbols": list(SYMBOLS),
        "data.max_bar_age_s": 120, "data.outlier_volume_multiple": 20})  # fmt: skip
    environ = {"APCA_API_KEY_ID": server.key, "APCA_API_SECRET_KEY": server.secret}
    session = Session(config, bus=InProcessBus(), clock=WallClock(), environ=environ, model_sources=[])
    source = session.source
    assert isinstance(source, LiveMarketDataEngine)
    assert source.max_bar_age_ns == 120 * 10**9 and source.sessions.calendar == "XNYS"
    assert source.outliers is not None and source.outliers.max_volume_multiple == 20

    def session_with(**overrides: object) -> Session:
        changed = load_config(base=config, environ={}, overrides=overrides)
        return Session(changed, bus=InProcessBus(), clock=WallClock(), environ=environ, model_sources=[])

    assert session_with(**{"data.outliers": False}).source.outliers is None
    with pytest.raises(ConfigError, match="data.outlier_min_move must be a number > 0, got -0.1"):
        session_with(**{"data.outlier_min_move": -0.1})


# --------------------------------------------------------------------------------------------------------------
# The bar store as a data set
# --------------------------------------------------------------------------------------------------------------

START, END, EX_DATE = date(2010, 1, 1), date(2011, 12, 31), date(2011, 1, 3)


def split_store(tmp_path: Path) -> tuple[Path, Path, pl.DataFrame]:
    """A bar store of GOOG 2010-2011 as traded before a (made-up) 2:1 split on 2011-01-03: prices before it
    doubled, volumes halved. Returns the store, a corporate-actions CSV with the split, and the real bars."""
    real = dataset("goog").bars(start=START, end=END)
    before = pl.col("event_time_ns") < (EX_DATE - date(1970, 1, 1)).days * DAY_NS
    raw = real.with_columns(
        *(pl.when(before).then(pl.col(c) * 2).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close")),
        pl.when(before).then(pl.col("volume") / 2).otherwise(pl.col("volume")).alias("volume"),
    )  # fmt: skip
    root = tmp_path / "bars"
    BarStore(root).write(raw)
    actions = tmp_path / "actions.csv"
    actions.write_text(f"symbol,ex_date,split_ratio,cash_dividend\nGOOG,{EX_DATE},2,\n")
    return root, actions, real


def store_config(root: Path, actions: Path | None = None, **overrides: object) -> object:
    return load_config(environ={}, overrides={
        "market_data.dataset": "store", "data.store_dir": str(root), "market_data.start": str(START),
        "market_data.end": str(END), "data.corporate_actions": str(actions or ""), **overrides})  # fmt: skip


def test_the_bar_store_replays_split_adjusted(tmp_path) -> None:
    root, actions, real = split_store(tmp_path)
    adjusted = MarketData.from_config(store_config(root, actions))
    assert adjusted.bars.equals(real)
    assert adjusted.universe.symbols == ("GOOG",)
    assert (adjusted.dataset.name, adjusted.dataset.interval_ns, adjusted.dataset.periods_per_year) == (
        "store", DAY_NS, 252.0)  # fmt: skip
    unadjusted = MarketData.from_config(store_config(root))
    assert not unadjusted.bars.equals(real)
    assert unadjusted.bars["close"][0] == 2 * real["close"][0]


def test_utp_backtest_on_the_store_equals_the_backtest_on_the_unsplit_bars(tmp_path, capsys) -> None:
    root, actions, _ = split_store(tmp_path)
    period = ["--start", str(START), "--end", str(END), "--json", "--batch-bar-times", "1000"]
    assert cli.main(["backtest", "--dataset", "goog", *period]) == 0
    expected = json.loads(capsys.readouterr().out)
    store = ["--set", f"data.store_dir={root}", "--set", f"data.corporate_actions={actions}"]
    assert cli.main(["backtest", "--dataset", "store", "--symbols", "GOOG", *store, *period]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == expected and got["bars"] == 504 and got["signals"] > 0, got


def test_the_store_under_the_data_dir_and_its_errors(tmp_path, capsys) -> None:
    root, _, _ = split_store(tmp_path)
    # No data.store_dir: <data dir>/bars.
    by_data_dir = load_config(environ={}, overrides={"market_data.dataset": "store", "data_dir": str(tmp_path)})
    assert MarketData.from_config(by_data_dir).bars.height == 504

    assert cli.main(["backtest", "--dataset", "store", "--symbols", "AAPL", "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"the bar store {root} has no bars of AAPL; it holds GOOG 2010-01-04..2011-12-30" in error, error
    with pytest.raises(ValueError, match=r"has no bars of GOOG between 2015-01-01 and the end; it holds GOOG 2010"):
        store_dataset(root, ("GOOG",), date(2015, 1, 1))
    with pytest.raises(ValueError, match=re.escape(f"the bar store {tmp_path / 'empty'} holds no bars")):
        MarketData.from_config(store_config(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown data set 'stor'.*or store"):
        MarketData.from_config(store_config(root, **{"market_data.dataset": "stor"}))


def test_the_store_infers_intraday_intervals_and_adjusts_dividends(tmp_path) -> None:
    minutes = synthetic_bars(3 * 390, symbol="SYN")  # three sessions, 2000-01-03 .. 2000-01-05
    other = synthetic_bars(390, symbol="ALT", seed=11).filter(pl.int_range(pl.len()) % 5 == 0)  # 5-minute gaps
    BarStore(tmp_path / "bars").write(pl.concat([minutes, other]))
    actions = tmp_path / "actions.parquet"
    pl.DataFrame({"symbol": ["SYN", "SYN"], "ex_date": [date(2000, 1, 4), date(2000, 1, 5)],
                  "cash_dividend": [1.0, 2.0]}).write_parquet(actions)  # fmt: skip
    # Through 2000-01-04: the 2000-01-05 dividend is after the period, so it does not count.
    ds = store_dataset(tmp_path / "bars", ("SYN", "ALT"), end=date(2000, 1, 4), corporate_actions=actions)
    assert (ds.interval_ns, ds.periods_per_year, ds.symbols) == (MINUTE_NS, 252.0 * 390, ("SYN", "ALT"))
    bars = ds.bars(("SYN",))
    real = minutes.head(2 * 390)
    factor = 1.0 - 1.0 / real["close"][389]  # the close before the ex-date
    assert np.allclose(bars["close"].to_numpy()[:390], real["close"].to_numpy()[:390] * factor, rtol=1e-12)
    assert bars["close"].to_list()[390:] == real["close"].to_list()[390:]
    assert bars["volume"].to_list() == real["volume"].to_list()
    assert store_dataset(tmp_path / "bars", ("ALT",)).interval_ns == 5 * MINUTE_NS
    assert pickle.loads(pickle.dumps(ds)).bars(("SYN",)).equals(bars)  # a process pool can take it
