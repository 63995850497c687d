"""A loopback Alpaca Trading API v2 (REST) and trade_updates WebSocket server with a bar-driven market.

alpaca-py's real `TradingClient(url_override=server.url)` and `TradingStream(url_override=server.stream_url)` talk
to it unchanged, so broker code is tested through the vendor's own client instead of mocks. Orders never fill on
their own: they match only against the bars a test pushes with `push_bar`, which makes every fill deterministic.

Message shapes follow Alpaca's documentation and alpaca-py's models: numbers as strings, RFC 3339 timestamps,
errors as {"code": ..., "message": ...}; the trade_updates stream answers in *binary* frames, as Alpaca's paper
endpoint does (alpaca-py json-decodes text and bytes alike).

Matching (the rules of utp's simulated broker, so paper runs and backtests agree). For each bar of a symbol:
1. DAY orders whose trading day (the UTC date of the first bar they could fill on) has ended expire.
2. Market orders (and stops triggered on an earlier bar) fill at the open.
3. Stops, before limits (when one bar could hit both legs of a bracket, the stop is assumed first): a buy stop
   triggers when high >= stop and fills at max(open, stop); a stop-limit triggers the same way and then works
   as a limit with the trigger price standing in for the open. Sells mirror this.
4. Limits: a buy limit fills at min(open, limit) when low <= limit. Sells mirror this.
Within a phase, orders go in creation order. A notional order is sized at its first fill (notional / price,
fractional). Bracket legs are HELD until the parent is completely filled (or ends after a partial fill), then
work for the parent's filled quantity: on the same bar when the parent filled at the open, else from the next
bar. A leg fill reduces its sibling by the same quantity; a completely filled leg cancels its sibling.
Fills and expiries carry the bar's time (filled_at, expired_at, the event timestamp); REST actions (new,
canceled, replaced) and every updated_at carry the wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

OPEN_STATUSES = frozenset({"new", "partially_filled", "accepted", "pending_new", "held", "pending_cancel",
                           "pending_replace", "accepted_for_bidding"})
WORKING_STATUSES = frozenset({"new", "partially_filled", "accepted"})
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
TIME_IN_FORCE = ("day", "gtc", "opg", "cls", "ioc", "fok")
ORDER_CLASSES = ("simple", "bracket", "oto")
QTY_EPS = 1e-9

#: The code Alpaca puts beside an HTTP status in its error bodies.
DEFAULT_ERROR = {
    400: (40010000, "request body format is invalid"),
    401: (40110000, "request is not authorized"),
    403: (40310000, "forbidden"),
    404: (40410000, "not found"),
    422: (40010001, "request is not valid"),
    429: (42910000, "rate limit exceeded"),
    500: (50010000, "internal server error"),
    502: (50210000, "bad gateway"),
    503: (50310000, "service unavailable"),
    504: (50410000, "gateway timeout"),
}


class AlpacaError(Exception):
    """An answer in Alpaca's error shape; raised inside handlers, turned into the HTTP reply by the middleware."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code if code is not None else DEFAULT_ERROR.get(status, (status * 100000, ""))[0]
        self.message = message


def _num(x: float | None) -> str | None:
    """Alpaca sends quantities and prices as decimal strings ("10", "101.25"), never in exponent form."""
    if x is None:
        return None
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _rfc3339(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


def _from_ns(time_ns: int) -> datetime:
    return datetime.fromtimestamp(time_ns // 1_000_000_000, UTC) + timedelta(microseconds=time_ns % 10**9 // 1000)


def _asset_id(symbol: str) -> str:
    # stable across servers, so an asset id a test saw once means the same symbol everywhere
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-loopback/asset/{symbol}"))


@dataclass
class _Order:
    """One order's mutable state; `to_json` renders it in Alpaca's shape."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: float | None
    notional: float | None
    limit_price: float | None
    stop_price: float | None
    order_class: str
    extended_hours: bool
    created_at: datetime
    status: str = "accepted"
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    expired_at: datetime | None = None
    canceled_at: datetime | None = None
    failed_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    filled_qty: float = 0.0
    filled_value: float = 0.0
    legs: list[_Order] = field(default_factory=list)
    parent: _Order | None = None
    triggered: bool = False  # a stop (limit) whose stop price has been reached
    trading_day: date | None = None  # UTC date of the first bar it could fill on (DAY expiry)
    eligible_from_ns: int = -1  # bracket legs: the first bar time they may fill on

    @property
    def remaining(self) -> float:
        return 0.0 if self.qty is None else max(self.qty - self.filled_qty, 0.0)

    @property
    def working(self) -> bool:
        return self.status in WORKING_STATUSES

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    def touch(self) -> None:
        # wall clock even for fills: bars may be historical, and updated_at must not precede created_at
        self.updated_at = _now()

    def to_json(self, nested: bool = True) -> dict[str, Any]:
        avg = self.filled_value / self.filled_qty if self.filled_qty > QTY_EPS else None
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": _rfc3339(self.created_at),
            "updated_at": _rfc3339(self.updated_at or self.created_at),
            "submitted_at": _rfc3339(self.created_at),
            "filled_at": _rfc3339(self.filled_at),
            "expired_at": _rfc3339(self.expired_at),
            "expires_at": None,
            "canceled_at": _rfc3339(self.canceled_at),
            "failed_at": _rfc3339(self.failed_at),
            "replaced_at": _rfc3339(self.replaced_at),
            "replaced_by": self.replaced_by,
            "replaces": self.replaces,
            "asset_id": _asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": _num(self.notional),
            "qty": _num(self.qty),
            "filled_qty": _num(self.filled_qty),
            "filled_avg_price": _num(avg),
            "order_class": self.order_class,
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": None,
            "time_in_force": self.time_in_force,
            "limit_price": _num(self.limit_price),
            "stop_price": _num(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": [leg.to_json() for leg in self.legs] if (nested and self.legs) else None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
        }


@dataclass
class _Rule:
    method: str
    path_prefix: str
    times: int
    status: int = 0
    body: dict | None = None
    delay_s: float = 0.0
    take_effect: bool = True

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method.upper()) and path.startswith(self.path_prefix)


class Faults:
    """Failures a test schedules; each one is consumed by the requests (or orders) it applies to, in order."""

    def __init__(self, server: AlpacaTradingServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._failures: list[_Rule] = []
        self._delays: list[_Rule] = []
        self._rejections: list[str] = []
        self._partial_ratio: float | None = None

    def fail_next(self, method: str, path_prefix: str, status: int, times: int = 1, body: dict | None = None) -> None:
        """The next `times` requests matching METHOD (or "*") and path prefix get `status` and have no effect."""
        if not 100 <= status <= 599:
            raise ValueError(f"fail_next: status must be an HTTP status (100-599), got {status}")
        if body is None:
            code, message = DEFAULT_ERROR.get(status, (status * 100000, "injected failure"))
            body = {"code": code, "message": message}
        with self._lock:
            self._failures.append(_Rule(method.upper(), path_prefix, times, status=status, body=body))

    def delay_next(self, method: str, path_prefix: str, seconds: float, times: int = 1, *,
                   take_effect: bool = True) -> None:
        """Answer the next matching requests `seconds` late. take_effect=True: the request is carried out at once and
        only its answer is late (it landed, the client timed out). take_effect=False: it is carried out after the
        delay (still carried out even if the client gave up meanwhile, as a late-arriving request would be)."""
        if seconds < 0:
            raise ValueError(f"delay_next: seconds must be >= 0, got {seconds}")
        with self._lock:
            self._delays.append(_Rule(method.upper(), path_prefix, times, delay_s=seconds, take_effect=take_effect))

    def drop_streams(self) -> None:
        """Close every open trade_updates WebSocket now (a network blip: clients must reconnect themselves)."""
        self._server._drop_streams()

    def reject_next_orders(self, reason: str = "insufficient buying power", times: int = 1) -> None:
        """The next `times` orders are accepted (HTTP 200, status "accepted") and then rejected on trade_updates."""
        with self._lock:
            self._rejections.extend([reason] * times)

    def partial_fills(self, ratio: float | None) -> None:
        """From now on each match fills at most ceil(ratio x remaining) shares; None or 1 restores whole fills."""
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"partial_fills: ratio must be in (0, 1], got {ratio}")
        with self._lock:
            self._partial_ratio = ratio

    # --- consumed by the server ---
    def _take(self, rules: list[_Rule], method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    if rule.times <= 0:
                        rules.remove(rule)
                    return rule
        return None

    def _take_failure(self, method: str, path: str) -> _Rule | None:
        return self._take(self._failures, method, path)

    def _take_delay(self, method: str, path: str) -> _Rule | None:
        return self._take(self._delays, method, path)

    def _take_rejection(self) -> str | None:
        with self._lock:
            return self._rejections.pop(0) if self._rejections else None

    def _fill_quantity(self, remaining: float) -> float:
        with self._lock:
            ratio = self._partial_ratio
        if ratio is None or ratio >= 1:
            return remaining
        return min(remaining, float(math.ceil(ratio * remaining - QTY_EPS)))


class _Connection:
    """One trade_updates WebSocket: replies and events go through its queue so they leave in order."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.authorized = False
        self.listening = False


class AlpacaTradingServer:
    """Alpaca's Trading API v2 and trade_updates stream on 127.0.0.1, backed by a market fed through `push_bar`."""

    key: str = "test-key"
    secret: str = "test-secret"

    def __init__(self, *, cash: float = 100_000.0, symbols: Iterable[str] | None = None) -> None:
        """`symbols`: the tradable universe; None accepts any symbol (orders for others get 422)."""
        self._lock = threading.RLock()
        self._cash = float(cash)
        self._initial_cash = float(cash)
        self._symbols = None if symbols is None else frozenset(symbols)
        self._orders: list[_Order] = []
        self._by_id: dict[str, _Order] = {}
        self._by_client_id: dict[str, _Order] = {}
        self._positions: dict[str, tuple[float, float]] = {}  # symbol -> (signed qty, avg entry price)
        self._last_price: dict[str, float] = {}
        self._prev_close: dict[str, float] = {}
        self._account_id = str(uuid.uuid4())
        self._account_created = _now()
        self.market_open = True  # what GET /v2/clock reports
        self.requests: list[tuple[str, str]] = []
        self.faults = Faults(self)
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> AlpacaTradingServer:
        """Serve on a free port from a background thread with its own event loop; returns once it accepts."""
        if self._thread is not None:
            raise RuntimeError("AlpacaTradingServer.start: already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=serve, name="alpaca-loopback", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise RuntimeError(f"AlpacaTradingServer could not start: {failure[0]!r}") from failure[0]
        return self

    def stop(self) -> None:
        """Close the streams and the listener, and end the thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> AlpacaTradingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/stream"

    async def _start_site(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/v2/account", self._get_account)
        r.add_get("/v2/clock", self._get_clock)
        r.add_get("/v2/assets/{symbol}", self._get_asset)
        r.add_post("/v2/orders", self._post_order)
        r.add_get("/v2/orders", self._list_orders)
        r.add_delete("/v2/orders", self._cancel_all)
        r.add_get("/v2/orders:by_client_order_id", self._get_by_client_id)
        r.add_get("/v2/orders/{order_id}", self._get_order)
        r.add_delete("/v2/orders/{order_id}", self._cancel_order)
        r.add_patch("/v2/orders/{order_id}", self._replace_order)
        r.add_get("/v2/positions", self._list_positions)
        r.add_delete("/v2/positions", self._close_all_positions)
        r.add_get("/v2/positions/{symbol}", self._get_position)
        r.add_delete("/v2/positions/{symbol}", self._close_position)
        r.add_get("/stream", self._stream)
        # a delayed request must not hold the shutdown for long
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for conn in list(self._connections):
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ test-facing market
    def push_bar(self, symbol: str, time_ns: int, open: float, high: float, low: float, close: float,  # noqa: A002
                 volume: float = 1e6) -> None:
        """A bar of `symbol` trades: expire stale DAY orders, then fill what the bar reaches (see module doc)."""
        if not low <= min(open, close) or not high >= max(open, close):
            raise ValueError(f"push_bar({symbol}): inconsistent bar o={open} h={high} l={low} c={close}")
        with self._lock:
            self._match_bar(symbol, int(time_ns), float(open), float(high), float(low), float(close))

    def set_position(self, symbol: str, qty: float, avg_entry_price: float) -> None:
        """Overwrite a position without a trade or cash change (e.g. to make reconciliation find a mismatch)."""
        with self._lock:
            if abs(qty) <= QTY_EPS:
                self._positions.pop(symbol, None)
            else:
                self._positions[symbol] = (float(qty), float(avg_entry_price))

    def positions(self) -> dict[str, float]:
        """symbol -> signed quantity of every open position."""
        with self._lock:
            return {s: q for s, (q, _) in self._positions.items()}

    def listening_streams(self) -> int:
        """How many trade_updates connections are authorized and listening (wait for it before pushing bars)."""
        return sum(1 for conn in list(self._connections) if conn.listening)

    @property
    def cash(self) -> float:
        with self._lock:
            return self._cash

    @property
    def orders(self) -> list[dict]:
        """Every order ever created (bracket legs and replacements included), in creation order, as Alpaca JSON."""
        with self._lock:
            return [o.to_json() for o in self._orders]

    # ------------------------------------------------------------------ HTTP plumbing
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/stream":
            return await handler(request)
        self.requests.append((request.method, request.path))
        if (request.headers.get("APCA-API-KEY-ID") != self.key
                or request.headers.get("APCA-API-SECRET-KEY") != self.secret):
            return self._error(AlpacaError(401, "request is not authorized"))
        failure = self.faults._take_failure(request.method, request.path)
        if failure is not None:
            return web.json_response(failure.body, status=failure.status)
        delay = self.faults._take_delay(request.method, request.path)
        if delay is not None and not delay.take_effect:
            await request.read()  # the request has fully arrived; the client may hang up while it waits
            await asyncio.sleep(delay.delay_s)
        try:
            response = await handler(request)
        except AlpacaError as err:
            response = self._error(err)
        except web.HTTPException as exc:  # routing: unknown path or method
            response = self._error(AlpacaError(exc.status, exc.reason.lower()))
        if delay is not None and delay.take_effect:
            await asyncio.sleep(delay.delay_s)
        return response

    @staticmethod
    def _error(err: AlpacaError) -> web.Response:
        return web.json_response({"code": err.code, "message": err.message}, status=err.status)

    @staticmethod
    async def _json_body(request: web.Request) -> dict:
        if not request.body_exists:
            return {}
        try:
            body = await request.json()
        except ValueError as exc:
            raise AlpacaError(400, f"request body format is invalid: {exc}") from exc
        if not isinstance(body, dict):
            raise AlpacaError(400, "request body format is invalid: expected a JSON object")
        return body

    def _find(self, order_id: str) -> _Order:
        order = self._by_id.get(order_id)
        if order is None:
            raise AlpacaError(404, "order not found", 40410000)
        return order

    # ------------------------------------------------------------------ account, clock, assets
    async def _get_account(self, request: web.Request) -> web.Response:
        with self._lock:
            long_mv = sum(q * self._mark(s, avg) for s, (q, avg) in self._positions.items() if q > 0)
            short_mv = sum(q * self._mark(s, avg) for s, (q, avg) in self._positions.items() if q < 0)
            cash = self._cash
        equity = cash + long_mv + short_mv
        buying_power = max(cash, 0.0)
        return web.json_response({
            "id": self._account_id, "account_number": "PA" + self._account_id.replace("-", "")[:10].upper(),
            "status": "ACTIVE", "crypto_status": "ACTIVE", "currency": "USD",
            "buying_power": _num(buying_power), "regt_buying_power": _num(buying_power),
            "daytrading_buying_power": _num(buying_power), "non_marginable_buying_power": _num(buying_power),
            "options_buying_power": _num(buying_power),
            "cash": _num(cash), "accrued_fees": "0", "pending_transfer_out": "0", "pending_transfer_in": "0",
            "portfolio_value": _num(equity), "equity": _num(equity), "last_equity": _num(self._initial_cash),
            "long_market_value": _num(long_mv), "short_market_value": _num(short_mv),
            "initial_margin": "0", "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0",
            "pattern_day_trader": False, "trading_blocked": False, "transfers_blocked": False,
            "account_blocked": False, "trade_suspended_by_user": False, "shorting_enabled": True,
            "multiplier": "1", "daytrade_count": 0, "options_approved_level": 0, "options_trading_level": 0,
            "created_at": _rfc3339(self._account_created),
        })

    async def _get_clock(self, request: web.Request) -> web.Response:
        now = _now()
        today_open = now.replace(hour=13, minute=30, second=0, microsecond=0)
        today_close = now.replace(hour=20, minute=0, second=0, microsecond=0)
        next_open = today_open if now < today_open else today_open + timedelta(days=1)
        next_close = today_close if now < today_close else today_close + timedelta(days=1)
        return web.json_response({"timestamp": _rfc3339(now), "is_open": self.market_open,
                                  "next_open": _rfc3339(next_open), "next_close": _rfc3339(next_close)})

    async def _get_asset(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"].upper()
        if self._symbols is not None and symbol not in self._symbols:
            raise AlpacaError(404, "asset not found", 40410000)
        return web.json_response({
            "id": _asset_id(symbol), "class": "us_equity", "exchange": "NASDAQ", "symbol": symbol,
            "name": symbol, "status": "active", "tradable": True, "marginable": True, "shortable": True,
            "easy_to_borrow": True, "fractionable": True, "attributes": [],
        })

    # ------------------------------------------------------------------ orders
    async def _post_order(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        with self._lock:
            order = self._create_order(body)
            reply = order.to_json()
            self._accept_or_reject(order)
        return web.json_response(reply)

    def _create_order(self, body: dict) -> _Order:
        """Validate an order request the way Alpaca does (422 naming the bad field) and book it as accepted."""
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise AlpacaError(422, "symbol is required")
        symbol = symbol.strip().upper()
        if self._symbols is not None and symbol not in self._symbols:
            raise AlpacaError(422, f"asset \"{symbol}\" not found")
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise AlpacaError(422, f"invalid side: {side!r} (expected buy or sell)")
        otype = body.get("type", body.get("order_type"))
        if otype not in ORDER_TYPES:
            raise AlpacaError(422, f"invalid order type: {otype!r} (this server supports {', '.join(ORDER_TYPES)})")
        tif = body.get("time_in_force")
        if tif not in TIME_IN_FORCE:
            raise AlpacaError(422, f"invalid time_in_force: {tif!r}")
        order_class = body.get("order_class") or "simple"
        if order_class not in ORDER_CLASSES:
            raise AlpacaError(422, f"order_class {order_class!r} is not supported (simple, bracket, oto)")
        qty = _decimal(body, "qty")
        notional = _decimal(body, "notional")
        if qty is None and notional is None:
            raise AlpacaError(422, "qty or notional is required")
        if qty is not None and notional is not None:
            raise AlpacaError(422, "only one of qty or notional may be given")
        if (qty is not None and qty <= 0) or (notional is not None and notional <= 0):
            raise AlpacaError(422, "qty and notional must be > 0")
        limit = _decimal(body, "limit_price")
        stop = _decimal(body, "stop_price")
        if otype in ("limit", "stop_limit") and limit is None:
            raise AlpacaError(422, f"limit_price is required for {otype} orders")
        if otype in ("stop", "stop_limit") and stop is None:
            raise AlpacaError(422, f"stop_price is required for {otype} orders")
        if otype in ("market", "stop") and limit is not None:
            raise AlpacaError(422, f"limit_price must not be given for {otype} orders")
        if otype in ("market", "limit") and stop is not None:
            raise AlpacaError(422, f"stop_price must not be given for {otype} orders")
        client_id = body.get("client_order_id") or str(uuid.uuid4())
        if not isinstance(client_id, str) or len(client_id) > 128:
            raise AlpacaError(422, "client_order_id must be a string of at most 128 characters")
        if client_id in self._by_client_id:
            raise AlpacaError(422, "client_order_id must be unique", 40010001)
        legs_spec = self._leg_specs(body, order_class, side, tif, qty)
        now = _now()
        order = _Order(id=str(uuid.uuid4()), client_order_id=client_id, symbol=symbol, side=side, type=otype,
                       time_in_force=tif, qty=qty, notional=notional, limit_price=limit, stop_price=stop,
                       order_class=order_class, extended_hours=bool(body.get("extended_hours", False)),
                       created_at=now)
        self._book(order)
        for leg_type, leg_limit, leg_stop in legs_spec:
            leg = _Order(id=str(uuid.uuid4()), client_order_id=str(uuid.uuid4()), symbol=symbol,
                         side="sell" if side == "buy" else "buy", type=leg_type, time_in_force=tif, qty=qty,
                         notional=None, limit_price=leg_limit, stop_price=leg_stop, order_class=order_class,
                         extended_hours=False, created_at=now, status="held", parent=order)
            order.legs.append(leg)
            self._book(leg)
        return order

    @staticmethod
    def _leg_specs(body: dict, order_class: str, side: str, tif: str,
                   qty: float | None) -> list[tuple[str, float | None, float | None]]:
        """(type, limit, stop) of each exit leg: take-profit first, then stop-loss, as Alpaca lists them."""
        take_profit, stop_loss = body.get("take_profit"), body.get("stop_loss")
        if order_class == "simple":
            if take_profit or stop_loss:
                raise AlpacaError(422, "take_profit/stop_loss need order_class bracket or oto")
            return []
        if qty is None or qty != int(qty):
            raise AlpacaError(422, f"{order_class} orders need a whole-share qty (notional/fractional not allowed)")
        if tif not in ("day", "gtc"):
            raise AlpacaError(422, f"{order_class} orders need time_in_force day or gtc")
        specs: list[tuple[str, float | None, float | None]] = []
        if take_profit is not None:
            tp = _decimal(take_profit, "limit_price", "take_profit.limit_price")
            if tp is None:
                raise AlpacaError(422, "take_profit.limit_price is required")
            specs.append(("limit", tp, None))
        if stop_loss is not None:
            sl = _decimal(stop_loss, "stop_price", "stop_loss.stop_price")
            if sl is None:
                raise AlpacaError(422, "stop_loss.stop_price is required")
            sl_limit = _decimal(stop_loss, "limit_price", "stop_loss.limit_price")
            specs.append(("stop_limit" if sl_limit is not None else "stop", sl_limit, sl))
        if order_class == "bracket" and len(specs) != 2:
            raise AlpacaError(422, "bracket orders need both take_profit and stop_loss")
        if order_class == "oto" and len(specs) != 1:
            raise AlpacaError(422, "oto orders need exactly one of take_profit or stop_loss")
        return specs

    def _book(self, order: _Order) -> None:
        self._orders.append(order)
        self._by_id[order.id] = order
        self._by_client_id[order.client_order_id] = order

    def _accept_or_reject(self, order: _Order) -> None:
        """After the HTTP answer is built: the venue takes the order ("new") or a scheduled rejection strikes."""
        now = _now()
        reason = self.faults._take_rejection()
        if reason is not None:
            order.status, order.failed_at = "rejected", now
            order.touch()
            self._emit("rejected", order, now, reason=reason)
            self._end_legs(order, now)
            return
        order.status = "new"
        order.touch()
        self._emit("new", order, now)

    async def _list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise AlpacaError(422, f"invalid status: {status!r} (open, closed or all)")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError as exc:
            raise AlpacaError(422, f"invalid limit: {q.get('limit')!r}") from exc
        if not 1 <= limit <= 500:
            raise AlpacaError(422, "limit must be between 1 and 500")
        direction = q.get("direction", "desc")
        if direction not in ("asc", "desc"):
            raise AlpacaError(422, f"invalid direction: {direction!r} (asc or desc)")
        after, until = _query_time(q, "after"), _query_time(q, "until")
        nested = q.get("nested", "false").lower() == "true"
        symbols = {s.strip().upper() for s in q["symbols"].split(",") if s.strip()} if q.get("symbols") else None
        side = q.get("side")
        with self._lock:
            chosen = []
            for o in self._orders:
                if nested and o.parent is not None:
                    continue  # rolled up under its parent
                if status == "open" and not o.open or status == "closed" and o.open:
                    continue
                if symbols is not None and o.symbol not in symbols or side and o.side != side:
                    continue
                if after is not None and o.created_at <= after or until is not None and o.created_at >= until:
                    continue
                chosen.append(o)
            if direction == "desc":
                chosen.reverse()
            reply = [o.to_json(nested=nested) for o in chosen[:limit]]
        return web.json_response(reply)

    async def _get_order(self, request: web.Request) -> web.Response:
        nested = request.query.get("nested", "true").lower() != "false"
        with self._lock:
            return web.json_response(self._find(request.match_info["order_id"]).to_json(nested=nested))

    async def _get_by_client_id(self, request: web.Request) -> web.Response:
        client_id = request.query.get("client_order_id")
        if not client_id:
            raise AlpacaError(422, "client_order_id is required")
        with self._lock:
            order = self._by_client_id.get(client_id)
            if order is None:
                raise AlpacaError(404, "order not found", 40410000)
            return web.json_response(order.to_json())

    async def _cancel_order(self, request: web.Request) -> web.Response:
        with self._lock:
            order = self._find(request.match_info["order_id"])
            self._cancel(order, _now())
        return web.Response(status=204)

    def _cancel(self, order: _Order, now: datetime) -> None:
        if not order.open:
            raise AlpacaError(422, f"order is already in \"{order.status}\" state", 42210000)
        if order.parent is not None:
            # a leg is one of an OCO group: cancelling one cancels the group
            for leg in order.parent.legs:
                if leg.open:
                    self._finish(leg, "canceled", now)
            return
        self._finish(order, "canceled", now)

    async def _cancel_all(self, request: web.Request) -> web.Response:
        now = _now()
        reply = []
        with self._lock:
            for order in list(self._orders):
                if order.open and (order.parent is None or order.working):
                    self._cancel(order, now)
                    reply.append({"id": order.id, "status": 200, "body": order.to_json()})
        return web.json_response(reply, status=207)

    async def _replace_order(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        with self._lock:
            old = self._find(request.match_info["order_id"])
            if old.status not in ("new", "partially_filled", "accepted", "held"):
                raise AlpacaError(422, f"order is already in \"{old.status}\" state", 42210000)
            qty = _decimal(body, "qty")
            limit = _decimal(body, "limit_price")
            stop = _decimal(body, "stop_price")
            tif = body.get("time_in_force", old.time_in_force)
            client_id = body.get("client_order_id") or str(uuid.uuid4())
            if qty is None and limit is None and stop is None and "time_in_force" not in body \
                    and "client_order_id" not in body:
                raise AlpacaError(422, "nothing to replace: give qty, limit_price, stop_price, time_in_force "
                                       "or client_order_id")
            if qty is not None and qty <= 0:
                raise AlpacaError(422, "qty must be > 0")
            if qty is not None and old.notional is not None:
                raise AlpacaError(422, "qty of a notional order cannot be changed")
            if limit is not None and old.type not in ("limit", "stop_limit"):
                raise AlpacaError(422, f"limit_price cannot be set on a {old.type} order")
            if stop is not None and old.type not in ("stop", "stop_limit"):
                raise AlpacaError(422, f"stop_price cannot be set on a {old.type} order")
            if tif not in TIME_IN_FORCE:
                raise AlpacaError(422, f"invalid time_in_force: {tif!r}")
            if client_id in self._by_client_id:
                raise AlpacaError(422, "client_order_id must be unique", 40010001)
            now = _now()
            new = _Order(id=str(uuid.uuid4()), client_order_id=client_id, symbol=old.symbol, side=old.side,
                         type=old.type, time_in_force=tif,
                         qty=qty if qty is not None else (None if old.qty is None else old.remaining),
                         notional=old.notional, limit_price=limit if limit is not None else old.limit_price,
                         stop_price=stop if stop is not None else old.stop_price, order_class=old.order_class,
                         extended_hours=old.extended_hours, created_at=now,
                         status="held" if old.status == "held" else "new", replaces=old.id, parent=old.parent,
                         legs=old.legs, triggered=old.triggered, trading_day=old.trading_day,
                         eligible_from_ns=old.eligible_from_ns)
            for leg in new.legs:
                leg.parent = new
            if old.parent is not None:  # the replacement takes the leg's place in its bracket
                siblings = old.parent.legs
                siblings[siblings.index(old)] = new
            old.status, old.replaced_at, old.replaced_by = "replaced", now, new.id
            old.touch()
            new.touch()
            self._book(new)
            self._emit("replaced", old, now)
            self._emit("new", new, now)
            return web.json_response(new.to_json())

    # ------------------------------------------------------------------ positions
    def _mark(self, symbol: str, avg: float) -> float:
        return self._last_price.get(symbol, avg)

    def _position_json(self, symbol: str) -> dict[str, Any]:
        qty, avg = self._positions[symbol]
        price = self._mark(symbol, avg)
        last = self._prev_close.get(symbol, price)
        cost = qty * avg
        value = qty * price
        pl = value - cost
        return {
            "asset_id": _asset_id(symbol), "symbol": symbol, "exchange": "NASDAQ", "asset_class": "us_equity",
            "asset_marginable": True, "avg_entry_price": _num(avg), "qty": _num(qty),
            "qty_available": _num(qty - self._held_for_orders(symbol)),
            "side": "long" if qty > 0 else "short", "market_value": _num(value), "cost_basis": _num(cost),
            "unrealized_pl": _num(pl), "unrealized_plpc": _num(pl / abs(cost) if cost else 0.0),
            "unrealized_intraday_pl": _num(qty * (price - last)),
            "unrealized_intraday_plpc": _num((price - last) / last if last else 0.0),
            "current_price": _num(price), "lastday_price": _num(last),
            "change_today": _num((price - last) / last if last else 0.0),
        }

    def _held_for_orders(self, symbol: str) -> float:
        """Shares promised to open orders that would reduce the position (Alpaca's qty_available)."""
        qty, _ = self._positions[symbol]
        closing_side = "sell" if qty > 0 else "buy"
        held = sum(o.remaining for o in self._orders
                   if o.symbol == symbol and o.working and o.side == closing_side and o.qty is not None)
        return math.copysign(min(held, abs(qty)), qty)

    async def _list_positions(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response([self._position_json(s) for s in sorted(self._positions)])

    async def _get_position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"].upper()
        with self._lock:
            if symbol not in self._positions:
                raise AlpacaError(404, "position does not exist", 40410000)
            return web.json_response(self._position_json(symbol))

    async def _close_position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"].upper()
        with self._lock:
            order = self._close(symbol, request.query)
            reply = order.to_json()
            self._accept_or_reject(order)
        return web.json_response(reply)

    def _close(self, symbol: str, query: Any) -> _Order:
        if symbol not in self._positions:
            raise AlpacaError(404, "position does not exist", 40410000)
        held, _ = self._positions[symbol]
        qty = abs(held)
        if query.get("qty"):
            qty = _decimal(dict(query), "qty") or 0.0
        elif query.get("percentage"):
            qty = abs(held) * (_decimal(dict(query), "percentage") or 0.0) / 100
        if not 0 < qty <= abs(held) + QTY_EPS:
            raise AlpacaError(422, f"close qty must be in (0, {_num(abs(held))}]")
        return self._create_order({"symbol": symbol, "qty": qty, "side": "sell" if held > 0 else "buy",
                                   "type": "market", "time_in_force": "day"})

    async def _close_all_positions(self, request: web.Request) -> web.Response:
        reply = []
        with self._lock:
            if request.query.get("cancel_orders", "false").lower() == "true":
                now = _now()
                for order in self._orders:
                    if order.open and (order.parent is None or order.working):
                        self._cancel(order, now)
            for symbol in sorted(self._positions):
                order = self._close(symbol, {})
                reply.append({"symbol": symbol, "status": 200, "body": order.to_json()})
                self._accept_or_reject(order)
        return web.json_response(reply, status=207)

    # ------------------------------------------------------------------ matching
    def _match_bar(self, symbol: str, t_ns: int, o: float, h: float, lo: float, c: float) -> None:
        when = _from_ns(t_ns)
        day = when.date()
        if symbol in self._last_price:
            self._prev_close[symbol] = self._last_price[symbol]
        for order in self._symbol_orders(symbol):
            if order.time_in_force in ("day", "opg", "cls") and order.trading_day is not None \
                    and order.trading_day < day and order.working:
                self._finish(order, "expired", when)
        candidates = self._symbol_orders(symbol)
        for order in candidates:
            if order.trading_day is None:
                order.trading_day = day
        same_bar_legs = self._run_phases(candidates, t_ns, when, o, h, lo)
        while same_bar_legs:  # legs of a parent filled at the open work on the parent's bar
            same_bar_legs = self._run_phases(same_bar_legs, t_ns, when, o, h, lo)
        for order in candidates:
            if order.working and order.time_in_force in ("ioc", "fok"):
                self._finish(order, "canceled", when)
        self._last_price[symbol] = c

    def _symbol_orders(self, symbol: str) -> list[_Order]:
        return [o for o in self._orders if o.symbol == symbol and o.working]

    def _run_phases(self, orders: list[_Order], t_ns: int, when: datetime, o: float, h: float,
                    lo: float) -> list[_Order]:
        """Markets at the open, then stops, then limits; returns legs released by a fill at the open."""
        released: list[_Order] = []

        def at_open(order: _Order) -> bool:
            return order.type == "market" or order.type == "stop" and order.triggered

        phases = (
            [x for x in orders if at_open(x)],
            [x for x in orders if x.type in ("stop", "stop_limit") and not x.triggered],
            [x for x in orders if x.type == "limit" or x.type == "stop_limit" and x.triggered],
        )
        for phase in phases:
            for order in phase:
                if not order.working or order.eligible_from_ns > t_ns:
                    continue
                price = self._fill_price(order, o, h, lo)
                if price is not None:
                    released += self._fill(order, price, t_ns, when, at_open=price == o)
        return released

    @staticmethod
    def _fill_price(order: _Order, o: float, h: float, lo: float) -> float | None:
        buy = order.side == "buy"
        reference = o
        if order.type in ("stop", "stop_limit") and not order.triggered:
            stop = order.stop_price or 0.0
            if buy and h >= stop:
                reference = max(o, stop)
            elif not buy and lo <= stop:
                reference = min(o, stop)
            else:
                return None
            order.triggered = True
            if order.type == "stop":
                return reference
        if order.type in ("market", "stop"):
            return o
        limit = order.limit_price or 0.0
        if buy:
            return reference if reference <= limit else (limit if lo <= limit else None)
        return reference if reference >= limit else (limit if h >= limit else None)

    def _fill(self, order: _Order, price: float, t_ns: int, when: datetime, at_open: bool) -> list[_Order]:
        if order.qty is None:  # a notional order is sized at its first fill
            order.qty = round((order.notional or 0.0) / price, 9)
        quantity = order.remaining if order.time_in_force == "fok" else self.faults._fill_quantity(order.remaining)
        if quantity <= QTY_EPS:
            return []
        order.filled_qty += quantity
        order.filled_value += quantity * price
        done = order.remaining <= QTY_EPS
        order.status = "filled" if done else "partially_filled"
        if done:
            order.filled_at = when
        order.touch()
        signed = quantity if order.side == "buy" else -quantity
        position = self._apply_position(order.symbol, signed, price)
        self._emit("fill" if done else "partial_fill", order, when, price=price, qty=quantity,
                   position_qty=position)
        released: list[_Order] = []
        if order.parent is not None:
            self._oco(order, quantity, when)
        if done and order.legs:
            released = self._release_legs(order, t_ns, when, at_open)
        return released

    def _apply_position(self, symbol: str, signed: float, price: float) -> float:
        held, avg = self._positions.get(symbol, (0.0, 0.0))
        self._cash -= signed * price
        new = held + signed
        if abs(new) <= QTY_EPS:
            self._positions.pop(symbol, None)
            return 0.0
        if held == 0 or (held > 0) == (signed > 0):
            avg = (abs(held) * avg + abs(signed) * price) / abs(new)
        elif (new > 0) != (held > 0):  # flipped through zero: the rest opened at this price
            avg = price
        self._positions[symbol] = (new, avg)
        return new

    def _oco(self, leg: _Order, quantity: float, when: datetime) -> None:
        parent = leg.parent
        assert parent is not None
        for sibling in parent.legs:
            if sibling is leg or not sibling.open:
                continue
            if leg.status == "filled":
                self._finish(sibling, "canceled", when)
            elif sibling.qty is not None:
                sibling.qty = max(sibling.qty - quantity, sibling.filled_qty)
                sibling.touch()

    def _release_legs(self, parent: _Order, t_ns: int, when: datetime, same_bar: bool) -> list[_Order]:
        """The parent is done filling: its held legs work for the filled quantity."""
        released = []
        for leg in parent.legs:
            if leg.status != "held":
                continue
            leg.qty = parent.filled_qty
            leg.status = "new"
            leg.eligible_from_ns = t_ns if same_bar else t_ns + 1
            leg.trading_day = None
            leg.touch()
            self._emit("new", leg, when)
            released.append(leg)
        return released

    def _finish(self, order: _Order, status: str, when: datetime) -> None:
        """End an order (canceled / expired); a bracket parent then releases or cancels its legs."""
        order.status = status
        if status == "canceled":
            order.canceled_at = when
        else:
            order.expired_at = when
        order.touch()
        self._emit(status, order, when)
        if order.legs:
            if order.filled_qty > QTY_EPS:
                for leg in self._release_legs(order, 0, when, same_bar=False):
                    leg.eligible_from_ns = -1
            else:
                self._end_legs(order, when)

    def _end_legs(self, parent: _Order, when: datetime) -> None:
        for leg in parent.legs:
            if leg.open:
                self._finish(leg, "canceled", when)

    # ------------------------------------------------------------------ trade_updates stream
    def _emit(self, event: str, order: _Order, when: datetime, *, price: float | None = None,
              qty: float | None = None, position_qty: float | None = None, reason: str | None = None) -> None:
        """Queue a trade_updates event for every listening stream; called under the lock, so order is kept."""
        data: dict[str, Any] = {"event": event, "timestamp": _rfc3339(when), "order": order.to_json()}
        if event in ("fill", "partial_fill"):
            data.update(execution_id=str(uuid.uuid4()), price=_num(price), qty=_num(qty),
                        position_qty=_num(position_qty))
        if reason is not None:
            data["reason"] = reason  # not in Alpaca's payload; alpaca-py's TradeUpdate ignores it
        message = json.dumps({"stream": "trade_updates", "data": data}).encode()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._broadcast, message)

    def _broadcast(self, message: bytes) -> None:
        for conn in self._connections:
            if conn.listening:
                conn.queue.put_nowait(message)

    def _drop_streams(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        async def close_all() -> None:
            await asyncio.gather(*(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"dropped by test")
                                   for c in list(self._connections)), return_exceptions=True)

        if threading.current_thread() is self._thread:
            loop.create_task(close_all())
        else:
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(5)

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(timeout=2.0)
        await ws.prepare(request)
        conn = _Connection(ws)
        self._connections.add(conn)
        writer = asyncio.create_task(self._write(conn))
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                if not self._on_stream_message(conn, msg.data):
                    break
        finally:
            self._connections.discard(conn)
            conn.queue.put_nowait(None)
            await writer
            if not ws.closed:
                await ws.close()
        return ws

    async def _write(self, conn: _Connection) -> None:
        while (message := await conn.queue.get()) is not None:
            if conn.ws.closed:
                return
            try:
                await conn.ws.send_bytes(message)
            except ConnectionError:
                return

    def _on_stream_message(self, conn: _Connection, raw: str | bytes) -> bool:
        """Answer auth/listen like Alpaca; False ends the connection (bad credentials)."""
        def send(payload: dict) -> None:
            conn.queue.put_nowait(json.dumps(payload).encode())

        try:
            msg = json.loads(raw)
            action = msg.get("action")
        except (ValueError, AttributeError):
            send({"stream": "listening", "data": {"error": "invalid message: expected a JSON object"}})
            return True
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        if action in ("auth", "authenticate"):
            key = data.get("key_id", msg.get("key"))
            secret = data.get("secret_key", msg.get("secret"))
            conn.authorized = key == self.key and secret == self.secret
            status = "authorized" if conn.authorized else "unauthorized"
            reply = {"status": status, "action": "authenticate"}
            if not conn.authorized:
                reply["message"] = "access key verification failed"
            send({"stream": "authorization", "data": reply})
            return conn.authorized
        if action == "listen":
            if not conn.authorized:
                send({"stream": "authorization", "data": {"status": "unauthorized", "action": "listen"}})
                return False
            streams = [s for s in data.get("streams", []) if s == "trade_updates"]
            conn.listening = bool(streams)
            send({"stream": "listening", "data": {"streams": streams}})
            return True
        send({"stream": "listening", "data": {"error": f"unknown action: {action!r}"}})
        return True


def _decimal(body: dict, key: str, name: str | None = None) -> float | None:
    """A number Alpaca accepts as JSON number or decimal string; a bad one is a 422 naming the field."""
    value = body.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise AlpacaError(422, f"invalid {name or key}: {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise AlpacaError(422, f"invalid {name or key}: {value!r} is not finite")
    return number


def _query_time(query: Any, key: str) -> datetime | None:
    text = query.get(key)
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace(" ", "+"))  # an unescaped "+" arrives as a space
    except ValueError as exc:
        raise AlpacaError(422, f"invalid {key}: {text!r} is not an RFC 3339 time") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


__all__ = ["AlpacaError", "AlpacaTradingServer", "Faults"]
