"""Execution: turns targets into orders, books fills, publishes orders, fills and the portfolio.

Consumes: `bar`, `risk_decision` (targets), `order_intent` (protective legs from exit), all joined by bar
time; `control_command` (on arrival).
Produces: `order` (one event per status change), `fill`, `position_snapshot` (when a fill changes a
position, and every held position at the end of each step), `account_snapshot` (after every bar time).
Hot state: `orders` by client order id, `positions` by symbol (only in sessions that keep state).

A step holds every bar time up to its watermark. Execution walks them in time order in one numba pass
(`_execute`): at each bar time the simulated venue fills what it can at that time's bars (the rules are in
`utp.core.broker`), the books take the fills and mark the closes, one account row is written, and then the
decisions of that bar time are placed against the portfolio as it is then. From a target (a signed share
of equity) it makes the order:

* a target on the side already held (or already being bought/sold) does nothing, unless it carries a
  `rebalance_band` (the weighting methods of portfolio construction): then a held position off its target
  by more than that share of equity is resized by one market order for the difference (a reduction in
  shares known at placement, never more than held), after the bar time's closes and reductions; its
  working orders go and the new decision's legs guard the whole position (seeded with what is held, and
  shrunk by a reduction's fills, so a stop never sells more than the position);
* otherwise the symbol's open orders (resting exits included) are cancelled; a position on the other side
  is closed with a market order; an entry is a market order for `target x equity` worth of shares
  (a notional order, sized by the broker at its fill price), capped for buys by the cash left once the
  buys already placed at that bar time are paid for (sales placed at that time count at their last
  close). Closing orders are placed before entries, so an entry can count on what its bar's sales free.
* exit's protective legs go in with their entry as a bracket (held until it fills, one-cancels-other).

The client order id is a hash of the intent id, so an intent delivered twice (a retry, a replay after a
crash) maps to the order that already exists and is never placed again. Nothing is placed while trading is
halted or execution is not approved. Per bar time the work is the same whether a step holds one bar time
(live) or a million (a backtest): batch size never changes a decision.

Around those decisions, in the same pass:
* the portfolio risk rules (`utp.core.risk_guard`): after each bar time is marked, the kill switch, the drawdown
  liquidation, trailing stops and the maximum holding time; before each entry, the loss, throttle, exposure,
  position-count, short-share, sector and CVaR limits (capped or refused). Each publishes a `risk_event`;
* smart execution (`execution.entry_order` etc.): limit entries at an adaptive offset from the close, the order
  timeout that accepts a mostly filled entry or reprices (replaces) or cancels it, and entries sliced over bar
  times, each slice a bracket of its own.

The kernel fills orders at the simulated venue (backtests and paper sessions), or, with an external venue (a
real broker, `utp.core.venue`), leaves the filling to the broker: what the kernel created or cancelled is sent,
and what the broker reports is applied to the same book and portfolio before the next bar time. The
decisions come from this one kernel either way; the broker's reports are the order and fill events then.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from utp.core.broker import (
    cancel_rows,
    E_AUX,
    E_AVG,
    E_COMMISSION,
    E_FILLED,
    E_KIND,
    E_ORDER_QTY,
    E_PRICE,
    E_QTY,
    E_ROLE,
    E_SLIPPAGE,
    E_SLOT,
    E_TIME,
    EV_CANCELED,
    EV_FILL,
    EV_HELD,
    EV_NEW,
    EV_REJECTED,
    EV_REPLACED,
    EV_SKIPPED,
    F_FILLED,
    F_LIMIT,
    F_NOTIONAL,
    F_QTY,
    F_STOP,
    F_TIMEOUT,
    F_VALUE,
    F_REPRICES,
    CANCEL_ACCEPTED,
    CANCEL_OPERATOR,
    CANCEL_TARGET,
    CANCEL_TIMEOUT,
    S_PREV_HIGH,
    S_PREV_LOW,
    S_SPREAD,
    FREE,
    I_LEG,
    I_PARENT,
    I_SERIAL,
    I_SIDE,
    I_STATE,
    I_SYM,
    I_TIF as I_TIF_COL,
    I_TYPE,
    N_E,
    P_FRACTIONAL,
    TIF_DAY,
    TIF_GTC,
    WORKING,
    BarBlock,
    BrokerOrder,
    BrokerReport,
    FillReport,
    META_FIELDS,
    META_SCHEMA,
    SimulatedBroker,
    close_order,
    compact_open,
    create_order,
    event_messages,
    match_bar,
    order_event,
    update_symbol_state,
)
from utp.core.config import ExecutionConfig
from utp.core.kernels import entry
from utp.core.venue import ExternalVenue, fill_frame, order_frame
from utp.core.controls import ControlState
from utp.core.columns import flags, formatted, take, take_rows
from utp.core.ids import client_order_id
from utp.core.kinds import HEADER_COLUMNS, KINDS, TIME
from utp.core.portfolio import (
    A_CASH,
    A_LAST_EQUITY,
    ACCOUNT_COLUMNS,
    AVG,
    BORROW,
    COMMISSIONS,
    LAST,
    Q,
    R_TIME,
    REALIZED,
    Portfolio,
    accrue_borrow,
    account_row,
    book_fill,
)
from utp.core.risk_guard import (  # noqa: I001
    A_CAP,
    A_EXIT,
    A_KILL,
    A_LIQUIDATE,
    A_REJECT,
    G_KILLED,
    G_NO_ENTRIES,
    G_PLACED_NEW,
    G_PLACED_VALUE,
    GP_DRAWDOWN,
    GP_MAX_HOLD_NS,
    GP_TRAIL,
    GS_BEST,
    GS_EXITING,
    GS_OPENED,
    GS_SIDE,
    MARK_KILL,
    MARK_LIQUIDATE,
    MARK_OK,
    OK,
    R_DRAWDOWN,
    R_HOLD,
    R_KILL,
    R_TRAIL,
    RiskGuard,
    guard_entry,
    guard_event,
    guard_fill,
    guard_mark,
    guard_order,
    risk_message,
)
from utp.core.runtime import Engine, EngineContext, Input, InputMode
from utp.core.universe import Universe
from utp.core.approvals import ApprovalQueue, Verdict
from utp.storage.state import APPROVALS, ORDERS, POSITIONS
from utp.v1 import events_pb2 as pb

# E_ROLE of an order created by execution: what it is for (E_AUX: the decision's or leg's index; for a risk rule's
# close, the rule's reason code).
ROLE_CLOSE, ROLE_ENTRY, ROLE_LEG, ROLE_RISK, ROLE_REPRICE, ROLE_SLICE, ROLE_SLICE_LEG = 1, 2, 3, 4, 5, 6, 7
# The event kind of a risk rule's event (after the broker's kinds): see `utp.core.risk_guard.guard_event`.
EV_RISK = EV_REPLACED + 1
# Smart execution's parameters: limit entries (0/1), the offset's parts, the order timeout, the fill ratio accepted at
# the timeout, the reprices allowed, the slice size.
XP_LIMIT, XP_OFFSET, XP_SPREAD_W, XP_VOL_W, XP_TIMEOUT_NS, XP_MIN_FILL, XP_MAX_REPRICES, XP_SLICE, N_XP = range(9)
# Per symbol, an entry going in slices: notional left, side, slices placed, its legs' take-profit limit and
# stop-loss stop (0: none), their time in force, the first slice's row (within its bar time).
SL_LEFT, SL_SIDE, SL_COUNT, SL_TP, SL_SL, SL_TIF, SL_ROOT, SL_LEG_TIF, N_SL = range(9)
# The kernel's cursor: where it got to (bars, decisions, legs), the order table's rows in use, the next
# serial; after a return, what the next bar time needs (events, order rows).
C_BAR, C_DEC, C_LEG, C_ROWS, C_SERIAL, C_NEED_EVENTS, C_NEED_ROWS, C_GROUP, N_C = range(9)
DONE, BUFFERS_FULL, TABLE_FULL = 0, 1, 2
# Columns of a position snapshot row.
SNAP_COLUMNS = (Q, AVG, LAST, REALIZED, COMMISSIONS, BORROW)
_STATUS_OF_KIND = np.array([pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_HELD, pb.ORDER_STATUS_FILLED, pb.ORDER_STATUS_NEW,
                            pb.ORDER_STATUS_CANCELED, pb.ORDER_STATUS_EXPIRED, pb.ORDER_STATUS_REJECTED, 0,
                            pb.ORDER_STATUS_REPLACED, 0], np.int32)  # fmt: skip
_TOKENS = pl.Series([pb.OrderStatus.Name(v).removeprefix("ORDER_STATUS_").lower() if v in pb.OrderStatus.values() else ""
                     for v in range(max(pb.OrderStatus.values()) + 1)], dtype=pl.Utf8)  # fmt: skip


@njit(cache=True, inline="always")
def _sign(x):  # noqa: ANN001
    return 1 if x > 0.0 else (-1 if x < 0.0 else 0)


@njit(cache=True, inline="always")
def _place_target(d, t, s, target, band, tif, equity, cash, fo, io, olist, active, params, pos, d_row, d_seed, events, n, cursor, acct, gv, gs, gring, grets, gp, xp, sl, state):  # noqa: ANN001, PLR0913
    """Place what decision d (target share of equity for symbol s, at time t) needs. Returns (events, cash)."""
    held = pos[s, Q]
    if band > 0.0 and held != 0.0 and _sign(target) == _sign(held):
        return _resize(d, t, s, target, band, tif, equity, cash, fo, io, olist, active, params, pos, d_row, d_seed,
                       events, n, cursor, acct, gv, gs, gring, grets, gp)  # fmt: skip
    has_open = False
    entering = 0
    for j in range(1, olist[0] + 1):
        k = olist[j]
        if io[k, I_STATE] != FREE and io[k, I_SYM] == s:
            has_open = True
            if entering == 0 and io[k, I_PARENT] < 0 and io[k, I_LEG] == 0:
                entering = io[k, I_SIDE]
    side_now = _sign(held) if held != 0.0 else entering
    if _sign(target) == side_now or (target == 0.0 and held == 0.0 and not has_open):
        return n, cash  # already there (or on the way): no rebalancing
    sl[s, SL_LEFT] = 0.0  # a new target ends the slices of an earlier one
    if has_open:
        for j in range(1, olist[0] + 1):
            k = olist[j]
            if io[k, I_STATE] != FREE and io[k, I_SYM] == s:
                n = close_order(k, t, EV_CANCELED, 3.0, fo, io, olist, active, events, n)
        compact_open(olist, io)
    if held != 0.0:
        k = cursor[C_ROWS]
        cursor[C_ROWS] += 1
        create_order(fo, io, olist, active, k, s, -_sign(held), 1, tif, abs(held), 0.0, 0.0, 0.0, t, -1, -1, 0,
                     cursor[C_SERIAL])  # fmt: skip
        cursor[C_SERIAL] += 1
        n = order_event(events, n, EV_NEW, k, t, fo, 0.0, 0.0, 0.0, 0.0, d, ROLE_CLOSE)
        guard_order(t, s, gv, gs, gring)
        cash += held * pos[s, LAST]
    if target != 0.0:
        notional = abs(target) * equity
        if target > 0.0:
            notional = notional if notional < cash else cash
        if notional > 0.0:
            reason, value, threshold, allowed = guard_entry(t, s, _sign(target), notional, equity, pos, acct, gv, gs,
                                                            gring, grets, gp)  # fmt: skip
            if reason != OK:
                n = guard_event(events, n, t, s, reason, A_CAP if allowed > 0.0 else A_REJECT, value, threshold, d,
                                EV_RISK)  # fmt: skip
                if allowed <= 0.0:
                    return n, cash
                notional = allowed
        if target > 0.0:
            cash -= notional if notional > 0.0 else 0.0
        if notional > 0.0:
            if xp[XP_SLICE] > 0.0 and notional > xp[XP_SLICE]:  # the rest goes in later slices, one per bar time
                sl[s, SL_LEFT], sl[s, SL_SIDE], sl[s, SL_COUNT] = notional - xp[XP_SLICE], _sign(target), 0.0
                sl[s, SL_TP], sl[s, SL_SL], sl[s, SL_TIF] = 0.0, 0.0, tif
                if target > 0.0:
                    cash += notional - xp[XP_SLICE]
                notional = xp[XP_SLICE]
            k = cursor[C_ROWS]
            cursor[C_ROWS] += 1
            sl[s, SL_ROOT] = k
            _entry_order(k, t, s, _sign(target), tif, notional, fo, io, olist, active, pos, state, xp, cursor)
            d_row[d] = k
            n = order_event(events, n, EV_NEW, k, t, fo, 0.0, 0.0, 0.0, 0.0, d, ROLE_ENTRY)
            guard_order(t, s, gv, gs, gring)
            gv[G_PLACED_VALUE] += notional
            gv[G_PLACED_NEW] += 1.0 if held == 0.0 or _sign(held) != _sign(target) else 0.0
        else:  # no cash left for it
            e = events[n]
            e[:] = 0.0
            e[E_KIND], e[E_SLOT], e[E_TIME], e[E_AUX], e[E_ROLE] = EV_SKIPPED, -1.0, t, d, ROLE_ENTRY
            n += 1
    return n, cash


@njit(cache=True, inline="always")
def _resize(d, t, s, target, band, tif, equity, cash, fo, io, olist, active, params, pos, d_row, d_seed, events, n, cursor, acct, gv, gs, gring, grets, gp):  # noqa: ANN001, PLR0913
    """Bring a held position to its target when it is off by more than `band` of equity: the symbol's working
    orders go (an earlier resize, the protective legs) and one market order trades the difference; the
    decision's legs then guard the whole position (seeded with what is held, see `_execute`)."""
    held, last = pos[s, Q], pos[s, LAST]
    diff = target * equity - held * last
    if abs(diff) <= band * equity or last <= 0.0:
        return n, cash
    side = _sign(diff)
    qty, notional = 0.0, 0.0
    if side == _sign(held):  # add: a notional order, sized at its fill like an entry, within the cash left
        notional = abs(diff) if abs(diff) < cash else cash
        if notional <= 0.0:
            return n, cash
        reason, value, threshold, allowed = guard_entry(t, s, side, notional, equity, pos, acct, gv, gs, gring, grets,
                                                        gp)  # fmt: skip
        if reason != OK:
            n = guard_event(events, n, t, s, reason, A_CAP if allowed > 0.0 else A_REJECT, value, threshold, d, EV_RISK)
            if allowed <= 0.0:
                return n, cash
            notional = allowed
        gv[G_PLACED_VALUE] += notional
        cash -= notional
    else:  # reduce: shares known now, never more than held (a gap can not turn it into a reversal)
        qty = abs(diff) / last
        if params[P_FRACTIONAL] == 0.0:
            qty = math.floor(qty)
        qty = qty if qty < abs(held) else abs(held)
        if qty <= 0.0:
            return n, cash
        cash += qty * last
    for j in range(1, olist[0] + 1):
        k = olist[j]
        if io[k, I_STATE] != FREE and io[k, I_SYM] == s:
            n = close_order(k, t, EV_CANCELED, 3.0, fo, io, olist, active, events, n)
    compact_open(olist, io)
    k = cursor[C_ROWS]
    cursor[C_ROWS] += 1
    create_order(fo, io, olist, active, k, s, side, 1, tif, qty, notional, 0.0, 0.0, t, -1, -1, 0, cursor[C_SERIAL])
    cursor[C_SERIAL] += 1
    d_row[d] = k
    d_seed[d] = abs(held)
    n = order_event(events, n, EV_NEW, k, t, fo, 0.0, 0.0, 0.0, 0.0, d, ROLE_ENTRY)
    guard_order(t, s, gv, gs, gring)
    return n, cash


@njit(cache=True, inline="always")
def _limit_price(s, side, pos, state, xp):  # noqa: ANN001
    """A limit entry's price: the last close moved towards paying more by the fixed offset, half the estimated spread
    and a share of the last bar's range (seed 004's adaptive offset)."""
    close = pos[s, LAST]
    offset = xp[XP_OFFSET] + xp[XP_SPREAD_W] * 0.5 * state[s, S_SPREAD]
    if close > 0.0 and state[s, S_PREV_HIGH] > 0.0:
        offset += xp[XP_VOL_W] * (state[s, S_PREV_HIGH] - state[s, S_PREV_LOW]) / close
    return close * (1.0 + side * offset)


@njit(cache=True, inline="always")
def _entry_order(k, t, s, side, tif, notional, fo, io, olist, active, pos, state, xp, cursor):  # noqa: ANN001
    """Create row k: an entry of `notional` (sized at its fill), a market order or a limit with its timeout."""
    if xp[XP_LIMIT] != 0.0 and pos[s, LAST] > 0.0:
        create_order(fo, io, olist, active, k, s, side, 2, tif, 0.0, notional, _limit_price(s, side, pos, state, xp),
                     0.0, t, -1, -1, 0, cursor[C_SERIAL])  # fmt: skip
        if xp[XP_TIMEOUT_NS] > 0.0:
            fo[k, F_TIMEOUT] = t + xp[XP_TIMEOUT_NS]
    else:
        create_order(fo, io, olist, active, k, s, side, 1, tif, 0.0, notional, 0.0, 0.0, t, -1, -1, 0, cursor[C_SERIAL])
    cursor[C_SERIAL] += 1


@njit(cache=True, inline="always")
def _timeouts(t, allowed, fo, io, olist, active, pos, state, xp, events, n, cursor):  # noqa: ANN001
    """Entries whose order timeout ran out at t: accepted when enough filled, else repriced (if trading is allowed
    and reprices are left: a new limit at the latest close takes over the rest and the legs), else cancelled."""
    for j in range(1, olist[0] + 1):
        k = olist[j]
        if io[k, I_STATE] != WORKING or fo[k, F_TIMEOUT] <= 0.0 or t < fo[k, F_TIMEOUT]:
            continue
        qty, filled = fo[k, F_QTY], fo[k, F_FILLED]
        s, side = io[k, I_SYM], io[k, I_SIDE]
        if filled > 0.0 and filled >= xp[XP_MIN_FILL] * qty - 1e-9:
            n = close_order(k, t, EV_CANCELED, CANCEL_ACCEPTED, fo, io, olist, active, events, n)
        elif allowed and fo[k, F_REPRICES] < xp[XP_MAX_REPRICES] and pos[s, LAST] > 0.0:
            r = cursor[C_ROWS]
            cursor[C_ROWS] += 1
            left = qty - filled if qty > 0.0 else 0.0
            notional = fo[k, F_NOTIONAL] - fo[k, F_VALUE] if qty == 0.0 else 0.0
            create_order(fo, io, olist, active, r, s, side, io[k, I_TYPE], io[k, I_TIF_COL], left, notional,
                         _limit_price(s, side, pos, state, xp), 0.0, t, -1, -1, 0, cursor[C_SERIAL])  # fmt: skip
            cursor[C_SERIAL] += 1
            fo[r, F_REPRICES] = fo[k, F_REPRICES] + 1.0
            fo[r, F_TIMEOUT] = t + xp[XP_TIMEOUT_NS]
            for jc in range(1, olist[0] + 1):  # its legs follow the new order (their OCO group stays)
                c = olist[jc]
                if io[c, I_PARENT] == k and io[c, I_STATE] != FREE:
                    io[c, I_PARENT] = r
            io[k, I_STATE] = FREE
            active[s] -= 1
            n = order_event(events, n, EV_REPLACED, k, t, fo, 0.0, 0.0, 0.0, 0.0, r, 0.0)
            n = order_event(events, n, EV_NEW, r, t, fo, 0.0, 0.0, 0.0, 0.0, k, ROLE_REPRICE)
        else:
            n = close_order(k, t, EV_CANCELED, CANCEL_TIMEOUT, fo, io, olist, active, events, n)
    compact_open(olist, io)
    return n


@njit(cache=True, inline="always")
def _next_slices(t, equity, cash, fo, io, olist, active, pos, state, xp, sl, events, n, cursor, acct, gv, gs, gring, grets, gp):  # noqa: ANN001, PLR0913
    """The next slice of each sliced entry whose previous slice is done, with its own copy of the legs."""
    for s in range(sl.shape[0]):
        if sl[s, SL_LEFT] <= 0.0:
            continue
        busy = False
        for j in range(1, olist[0] + 1):
            k = olist[j]
            if io[k, I_STATE] != FREE and io[k, I_SYM] == s and io[k, I_LEG] == 0:
                busy = True
        if busy:
            continue
        side = int(sl[s, SL_SIDE])
        notional = sl[s, SL_LEFT] if sl[s, SL_LEFT] < xp[XP_SLICE] else xp[XP_SLICE]
        if side > 0 and notional > cash:
            notional = cash
        if notional <= 0.0:
            sl[s, SL_LEFT] = 0.0
            continue
        reason, value, threshold, allowed = guard_entry(t, s, side, notional, equity, pos, acct, gv, gs, gring, grets,
                                                        gp)  # fmt: skip
        if reason != OK:
            n = guard_event(events, n, t, s, reason, A_CAP if allowed > 0.0 else A_REJECT, value, threshold, -1,
                            EV_RISK)  # fmt: skip
            if allowed <= 0.0:
                sl[s, SL_LEFT] = 0.0
                continue
            notional = allowed
        sl[s, SL_LEFT] -= notional
        sl[s, SL_COUNT] += 1.0
        if side > 0:
            cash -= notional
        k = cursor[C_ROWS]
        cursor[C_ROWS] += 1
        _entry_order(k, t, s, side, int(sl[s, SL_TIF]), notional, fo, io, olist, active, pos, state, xp, cursor)
        n = order_event(events, n, EV_NEW, k, t, fo, 0.0, 0.0, 0.0, 0.0, sl[s, SL_COUNT], ROLE_SLICE)
        guard_order(t, s, gv, gs, gring)
        gv[G_PLACED_VALUE] += notional
        for leg in range(2):
            price = sl[s, SL_TP] if leg == 0 else sl[s, SL_SL]
            if price <= 0.0:
                continue
            row = cursor[C_ROWS]
            cursor[C_ROWS] += 1
            create_order(fo, io, olist, active, row, s, -side, 2 if leg == 0 else 3, int(sl[s, SL_LEG_TIF]), 0.0, 0.0,
                         price if leg == 0 else 0.0, price if leg == 1 else 0.0, t, k, io[k, I_SERIAL], 1,
                         cursor[C_SERIAL])  # fmt: skip
            cursor[C_SERIAL] += 1
            n = order_event(events, n, EV_HELD, row, t, fo, 0.0, 0.0, 0.0, 0.0, sl[s, SL_COUNT], ROLE_SLICE_LEG)
    return n, cash


@njit(cache=True, inline="always")
def _risk_close(t, s, reason, tif, fo, io, olist, active, pos, events, n, cursor):  # noqa: ANN001
    """A risk rule closes symbol s's position: its working orders go and one market order closes what is held."""
    for j in range(1, olist[0] + 1):
        k = olist[j]
        if io[k, I_STATE] != FREE and io[k, I_SYM] == s:
            n = close_order(k, t, EV_CANCELED, 3.0, fo, io, olist, active, events, n)
    compact_open(olist, io)
    held = pos[s, Q]
    k = cursor[C_ROWS]
    cursor[C_ROWS] += 1
    create_order(fo, io, olist, active, k, s, -_sign(held), 1, tif, abs(held), 0.0, 0.0, 0.0, t, -1, -1, 0,
                 cursor[C_SERIAL])  # fmt: skip
    cursor[C_SERIAL] += 1
    return order_event(events, n, EV_NEW, k, t, fo, 0.0, 0.0, 0.0, 0.0, reason, ROLE_RISK)


@entry
@njit(cache=True)
def _execute(  # noqa: PLR0912, PLR0913, PLR0915
    b_time, b_sym, b_open, b_high, b_low, b_close, b_volume,  # noqa: ANN001
    d_time, d_sym, d_target, d_band, d_tif,  # noqa: ANN001
    l_time, l_parent, l_side, l_type, l_tif, l_limit, l_stop,  # noqa: ANN001
    fo, io, olist, active, state, params, pos, acct, borrow_rate, allowed,  # noqa: ANN001
    d_row, d_seed, events, fills, rows, snaps, mark, cursor,  # noqa: ANN001
    gv, gs, gring, grets, gp, exits, external, xp, sl,  # noqa: ANN001
):
    """Bars, decisions and legs of a step (each sorted by time) through the venue and the books, from
    `cursor` on. Writes order events, one account row per bar time and position snapshot rows (time, symbol,
    SNAP_COLUMNS...). Stops before a bar time whose events or new orders might not fit, and says which
    (BUFFERS_FULL, TABLE_FULL; `cursor` says how much it needs); DONE at the end.
    Returns (status, events, account rows, snapshot rows)."""
    n_bars, n_dec, n_leg = b_time.shape[0], d_time.shape[0], l_time.shape[0]
    i, d, lg = cursor[C_BAR], cursor[C_DEC], cursor[C_LEG]
    n, r, ns = 0, 0, 0
    table_size = fo.shape[0]
    # Scratch counts per symbol for sizing a bar time (zeroed again after each use).
    bars_of = np.zeros(pos.shape[0], np.int64)
    open_of = np.zeros(pos.shape[0], np.int64)
    dec_of = np.zeros(pos.shape[0], np.int64)
    while i < n_bars or d < n_dec or lg < n_leg:
        # The next bar time (decisions and legs after the last bar are placed at their own times).
        j = i
        if i < n_bars:
            t = b_time[i]
            while j < n_bars and b_time[j] == t:
                j += 1
        else:
            t = d_time[n_dec - 1] if n_dec else 0
            if n_leg and l_time[n_leg - 1] > t:
                t = l_time[n_leg - 1]
        dd = d
        while dd < n_dec and d_time[dd] <= t:
            dd += 1
        ll = lg
        while ll < n_leg and l_time[ll] <= t:
            ll += 1
        n_open = olist[0]
        # An order moves only on a bar of its own symbol, and a decision cancels only its own symbol's orders:
        # room for the open orders of the symbols at this time (once per bar or decision of theirs), not for
        # every open order on every bar and decision. That grew the event buffer with bars x open orders in a
        # long live session, and with decisions x (open orders + new orders) when hundreds of entries came at
        # one time (past the buffer's largest size: a step that never fitted).
        for b in range(i, j):
            bars_of[b_sym[b]] += 1
        for o in range(1, n_open + 1):
            open_of[io[olist[o], I_SYM]] += 1
        for k in range(d, dd):
            dec_of[d_sym[k]] += 1
        at_t = 0
        for o in range(1, n_open + 1):
            at_t += bars_of[io[olist[o], I_SYM]]
        # A decision cancels what its symbol has open: what was open before, what earlier decisions for it
        # placed this time (a close and an entry each), a risk close and a slice with its two legs; then
        # it places a close and an entry, and may write a risk event or a skip.
        at_d = 0
        for k in range(d, dd):
            at_d += open_of[d_sym[k]] + 2 * dec_of[d_sym[k]] + 8
        for b in range(i, j):
            bars_of[b_sym[b]] = 0
        for o in range(1, n_open + 1):
            open_of[io[olist[o], I_SYM]] = 0
        for k in range(d, dd):
            dec_of[d_sym[k]] = 0
        need_events = 3 * at_t + 3 * (j - i) + at_d + (ll - lg)
        need_rows = 2 * (dd - d) + (ll - lg)
        if j > i and (gp[GP_DRAWDOWN] > 0.0 or gp[GP_TRAIL] > 0.0 or gp[GP_MAX_HOLD_NS] > 0.0):  # closing them all
            n_held = 0
            for s in range(pos.shape[0]):
                if pos[s, Q] != 0.0:
                    n_held += 1
            need_rows += n_held
            need_events += n_open + 2 * n_held + 1
        need_events += 2 * (j - i)  # a risk event per fill
        if j > i and (xp[XP_TIMEOUT_NS] > 0.0 or xp[XP_SLICE] > 0.0):  # reprices; slices with their two legs
            need_rows += n_open + 3 * sl.shape[0]
            need_events += 2 * n_open + 4 * sl.shape[0]
        if cursor[C_ROWS] + need_rows > table_size:
            cursor[C_NEED_ROWS] = need_rows
            cursor[C_BAR], cursor[C_DEC], cursor[C_LEG] = i, d, lg
            return TABLE_FULL, n, r, ns
        if n + need_events > events.shape[0] or r >= rows.shape[0] or ns + (j - i) > snaps.shape[0]:
            cursor[C_NEED_EVENTS] = need_events
            cursor[C_BAR], cursor[C_DEC], cursor[C_LEG] = i, d, lg
            return BUFFERS_FULL, n, r, ns
        marked = j > i  # bars at this time (after the block below, i has moved on to j)
        if marked:
            cursor[C_GROUP] += 1
            group = cursor[C_GROUP]
            accrue_borrow(pos, acct, t, borrow_rate)
            for b in range(i, j):
                s = b_sym[b]
                fills[0] = 0
                if not external:  # an external venue reports its fills itself (`utp.core.venue`)
                    n = match_bar(t, s, b_open[b], b_high[b], b_low[b], b_volume[b], fo, io, olist, active, state,
                                  params, events, n, fills)  # fmt: skip
                n_fills = fills[0]
                for f in range(1, n_fills + 1):
                    e = fills[f]
                    k = int(events[e, E_SLOT])
                    realized = pos[s, REALIZED]
                    book_fill(pos, acct, s, events[e, E_QTY] * io[k, I_SIDE], events[e, E_PRICE],
                              events[e, E_COMMISSION])  # fmt: skip
                    mark[s] = group
                    reason, action, value, threshold = guard_fill(t, s, pos[s, REALIZED] - realized,
                                                                  events[e, E_QTY] * events[e, E_PRICE],
                                                                  events[e, E_SLIPPAGE], gv, gs, gp)  # fmt: skip
                    if reason != OK:
                        n = guard_event(events, n, t, s, reason, action, value, threshold, -1, EV_RISK)
                update_symbol_state(s, b_high[b], b_low[b], b_close[b], state, params)
                pos[s, LAST] = b_close[b]
            equity = account_row(pos, acct, t, rows[r])
            r += 1
            verdict, value, threshold = guard_mark(t, equity, pos, acct, gv, gs, grets, gp, b_sym, b_close, i, j,
                                                   exits)  # fmt: skip
            for b in range(i, j):
                s = b_sym[b]
                if mark[s] == group:
                    mark[s] = -1
                    snap = snaps[ns]
                    snap[0], snap[1] = t, s
                    snap[2], snap[3], snap[4] = pos[s, Q], pos[s, AVG], pos[s, LAST]
                    snap[5], snap[6], snap[7] = pos[s, REALIZED], pos[s, COMMISSIONS], pos[s, BORROW]
                    ns += 1
            i = j
        else:
            equity = acct[A_CASH]
            for s in range(pos.shape[0]):
                equity += pos[s, Q] * pos[s, LAST]
            verdict, value, threshold = MARK_KILL if gv[G_KILLED] != 0.0 else MARK_OK, 0.0, 0.0
            exits[0] = 0
        gv[G_PLACED_VALUE], gv[G_PLACED_NEW], gv[G_NO_ENTRIES] = 0.0, 0.0, 0.0
        if xp[XP_TIMEOUT_NS] > 0.0 and marked:
            n = _timeouts(t, allowed and verdict == MARK_OK, fo, io, olist, active, pos, state, xp, events, n, cursor)
        if allowed and verdict == MARK_KILL:
            if value > 0.0:  # it has just tripped: say so once
                n = guard_event(events, n, t, -1, R_KILL, A_KILL, value, threshold, -1, EV_RISK)
        elif allowed:
            if verdict == MARK_LIQUIDATE:
                gv[G_NO_ENTRIES] = 1.0
                for s in range(pos.shape[0]):
                    if pos[s, Q] != 0.0:
                        if gv[G_NO_ENTRIES] == 1.0:  # something to liquidate (a drawdown realised already is not)
                            n = guard_event(events, n, t, -1, R_DRAWDOWN, A_LIQUIDATE, value, threshold, -1, EV_RISK)
                            gv[G_NO_ENTRIES] = 2.0
                        n = _risk_close(t, s, R_DRAWDOWN, TIF_GTC, fo, io, olist, active, pos, events, n, cursor)
                        sl[s, SL_LEFT] = 0.0
                        gs[s, GS_EXITING] = 1.0 if pos[s, Q] > 0.0 else -1.0
            else:
                for x in range(1, exits[0] + 1):
                    s = exits[x]
                    if s >= 0:
                        n = guard_event(events, n, t, s, R_TRAIL, A_EXIT, (gs[s, GS_BEST] - pos[s, LAST])
                                        / gs[s, GS_BEST] * gs[s, GS_SIDE], gp[GP_TRAIL], -1, EV_RISK)  # fmt: skip
                        n = _risk_close(t, s, R_TRAIL, TIF_GTC, fo, io, olist, active, pos, events, n, cursor)
                    else:  # held too long (the exit monitor)
                        s = -s - 1
                        n = guard_event(events, n, t, s, R_HOLD, A_EXIT, (t - gs[s, GS_OPENED]) / 3.6e12,
                                        gp[GP_MAX_HOLD_NS] / 3.6e12, -1, EV_RISK)  # fmt: skip
                        n = _risk_close(t, s, R_HOLD, TIF_GTC, fo, io, olist, active, pos, events, n, cursor)
                    gs[s, GS_EXITING] = gs[s, GS_SIDE]
                    sl[s, SL_LEFT] = 0.0
            cash = acct[A_CASH]
            if xp[XP_SLICE] > 0.0 and marked:
                n, cash = _next_slices(t, equity, cash, fo, io, olist, active, pos, state, xp, sl, events, n, cursor,
                                       acct, gv, gs, gring, grets, gp)  # fmt: skip
            # Resizes that add to a position go last: the cash that closes and reductions free comes first.
            for late in range(2):
                for k in range(d, dd):
                    s = d_sym[k]
                    adds = d_band[k] > 0.0 and pos[s, Q] != 0.0 and _sign(d_target[k]) == _sign(pos[s, Q]) and \
                        abs(d_target[k]) * equity > abs(pos[s, Q]) * pos[s, LAST]
                    if adds == (late == 1):
                        n, cash = _place_target(k, d_time[k], s, d_target[k], d_band[k], d_tif[k], equity, cash, fo,
                                                io, olist, active, params, pos, d_row, d_seed, events, n, cursor,
                                                acct, gv, gs, gring, grets, gp, xp, sl, state)  # fmt: skip
            for k in range(lg, ll):
                p = l_parent[k]
                parent = d_row[p] if p >= 0 else -1
                if parent < 0 or io[parent, I_STATE] == FREE:
                    continue  # its entry was not placed: no bracket
                row = cursor[C_ROWS]
                cursor[C_ROWS] += 1
                working = create_order(fo, io, olist, active, row, io[parent, I_SYM], l_side[k], l_type[k], l_tif[k],
                                       0.0, 0.0, l_limit[k], l_stop[k], l_time[k], parent, io[parent, I_SERIAL], 1,
                                       cursor[C_SERIAL])  # fmt: skip
                cursor[C_SERIAL] += 1
                if d_seed[p] > 0.0:  # a resize's legs guard what is already held from now on, not only its fill
                    fo[row, F_QTY] += d_seed[p]
                    if not working:
                        working = True
                        io[row, I_STATE] = WORKING
                        active[io[row, I_SYM]] += 1
                n = order_event(events, n, EV_NEW if working else EV_HELD, row, l_time[k], fo, 0.0, 0.0, 0.0, 0.0,
                                k, ROLE_LEG)  # fmt: skip
                s = io[parent, I_SYM]
                if sl[s, SL_LEFT] > 0.0 and sl[s, SL_ROOT] == parent:  # later slices get the same legs
                    if l_type[k] == 2:
                        sl[s, SL_TP] = l_limit[k]
                    else:
                        sl[s, SL_SL] = l_stop[k]
                    sl[s, SL_LEG_TIF] = l_tif[k]
        d, lg = dd, ll
    cursor[C_BAR], cursor[C_DEC], cursor[C_LEG] = i, d, lg
    return DONE, n, r, ns


class ExecutionEngine(Engine):
    name = "execution"
    acts_outside = True  # orders go to a broker only for events the bus holds
    inputs = (
        Input("bar"),
        Input("risk_decision"),
        Input("order_intent"),
        Input("control_command", InputMode.COMMAND),
    )
    outputs = ("order", "fill", "position_snapshot", "account_snapshot", "risk_event", "order_approval")

    def __init__(
        self, config: ExecutionConfig, broker: SimulatedBroker, controls: ControlState, universe: Universe,
        guard: RiskGuard | None = None, venue: ExternalVenue | None = None,
    ) -> None:  # fmt: skip
        """`guard`: the portfolio risk rules (`utp.core.risk_guard`); None applies none. `venue`: a real broker
        that takes the orders and reports their fills (`utp.core.venue`); None: `broker` simulates the venue."""
        self.venue = venue
        # A real broker's fills and answers come in during steps and would not come again in a replay; the simulated
        # venue's do, from the bars and decisions the bus keeps.
        self.commits_every_step = venue is not None
        self.config = config
        self.broker = broker
        self.controls = controls
        self.universe = universe
        self.guard = guard or RiskGuard.disabled(universe.symbols)
        self._risk_logged: set[str] = set()  # the risk messages logged at the last step (see _log_risk)
        self._exits = np.zeros(len(universe.symbols) + 1, np.int64)
        empty_f, empty_i = np.empty(0), np.empty(0, np.int64)
        self._no_bars = (empty_i, empty_i, empty_f, empty_f, empty_f, empty_f, empty_f)
        if config.entry_order not in ("market", "limit"):
            raise ValueError(f"execution.entry_order {config.entry_order!r}: expected market or limit")
        self._xp = np.zeros(N_XP)
        self._xp[XP_LIMIT] = 1.0 if config.entry_order == "limit" else 0.0
        self._xp[XP_OFFSET], self._xp[XP_SPREAD_W] = config.limit_offset_bps / 1e4, config.spread_weight
        self._xp[XP_VOL_W] = config.volatility_weight
        self._xp[XP_TIMEOUT_NS] = config.order_timeout_s * 1e9 if config.entry_order == "limit" else 0.0
        self._xp[XP_MIN_FILL], self._xp[XP_MAX_REPRICES] = config.min_fill_ratio, config.max_reprices
        self._xp[XP_SLICE] = config.slice_notional
        self._slices = np.zeros((len(universe.symbols), N_SL))
        self._slice_meta: dict[int, dict[str, Any]] = {}  # symbol -> the sliced entry's text fields
        self.portfolio = Portfolio(universe.symbols, config.initial_cash, borrow_rate=config.borrow_rate)
        self.placed: set[str] = set()  # client order ids of every order placed
        self._tif = TIF_DAY if config.time_in_force == "day" else TIF_GTC
        self._symbol_names = pl.Series("symbol", universe.symbols, dtype=pl.Utf8)
        self._mark = np.zeros(len(universe.symbols), np.int64)
        self._snaps = np.zeros((max(1024, 2 * len(universe.symbols)), 2 + len(SNAP_COLUMNS)))
        self._events = np.zeros((4096, N_E))
        self._fills = np.zeros(4097, np.int64)
        self.approvals = ApprovalQueue(config.approval_timeout_s)
        self._flatten: list[tuple[int, str]] = []  # (command sequence, symbol or "" for all), done at the next step
        self._cancels: list[str] = []  # client order ids the operator cancelled, done at the next step

    # -- commands ------------------------------------------------------------------------------------
    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        for command in KINDS[kind].to_messages(frame):
            before = self.controls
            self.controls = self.controls.apply(command)  # type: ignore[arg-type]
            if self.controls is before:
                continue  # applied before (a replay after a restart)
            action = command.action  # type: ignore[attr-defined]
            if action == pb.CONTROL_ACTION_RESUME and self.guard.killed:
                ctx.log.warning("the operator resumed trading: the kill switch lets go")
                self.guard.reset_kill_switch()
            elif action == pb.CONTROL_ACTION_FLATTEN:
                self._flatten.append((command.sequence, command.header.symbol))  # type: ignore[attr-defined]
            elif action == pb.CONTROL_ACTION_CANCEL_ORDER:
                self._cancels.append(command.client_order_id)  # type: ignore[attr-defined]
            elif action in (pb.CONTROL_ACTION_APPROVE_ORDER, pb.CONTROL_ACTION_REJECT_ORDER):
                self.approvals.decide(Verdict(command.intent_id, action == pb.CONTROL_ACTION_APPROVE_ORDER,  # type: ignore[attr-defined]
                                              command.actor, command.reason))  # type: ignore[attr-defined]  # fmt: skip
            self.guard.pause_entries(self.controls.entries_paused)

    # -- the operator's orders ---------------------------------------------------------------------------
    def _operator_decisions(
        self, ctx: EngineContext, decisions: pl.DataFrame, legs: pl.DataFrame | None, now: int, out: _StepOutput
    ) -> tuple[pl.DataFrame, pl.DataFrame | None, bool]:
        """Per-order approval, flattens and cancels, before the kernel: the decisions and legs to place, and
        whether a flatten must go while trading is halted."""
        changed: list[pb.OrderApproval] = []
        released, released_legs, verdicts = self.approvals.release(now)
        changed += verdicts
        if self.controls.per_order(self.config.approval_mode):
            legs = legs if legs is not None else _EMPTY_INTENTS
            decisions, legs, held = self.approvals.hold(decisions, legs, now, self._estimate)
            changed += held
        if released:
            decisions = pl.concat([decisions, *released], how="vertical_relaxed")
            legs = pl.concat([legs if legs is not None else _EMPTY_INTENTS, *released_legs], how="vertical_relaxed")
        flattening = False
        if self._flatten:
            flatten, self._flatten = self._flatten, []
            rows = []
            everything = any(symbol == "" for _, symbol in flatten)
            symbols = set(self.universe.symbols) if everything else {symbol for _, symbol in flatten}
            changed += self.approvals.drop_symbols(None if everything else symbols, now, "the operator flattened")
            seq = flatten[-1][0]
            for s in np.flatnonzero(self.portfolio.pos[:, Q]).tolist():
                name = self.universe.symbols[s]
                if name in symbols:
                    intent = f"flatten/{seq}/{name}"
                    rows.append({"intent_id": intent, "correlation_id": f"{name}@{now}", "event_time_ns": now,
                                 "symbol": name, "target": 0.0, "tif": 0, "reason": pb.INTENT_REASON_OPERATOR,
                                 "strategy": "operator", "band": 0.0, "reference_price": float(self.portfolio.pos[s, LAST]),
                                 "cid": client_order_id(intent), "symbol_index": s})  # fmt: skip
            if rows:
                ctx.log.warning("the operator flattens %s", ", ".join(r["symbol"] for r in rows))
                flat = pl.DataFrame(rows, schema=_EMPTY_DECISIONS.schema)
                # Halted, only the flatten goes; else it goes with the step's decisions (closes first).
                decisions = flat if self.controls.halted else pl.concat([decisions, flat])
                flattening = self.controls.halted
            # Entries still working in the flattened symbols go too.
            self._cancels += self._working_entries(symbols)
        if self._cancels:
            cancels, self._cancels = self._cancels, []
            self._cancel_now(ctx, out, cancels, now)
        if changed:
            self._publish_approvals(ctx, changed, out)
        if decisions.height > 1:
            decisions = decisions.sort("event_time_ns", pl.col("target") != 0.0, maintain_order=True)
        return decisions, legs, flattening

    def _estimate(self, s: int, target: float) -> tuple[int, float]:
        """Side and shares of a target at the portfolio now (what the operator is asked to approve)."""
        pos, acct = self.portfolio.pos, self.portfolio.acct
        price = pos[s, LAST]
        equity = acct[A_LAST_EQUITY] if acct[A_LAST_EQUITY] > 0 else self.config.initial_cash
        wanted = target * equity / price if price > 0 else 0.0
        delta = wanted - pos[s, Q]
        return (pb.ORDER_SIDE_BUY if delta >= 0 else pb.ORDER_SIDE_SELL), float(abs(delta))

    def _working_entries(self, symbols: set[str]) -> list[str]:
        rows = self.broker.open_rows()
        if not rows.size:
            return []
        meta = self.broker.meta[rows]
        keep = meta["symbol"].is_in(list(symbols)) & (meta["parent_client_order_id"] == "")
        return meta.filter(keep)["client_order_id"].to_list()

    def _cancel_now(self, ctx: EngineContext, out: _StepOutput, cids: list[str], now: int) -> None:
        """Cancel working orders the operator named (an entry takes its legs along); unknown or finished ones
        are logged and left."""
        rows = []
        for cid in dict.fromkeys(cids):
            k = self.broker.row_of(cid)
            if k is None:
                ctx.log.warning("cancel of %s: not a working order any more", cid)
            else:
                rows.append(k)
        if not rows:
            return
        broker = self.broker
        n = cancel_rows(np.array(rows, np.int64), now, broker.fo, broker.io, broker.olist, broker.active, self._events,
                        CANCEL_OPERATOR)  # fmt: skip
        ctx.log.warning("the operator cancelled %s", ", ".join(dict.fromkeys(cids)))
        self._drain(ctx, out, _EMPTY_DECISIONS, _EMPTY_LEGS, n, 0)

    def _publish_approvals(self, ctx: EngineContext, changed: list[pb.OrderApproval], out: _StepOutput) -> None:
        changed.sort(key=lambda a: a.header.event_time_ns)
        ctx.emit("order_approval", KINDS["order_approval"].to_frame(changed))
        if ctx.keeps_records:
            for approval in changed:
                ctx.put_record(APPROVALS, approval.intent_id, approval.SerializeToString())
        refused = []
        for a in changed:
            if a.state in (pb.APPROVAL_STATE_REJECTED, pb.APPROVAL_STATE_EXPIRED, pb.APPROVAL_STATE_SUPERSEDED):
                reason = pb.RISK_REASON_OPERATOR_REJECTED if a.state == pb.APPROVAL_STATE_REJECTED else pb.RISK_REASON_APPROVAL_EXPIRED
                word = pb.ApprovalState.Name(a.state).removeprefix("APPROVAL_STATE_").lower()
                text = f"{a.header.symbol}: order {a.client_order_id} {word}" + (f" by {a.actor}" if a.actor else "") + (
                    f": {a.message}" if a.message else "")  # fmt: skip
                ctx.log.warning("approval: %s", text)
                refused.append(pb.RiskEvent(
                    header=pb.EventHeader(event_id=f"risk_event/{word}/{a.intent_id}", correlation_id=a.header.correlation_id,
                                          event_time_ns=a.header.event_time_ns, symbol=a.header.symbol),
                    reason=reason, action=pb.RISK_ACTION_REJECT_ENTRY, message=text, intent_id=a.intent_id))  # fmt: skip
        if refused:
            out.risk.append(KINDS["risk_event"].to_frame(refused))

    # -- a step ----------------------------------------------------------------------------------------
    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        bars = self._bars(ctx, frames.get("bar"))
        out = _StepOutput()
        decisions = self._decisions(ctx, frames.get("risk_decision"))
        intents = frames.get("order_intent")
        flattening = False
        if self._flatten or self._cancels or self.approvals.held or self.approvals.verdicts or \
                self.controls.per_order(self.config.approval_mode):  # fmt: skip
            now = int(bars[0][0]) if bars[0].size else max(through_ns, 0)
            decisions, intents, flattening = self._operator_decisions(ctx, decisions, intents, now, out)
        legs = self._legs(ctx, intents, decisions)
        allowed = (not self.controls.halted or flattening) and self.controls.execution_approved
        if not allowed and (decisions.height or legs.height):
            ctx.log.warning("not placing %d orders: %s", decisions.height + legs.height,
                            "trading is halted" if self.controls.halted else "execution is not approved")  # fmt: skip
        broker, pf, guard = self.broker, self.portfolio, self.guard
        if self.venue is not None:
            allowed = self._from_venue(ctx, out, bars, through_ns) and allowed
        # Room for every order the step can create (a close and an entry per decision, one per leg) and for
        # their first events, so that the kernel rarely has to stop early and come back.
        broker.reserve(2 * decisions.height + legs.height)
        if self._events.shape[0] < 4 * (decisions.height + legs.height):
            size = 1 << int(4 * (decisions.height + legs.height)).bit_length()
            self._events, self._fills = np.zeros((size, N_E)), np.zeros(size + 1, np.int64)
        cursor = np.zeros(N_C, np.int64)
        cursor[C_ROWS], cursor[C_SERIAL] = broker.n_rows, broker.serial
        d_row = np.full(decisions.height, -1, np.int64)
        d_seed = np.zeros(decisions.height)
        b, dc, lc = bars, _decision_arrays(decisions, self._tif), _leg_arrays(legs)
        # An account row per bar time, written into a fresh column-major block per call: its columns become the
        # account frame's without a copy. One row more than the bar times: the kernel wants room for a row
        # before each time it looks at, decisions after the last bar included.
        times_left = int(np.count_nonzero(bars[0][1:] != bars[0][:-1])) + 1 if bars[0].size else 0
        while True:
            rows = np.empty((min(times_left, 1 << 20) + 1, R_TIME + 1), order="F")
            status, n_events, n_rows, n_snaps = _execute(
                *b, *dc, *lc, broker.fo, broker.io, broker.olist, broker.active, broker.state, broker.params,
                pf.pos, pf.acct, pf.borrow_rate, allowed, d_row, d_seed, self._events, self._fills, rows,
                self._snaps, self._mark, cursor, guard.scalars, guard.per_symbol, guard.ring, guard.returns,
                guard.params, self._exits, self.venue is not None, self._xp, self._slices,
            )  # fmt: skip
            broker.n_rows, broker.serial = int(cursor[C_ROWS]), int(cursor[C_SERIAL])
            if n_rows:
                out.rows.append(rows[:n_rows])
                times_left -= n_rows
            self._drain(ctx, out, decisions, legs, n_events, n_snaps)
            if status == DONE:
                break
            if status == TABLE_FULL:
                # Compact, and double the table up to 64k rows: fewer returns to Python in a long backtest.
                size = broker.fo.shape[0]
                remap = broker.reserve(int(cursor[C_NEED_ROWS]) + (size if size < 1 << 16 else 0))
                if remap is not None:
                    d_row = np.where(d_row >= 0, remap[d_row], -1)
                cursor[C_ROWS] = broker.n_rows
            else:  # a buffer filled up: grow the ones that did (they were drained above)
                if n_events > self._events.shape[0] // 2 or int(cursor[C_NEED_EVENTS]) > self._events.shape[0] // 2:
                    # Doubling stops at 1M rows, but never below what the bar time needs (or it would never fit).
                    need = int(cursor[C_NEED_EVENTS])
                    size = min(max(2 * self._events.shape[0], 2 * need), max(1 << 20, need))
                    self._events, self._fills = np.zeros((size, N_E)), np.zeros(size + 1, np.int64)
                if n_snaps > self._snaps.shape[0] // 2:
                    self._snaps = np.zeros((2 * self._snaps.shape[0], self._snaps.shape[1]))
        if self.venue is not None:
            self._to_venue(ctx, out, through_ns)
        if bars[0].size:  # every held position at the end of the step
            held = np.flatnonzero(pf.pos[:, Q])
            if held.size:
                snap = np.zeros((held.size, self._snaps.shape[1]))
                snap[:, 0], snap[:, 1] = bars[0][-1], held
                snap[:, 2:] = pf.pos[held][:, list(SNAP_COLUMNS)]
                out.snaps.append(snap)
        self._publish(ctx, out)

    # -- inputs as arrays -------------------------------------------------------------------------------
    def _bars(self, ctx: EngineContext, bars: pl.DataFrame | None) -> tuple[np.ndarray, ...]:
        if bars is None or not bars.height:
            empty_f, empty_i = np.empty(0), np.empty(0, np.int64)
            return empty_i, empty_i, empty_f, empty_f, empty_f, empty_f, empty_f
        bars, sid, dropped = self.universe.split(bars)
        if dropped:
            ctx.log.warning("%d bars of symbols outside the universe ignored", dropped)
            ctx.count_rejected(dropped)
        return (
            bars["event_time_ns"].to_numpy(),
            sid.astype(np.int64),
            *(bars[c].to_numpy().astype(np.float64, copy=False) for c in ("open", "high", "low", "close", "volume")),
        )

    def _decisions(self, ctx: EngineContext, frame: pl.DataFrame | None) -> pl.DataFrame:
        """Approved targets not placed before, exits before entries within a bar time."""
        if frame is None or not frame.height:
            return _EMPTY_DECISIONS
        # Column by column on the rows kept so far, and one gather at the end (see `utp.core.columns`).
        intent = frame.get_column("intent").struct.unnest()
        columns = {
            "intent_id": intent.get_column("header").struct.unnest().get_column("event_id"),
            "correlation_id": frame.get_column("correlation_id"), "event_time_ns": frame.get_column("event_time_ns"),
            "symbol": frame.get_column("symbol"), "target": intent.get_column("target_percent"),
            "tif": intent.get_column("time_in_force"), "reason": intent.get_column("reason"),
            "strategy": intent.get_column("strategy"), "band": intent.get_column("rebalance_band"),
            "reference_price": intent.get_column("reference_price"),
        }  # fmt: skip
        rows = np.flatnonzero(flags(frame.get_column("approved")))
        time, tif, band, target = (columns[c].to_numpy()[rows] for c in ("event_time_ns", "tif", "band", "target"))
        keep = _refused(ctx, "decisions", take(columns["intent_id"], rows), (
            (~np.isfinite(target), "no finite target (a signed share of equity)"),  # null: NaN
            (~np.isin(tif, _KNOWN_TIF), "an unknown time in force"),
            (~(np.isfinite(band) & (band >= 0.0)), "a rebalance band that is not a finite share of equity >= 0"),
            ((time < 0) | (time > _MAX_TIME_NS), "an event time out of range"),
        ))  # fmt: skip
        rows = rows[keep]
        sid = self.universe.indices(take(columns["symbol"], rows))
        known = sid >= 0
        if not known.all():
            ctx.log.error("%d targets for symbols outside the universe ignored", int((~known).sum()))
            ctx.count_rejected(int((~known).sum()))
            rows, sid = rows[known], sid[known]
        cids = [client_order_id(i) for i in take(columns["intent_id"], rows).to_list()]
        again = self._placed_before(cids)
        if again.any():
            ctx.log.info("%d intents already placed; not placing them again", int(again.sum()))
            rows, sid = rows[~again], sid[~again]
            cids = [c for c, a in zip(cids, again, strict=True) if not a]
        # By time, and within a time the exits (target 0) first, each group in arrival order.
        entry = columns["target"].to_numpy()[rows] != 0.0
        order = np.argsort(entry, kind="stable")
        order = order[np.argsort(columns["event_time_ns"].to_numpy()[rows][order], kind="stable")]
        picked = rows[order]
        return pl.DataFrame([
            *(take(column, picked).alias(name) for name, column in columns.items()),
            pl.Series("cid", [cids[k] for k in order.tolist()], pl.Utf8), pl.Series("symbol_index", sid[order], pl.Int64),
        ])  # fmt: skip

    def _placed_before(self, cids: list[str]) -> np.ndarray:
        """Which of these client order ids were placed already (set lookups: the history only grows)."""
        placed = self.placed
        return np.fromiter((c in placed for c in cids), np.bool_, len(cids))

    def _legs(self, ctx: EngineContext, frame: pl.DataFrame | None, decisions: pl.DataFrame) -> pl.DataFrame:
        """Protective legs whose entry is among this step's decisions (the others have no entry to guard)."""
        if frame is None or not frame.height:
            return _EMPTY_LEGS
        decision_of: dict[str, int] = {}
        for k, intent_id in enumerate(decisions.get_column("intent_id").to_list()):
            decision_of.setdefault(intent_id, k)
        parent = np.fromiter((decision_of.get(p, -1) for p in frame.get_column("parent_intent_id").to_list()),
                             np.int64, frame.height)  # fmt: skip
        cids = [client_order_id(i) for i in frame.get_column("event_id").to_list()]
        rows = np.flatnonzero(~self._placed_before(cids))
        # A leg of an entry in this step must be able to protect it: the other side of the entry, a take profit
        # (limit) or a stop loss (stop, stop limit) with the prices its type needs. Orphans stay as they were.
        parent_at = parent[rows]
        entry_side = np.zeros(rows.size)
        if decisions.height:
            entry_side = np.where(parent_at >= 0, np.sign(decisions["target"].to_numpy()[np.maximum(parent_at, 0)]), 0.0)
        side, kind, tif, time, limit, stop = (frame.get_column(c).to_numpy()[rows] for c in (
            "side", "order_type", "time_in_force", "event_time_ns", "limit_price", "stop_price"))  # fmt: skip
        guarded = parent_at >= 0
        protective = np.where(side == pb.ORDER_SIDE_SELL, -1, np.where(side == pb.ORDER_SIDE_BUY, 1, 0))
        needs_limit = np.isin(kind, (pb.ORDER_TYPE_LIMIT, pb.ORDER_TYPE_STOP_LIMIT))
        needs_stop = np.isin(kind, (pb.ORDER_TYPE_STOP, pb.ORDER_TYPE_STOP_LIMIT))
        with np.errstate(invalid="ignore"):
            priced = (~needs_limit | (np.isfinite(limit) & (limit > 0))) & (~needs_stop | (np.isfinite(stop) & (stop > 0)))
        keep = _refused(ctx, "protective legs", take(frame.get_column("event_id"), rows), (
            (guarded & ((protective == 0) | (entry_side == 0) | (protective == entry_side)),
             "not on the other side of the entry it protects"),
            (guarded & ~(needs_limit | needs_stop), "an order type that is not a take profit (limit) or a stop loss"),
            (guarded & ~priced, "no positive finite limit or stop price for its order type"),
            (guarded & ~np.isin(tif, _KNOWN_TIF), "an unknown time in force"),
            (guarded & ((time < 0) | (time > _MAX_TIME_NS)), "an event time out of range"),
        ))  # fmt: skip
        rows = rows[keep]
        rows = rows[np.argsort(time[keep], kind="stable")]
        return take_rows(frame, rows).hstack([
            pl.Series("parent", parent[rows], pl.Int64), pl.Series("cid", [cids[k] for k in rows.tolist()], pl.Utf8),
        ])  # fmt: skip

    # -- outputs ---------------------------------------------------------------------------------------
    def _drain(
        self, ctx: EngineContext, out: _StepOutput, decisions: pl.DataFrame, legs: pl.DataFrame, n_events: int,
        n_snaps: int,
    ) -> None:  # fmt: skip
        """Turn what the kernel wrote into rows of the output frames (and the broker's text fields)."""
        if n_snaps:
            out.snaps.append(self._snaps[:n_snaps].copy())
        if not n_events:
            self._risk_logged = set()
            return
        ev = self._events[:n_events]
        kind = ev[:, E_KIND].astype(np.int64)
        role = ev[:, E_ROLE].astype(np.int64)
        aux = ev[:, E_AUX].astype(np.int64)
        skipped = kind == EV_SKIPPED
        if skipped.any():
            idx = aux[skipped]
            ctx.log.info("%d entries not placed for lack of cash (first: %s)", idx.size,
                         decisions["intent_id"][int(idx[0])])  # fmt: skip
        risk = kind == EV_RISK
        if risk.any():
            out.risk.append(self._risk_events(ctx, ev[risk], decisions))
        else:
            self._risk_logged = set()
        created = ((kind == EV_NEW) | (kind == EV_HELD)) & (role > 0)
        if created.any():
            meta = self._created_meta(ev[created, E_SLOT].astype(np.int64), role[created], aux[created], decisions, legs,
                                      ev[created, E_TIME].astype(np.int64))  # fmt: skip
            self.broker.add_meta(meta)
            self.placed.update(meta["client_order_id"].to_list())
        keep = ~(skipped | risk)
        if self.venue is not None:
            # The broker's own reports are the order events; the kernel's say what to send and cancel.
            out.created.append(ev[created, E_SLOT].astype(np.int64))
            ended = (kind == EV_CANCELED) & np.isin(ev[:, E_AUX], (CANCEL_TARGET, CANCEL_TIMEOUT, CANCEL_ACCEPTED,
                                                                    CANCEL_OPERATOR))  # fmt: skip
            out.cancelled.append(ev[ended, E_SLOT].astype(np.int64))
            return
        if not keep.any():
            return
        ev, kind = ev[keep], kind[keep]
        slot = ev[:, E_SLOT].astype(np.int64)
        if self.broker.meta.n_chunks() > 4:  # one chunk per batch of new orders: gathers across many are slow
            self.broker.meta = self.broker.meta.rechunk()
        meta = take_rows(self.broker.meta, slot)
        order_qty, filled = ev[:, E_ORDER_QTY], ev[:, E_FILLED]
        status = _STATUS_OF_KIND[kind]
        status = np.where((kind == EV_FILL) & (filled < order_qty - 1e-9), pb.ORDER_STATUS_PARTIALLY_FILLED, status)
        side = np.where(self.broker.io[slot, I_SIDE] > 0, pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL).astype(np.int32)
        time = ev[:, E_TIME].astype(np.int64)
        aux_value = ev[:, E_AUX]
        message: Any = ""
        if (kind >= EV_CANCELED).any():  # the events that can carry a message (most carry none)
            notional = meta["notional"].to_numpy() if (kind == EV_REJECTED).any() else np.zeros(kind.size)
            message = event_messages(kind, aux_value, notional).tolist()
        fo, io = self.broker.fo, self.broker.io
        client_order_id = meta.get_column("client_order_id")
        orders = KINDS["order"].frame({
            # The filled quantity as polars writes a float, as the id always had it.
            "event_id": formatted("event_id", "order/{}/{}/{}", client_order_id, take(_TOKENS, status),
                                  pl.Series(filled).cast(pl.Utf8)),
            "client_order_id": client_order_id, "correlation_id": meta.get_column("correlation_id"),
            "event_time_ns": time, "symbol": meta.get_column("symbol"), "intent_id": meta.get_column("intent_id"),
            "side": side, "quantity": order_qty, "order_type": io[slot, I_TYPE].astype(np.int32), "status": status,
            "filled_quantity": filled, "average_fill_price": ev[:, E_AVG],
            "broker_order_id": formatted("broker_order_id", "sim-{}", pl.Series(io[slot, I_SERIAL])),
            "submitted_time_ns": meta.get_column("submitted_time_ns"), "reason": meta.get_column("reason"),
            "limit_price": fo[slot, F_LIMIT], "stop_price": fo[slot, F_STOP],
            "time_in_force": meta.get_column("time_in_force"), "notional": meta.get_column("notional"),
            "parent_client_order_id": meta.get_column("parent_client_order_id"),
            "oco_group": meta.get_column("oco_group"), "strategy": meta.get_column("strategy"),
            "replaces_client_order_id": meta.get_column("replaces_client_order_id"),
            "broker": self.broker.name, "message": message,
        }, slot.size)  # fmt: skip
        out.orders.append(orders)
        is_fill = kind == EV_FILL
        if is_fill.any():
            rows = np.flatnonzero(is_fill)
            fill_cid, fill_time = take(client_order_id, rows), pl.Series(time[rows])
            fill_id = formatted("fill_id", "{}/{}", fill_cid, fill_time)
            out.fills.append(KINDS["fill"].frame({
                "event_id": formatted("event_id", "fill/{}", fill_id),
                "correlation_id": take(orders.get_column("correlation_id"), rows), "event_time_ns": fill_time,
                "symbol": take(orders.get_column("symbol"), rows), "client_order_id": fill_cid, "fill_id": fill_id,
                "side": side[rows], "quantity": ev[is_fill, E_QTY], "price": ev[is_fill, E_PRICE],
                "commission": ev[is_fill, E_COMMISSION], "slippage": ev[is_fill, E_SLIPPAGE],
                "reason": take(orders.get_column("reason"), rows), "strategy": take(orders.get_column("strategy"), rows),
            }, rows.size))  # fmt: skip

    def _created_meta(
        self, slot: np.ndarray, role: np.ndarray, index: np.ndarray, decisions: pl.DataFrame, legs: pl.DataFrame,
        time: np.ndarray,
    ) -> pl.DataFrame:  # fmt: skip
        """Text fields of the orders the kernel created (`slot`: their rows, in creation order, which is row order)."""
        parts = []
        by_rule = role == ROLE_RISK
        if by_rule.any():
            parts.append(self._risk_close_meta(slot[by_rule], index[by_rule], time[by_rule]))
        rare = (role == ROLE_REPRICE) | (role == ROLE_SLICE) | (role == ROLE_SLICE_LEG)
        by_decision = (role != ROLE_LEG) & ~by_rule & ~rare
        if by_decision.any():
            slots, closes = slot[by_decision], role[by_decision] == ROLE_CLOSE
            rows = decisions[index[by_decision]]
            # A close that is the whole target keeps the intent's id; the close before a reversal has its own.
            cid = rows["cid"]
            reversal = np.flatnonzero(closes & (rows["target"].to_numpy() != 0.0))
            if reversal.size:
                ids = rows["intent_id"].gather(reversal).to_list()
                cid = cid.clone().scatter(reversal, [client_order_id(i + "/close") for i in ids])
            given = rows["reason"].to_numpy()
            # A close is a signal exit, unless the operator asked for it (flatten).
            reason = np.where(closes & (given != pb.INTENT_REASON_OPERATOR), pb.INTENT_REASON_SIGNAL_EXIT, given)
            parts.append(rows.select(
                pl.Series("slot", slots), cid.alias("client_order_id"), "symbol", "intent_id", "correlation_id",
                "strategy", pl.Series("reason", reason, pl.Int32), pl.lit("").alias("parent_client_order_id"),
                pl.lit("").alias("oco_group"), pl.col("event_time_ns").alias("submitted_time_ns"),
                pl.col("tif").cast(pl.Int32).alias("time_in_force"),
                pl.Series("notional", self.broker.fo[slots, F_NOTIONAL]), pl.lit("").alias("replaces_client_order_id"),
            ))  # fmt: skip
        by_leg = role == ROLE_LEG
        if by_leg.any():
            rows = legs[index[by_leg]]
            parent_cid = decisions["cid"].gather(rows["parent"])
            parts.append(rows.select(
                pl.Series("slot", slot[by_leg]), pl.col("cid").alias("client_order_id"), "symbol",
                pl.col("event_id").alias("intent_id"), "correlation_id", "strategy", pl.col("reason").cast(pl.Int32),
                parent_cid.alias("parent_client_order_id"), parent_cid.alias("oco_group"),
                pl.col("event_time_ns").alias("submitted_time_ns"), pl.col("time_in_force").cast(pl.Int32),
                pl.lit(0.0).alias("notional"), pl.lit("").alias("replaces_client_order_id"),
            ))  # fmt: skip
        if self._xp[XP_SLICE] > 0.0 or rare.any():
            parts = [p for p in parts if p.height]
            known = pl.concat(parts) if parts else None
            parts = [known.sort("slot")] if known is not None else []
            extra = self._rare_meta(slot, role, index, time, known)
            if extra is not None:
                parts.append(extra)
        return parts[0] if len(parts) == 1 else pl.concat(parts).sort("slot")

    def _rare_meta(self, slot: np.ndarray, role: np.ndarray, index: np.ndarray, time: np.ndarray,
                   known: pl.DataFrame | None) -> pl.DataFrame | None:  # fmt: skip
        """Text fields of repriced orders and of slices (with their legs), in creation order: each takes its
        intent from the order it replaces, or from the entry that began the slices."""
        batch = {} if known is None else {m["slot"]: m for m in known.iter_rows(named=True)}
        rows: list[dict[str, Any]] = []

        def meta_of(k: int) -> dict[str, Any]:
            return batch[k] if k in batch else self.broker.meta.row(k, named=True)

        for k, r, i, t in zip(slot.tolist(), role.tolist(), index.tolist(), time.tolist(), strict=True):
            s = int(self.broker.io[k, I_SYM])
            if r == ROLE_ENTRY:
                self._slice_meta[s] = meta_of(k)
            elif r == ROLE_REPRICE:
                old = meta_of(int(i))
                n = int(self.broker.fo[k, F_REPRICES])
                m = {**old, "slot": k, "client_order_id": client_order_id(f"{old['intent_id']}/reprice{n}"),
                     "submitted_time_ns": t, "notional": float(self.broker.fo[k, F_NOTIONAL]),
                     "replaces_client_order_id": old["client_order_id"]}  # fmt: skip
                batch[k] = m
                rows.append(m)
            elif r in (ROLE_SLICE, ROLE_SLICE_LEG):
                root = self._slice_meta[s]
                child = f"{root['intent_id']}/slice{int(i)}"
                leg = r == ROLE_SLICE_LEG
                tag = ("tp" if self.broker.io[k, I_TYPE] == 2 else "sl") if leg else ""
                m = {**root, "slot": k, "client_order_id": client_order_id(f"{child}/{tag}" if leg else child),
                     "submitted_time_ns": t, "notional": float(self.broker.fo[k, F_NOTIONAL]),
                     "parent_client_order_id": client_order_id(child) if leg else "",
                     "oco_group": client_order_id(child) if leg else "", "replaces_client_order_id": "",
                     "reason": (pb.INTENT_REASON_TAKE_PROFIT if tag == "tp" else pb.INTENT_REASON_STOP_LOSS) if leg
                     else root["reason"],
                     "time_in_force": pb.TIME_IN_FORCE_GTC if leg else root["time_in_force"]}  # fmt: skip
                batch[k] = m
                rows.append(m)
        if not rows:
            return None
        frame = pl.DataFrame(rows)
        return frame.select("slot", *META_FIELDS).cast({"slot": pl.Int64, **META_SCHEMA})  # type: ignore[arg-type]

    def _risk_close_meta(self, slot: np.ndarray, reason: np.ndarray, time: np.ndarray) -> pl.DataFrame:
        """Text fields of the closes a risk rule placed: their own intent ids (rule, symbol, time), no decision."""
        symbol = self._symbol_names.gather(self.broker.io[slot, I_SYM])
        rule = pl.Series([pb.RiskReason.Name(int(r)).removeprefix("RISK_REASON_").lower() for r in reason], dtype=pl.Utf8)
        stamp = pl.Series(time).cast(pl.Utf8)
        intent_id = "order_intent/risk/" + rule + "/" + symbol + "@" + stamp
        intent_reason = np.select([reason == R_DRAWDOWN, reason == R_HOLD],
                                  [pb.INTENT_REASON_RISK_LIQUIDATION, pb.INTENT_REASON_MAX_HOLDING_TIME],
                                  pb.INTENT_REASON_TRAILING_STOP)  # fmt: skip
        return pl.DataFrame({
            "slot": slot, "client_order_id": [client_order_id(i) for i in intent_id.to_list()], "symbol": symbol,
            "intent_id": intent_id, "correlation_id": symbol + "@" + stamp, "strategy": pl.Series(["risk"] * slot.size, dtype=pl.Utf8),
            "reason": pl.Series(intent_reason, dtype=pl.Int32), "parent_client_order_id": [""] * slot.size,
            "oco_group": [""] * slot.size, "submitted_time_ns": time, "time_in_force": pl.Series(
                [pb.TIME_IN_FORCE_GTC] * slot.size, dtype=pl.Int32), "notional": np.zeros(slot.size),
            "replaces_client_order_id": [""] * slot.size,
        })  # fmt: skip

    def _log_risk(self, ctx: EngineContext, messages: list[str]) -> None:
        # Each message once per step, with its count, and not again while it repeats step after step: a rule that
        # holds all day (entries paused after losses) refused an entry per symbol and bar time, a log line each.
        # The risk events themselves all go on the bus.
        counts = Counter(messages)
        for message, count in counts.items():
            if message not in self._risk_logged:
                ctx.log.warning("risk: %s%s", message, f" ({count} times)" if count > 1 else "")
        self._risk_logged = set(counts)

    def _risk_events(self, ctx: EngineContext, ev: np.ndarray, decisions: pl.DataFrame) -> pl.DataFrame:
        """RiskEvent rows of the kernel's risk events (layout: `utp.core.risk_guard.guard_event`)."""
        time = ev[:, E_TIME].astype(np.int64)
        sym = ev[:, E_SLOT].astype(np.int64)
        reason = ev[:, E_ORDER_QTY].astype(np.int32)
        action = ev[:, E_ROLE].astype(np.int32)
        value, threshold = ev[:, E_PRICE], ev[:, E_QTY]
        decision = ev[:, E_AUX].astype(np.int64)
        names = self.universe.symbols
        symbols = [names[s] if s >= 0 else "" for s in sym.tolist()]
        intent = [decisions["intent_id"][int(k)] if k >= 0 else "" for k in decision.tolist()]
        messages = [risk_message(int(r), int(a), sy, float(v), float(th))
                    for r, a, sy, v, th in zip(reason, action, symbols, value, threshold, strict=True)]  # fmt: skip
        self._log_risk(ctx, messages)
        correlation = [f"{sy}@{t}" for sy, t in zip(symbols, time.tolist(), strict=True)]
        return KINDS["risk_event"].frame({
            "event_id": [f"risk_event/{pb.RiskReason.Name(int(r)).removeprefix('RISK_REASON_').lower()}/{c}/{i}"
                         for r, c, i in zip(reason, correlation, intent, strict=True)],
            "correlation_id": correlation, "event_time_ns": time, "symbol": symbols, "reason": reason, "action": action,
            "value": value, "threshold": threshold, "message": messages, "intent_id": intent,
        }, time.size)  # fmt: skip

    def _publish(self, ctx: EngineContext, out: _StepOutput) -> None:
        if out.orders:
            orders = KINDS["order"].conform(_stacked(out.orders))
            ctx.emit("order", orders)
            if ctx.keeps_records:  # the latest state of each order; the events keep the history
                latest = orders.unique("client_order_id", keep="last", maintain_order=True)
                for message in KINDS["order"].to_messages(latest):
                    ctx.put_record(ORDERS, message.client_order_id, message.SerializeToString())  # type: ignore[attr-defined]
        if out.fills:
            ctx.emit("fill", KINDS["fill"].conform(_stacked(out.fills)))
        if out.snaps:
            ctx.emit("position_snapshot", self._position_frame(ctx, np.concatenate(out.snaps)))
        if out.rows:
            ctx.emit("account_snapshot", _account_frame(out.rows))
        if out.risk:
            ctx.emit("risk_event", pl.concat(out.risk))

    def _position_frame(self, ctx: EngineContext, snaps: np.ndarray) -> pl.DataFrame:
        time, sym = snaps[:, 0].astype(np.int64), snaps[:, 1].astype(np.int64)
        # One snapshot per symbol and bar time (the first: a fill's comes before the end of the step's), in time
        # order, ties in the order written.
        order = np.lexsort((np.arange(time.size), sym, time))
        first = np.ones(order.size, np.bool_)
        first[1:] = (time[order[1:]] != time[order[:-1]]) | (sym[order[1:]] != sym[order[:-1]])
        rows = np.sort(order[first])
        rows = rows[np.argsort(time[rows], kind="stable")]
        snaps, time, sym = snaps[rows], time[rows], sym[rows]
        q, avg, last = snaps[:, 2], snaps[:, 3], snaps[:, 4]
        symbol = self._symbol_names.gather(sym)
        correlation = (symbol + "@" + pl.Series(time).cast(pl.Utf8)).alias("correlation_id")
        values = {
            "quantity": q, "average_price": avg, "last_price": last, "market_value": q * last,
            "unrealized_pnl": q * (last - avg), "realized_pnl": snaps[:, 5], "pending_quantity": self._pending()[sym],
            "commissions": snaps[:, 6],
        }  # fmt: skip
        schema = KINDS["position_snapshot"].schema
        frame = pl.DataFrame([
            ("position_snapshot/" + correlation).alias("event_id"), correlation, pl.Series(TIME, time), symbol,
            *(pl.Series(name, values[name], schema[name]) for name in list(schema)[len(HEADER_COLUMNS):]),
        ])  # fmt: skip
        if ctx.keeps_records:
            # The latest snapshot of each symbol is what the daemon shows; flat positions leave the table.
            latest = frame.unique("symbol", keep="last", maintain_order=True)
            for message in KINDS["position_snapshot"].to_messages(latest):
                if message.quantity:  # type: ignore[attr-defined]
                    ctx.put_record(POSITIONS, message.header.symbol, message.SerializeToString())  # type: ignore[attr-defined]
                else:
                    ctx.delete_record(POSITIONS, message.header.symbol)  # type: ignore[attr-defined]
        return frame

    def _pending(self) -> np.ndarray:
        """Signed shares still to trade per symbol in the open orders (an unsized notional order counts 0)."""
        rows = self.broker.open_rows()
        fo, io = self.broker.fo, self.broker.io
        remaining = np.maximum(fo[rows, F_QTY] - fo[rows, F_FILLED], 0.0) * io[rows, I_SIDE]
        return np.bincount(io[rows, I_SYM], weights=remaining, minlength=len(self.universe.symbols))

    # -- an external venue ----------------------------------------------------------------------------------
    def _from_venue(self, ctx: EngineContext, out: _StepOutput, bars: tuple[np.ndarray, ...], through_ns: int) -> bool:
        """Apply what the broker reported since the last step, and reconcile when it is due. Returns whether
        trading may go on (False once reconciliation failed: trading halts)."""
        venue = self.venue
        assert venue is not None
        report = venue.poll(BarBlock(*bars))
        need = 4 * (len(report.fills) + len(report.updates)) + 16
        if self._events.shape[0] < need:
            self._events, self._fills = np.zeros((need, N_E)), np.zeros(need + 1, np.int64)
        step = venue.receive(report, self.broker, self.portfolio, self.guard, self._events, 0, EV_RISK)
        self._drain(ctx, out, _EMPTY_DECISIONS, _EMPTY_LEGS, step.events, 0)
        out.created.clear()
        out.cancelled.clear()
        stamp = max(through_ns, 0)
        self._venue_outputs(out, step.orders, step.fills, step.touched, stamp)
        now = ctx.clock.now_ns()
        if venue.reconcile_due(now) and not self.controls.halted:
            mismatch = self._reconcile(ctx, out, now, stamp)
            if mismatch:
                reason = "reconciliation with " + venue.broker.name + " failed: " + "; ".join(mismatch)
                ctx.log.error("%s: trading halted", reason)
                self.controls = replace(self.controls, halted=True, halt_reason=reason)
                out.risk.append(_reconciliation_event(stamp, reason, len(mismatch)))
        return not self.controls.halted

    def _reconcile(self, ctx: EngineContext, out: _StepOutput, now: int, stamp: int) -> list[str]:
        """Mismatches with the broker, looked at twice: a fill on its way between the two reads is not one."""
        venue = self.venue
        assert venue is not None
        for attempt in range(2):
            positions = {self.universe.symbols[s]: float(self.portfolio.pos[s, Q])
                         for s in np.flatnonzero(self.portfolio.pos[:, Q]).tolist()}  # fmt: skip
            rows = self.broker.open_rows()
            sent = [c for c in self.broker.meta["client_order_id"].gather(rows).to_list() if c in venue.sent] \
                if rows.size else []  # fmt: skip
            mismatch = venue.reconcile(now, positions, sent)
            if not mismatch or attempt:
                return mismatch
            report = venue.resync()
            need = 4 * (len(report.fills) + len(report.updates)) + 16
            if self._events.shape[0] < need:
                self._events, self._fills = np.zeros((need, N_E)), np.zeros(need + 1, np.int64)
            step = venue.receive(report, self.broker, self.portfolio, self.guard, self._events, 0, EV_RISK)
            self._drain(ctx, out, _EMPTY_DECISIONS, _EMPTY_LEGS, step.events, 0)
            self._venue_outputs(out, step.orders, step.fills, step.touched, stamp)
        return []

    def _to_venue(self, ctx: EngineContext, out: _StepOutput, through_ns: int) -> None:
        """Send what the kernel decided in this step, and book what the broker answered at once."""
        venue = self.venue
        assert venue is not None
        created = np.concatenate(out.created) if out.created else np.empty(0, np.int64)
        cancelled = np.concatenate(out.cancelled) if out.cancelled else np.empty(0, np.int64)
        if not created.size and not cancelled.size:
            return
        answers = venue.send(self.broker, created, cancelled, through_ns)
        step = venue.receive(BrokerReport(updates=answers), self.broker, self.portfolio, self.guard, self._events, 0,
                             EV_RISK)  # fmt: skip
        self._venue_outputs(out, step.orders, step.fills, step.touched, max(through_ns, 0))

    def _venue_outputs(self, out: _StepOutput, orders: list[BrokerOrder], fills: list[FillReport], touched: set[int],
                       stamp: int) -> None:  # fmt: skip
        """The broker's reports as order, fill and position events, stamped with the step's bar time (the broker's
        own times stay in the orders' fields)."""
        if orders:
            for order in orders:
                order.updated_time_ns = stamp
            out.orders.append(order_frame(orders))
        if fills:
            meta = {m["client_order_id"]: (m["correlation_id"], m["reason"], m["strategy"])
                    for m in self.broker.meta.select("client_order_id", "correlation_id", "reason", "strategy")
                    .iter_rows(named=True)}  # fmt: skip
            frame = fill_frame([replace(f, time_ns=stamp) for f in fills], self.venue.sent, meta)  # type: ignore[union-attr]
            out.fills.append(frame)
        if touched:
            rows = np.array(sorted(touched), np.int64)
            snap = np.zeros((rows.size, self._snaps.shape[1]))
            snap[:, 0], snap[:, 1] = stamp, rows
            snap[:, 2:] = self.portfolio.pos[rows][:, list(SNAP_COLUMNS)]
            out.snaps.append(snap)

    def snapshot(self) -> Any:
        return {"broker": self.broker, "controls": self.controls, "portfolio": self.portfolio, "placed": self.placed,
                "guard": self.guard, "sent": self.venue.sent if self.venue is not None else {},
                "approvals": self.approvals, "flatten": self._flatten, "cancels": self._cancels}  # fmt: skip

    def restore(self, state: Any) -> None:
        self.broker, self.controls, self.portfolio = state["broker"], state["controls"], state["portfolio"]
        self.placed, self.guard = state["placed"], state["guard"]
        self.approvals = state.get("approvals", self.approvals)
        self._flatten, self._cancels = state.get("flatten", []), state.get("cancels", [])
        self.guard.pause_entries(self.controls.entries_paused)
        if self.venue is not None:  # fills of orders sent before a restart are still booked
            self.venue.sent.update(state.get("sent", {}))


class _StepOutput:
    """Output frames of one step, gathered over the kernel's calls."""

    def __init__(self) -> None:
        self.orders: list[pl.DataFrame] = []
        self.fills: list[pl.DataFrame] = []
        self.rows: list[np.ndarray] = []
        self.snaps: list[np.ndarray] = []
        self.risk: list[pl.DataFrame] = []
        self.created: list[np.ndarray] = []  # rows of orders the kernel created (an external venue sends them)
        self.cancelled: list[np.ndarray] = []  # rows of orders the kernel cancelled


_EMPTY_DECISIONS = pl.DataFrame(schema={
    "intent_id": pl.Utf8, "correlation_id": pl.Utf8, "event_time_ns": pl.Int64, "symbol": pl.Utf8,
    "target": pl.Float64, "tif": pl.Int32, "reason": pl.Int32, "strategy": pl.Utf8, "band": pl.Float64,
    "reference_price": pl.Float64, "cid": pl.Utf8, "symbol_index": pl.Int64,
})  # fmt: skip
_EMPTY_INTENTS = KINDS["order_intent"].empty_frame()
_EMPTY_LEGS = KINDS["order_intent"].empty_frame().with_columns(
    pl.lit(-1, pl.Int64).alias("parent"), pl.lit("").alias("cid")
)


def _reconciliation_event(time_ns: int, message: str, mismatches: int) -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": [f"risk_event/reconciliation/@{time_ns}"], "correlation_id": [f"@{time_ns}"],
        "event_time_ns": [time_ns], "symbol": [""], "reason": [pb.RISK_REASON_RECONCILIATION],
        "action": [pb.RISK_ACTION_HALT], "value": [float(mismatches)], "threshold": [0.0], "message": [message],
        "intent_id": [""],
    }).cast(KINDS["risk_event"].schema)  # type: ignore[arg-type]


#: What a decision or leg may carry: the time in force values there are, and event times from the epoch to the
#: year 2200 (the kernel's event rows are float64: a time near the int64 limit would not come back as an int64).
_KNOWN_TIF = (pb.TIME_IN_FORCE_UNSPECIFIED, pb.TIME_IN_FORCE_DAY, pb.TIME_IN_FORCE_GTC)
_MAX_TIME_NS = 7_258_118_400 * 10**9


def _stacked(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")


def _refused(ctx: EngineContext, what: str, ids: pl.Series, checks: tuple[tuple[np.ndarray, str], ...]) -> np.ndarray:
    """The rows to keep: each failed check (mask, reason) is counted rejected and logged with its reason and
    the first id, a row counting once for the first check it fails."""
    keep = np.ones(ids.len(), np.bool_)
    for bad, reason in checks:
        hit = bad & keep
        if hit.any():
            ctx.log.error("%d %s refused: %s (first: %r)", int(hit.sum()), what, reason, ids[int(np.argmax(hit))])
            ctx.count_rejected(int(hit.sum()))
            keep &= ~hit
    return keep


def _tif_codes(tif: np.ndarray, default: int) -> np.ndarray:
    return np.where(tif == pb.TIME_IN_FORCE_DAY, TIF_DAY, np.where(tif == pb.TIME_IN_FORCE_GTC, TIF_GTC, default))


def _decision_arrays(decisions: pl.DataFrame, default_tif: int = TIF_GTC) -> tuple[np.ndarray, ...]:
    return (
        decisions["event_time_ns"].to_numpy().astype(np.int64),
        decisions["symbol_index"].to_numpy().astype(np.int64),
        decisions["target"].to_numpy().astype(np.float64),
        decisions["band"].to_numpy().astype(np.float64),
        _tif_codes(decisions["tif"].to_numpy(), default_tif).astype(np.int64),
    )


def _leg_arrays(legs: pl.DataFrame) -> tuple[np.ndarray, ...]:
    side = np.where(legs["side"].to_numpy() == pb.ORDER_SIDE_BUY, 1, -1).astype(np.int64)
    return (
        legs["event_time_ns"].to_numpy().astype(np.int64),
        legs["parent"].to_numpy().astype(np.int64),
        side,
        legs["order_type"].to_numpy().astype(np.int64),
        _tif_codes(legs["time_in_force"].to_numpy(), TIF_GTC).astype(np.int64),
        legs["limit_price"].to_numpy().astype(np.float64),
        legs["stop_price"].to_numpy().astype(np.float64),
    )


def _account_frame(blocks: list[np.ndarray]) -> pl.DataFrame:
    """The account rows (column-major blocks the kernel wrote, each a fresh array) as an account_snapshot frame."""
    schema = KINDS["account_snapshot"].schema
    columns = [blocks[0][:, i] if len(blocks) == 1 else np.concatenate([b[:, i] for b in blocks])
               for i in range(R_TIME + 1)]  # fmt: skip
    time = pl.Series(TIME, columns[R_TIME].astype(np.int64))
    values = {name: columns[i] for i, name in enumerate(ACCOUNT_COLUMNS)}
    return KINDS["account_snapshot"].frame({
        "event_id": formatted("event_id", "account_snapshot/{}", time),
        "correlation_id": formatted("correlation_id", "@{}", time),
        TIME: time, "symbol": "", **{name: values[name] for name in list(schema)[len(HEADER_COLUMNS):]},
    }, time.len())  # fmt: skip
