"""The simulated broker: when and at what price each order type fills inside a bar (core/broker.py's rules)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utp.core.broker import BarBlock, BrokerError, BrokerOrder, DuplicateOrderError, SimulatedBroker
from utp.core.portfolio import Portfolio
from utp.v1 import events_pb2 as pb

DAY = 86_400 * 10**9
BUY, SELL = pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL


def bar(day: int, o: float, h: float, lo: float, c: float, volume: float = 1e6, symbol: int = 0) -> BarBlock:
    f = lambda x: np.array([x], np.float64)  # noqa: E731
    return BarBlock(np.array([day * DAY], np.int64), np.array([symbol], np.int64), f(o), f(h), f(lo), f(c), f(volume))


def order(cid: str, side: int, qty: float = 100, *, t: int = 0, **kw: object) -> BrokerOrder:
    return BrokerOrder(client_order_id=cid, symbol=kw.pop("symbol", "AAA"), side=side, quantity=qty,  # type: ignore[arg-type]
                       submitted_time_ns=t * DAY, **kw)  # type: ignore[arg-type]  # fmt: skip


def broker(**kw: object) -> SimulatedBroker:
    return SimulatedBroker(("AAA", "BBB"), **kw)  # type: ignore[arg-type]


def fills_of(b: SimulatedBroker, block: BarBlock) -> list[tuple[str, float, float]]:
    return [(f.client_order_id, f.quantity, f.price) for f in b.on_bars(block).fills]


# -- market orders ---------------------------------------------------------------------------------
def test_a_market_order_fills_at_the_next_bars_open_with_slippage_and_commission() -> None:
    b = broker(slippage_bps=10.0, commission_per_share=0.01, commission_min=1.0)
    report = b.submit(order("m", BUY, 50, t=1))
    assert report.updates[-1].status == pb.ORDER_STATUS_NEW
    assert fills_of(b, bar(1, 9, 9, 9, 9)) == []  # the bar it was placed at: already closed
    (fill,) = b.on_bars(bar(2, 20.0, 22.0, 19.0, 21.0)).fills
    assert (fill.quantity, fill.price) == (50, pytest.approx(20.0 * 1.001))
    assert fill.commission == 1.0  # 50 x 0.01 = 0.50 < the minimum
    assert fill.slippage == pytest.approx(50 * 20.0 * 0.001)
    assert b.open_orders() == []


def test_commission_per_share_and_bps() -> None:
    b = broker(commission_per_share=0.005, commission_min=1.0, commission_bps=2.0)
    b.submit(order("m", SELL, 1000, t=1))
    (fill,) = b.on_bars(bar(2, 50.0, 51, 49, 50)).fills
    assert fill.quantity == -1000 and fill.commission == pytest.approx(5.0 + 2e-4 * 50_000)


def test_a_notional_order_is_sized_at_its_fill_price_and_rejected_if_it_buys_nothing() -> None:
    b = broker(commission_per_share=0.01, commission_min=1.0)
    b.submit(order("n", BUY, 0, t=1, notional=1000.0))
    (fill,) = b.on_bars(bar(2, 20.0, 21, 19, 20)).fills
    assert fill.quantity == 49  # 49 x 20 + 1 <= 1000 < 50 x 20 + 1
    b.submit(order("tiny", BUY, 0, t=2, notional=10.0))
    report = b.on_bars(bar(3, 20.0, 21, 19, 20))
    assert report.fills == [] and report.updates[-1].status == pb.ORDER_STATUS_REJECTED
    assert "buys no share" in report.updates[-1].message


# -- limits and stops ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("o", "h", "lo", "price"),
    [(9.5, 10.5, 9.0, 9.5),  # opened below the limit: the open
     (10.5, 11.0, 9.8, 10.0),  # traded through it: the limit
     (10.5, 11.0, 10.01, None)],  # never reached
)
def test_a_buy_limit_fills_at_the_open_or_the_limit_never_worse(o: float, h: float, lo: float, price: float | None) -> None:
    b = broker(slippage_bps=50.0)  # limits pay no slippage
    b.submit(order("l", BUY, 10, t=1, order_type=pb.ORDER_TYPE_LIMIT, limit_price=10.0))
    fills = fills_of(b, bar(2, o, h, lo, (h + lo) / 2))
    assert fills == ([] if price is None else [("l", 10, price)])


def test_a_sell_stop_gapped_through_fills_at_the_open_not_at_the_stop() -> None:
    b = broker()
    b.submit(order("gap", SELL, 10, t=1, order_type=pb.ORDER_TYPE_STOP, stop_price=95.0))
    assert fills_of(b, bar(2, 90.0, 92.0, 88.0, 91.0)) == [("gap", -10, 90.0)]
    b.submit(order("intrabar", SELL, 10, t=2, order_type=pb.ORDER_TYPE_STOP, stop_price=95.0))
    assert fills_of(b, bar(3, 99.0, 100.0, 94.0, 96.0)) == [("intrabar", -10, 95.0)]
    b.submit(order("untouched", SELL, 10, t=3, order_type=pb.ORDER_TYPE_STOP, stop_price=95.0))
    assert fills_of(b, bar(4, 99.0, 100.0, 95.5, 96.0)) == []


def test_a_buy_stop_triggers_on_the_high_and_pays_slippage() -> None:
    b = broker(slippage_bps=10.0)
    b.submit(order("bs", BUY, 10, t=1, order_type=pb.ORDER_TYPE_STOP, stop_price=105.0))
    assert fills_of(b, bar(2, 100.0, 104.9, 99, 104)) == []
    assert fills_of(b, bar(3, 101.0, 106.0, 100, 105)) == [("bs", 10, pytest.approx(105.0 * 1.001))]


def test_a_stop_limit_triggers_then_works_as_a_limit() -> None:
    b = broker()
    b.submit(order("sl", BUY, 10, t=1, order_type=pb.ORDER_TYPE_STOP_LIMIT, stop_price=105.0, limit_price=105.5))
    # Gapped above the limit: triggered, but the limit is not reachable in this bar (low 106 > 105.5).
    assert fills_of(b, bar(2, 107.0, 108.0, 106.0, 107.5)) == []
    assert b.open_orders()[0].status == pb.ORDER_STATUS_NEW
    # From now on a plain limit: the next bar opens below it and fills at the open.
    assert fills_of(b, bar(3, 105.2, 106.0, 104.0, 105.0)) == [("sl", 10, 105.2)]


# -- brackets, OCO, time in force, cancel/replace --------------------------------------------------
def bracket(b: SimulatedBroker, tp: float = 110.0, sl: float = 95.0) -> None:
    b.submit(order("entry", BUY, 10, t=1))
    b.submit(order("tp", SELL, 0, t=1, order_type=pb.ORDER_TYPE_LIMIT, limit_price=tp,
                   parent_client_order_id="entry", oco_group="g"))  # fmt: skip
    b.submit(order("sl", SELL, 0, t=1, order_type=pb.ORDER_TYPE_STOP, stop_price=sl,
                   parent_client_order_id="entry", oco_group="g"))  # fmt: skip


def test_bracket_legs_wait_for_the_entry_and_cancel_each_other() -> None:
    b = broker()
    bracket(b)
    assert {o.client_order_id: o.status for o in b.open_orders()}["tp"] == pb.ORDER_STATUS_HELD
    report = b.on_bars(bar(2, 100.0, 105.0, 98.0, 104.0))
    assert [(f.client_order_id, f.price) for f in report.fills] == [("entry", 100.0)]
    assert {o.client_order_id: o.quantity for o in b.open_orders()} == {"tp": 10, "sl": 10}
    report = b.on_bars(bar(3, 104.0, 111.0, 103.0, 109.0))
    assert [(f.client_order_id, f.quantity, f.price) for f in report.fills] == [("tp", -10, 110.0)]
    (cancel,) = [u for u in report.updates if u.client_order_id == "sl"]
    assert cancel.status == pb.ORDER_STATUS_CANCELED and cancel.message == "one-cancels-other"
    assert b.open_orders() == []


def test_a_bar_that_reaches_both_legs_takes_the_stop_first() -> None:
    b = broker()
    bracket(b)
    b.on_bars(bar(2, 100.0, 101.0, 99.0, 100.0))
    assert fills_of(b, bar(3, 100.0, 112.0, 94.0, 100.0)) == [("sl", -10, 95.0)]


def test_legs_of_an_entry_filled_at_the_open_work_on_the_same_bar() -> None:
    b = broker()
    bracket(b)
    assert fills_of(b, bar(2, 100.0, 100.5, 94.0, 96.0)) == [("entry", 10, 100.0), ("sl", -10, 95.0)]


def test_cancelling_an_unfilled_entry_cancels_its_legs() -> None:
    b = broker()
    bracket(b)
    report = b.cancel("entry", 1 * DAY)
    assert {u.client_order_id: u.status for u in report.updates} == {
        "entry": pb.ORDER_STATUS_CANCELED, "tp": pb.ORDER_STATUS_CANCELED, "sl": pb.ORDER_STATUS_CANCELED}  # fmt: skip
    with pytest.raises(BrokerError):
        b.cancel("entry", 1 * DAY)


def test_a_day_order_expires_when_its_trading_day_ends_and_gtc_stays() -> None:
    b = broker()
    b.submit(order("day", BUY, 10, t=1, order_type=pb.ORDER_TYPE_LIMIT, limit_price=5.0,
                   time_in_force=pb.TIME_IN_FORCE_DAY))  # fmt: skip
    b.submit(order("gtc", BUY, 10, t=1, order_type=pb.ORDER_TYPE_LIMIT, limit_price=5.0))
    assert fills_of(b, bar(2, 10, 11, 9, 10)) == []
    report = b.on_bars(bar(3, 10, 11, 9, 10))
    assert [(u.client_order_id, u.status) for u in report.updates] == [("day", pb.ORDER_STATUS_EXPIRED)]
    assert [o.client_order_id for o in b.open_orders()] == ["gtc"]


def test_cancel_replace_moves_the_limit_and_keeps_the_queue_place() -> None:
    b = broker()
    b.submit(order("a", BUY, 10, t=1, order_type=pb.ORDER_TYPE_LIMIT, limit_price=5.0))
    report = b.replace("a", order("a2", BUY, 10, t=1, order_type=pb.ORDER_TYPE_LIMIT, limit_price=9.5))
    assert [(u.client_order_id, u.status) for u in report.updates] == [
        ("a", pb.ORDER_STATUS_REPLACED), ("a2", pb.ORDER_STATUS_NEW)]  # fmt: skip
    assert fills_of(b, bar(2, 10, 11, 9, 10)) == [("a2", 10, 9.5)]
    with pytest.raises(BrokerError):
        b.replace("a", order("a3", BUY, 10, t=2, order_type=pb.ORDER_TYPE_LIMIT, limit_price=9.0))


def test_duplicate_ids_and_bad_orders_are_refused_with_a_reason() -> None:
    b = broker()
    b.submit(order("x", BUY, 10))
    with pytest.raises(DuplicateOrderError):
        b.submit(order("x", BUY, 10))
    for bad, words in [
        (order("q", BUY, -1), "quantity"), (order("f", BUY, 1.5), "whole number"),
        (order("u", BUY, 1, symbol="ZZZ"), "unknown symbol"),
        (order("lp", BUY, 1, order_type=pb.ORDER_TYPE_LIMIT, limit_price=math.nan), "limit price"),
        (order("leg", SELL, 0, order_type=pb.ORDER_TYPE_STOP, stop_price=1.0, parent_client_order_id="none"), "not open"),
    ]:  # fmt: skip
        report = b.submit(bad)
        assert report.updates[-1].status == pb.ORDER_STATUS_REJECTED and words in report.updates[-1].message


# -- volume, slippage models -----------------------------------------------------------------------
def test_fills_are_capped_at_a_share_of_each_bars_volume() -> None:
    b = broker(volume_limit=0.1)
    b.submit(order("big", BUY, 250, t=1))
    r1 = b.on_bars(bar(2, 10, 10, 10, 10, volume=1000))
    assert [f.quantity for f in r1.fills] == [100] and r1.updates[-1].status == pb.ORDER_STATUS_PARTIALLY_FILLED
    r2 = b.on_bars(bar(3, 11, 11, 11, 11, volume=1000))
    r3 = b.on_bars(bar(4, 12, 12, 12, 12, volume=1000))
    assert [f.quantity for f in r2.fills + r3.fills] == [100, 50]
    assert r3.updates[-1].status == pb.ORDER_STATUS_FILLED
    assert r3.updates[-1].average_fill_price == pytest.approx((100 * 10 + 100 * 11 + 50 * 12) / 250)


def corwin_schultz(h0: float, l0: float, h1: float, l1: float) -> float:
    beta = math.log(h1 / l1) ** 2 + math.log(h0 / l0) ** 2
    gamma = math.log(max(h0, h1) / min(l0, l1)) ** 2
    k = 3 - 2 * math.sqrt(2)
    alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
    return max(2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha)), 0.0)


def test_the_spread_model_pays_half_the_corwin_schultz_spread() -> None:
    b = broker(slippage_bps=1.0, slippage_model="spread", spread_period=1)
    b.on_bars(bar(1, 100, 101.0, 99.0, 100))
    b.on_bars(bar(2, 100, 100.8, 99.5, 100))
    spread = corwin_schultz(101.0, 99.0, 100.8, 99.5)
    assert spread / 2 > 1e-4
    b.submit(order("m", BUY, 1, t=2))
    (fill,) = b.on_bars(bar(3, 100.0, 101, 99, 100)).fills
    assert fill.price == pytest.approx(100.0 * (1 + spread / 2), rel=1e-12)


def test_the_volatility_model_scales_with_the_previous_range() -> None:
    b = broker(slippage_bps=5.0, slippage_model="volatility", volatility_factor=0.1)
    b.on_bars(bar(1, 100, 104.0, 98.0, 100.0))
    b.submit(order("s", SELL, 1, t=1))
    (fill,) = b.on_bars(bar(2, 100.0, 101, 99, 100)).fills
    assert fill.price == pytest.approx(100.0 * (1 - (5e-4 + 0.1 * 6.0 / 100.0)), rel=1e-12)


# -- shorts ----------------------------------------------------------------------------------------
def test_a_short_position_pays_borrow_and_books_pnl_when_covered() -> None:
    p = Portfolio(("AAA",), 10_000.0, borrow_rate=0.05)
    year = 365 * DAY
    time = np.array([0, year], np.int64)
    fills = (np.array([0], np.int64), np.array([0], np.int64), np.array([-100.0]), np.array([50.0]), np.array([1.0]))
    rows = p.run(time, np.zeros(2, np.int64), np.array([50.0, 40.0]), fills)
    assert p.borrow_costs == pytest.approx(100 * 50.0 * 0.05)  # a year at the first close
    assert rows.column("short_exposure")[-1] == pytest.approx(4000.0)
    assert rows.column("net_exposure")[-1] == pytest.approx(-4000.0)
    assert p.apply_fill("AAA", 100, 40.0, 1.0) == pytest.approx(1000.0)
    assert p.cash == pytest.approx(10_000 + 5000 - 1 - 250 - 4000 - 1)
