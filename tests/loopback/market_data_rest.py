"""A loopback HTTP server that answers Alpaca's and Polygon's historical-bar REST APIs.

The vendors' own clients (alpaca-py's `StockHistoricalDataClient`, polygon-api-client's `RESTClient`) are
pointed at it (`url_override=server.url`, `base=server.url`), so a test drives the real request building,
authentication, pagination and retries of those clients, not a mock of them.

Served endpoints, in the shapes the vendors document:

* Alpaca `GET /v2/stocks/bars?symbols=A,B&timeframe=..` and `GET /v2/stocks/{symbol}/bars`, authenticated by the
  `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` headers, paginated by `next_page_token` (a page holds at most `limit`
  bars across all symbols, sorted by symbol, then time).
* Polygon `GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}`, authenticated by
  `Authorization: Bearer <key>` (what the client sends) or the `apiKey` query parameter, paginated by `next_url`
  with a `cursor`.

Bars come from a frame with the columns of `storage.datasets.BAR_COLUMNS`. A coarser timeframe than the served
bars' is aggregated the way the vendors do (first open, highest high, lowest low, last close, summed volume);
day bars start at midnight New York time, as both vendors label them.

Faults for tests: `fail_next(prefix, status, times)` answers the next matching requests with an error status,
`delay_next(prefix, seconds, times)` holds them back. Every request lands in `requests`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
from aiohttp import web

_MINUTE_NS = 60 * 10**9
_UNIT_NS = {"minute": _MINUTE_NS, "hour": 60 * _MINUTE_NS, "day": 24 * 60 * _MINUTE_NS}
_ALPACA_UNITS = {"Min": "minute", "T": "minute", "Hour": "hour", "H": "hour", "Day": "day", "D": "day"}
_ALPACA_FEEDS = {"iex", "sip", "delayed_sip", "otc", "boats", "overnight"}
_ALPACA_ADJUSTMENTS = {"raw", "split", "dividend", "spin-off", "all"}
_NEW_YORK = "America/New_York"


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int


@dataclass(slots=True)
class _Fault:
    prefix: str
    times: int
    status: int = 0
    delay_s: float = 0.0
    after: int = 0


class _BadRequest(Exception):
    """A request the vendor would refuse with 4xx; `body` is its error body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


@dataclass
class MarketDataRestServer:
    """Serves `bars` over Alpaca's and Polygon's REST bar endpoints on 127.0.0.1 (a free port).

    `alpaca_page_size` / `polygon_page_size` cap a page below what the client asks for (the real caps are 10,000
    and 50,000 bars); small caps make the clients follow tokens even on a few hundred bars.
    """

    bars: pl.DataFrame
    key: str = "loopback-key-id"
    secret: str = "loopback-secret"
    polygon_key: str = "loopback-polygon-key"
    alpaca_page_size: int = 10_000
    polygon_page_size: int = 50_000
    _log: list[LoggedRequest] = field(default_factory=list, init=False, repr=False)
    _faults: list[_Fault] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _port: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.bars = self.bars.sort(["symbol", "event_time_ns"])
        self._base_ns = _base_interval_ns(self.bars)

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("the server is not started; use it as a context manager or call start()")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> MarketDataRestServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # reported to start()'s caller, not lost in the thread
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, name="market-data-rest", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None
        self._port = 0

    def __enter__(self) -> MarketDataRestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/stocks/bars", self._alpaca_bars)
        app.router.add_get("/v2/stocks/{symbol}/bars", self._alpaca_symbol_bars)
        app.router.add_get("/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{start}/{end}", self._polygon_aggs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    # -- test controls ---------------------------------------------------------------------------------
    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def fail_next(self, path_prefix: str, status: int, times: int = 1, *, after: int = 0) -> None:
        """Answer the next `times` requests whose path starts with `path_prefix` with `status` (an error body in
        the vendor's shape), once `after` matching requests have been answered normally."""
        with self._lock:
            self._faults.append(_Fault(path_prefix, times, status=status, after=after))

    def clear_faults(self) -> None:
        """Forget the faults not yet used up: the vendor has recovered."""
        with self._lock:
            self._faults.clear()

    def delay_next(self, path_prefix: str, seconds: float, times: int = 1, *, after: int = 0) -> None:
        """Hold the next `times` matching requests back `seconds` before answering them normally."""
        with self._lock:
            self._faults.append(_Fault(path_prefix, times, delay_s=seconds, after=after))

    def _take_faults(self, path: str) -> tuple[int, float]:
        status, delay = 0, 0.0
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and path.startswith(fault.prefix):
                    if fault.after:
                        fault.after -= 1
                    elif fault.status and not status:
                        status = fault.status
                        fault.times -= 1
                    elif fault.delay_s and not delay:
                        delay = fault.delay_s
                        fault.times -= 1
            self._faults = [f for f in self._faults if f.times > 0]
        return status, delay

    # -- plumbing --------------------------------------------------------------------------------------
    async def _answer(self, request: web.Request, vendor: str, handler: Any) -> web.Response:
        status, delay = self._take_faults(request.path)
        if delay:
            await asyncio.sleep(delay)
        if status:
            response = _error(vendor, status, _STATUS_TEXT.get(status, "error"))
        else:
            try:
                response = web.json_response(handler(request))
            except _BadRequest as bad:
                response = web.json_response(bad.body, status=bad.status)
        with self._lock:
            self._log.append(
                LoggedRequest(request.method, request.path, dict(request.query), dict(request.headers), response.status)
            )
        return response

    # -- Alpaca ----------------------------------------------------------------------------------------
    async def _alpaca_bars(self, request: web.Request) -> web.Response:
        return await self._answer(request, "alpaca", lambda r: self._alpaca_page(r, r.query.get("symbols", ""), True))

    async def _alpaca_symbol_bars(self, request: web.Request) -> web.Response:
        return await self._answer(request, "alpaca", lambda r: self._alpaca_page(r, r.match_info["symbol"], False))

    def _alpaca_page(self, request: web.Request, symbols_text: str, multi: bool) -> dict[str, Any]:
        headers = request.headers
        if headers.get("APCA-API-KEY-ID") != self.key or headers.get("APCA-API-SECRET-KEY") != self.secret:
            raise _BadRequest(401, {"code": 40110000, "message": "request is not authorized"})
        q = request.query
        symbols = [s for s in symbols_text.split(",") if s]
        if not symbols:
            raise _BadRequest(400, {"code": 42210000, "message": "missing symbols"})
        interval_ns = self._alpaca_timeframe(q.get("timeframe", ""))
        start_ns = _alpaca_time("start", q.get("start")) if q.get("start") else None
        end_ns = _alpaca_time("end", q.get("end")) if q.get("end") else None
        limit = _bounded_int("limit", q.get("limit", "1000"), 1, 10_000, alpaca=True)
        if q.get("feed", "sip") not in _ALPACA_FEEDS:
            raise _BadRequest(400, {"code": 42210000, "message": f"invalid feed: {q.get('feed')}"})
        if q.get("adjustment", "raw") not in _ALPACA_ADJUSTMENTS:
            raise _BadRequest(400, {"code": 42210000, "message": f"invalid adjustment: {q.get('adjustment')}"})
        descending = q.get("sort", "asc") == "desc"
        rows = self._select(symbols, interval_ns, start_ns, end_ns)
        rows = rows.sort(["symbol", "event_time_ns"], descending=[False, descending])
        offset = _decode_token(q.get("page_token"))
        page = rows.slice(offset, min(limit, self.alpaca_page_size))
        next_offset = offset + page.height
        token = _encode_token(next_offset) if next_offset < rows.height else None
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in page.iter_rows(named=True):
            grouped.setdefault(row["symbol"], []).append(
                {"t": _rfc3339(row["event_time_ns"]), "o": row["open"], "h": row["high"], "l": row["low"],
                 "c": row["close"], "v": _volume(row["volume"]), "n": row["trades"], "vw": row["vwap"]}  # fmt: skip
            )
        if multi:
            return {"bars": grouped, "next_page_token": token}
        return {"bars": grouped.get(symbols[0], []), "symbol": symbols[0], "next_page_token": token}

    def _alpaca_timeframe(self, text: str) -> int:
        match = re.fullmatch(r"(\d+)(Min|T|Hour|H|Day|D)", text)
        if not match:
            raise _BadRequest(400, {"code": 42210000, "message": f"invalid timeframe: {text!r}"})
        amount, unit = int(match[1]), _ALPACA_UNITS[match[2]]
        if amount < 1 or (unit == "minute" and amount > 59) or (unit == "hour" and amount > 23) or (
            unit == "day" and amount != 1
        ):
            raise _BadRequest(400, {"code": 42210000, "message": f"invalid timeframe: {text!r}"})
        return amount * _UNIT_NS[unit]

    # -- Polygon ---------------------------------------------------------------------------------------
    async def _polygon_aggs(self, request: web.Request) -> web.Response:
        return await self._answer(request, "polygon", self._polygon_page)

    def _polygon_page(self, request: web.Request) -> dict[str, Any]:
        bearer = request.headers.get("Authorization", "")
        given = bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else request.query.get("apiKey")
        if not given:
            raise _BadRequest(401, _polygon_error("API Key was not provided"))
        if given != self.polygon_key:
            raise _BadRequest(401, _polygon_error("Unknown API Key"))
        m, q = request.match_info, request.query
        cursor = _decode_cursor(q["cursor"]) if "cursor" in q else {}
        options = {k: cursor.get(k, q.get(k)) for k in ("adjusted", "sort", "limit")}
        multiplier = _bounded_int("multiplier", m["multiplier"], 1, 10_000, alpaca=False)
        if m["timespan"] not in _UNIT_NS:
            raise _BadRequest(400, _polygon_error(f"timespan {m['timespan']!r} is not served by the loopback"))
        start_ns, _ = _polygon_bound("from", m["start"])
        _, end_ns = _polygon_bound("to", m["end"])
        limit = _bounded_int("limit", options["limit"] or "5000", 1, 50_000, alpaca=False)
        rows = self._select([m["ticker"]], multiplier * _UNIT_NS[m["timespan"]], start_ns, end_ns)
        rows = rows.sort("event_time_ns", descending=options["sort"] == "desc")
        offset = int(cursor.get("offset", 0))
        page = rows.slice(offset, min(limit, self.polygon_page_size))
        results = [
            {"v": row["volume"], "vw": row["vwap"], "o": row["open"], "c": row["close"], "h": row["high"],
             "l": row["low"], "t": row["event_time_ns"] // 1_000_000, "n": row["trades"]}  # fmt: skip
            for row in page.iter_rows(named=True)
        ]
        body: dict[str, Any] = {
            "ticker": m["ticker"], "queryCount": page.height, "resultsCount": page.height,
            "adjusted": options["adjusted"] != "false", "status": "OK", "request_id": uuid.uuid4().hex,
            "count": page.height,
        }  # fmt: skip
        if results:  # Polygon leaves `results` out of an empty answer
            body["results"] = results
        if offset + page.height < rows.height:
            path = request.path
            cursor_text = _encode_cursor({**{k: v for k, v in options.items() if v}, "offset": offset + page.height})
            body["next_url"] = f"{self.url}{path}?cursor={cursor_text}"
        return body

    # -- bars ------------------------------------------------------------------------------------------
    def _select(self, symbols: list[str], interval_ns: int, start_ns: int | None, end_ns: int | None) -> pl.DataFrame:
        """Bars of `symbols` at `interval_ns` starting in [start, end] (both vendors' ends are inclusive). The vwap
        and trade count are made up deterministically (the served bars have neither): typical price, volume / 100."""
        frame = self.bars.filter(pl.col("symbol").is_in(symbols))
        if interval_ns < self._base_ns or interval_ns % self._base_ns:
            raise _BadRequest(400, {"code": 42210000, "message": "timeframe finer than the served bars"})
        if interval_ns > self._base_ns:
            frame = _aggregate(frame, interval_ns)
        if start_ns is not None:
            frame = frame.filter(pl.col("event_time_ns") >= start_ns)
        if end_ns is not None:
            frame = frame.filter(pl.col("event_time_ns") <= end_ns)
        return frame.with_columns(
            ((pl.col("high") + pl.col("low") + pl.col("close")) / 3).alias("vwap"),
            (pl.col("volume") // 100).cast(pl.Int64).alias("trades"),
        )


# -- helpers -----------------------------------------------------------------------------------------------
_STATUS_TEXT = {429: "too many requests", 500: "internal server error", 502: "bad gateway",
                503: "service unavailable", 504: "gateway timeout"}  # fmt: skip


def _error(vendor: str, status: int, text: str) -> web.Response:
    body = {"code": status * 100_000, "message": text} if vendor == "alpaca" else _polygon_error(text)
    return web.json_response(body, status=status)


def _polygon_error(text: str) -> dict[str, Any]:
    return {"status": "ERROR", "request_id": uuid.uuid4().hex, "error": text}


def _base_interval_ns(bars: pl.DataFrame) -> int:
    """The served bars' interval: the smallest step between two bars of one symbol (one day without any)."""
    steps = bars.select(pl.col("event_time_ns").diff().over("symbol").alias("step")).filter(pl.col("step") > 0)
    return int(steps["step"].min()) if steps.height else _UNIT_NS["day"]  # type: ignore[arg-type]


def _aggregate(frame: pl.DataFrame, interval_ns: int) -> pl.DataFrame:
    if interval_ns == _UNIT_NS["day"]:
        # Both vendors start a day bar at midnight New York time.
        local = pl.from_epoch(pl.col("event_time_ns"), time_unit="ns").dt.replace_time_zone("UTC")
        day = local.dt.convert_time_zone(_NEW_YORK).dt.truncate("1d").dt.convert_time_zone("UTC")
        bucket = day.dt.epoch("ns")
    else:
        bucket = pl.col("event_time_ns") - pl.col("event_time_ns") % interval_ns
    return (
        frame.with_columns(bucket.alias("_bucket"))
        .group_by("symbol", "_bucket", maintain_order=True)
        .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
             pl.col("volume").sum())  # fmt: skip
        .rename({"_bucket": "event_time_ns"})
        .select("event_time_ns", "symbol", "open", "high", "low", "close", "volume")
    )


def _rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 10**9)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{fraction:09d}Z" if fraction else f"{text}Z"


def _alpaca_time(name: str, text: str) -> int:
    try:
        if len(text) == 10:
            return _day_ns(date.fromisoformat(text))
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _BadRequest(400, {"code": 42210000, "message": f"invalid {name} time: {text!r}"}) from None
    if parsed.tzinfo is None:
        raise _BadRequest(400, {"code": 42210000, "message": f"invalid {name} time: {text!r} has no time zone"})
    return (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // _MICRO * 1000


_MICRO = datetime.resolution


def _polygon_bound(name: str, text: str) -> tuple[int, int]:
    """(first, last) ns a `from`/`to` path segment covers: a date is its whole (UTC) day, a number a millisecond."""
    if text.isdigit():
        ms = int(text) * 1_000_000
        return ms, ms + 999_999
    try:
        day = _day_ns(date.fromisoformat(text))
    except ValueError:
        raise _BadRequest(400, _polygon_error(f"Could not parse the '{name}' parameter")) from None
    return day, day + _UNIT_NS["day"] - 1


def _day_ns(d: date) -> int:
    return (d - date(1970, 1, 1)).days * _UNIT_NS["day"]


def _bounded_int(name: str, text: str, low: int, high: int, *, alpaca: bool) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        message = f"invalid {name}: {text!r} must be between {low} and {high}"
        if alpaca:
            raise _BadRequest(422, {"code": 42210000, "message": message})
        raise _BadRequest(400, _polygon_error(message))
    return value


def _volume(volume: float) -> float | int:
    # Alpaca sends whole volumes as integers.
    return int(volume) if float(volume).is_integer() else volume


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        raise _BadRequest(400, {"code": 42210000, "message": "invalid page token"}) from None


def _encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        return dict(json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))))
    except (ValueError, TypeError):
        raise _BadRequest(400, _polygon_error("invalid cursor")) from None
