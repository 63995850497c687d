"""Live bar streams: alpaca-py's and polygon-api-client's real streaming clients against the loopback server,
and the failover feed on top of them (with a fake clock, so no test waits out a failover delay)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator

import msgpack
import polars as pl
import pytest

from tests.loopback.market_data_stream import MarketDataStreamServer
from utp.core.config import BrokerConfig, DataConfig
from utp.core.feeds import BAR_SCHEMA, FailoverFeed
from utp.core.vendors.streams import AlpacaBarStream, PolygonBarStream
from utp.storage.datasets import BAR_COLUMNS

MINUTE_NS = 60 * 10**9
T0 = 1_700_000_040 * 10**9  # 2023-11-14 22:14 UTC, a minute boundary
SYMBOLS = ("AAPL", "MSFT")
Stream = AlpacaBarStream | PolygonBarStream

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server() -> Iterator[MarketDataStreamServer]:
    with MarketDataStreamServer() as running:
        yield running


@pytest.fixture
def config(server: MarketDataStreamServer) -> DataConfig:
    return DataConfig(primary="alpaca", secondary="polygon", alpaca_stream_url=server.alpaca_url,
                      polygon_stream_host=server.polygon_host, polygon_stream_secure=False)  # fmt: skip


@pytest.fixture
def make_stream(server: MarketDataStreamServer, config: DataConfig) -> Iterator[Callable[..., Stream]]:
    """Streams with the server's credentials unless told otherwise; all stopped (threads joined) at the end."""
    made: list[Stream] = []

    def make(vendor: str, symbols: tuple[str, ...] = SYMBOLS, *, good_credentials: bool = True) -> Stream:
        stream: Stream
        if vendor == "alpaca":
            secret = server.secret if good_credentials else "wrong-secret"
            stream = AlpacaBarStream(config, symbols, key=server.key, secret=secret)
        else:
            stream = PolygonBarStream(config, symbols, api_key=server.polygon_key if good_credentials else "wrong")
        made.append(stream)
        return stream

    yield make
    for stream in made:
        stream.stop()
    assert not any(stream.running for stream in made), "a stream thread outlived stop()"


class Collector:
    """A sink that keeps every frame; the stream calls it from its own thread."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self._lock = threading.Lock()

    def __call__(self, frame: pl.DataFrame) -> None:
        with self._lock:
            self.frames.append(frame)

    def bars(self) -> pl.DataFrame:
        with self._lock:
            return pl.concat(self.frames) if self.frames else pl.DataFrame(schema=BAR_SCHEMA)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def started(stream: Stream, server: MarketDataStreamServer) -> Collector:
    sink = Collector()
    stream.start(sink)
    server.wait_subscribed(stream.name, stream.symbols)
    return sink


def publish_minute(server: MarketDataStreamServer, minute: int, symbols: tuple[str, ...] = SYMBOLS) -> None:
    """Bars whose prices encode the minute and the symbol, so a misplaced row shows."""
    for offset, symbol in enumerate(symbols):
        price = 100.0 + minute + offset / 10
        server.publish_bar(symbol, T0 + minute * MINUTE_NS, price, price + 1, price - 1, price + 0.5, 1000 + minute)


def expected_minutes(*minutes: int, symbols: tuple[str, ...] = SYMBOLS) -> list[tuple[int, str, float]]:
    return [(T0 + m * MINUTE_NS, s, 100.0 + m + i / 10 + 0.5) for m in minutes for i, s in enumerate(symbols)]


def rows(bars: pl.DataFrame) -> list[tuple[int, str, float]]:
    return list(bars.select("event_time_ns", "symbol", "close").iter_rows())


# -- one vendor at a time ------------------------------------------------------------------------------------------


def test_alpaca_stream_delivers_bars_with_nanosecond_times(server, make_stream) -> None:
    stream = make_stream("alpaca")
    sink = started(stream, server)
    odd_time = T0 + 123_456_789  # alpaca-py's own parsing would round this to microseconds
    server.publish_bar("AAPL", odd_time, 189.5, 190.25, 189.0, 190.0, 12_345)
    server.publish_bar("TSLA", T0, 1, 1, 1, 1, 1)  # not subscribed: never sent
    server.publish_bar("MSFT", T0 + MINUTE_NS, 370.0, 371.0, 369.5, math.nan, 0.5)  # passed on as is
    wait_until(lambda: stream.bars == 2, "two alpaca bars")
    bars = sink.bars()
    assert bars.columns == list(BAR_COLUMNS)
    assert dict(bars.schema) == BAR_SCHEMA
    assert [frame.height for frame in sink.frames] == [1, 1]
    aapl, msft = bars.row(0), bars.row(1)
    assert aapl == (odd_time, "AAPL", 189.5, 190.25, 189.0, 190.0, 12_345.0)
    assert msft[:5] == (T0 + MINUTE_NS, "MSFT", 370.0, 371.0, 369.5) and math.isnan(msft[5]) and msft[6] == 0.5
    assert stream.malformed == 0 and stream.error is None
    assert stream.last_message_monotonic is not None and stream.last_message_monotonic <= time.monotonic()


def test_polygon_stream_delivers_minute_aggregates(server, make_stream) -> None:
    stream = make_stream("polygon")
    sink = started(stream, server)
    publish_minute(server, 0)
    server.publish_bar("AAPL", T0 + MINUTE_NS, -1.0, 2.0, -3.0, 1.5, 10)  # a broken bar is not the stream's call
    wait_until(lambda: stream.bars == 3, "three polygon bars")
    bars = sink.bars()
    assert bars.columns == list(BAR_COLUMNS)
    assert dict(bars.schema) == BAR_SCHEMA
    assert bars.rows() == [
        (T0, "AAPL", 100.0, 101.0, 99.0, 100.5, 1000.0),
        (T0, "MSFT", 100.1, 101.1, 99.1, 100.6, 1000.0),
        (T0 + MINUTE_NS, "AAPL", -1.0, 2.0, -3.0, 1.5, 10.0),
    ]
    assert stream.malformed == 0 and stream.error is None


@pytest.mark.parametrize("vendor", ["alpaca", "polygon"])
def test_rejected_credentials_end_the_stream_with_an_error(vendor, server, make_stream) -> None:
    stream = make_stream(vendor, good_credentials=False)
    stream.start(Collector())
    wait_until(lambda: not stream.running, f"the {vendor} stream to give up")
    assert stream.error is not None and f"{vendor} refused" in stream.error
    assert server.connections[vendor] == 1, "rejected credentials must not be retried"
    assert server.subscribed(vendor) == []


@pytest.mark.parametrize("vendor", ["alpaca", "polygon"])
def test_malformed_messages_are_counted_and_skipped(vendor, server, make_stream) -> None:
    stream = make_stream(vendor)
    sink = started(stream, server)
    if vendor == "alpaca":
        bad_bar = {"T": "b", "S": "AAPL", "o": "abc", "h": 1, "l": 1, "c": 1, "v": 1,
                   "t": msgpack.Timestamp.from_unix_nano(T0)}  # fmt: skip
        garbage = [b"\xc1 not msgpack", msgpack.packb({"T": "b"}), msgpack.packb([bad_bar]), "text, not msgpack"]
    else:
        bad_bar = {"ev": "AM", "sym": "AAPL", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "s": "yesterday"}
        garbage = ["{not json", '{"ev": "AM"}', json.dumps([bad_bar]), "[42]"]
    for frame in garbage:
        server.send_raw(vendor, frame)
    publish_minute(server, 0)
    wait_until(lambda: stream.bars == 2, f"{vendor} bars after the garbage")
    assert stream.malformed == len(garbage)
    assert rows(sink.bars()) == expected_minutes(0)
    assert stream.running and stream.error is None


@pytest.mark.parametrize("vendor", ["alpaca", "polygon"])
def test_stream_reconnects_after_the_server_drops_it(vendor, server, make_stream) -> None:
    stream = make_stream(vendor)
    sink = started(stream, server)
    publish_minute(server, 0)
    wait_until(lambda: stream.bars == 2, f"{vendor} bars before the drop")
    server.drop(vendor)
    server.wait_subscribed(vendor, SYMBOLS, timeout=30.0)
    publish_minute(server, 1)
    wait_until(lambda: stream.bars == 4, f"{vendor} bars after the reconnect")
    assert server.connections[vendor] == 2
    assert rows(sink.bars()) == expected_minutes(0, 1)
    assert stream.error is None


def test_stop_is_prompt_and_joins_the_thread(server, make_stream) -> None:
    streams = [make_stream("alpaca"), make_stream("polygon")]
    for stream in streams:
        started(stream, server)
    began = time.monotonic()
    for stream in streams:
        stream.stop()
    assert time.monotonic() - began < 2.0
    assert not any(stream.running for stream in streams)


def test_credentials_come_from_the_named_environment_variables(config) -> None:
    broker = BrokerConfig(key_env="MY_KEY", secret_env="MY_SECRET")
    with pytest.raises(ValueError, match="MY_SECRET"):
        AlpacaBarStream.from_environment(config, SYMBOLS, {"MY_KEY": "k"}, broker=broker)
    with pytest.raises(ValueError, match="POLYGON_API_KEY"):
        PolygonBarStream.from_environment(config, SYMBOLS, {})
    assert AlpacaBarStream.from_environment(config, SYMBOLS, {"MY_KEY": "k", "MY_SECRET": "s"}, broker=broker)
    assert PolygonBarStream.from_environment(config, ["AAPL"], {"POLYGON_API_KEY": "p"}).symbols == ("AAPL",)


def test_settings_the_stream_cannot_honour_are_refused(config) -> None:
    with pytest.raises(ValueError, match="timeframe"):
        PolygonBarStream(DataConfig(timeframe="5Min"), SYMBOLS, api_key="p")
    with pytest.raises(ValueError, match="alpaca_feed"):
        AlpacaBarStream(DataConfig(alpaca_feed="otc"), SYMBOLS, key="k", secret="s")
    with pytest.raises(ValueError, match="symbol"):
        PolygonBarStream(config, [], api_key="p")


# -- failover ------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def poll_until(feed: FailoverFeed, expected_rows: int, timeout: float = 30.0) -> pl.DataFrame:
    """Poll as a live session does until `expected_rows` have come, then once more to catch any extra."""
    frames: list[pl.DataFrame] = []
    wait_until(lambda: (frames.append(feed.poll()) or sum(f.height for f in frames)) >= expected_rows,
               f"{expected_rows} bars from the feed", timeout)  # fmt: skip
    frames.append(feed.poll())
    return pl.concat(frames)


def test_feed_fails_over_to_polygon_and_back_without_gap_or_duplicate(server, make_stream) -> None:
    alpaca, polygon = make_stream("alpaca"), make_stream("polygon")
    clock, heard = FakeClock(), []
    feed = FailoverFeed(alpaca, polygon, failover_after_s=90, clock=clock, on_notice=heard.append)
    feed.start()
    for vendor in ("alpaca", "polygon"):
        server.wait_subscribed(vendor, SYMBOLS)

    publish_minute(server, 0)
    first = poll_until(feed, 2)
    assert rows(first) == expected_minutes(0) and feed.active == "alpaca"

    server.silence("alpaca")  # connected but mute: the failure failover exists for
    publish_minute(server, 1)
    wait_until(lambda: polygon.bars == 4, "polygon's minute 1")
    assert feed.poll().is_empty() and feed.active == "alpaca", "the inactive source's bars must wait"

    clock.now = 91.0
    publish_minute(server, 2)
    wait_until(lambda: polygon.bars == 6, "polygon's minute 2")
    switched = feed.poll()
    assert feed.active == "polygon"
    assert feed.notices == heard == ["alpaca quiet for 91 s: failing over to polygon"]
    assert rows(switched) == expected_minutes(1, 2), "polygon must fill exactly from where alpaca stopped"

    # Sticky: alpaca delivering again is not enough to go back while polygon works.
    server.silence("alpaca", False)
    publish_minute(server, 3)
    wait_until(lambda: alpaca.bars == 4 and polygon.bars == 8, "minute 3 from both")
    assert rows(feed.poll()) == expected_minutes(3) and feed.active == "polygon"

    server.silence("polygon")
    clock.now = 200.0
    publish_minute(server, 4)
    wait_until(lambda: alpaca.bars == 6, "alpaca's minute 4")
    back = feed.poll()
    assert feed.active == "alpaca"
    assert feed.notices[-1] == "alpaca is back: polygon quiet for 109 s, switching back to alpaca"
    assert rows(back) == expected_minutes(4), "alpaca's minute 3, delivered by polygon already, must not repeat"
    assert feed.poll().is_empty()
    feed.stop()


def test_failover_notice_says_why_the_primary_stopped(server, make_stream) -> None:
    alpaca, polygon = make_stream("alpaca", good_credentials=False), make_stream("polygon")
    clock = FakeClock()
    feed = FailoverFeed(alpaca, polygon, failover_after_s=90, clock=clock)
    feed.start()
    server.wait_subscribed("polygon", SYMBOLS)
    wait_until(lambda: alpaca.error is not None, "alpaca to give up")
    publish_minute(server, 0)
    wait_until(lambda: polygon.bars == 2, "polygon's minute 0")
    assert feed.poll().is_empty() and feed.active == "alpaca", "no failover before failover_after_s"
    clock.now = 90.0
    publish_minute(server, 1)
    bars = poll_until(feed, 4)
    assert feed.active == "polygon"
    assert feed.notices[0].startswith("alpaca quiet for 90 s (alpaca refused the login")
    assert rows(bars) == expected_minutes(0, 1)
    feed.stop()


def test_feed_without_a_secondary_stays_on_the_primary_and_deduplicates(server, make_stream) -> None:
    polygon = make_stream("polygon")
    clock = FakeClock()
    feed = FailoverFeed(polygon, None, failover_after_s=1, clock=clock)
    feed.start()
    server.wait_subscribed("polygon", SYMBOLS)
    for minute in (1, 0, 1):  # out of order, and a repeat
        publish_minute(server, minute)
    wait_until(lambda: polygon.bars == 6, "six polygon bars")
    clock.now = 1_000.0  # quiet for long, but there is nowhere to go
    assert rows(feed.poll()) == expected_minutes(0, 1)
    publish_minute(server, 0)  # late: minute 1 was delivered already, so this would send time backwards
    publish_minute(server, 2)
    wait_until(lambda: polygon.bars == 10, "four more polygon bars")
    assert rows(feed.poll()) == expected_minutes(2)
    assert feed.active == "polygon" and feed.notices == []
    feed.stop()


def test_feed_refuses_two_sources_of_the_same_name(config) -> None:
    first = PolygonBarStream(config, SYMBOLS, api_key="p")
    with pytest.raises(ValueError, match="polygon"):
        FailoverFeed(first, PolygonBarStream(config, SYMBOLS, api_key="p"), failover_after_s=90)
    with pytest.raises(ValueError, match="failover_after_s"):
        FailoverFeed(first, None, failover_after_s=0)
