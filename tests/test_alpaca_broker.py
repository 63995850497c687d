"""AlpacaBroker through alpaca-py's real TradingClient and TradingStream against the loopback Alpaca server:
idempotent submits, timeouts, retries, the circuit breaker, the safety gate, brackets, notional sizing,
stream fills (exactly once across a dropped stream), partial fills, rejections and reconciliation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tests.loopback.alpaca_trading import AlpacaTradingServer
from utp.core.broker import BarBlock, BrokerError, BrokerOrder, BrokerReport, DuplicateOrderError
from utp.core.config import BrokerConfig
from utp.core.ids import client_order_id
from utp.core.safety import LiveTradingRefused
from utp.core.vendors.alpaca_broker import (
    AlpacaBroker,
    BrokerUnavailableError,
    CircuitOpenError,
    CredentialsMissing,
    parse_time_ns,
)
from utp.v1 import events_pb2 as pb

SYMBOLS = ("AAPL", "MSFT")
T0 = 1_700_000_000 * 10**9
MINUTE = 60 * 10**9


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[AlpacaTradingServer]:
    with AlpacaTradingServer(cash=100_000.0) as srv:
        yield srv


class Harness:
    def __init__(self, server: AlpacaTradingServer) -> None:
        self.server = server
        self.approved = True
        self.sleeps: list[float] = []
        self.clock = Clock()
        self.brokers: list[AlpacaBroker] = []

    def config(self, **overrides: object) -> BrokerConfig:
        fields: dict[str, object] = {"name": "alpaca-paper", "paper_url": self.server.url,
                                     "stream_url": self.server.stream_url, "timeout_s": 0.4, "retries": 3,
                                     "backoff_s": 0.05, "backoff_max_s": 1.0}  # fmt: skip
        fields.update(overrides)
        return BrokerConfig(**fields)  # type: ignore[arg-type]

    def broker(self, stream: bool = False, **overrides: object) -> AlpacaBroker:
        broker = AlpacaBroker(self.config(**overrides), SYMBOLS, approval=lambda: self.approved,
                              environ={"APCA_API_KEY_ID": self.server.key, "APCA_API_SECRET_KEY": self.server.secret},
                              clock=self.clock, sleep=self.sleeps.append)  # fmt: skip
        self.brokers.append(broker)
        if stream:
            broker.start()
            assert broker.wait_connected(5.0), "the trade-updates stream did not connect"
            wait_for(lambda: self.server.listening_streams() == 1, "the server to see the stream listening")
        return broker


@pytest.fixture
def harness(server: AlpacaTradingServer) -> Iterator[Harness]:
    h = Harness(server)
    yield h
    for broker in h.brokers:
        broker.close()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def collect(broker: AlpacaBroker, until: Callable[[BrokerReport], bool], timeout_s: float = 5.0) -> BrokerReport:
    """Drain until `until(everything so far)`."""
    total = BrokerReport()
    deadline = time.monotonic() + timeout_s
    while True:
        part = broker.drain()
        total.fills += part.fills
        total.updates += part.updates
        if until(total):
            return total
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; got fills {total.fills} and updates {[statuses(total)]}")
        time.sleep(0.02)


def statuses(report: BrokerReport, cid: str | None = None) -> list[str]:
    return [pb.OrderStatus.Name(u.status).removeprefix("ORDER_STATUS_") for u in report.updates
            if cid is None or u.client_order_id == cid]  # fmt: skip


def market(intent: str, qty: float = 10, side: int = pb.ORDER_SIDE_BUY, symbol: str = "AAPL",
           **kw: object) -> BrokerOrder:  # fmt: skip
    """An order of intent `intent` under its deterministic client order id, as execution would make it."""
    return BrokerOrder(client_order_id(intent), symbol, side, qty, submitted_time_ns=T0, intent_id=intent,
                       **kw)  # type: ignore[arg-type]


def limit(intent: str, price: float, qty: float = 10, side: int = pb.ORDER_SIDE_BUY) -> BrokerOrder:
    return market(intent, qty, side, order_type=pb.ORDER_TYPE_LIMIT, limit_price=price)


def bars(symbol_index: int, close: float, t: int = T0) -> BarBlock:
    price = np.array([close], np.float64)
    return BarBlock(np.array([t], np.int64), np.array([symbol_index], np.int64), price, price, price, price,
                    np.array([1e6]))  # fmt: skip


def posts(server: AlpacaTradingServer) -> int:
    return sum(1 for method, path in server.requests if (method, path) == ("POST", "/v2/orders"))


# -- placing orders -------------------------------------------------------------------------------------------
def test_market_order_is_placed_and_its_fill_arrives_on_the_stream(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker(stream=True)
    order = market("intent-1")
    report = broker.submit(order)
    assert statuses(report) == ["NEW"] and report.fills == []
    assert order.broker_order_id == server.orders[0]["id"] and order.broker == "alpaca-paper"
    assert server.orders[0]["client_order_id"] == order.client_order_id
    server.push_bar("AAPL", T0 + MINUTE, 100.0, 101.0, 99.0, 100.5)
    got = collect(broker, lambda r: bool(r.fills))
    assert [(f.client_order_id, f.symbol, f.quantity, f.price, f.commission, f.slippage) for f in got.fills] == [
        (order.client_order_id, "AAPL", 10.0, 100.0, 0.0, 0.0)]  # fmt: skip
    assert got.fills[0].time_ns == T0 + MINUTE  # the execution's time, from the event
    assert statuses(got) == ["FILLED"] and got.updates[0].average_fill_price == 100.0
    assert broker.open_orders() == []
    assert broker.positions() == {"AAPL": (10.0, 100.0)}


def test_a_sell_fill_is_negative(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker(stream=True)
    broker.submit(market("short", 4, pb.ORDER_SIDE_SELL, "MSFT"))
    server.push_bar("MSFT", T0 + MINUTE, 50.0, 50.0, 50.0, 50.0)
    got = collect(broker, lambda r: bool(r.fills))
    assert [(f.quantity, f.price) for f in got.fills] == [(-4.0, 50.0)]
    assert broker.positions() == {"MSFT": (-4.0, 50.0)}


def test_submitting_the_same_order_twice_raises_and_sends_nothing(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker()
    order = market("intent-dup")
    broker.submit(order)
    before = list(server.requests)
    with pytest.raises(DuplicateOrderError, match=order.client_order_id):
        broker.submit(market("intent-dup"))
    assert server.requests == before and len(server.orders) == 1


def test_a_timed_out_submit_is_retried_under_the_same_id_and_the_landed_order_adopted(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker()
    server.faults.delay_next("POST", "/v2/orders", 1.5, take_effect=True)  # lands; the answer comes too late
    order = market("intent-timeout")
    started = time.monotonic()
    report = broker.submit(order)
    assert time.monotonic() - started < 1.4  # the client's timeout (0.4 s), not the server's delay, decided
    assert len(server.orders) == 1, "the retry placed a second order"
    assert order.broker_order_id == server.orders[0]["id"]
    assert statuses(report) == ["NEW"]
    assert server.requests.count(("POST", "/v2/orders")) == 2  # the retry carried the same client order id
    assert ("GET", "/v2/orders:by_client_order_id") in server.requests
    assert harness.sleeps == [0.05]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limits_and_server_errors_are_retried_with_backoff(harness: Harness, server: AlpacaTradingServer,
                                                                status: int) -> None:  # fmt: skip
    broker = harness.broker()
    server.faults.fail_next("POST", "/v2/orders", status, times=2)
    order = market(f"intent-{status}")
    assert statuses(broker.submit(order)) == ["NEW"]
    assert posts(server) == 3 and len(server.orders) == 1
    assert harness.sleeps == [0.05, 0.1]


@pytest.mark.parametrize(("status", "message"), [(403, "insufficient buying power"), (422, "qty must be > 0"),
                                                 (404, "asset not found")])  # fmt: skip
def test_refusals_are_not_retried_and_come_back_rejected_with_the_broker_message(
        harness: Harness, server: AlpacaTradingServer, status: int, message: str) -> None:  # fmt: skip
    broker = harness.broker()
    server.faults.fail_next("POST", "/v2/orders", status, body={"code": status * 100000, "message": message})
    order = market(f"refused-{status}")
    report = broker.submit(order)
    assert statuses(report) == ["REJECTED"]
    assert report.updates[0].message == f"{message} (HTTP {status})"
    assert posts(server) == 1 and harness.sleeps == [] and server.orders == []
    assert broker.breaker.state == "closed"


def test_exhausted_retries_raise_and_a_later_submit_of_the_same_order_is_still_one_order(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker(retries=1)
    server.faults.delay_next("POST", "/v2/orders", 1.0, times=2, take_effect=True)
    order = market("intent-unsure")
    with pytest.raises(BrokerUnavailableError, match="after 2 attempts"):
        broker.submit(order)
    assert len(server.orders) == 1  # the first attempt landed; its fate was unknown to us
    assert statuses(broker.submit(order)) == ["NEW"]  # asking again adopts it
    assert len(server.orders) == 1 and order.broker_order_id == server.orders[0]["id"]


def test_a_hanging_request_is_cut_by_the_timeout(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker(retries=1)
    server.faults.delay_next("GET", "/v2/positions", 3.0, times=5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="Timeout"):
        broker.positions()
    assert time.monotonic() - started < 2.0


def test_circuit_breaker_opens_refuses_without_requests_and_closes_after_the_cooldown(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker()
    alerts: list[tuple[str, str]] = []
    broker.breaker.listeners.append(lambda old, new: alerts.append((old, new)))
    server.faults.fail_next("POST", "/v2/orders", 500, times=5)
    with pytest.raises(BrokerUnavailableError, match="after 4 attempts"):
        broker.submit(market("cb-1"))  # 4 failures: retries 3
    assert broker.breaker.state == "closed"
    with pytest.raises(CircuitOpenError):
        broker.submit(market("cb-2"))  # the 5th failure opens the circuit mid-retry
    assert broker.breaker.state == "open" and posts(server) == 5
    before = len(server.requests)
    with pytest.raises(CircuitOpenError, match="circuit breaker is open"):
        broker.submit(market("cb-3"))
    assert len(server.requests) == before, "an open circuit must send nothing"
    harness.clock.now += 29.0
    with pytest.raises(CircuitOpenError):
        broker.submit(market("cb-3"))
    harness.clock.now += 1.0  # breaker_cooldown_s = 30
    assert statuses(broker.submit(market("cb-3"))) == ["NEW"]
    assert broker.breaker.state == "closed"
    assert alerts == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_cancels_go_through_an_open_circuit_and_a_revoked_approval(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker()
    order = limit("cancel-me", 90.0)
    broker.submit(order)
    harness.approved = False
    for _ in range(5):
        broker.breaker.record_failure()
    assert broker.breaker.state == "open"
    report = broker.cancel(order.client_order_id, T0 + 5)
    assert statuses(report) == ["CANCELED"] and report.updates[0].updated_time_ns == T0 + 5
    assert server.orders[0]["status"] == "canceled"
    with pytest.raises(BrokerError, match="not open"):
        broker.cancel(order.client_order_id, T0 + 6)


# -- the safety gate -----------------------------------------------------------------------------------------
def test_without_operator_approval_nothing_is_sent(harness: Harness, server: AlpacaTradingServer) -> None:
    harness.approved = False
    broker = harness.broker()
    report = broker.submit(market("unapproved"))
    assert statuses(report) == ["REJECTED"]
    assert report.updates[0].message == "execution is not approved by the operator"
    assert server.requests == []
    harness.approved = True  # approval is read at every order
    assert statuses(broker.submit(market("approved"))) == ["NEW"]


def test_dry_run_decides_and_sends_nothing(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker(dry_run=True)
    entry = market("dry")
    tp = limit("dry-tp", 110.0, 0, pb.ORDER_SIDE_SELL)
    report = broker.submit_bracket(entry, tp, None)
    assert statuses(report) == ["REJECTED", "REJECTED"]
    assert {u.message for u in report.updates} == {"dry run: not sent to the broker"}
    assert server.requests == []


def test_live_broker_needs_live_enabled(harness: Harness, server: AlpacaTradingServer) -> None:
    with pytest.raises(LiveTradingRefused, match="live_enabled"):
        harness.broker(name="alpaca-live", live_url=server.url)
    with pytest.raises(LiveTradingRefused, match="live endpoint"):
        harness.broker(live_url=server.url)  # a paper broker pointed at the live URL
    live = harness.broker(name="alpaca-live", live_enabled=True, live_url=server.url)
    assert live.name == "alpaca-live" and statuses(live.submit(market("live"))) == ["NEW"]


def test_missing_credentials_name_the_variables(harness: Harness) -> None:
    with pytest.raises(CredentialsMissing, match="APCA_API_KEY_ID and APCA_API_SECRET_KEY"):
        AlpacaBroker(harness.config(), SYMBOLS, approval=lambda: True, environ={})


# -- notional orders and brackets ----------------------------------------------------------------------------
def test_notional_orders_are_sized_to_whole_shares_at_the_last_close(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker()
    report = broker.submit(market("n-0", 0, notional=1050.0))
    assert statuses(report) == ["REJECTED"] and "no price of AAPL seen yet" in report.updates[0].message
    broker.on_bars(bars(0, 100.0))
    order = market("n-1", 0, notional=1050.0)
    assert statuses(broker.submit(order)) == ["NEW"] and order.quantity == 10.0
    assert server.orders[-1]["qty"] == "10" and server.orders[-1]["notional"] is None
    tiny = broker.submit(market("n-2", 0, notional=50.0))
    assert statuses(tiny) == ["REJECTED"] and tiny.updates[0].message == "notional 50.00 buys no share at 100.0000"
    assert len(server.orders) == 1


def test_bracket_is_one_request_and_its_legs_report_under_our_ids(
        harness: Harness, server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker(stream=True)
    broker.on_bars(bars(0, 100.0))
    entry = market("br", 0, notional=1000.0)
    tp = limit("br-tp", 110.0, 0, pb.ORDER_SIDE_SELL)
    sl = BrokerOrder(client_order_id("br-sl"), "AAPL", pb.ORDER_SIDE_SELL, 0, pb.ORDER_TYPE_STOP, stop_price=90.0)
    report = broker.submit_bracket(entry, tp, sl)
    assert posts(server) == 1 and server.orders[0]["order_class"] == "bracket"
    assert [(u.client_order_id, pb.OrderStatus.Name(u.status)) for u in report.updates] == [
        (entry.client_order_id, "ORDER_STATUS_NEW"), (tp.client_order_id, "ORDER_STATUS_HELD"),
        (sl.client_order_id, "ORDER_STATUS_HELD")]  # fmt: skip
    legs = {leg["type"]: leg["id"] for leg in server.orders[0]["legs"]}
    assert (tp.broker_order_id, sl.broker_order_id) == (legs["limit"], legs["stop"])
    assert tp.parent_client_order_id == entry.client_order_id and tp.quantity == 10.0
    server.push_bar("AAPL", T0 + MINUTE, 100.0, 101.0, 99.0, 100.0)  # the entry fills; the legs work
    server.push_bar("AAPL", T0 + 2 * MINUTE, 105.0, 111.0, 104.0, 110.0)  # the take profit fills

    def done(r: BrokerReport) -> bool:
        return len(r.fills) == 2 and any(u.client_order_id == sl.client_order_id
                                         and u.status == pb.ORDER_STATUS_CANCELED for u in r.updates)  # fmt: skip

    got = collect(broker, done)
    assert [(f.client_order_id, f.quantity, f.price) for f in got.fills] == [
        (entry.client_order_id, 10.0, 100.0), (tp.client_order_id, -10.0, 110.0)]  # fmt: skip
    assert statuses(got, tp.client_order_id) == ["NEW", "FILLED"]
    assert statuses(got, sl.client_order_id) == ["NEW", "CANCELED"]
    assert broker.open_orders() == [] and broker.positions() == {}


def test_cancelling_an_unfilled_bracket_cancels_its_legs(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker()
    entry = limit("bc", 90.0)
    sl = BrokerOrder(client_order_id("bc-sl"), "AAPL", pb.ORDER_SIDE_SELL, 0, pb.ORDER_TYPE_STOP, stop_price=80.0)
    broker.submit_bracket(entry, None, sl)
    assert server.orders[0]["order_class"] == "oto"
    report = broker.cancel(entry.client_order_id, T0 + 1)
    assert [(u.client_order_id, u.status) for u in report.updates] == [
        (entry.client_order_id, pb.ORDER_STATUS_CANCELED), (sl.client_order_id, pb.ORDER_STATUS_CANCELED)]  # fmt: skip
    assert {o["status"] for o in server.orders} == {"canceled"}


def test_replace_keeps_one_working_order(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker()
    old = limit("rp", 90.0)
    broker.submit(old)
    new = limit("rp-2", 95.0)
    report = broker.replace(old.client_order_id, new)
    assert [(u.client_order_id, u.status) for u in report.updates] == [
        (old.client_order_id, pb.ORDER_STATUS_REPLACED), (new.client_order_id, pb.ORDER_STATUS_NEW)]  # fmt: skip
    assert new.broker_order_id == server.orders[1]["id"] and server.orders[1]["limit_price"] == "95"
    assert server.orders[0]["status"] == "replaced"
    assert [o.client_order_id for o in broker.open_orders()] == [new.client_order_id]
    harness.approved = False
    refused = limit("rp-3", 96.0)
    assert statuses(broker.replace(new.client_order_id, refused)) == ["REJECTED"]
    assert len(server.orders) == 2
    with pytest.raises(BrokerError, match="not open"):
        broker.replace(old.client_order_id, limit("rp-4", 97.0))


# -- the stream ----------------------------------------------------------------------------------------------
def test_partial_fills_sum_to_the_order_quantity(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker(stream=True)
    server.faults.partial_fills(0.5)
    order = market("partial", 10)
    broker.submit(order)
    for k in range(1, 5):
        server.push_bar("AAPL", T0 + k * MINUTE, 100.0 + k, 100.0 + k, 100.0 + k, 100.0 + k)
    got = collect(broker, lambda r: sum(f.quantity for f in r.fills) >= 10)
    assert [(f.quantity, f.price) for f in got.fills] == [(5.0, 101.0), (3.0, 102.0), (1.0, 103.0), (1.0, 104.0)]
    assert statuses(got) == ["PARTIALLY_FILLED"] * 3 + ["FILLED"]
    assert got.updates[-1].average_fill_price == pytest.approx((505 + 306 + 103 + 104) / 10)


def test_a_rejection_comes_back_with_its_reason(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker(stream=True)
    server.faults.reject_next_orders("insufficient buying power")
    order = market("rejected")
    assert statuses(broker.submit(order)) == ["NEW"]  # accepted first, rejected by the venue after
    got = collect(broker, lambda r: bool(r.updates))
    assert statuses(got) == ["REJECTED"] and got.updates[0].message == "insufficient buying power"
    assert broker.open_orders() == []


def test_a_fill_missed_while_the_stream_was_down_is_polled_once(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker(stream=True)
    order = market("dropped")
    broker.submit(order)
    assert broker.drain().fills == []
    server.faults.drop_streams()
    wait_for(lambda: not broker.connected.is_set(), "the broker to notice the drop")
    server.push_bar("AAPL", T0 + MINUTE, 100.0, 100.0, 100.0, 100.0)  # no one listens: the event is lost
    got = collect(broker, lambda r: bool(r.fills))
    wait_for(broker.connected.is_set, "the stream to reconnect")
    assert broker.connections == 2
    for _ in range(5):
        later = broker.drain()
        got.fills += later.fills
        got.updates += later.updates
        time.sleep(0.02)
    assert [(f.client_order_id, f.quantity) for f in got.fills] == [(order.client_order_id, 10.0)]
    assert statuses(got) == ["FILLED"]
    assert ("GET", f"/v2/orders/{order.broker_order_id}") in server.requests


def test_a_fill_both_polled_and_heard_on_the_stream_counts_once(harness: Harness,
                                                               server: AlpacaTradingServer) -> None:  # fmt: skip
    broker = harness.broker(stream=True)
    order = market("twice")
    broker.submit(order)
    server.push_bar("AAPL", T0 + MINUTE, 100.0, 100.0, 100.0, 100.0)
    wait_for(lambda: any(e.get("event") == "fill" for e in list(broker._inbox)), "the fill event to arrive")
    in_flight = list(broker._inbox)  # the stream's news, held back as if it were still on its way
    broker._inbox.clear()
    server.faults.drop_streams()
    wait_for(lambda: broker.connections == 2, "the stream to reconnect")
    polled = broker.drain()
    assert ("GET", f"/v2/orders/{order.broker_order_id}") in server.requests
    assert [(f.quantity, f.price, f.time_ns) for f in polled.fills] == [(10.0, 100.0, T0 + MINUTE)]
    broker._inbox.extend(in_flight)  # now the late stream events arrive
    late = broker.drain()
    assert late.fills == [] and late.updates == []


# -- reconciliation ------------------------------------------------------------------------------------------
def test_reconcile_reports_each_disagreement_in_words(harness: Harness, server: AlpacaTradingServer) -> None:
    broker = harness.broker(stream=True)
    broker.submit(market("rec"))
    server.push_bar("AAPL", T0 + MINUTE, 100.0, 100.0, 100.0, 100.0)
    collect(broker, lambda r: bool(r.fills))
    working = limit("rec-open", 80.0)
    broker.submit(working)
    agreed = broker.reconcile({"AAPL": 10.0}, [working.client_order_id])
    assert agreed.ok and agreed.mismatches == []
    server.set_position("AAPL", 7.0, 100.0)
    server.set_position("MSFT", -3.0, 50.0)
    found = broker.reconcile({"AAPL": 10.0}, ["utp-ghost"])
    assert not found.ok
    assert found.mismatches == [
        "AAPL: we hold 10 shares, the broker holds 7",
        "MSFT: we hold 0 shares, the broker holds -3",
        "order utp-ghost is open here but not at the broker",
        f"the broker has an open order {working.client_order_id} (buy 10 AAPL) that is not open here",
    ]


def test_alpaca_times_parse_to_nanoseconds() -> None:
    assert parse_time_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    assert parse_time_ns("2023-11-14T22:13:20.123456789Z") == 1_700_000_000_123_456_789
    assert parse_time_ns("2023-11-14T17:13:20.5-05:00") == 1_700_000_000_500_000_000
    assert parse_time_ns(None) == 0 and parse_time_ns("yesterday") == 0
