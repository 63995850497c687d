"""The broker interface execution talks through, and the simulated broker of backtests and paper sessions.

Execution hands `BrokerOrder`s to a broker; the broker accepts or refuses them and reports what happened
to them (`BrokerReport`: fills and status snapshots). Real brokers (Alpaca, issue 6) implement the same
interface: `submit` places an order under its client order id, which the broker refuses to accept twice.

The simulated broker keeps its working orders in two numeric tables (one row per order) that numba kernels
match against bars; their text fields live beside them, column by column. The matching of one bar
(`match_bar`) and the creation of an order (`create_order`) are inlineable kernels, so execution's own
kernel runs the venue, the books and its decisions in one pass over a batch of bars (see
`utp.engines.execution`) with exactly these rules.

## How the simulated broker fills orders

An order is working from the first bar of its symbol whose time is after the decision that placed it
(orders are placed at a bar's close, so the earliest fill is the next bar). For each bar of a symbol:

1. DAY orders whose trading day (the UTC date of the first bar they could fill on) has ended expire.
2. At the **open**: market orders fill at the open.
3. **Stops** (before limits: when a bar could have hit both legs of a bracket, the stop is assumed first,
   the pessimistic reading of a bar whose path inside is unknown). A buy stop triggers when high >= stop:
   it fills at the open if the bar opened at or above the stop (a gap through the stop fills at the open,
   not at the stop), else at the stop. A stop-limit triggers the same way and then works as a limit, the
   trigger price standing in for the open on the trigger bar. Sells mirror this.
4. **Limits**: a buy limit fills at the open if the bar opened at or below the limit, else at the limit
   if low <= limit; no fill otherwise. Sells mirror this. Limit prices are never worsened by slippage.

Market and stop fills pay slippage: buys at price x (1 + s), sells at price x (1 - s), where s is
`slippage_bps` for the `fixed` model; the larger of that and half the Corwin-Schultz spread estimated
from the symbol's previous two bars (smoothed over `spread_period` bars) for `spread`; and
`slippage_bps` plus `volatility_factor` x the previous bar's (high - low) / close for `volatility`.

A fill is at most `volume_limit` x the bar's volume (0 = no limit), shared by the symbol's orders in
that bar; the rest stays working (PARTIALLY_FILLED) for the following bars. Commission per fill =
max(`commission_min`, `commission_per_share` x shares) + `commission_bps` / 1e4 x notional.

A notional order (quantity 0, `notional` > 0) is sized at its first fill: the most shares (whole shares
unless `fractional`) whose cost plus commission fits in the notional; it is rejected if that is none.

Brackets: an order with `parent_client_order_id` is HELD until its parent fills, then works for as many
shares as the parent has filled so far (on the parent's bar when the parent filled at the open, else
from the next bar). Orders sharing an `oco_group` cancel each other: a fill of one reduces the others by
the same quantity, and once one is completely filled the others are cancelled. A parent that ends
without any fill (cancelled, expired, rejected) cancels its legs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from numba import njit

from utp.core.kernels import entry
from utp.v1 import events_pb2 as pb

DAY_NS = 86_400 * 10**9
SLIPPAGE_MODELS = {"fixed": 0, "spread": 1, "volatility": 2}

# -- the order tables ----------------------------------------------------------------------------------
# Float columns. F_TIMEOUT: the time an entry's order timeout runs out (0: none); F_REPRICES: times it was repriced.
F_QTY, F_NOTIONAL, F_FILLED, F_VALUE, F_LIMIT, F_STOP, F_TIMEOUT, F_REPRICES, N_F = range(9)
# Integer columns. I_AFTER: the order can fill on bars after this time. I_DAY: UTC day of a DAY order's
# first bar (-1 before it). I_GROUP: OCO group (-1 none). I_LEG: a bracket leg (sized by its parent).
I_STATE, I_SYM, I_SIDE, I_TYPE, I_TIF, I_AFTER, I_DAY, I_PARENT, I_GROUP, I_TRIGGERED, I_LEG, I_SERIAL, N_I = range(13)
FREE, WORKING, HELD = 0, 1, 2
TIF_DAY, TIF_GTC = 1, 2
# Per-symbol state for the slippage models: previous bar and the smoothed spread estimate.
S_PREV_HIGH, S_PREV_LOW, S_PREV_CLOSE, S_SPREAD, S_BARS, N_S = range(6)
# Parameters.
P_SLIP, P_MODEL, P_SPREAD_ALPHA, P_VOL_FACTOR, P_VOLUME_LIMIT, P_PER_SHARE, P_MIN, P_BPS, P_FRACTIONAL, N_P = range(10)

# -- events the kernels report -------------------------------------------------------------------------
# Columns: what happened, to which order row, when, and the order's state right after it.
E_KIND, E_SLOT, E_TIME, E_QTY, E_PRICE, E_COMMISSION, E_SLIPPAGE, E_ORDER_QTY, E_FILLED, E_AVG, E_AUX, E_ROLE, N_E = range(13)
EV_NEW, EV_HELD, EV_FILL, EV_ACTIVATED, EV_CANCELED, EV_EXPIRED, EV_REJECTED, EV_SKIPPED, EV_REPLACED = range(9)
# E_AUX of a cancellation: why.
CANCEL_REQUESTED, CANCEL_OCO, CANCEL_PARENT, CANCEL_TARGET, CANCEL_TIMEOUT, CANCEL_ACCEPTED, CANCEL_OPERATOR = (
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)  # fmt: skip
#: OCO groups named through `submit` are numbered from here (execution's brackets use their entry's serial).
GROUP_NAMED = 1 << 40
CANCEL_TEXT = {CANCEL_REQUESTED: "cancelled", CANCEL_OCO: "one-cancels-other",
               CANCEL_PARENT: "its parent ended unfilled", CANCEL_TARGET: "replaced by a new target",
               CANCEL_TIMEOUT: "not filled within the order timeout",
               CANCEL_ACCEPTED: "the order timeout ran out with enough of it filled: the rest is cancelled",
               CANCEL_OPERATOR: "cancelled by the operator"}  # fmt: skip
_CS_K = 3.0 - 2.0 * math.sqrt(2.0)
_CLOSED = {pb.ORDER_STATUS_FILLED, pb.ORDER_STATUS_CANCELED, pb.ORDER_STATUS_REJECTED, pb.ORDER_STATUS_EXPIRED,
           pb.ORDER_STATUS_REPLACED}  # fmt: skip


def event_status(kind: int, filled: float, quantity: float) -> int:
    """The order status an event leaves the order in."""
    if kind == EV_FILL:
        return pb.ORDER_STATUS_FILLED if filled >= quantity - 1e-9 else pb.ORDER_STATUS_PARTIALLY_FILLED
    return _EVENT_STATUS[kind]


_EVENT_STATUS = {EV_NEW: pb.ORDER_STATUS_NEW, EV_HELD: pb.ORDER_STATUS_HELD, EV_ACTIVATED: pb.ORDER_STATUS_NEW,
                 EV_CANCELED: pb.ORDER_STATUS_CANCELED, EV_EXPIRED: pb.ORDER_STATUS_EXPIRED,
                 EV_REJECTED: pb.ORDER_STATUS_REJECTED, EV_REPLACED: pb.ORDER_STATUS_REPLACED}  # fmt: skip


@dataclass(slots=True)
class BrokerOrder:
    """An order as execution hands it to a broker; the broker sets its status, fills and ids in place."""

    client_order_id: str
    symbol: str
    side: int  # pb.OrderSide
    quantity: float  # shares; 0 for a notional order until it is sized, and for a bracket leg
    order_type: int = pb.ORDER_TYPE_MARKET
    time_in_force: int = pb.TIME_IN_FORCE_GTC
    limit_price: float = 0.0
    stop_price: float = 0.0
    notional: float = 0.0
    parent_client_order_id: str = ""
    oco_group: str = ""
    submitted_time_ns: int = 0
    intent_id: str = ""
    correlation_id: str = ""
    reason: int = pb.INTENT_REASON_UNSPECIFIED
    strategy: str = ""
    replaces_client_order_id: str = ""
    status: int = pb.ORDER_STATUS_UNSPECIFIED
    filled_quantity: float = 0.0
    average_fill_price: float = 0.0
    broker: str = ""
    broker_order_id: str = ""
    message: str = ""
    updated_time_ns: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in (pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PARTIALLY_FILLED, pb.ORDER_STATUS_HELD)

    @property
    def signed_remaining(self) -> float:
        """Shares still to trade, > 0 buying; an order not yet sized counts 0."""
        remaining = max(self.quantity - self.filled_quantity, 0.0) if self.is_open else 0.0
        return remaining if self.side == pb.ORDER_SIDE_BUY else -remaining

    def to_proto(self) -> pb.Order:
        status_name = pb.OrderStatus.Name(self.status).removeprefix("ORDER_STATUS_").lower()
        return pb.Order(
            header=pb.EventHeader(
                event_id=f"order/{self.client_order_id}/{status_name}/{self.filled_quantity:g}",
                correlation_id=self.correlation_id,
                event_time_ns=self.updated_time_ns,
                symbol=self.symbol,
            ),
            client_order_id=self.client_order_id, intent_id=self.intent_id, side=self.side, quantity=self.quantity,
            order_type=self.order_type, status=self.status, filled_quantity=self.filled_quantity,
            average_fill_price=self.average_fill_price, broker=self.broker, broker_order_id=self.broker_order_id,
            submitted_time_ns=self.submitted_time_ns, reason=self.reason, limit_price=self.limit_price,
            stop_price=self.stop_price, time_in_force=self.time_in_force, notional=self.notional,
            parent_client_order_id=self.parent_client_order_id, oco_group=self.oco_group, message=self.message,
            strategy=self.strategy, replaces_client_order_id=self.replaces_client_order_id,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FillReport:
    client_order_id: str
    symbol: str
    quantity: float  # > 0 bought, < 0 sold
    price: float  # after slippage
    commission: float
    slippage: float  # cost in currency, >= 0
    time_ns: int


@dataclass(slots=True)
class BrokerReport:
    """What happened at the broker, in the order it happened: fills, and the orders' states after each change
    (snapshots: `BrokerOrder`s copied at the time)."""

    fills: list[FillReport] = field(default_factory=list)
    updates: list[BrokerOrder] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BarBlock:
    """Bars of one or many bar times as arrays, sorted by time (then symbol); `symbol` holds universe indices."""

    time: np.ndarray  # int64 ns
    symbol: np.ndarray  # int64
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return int(self.time.shape[0])


class BrokerError(Exception):
    """The broker refused a request; the message says why."""


class DuplicateOrderError(BrokerError):
    """The client order id was used before: the order exists already and was not placed again."""


class Broker(ABC):
    name: str

    @abstractmethod
    def submit(self, order: BrokerOrder) -> BrokerReport:
        """Place an order. The broker sets its status (NEW; HELD for a bracket leg whose parent has not filled;
        REJECTED with a message) and broker order id in place and reports the change.

        Raises DuplicateOrderError for a client order id seen before (the order is left untouched).
        """

    @abstractmethod
    def cancel(self, client_order_id: str, time_ns: int) -> BrokerReport:
        """Cancel a working or held order (and the legs waiting on it). Raises BrokerError if it is not open."""

    @abstractmethod
    def replace(self, client_order_id: str, new: BrokerOrder) -> BrokerReport:
        """Cancel/replace: the open order becomes REPLACED and `new` (a fresh client order id, same symbol and
        side) works instead, in its place in the queue and with its bracket and OCO links. Raises BrokerError
        if the old order is not open or has partly filled."""

    @abstractmethod
    def on_bars(self, bars: BarBlock) -> BrokerReport:
        """Market data reached the broker: a simulated venue fills what it can."""

    @abstractmethod
    def open_orders(self) -> list[BrokerOrder]: ...


# -- kernels ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def commission_for(q, price, params):  # noqa: ANN001
    per_share = params[P_PER_SHARE] * q
    # Grouped as `cost` groups it, so the cash a fill takes is exactly what sizing allowed for.
    return (params[P_MIN] if params[P_MIN] > per_share else per_share) + (params[P_BPS] * 1e-4) * (q * price)


@njit(cache=True, inline="always")
def cost(q, price, per_share, minimum, rate):  # noqa: ANN001
    """Cash a buy of q at price takes: notional + commission (the same expression the fill books)."""
    notional = q * price
    return notional + (max(minimum, per_share * q) + rate * notional)


@njit(cache=True, inline="always")
def affordable(budget, price, fractional, per_share, minimum, rate):  # noqa: ANN001
    """Largest q (whole unless fractional) with cost(q) <= budget; 0 when none. Never more than the
    division's bound, so with no costs a whole q is exactly budget // price (as backtesting.py sizes)."""
    if not (budget > 0.0 and price > 0.0):
        return 0.0
    unit = price + rate * price
    # cost(q) = max(q*unit + minimum, q*(unit + per_share)), so both bounds must hold.
    if fractional:
        q = min((budget - minimum) / unit, budget / (unit + per_share))
        if not (q > 0.0 and q < np.inf):
            return 0.0
        for _ in range(64):
            if cost(q, price, per_share, minimum, rate) <= budget:
                return q
            q = np.nextafter(q, 0.0)
        return 0.0
    # Floor division (Python's exact floor), so with no costs this is exactly cash // price.
    q = min((budget - minimum) // unit, budget // (unit + per_share))
    if not (q >= 1.0 and q < np.inf):
        return 0.0
    # The estimate divides by a rounded unit price and can be a share too many for the cost as booked.
    # Never round up: with no costs q stays cash // price even where (q + 1) x price rounds to <= cash.
    for _ in range(64):
        if q < 1.0 or cost(q, price, per_share, minimum, rate) <= budget:
            break
        q -= 1.0
    return q if q >= 1.0 else 0.0


@njit(cache=True, inline="always")
def size_notional(notional, price, params):  # noqa: ANN001
    """Most shares whose cost and commission fit in `notional` (whole shares unless fractional); 0 if none.
    With no costs a whole quantity is exactly notional // price, as backtesting.py and backtrader size."""
    return affordable(notional, price, params[P_FRACTIONAL] != 0.0, params[P_PER_SHARE], params[P_MIN],
                      params[P_BPS] * 1e-4)  # fmt: skip


@njit(cache=True, inline="always")
def _slippage(s, state, params):  # noqa: ANN001
    model = int(params[P_MODEL])
    slip = params[P_SLIP]
    if model == 1 and state[s, S_BARS] >= 2.0:
        half = state[s, S_SPREAD] / 2.0
        slip = slip if slip > half else half
    elif model == 2 and state[s, S_BARS] >= 1.0:
        slip += params[P_VOL_FACTOR] * (state[s, S_PREV_HIGH] - state[s, S_PREV_LOW]) / state[s, S_PREV_CLOSE]
    return slip


@njit(cache=True, inline="always")
def update_symbol_state(s, high, low, close, state, params):  # noqa: ANN001
    """After a symbol's bar: remember it, and smooth the Corwin-Schultz spread of it and the bar before."""
    if params[P_MODEL] == 1.0 and state[s, S_BARS] >= 1.0:
        prev_high, prev_low = state[s, S_PREV_HIGH], state[s, S_PREV_LOW]
        beta = math.log(high / low) ** 2 + math.log(prev_high / prev_low) ** 2
        gamma = math.log(max(high, prev_high) / min(low, prev_low)) ** 2
        alpha = (math.sqrt(2.0 * beta) - math.sqrt(beta)) / _CS_K - math.sqrt(gamma / _CS_K)
        estimate = 2.0 * (math.exp(alpha) - 1.0) / (1.0 + math.exp(alpha))
        estimate = estimate if estimate > 0.0 else 0.0
        if state[s, S_BARS] == 1.0:
            state[s, S_SPREAD] = estimate
        else:
            state[s, S_SPREAD] += params[P_SPREAD_ALPHA] * (estimate - state[s, S_SPREAD])
    state[s, S_PREV_HIGH] = high
    state[s, S_PREV_LOW] = low
    state[s, S_PREV_CLOSE] = close
    state[s, S_BARS] += 1.0


@njit(cache=True, inline="always")
def order_event(events, n, kind, k, t, fo, q, price, commission, slippage, aux, role):  # noqa: ANN001
    """Write one event about order row k, with the order's state right after it."""
    e = events[n]
    e[E_KIND] = kind
    e[E_SLOT] = k
    e[E_TIME] = t
    e[E_QTY] = q
    e[E_PRICE] = price
    e[E_COMMISSION] = commission
    e[E_SLIPPAGE] = slippage
    e[E_ORDER_QTY] = fo[k, F_QTY]
    e[E_FILLED] = fo[k, F_FILLED]
    e[E_AVG] = fo[k, F_VALUE] / fo[k, F_FILLED] if fo[k, F_FILLED] > 0.0 else 0.0
    e[E_AUX] = aux
    e[E_ROLE] = role
    return n + 1


@njit(cache=True, inline="always")
def close_order(k, t, kind, aux, fo, io, olist, active, events, n):  # noqa: ANN001
    """End an open order (cancelled, expired, rejected); a parent that never filled takes its legs along.
    (The caller compacts `olist` afterwards.)"""
    if io[k, I_STATE] == WORKING:
        active[io[k, I_SYM]] -= 1
    io[k, I_STATE] = FREE
    n = order_event(events, n, kind, k, t, fo, 0.0, 0.0, 0.0, 0.0, aux, 0.0)
    if fo[k, F_FILLED] == 0.0:
        for j in range(1, olist[0] + 1):
            c = olist[j]
            if io[c, I_PARENT] == k and io[c, I_STATE] != FREE:
                if io[c, I_STATE] == WORKING:
                    active[io[c, I_SYM]] -= 1
                io[c, I_STATE] = FREE
                n = order_event(events, n, EV_CANCELED, c, t, fo, 0.0, 0.0, 0.0, 0.0, CANCEL_PARENT, 0.0)
    return n


@njit(cache=True, inline="always")
def compact_open(olist, io):  # noqa: ANN001
    """Drop ended orders from the open list, keeping submission order (the order of fill priority)."""
    m = 0
    for j in range(1, olist[0] + 1):
        k = olist[j]
        if io[k, I_STATE] != FREE:
            m += 1
            olist[m] = k
    olist[0] = m


@njit(cache=True, inline="always")
def create_order(fo, io, olist, active, k, sym, side, otype, tif, qty, notional, limit, stop, after, parent, group, leg, serial):  # noqa: ANN001, PLR0913
    """Fill row k of the tables with a new order and list it as open; HELD when it is a leg of a parent that
    has not filled. Returns True when it works at once."""
    for c in range(N_F):
        fo[k, c] = 0.0
    fo[k, F_QTY] = qty
    fo[k, F_NOTIONAL] = notional
    fo[k, F_LIMIT] = limit
    fo[k, F_STOP] = stop
    io[k, I_SYM] = sym
    io[k, I_SIDE] = side
    io[k, I_TYPE] = otype
    io[k, I_TIF] = TIF_DAY if tif == TIF_DAY else TIF_GTC
    io[k, I_AFTER] = after
    io[k, I_DAY] = -1
    io[k, I_PARENT] = parent
    io[k, I_GROUP] = group
    io[k, I_TRIGGERED] = 0
    io[k, I_LEG] = leg
    io[k, I_SERIAL] = serial
    olist[0] += 1
    olist[olist[0]] = k
    if parent >= 0 and fo[parent, F_FILLED] == 0.0:
        io[k, I_STATE] = HELD
        return False
    if parent >= 0:  # a leg of a partly filled parent works at once for what has filled
        fo[k, F_QTY] = fo[parent, F_FILLED]
    io[k, I_STATE] = WORKING
    active[sym] += 1
    return True


@njit(cache=True, inline="always")
def match_bar(t, s, open_, high, low, volume, fo, io, olist, active, state, params, events, n, fills):  # noqa: ANN001, PLR0912, PLR0915
    """Run a bar (time t, symbol s) against the working orders of s. Writes events; appends the event index
    of each fill to `fills` (fills[0] counts them). Returns the number of events."""
    if active[s] <= 0:
        return n
    n_before = n
    day = t // 86_400_000_000_000
    budget = params[P_VOLUME_LIMIT] * volume if params[P_VOLUME_LIMIT] > 0.0 else np.inf
    if params[P_VOLUME_LIMIT] > 0.0 and params[P_FRACTIONAL] == 0.0:
        budget = math.floor(budget)
    # 1. DAY orders of an ended trading day expire (legs waiting on them go too).
    for j in range(1, olist[0] + 1):
        k = olist[j]
        if io[k, I_STATE] != WORKING or io[k, I_SYM] != s or t <= io[k, I_AFTER]:
            continue
        if io[k, I_TRIGGERED] == 2:  # a stop-limit triggered on an earlier bar is a plain limit now
            io[k, I_TRIGGERED] = 1
        if io[k, I_TIF] != TIF_DAY:
            continue
        if io[k, I_DAY] < 0:
            io[k, I_DAY] = day
        elif day > io[k, I_DAY]:
            n = close_order(k, t, EV_EXPIRED, 0.0, fo, io, olist, active, events, n)
    # 2-4. Market orders at the open, then stops, then limits.
    for phase in range(3):
        for j in range(1, olist[0] + 1):
            k = olist[j]
            if io[k, I_STATE] != WORKING or io[k, I_SYM] != s or t <= io[k, I_AFTER]:
                continue
            otype = io[k, I_TYPE]
            stop_kind = otype == 3 or (otype == 4 and io[k, I_TRIGGERED] == 0)
            limit_kind = otype == 2 or (otype == 4 and io[k, I_TRIGGERED] == 1)
            if (phase == 0 and otype != 1) or (phase == 1 and not stop_kind) or (phase == 2 and not limit_kind):
                continue
            side = io[k, I_SIDE]  # +1 buy, -1 sell
            slipped = False
            if otype == 1:
                price, slipped = open_, True
            elif stop_kind:
                stop = fo[k, F_STOP]
                if (side > 0 and high < stop) or (side < 0 and low > stop):
                    continue
                gapped = open_ >= stop if side > 0 else open_ <= stop
                trigger = open_ if gapped else stop
                if otype == 3:
                    price, slipped = trigger, True
                else:  # stop-limit: a limit from now on, the trigger standing in for the open
                    io[k, I_TRIGGERED] = 2
                    lim = fo[k, F_LIMIT]
                    if (side > 0 and trigger <= lim) or (side < 0 and trigger >= lim):
                        price = trigger
                    elif (side > 0 and low <= lim) or (side < 0 and high >= lim):
                        price = lim
                    else:
                        continue
            else:
                lim = fo[k, F_LIMIT]
                if (side > 0 and open_ <= lim) or (side < 0 and open_ >= lim):
                    price = open_
                elif (side > 0 and low <= lim) or (side < 0 and high >= lim):
                    price = lim
                else:
                    continue
            base = price
            if slipped:
                price = base * (1.0 + side * _slippage(s, state, params))
            if fo[k, F_QTY] == 0.0:  # a notional order is sized at its first fill
                q = size_notional(fo[k, F_NOTIONAL], price, params)
                if q <= 0.0:
                    n = close_order(k, t, EV_REJECTED, price, fo, io, olist, active, events, n)
                    continue
                fo[k, F_QTY] = q
            remaining = fo[k, F_QTY] - fo[k, F_FILLED]
            q = remaining if remaining < budget else budget
            if q <= 0.0:
                continue
            budget -= q
            fo[k, F_FILLED] += q
            fo[k, F_VALUE] += q * price
            done = fo[k, F_FILLED] >= fo[k, F_QTY] - 1e-9
            if done:
                io[k, I_STATE] = FREE
                active[s] -= 1
            fills[fills[0] + 1] = n
            fills[0] += 1
            n = order_event(events, n, EV_FILL, k, t, fo, q, price, commission_for(q, price, params),
                            abs(price - base) * q, 0.0, 0.0)  # fmt: skip
            # Bracket legs work for what the parent has filled: from this bar if it filled at the open. A parent
            # on the legs' own side reduces the position they guard (a resize down), so they shrink by it.
            for jc in range(1, olist[0] + 1):
                c = olist[jc]
                if io[c, I_PARENT] == k and io[c, I_STATE] != FREE:
                    fo[c, F_QTY] += q if io[c, I_SIDE] != side else -q
                    if fo[c, F_QTY] <= fo[c, F_FILLED] + 1e-9:
                        n = close_order(c, t, EV_CANCELED, CANCEL_PARENT, fo, io, olist, active, events, n)
                        continue
                    if io[c, I_STATE] == HELD:
                        io[c, I_STATE] = WORKING
                        io[c, I_AFTER] = t - 1 if phase == 0 else t
                        active[io[c, I_SYM]] += 1
                        n = order_event(events, n, EV_ACTIVATED, c, t, fo, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            # One-cancels-other: the others shrink by the fill, and go once this one is done.
            group = io[k, I_GROUP]
            if group >= 0:
                for jc in range(1, olist[0] + 1):
                    c = olist[jc]
                    if c == k or io[c, I_GROUP] != group or io[c, I_STATE] == FREE:
                        continue
                    left = fo[c, F_QTY] - q
                    fo[c, F_QTY] = left if left > fo[c, F_FILLED] else fo[c, F_FILLED]
                    if done or fo[c, F_QTY] <= fo[c, F_FILLED] + 1e-9:
                        if io[c, I_STATE] == WORKING:
                            active[io[c, I_SYM]] -= 1
                        io[c, I_STATE] = FREE
                        n = order_event(events, n, EV_CANCELED, c, t, fo, 0.0, 0.0, 0.0, 0.0, CANCEL_OCO, 0.0)
    if n > n_before:
        compact_open(olist, io)
    return n


@entry
@njit(cache=True)
def _match(time, sym, open_, high, low, close, volume, fo, io, olist, active, state, params, events, fills, start):  # noqa: ANN001
    """Bars [start, n) against the order tables; returns (next bar, events written). Stops before a bar whose
    events might not fit (each order makes at most a fill, an activation and an ending per bar)."""
    n = 0
    for i in range(start, time.shape[0]):
        if n + 3 * olist[0] + 3 > events.shape[0]:
            return i, n
        n = match_bar(time[i], sym[i], open_[i], high[i], low[i], volume[i], fo, io, olist, active, state,
                      params, events, n, fills)  # fmt: skip
        update_symbol_state(sym[i], high[i], low[i], close[i], state, params)
    return time.shape[0], n


@entry
@njit(cache=True)
def _advance_state(sym, high, low, close, state, params):  # noqa: ANN001
    for i in range(sym.shape[0]):
        update_symbol_state(sym[i], high[i], low[i], close[i], state, params)


# -- the simulated broker --------------------------------------------------------------------------------
_TYPES = {pb.ORDER_TYPE_MARKET, pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_STOP, pb.ORDER_TYPE_STOP_LIMIT}
# Text and bookkeeping fields of an order row, kept beside the numeric tables (row k of the frame is row k).
META_SCHEMA = {
    "client_order_id": pl.Utf8, "symbol": pl.Utf8, "intent_id": pl.Utf8, "correlation_id": pl.Utf8,
    "strategy": pl.Utf8, "reason": pl.Int32, "parent_client_order_id": pl.Utf8, "oco_group": pl.Utf8,
    "submitted_time_ns": pl.Int64, "time_in_force": pl.Int32, "notional": pl.Float64,
    "replaces_client_order_id": pl.Utf8,
}  # fmt: skip
META_FIELDS = tuple(META_SCHEMA)


class SimulatedBroker(Broker):
    """A venue simulated from bars: see the module documentation for exactly when and at what price orders fill."""

    name = "simulated"

    def __init__(
        self,
        symbols: tuple[str, ...] | list[str],
        *,
        slippage_bps: float = 0.0,
        slippage_model: str = "fixed",
        spread_period: int = 20,
        volatility_factor: float = 0.1,
        volume_limit: float = 0.0,
        commission_per_share: float = 0.0,
        commission_min: float = 0.0,
        commission_bps: float = 0.0,
        fractional: bool = False,
    ) -> None:
        if slippage_model not in SLIPPAGE_MODELS:
            raise ValueError(f"slippage model must be one of {sorted(SLIPPAGE_MODELS)}, not {slippage_model!r}")
        if not 0 <= volume_limit <= 1:
            raise ValueError("volume_limit must be in [0, 1]")
        self.symbols = tuple(symbols)
        self.symbol_index = {s: i for i, s in enumerate(self.symbols)}
        self.params = np.zeros(N_P)
        self.params[P_SLIP] = slippage_bps / 1e4
        self.params[P_MODEL] = SLIPPAGE_MODELS[slippage_model]
        self.params[P_SPREAD_ALPHA] = 2.0 / (spread_period + 1.0)
        self.params[P_VOL_FACTOR] = volatility_factor
        self.params[P_VOLUME_LIMIT] = volume_limit
        self.params[P_PER_SHARE] = commission_per_share
        self.params[P_MIN] = commission_min
        self.params[P_BPS] = commission_bps
        self.params[P_FRACTIONAL] = 1.0 if fractional else 0.0
        self.fractional = fractional
        self.state = np.zeros((len(self.symbols), N_S))
        self.active = np.zeros(len(self.symbols), np.int64)  # working orders per symbol
        self.fo = np.zeros((16, N_F))
        self.io = np.zeros((16, N_I), np.int64)
        self.olist = np.zeros(17, np.int64)  # [count, open rows in submission order...]
        self.n_rows = 0  # rows in use (open or closed since the last compaction)
        self.meta = pl.DataFrame(schema=META_SCHEMA)
        self.groups: dict[str, int] = {}
        self.seen: set[str] = set()
        self.serial = 1
        self.events = np.zeros((256, N_E))
        self._fills = np.zeros(257, np.int64)

    # -- rows --------------------------------------------------------------------------------------------
    def reserve(self, n_new: int) -> np.ndarray | None:
        """Room for `n_new` more rows (compacting closed ones first). Returns `compact`'s row map."""
        if self.n_rows + n_new <= self.fo.shape[0]:
            return None
        remap = self.compact()
        if self.n_rows + n_new > self.fo.shape[0]:
            size = max(2 * self.fo.shape[0], self.n_rows + n_new)
            self.fo = np.concatenate([self.fo, np.zeros((size - self.fo.shape[0], N_F))])
            self.io = np.concatenate([self.io, np.zeros((size - self.io.shape[0], N_I), np.int64)])
            self.olist = np.concatenate([self.olist, np.zeros(size + 1 - self.olist.shape[0], np.int64)])
        return remap

    def compact(self) -> np.ndarray | None:
        """Drop closed rows, keeping the open ones in submission order (row order is fill priority). Returns
        the new row of each old one (-1: dropped; one more entry, -1, for "no row"), None if nothing moved."""
        n = self.n_rows
        keep = np.flatnonzero(self.io[:n, I_STATE] != FREE)
        if keep.size == n:
            return None
        remap = np.full(n + 1, -1, np.int64)  # remap[-1] stays -1 for "no parent"
        remap[keep] = np.arange(keep.size)
        self.fo[: keep.size] = self.fo[keep]
        self.io[: keep.size] = self.io[keep]
        parents = self.io[: keep.size, I_PARENT]
        self.io[: keep.size, I_PARENT] = remap[parents]
        count = self.olist[0]
        self.olist[1 : count + 1] = remap[self.olist[1 : count + 1]]
        self.meta = self.meta[keep]
        self.n_rows = int(keep.size)
        return remap

    def add_meta(self, rows: pl.DataFrame) -> None:
        """Text fields of rows just created (in row order)."""
        self.meta = pl.concat([self.meta, rows.select(META_FIELDS).cast(META_SCHEMA)])  # type: ignore[arg-type]

    def order_at(self, k: int) -> BrokerOrder:
        """A snapshot of row k as a BrokerOrder."""
        fo, io = self.fo[k], self.io[k]
        m = self.meta.row(k, named=True)
        filled = float(fo[F_FILLED])
        state = io[I_STATE]
        if state == HELD:
            status = pb.ORDER_STATUS_HELD
        elif state == WORKING:
            status = pb.ORDER_STATUS_PARTIALLY_FILLED if filled > 0 else pb.ORDER_STATUS_NEW
        else:
            status = pb.ORDER_STATUS_FILLED if filled > 0 and filled >= fo[F_QTY] - 1e-9 else pb.ORDER_STATUS_CANCELED
        side = pb.ORDER_SIDE_BUY if io[I_SIDE] > 0 else pb.ORDER_SIDE_SELL
        return BrokerOrder(
            client_order_id=m["client_order_id"], symbol=m["symbol"], side=side, quantity=float(fo[F_QTY]),
            order_type=int(io[I_TYPE]), time_in_force=m["time_in_force"], limit_price=float(fo[F_LIMIT]),
            stop_price=float(fo[F_STOP]), notional=m["notional"], parent_client_order_id=m["parent_client_order_id"],
            oco_group=m["oco_group"], submitted_time_ns=m["submitted_time_ns"], intent_id=m["intent_id"],
            correlation_id=m["correlation_id"], reason=m["reason"], strategy=m["strategy"],
            replaces_client_order_id=m["replaces_client_order_id"], status=status, filled_quantity=filled,
            average_fill_price=float(fo[F_VALUE] / filled) if filled else 0.0, broker=self.name,
            broker_order_id=f"sim-{io[I_SERIAL]}",
        )  # fmt: skip

    def open_rows(self, symbol: int | None = None) -> np.ndarray:
        """Rows of open orders in submission order."""
        rows = self.olist[1 : self.olist[0] + 1]
        return rows if symbol is None else rows[self.io[rows, I_SYM] == symbol]

    def row_of(self, client_order_id: str) -> int | None:
        column = self.meta["client_order_id"]
        for k in self.open_rows().tolist():
            if column[k] == client_order_id:
                return int(k)
        return None

    def group_id(self, name: str) -> int:
        """OCO group number of a named group; execution's kernel numbers its brackets by their entry's serial,
        so named groups count from far above."""
        return self.groups.setdefault(name, GROUP_NAMED + len(self.groups)) if name else -1

    def open_orders(self) -> list[BrokerOrder]:
        return [self.order_at(int(k)) for k in self.open_rows()]

    # -- the Broker interface ----------------------------------------------------------------------------
    def submit(self, order: BrokerOrder) -> BrokerReport:
        cid = order.client_order_id
        if cid in self.seen:
            raise DuplicateOrderError(f"client order id {cid} was already used")
        self.seen.add(cid)
        order.broker, order.updated_time_ns = self.name, order.submitted_time_ns
        problem = self._check(order)
        parent = self.row_of(order.parent_client_order_id) if order.parent_client_order_id else None
        if problem is None and order.parent_client_order_id and parent is None:
            problem = f"parent order {order.parent_client_order_id} is not open"
        if problem is not None:
            order.status, order.message = pb.ORDER_STATUS_REJECTED, problem
            return BrokerReport(updates=[_copy(order)])
        self.reserve(1)
        k = self.n_rows
        self.n_rows += 1
        create_order(self.fo, self.io, self.olist, self.active, k, self.symbol_index[order.symbol],
                     1 if order.side == pb.ORDER_SIDE_BUY else -1,
                     order.order_type, TIF_DAY if order.time_in_force == pb.TIME_IN_FORCE_DAY else TIF_GTC,
                     order.quantity, order.notional, order.limit_price, order.stop_price, order.submitted_time_ns,
                     -1 if parent is None else parent, self.group_id(order.oco_group), int(parent is not None),
                     self.serial)  # fmt: skip
        order.broker_order_id = f"sim-{self.serial}"
        self.serial += 1
        self.add_meta(pl.DataFrame([{name: getattr(order, name) for name in META_FIELDS}], schema=META_SCHEMA))
        if self.io[k, I_STATE] == WORKING:
            order.status = pb.ORDER_STATUS_NEW
            order.quantity = float(self.fo[k, F_QTY])
        else:
            order.status = pb.ORDER_STATUS_HELD
        return BrokerReport(updates=[_copy(order)])

    def _check(self, order: BrokerOrder) -> str | None:
        if order.symbol not in self.symbol_index:
            return f"unknown symbol {order.symbol!r}"
        if order.side not in (pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL):
            return "side must be BUY or SELL"
        if order.order_type not in _TYPES:
            return f"unsupported order type {order.order_type}"
        if order.time_in_force not in (pb.TIME_IN_FORCE_UNSPECIFIED, pb.TIME_IN_FORCE_DAY, pb.TIME_IN_FORCE_GTC):
            return f"unsupported time in force {order.time_in_force}"
        if order.parent_client_order_id:
            if order.quantity or order.notional:
                return "a bracket leg is sized by its parent: give neither quantity nor notional"
        elif order.notional:
            if order.quantity or not (math.isfinite(order.notional) and order.notional > 0):
                return f"notional {order.notional} must be a positive number, with quantity 0"
        elif not (math.isfinite(order.quantity) and order.quantity > 0):
            return f"quantity {order.quantity} must be a positive number"
        elif not self.fractional and order.quantity != math.floor(order.quantity):
            return f"quantity {order.quantity} is not a whole number of shares"
        needs_limit = order.order_type in (pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_STOP_LIMIT)
        needs_stop = order.order_type in (pb.ORDER_TYPE_STOP, pb.ORDER_TYPE_STOP_LIMIT)
        if needs_limit and not (math.isfinite(order.limit_price) and order.limit_price > 0):
            return f"limit price {order.limit_price} must be a positive number"
        if needs_stop and not (math.isfinite(order.stop_price) and order.stop_price > 0):
            return f"stop price {order.stop_price} must be a positive number"
        return None

    def cancel(self, client_order_id: str, time_ns: int) -> BrokerReport:
        k = self.row_of(client_order_id)
        if k is None:
            raise BrokerError(f"order {client_order_id} is not open")
        n = cancel_rows(np.array([k], np.int64), time_ns, self.fo, self.io, self.olist, self.active,
                        self._buffer(self.olist[0]), CANCEL_REQUESTED)  # fmt: skip
        return self.report(n)

    def replace(self, client_order_id: str, new: BrokerOrder) -> BrokerReport:
        k = self.row_of(client_order_id)
        if k is None:
            raise BrokerError(f"order {client_order_id} is not open")
        old = self.order_at(k)
        if old.filled_quantity > 0:
            raise BrokerError(f"order {client_order_id} has partly filled; cancel it and place a new one")
        if (new.symbol, new.side) != (old.symbol, old.side):
            raise BrokerError("a replacement keeps the symbol and side")
        if new.client_order_id in self.seen:
            raise DuplicateOrderError(f"client order id {new.client_order_id} was already used")
        new.parent_client_order_id, new.oco_group = old.parent_client_order_id, old.oco_group
        new.replaces_client_order_id = client_order_id
        if old.parent_client_order_id:
            new.quantity, new.notional = 0.0, 0.0  # a leg stays sized by its parent
        problem = self._check(new)
        if problem is not None:
            raise BrokerError(f"replacement of {client_order_id} refused: {problem}")
        # The new order takes the old one's row: its place in the queue, its legs and its parent.
        self.seen.add(new.client_order_id)
        fo, io = self.fo[k], self.io[k]
        if not old.parent_client_order_id:
            fo[F_QTY], fo[F_NOTIONAL] = new.quantity, new.notional
        fo[F_LIMIT], fo[F_STOP] = new.limit_price, new.stop_price
        io[I_TYPE] = new.order_type
        io[I_TIF] = TIF_DAY if new.time_in_force == pb.TIME_IN_FORCE_DAY else TIF_GTC
        io[I_AFTER] = max(int(io[I_AFTER]), new.submitted_time_ns)
        io[I_DAY], io[I_TRIGGERED], io[I_SERIAL] = -1, 0, self.serial
        new.broker, new.broker_order_id = self.name, f"sim-{self.serial}"
        self.serial += 1
        row = pl.DataFrame([{name: getattr(new, name) for name in META_FIELDS}], schema=META_SCHEMA)
        self.meta = pl.concat([self.meta[:k], row, self.meta[k + 1 :]])
        old.status, old.updated_time_ns = pb.ORDER_STATUS_REPLACED, new.submitted_time_ns
        old.message = f"replaced by {new.client_order_id}"
        new.status, new.updated_time_ns = self.order_at(k).status, new.submitted_time_ns
        new.quantity = float(fo[F_QTY])
        return BrokerReport(updates=[old, _copy(new)])

    def on_bars(self, bars: BarBlock) -> BrokerReport:
        report = BrokerReport()
        n = len(bars)
        if not n:
            return report
        if self.olist[0] == 0:
            if self.params[P_MODEL] != 0:  # nothing working: only the slippage models' state moves on
                _advance_state(bars.symbol, bars.high, bars.low, bars.close, self.state, self.params)
            return report
        start = 0
        while start < n:
            events = self._buffer(3 * int(self.olist[0]) + 3)
            self._fills[0] = 0
            start, n_events = _match(bars.time, bars.symbol, bars.open, bars.high, bars.low, bars.close, bars.volume,
                                     self.fo, self.io, self.olist, self.active, self.state, self.params, events,
                                     self._fills, start)  # fmt: skip
            part = self.report(n_events)
            report.fills.extend(part.fills)
            report.updates.extend(part.updates)
        return report

    def _buffer(self, per_bar: int) -> np.ndarray:
        if self.events.shape[0] < 4 * per_bar + 8:
            self.events = np.zeros((4 * per_bar + 8, N_E))
            self._fills = np.zeros(4 * per_bar + 9, np.int64)
        return self.events

    def report(self, n_events: int) -> BrokerReport:
        """The first `n_events` kernel events as fills and order snapshots."""
        report = BrokerReport()
        for e in range(n_events):
            ev = self.events[e]
            kind, k, t = int(ev[E_KIND]), int(ev[E_SLOT]), int(ev[E_TIME])
            order = self.order_at(k)
            order.quantity, order.filled_quantity, order.average_fill_price = (
                float(ev[E_ORDER_QTY]), float(ev[E_FILLED]), float(ev[E_AVG]))  # fmt: skip
            order.status, order.updated_time_ns = event_status(kind, order.filled_quantity, order.quantity), t
            order.message = event_message(kind, float(ev[E_AUX]), order.notional)
            report.updates.append(order)
            if kind == EV_FILL:
                sign = 1.0 if order.side == pb.ORDER_SIDE_BUY else -1.0
                report.fills.append(FillReport(order.client_order_id, order.symbol, sign * float(ev[E_QTY]),
                                               float(ev[E_PRICE]), float(ev[E_COMMISSION]), float(ev[E_SLIPPAGE]), t))  # fmt: skip
        return report


def event_messages(kind: np.ndarray, aux: np.ndarray, notional: np.ndarray) -> np.ndarray:
    """The order status message of each venue event (object array; "" for none): why an order was
    cancelled, that a DAY order's day ended, why a notional order was rejected (`aux`: the price)."""
    text = np.full(kind.shape[0], "", dtype=object)
    if not (kind >= EV_CANCELED).any():
        return text
    cancelled = kind == EV_CANCELED
    text[cancelled] = "cancelled"
    for code, words in CANCEL_TEXT.items():
        text[cancelled & (aux == code)] = words
    text[kind == EV_EXPIRED] = "the trading day ended"
    text[kind == EV_REPLACED] = "repriced: not filled within the order timeout"
    for e in np.flatnonzero(kind == EV_REJECTED):  # rare: a notional too small for one share
        text[e] = f"notional {notional[e]:.2f} buys no share at {aux[e]:.4f}"
    return text


def event_message(kind: int, aux: float, notional: float) -> str:
    return str(event_messages(np.array([kind]), np.array([aux]), np.array([notional]))[0])


def _copy(order: BrokerOrder) -> BrokerOrder:
    return BrokerOrder(**{name: getattr(order, name) for name in BrokerOrder.__slots__})  # type: ignore[attr-defined]


@njit(cache=True)
def cancel_rows(rows, t, fo, io, olist, active, events, why):  # noqa: ANN001
    """Each open row ends CANCELED for `why` (a CANCEL_ code; an unfilled entry takes its legs along)."""
    n = 0
    for k in rows:
        if io[k, I_STATE] != FREE:
            n = close_order(k, t, EV_CANCELED, why, fo, io, olist, active, events, n)
    compact_open(olist, io)
    return n
