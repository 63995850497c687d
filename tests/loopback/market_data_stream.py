"""A loopback WebSocket server that speaks Alpaca's market-data stream and Polygon's stocks stream.

The point is to run the vendors' real clients (alpaca-py's StockDataStream, polygon-api-client's
WebSocketClient) with no network, so the server answers exactly as those clients expect:

* Alpaca (`/v2/{feed}`): MessagePack frames when the client asks for them with `Content-Type:
  application/msgpack` (alpaca-py always does and decodes every frame with msgpack), JSON text otherwise.
  Every frame is a list of messages. Bar times `t` are MessagePack timestamps (ext type -1) so they keep
  nanoseconds, as alpaca-py's `msg["t"].to_datetime()` requires.
* Polygon (`/stocks`): JSON text frames, each a list of events; minute aggregates are `AM` events whose
  start/end times `s`/`e` are milliseconds since the epoch.

The test controls the vendor from its own thread: publish bars to both vendors at once, fall silent while
keeping the connection up (the "connected but mute" failure that failover exists for), drop connections,
and send raw frames the clients cannot decode.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiohttp import WSMsgType, web

VENDORS = ("alpaca", "polygon")
#: Every channel alpaca-py knows; Alpaca's subscription reply lists them all, empty or not.
ALPACA_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds", "corrections",
                   "cancelErrors")  # fmt: skip


@dataclass(eq=False)
class _Client:
    vendor: str
    ws: web.WebSocketResponse
    msgpack: bool = False
    authenticated: bool = False
    #: Alpaca: bar symbols ("*" = all). Polygon: topics such as "AM.AAPL" or "AM.*".
    subscriptions: set[str] = field(default_factory=set)

    def wants_bar(self, symbol: str) -> bool:
        if not self.authenticated:
            return False
        if self.vendor == "alpaca":
            return bool({symbol, "*"} & self.subscriptions)
        return bool({f"AM.{symbol}", "AM.*"} & self.subscriptions)

    async def send(self, messages: list[dict[str, Any]]) -> None:
        if self.ws.closed:
            return
        if self.msgpack:
            await self.ws.send_bytes(msgpack.packb(messages, datetime=False))
        else:
            await self.ws.send_str(json.dumps(messages, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, msgpack.Timestamp):  # Alpaca's JSON protocol writes RFC 3339 times
        return value.to_datetime().isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


class MarketDataStreamServer:
    """Alpaca's and Polygon's streaming endpoints on 127.0.0.1, served from a background thread."""

    key = "test-key"
    secret = "test-secret"
    polygon_key = "test-polygon-key"

    def __init__(self) -> None:
        self.connections: dict[str, int] = dict.fromkeys(VENDORS, 0)
        self._clients: dict[str, list[_Client]] = {vendor: [] for vendor in VENDORS}
        self._silent: dict[str, bool] = dict.fromkeys(VENDORS, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> MarketDataStreamServer:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failure), name="market-data-stream",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"the market-data stream server did not start: {failure[0] if failure else 'timeout'}")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> MarketDataStreamServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def alpaca_url(self) -> str:
        """For StockDataStream(url_override=...): alpaca-py uses an override verbatim, feed path included."""
        return f"ws://127.0.0.1:{self.port}/v2/iex"

    @property
    def polygon_host(self) -> str:
        """For WebSocketClient(feed=..., secure=False): the client connects to ws://{feed}/{market}."""
        return f"127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:  # noqa: B036 - reported to start(), which is waiting for it
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v2/{feed}", self._alpaca)
        app.router.add_get("/{market}", self._polygon)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        ready.set()
        await self._stopped.wait()
        for vendor in VENDORS:
            await self._close_all(vendor)
        await self._runner.cleanup()

    # -- control from the test thread --------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the market-data stream server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def publish_bar(self, symbol: str, time_ns: int, open: float, high: float, low: float, close: float,
                    volume: float) -> None:  # fmt: skip
        """One minute bar to every subscribed client of both vendors (except silenced ones); sent on return."""
        self._call(self._publish(symbol, int(time_ns), float(open), float(high), float(low), float(close),
                                 float(volume)))  # fmt: skip

    def silence(self, vendor: str, silent: bool = True) -> None:
        """Stop (or resume) delivering `vendor`'s bars; its connections stay up and answer as usual."""
        self._silent[_vendor(vendor)] = silent

    def drop(self, vendor: str) -> None:
        """Close `vendor`'s connections now (code 1001, going away, as a server restart does)."""
        self._call(self._close_all(_vendor(vendor)))

    def send_raw(self, vendor: str, frame: bytes | str) -> None:
        """A frame as is (bytes: binary, str: text) to every authenticated client of `vendor`."""
        self._call(self._send_raw(_vendor(vendor), frame))

    def subscribed(self, vendor: str) -> list[set[str]]:
        """The subscriptions of each live, authenticated connection of `vendor`."""
        return [set(c.subscriptions) for c in list(self._clients[_vendor(vendor)]) if c.authenticated]

    def wait_subscribed(self, vendor: str, symbols: Iterable[str], timeout: float = 5.0) -> None:
        """Block until a live connection of `vendor` is subscribed to bars of all `symbols`."""
        wanted = set(symbols) if vendor == "alpaca" else {f"AM.{s}" for s in symbols}
        deadline = time.monotonic() + timeout
        while not any(wanted <= subs for subs in self.subscribed(vendor)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {vendor} client subscribed to {sorted(wanted)} within {timeout} s; "
                                   f"subscriptions now {self.subscribed(vendor)}")  # fmt: skip
            time.sleep(0.01)

    async def _publish(self, symbol: str, time_ns: int, open_: float, high: float, low: float, close: float,
                       volume: float) -> None:  # fmt: skip
        vwap = (high + low + close) / 3.0
        whole_volume: float | int = int(volume) if math.isfinite(volume) and volume.is_integer() else volume
        alpaca_bar = {"T": "b", "S": symbol, "o": open_, "h": high, "l": low, "c": close, "v": whole_volume,
                      "t": msgpack.Timestamp.from_unix_nano(time_ns), "n": 1, "vw": vwap}  # fmt: skip
        start_ms = time_ns // 1_000_000
        polygon_bar = {"ev": "AM", "sym": symbol, "v": whole_volume, "av": whole_volume, "op": open_, "vw": vwap,
                       "o": open_, "c": close, "h": high, "l": low, "a": vwap, "z": 1, "s": start_ms,
                       "e": start_ms + 60_000}  # fmt: skip
        for vendor, message in (("alpaca", alpaca_bar), ("polygon", polygon_bar)):
            if self._silent[vendor]:
                continue
            for client in list(self._clients[vendor]):
                if client.wants_bar(symbol):
                    await client.send([message])

    async def _send_raw(self, vendor: str, frame: bytes | str) -> None:
        for client in list(self._clients[vendor]):
            if client.authenticated and not client.ws.closed:
                if isinstance(frame, bytes):
                    await client.ws.send_bytes(frame)
                else:
                    await client.ws.send_str(frame)

    async def _close_all(self, vendor: str) -> None:
        clients, self._clients[vendor] = self._clients[vendor], []
        await asyncio.gather(*(c.ws.close(code=1001, message=b"going away") for c in clients),
                             return_exceptions=True)  # fmt: skip

    # -- Alpaca ------------------------------------------------------------------------------------------------

    async def _alpaca(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        client = _Client("alpaca", ws, msgpack=request.headers.get("Content-Type") == "application/msgpack")
        self.connections["alpaca"] += 1
        self._clients["alpaca"].append(client)
        try:
            await client.send([{"T": "success", "msg": "connected"}])
            async for frame in ws:
                if frame.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                try:
                    message = msgpack.unpackb(frame.data) if frame.type == WSMsgType.BINARY else json.loads(frame.data)
                except ValueError:
                    await client.send([{"T": "error", "code": 400, "msg": "invalid syntax"}])
                    continue
                await self._alpaca_action(client, message)
        finally:
            self._forget(client)
        return ws

    async def _alpaca_action(self, client: _Client, message: object) -> None:
        action = message.get("action") if isinstance(message, dict) else None
        if action == "auth":
            if client.authenticated:
                await client.send([{"T": "error", "code": 403, "msg": "already authenticated"}])
            elif message.get("key") == self.key and message.get("secret") == self.secret:  # type: ignore[union-attr]
                client.authenticated = True
                await client.send([{"T": "success", "msg": "authenticated"}])
            else:
                await client.send([{"T": "error", "code": 402, "msg": "auth failed"}])
        elif action in ("subscribe", "unsubscribe"):
            if not client.authenticated:
                await client.send([{"T": "error", "code": 401, "msg": "not authenticated"}])
                return
            bars = set(message.get("bars") or ())  # type: ignore[union-attr]
            client.subscriptions = client.subscriptions | bars if action == "subscribe" else client.subscriptions - bars
            reply: dict[str, Any] = {"T": "subscription", **{channel: [] for channel in ALPACA_CHANNELS}}
            reply["bars"] = sorted(client.subscriptions)
            await client.send([reply])
        else:
            await client.send([{"T": "error", "code": 400, "msg": "invalid syntax"}])

    # -- Polygon -----------------------------------------------------------------------------------------------

    async def _polygon(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        if request.match_info["market"] != "stocks":
            await ws.close(code=1008, message=b"only the stocks market is served here")
            return ws
        client = _Client("polygon", ws)
        self.connections["polygon"] += 1
        self._clients["polygon"].append(client)
        try:
            await client.send([{"ev": "status", "status": "connected", "message": "Connected Successfully"}])
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    break
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    await client.send([{"ev": "status", "status": "error", "message": "invalid JSON"}])
                    continue
                if not await self._polygon_action(client, message):
                    break
        finally:
            self._forget(client)
        return ws

    async def _polygon_action(self, client: _Client, message: object) -> bool:
        """Answer one client action; False closes the connection (after a failed login, as Polygon does)."""
        action = message.get("action") if isinstance(message, dict) else None
        params = message.get("params") if isinstance(message, dict) else None
        if action == "auth":
            if params == self.polygon_key:
                client.authenticated = True
                await client.send([{"ev": "status", "status": "auth_success", "message": "authenticated"}])
                return True
            await client.send([{"ev": "status", "status": "auth_failed", "message": "authentication failed"}])
            await client.ws.close(code=1008, message=b"authentication failed")
            return False
        if action in ("subscribe", "unsubscribe") and isinstance(params, str):
            if not client.authenticated:
                await client.send([{"ev": "status", "status": "error", "message": "not authorized"}])
                return True
            topics = {t.strip() for t in params.split(",") if t.strip()}
            if action == "subscribe":
                client.subscriptions |= topics
            else:
                client.subscriptions -= topics
            verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
            await client.send([{"ev": "status", "status": "success", "message": f"{verb}: {topic}"}
                               for topic in sorted(topics)])  # fmt: skip
            return True
        await client.send([{"ev": "status", "status": "error", "message": f"unknown action {action!r}"}])
        return True

    def _forget(self, client: _Client) -> None:
        if client in self._clients[client.vendor]:
            self._clients[client.vendor].remove(client)


def _vendor(vendor: str) -> str:
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {', '.join(VENDORS)}, not {vendor!r}")
    return vendor
