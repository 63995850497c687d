"""An external venue (a real broker, e.g. Alpaca) behind execution's order book.

Execution decides every order in its kernel against a book of open orders (`SimulatedBroker`'s tables) and its
portfolio, live and in a backtest alike. With the simulated venue the kernel also fills the orders from bars. With
an external venue it does not: the orders the kernel created are sent to the broker (an entry with its protective
legs as one bracket), the orders it cancelled are cancelled there, and what the broker reports (fills, and orders
accepted, rejected, cancelled or expired) is applied to the same book and portfolio before the next bar time is
decided. So the decisions come from one code path, and only the venue differs.

Fills are booked from the broker's reports alone: a fill reported for an order this book already closed (a cancel
that crossed a fill) is still booked, so the portfolio never misses shares the broker traded.
Reconciliation compares the portfolio and the open orders with the broker's, at the first step and every
`reconcile_interval_s` of the session's clock; a mismatch that survives a second look halts trading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from numba import njit

from utp.core.broker import (
    EV_ACTIVATED,
    EV_CANCELED,
    EV_EXPIRED,
    EV_FILL,
    EV_REJECTED,
    F_FILLED,
    F_LIMIT,
    F_QTY,
    F_STOP,
    F_VALUE,
    FREE,
    HELD,
    I_PARENT,
    I_SIDE,
    I_STATE,
    I_SYM,
    I_TYPE,
    WORKING,
    BarBlock,
    Broker,
    BrokerError,
    BrokerOrder,
    BrokerReport,
    FillReport,
    SimulatedBroker,
    close_order,
    compact_open,
    order_event,
)
from utp.core.kinds import KINDS
from utp.core.portfolio import REALIZED, Portfolio, book_fill
from utp.core.risk_guard import OK, RiskGuard, guard_event, guard_fill
from utp.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

_TERMINAL = {pb.ORDER_STATUS_CANCELED: EV_CANCELED, pb.ORDER_STATUS_EXPIRED: EV_EXPIRED,
             pb.ORDER_STATUS_REJECTED: EV_REJECTED, pb.ORDER_STATUS_REPLACED: EV_CANCELED}  # fmt: skip


@njit(cache=True)
def _fill_row(k, t, q, price, fo, io, olist, active, events, n):  # noqa: ANN001
    """The broker filled q shares of open row k at price: the row's state, and its held legs start working."""
    if fo[k, F_QTY] == 0.0:
        fo[k, F_QTY] = q
    fo[k, F_FILLED] += q
    fo[k, F_VALUE] += q * price
    if fo[k, F_FILLED] >= fo[k, F_QTY] - 1e-9:
        if io[k, I_STATE] == WORKING:
            active[io[k, I_SYM]] -= 1
        io[k, I_STATE] = FREE
    n = order_event(events, n, EV_FILL, k, t, fo, q, price, 0.0, 0.0, 0.0, 0.0)
    for j in range(1, olist[0] + 1):
        c = olist[j]
        if io[c, I_PARENT] == k and io[c, I_STATE] == HELD:
            io[c, I_STATE] = WORKING
            active[io[c, I_SYM]] += 1
            n = order_event(events, n, EV_ACTIVATED, c, t, fo, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    compact_open(olist, io)
    return n


@njit(cache=True)
def _end_row(k, t, kind, fo, io, olist, active, events, n):  # noqa: ANN001
    n = close_order(k, t, kind, 0.0, fo, io, olist, active, events, n)
    compact_open(olist, io)
    return n


@njit(cache=True)
def _book(pos, acct, s, q, price, commission, slippage, t, gv, gs, gp, events, n, kind):  # noqa: ANN001
    """Book a fill of q signed shares of symbol s in the portfolio; the risk rules see it (a risk event if one acts)."""
    realized = pos[s, REALIZED]
    book_fill(pos, acct, s, q, price, commission)
    reason, action, value, threshold = guard_fill(t, s, pos[s, REALIZED] - realized, abs(q) * price, slippage, gv,
                                                  gs, gp)  # fmt: skip
    if reason != OK:
        n = guard_event(events, n, t, s, reason, action, value, threshold, -1, kind)
    return n


@njit(cache=True)
def _settle_row(k, quantity, done, fo, io, olist, active):  # noqa: ANN001
    """The broker's word on row k's size (a bracket leg shrinks when its sibling fills) and whether it is done."""
    if quantity > 0.0:
        fo[k, F_QTY] = quantity
    if (done or fo[k, F_FILLED] >= fo[k, F_QTY] - 1e-9 and fo[k, F_FILLED] > 0.0) and io[k, I_STATE] != FREE:
        if io[k, I_STATE] == WORKING:
            active[io[k, I_SYM]] -= 1
        io[k, I_STATE] = FREE
        compact_open(olist, io)


@dataclass(slots=True)
class VenueStep:
    """What the venue reported in one step, as execution publishes it."""

    orders: list[BrokerOrder] = field(default_factory=list)
    fills: list[FillReport] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)  # symbols whose position changed
    events: int = 0  # rows written into execution's event buffer (fills of open rows, risk events)


class ExternalVenue:
    """Sends execution's orders to `broker` and applies what it reports to execution's book and portfolio."""

    def __init__(self, broker: Broker, symbols: tuple[str, ...], *, reconcile_interval_s: float,
                 on_alert: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.broker = broker
        self.symbols = symbols
        self.index = {s: i for i, s in enumerate(symbols)}
        self.reconcile_interval_ns = int(reconcile_interval_s * 1e9)
        self.on_alert = on_alert
        self.sent: dict[str, tuple[int, int]] = {}  # client order id -> (symbol index, +1 buy / -1 sell)
        self.last_reconcile_ns: int | None = None
        self.mismatch: list[str] = []

    # -- what the broker reported ----------------------------------------------------------------------
    def poll(self, bars: BarBlock) -> BrokerReport:
        """What the broker reported since the last step (it sees this step's bars: notional orders are sized
        at the last close)."""
        return self.broker.on_bars(bars)

    def receive(self, report: BrokerReport, book: SimulatedBroker, portfolio: Portfolio, guard: RiskGuard,
                events: np.ndarray, n: int, risk_kind: int) -> VenueStep:  # fmt: skip
        """Apply a report to the book and the portfolio (events: execution's buffer, room for 3 rows a report)."""
        step = VenueStep(events=n)
        for fill in report.fills:
            known = self.sent.get(fill.client_order_id)
            if known is None:
                log.error("fill %s of an order this session did not send: not booked (reconciliation will see it)",
                          fill.client_order_id)  # fmt: skip
                continue
            s, side = known
            row = book.row_of(fill.client_order_id)
            if row is not None:
                step.events = _fill_row(row, fill.time_ns, abs(fill.quantity), fill.price, book.fo, book.io,
                                        book.olist, book.active, events, step.events)  # fmt: skip
            step.events = _book(portfolio.pos, portfolio.acct, s, side * abs(fill.quantity), fill.price,
                                fill.commission, fill.slippage, fill.time_ns, guard.scalars, guard.per_symbol,
                                guard.params, events, step.events, risk_kind)  # fmt: skip
            step.fills.append(fill)
            step.touched.add(s)
        for order in report.updates:
            row = book.row_of(order.client_order_id)
            if row is not None:
                kind = _TERMINAL.get(order.status)
                if kind is not None:
                    step.events = _end_row(row, order.updated_time_ns, kind, book.fo, book.io, book.olist, book.active,
                                           events, step.events)  # fmt: skip
                else:  # the size it has at the broker (a notional order sized, a leg shrunk by its sibling's fill)
                    _settle_row(row, float(order.quantity), order.status == pb.ORDER_STATUS_FILLED, book.fo, book.io,
                                book.olist, book.active)  # fmt: skip
            step.orders.append(order)
        return step

    # -- what execution decided ------------------------------------------------------------------------------
    def send(self, book: SimulatedBroker, created: np.ndarray, cancelled: np.ndarray, time_ns: int) -> list[BrokerOrder]:
        """Cancel `cancelled` rows at the broker, then place the `created` rows (entries with their legs as one
        bracket). Returns the broker's snapshots of what it did (REJECTED ones are closed in the book by the
        next `receive`, which sees them again, or here when the broker answered at once)."""
        out: list[BrokerOrder] = []
        ending = set(cancelled.tolist())
        for k in cancelled.tolist():
            cid = book.meta["client_order_id"][k]
            if cid not in self.sent or (book.meta["parent_client_order_id"][k] and int(book.io[k, I_PARENT]) in ending):
                continue  # never sent, or a leg whose entry is cancelled too: the broker cancels them together
            try:
                out.extend(self.broker.cancel(cid, time_ns).updates)
            except BrokerError as exc:  # already done at the broker: its report says how it ended
                log.info("cancel of %s: %s", cid, exc)
        legs_of: dict[int, list[int]] = {}
        for k in created.tolist():
            parent = int(book.io[k, I_PARENT])
            if parent >= 0:
                legs_of.setdefault(parent, []).append(k)
        for k in created.tolist():
            if book.io[k, I_PARENT] >= 0:
                continue
            order = self._order(book, k)
            legs = [self._order(book, c) for c in legs_of.get(k, [])]
            try:
                if order.replaces_client_order_id:  # a repriced entry: the broker swaps it in place, legs and all
                    report = self.broker.replace(order.replaces_client_order_id, order)
                elif legs:
                    take = next((o for o in legs if o.order_type == pb.ORDER_TYPE_LIMIT), None)
                    stop = next((o for o in legs if o.order_type in (pb.ORDER_TYPE_STOP, pb.ORDER_TYPE_STOP_LIMIT)),
                                None)  # fmt: skip
                    report = self.broker.submit_bracket(order, take, stop)  # type: ignore[attr-defined]
                else:
                    report = self.broker.submit(order)
            except BrokerError as exc:
                # Unknown outcome (retries ran out, circuit open): the order may or may not be at the broker;
                # reconciliation settles it. Nothing is placed twice: its client order id is spent.
                log.error("order %s not confirmed by %s: %s", order.client_order_id, self.broker.name, exc)
                order.status, order.message = pb.ORDER_STATUS_REJECTED, f"not confirmed by the broker: {exc}"
                out.append(order)
                continue
            out.extend(report.updates)
        return out

    def _order(self, book: SimulatedBroker, k: int) -> BrokerOrder:
        m = book.meta.row(k, named=True)
        side = pb.ORDER_SIDE_BUY if book.io[k, I_SIDE] > 0 else pb.ORDER_SIDE_SELL
        order = BrokerOrder(
            client_order_id=m["client_order_id"], symbol=m["symbol"], side=side, quantity=float(book.fo[k, F_QTY]),
            order_type=int(book.io[k, I_TYPE]), time_in_force=m["time_in_force"] or pb.TIME_IN_FORCE_DAY,
            limit_price=float(book.fo[k, F_LIMIT]), stop_price=float(book.fo[k, F_STOP]), notional=m["notional"],
            parent_client_order_id=m["parent_client_order_id"], oco_group=m["oco_group"],
            submitted_time_ns=m["submitted_time_ns"], intent_id=m["intent_id"], correlation_id=m["correlation_id"],
            reason=m["reason"], strategy=m["strategy"], replaces_client_order_id=m["replaces_client_order_id"],
        )  # fmt: skip
        self.sent[order.client_order_id] = (self.index[order.symbol], 1 if side == pb.ORDER_SIDE_BUY else -1)
        return order

    def resync(self) -> BrokerReport:
        """What the broker reported since the last step, every open order asked about (not only the stream)."""
        resync = getattr(self.broker, "resync", None)
        return resync() if resync is not None else self.broker.on_bars(BarBlock(*(np.empty(0),) * 7))

    # -- reconciliation ------------------------------------------------------------------------------------
    def reconcile_due(self, now_ns: int) -> bool:
        if self.last_reconcile_ns is None:
            return True
        return self.reconcile_interval_ns > 0 and now_ns - self.last_reconcile_ns >= self.reconcile_interval_ns

    def reconcile(self, now_ns: int, positions: Mapping[str, float], open_orders: list[str]) -> list[str]:
        """Mismatches between our positions / open orders and the broker's ([] = in agreement)."""
        self.last_reconcile_ns = now_ns
        result = self.broker.reconcile(positions, open_orders)  # type: ignore[attr-defined]
        self.mismatch = [] if result.ok else list(result.mismatches)
        return self.mismatch


def order_frame(orders: list[BrokerOrder]) -> pl.DataFrame:
    return KINDS["order"].to_frame([o.to_proto() for o in orders])


def fill_frame(fills: list[FillReport], sent: Mapping[str, tuple[int, int]], meta: Mapping[str, tuple[str, int, str]]
               ) -> pl.DataFrame:  # fmt: skip
    """`fill` events of the broker's fills (meta: client order id -> (correlation id, intent reason, strategy))."""
    rows = []
    for f in fills:
        correlation, reason, strategy = meta.get(f.client_order_id, ("", pb.INTENT_REASON_UNSPECIFIED, ""))
        fill_id = f"{f.client_order_id}/{f.time_ns}/{abs(f.quantity):g}"
        rows.append(pb.Fill(
            header=pb.EventHeader(event_id=f"fill/{fill_id}", correlation_id=correlation, event_time_ns=f.time_ns,
                                  symbol=f.symbol),
            client_order_id=f.client_order_id, fill_id=fill_id,
            side=pb.ORDER_SIDE_BUY if sent.get(f.client_order_id, (0, 1))[1] > 0 else pb.ORDER_SIDE_SELL,
            quantity=abs(f.quantity), price=f.price, commission=f.commission, slippage=f.slippage, reason=reason,
            strategy=strategy,
        ))  # fmt: skip
    return KINDS["fill"].to_frame(rows)
