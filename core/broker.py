"""The broker interface execution talks through, and the simulated broker of backtests and paper sessions.

Real brokers (Alpaca, later) implement the same interface: `submit` places an order under its client
order id, which the broker refuses to accept twice; fills come back as `FillReport`s.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import polars as pl

from utp.v1 import events_pb2 as pb


@dataclass(frozen=True, slots=True)
class FillReport:
    client_order_id: str
    symbol: str
    quantity: float  # > 0 bought, < 0 sold
    price: float  # after slippage
    commission: float
    slippage: float  # cost in currency, >= 0
    time_ns: int


class BrokerError(Exception):
    """The broker refused a request; the message says why."""


class DuplicateOrderError(BrokerError):
    """The client order id was used before: the order exists already and was not placed again."""


class Broker(ABC):
    name: str

    @abstractmethod
    def submit(self, order: pb.Order) -> pb.Order:
        """Place an order; return it as accepted (status NEW, broker order id set).

        Raises DuplicateOrderError for a client order id seen before, BrokerError for an invalid order.
        """

    @abstractmethod
    def on_bars(self, bars: pl.DataFrame) -> list[FillReport]:
        """Market data reached the broker: a simulated venue fills what it can. Real brokers return []."""

    @abstractmethod
    def open_orders(self) -> list[pb.Order]: ...


class SimulatedBroker(Broker):
    """Fills market orders at the open of the symbol's next bar, with slippage and commission.

    Buy price = open x (1 + slippage_bps / 1e4), sell price = open x (1 - slippage_bps / 1e4).
    Commission = max(commission_min, commission_per_share x quantity) + commission_bps / 1e4 x notional.
    Orders fill completely (volume limits, limit and stop orders come with the full simulated broker).
    """

    name = "simulated"

    def __init__(
        self,
        *,
        slippage_bps: float = 0.0,
        commission_per_share: float = 0.0,
        commission_min: float = 0.0,
        commission_bps: float = 0.0,
    ) -> None:
        self.slippage = slippage_bps / 1e4
        self.commission_per_share = commission_per_share
        self.commission_min = commission_min
        self.commission_rate = commission_bps / 1e4
        self._open: dict[str, pb.Order] = {}
        self._seen: set[str] = set()
        self._next_id = 1

    def submit(self, order: pb.Order) -> pb.Order:
        cid = order.client_order_id
        if cid in self._seen:
            raise DuplicateOrderError(f"client order id {cid} was already used")
        if order.order_type != pb.ORDER_TYPE_MARKET:
            raise BrokerError(f"{cid}: the simulated broker takes market orders only")
        if not (math.isfinite(order.quantity) and order.quantity > 0):
            raise BrokerError(f"{cid}: quantity {order.quantity} must be a positive number")
        if order.side not in (pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL):
            raise BrokerError(f"{cid}: side must be BUY or SELL")
        accepted = pb.Order()
        accepted.CopyFrom(order)
        accepted.status = pb.ORDER_STATUS_NEW
        accepted.broker = self.name
        accepted.broker_order_id = f"sim-{self._next_id}"
        self._next_id += 1
        self._seen.add(cid)
        self._open[cid] = accepted
        return accepted

    def on_bars(self, bars: pl.DataFrame) -> list[FillReport]:
        if not self._open or not bars.height:
            return []
        opens: dict[str, tuple[float, int]] = {}
        for symbol, open_, time_ns in bars.select("symbol", "open", "event_time_ns").iter_rows():
            opens.setdefault(symbol, (open_, time_ns))
        fills = []
        for cid, order in list(self._open.items()):
            bar = opens.get(order.header.symbol)
            if bar is None or bar[1] <= order.submitted_time_ns:
                continue
            open_, time_ns = bar
            sign = 1.0 if order.side == pb.ORDER_SIDE_BUY else -1.0
            price = open_ * (1.0 + sign * self.slippage)
            quantity = order.quantity
            notional = abs(price * quantity)
            commission = max(self.commission_min, self.commission_per_share * quantity) + self.commission_rate * notional
            fills.append(
                FillReport(cid, order.header.symbol, sign * quantity, price, commission, abs(price - open_) * quantity, time_ns)
            )
            del self._open[cid]
        return fills

    def open_orders(self) -> list[pb.Order]:
        return list(self._open.values())
