"""Live minute bars from Alpaca and Polygon through the vendors' own streaming clients.

Each stream runs its client on a private event loop in a daemon thread and hands every bar message to a
sink as a bar frame (core.feeds.BAR_SCHEMA). What the clients do by themselves, and what is added here:

* alpaca-py's StockDataStream speaks MessagePack; bar times arrive as MessagePack timestamps, read here to
  the nanosecond (raw mode: its own parsing would round them to microseconds). It reconnects by itself,
  with backoff, after a dropped connection or a failed connect. It also retries rejected credentials
  forever, which would hide them, so a rejection ends the stream here with `error` set. A frame that is
  not MessagePack would only be logged by the client; frames are checked here first so that they are
  counted in `malformed` like any other bad message.
* polygon-api-client's WebSocketClient speaks JSON. It reconnects by itself after an abnormal close but
  returns after a normal one (a server restart says "going away"), and any exception in decoding or in our
  callback ends it, so it runs in raw mode (we decode) inside a reconnect loop with backoff. A rejected
  key ends the stream with `error` set.

A message that cannot be decoded is logged with the reason, counted in `malformed` and skipped. Bars that
decode are passed on as they are, NaN or negative prices included: judging them is the market-data
engine's job (it quarantines them), not the transport's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import polars as pl
from alpaca.data.enums import DataFeed
from alpaca.data.live.stock import StockDataStream
from polygon.exceptions import AuthError
from polygon.websocket import WebSocketClient

from utp.core.config import BrokerConfig, DataConfig
from utp.core.feeds import BAR_SCHEMA, BarSink

log = logging.getLogger(__name__)

BarRow = tuple[int, str, float, float, float, float, float]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Both vendors stream one-minute bars (Alpaca `bars`, Polygon `AM`); other intervals come from backfills.
LIVE_TIMEFRAME = "1Min"
#: Alpaca errors at login that retrying will not cure; others (connection limit, auth timeout) may pass.
ALPACA_FATAL_LOGIN_ERRORS = ("auth failed", "failed to authenticate", "insufficient subscription")


class _VendorStream:
    """A vendor client on its own event loop in a daemon thread, with the bookkeeping both vendors share."""

    name = "vendor"

    def __init__(self, config: DataConfig, symbols: Iterable[str]) -> None:
        self.symbols: tuple[str, ...] = tuple(dict.fromkeys(s.strip() for s in symbols if s.strip()))
        if not self.symbols:
            raise ValueError(f"a {self.name} bar stream needs at least one symbol")
        if config.timeframe != LIVE_TIMEFRAME:
            raise ValueError(f"data.timeframe is {config.timeframe!r}, but {self.name} streams {LIVE_TIMEFRAME} bars "
                             f"only; set it to {LIVE_TIMEFRAME} for a live session")  # fmt: skip
        self.config = config
        #: Messages that could not be decoded and were skipped.
        self.malformed = 0
        #: Bars handed to the sink.
        self.bars = 0
        #: Why the stream ended by itself (rejected credentials, ...); None unless it did.
        self.error: str | None = None
        #: time.monotonic() of the last frame received from the vendor, bars or not.
        self.last_message_monotonic: float | None = None
        self._sink: BarSink | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, sink: BarSink) -> None:
        if self._thread is not None:
            raise RuntimeError(f"the {self.name} bar stream was started already; make a new one")
        self._sink = sink
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name=f"{self.name}-bars",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        ready.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the client's task and join the thread; cancelling (rather than asking the client to stop)
        is what makes this prompt: alpaca-py looks at its stop request only between 5 s receive timeouts."""
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            self._cancel_task()
            thread.join(1.0)  # again if a cancel was swallowed (asyncio.wait_for on 3.11 can do that)
        if thread.is_alive():
            log.warning("the %s bar stream did not stop within %.0f s; leaving its daemon thread", self.name, timeout)

    def restart(self, timeout: float = 5.0) -> None:
        """Stop the vendor's client and connect again with the same sink: the watchdog's reconnect for a stream
        that ended (rejected login since fixed, the client gave up) or went quiet. Counters carry on."""
        sink = self._sink
        if sink is None:
            raise RuntimeError(f"the {self.name} bar stream was never started")
        self.stop(timeout)
        if self.running:
            raise RuntimeError(f"the {self.name} bar stream did not stop within {timeout:g} s; not reconnecting")
        self._thread, self._loop, self._task = None, None, None
        self._stopping = threading.Event()
        self.error = None
        self.start(sink)

    def _cancel_task(self) -> None:
        loop, task = self._loop, self._task
        if loop is None or task is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the thread is ending anyway
            loop.call_soon_threadsafe(task.cancel)

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._task = loop.create_task(self._run())
            self._loop = loop
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        except Exception as exc:  # a bug here or in the client: end this stream loudly, never the process
            log.exception("the %s bar stream failed", self.name)
            self.error = f"{self.name} bar stream failed: {exc!r}"
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _run(self) -> None:
        raise NotImplementedError

    # -- called on the stream's thread -------------------------------------------------------------------------

    def _frame_received(self) -> None:
        self.last_message_monotonic = time.monotonic()

    def _deliver(self, rows: Sequence[BarRow]) -> None:
        frame = pl.DataFrame(list(rows), schema=BAR_SCHEMA, orient="row")
        self.bars += frame.height
        assert self._sink is not None
        try:
            self._sink(frame)
        except Exception:  # the consumer's bug; the stream itself is fine and goes on
            log.exception("the sink of the %s bar stream failed on %d bars", self.name, frame.height)

    def _skip(self, reason: str, payload: object) -> None:
        self.malformed += 1
        log.warning("%s: skipped a malformed message (%s): %.200r", self.name, reason, payload)

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("%s", message)


def _price(message: Mapping[str, Any], key: str) -> float:
    if key not in message:
        raise ValueError(f"no field {key!r}")
    value = message[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field {key!r} is {value!r}, not a number")
    return float(value)


def _symbol(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {key!r} is {value!r}, not a symbol")
    return value


def _ohlcv(message: Mapping[str, Any]) -> tuple[float, float, float, float, float]:
    return (_price(message, "o"), _price(message, "h"), _price(message, "l"), _price(message, "c"),
            _price(message, "v"))  # fmt: skip


def _required_env(environ: Mapping[str, str], variable: str, what: str) -> str:
    value = environ.get(variable, "").strip()
    if not value:
        raise ValueError(f"{what} is missing: set the environment variable {variable}")
    return value


# -- Alpaca ----------------------------------------------------------------------------------------------------


def alpaca_bar_row(message: Mapping[str, Any]) -> BarRow:
    """A raw alpaca-py bar message ({"T": "b", "S", "o", "h", "l", "c", "v", "t", ...}) as a bar row."""
    stamp = message.get("t")
    if isinstance(stamp, msgpack.Timestamp):
        time_ns = stamp.to_unix_nano()
    elif isinstance(stamp, datetime) and stamp.tzinfo is not None:
        time_ns = (stamp - _EPOCH) // timedelta(microseconds=1) * 1_000
    else:
        raise ValueError(f"field 't' is {stamp!r}, not a timestamp")
    return (time_ns, _symbol(message, "S"), *_ohlcv(message))


def _alpaca_frame_problem(frame: object) -> str | None:
    """Why alpaca-py could not use this frame, or None: it must be MessagePack for a list of maps."""
    try:
        messages = msgpack.unpackb(frame)  # type: ignore[arg-type]
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        return f"not MessagePack: {exc}"
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return f"not a list of messages but {type(messages).__name__}"
    return None


class _CheckedStockDataStream(StockDataStream):
    """StockDataStream that reports rejected credentials and undecodable frames to its AlpacaBarStream.

    Both hooks override internals of alpaca-py 0.44 (`_auth`, `_start_ws`), the only places where these events
    can be seen: the client otherwise logs them and carries on.
    """

    def __init__(self, owner: AlpacaBarStream, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner

    async def _auth(self) -> None:
        try:
            await super()._auth()
        except ValueError as exc:
            if str(exc) in ALPACA_FATAL_LOGIN_ERRORS:
                feed = self._owner.feed.value
                self._owner._fail(f"alpaca refused the login at {self._endpoint}: {exc} (check the key and "
                                  f"secret, and that the account may use the {feed} feed)")  # fmt: skip
                await self.stop_ws()  # the client's own stop: its loop ends instead of retrying
            raise

    async def _start_ws(self) -> None:
        await super()._start_ws()
        receive = self._ws.recv
        owner = self._owner

        async def receive_decodable() -> Any:
            while True:
                frame = await receive()
                owner._frame_received()
                problem = _alpaca_frame_problem(frame)
                if problem is None:
                    return frame
                owner._skip(problem, frame)

        self._ws.recv = receive_decodable  # type: ignore[union-attr]


class AlpacaBarStream(_VendorStream):
    """Minute bars of `symbols` from Alpaca's market-data stream (data.alpaca_feed, data.alpaca_stream_url)."""

    name = "alpaca"

    def __init__(self, config: DataConfig, symbols: Iterable[str], *, key: str, secret: str) -> None:
        super().__init__(config, symbols)
        try:
            self.feed = DataFeed(config.alpaca_feed)
        except ValueError:
            self.feed = None  # type: ignore[assignment]
        if self.feed not in (DataFeed.IEX, DataFeed.SIP):
            raise ValueError(f"data.alpaca_feed must be iex or sip for the stock stream, not {config.alpaca_feed!r}")
        if not key or not secret:
            raise ValueError("an Alpaca bar stream needs an API key and secret")
        self._key = key
        self._secret = secret
        self._client: _CheckedStockDataStream | None = None

    @classmethod
    def from_environment(cls, config: DataConfig, symbols: Iterable[str], environ: Mapping[str, str] = os.environ,
                         *, broker: BrokerConfig | None = None) -> AlpacaBarStream:  # fmt: skip
        """Credentials from the variables named by broker.key_env / broker.secret_env (APCA_API_KEY_ID, ...)."""
        broker = broker or BrokerConfig()
        key = _required_env(environ, broker.key_env, "the Alpaca API key")
        secret = _required_env(environ, broker.secret_env, "the Alpaca API secret")
        return cls(config, symbols, key=key, secret=secret)

    async def _run(self) -> None:
        client = _CheckedStockDataStream(
            self, api_key=self._key, secret_key=self._secret, raw_data=True, feed=self.feed,
            url_override=self.config.alpaca_stream_url or None,
        )  # fmt: skip
        client.subscribe_bars(self._on_bar, *self.symbols)
        self._client = client
        try:
            # run() would start a loop of its own and stop() takes up to 5 s; the coroutine under them is what
            # runs here, on this thread's loop, so stop() can cancel it.
            await client._run_forever()
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(client.close(), 1.0)
        if self.error is None and not self._stopping.is_set():
            self._fail("the alpaca stream ended by itself (see the alpaca log above)")

    async def _on_bar(self, message: dict[str, Any]) -> None:
        try:
            row = alpaca_bar_row(message)
        except Exception as exc:  # a bad bar must never reach alpaca-py's loop, which would log and go on blind
            self._skip(str(exc), message)
            return
        self._deliver([row])


# -- Polygon ---------------------------------------------------------------------------------------------------


def polygon_bar_row(message: Mapping[str, Any]) -> BarRow:
    """A Polygon minute aggregate ({"ev": "AM", "sym", "o", "h", "l", "c", "v", "s", "e", ...}) as a bar row."""
    start_ms = message.get("s")
    if isinstance(start_ms, bool) or not isinstance(start_ms, int):
        raise ValueError(f"field 's' is {start_ms!r}, not a time in milliseconds")
    return (start_ms * 1_000_000, _symbol(message, "sym"), *_ohlcv(message))


class PolygonBarStream(_VendorStream):
    """Minute aggregates (AM) of `symbols` from Polygon's stocks stream (data.polygon_stream_host, ..._secure)."""

    name = "polygon"
    #: Pause before reconnecting after the client gave up, doubling per consecutive failure.
    reconnect_min_s = 0.5
    reconnect_max_s = 30.0

    def __init__(self, config: DataConfig, symbols: Iterable[str], *, api_key: str) -> None:
        super().__init__(config, symbols)
        if not api_key:
            raise ValueError("a Polygon bar stream needs an API key")
        self._api_key = api_key
        self._client: WebSocketClient | None = None

    @classmethod
    def from_environment(cls, config: DataConfig, symbols: Iterable[str],
                         environ: Mapping[str, str] = os.environ) -> PolygonBarStream:  # fmt: skip
        """The API key from the variable named by data.polygon_key_env (POLYGON_API_KEY)."""
        return cls(config, symbols, api_key=_required_env(environ, config.polygon_key_env, "the Polygon API key"))

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            client = WebSocketClient(api_key=self._api_key, feed=self.config.polygon_stream_host, market="stocks",
                                     raw=True, secure=self.config.polygon_stream_secure, max_reconnects=None,
                                     subscriptions=[f"AM.{symbol}" for symbol in self.symbols])  # fmt: skip
            self._client = client
            bars_before = self.bars
            try:
                await client.connect(self._on_frames)
                why = "the server closed the connection"
            except AuthError as exc:
                self._fail(f"polygon refused the API key at {client.url}: {exc} (check {self.config.polygon_key_env})")
                return
            except Exception as exc:  # whatever ended the client, the stream must go on
                why = f"the client stopped: {exc!r}"
            finally:
                if client.websocket is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.wait_for(client.close(), 1.0)
            failures = 1 if self.bars > bars_before else failures + 1
            delay = min(self.reconnect_min_s * 2 ** (failures - 1), self.reconnect_max_s)
            log.warning("polygon: %s; reconnecting in %.1f s", why, delay)
            await asyncio.sleep(delay)

    async def _on_frames(self, frame: str | bytes) -> None:
        """Called by the client with each raw frame after login; must never raise (that would end the client)."""
        self._frame_received()
        try:
            messages = json.loads(frame)
        except (ValueError, TypeError) as exc:
            self._skip(f"not JSON: {exc}", frame)
            return
        if not isinstance(messages, list):
            self._skip(f"not a list of events but {type(messages).__name__}", frame)
            return
        rows: list[BarRow] = []
        for message in messages:
            event = message.get("ev") if isinstance(message, dict) else None
            if event == "status":
                self._on_status(message)
            elif event == "AM":
                try:
                    rows.append(polygon_bar_row(message))
                except ValueError as exc:
                    self._skip(str(exc), message)
            elif event is None:
                self._skip("not an event (no 'ev')", message)
        if rows:
            self._deliver(rows)

    def _on_status(self, message: dict[str, Any]) -> None:
        status, text = message.get("status"), message.get("message")
        if status in ("connected", "success"):
            log.debug("polygon: %s", text)
        elif status in ("error", "auth_failed"):
            log.error("polygon: %s", text)
        else:
            log.info("polygon: %s %s", status, text)
