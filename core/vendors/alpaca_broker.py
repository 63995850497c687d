"""Alpaca as a `Broker`: orders through alpaca-py's TradingClient, fills from its trade-updates stream.

What this adds to the client, and why:

- **One order per client order id.** The id comes from the caller (a hash of the intent), so a request retried
  after a timeout carries the same id; when the broker answers "client_order_id must be unique" the first
  attempt had landed, and the order it created is looked up and adopted instead of being placed twice.
- **No hanging, no hammering.** Every request has a timeout (`timeout_s`); retryable failures (429, 5xx,
  timeouts) are retried with backoff; a circuit breaker stops all sending after repeated failures.
- **The safety gate** (`utp.core.safety`) decides before every order placed or replaced; cancels always go.
- **Fills exactly once.** The stream runs in a thread of its own and only queues what it hears; the engine's
  thread applies it in `drain`. After the stream dropped, every open order is polled, since fills that happened
  meanwhile are never re-sent. A fill is reported as the increase of the order's filled quantity over what was
  reported before, whether the news came from the stream, a poll or a REST answer, so nothing counts twice.
- **Brackets** are one Alpaca request (order_class bracket, or oto with one exit); Alpaca names the legs itself,
  so they are mapped back to our leg client order ids by type (limit: take profit, stop: stop loss).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream
from requests.adapters import HTTPAdapter

from utp.core.broker import BarBlock, Broker, BrokerError, BrokerOrder, BrokerReport, DuplicateOrderError, FillReport
from utp.core.config import BrokerConfig
from utp.core.safety import SafetyGate
from utp.core.vendors.resilience import (
    BrokerUnavailableError,
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    call_with_retry,
    http_status,
)
from utp.v1 import events_pb2 as pb

__all__ = ["AlpacaBroker", "BrokerUnavailableError", "CircuitOpenError", "CredentialsMissing", "Reconciliation"]

log = logging.getLogger(__name__)

DUPLICATE_CODE = 40010001
EPS = 1e-9
POSITION_TOLERANCE = 1e-6

_STATUS = {
    "new": pb.ORDER_STATUS_NEW, "accepted": pb.ORDER_STATUS_NEW, "pending_new": pb.ORDER_STATUS_NEW,
    "accepted_for_bidding": pb.ORDER_STATUS_NEW, "calculated": pb.ORDER_STATUS_NEW, "stopped": pb.ORDER_STATUS_NEW,
    "pending_review": pb.ORDER_STATUS_NEW, "suspended": pb.ORDER_STATUS_NEW,
    "partially_filled": pb.ORDER_STATUS_PARTIALLY_FILLED, "filled": pb.ORDER_STATUS_FILLED,
    "canceled": pb.ORDER_STATUS_CANCELED, "done_for_day": pb.ORDER_STATUS_EXPIRED, "expired": pb.ORDER_STATUS_EXPIRED,
    "replaced": pb.ORDER_STATUS_REPLACED, "rejected": pb.ORDER_STATUS_REJECTED, "held": pb.ORDER_STATUS_HELD,
}  # fmt: skip
# pending_cancel / pending_replace say nothing final yet: the order keeps its status until the outcome.
_CLOSED = {pb.ORDER_STATUS_FILLED, pb.ORDER_STATUS_CANCELED, pb.ORDER_STATUS_REJECTED, pb.ORDER_STATUS_EXPIRED,
           pb.ORDER_STATUS_REPLACED}  # fmt: skip
_TIF = {pb.TIME_IN_FORCE_DAY: TimeInForce.DAY, pb.TIME_IN_FORCE_GTC: TimeInForce.GTC,
        pb.TIME_IN_FORCE_UNSPECIFIED: TimeInForce.GTC}  # fmt: skip
_SIDE = {pb.ORDER_SIDE_BUY: OrderSide.BUY, pb.ORDER_SIDE_SELL: OrderSide.SELL}


class CredentialsMissing(BrokerError):
    """The environment lacks the broker's key or secret."""


@dataclass(slots=True)
class Reconciliation:
    """Our books against the broker's: `ok` when they agree; each disagreement as a sentence."""

    ok: bool
    mismatches: list[str] = field(default_factory=list)


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request of a session a timeout: alpaca-py sends its requests with none, so a broker that
    never answers would hold the engine forever."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        return super().send(request, stream=stream, timeout=self.timeout_s if timeout is None else timeout,
                            verify=verify, cert=cert, proxies=proxies)  # fmt: skip


class _TradeUpdates(TradingStream):
    """alpaca-py's trade-updates stream (it reconnects by itself), telling us when it connects and drops so
    that what was missed meanwhile can be polled, and able to stop at once (its own stop waits out a 5 s read)."""

    def __init__(self, key: str, secret: str, url: str, paper: bool,
                 on_connect: Callable[[], None], on_drop: Callable[[], None]) -> None:  # fmt: skip
        super().__init__(key, secret, paper=paper, raw_data=True, url_override=url)
        self._reconnect_min_backoff = 0.1
        self._reconnect_max_backoff = 5.0
        self._on_connect, self._on_drop = on_connect, on_drop

    async def _start_ws(self) -> None:
        await super()._start_ws()
        self._on_connect()

    async def close(self) -> None:
        had_connection = self._ws is not None
        await super().close()
        if had_connection:
            self._on_drop()

    async def _shut(self) -> None:
        await self.stop_ws()
        await self.close()

    def shutdown(self, timeout_s: float) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shut(), loop).result(timeout_s)


def parse_time_ns(text: Any) -> int:
    """Alpaca's RFC 3339 time ("2024-01-02T15:04:05.123456789Z", offsets allowed) in ns since the epoch; 0 if none."""
    if not text or not isinstance(text, str):
        return 0
    head, dot, rest = text.partition(".")
    fraction, zone = rest, ""
    if dot:
        for i, ch in enumerate(rest):
            if not ch.isdigit():
                fraction, zone = rest[:i], rest[i:]
                break
    else:
        for marker in ("Z", "+", "-"):
            i = head.find(marker, 10)
            if i >= 0:
                head, zone = head[:i], head[i:]
                break
    zone = "+00:00" if zone in ("", "Z", "z") else zone
    try:
        stamp = datetime.fromisoformat(head + zone)
    except ValueError:
        return 0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    seconds = int(stamp.timestamp())
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9] or 0)


def _number(value: Any) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        return 0.0


def broker_message(exc: BaseException) -> str:
    """The broker's own words for a refusal ("insufficient buying power"), with the HTTP status."""
    text = str(exc)
    try:
        body = json.loads(text)
        text = str(body.get("message") or text) if isinstance(body, dict) else text
    except (ValueError, TypeError):
        pass
    status = http_status(exc)
    return f"{text} (HTTP {status})" if status is not None else text


def is_duplicate(exc: BaseException) -> bool:
    """The broker's answer to a client order id it has seen: the order exists already."""
    if http_status(exc) != 422:
        return False
    text = str(exc)
    try:
        body = json.loads(text)
        if isinstance(body, dict) and body.get("code") == DUPLICATE_CODE:
            return True
    except (ValueError, TypeError):
        pass
    return "client_order_id must be unique" in text


def _copy(order: BrokerOrder) -> BrokerOrder:
    return copy.copy(order)


def _signed(side: int, quantity: float) -> float:
    return quantity if side == pb.ORDER_SIDE_BUY else -quantity


class AlpacaBroker(Broker):
    """Alpaca paper or live trading behind the `Broker` interface (see the module documentation)."""

    def __init__(
        self,
        config: BrokerConfig,
        symbols: Sequence[str],
        *,
        approval: Callable[[], bool],
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gate = SafetyGate(config, approval)  # refuses a live endpoint without live_enabled, before anything
        self.config = config
        self.name = config.name
        self.symbols = tuple(symbols)
        env = os.environ if environ is None else environ
        missing = [name for name in (config.key_env, config.secret_env) if not env.get(name)]
        if missing:
            raise CredentialsMissing(f"{self.name}: set the environment variable(s) {' and '.join(missing)} to the "
                                     "Alpaca API key id and secret key")  # fmt: skip
        self.key, self.secret = env[config.key_env], env[config.secret_env]
        self.endpoint = self.gate.endpoint()
        self.stream_url = config.stream_url or _stream_url_of(self.endpoint)
        self.policy = RetryPolicy.from_config(config)
        self.breaker = CircuitBreaker.from_config(config, clock, name=self.name)
        self._sleep = sleep
        self.client = TradingClient(self.key, self.secret, paper=not self.gate.live, raw_data=True,
                                    url_override=self.endpoint)  # fmt: skip
        # alpaca-py would retry 429s by itself, sleeping 3 s unseen by our breaker and backoff: we retry.
        self.client._retry = 0
        adapter = _TimeoutAdapter(config.timeout_s)
        self.client._session.mount("http://", adapter)
        self.client._session.mount("https://", adapter)

        self._lock = threading.RLock()
        self._orders: dict[str, BrokerOrder] = {}  # every order we tried to place, by client order id
        self._by_broker_id: dict[str, str] = {}
        self._placed: set[str] = set()  # client order ids whose submit is settled: never sent again
        self._reported: dict[str, tuple[int, float]] = {}  # (status, filled) of each order's last snapshot
        self._legs: dict[str, dict[str, str]] = {}  # entry -> {"limit": take-profit id, "stop": stop-loss id}
        self._bracket: dict[str, list[BrokerOrder]] = {}  # entry -> its legs as the caller gave them
        self._last_close: dict[str, float] = {}
        self._inbox: deque[dict[str, Any]] = deque()  # trade updates as the stream thread heard them
        self._stream: _TradeUpdates | None = None
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.connections = 0
        self._resync = False  # poll open orders: the stream (re)connected, what happened before is unknown

    # -- stream ------------------------------------------------------------------------------------------
    def start(self) -> Self:
        """Listen to trade updates in a background thread (reconnecting when dropped)."""
        if self._thread is not None:
            return self
        self._stream = _TradeUpdates(self.key, self.secret, self.stream_url, not self.gate.live,
                                     self._stream_connected, self._stream_dropped)  # fmt: skip
        self._stream.subscribe_trade_updates(self._heard)
        self._thread = threading.Thread(target=self._stream.run, name=f"{self.name}-trade-updates", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        stream, thread = self._stream, self._thread
        self._stream, self._thread = None, None
        if stream is None or thread is None:
            return
        for _ in range(50):  # the stream's loop exists only once its thread has started it
            if stream._loop is not None or not thread.is_alive():
                break
            time.sleep(0.01)
        try:
            stream.shutdown(5.0)
        except Exception:
            log.exception("%s: stopping the trade-updates stream failed", self.name)
        thread.join(5.0)
        self.connected.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def _stream_connected(self) -> None:
        self.connections += 1
        # What happened while no stream listened is never re-sent: poll for it (nothing to poll before any order).
        if self.connections > 1 or self._orders:
            self._resync = True
        self.connected.set()
        log.info("%s: trade-updates stream connected (%d)", self.name, self.connections)

    def _stream_dropped(self) -> None:
        self.connected.clear()
        self._resync = True
        if self._stream is None:
            return  # closing
        log.warning("%s: trade-updates stream dropped; reconnecting, open orders will be polled", self.name)

    async def _heard(self, message: dict[str, Any]) -> None:
        data = message.get("data") if isinstance(message, dict) else None
        if isinstance(data, dict):
            self._inbox.append(data)

    # -- requests ----------------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], describe: str, *, breaker: bool = True,
              on_retry: Callable[[int, BaseException], None] | None = None) -> Any:  # fmt: skip
        return call_with_retry(fn, self.policy, self.breaker if breaker else None, sleep=self._sleep,
                               describe=f"{self.name}: {describe}", on_retry=on_retry)  # fmt: skip

    def _get_by_client_id(self, client_order_id: str) -> dict[str, Any]:
        return self._call(lambda: self.client.get_order_by_client_id(client_order_id),
                          f"look up order {client_order_id}")  # fmt: skip

    # -- the Broker interface ----------------------------------------------------------------------------
    def submit(self, order: BrokerOrder) -> BrokerReport:
        return self.submit_bracket(order, None, None)

    def submit_bracket(self, entry: BrokerOrder, take_profit: BrokerOrder | None,
                       stop_loss: BrokerOrder | None) -> BrokerReport:  # fmt: skip
        """Place `entry` with its exits as one request; the exits are HELD until the entry fills, then one
        cancels the other. Raises DuplicateOrderError (sending nothing) if any client order id was used,
        CircuitOpenError while the circuit is open, BrokerUnavailableError when the broker kept failing
        (the order's fate may then be unknown: submitting it again is safe, the id makes it one order)."""
        with self._lock:
            legs = [leg for leg in (take_profit, stop_loss) if leg is not None]
            group = [entry, *legs]
            ids = [o.client_order_id for o in group]
            if len(set(ids)) != len(ids):
                raise DuplicateOrderError(f"a bracket uses one client order id twice: {ids}")
            for cid in ids:
                if cid in self._placed:
                    raise DuplicateOrderError(f"client order id {cid} was already used")
            for o in group:
                o.broker, o.updated_time_ns = self.name, entry.submitted_time_ns
            for leg in legs:
                leg.parent_client_order_id, leg.symbol = entry.client_order_id, entry.symbol
            problem = self._check(entry, take_profit, stop_loss) or self.gate.check_submit()
            if problem is None:
                try:
                    request = self._request_for(entry, take_profit, stop_loss)
                except ValueError as exc:  # alpaca-py's own validation of the request
                    problem = f"invalid order: {str(exc).splitlines()[0]}"
            if problem is not None:
                log.info("%s: order %s not sent: %s", self.name, entry.client_order_id, problem)
                return self._reject(group, problem)
            return self._place(entry, legs, request)

    def _reject(self, group: list[BrokerOrder], problem: str) -> BrokerReport:
        report = BrokerReport()
        for o in group:
            self._placed.add(o.client_order_id)
            o.status, o.message = pb.ORDER_STATUS_REJECTED, problem
            self._snapshot(o, report)
        return report

    def _check(self, entry: BrokerOrder, take_profit: BrokerOrder | None, stop_loss: BrokerOrder | None) -> str | None:
        if entry.symbol not in self.symbols:
            return f"unknown symbol {entry.symbol!r}"
        if entry.side not in _SIDE:
            return "side must be BUY or SELL"
        if entry.time_in_force not in _TIF:
            return f"unsupported time in force {entry.time_in_force}"
        if entry.parent_client_order_id:
            return "Alpaca places a bracket's legs with their entry: use submit_bracket"
        if entry.notional and not entry.quantity:
            problem = self._size_notional(entry)
            if problem:
                return problem
        elif not (math.isfinite(entry.quantity) and entry.quantity > 0):
            return f"quantity {entry.quantity} must be a positive number"
        elif entry.quantity != math.floor(entry.quantity):
            return f"quantity {entry.quantity} is not a whole number of shares"
        problem = _price_problem(entry)
        if problem:
            return problem
        exit_side = pb.ORDER_SIDE_SELL if entry.side == pb.ORDER_SIDE_BUY else pb.ORDER_SIDE_BUY
        for leg, kinds, what in ((take_profit, (pb.ORDER_TYPE_LIMIT,), "take profit"),
                                 (stop_loss, (pb.ORDER_TYPE_STOP, pb.ORDER_TYPE_STOP_LIMIT), "stop loss")):  # fmt: skip
            if leg is None:
                continue
            if leg.order_type not in kinds:
                return f"a {what} leg must be a {' or '.join(pb.OrderType.Name(k) for k in kinds)} order"
            if leg.side != exit_side:
                return f"the {what} leg must trade the other side of its entry"
            problem = _price_problem(leg)
            if problem:
                return f"{what}: {problem}"
        return None

    def _size_notional(self, order: BrokerOrder) -> str | None:
        """Alpaca refuses notional brackets (and notional orders other than market DAY ones), so a notional order
        becomes whole shares at the last close seen."""
        if not (math.isfinite(order.notional) and order.notional > 0):
            return f"notional {order.notional} must be a positive number, with quantity 0"
        price = self._last_close.get(order.symbol)
        if not price:
            return f"notional {order.notional:.2f} cannot be sized: no price of {order.symbol} seen yet"
        shares = math.floor(order.notional / price + 1e-9)
        if shares < 1:
            return f"notional {order.notional:.2f} buys no share at {price:.4f}"
        order.quantity = float(shares)
        return None

    def _request_for(self, entry: BrokerOrder, take_profit: BrokerOrder | None,
                     stop_loss: BrokerOrder | None) -> OrderRequest:  # fmt: skip
        fields: dict[str, Any] = {
            "symbol": entry.symbol, "qty": entry.quantity, "side": _SIDE[entry.side],
            "time_in_force": _TIF[entry.time_in_force], "client_order_id": entry.client_order_id,
        }  # fmt: skip
        if take_profit is not None or stop_loss is not None:
            fields["order_class"] = OrderClass.BRACKET if take_profit and stop_loss else OrderClass.OTO
            if take_profit is not None:
                fields["take_profit"] = TakeProfitRequest(limit_price=take_profit.limit_price)
            if stop_loss is not None:
                limit = stop_loss.limit_price if stop_loss.order_type == pb.ORDER_TYPE_STOP_LIMIT else None
                fields["stop_loss"] = StopLossRequest(stop_price=stop_loss.stop_price, limit_price=limit)
        kind = entry.order_type
        if kind == pb.ORDER_TYPE_LIMIT:
            return LimitOrderRequest(limit_price=entry.limit_price, **fields)
        if kind == pb.ORDER_TYPE_STOP:
            return StopOrderRequest(stop_price=entry.stop_price, **fields)
        if kind == pb.ORDER_TYPE_STOP_LIMIT:
            return StopLimitOrderRequest(limit_price=entry.limit_price, stop_price=entry.stop_price, **fields)
        return MarketOrderRequest(**fields)

    def _place(self, entry: BrokerOrder, legs: list[BrokerOrder], request: OrderRequest) -> BrokerReport:
        cid = entry.client_order_id
        for o in (entry, *legs):
            self._orders[o.client_order_id] = o  # known before the answer: the stream may speak of it first
        ambiguous = False

        def note_retry(_attempt: int, _exc: BaseException) -> None:
            nonlocal ambiguous
            ambiguous = True  # a timeout or 5xx may have placed the order: a duplicate answer is then ours

        try:
            data = self._call(lambda: self.client.submit_order(request), f"submit {cid}", on_retry=note_retry)
        except APIError as exc:
            if not is_duplicate(exc):
                return self._reject([entry, *legs], broker_message(exc))
            log.info("%s: %s was placed by an earlier attempt%s; adopting it", self.name, cid,
                     "" if ambiguous else " (before this session)")  # fmt: skip
            data = self._get_by_client_id(cid)
            if data.get("symbol") != entry.symbol or data.get("side") != _SIDE[entry.side].value:
                for o in (entry, *legs):
                    self._orders.pop(o.client_order_id, None)
                raise DuplicateOrderError(f"client order id {cid} is used at the broker by another order "
                                          f"({data.get('side')} {data.get('symbol')})") from None  # fmt: skip
        report = BrokerReport()
        for o in (entry, *legs):
            self._placed.add(o.client_order_id)
        self._adopt(cid, data, report, entry.submitted_time_ns)
        if legs:
            self._map_legs(cid, legs, data, report, entry.submitted_time_ns, placing=True)
        return report

    def _map_legs(self, entry_id: str, legs: list[BrokerOrder], data: dict[str, Any], report: BrokerReport,
                  time_ns: int, placing: bool = False) -> None:  # fmt: skip
        """Alpaca names a bracket's legs itself: ours are found by type (limit: take profit, stop: stop loss)."""
        self._bracket[entry_id] = legs
        wanted = {("limit" if leg.order_type == pb.ORDER_TYPE_LIMIT else "stop"): leg for leg in legs}
        mapping = self._legs.setdefault(entry_id, {})
        for leg_data in data.get("legs") or []:
            kind = str(leg_data.get("type") or leg_data.get("order_type") or "")
            role = "limit" if kind == "limit" else "stop" if kind in ("stop", "stop_limit") else ""
            leg = wanted.get(role)
            if leg is None:
                continue
            mapping.setdefault(role, leg.client_order_id)
            self._adopt(mapping[role], leg_data, report, time_ns)
        for role, leg in wanted.items():
            if role not in mapping and placing:
                log.warning("%s: the broker's answer for %s lacks its %s leg; it will be found by polling",
                            self.name, entry_id, role)  # fmt: skip
                if leg.status == pb.ORDER_STATUS_UNSPECIFIED:
                    leg.status = pb.ORDER_STATUS_HELD
                    self._snapshot(leg, report)

    def _adopt(self, cid: str, data: dict[str, Any], report: BrokerReport, time_ns: int) -> None:
        order = self._orders[cid]
        broker_id = str(data.get("id") or "")
        if broker_id:
            order.broker_order_id = broker_id
            self._by_broker_id[broker_id] = cid
        self._apply(order, data, report, time_ns=time_ns)

    def cancel(self, client_order_id: str, time_ns: int) -> BrokerReport:
        """Cancel an open order (never blocked by the safety gate nor by an open circuit: reducing risk comes
        first). A bracket entry cancelled before any fill takes its held legs with it."""
        with self._lock:
            order = self._orders.get(client_order_id)
            if order is None or not order.is_open:
                raise BrokerError(f"order {client_order_id} is not open")
            if not order.broker_order_id:
                raise BrokerError(f"order {client_order_id} has no broker order id yet")
            try:
                self._call(lambda: self.client.cancel_order_by_id(order.broker_order_id),
                           f"cancel {client_order_id}", breaker=False)  # fmt: skip
            except APIError as exc:
                raise BrokerError(f"cancel of {client_order_id} refused: {broker_message(exc)}") from exc
            report = BrokerReport()
            order.status, order.message, order.updated_time_ns = pb.ORDER_STATUS_CANCELED, "cancelled", time_ns
            self._snapshot(order, report)
            if order.filled_quantity <= EPS:
                for leg_id in self._legs.get(client_order_id, {}).values():
                    leg = self._orders[leg_id]
                    if leg.is_open:
                        leg.status, leg.updated_time_ns = pb.ORDER_STATUS_CANCELED, time_ns
                        leg.message = "its parent ended unfilled"
                        self._snapshot(leg, report)
            return report

    def replace(self, client_order_id: str, new: BrokerOrder) -> BrokerReport:
        """Alpaca's replace (PATCH): the old order becomes REPLACED, `new` works instead. A leg keeps its link
        to its entry. Refused by the safety gate: `new` comes back REJECTED and the old order stays."""
        with self._lock:
            old = self._orders.get(client_order_id)
            if old is None or not old.is_open:
                raise BrokerError(f"order {client_order_id} is not open")
            if old.filled_quantity > EPS:
                raise BrokerError(f"order {client_order_id} has partly filled; cancel it and place a new one")
            if (new.symbol, new.side) != (old.symbol, old.side):
                raise BrokerError("a replacement keeps the symbol and side")
            if new.order_type != old.order_type:
                raise BrokerError("Alpaca cannot change an order's type: cancel it and place a new one")
            if new.client_order_id in self._placed or new.client_order_id in self._orders:
                raise DuplicateOrderError(f"client order id {new.client_order_id} was already used")
            new.parent_client_order_id, new.oco_group = old.parent_client_order_id, old.oco_group
            new.replaces_client_order_id, new.broker = client_order_id, self.name
            new.updated_time_ns = new.submitted_time_ns
            leg = bool(old.parent_client_order_id)
            if leg:
                new.quantity, new.notional = old.quantity, 0.0  # a leg stays sized by its entry
            problem = _price_problem(new)
            if not leg and not problem and not (new.quantity > 0 and new.quantity == math.floor(new.quantity)):
                problem = f"quantity {new.quantity} must be a positive whole number of shares"
            if problem:
                raise BrokerError(f"replacement of {client_order_id} refused: {problem}")
            gate = self.gate.check_submit()
            if gate is not None:
                return self._reject([new], gate)
            has_limit = new.order_type in (pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_STOP_LIMIT)
            has_stop = new.order_type in (pb.ORDER_TYPE_STOP, pb.ORDER_TYPE_STOP_LIMIT)
            request = ReplaceOrderRequest(
                qty=None if leg else int(new.quantity), time_in_force=_TIF[new.time_in_force],
                limit_price=new.limit_price if has_limit else None, stop_price=new.stop_price if has_stop else None,
                client_order_id=new.client_order_id)  # fmt: skip
            self._orders[new.client_order_id] = new
            try:
                data = self._call(lambda: self.client.replace_order_by_id(old.broker_order_id, request),
                                  f"replace {client_order_id} by {new.client_order_id}")  # fmt: skip
            except APIError as exc:
                if not is_duplicate(exc):
                    self._orders.pop(new.client_order_id, None)
                    raise BrokerError(f"replacement of {client_order_id} refused: {broker_message(exc)}") from exc
                data = self._get_by_client_id(new.client_order_id)
            report = BrokerReport()
            self._placed.add(new.client_order_id)
            old.status, old.message = pb.ORDER_STATUS_REPLACED, f"replaced by {new.client_order_id}"
            old.updated_time_ns = new.submitted_time_ns
            self._snapshot(old, report)
            self._adopt(new.client_order_id, data, report, new.submitted_time_ns)
            for legs in self._legs.values():
                for role, leg_id in legs.items():
                    if leg_id == client_order_id:
                        legs[role] = new.client_order_id
            if client_order_id in self._bracket:
                self._bracket[new.client_order_id] = self._bracket.pop(client_order_id)
            if client_order_id in self._legs:
                self._legs[new.client_order_id] = self._legs.pop(client_order_id)
                for leg_id in self._legs[new.client_order_id].values():
                    self._orders[leg_id].parent_client_order_id = new.client_order_id
            return report

    def on_bars(self, bars: BarBlock) -> BrokerReport:
        """Remember each symbol's last close (to size notional orders) and report what the broker did since."""
        with self._lock:
            for index, close in zip(bars.symbol.tolist(), bars.close.tolist(), strict=True):
                if 0 <= index < len(self.symbols) and close > 0:
                    self._last_close[self.symbols[index]] = float(close)
        return self.drain()

    def resync(self) -> BrokerReport:
        """Like `drain`, and every open order polled as well: what the stream has not told yet (a fill on its way
        when reconciliation looks) is reported now, once."""
        with self._lock:
            self._resync = True
        return self.drain()

    def drain(self) -> BrokerReport:
        """Fills and order snapshots since the last call, in arrival order. After the stream dropped, and while it
        is down or not started, every open order is polled as well, so a fill missed meanwhile is still reported,
        once."""
        with self._lock:
            report = BrokerReport()
            self._apply_inbox(report)
            if self._resync or not self.connected.is_set():
                self._resync = False
                if not self._poll(report):
                    self._resync = True
                self._apply_inbox(report)
            return report

    def open_orders(self) -> list[BrokerOrder]:
        with self._lock:
            return [_copy(o) for o in self._orders.values() if o.is_open]

    def order(self, client_order_id: str) -> BrokerOrder | None:
        """Our view of one order (a copy), None if unknown."""
        with self._lock:
            found = self._orders.get(client_order_id)
            return None if found is None else _copy(found)

    def positions(self) -> dict[str, tuple[float, float]]:
        """The broker's positions: symbol -> (signed quantity, average entry price)."""
        rows = self._call(self.client.get_all_positions, "list positions")
        out: dict[str, tuple[float, float]] = {}
        for row in rows or []:
            qty = _number(row.get("qty"))
            if str(row.get("side", "")).lower() == "short" and qty > 0:
                qty = -qty
            out[str(row.get("symbol"))] = (qty, _number(row.get("avg_entry_price")))
        return out

    def broker_open_orders(self) -> list[dict[str, Any]]:
        """The broker's open orders, each on its own: not nested, because the open legs of an entry that has
        filled (a position's take-profit and stop-loss) are not under any open order."""
        rows = self._call(lambda: self.client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=False,
                                                                          limit=500)), "list open orders")  # fmt: skip
        flat: dict[str, dict[str, Any]] = {}
        for row in rows or []:
            flat[str(row.get("id"))] = row
            for leg in row.get("legs") or []:
                if _STATUS.get(str(leg.get("status"))) in _OPEN:
                    flat.setdefault(str(leg.get("id")), leg)
        return list(flat.values())

    def reconcile(self, positions: Mapping[str, float], open_orders: Iterable[str]) -> Reconciliation:
        """Compare OUR signed positions and open client order ids with the broker's."""
        theirs = self.positions()
        mismatches: list[str] = []
        for symbol in sorted(set(theirs) | {s for s, q in positions.items() if abs(q) > POSITION_TOLERANCE}):
            ours, broker = float(positions.get(symbol, 0.0)), theirs.get(symbol, (0.0, 0.0))[0]
            if abs(ours - broker) > POSITION_TOLERANCE:
                mismatches.append(f"{symbol}: we hold {ours:g} shares, the broker holds {broker:g}")
        broker_open: dict[str, dict[str, Any]] = {}
        with self._lock:
            for row in self.broker_open_orders():
                cid = self._by_broker_id.get(str(row.get("id"))) or str(row.get("client_order_id"))
                broker_open[cid] = row
        ours_open = set(open_orders)
        for cid in sorted(ours_open - set(broker_open)):
            mismatches.append(f"order {cid} is open here but not at the broker")
        for cid in sorted(set(broker_open) - ours_open):
            row = broker_open[cid]
            mismatches.append(f"the broker has an open order {cid} ({row.get('side')} {_number(row.get('qty')):g} "
                              f"{row.get('symbol')}) that is not open here")  # fmt: skip
        for line in mismatches:
            log.warning("%s reconciliation: %s", self.name, line)
        return Reconciliation(ok=not mismatches, mismatches=mismatches)

    # -- applying what the broker says --------------------------------------------------------------------
    def _apply_inbox(self, report: BrokerReport) -> None:
        while self._inbox:
            event = self._inbox.popleft()
            data = event.get("order")
            if not isinstance(data, dict):
                continue
            cid = self._by_broker_id.get(str(data.get("id"))) or str(data.get("client_order_id") or "")
            order = self._orders.get(cid)
            if order is None:
                log.debug("%s: trade update for an order not ours (%s)", self.name, cid)
                continue
            if data.get("id") and not order.broker_order_id:
                order.broker_order_id = str(data["id"])
                self._by_broker_id[order.broker_order_id] = cid
            time_ns = parse_time_ns(event.get("timestamp"))
            reason = event.get("reason") or event.get("message") or data.get("reject_reason") or ""
            self._apply(order, data, report, time_ns=time_ns, price=_number(event.get("price")),
                        qty=_number(event.get("qty")), reason=str(reason))  # fmt: skip

    def _poll(self, report: BrokerReport) -> bool:
        """Ask the broker about every order we know to be open (or whose placing is unsettled). False if the
        broker could not be reached (try again on the next drain)."""
        pending = [o for o in self._orders.values() if o.is_open or o.status == pb.ORDER_STATUS_UNSPECIFIED]
        asked = {o.client_order_id for o in pending}
        for order in pending:
            cid = order.client_order_id
            if order.parent_client_order_id in asked:
                continue  # its entry's answer carries it (nested)
            try:
                if order.broker_order_id:
                    nested = GetOrderByIdRequest(nested=True)
                    data = self._call(lambda o=order, n=nested: self.client.get_order_by_id(o.broker_order_id, n),
                                      f"poll {cid}")  # fmt: skip
                else:
                    data = self._get_by_client_id(cid)
            except APIError as exc:
                if http_status(exc) != 404:  # 404: not (yet) at the broker
                    log.warning("%s: polling %s failed: %s", self.name, cid, broker_message(exc))
                continue
            except BrokerUnavailableError as exc:
                log.warning("%s: polling open orders failed: %s", self.name, exc)
                return False
            self._adopt(cid, data, report, 0)
            if cid in self._bracket:
                self._map_legs(cid, self._bracket[cid], data, report, 0)
        return True

    def _apply(self, order: BrokerOrder, data: dict[str, Any], report: BrokerReport, *, time_ns: int = 0,
               price: float = 0.0, qty: float = 0.0, reason: str = "") -> None:  # fmt: skip
        """Bring our order up to what the broker says, reporting a fill for any increase of the filled quantity
        (never twice: older news than we have is ignored) and a snapshot when the order changed."""
        filled = _number(data.get("filled_qty"))
        average = _number(data.get("filled_avg_price"))
        status = _STATUS.get(str(data.get("status") or ""))
        increment = filled - order.filled_quantity
        # An event carries its own time; a REST answer has the last fill's time (when filled) or the last change's.
        time_ns = (time_ns or (parse_time_ns(data.get("filled_at")) if increment > EPS else 0)
                   or parse_time_ns(data.get("updated_at")) or order.updated_time_ns)  # fmt: skip
        if increment < -EPS:
            return  # older than what we know
        if increment <= EPS and order.status in _CLOSED and status not in _CLOSED and status is not None:
            return  # a stale "new" after we know the order ended
        quantity = _number(data.get("qty"))
        if quantity > 0:
            order.quantity = quantity
        if increment > EPS:
            if price > 0 and abs(qty - increment) <= EPS:
                fill_price = price  # the event's own execution
            else:  # several executions at once (a poll): their average from the order's averages
                fill_price = (average * filled - order.average_fill_price * order.filled_quantity) / increment
            report.fills.append(FillReport(order.client_order_id, order.symbol, _signed(order.side, increment),
                                           fill_price, 0.0, 0.0, time_ns))  # fmt: skip
            order.filled_quantity, order.average_fill_price = filled, average
            if status is None or status not in (pb.ORDER_STATUS_FILLED, pb.ORDER_STATUS_CANCELED,
                                                 pb.ORDER_STATUS_EXPIRED, pb.ORDER_STATUS_REPLACED):  # fmt: skip
                status = pb.ORDER_STATUS_FILLED if filled >= order.quantity - EPS else pb.ORDER_STATUS_PARTIALLY_FILLED
        if status is not None and status != order.status:
            order.status = status
            if status == pb.ORDER_STATUS_REJECTED:
                order.message = reason or "rejected by the broker"
            elif status == pb.ORDER_STATUS_CANCELED and not order.message:
                order.message = reason or "cancelled"
            elif status == pb.ORDER_STATUS_REPLACED and data.get("replaced_by"):
                replaced_by = self._by_broker_id.get(str(data["replaced_by"]), str(data["replaced_by"]))
                order.message = f"replaced by {replaced_by}"
            elif status == pb.ORDER_STATUS_EXPIRED and not order.message:
                order.message = "the trading day ended"
        order.updated_time_ns = time_ns
        self._snapshot(order, report)

    def _snapshot(self, order: BrokerOrder, report: BrokerReport) -> None:
        key = (order.status, order.filled_quantity)
        if self._reported.get(order.client_order_id) == key:
            return
        self._reported[order.client_order_id] = key
        report.updates.append(_copy(order))


_OPEN = {pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PARTIALLY_FILLED, pb.ORDER_STATUS_HELD}


def _price_problem(order: BrokerOrder) -> str | None:
    needs_limit = order.order_type in (pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_STOP_LIMIT)
    needs_stop = order.order_type in (pb.ORDER_TYPE_STOP, pb.ORDER_TYPE_STOP_LIMIT)
    if order.order_type not in (pb.ORDER_TYPE_MARKET, pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_STOP,
                                pb.ORDER_TYPE_STOP_LIMIT):  # fmt: skip
        return f"unsupported order type {order.order_type}"
    if needs_limit and not (math.isfinite(order.limit_price) and order.limit_price > 0):
        return f"limit price {order.limit_price} must be a positive number"
    if needs_stop and not (math.isfinite(order.stop_price) and order.stop_price > 0):
        return f"stop price {order.stop_price} must be a positive number"
    return None


def _stream_url_of(endpoint: str) -> str:
    """Alpaca serves trade updates on the REST host: https://paper-api... -> wss://paper-api.../stream."""
    base = endpoint.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + "/stream"
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + "/stream"
    return base + "/stream"
