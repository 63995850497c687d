"""The loopback Alpaca trading server, driven by alpaca-py itself: every answer must parse into alpaca-py's models.

Facts about alpaca-py 0.44 these tests pin down (the broker adapter relies on them):
- TradingClient sends requests through `client._session` (a requests.Session) with NO timeout; a timeout is set
  by wrapping `_session.request` (here: functools.partial(..., timeout=...)). A timeout surfaces as
  requests.exceptions.ReadTimeout, not APIError.
- It retries HTTP 429 and 504 by itself (`_retry` = 3 times, `_retry_wait` = 3 s sleeps); other statuses raise
  APIError at once. Setting `client._retry = 0` leaves every retry to the caller.
- TradingStream reconnects by itself after the server drops it (backoff from `_reconnect_min_backoff`, 1 s by
  default) and listens again, but events sent while it was away are lost: after a reconnect a client must
  reconcile through REST.
"""

from __future__ import annotations

import functools
import json
import math
import queue
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Clock, Order, Position, TradeAccount, TradeUpdate
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.loopback.alpaca_trading import AlpacaTradingServer

pytestmark = pytest.mark.timeout(20)

DAY1 = 1_704_205_800_000_000_000  # 2024-01-02 14:30 UTC
MINUTE = 60_000_000_000
DAY = 86_400_000_000_000


@pytest.fixture
def server() -> Iterator[AlpacaTradingServer]:
    with AlpacaTradingServer() as srv:
        yield srv


@pytest.fixture
def client(server: AlpacaTradingServer) -> TradingClient:
    return TradingClient(server.key, server.secret, paper=True, url_override=server.url)


class StreamRecorder:
    """A real TradingStream on its own thread, collecting the TradeUpdate models its handler receives."""

    def __init__(self, server: AlpacaTradingServer, *, min_backoff: float = 0.1) -> None:
        self.server = server
        self.updates: queue.Queue[TradeUpdate] = queue.Queue()
        self.stream = TradingStream(server.key, server.secret, url_override=server.stream_url)
        self.stream._reconnect_min_backoff = min_backoff  # 1 s by default; keeps the tests fast

        async def on_update(update: TradeUpdate) -> None:
            self.updates.put(update)

        self.stream.subscribe_trade_updates(on_update)
        self.thread = threading.Thread(target=self.stream.run, daemon=True)

    def start(self) -> StreamRecorder:
        self.thread.start()
        wait_until(lambda: self.server.listening_streams() == 1, "the stream to listen")
        return self

    def next(self, timeout: float = 30.0) -> TradeUpdate:
        return self.updates.get(timeout=timeout)

    def take(self, n: int) -> list[tuple[str, str]]:
        """The next n (event, client_order_id) pairs."""
        return [(str(u.event.value if hasattr(u.event, "value") else u.event), u.order.client_order_id)
                for u in (self.next() for _ in range(n))]

    def stop(self) -> None:
        # stop() only flags the stream; its consumer notices on the next message or after a 5 s recv timeout,
        # so closing the connection from the server side ends run() at once
        self.stream.stop()
        self.server.faults.drop_streams()
        self.thread.join(5)
        assert not self.thread.is_alive(), "TradingStream.run() did not return"


@pytest.fixture
def stream(server: AlpacaTradingServer) -> Iterator[StreamRecorder]:
    recorder = StreamRecorder(server).start()
    yield recorder
    recorder.stop()


def wait_until(condition, what: str, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def bar(server: AlpacaTradingServer, symbol: str, t: int, o: float, h: float, lo: float, c: float) -> None:
    server.push_bar(symbol, t, o, h, lo, c)


def market(symbol: str, qty: float, side: str = "buy", **kw) -> MarketOrderRequest:  # noqa: ANN003
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY, **kw)


# ---------------------------------------------------------------------------------------------- REST basics


def test_account_clock_and_asset_parse_into_models(client: TradingClient) -> None:
    account = client.get_account()
    assert isinstance(account, TradeAccount)
    assert account.status == "ACTIVE" and account.currency == "USD"
    assert float(account.cash) == 100_000 and float(account.equity) == 100_000
    assert isinstance(client.get_clock(), Clock)
    asset = client.get_asset("aapl")
    assert asset.symbol == "AAPL" and asset.fractionable


def test_market_order_fills_at_next_open_and_moves_position_and_cash(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    order = client.submit_order(market("AAPL", 10, client_order_id="m-1"))
    assert isinstance(order, Order)
    assert order.status == OrderStatus.ACCEPTED and order.client_order_id == "m-1"
    assert order.qty == "10" and order.filled_qty == "0" and order.filled_avg_price is None
    assert client.get_order_by_id(order.id).status == OrderStatus.NEW
    bar(server, "AAPL", DAY1, 100, 102, 99, 101)
    filled = client.get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED
    assert float(filled.filled_qty) == 10 and float(filled.filled_avg_price) == 100
    assert filled.filled_at is not None and filled.filled_at.year == 2024
    (position,) = client.get_all_positions()
    assert isinstance(position, Position)
    assert position.symbol == "AAPL" and float(position.qty) == 10 and float(position.avg_entry_price) == 100
    assert float(position.current_price) == 101 and float(position.unrealized_pl) == 10
    account = client.get_account()
    assert float(account.cash) == 99_000 and float(account.equity) == 99_000 + 10 * 101
    assert server.positions() == {"AAPL": 10}
    # selling more than held flips the position short at the fill price
    client.submit_order(market("AAPL", 15, "sell"))
    bar(server, "AAPL", DAY1 + MINUTE, 104, 105, 103, 104)
    position = client.get_open_position("AAPL")
    assert float(position.qty) == -5 and position.side == "short" and float(position.avg_entry_price) == 104
    assert float(client.get_account().cash) == 99_000 + 15 * 104


def test_limit_orders_fill_at_the_limit_or_better(server: AlpacaTradingServer, client: TradingClient) -> None:
    buy = client.submit_order(LimitOrderRequest(symbol="MSFT", qty=4, side="buy", time_in_force="gtc",
                                                limit_price=95))
    gap = client.submit_order(LimitOrderRequest(symbol="MSFT", qty=1, side="buy", time_in_force="gtc",
                                                limit_price=99.5))
    bar(server, "MSFT", DAY1, 100, 101, 96, 97)  # the 95 limit is not reached
    assert client.get_order_by_id(buy.id).status == OrderStatus.NEW
    assert float(client.get_order_by_id(gap.id).filled_avg_price) == 99.5  # reached inside the bar
    bar(server, "MSFT", DAY1 + MINUTE, 93, 94, 92, 93)  # gapped below the limit: filled at the open
    assert float(client.get_order_by_id(buy.id).filled_avg_price) == 93
    sell = client.submit_order(LimitOrderRequest(symbol="MSFT", qty=5, side="sell", time_in_force="day",
                                                 limit_price=96))
    bar(server, "MSFT", DAY1 + 2 * MINUTE, 94, 97, 94, 96)
    assert float(client.get_order_by_id(sell.id).filled_avg_price) == 96
    assert server.positions() == {}


def test_stop_and_stop_limit_orders(server: AlpacaTradingServer, client: TradingClient) -> None:
    stop = client.submit_order(StopOrderRequest(symbol="TSLA", qty=2, side="buy", time_in_force="gtc",
                                                stop_price=105))
    stop_limit = client.submit_order(StopLimitOrderRequest(symbol="TSLA", qty=3, side="buy", time_in_force="gtc",
                                                           stop_price=103, limit_price=104))
    bar(server, "TSLA", DAY1, 100, 102, 99, 101)
    assert {client.get_order_by_id(o.id).status for o in (stop, stop_limit)} == {OrderStatus.NEW}
    bar(server, "TSLA", DAY1 + MINUTE, 106, 107, 105.5, 106)  # gaps through both stops
    assert float(client.get_order_by_id(stop.id).filled_avg_price) == 106  # stop fills at the open
    assert client.get_order_by_id(stop_limit.id).status == OrderStatus.NEW  # triggered, limit 104 not reached
    bar(server, "TSLA", DAY1 + 2 * MINUTE, 105, 105, 103.5, 104)
    assert float(client.get_order_by_id(stop_limit.id).filled_avg_price) == 104
    sell_stop = client.submit_order(StopOrderRequest(symbol="TSLA", qty=5, side="sell", time_in_force="gtc",
                                                     stop_price=100))
    bar(server, "TSLA", DAY1 + 3 * MINUTE, 102, 102, 98, 99)
    assert float(client.get_order_by_id(sell_stop.id).filled_avg_price) == 100
    assert server.positions() == {}


def test_notional_market_order_buys_fractional_shares(server: AlpacaTradingServer, client: TradingClient) -> None:
    order = client.submit_order(MarketOrderRequest(symbol="SPY", notional=1000, side="buy", time_in_force="day"))
    assert order.notional == "1000" and order.qty is None
    bar(server, "SPY", DAY1, 300, 301, 299, 300)
    filled = client.get_order_by_id(order.id)
    assert math.isclose(float(filled.filled_qty), 1000 / 300, rel_tol=1e-8)
    assert math.isclose(server.positions()["SPY"], 1000 / 300, rel_tol=1e-8)
    assert math.isclose(float(client.get_account().cash), 99_000, abs_tol=1e-5)


def test_bracket_legs_are_held_then_one_cancels_the_other(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    parent = client.submit_order(market("NVDA", 10, order_class="bracket",
                                        take_profit=TakeProfitRequest(limit_price=110),
                                        stop_loss=StopLossRequest(stop_price=95)))
    take_profit, stop_loss = parent.legs
    assert parent.order_class == "bracket"
    assert (take_profit.type, take_profit.side, float(take_profit.limit_price)) == ("limit", OrderSide.SELL, 110)
    assert (stop_loss.type, float(stop_loss.stop_price)) == ("stop", 95)
    assert {take_profit.status, stop_loss.status} == {OrderStatus.HELD}
    bar(server, "NVDA", DAY1, 100, 101, 99, 100)
    nested = client.get_order_by_id(parent.id)
    assert nested.status == OrderStatus.FILLED
    assert [leg.status for leg in nested.legs] == [OrderStatus.NEW, OrderStatus.NEW]
    assert float(nested.legs[0].qty) == 10
    flat = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
    assert {o.id for o in flat} == {take_profit.id, stop_loss.id}  # nested=false lists legs as orders
    bar(server, "NVDA", DAY1 + MINUTE, 104, 111, 103, 108)
    assert client.get_order_by_id(take_profit.id).status == OrderStatus.FILLED
    assert client.get_order_by_id(stop_loss.id).status == OrderStatus.CANCELED
    assert server.positions() == {}
    assert float(client.get_account().cash) == 100_000 + 10 * (110 - 100)


def test_bracket_stop_is_assumed_first_when_a_bar_reaches_both_legs(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    parent = client.submit_order(LimitOrderRequest(symbol="AMD", qty=4, side="buy", time_in_force="gtc",
                                                   limit_price=100, order_class="bracket",
                                                   take_profit=TakeProfitRequest(limit_price=106),
                                                   stop_loss=StopLossRequest(stop_price=96, limit_price=95)))
    bar(server, "AMD", DAY1, 101, 101, 99, 100)  # parent fills at its limit inside the bar: legs from next bar
    assert [leg.status for leg in client.get_order_by_id(parent.id).legs] == [OrderStatus.NEW] * 2
    bar(server, "AMD", DAY1 + MINUTE, 100, 107, 94, 100)
    legs = client.get_order_by_id(parent.id).legs
    assert [leg.status for leg in legs] == [OrderStatus.CANCELED, OrderStatus.FILLED]
    assert float(legs[1].filled_avg_price) == 96


def test_duplicate_client_order_id_is_refused_and_creates_nothing(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    client.submit_order(market("AAPL", 1, client_order_id="dup"))
    with pytest.raises(APIError) as caught:
        client.submit_order(market("AAPL", 1, client_order_id="dup"))
    assert caught.value.status_code == 422
    assert caught.value.code == 40010001 and caught.value.message == "client_order_id must be unique"
    assert [o["client_order_id"] for o in server.orders] == ["dup"]


@pytest.mark.parametrize(("body", "fragment"), [
    ({"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "day"}, "qty or notional"),
    ({"symbol": "AAPL", "qty": "1", "side": "hold", "type": "market", "time_in_force": "day"}, "side"),
    ({"symbol": "AAPL", "qty": "x", "side": "buy", "type": "market", "time_in_force": "day"}, "qty"),
    ({"symbol": "AAPL", "qty": 1, "side": "buy", "type": "limit", "time_in_force": "day"}, "limit_price"),
    ({"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day",
      "order_class": "bracket", "take_profit": {"limit_price": 1}}, "stop_loss"),
])
def test_invalid_orders_get_422_naming_the_field(server: AlpacaTradingServer, body: dict, fragment: str) -> None:
    # alpaca-py validates its request models before sending, so bad bodies are posted directly
    headers = {"APCA-API-KEY-ID": server.key, "APCA-API-SECRET-KEY": server.secret}
    reply = requests.post(f"{server.url}/v2/orders", json=body, headers=headers, timeout=5)
    assert reply.status_code == 422
    assert fragment in reply.json()["message"] and reply.json()["code"] == 40010001
    assert server.orders == []


def test_symbol_list_refuses_unknown_symbols() -> None:
    with AlpacaTradingServer(symbols=["AAPL"]) as srv:
        client = TradingClient(srv.key, srv.secret, url_override=srv.url)
        with pytest.raises(APIError) as caught:
            client.submit_order(market("ZZZZ", 1))
        assert caught.value.status_code == 422 and "ZZZZ" in caught.value.message
        assert client.submit_order(market("AAPL", 1)).symbol == "AAPL"


def test_lookup_cancel_and_list_orders(server: AlpacaTradingServer, client: TradingClient) -> None:
    first = client.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="gtc",
                                                  limit_price=50, client_order_id="first"))
    second = client.submit_order(LimitOrderRequest(symbol="MSFT", qty=2, side="buy", time_in_force="gtc",
                                                   limit_price=50, client_order_id="second"))
    assert client.get_order_by_client_id("second").id == second.id
    with pytest.raises(APIError) as missing:
        client.get_order_by_id(uuid.uuid4())
    assert missing.value.status_code == 404 and missing.value.code == 40410000
    assert missing.value.message == "order not found"
    client.cancel_order_by_id(first.id)
    assert client.get_order_by_id(first.id).status == OrderStatus.CANCELED
    with pytest.raises(APIError) as again:
        client.cancel_order_by_id(first.id)
    assert again.value.status_code == 422
    assert [o.id for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))] == [second.id]
    assert [o.id for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))] == [first.id]
    everything = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, direction="asc"))
    assert [o.id for o in everything] == [first.id, second.id]
    assert [o.id for o in client.get_orders(GetOrdersRequest(status="all", symbols=["MSFT"]))] == [second.id]
    assert len(client.get_orders(GetOrdersRequest(status="all", limit=1))) == 1
    (cancelled,) = client.cancel_orders()
    assert cancelled.id == second.id and cancelled.status == 200
    assert client.get_order_by_id(second.id).status == OrderStatus.CANCELED


def test_replace_order_links_old_and_new(server: AlpacaTradingServer, client: TradingClient) -> None:
    old = client.submit_order(LimitOrderRequest(symbol="AAPL", qty=5, side="buy", time_in_force="gtc",
                                                limit_price=90))
    new = client.replace_order_by_id(old.id, ReplaceOrderRequest(qty=3, limit_price=99, client_order_id="v2"))
    assert new.replaces == old.id and new.client_order_id == "v2"
    assert float(new.qty) == 3 and float(new.limit_price) == 99
    replaced = client.get_order_by_id(old.id)
    assert replaced.status == OrderStatus.REPLACED and replaced.replaced_by == new.id
    with pytest.raises(APIError) as closed:
        client.replace_order_by_id(old.id, ReplaceOrderRequest(limit_price=98))
    assert closed.value.status_code == 422
    bar(server, "AAPL", DAY1, 100, 100, 98, 99)
    assert float(client.get_order_by_id(new.id).filled_avg_price) == 99
    assert server.positions() == {"AAPL": 3}


def test_positions_lookup_close_and_reconciliation_override(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    with pytest.raises(APIError) as missing:
        client.get_open_position("AAPL")
    assert missing.value.status_code == 404 and missing.value.message == "position does not exist"
    server.set_position("AAPL", 7, 150.0)  # appears without a trade: what reconciliation must notice
    assert float(client.get_open_position("AAPL").qty) == 7
    close = client.close_position("AAPL")
    assert (close.side, float(close.qty), close.type) == (OrderSide.SELL, 7, "market")
    bar(server, "AAPL", DAY1, 160, 161, 159, 160)
    assert client.get_all_positions() == [] and server.positions() == {}
    assert float(client.get_account().cash) == 100_000 + 7 * 160


def test_day_orders_expire_on_the_next_date_gtc_orders_do_not(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    day = client.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="day",
                                                limit_price=50))
    gtc = client.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="gtc",
                                                limit_price=50))
    bar(server, "AAPL", DAY1, 100, 101, 99, 100)
    bar(server, "AAPL", DAY1 + 5 * MINUTE, 100, 101, 99, 100)
    assert client.get_order_by_id(day.id).status == OrderStatus.NEW
    bar(server, "AAPL", DAY1 + DAY, 100, 101, 99, 100)
    expired = client.get_order_by_id(day.id)
    assert expired.status == OrderStatus.EXPIRED and expired.expired_at is not None
    assert client.get_order_by_id(gtc.id).status == OrderStatus.NEW


def test_wrong_credentials_get_401(server: AlpacaTradingServer) -> None:
    intruder = TradingClient(server.key, "wrong-secret", url_override=server.url)
    with pytest.raises(APIError) as caught:
        intruder.get_account()
    assert caught.value.status_code == 401 and caught.value.code == 40110000
    assert server.requests == [("GET", "/v2/account")]


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("status", [500, 503])
def test_fail_next_is_an_api_error_and_has_no_effect(
        server: AlpacaTradingServer, client: TradingClient, status: int) -> None:
    server.faults.fail_next("POST", "/v2/orders", status)
    with pytest.raises(APIError) as caught:
        client.submit_order(market("AAPL", 1, client_order_id="once"))
    assert caught.value.status_code == status and isinstance(caught.value.code, int)
    assert server.orders == []
    assert client.submit_order(market("AAPL", 1, client_order_id="once")).client_order_id == "once"
    assert server.requests == [("POST", "/v2/orders")] * 2


def test_429_is_retried_by_alpaca_py_unless_retries_are_off(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    client._retry_wait = 0  # alpaca-py sleeps 3 s between its own retries of 429/504
    server.faults.fail_next("GET", "/v2/account", 429, times=2)
    assert isinstance(client.get_account(), TradeAccount)  # two 429s swallowed by alpaca-py's retries
    assert server.requests == [("GET", "/v2/account")] * 3
    client._retry = 0
    server.faults.fail_next("GET", "/v2/account", 429, body={"code": 42910000, "message": "slow down"})
    with pytest.raises(APIError) as caught:
        client.get_account()
    assert caught.value.status_code == 429 and caught.value.message == "slow down"


def test_delayed_answer_lands_although_the_client_timed_out(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    client._session.request = functools.partial(client._session.request, timeout=0.2)
    server.faults.delay_next("POST", "/v2/orders", 0.6, take_effect=True)
    with pytest.raises(requests.exceptions.Timeout):
        client.submit_order(market("AAPL", 1, client_order_id="late"))
    assert client.get_order_by_client_id("late").status == OrderStatus.NEW  # it landed
    # take_effect=False: nothing exists until the delay is over, then the request is carried out
    server.faults.delay_next("POST", "/v2/orders", 0.5, take_effect=False)
    with pytest.raises(requests.exceptions.Timeout):
        client.submit_order(market("AAPL", 1, client_order_id="later"))
    with pytest.raises(APIError) as not_yet:
        client.get_order_by_client_id("later")
    assert not_yet.value.status_code == 404
    wait_until(lambda: len(server.orders) == 2, "the delayed order to be carried out")


# ---------------------------------------------------------------------------------------------- trade_updates


def test_stream_reports_a_bracket_from_entry_to_exit(
        server: AlpacaTradingServer, client: TradingClient, stream: StreamRecorder) -> None:
    client.submit_order(market("AAPL", 10, client_order_id="entry", order_class="bracket",
                               take_profit=TakeProfitRequest(limit_price=110),
                               stop_loss=StopLossRequest(stop_price=95)))
    first = stream.next()
    assert first.event == "new" and first.order.client_order_id == "entry" and len(first.order.legs) == 2
    tp_id, sl_id = (leg.client_order_id for leg in first.order.legs)
    bar(server, "AAPL", DAY1, 100, 101, 99, 100)
    fill = stream.next()
    assert (fill.event, fill.price, fill.qty, fill.position_qty) == ("fill", 100, 10, 10)
    assert fill.execution_id is not None and fill.timestamp.year == 2024
    assert stream.take(2) == [("new", tp_id), ("new", sl_id)]
    bar(server, "AAPL", DAY1 + MINUTE, 100, 100, 94, 95)
    exit_fill = stream.next()
    assert (exit_fill.event, exit_fill.order.client_order_id, exit_fill.price) == ("fill", sl_id, 95)
    assert exit_fill.position_qty == 0
    assert stream.take(1) == [("canceled", tp_id)]


def test_stream_cancel_reject_and_replace_events(
        server: AlpacaTradingServer, client: TradingClient, stream: StreamRecorder) -> None:
    order = client.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="gtc",
                                                  limit_price=50, client_order_id="a"))
    client.replace_order_by_id(order.id, ReplaceOrderRequest(limit_price=51, client_order_id="b"))
    client.cancel_order_by_id(client.get_order_by_client_id("b").id)
    server.faults.reject_next_orders("insufficient buying power")
    rejected = client.submit_order(market("AAPL", 1_000_000, client_order_id="c"))
    assert rejected.status == OrderStatus.ACCEPTED  # HTTP says accepted; the stream says rejected
    assert stream.take(5) == [("new", "a"), ("replaced", "a"), ("new", "b"), ("canceled", "b"),
                              ("rejected", "c")]
    assert client.get_order_by_client_id("c").status == OrderStatus.REJECTED
    assert client.get_order_by_client_id("c").failed_at is not None


def test_partial_fills_then_fill_across_bars(
        server: AlpacaTradingServer, client: TradingClient, stream: StreamRecorder) -> None:
    server.faults.partial_fills(0.5)
    client.submit_order(market("AAPL", 10, client_order_id="p"))
    assert stream.next().event == "new"
    for i in range(4):
        bar(server, "AAPL", DAY1 + i * MINUTE, 100 + i, 104, 99, 101)
    updates = [stream.next() for _ in range(4)]
    assert [(u.event, u.qty, u.position_qty) for u in updates] == [
        ("partial_fill", 5, 5), ("partial_fill", 3, 8), ("partial_fill", 1, 9), ("fill", 1, 10)]
    assert updates[1].order.status == OrderStatus.PARTIALLY_FILLED and updates[1].order.filled_qty == "8"
    assert math.isclose(float(updates[-1].order.filled_avg_price), (500 + 303 + 102 + 103) / 10)


def test_stream_reconnects_after_drop_but_missed_events_are_gone(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    recorder = StreamRecorder(server, min_backoff=0.6).start()
    try:
        client.submit_order(market("AAPL", 1, client_order_id="before"))
        assert stream_ids(recorder, 1) == ["before"]
        server.faults.drop_streams()
        wait_until(lambda: server.listening_streams() == 0, "the stream to be dropped")
        client.submit_order(market("AAPL", 1, client_order_id="during"))  # nobody listens: lost
        wait_until(lambda: server.listening_streams() == 1, "TradingStream to reconnect by itself")
        client.submit_order(market("AAPL", 1, client_order_id="after"))
        assert stream_ids(recorder, 1) == ["after"]
        assert client.get_order_by_client_id("during").status == OrderStatus.NEW  # REST still knows it
    finally:
        recorder.stop()


def stream_ids(recorder: StreamRecorder, n: int) -> list[str]:
    return [cid for _, cid in recorder.take(n)]


def test_stream_events_reach_every_listener_in_order(
        server: AlpacaTradingServer, client: TradingClient) -> None:
    first, second = StreamRecorder(server), StreamRecorder(server)
    first.thread.start()
    second.thread.start()
    wait_until(lambda: server.listening_streams() == 2, "two listeners")
    try:
        for i in range(5):
            client.submit_order(market("AAPL", 1, client_order_id=f"o{i}"))
        expected = [f"o{i}" for i in range(5)]
        assert stream_ids(first, 5) == expected and stream_ids(second, 5) == expected
    finally:
        first.stream.stop()
        second.stream.stop()
        server.faults.drop_streams()
        first.thread.join(5)
        second.thread.join(5)


def test_raw_stream_protocol_binary_frames_both_auth_forms_and_bad_key(server: AlpacaTradingServer) -> None:
    with ws_connect(server.stream_url) as ws:
        ws.send(json.dumps({"action": "auth", "key": server.key, "secret": server.secret}))
        reply = ws.recv(timeout=3)
        assert isinstance(reply, bytes)  # Alpaca's paper trade_updates stream uses binary frames
        assert json.loads(reply) == {"stream": "authorization",
                                     "data": {"status": "authorized", "action": "authenticate"}}
        ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates", "bogus"]}}))
        assert json.loads(ws.recv(timeout=3)) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
    with ws_connect(server.stream_url) as ws:
        ws.send(json.dumps({"action": "authenticate", "data": {"key_id": server.key, "secret_key": "nope"}}))
        answer = json.loads(ws.recv(timeout=3))
        assert answer["stream"] == "authorization" and answer["data"]["status"] == "unauthorized"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=3)  # the server hangs up on bad credentials
    assert server.listening_streams() == 0
