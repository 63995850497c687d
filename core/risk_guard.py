"""The portfolio risk rules, applied by execution at the moment it places orders.

Rules about the portfolio (how much was lost today, the drawdown from the peak, exposures, open positions,
order rates, losing streaks, slippage, CVaR) need the portfolio as it is when an order is placed. Execution
keeps the books, bar time by bar time, inside one kernel (see `utp.engines.execution`); so these rules are
inlineable kernels that it calls there, and they give the same decisions whether a step holds one bar time
(live) or a million (a backtest). The risk engine checks what needs no portfolio (sane targets, shorts,
the operator's flags, position caps, signal filters) before.

Every rule has a reason code (`RiskReason`), a threshold in `RiskConfig` (0 turns it off) and a `RiskEvent`
when it acts. Limits are "more than": a value exactly at its threshold passes.

After each bar time is marked (`guard_mark`):
* kill switch: the day's loss (from the day's opening equity) > kill_switch_loss_pct -> nothing is placed
  any more, exits included, until the operator resumes (the daemon halts trading on the event);
* drawdown: equity below its peak by > max_drawdown_pct -> every position is closed and the peak restarts
  from the equity then (Lean's MaximumDrawdownPercentPortfolio);
* trailing stop: a position's close behind its best close since it was opened by > trailing_stop_pct ->
  the position is closed.
Before each entry (`guard_entry`, in this order; the first that fails is the reason):
* daily loss > max_daily_loss_pct -> no entries for the rest of the day;
* max_consecutive_losses losing round trips in a row -> no entries for the rest of the day;
* a symbol blocked for abnormal slippage (a fill that slipped > max_slippage_multiple x the expected
  slippage blocks its symbol for slippage_block_minutes);
* more than max_orders_per_minute orders in the last minute, or max_orders_per_symbol_day for the symbol today
  (every order execution places counts; only entries are refused: exits always go);
* max_positions open; short exposure > max_short_share of gross; the sector's exposure > max_sector_exposure_pct
  of equity; the portfolio's historical CVaR-95 with the entry > max_cvar_pct of equity;
* then the entry is capped: at max_symbol_exposure and what is left of max_total_exposure (currency) and at
  the notional whose loss to the stop (stop_loss_pct) is max_position_risk_pct of equity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numba import njit

from utp.core.config import ExitConfig, RiskConfig
from utp.core.portfolio import A_DAY_START, LAST, Q
from utp.v1 import events_pb2 as pb

DAY_NS = 86_400 * 10**9
MINUTE_NS = 60 * 10**9

# Scalars: the equity peak, the kill switch's latch, the day entries are paused on (-1 none), the losing streak,
# the return history's next row and rows filled, the order ring's next slot; and, within one bar time, the value
# and the number of new positions of the entries placed so far and whether entries are closed (a liquidation).
# Last, the operator's pause of new entries (a control command, set by execution before each step).
(G_PEAK, G_KILLED, G_PAUSE_DAY, G_STREAK, G_RET_NEXT, G_RET_ROWS, G_RING_NEXT, G_PLACED_VALUE, G_PLACED_NEW,
 G_NO_ENTRIES, G_OPERATOR_PAUSE, N_G) = range(12)  # fmt: skip
# Per symbol: the best close since the position opened and the side it was for, the time until which entries are
# blocked, the day of the order count and the count, the previous close (returns), the sector, whether an exit
# is on its way (the position's side when it was sent).
GS_BEST, GS_SIDE, GS_BLOCK_UNTIL, GS_DAY, GS_DAY_COUNT, GS_PREV_CLOSE, GS_SECTOR, GS_EXITING, GS_OPENED, N_GS = range(10)
# Parameters (0 = the rule is off).
(GP_DAILY_LOSS, GP_KILL_LOSS, GP_DRAWDOWN, GP_TRAIL, GP_SECTOR, GP_TOTAL, GP_SYMBOL, GP_RATE, GP_SYMBOL_DAY,
 GP_LOSSES, GP_SLIP_MULT, GP_SLIP_BLOCK_NS, GP_EXPECTED_SLIP, GP_MAX_POSITIONS, GP_SHORT_SHARE, GP_CVAR,
 GP_CVAR_MIN, GP_POSITION_RISK, GP_STOP, GP_MAX_HOLD_NS, N_GP) = range(21)  # fmt: skip

# The reason codes the kernels write (RiskReason values), and what they did (RiskAction values).
OK = 0
R_DAILY_LOSS, R_KILL, R_DRAWDOWN, R_TRAIL = (pb.RISK_REASON_DAILY_LOSS, pb.RISK_REASON_KILL_SWITCH,
                                             pb.RISK_REASON_DRAWDOWN, pb.RISK_REASON_TRAILING_STOP)  # fmt: skip
R_SECTOR, R_TOTAL, R_SYMBOL = (pb.RISK_REASON_SECTOR_EXPOSURE, pb.RISK_REASON_TOTAL_EXPOSURE,
                               pb.RISK_REASON_SYMBOL_EXPOSURE)  # fmt: skip
R_RATE, R_SYMBOL_DAY, R_LOSSES = (pb.RISK_REASON_ORDER_RATE, pb.RISK_REASON_SYMBOL_ORDER_LIMIT,
                                  pb.RISK_REASON_CONSECUTIVE_LOSSES)  # fmt: skip
R_PAUSED = pb.RISK_REASON_ENTRIES_PAUSED
R_SLIPPAGE, R_MAX_POSITIONS, R_SHORT, R_CVAR, R_POSITION_RISK, R_HOLD = (
    pb.RISK_REASON_ABNORMAL_SLIPPAGE, pb.RISK_REASON_MAX_POSITIONS, pb.RISK_REASON_SHORT_EXPOSURE,
    pb.RISK_REASON_CVAR, pb.RISK_REASON_POSITION_RISK, pb.RISK_REASON_MAX_HOLDING_TIME)  # fmt: skip
A_REJECT, A_CAP, A_EXIT, A_LIQUIDATE, A_KILL, A_BLOCK, A_PAUSE = (
    pb.RISK_ACTION_REJECT_ENTRY, pb.RISK_ACTION_CAP_ENTRY, pb.RISK_ACTION_EXIT_POSITION, pb.RISK_ACTION_LIQUIDATE,
    pb.RISK_ACTION_KILL_SWITCH, pb.RISK_ACTION_BLOCK_SYMBOL, pb.RISK_ACTION_PAUSE_ENTRIES)  # fmt: skip
# guard_mark's verdict on the portfolio.
MARK_OK, MARK_KILL, MARK_LIQUIDATE = 0, 1, 2


class RiskGuard:
    """The rules' state (arrays the kernels update in place) and parameters; pickled with execution's state."""

    def __init__(
        self, config: RiskConfig, exit_config: ExitConfig, symbols: Sequence[str], *, expected_slippage_bps: float
    ) -> None:
        n = len(symbols)
        self.params = guard_params(config, exit_config, expected_slippage_bps)
        self.scalars = np.zeros(N_G)
        self.scalars[G_PAUSE_DAY] = -1.0
        self.per_symbol = np.zeros((n, N_GS))
        self.per_symbol[:, GS_SECTOR] = sector_indices(symbols, config.sectors)
        self.ring = np.full(max(config.max_orders_per_minute, 1), -(1 << 62), np.int64)
        self.returns = np.zeros((max(config.cvar_window, 1) if config.max_cvar_pct > 0 else 1, n))

    @classmethod
    def disabled(cls, symbols: Sequence[str]) -> RiskGuard:
        """A guard with every rule off."""
        off = RiskConfig(**{f: 0 for f in _LIMITS}, sectors={})
        return cls(off, ExitConfig(take_profit_pct=0.0, stop_loss_pct=0.0), symbols, expected_slippage_bps=0.0)

    def __setstate__(self, state: dict) -> None:
        # A checkpoint from before a scalar was added: the new ones start at their defaults (0).
        scalars = state["scalars"]
        if scalars.shape[0] < N_G:
            state["scalars"] = np.concatenate([scalars, np.zeros(N_G - scalars.shape[0])])
        self.__dict__.update(state)

    def pause_entries(self, paused: bool) -> None:
        """The operator's pause: entries are refused with ENTRIES_PAUSED until it is lifted (exits go)."""
        self.scalars[G_OPERATOR_PAUSE] = 1.0 if paused else 0.0

    @property
    def killed(self) -> bool:
        return bool(self.scalars[G_KILLED])

    def reset_kill_switch(self) -> None:
        """The operator resumed trading: the kill switch lets go (the next day's loss is measured afresh)."""
        self.scalars[G_KILLED] = 0.0


_LIMITS = ("max_position_risk_pct", "max_daily_loss_pct", "kill_switch_loss_pct", "max_drawdown_pct",
           "trailing_stop_pct", "max_sector_exposure_pct", "max_total_exposure", "max_symbol_exposure",
           "max_orders_per_minute", "max_orders_per_symbol_day", "max_consecutive_losses", "max_slippage_multiple",
           "max_positions", "max_short_share", "max_cvar_pct")  # fmt: skip

_RULE_TEXT = {
    R_DAILY_LOSS: ("the day's loss {value:.2%} is beyond max_daily_loss_pct {threshold:.2%}: no new entries today"),
    R_KILL: ("KILL SWITCH: the day's loss {value:.2%} is beyond kill_switch_loss_pct {threshold:.2%}: nothing is "
             "placed until the operator resumes trading"),
    R_DRAWDOWN: "drawdown {value:.2%} from the equity peak is beyond max_drawdown_pct {threshold:.2%}",
    R_TRAIL: "{symbol} fell back {value:.2%} from its best close, beyond trailing_stop_pct {threshold:.2%}",
    R_SECTOR: "{symbol}'s sector would be {value:.2%} of equity, beyond max_sector_exposure_pct {threshold:.2%}",
    R_TOTAL: "gross exposure would be {value:,.2f}, beyond max_total_exposure {threshold:,.2f}",
    R_SYMBOL: "{symbol}'s exposure would be {value:,.2f}, beyond max_symbol_exposure {threshold:,.2f}",
    R_RATE: "it would be order {value:.0f} within a minute, beyond max_orders_per_minute {threshold:.0f}",
    R_SYMBOL_DAY: "it would be {symbol}'s order {value:.0f} today, beyond max_orders_per_symbol_day {threshold:.0f}",
    R_LOSSES: "{value:.0f} losing trades in a row (max_consecutive_losses {threshold:.0f}): entries paused today",
    R_SLIPPAGE: ("{symbol}: a fill slipped {value:.1f}x the expected slippage (max_slippage_multiple "
                 "{threshold:.1f}): entries blocked for slippage_block_minutes"),
    R_MAX_POSITIONS: "it would be position {value:.0f}, beyond max_positions {threshold:.0f}",
    R_SHORT: "short exposure would be {value:.2%} of gross, beyond max_short_share {threshold:.2%}",
    R_CVAR: "the portfolio's CVaR-95 would be {value:.2%} of equity, beyond max_cvar_pct {threshold:.2%}",
    R_POSITION_RISK: "{symbol}'s loss to its stop would be {value:.2%} of equity, beyond max_position_risk_pct "
                     "{threshold:.2%}",
    R_HOLD: "{symbol} has been held {value:.1f} hours, max_holding_hours is {threshold:g}",
}  # fmt: skip
_ACTION_TEXT = {A_REJECT: "entry refused", A_CAP: "entry capped", A_EXIT: "position closed",
                A_LIQUIDATE: "every position liquidated", A_KILL: "all execution blocked",
                A_BLOCK: "symbol blocked", A_PAUSE: "entries paused"}  # fmt: skip


def risk_message(reason: int, action: int, symbol: str, value: float, threshold: float) -> str:
    """What a rule did and why, in words (a blocked symbol's remaining minutes read as its value)."""
    if reason == R_SLIPPAGE and action == A_REJECT:
        return f"{symbol}: entries blocked for abnormal slippage, {value:.1f} of {threshold:.0f} minutes left"
    if reason == R_LOSSES and action == A_REJECT:
        return f"entries paused today after {threshold:.0f} losing trades in a row (max_consecutive_losses)"
    if reason == R_PAUSED:
        return f"{symbol}: entry refused: the operator paused new entries (exits still go)"
    if reason == R_DRAWDOWN and action == A_REJECT:
        return f"{symbol}: no entries at the bar time of a liquidation"
    text = _RULE_TEXT.get(reason, "risk rule {reason}").format(symbol=symbol or "portfolio", value=value,
                                                              threshold=threshold, reason=reason)  # fmt: skip
    return f"{_ACTION_TEXT.get(action, 'acted')}: {text}"


def guard_params(config: RiskConfig, exit_config: ExitConfig, expected_slippage_bps: float) -> np.ndarray:
    p = np.zeros(N_GP)
    p[GP_DAILY_LOSS], p[GP_KILL_LOSS], p[GP_DRAWDOWN] = (config.max_daily_loss_pct, config.kill_switch_loss_pct,
                                                         config.max_drawdown_pct)  # fmt: skip
    p[GP_TRAIL], p[GP_SECTOR] = config.trailing_stop_pct, config.max_sector_exposure_pct
    p[GP_TOTAL], p[GP_SYMBOL] = config.max_total_exposure, config.max_symbol_exposure
    p[GP_RATE], p[GP_SYMBOL_DAY] = config.max_orders_per_minute, config.max_orders_per_symbol_day
    p[GP_LOSSES] = config.max_consecutive_losses
    p[GP_SLIP_MULT], p[GP_SLIP_BLOCK_NS] = config.max_slippage_multiple, config.slippage_block_minutes * MINUTE_NS
    p[GP_EXPECTED_SLIP] = (config.expected_slippage_bps or expected_slippage_bps) / 1e4
    p[GP_MAX_POSITIONS], p[GP_SHORT_SHARE] = config.max_positions, config.max_short_share
    p[GP_CVAR], p[GP_CVAR_MIN] = config.max_cvar_pct, config.cvar_min_history
    p[GP_POSITION_RISK], p[GP_STOP] = config.max_position_risk_pct, exit_config.stop_loss_pct
    p[GP_MAX_HOLD_NS] = exit_config.max_holding_hours * 3_600e9
    return p


def sector_indices(symbols: Sequence[str], sectors: Mapping[str, str]) -> np.ndarray:
    """1-based sector number per symbol (0: no sector known, the sector rule passes it)."""
    names = sorted(set(sectors.values()))
    number = {name: i + 1 for i, name in enumerate(names)}
    return np.array([number.get(sectors.get(s, ""), 0) for s in symbols], np.float64)


# -- kernels ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _beyond(value, limit):  # noqa: ANN001
    """value > limit, where a value equal to the limit but for rounding (1 - 0.95 vs 0.05) is not beyond it."""
    return value > limit + 1e-9 * max(abs(limit), 1.0)


@njit(cache=True, inline="always")
def guard_event(events, n, t, symbol, reason, action, value, threshold, decision, kind):  # noqa: ANN001
    """A risk event row (kind: execution's event code for it). Columns are execution's E_* layout:
    kind, symbol (in the slot column), time, threshold, value, -, -, reason, -, -, decision, action."""
    e = events[n]
    e[:] = 0.0
    e[0], e[1], e[2], e[3], e[4], e[7], e[10], e[11] = kind, symbol, t, threshold, value, reason, decision, action
    return n + 1


@njit(cache=True, inline="always")
def guard_mark(t, equity, pos, acct, gv, gs, grets, gp, b_sym, b_close, i, j, exits):  # noqa: ANN001
    """Bar time t is marked (bars i..j of the step): update the peak, the trailing highs and the returns, and
    judge the portfolio. Writes the symbols to close into exits[1..exits[0]]: s for a trailing stop, -(s + 1) for
    a position held beyond exit.max_holding_hours (the exit monitor).
    Returns (verdict, the measured value, its threshold)."""
    exits[0] = 0
    # The return history (one row per bar time, the symbols without a bar at t count 0) for the CVaR rule.
    if grets.shape[0] > 1:
        row = int(gv[G_RET_NEXT])
        grets[row, :] = 0.0
        for b in range(i, j):
            s = b_sym[b]
            prev = gs[s, GS_PREV_CLOSE]
            if prev > 0.0:
                grets[row, s] = b_close[b] / prev - 1.0
            gs[s, GS_PREV_CLOSE] = b_close[b]
        gv[G_RET_NEXT] = (row + 1) % grets.shape[0]
        gv[G_RET_ROWS] = min(gv[G_RET_ROWS] + 1.0, grets.shape[0])
    # Trailing highs (lows for shorts), restarted whenever a position opens or turns around.
    trail = gp[GP_TRAIL]
    for s in range(pos.shape[0]):
        q = pos[s, Q]
        if q == 0.0:
            gs[s, GS_SIDE], gs[s, GS_BEST], gs[s, GS_EXITING] = 0.0, 0.0, 0.0
            continue
        side = 1.0 if q > 0.0 else -1.0
        last = pos[s, LAST]
        if gs[s, GS_SIDE] != side:
            gs[s, GS_SIDE], gs[s, GS_BEST], gs[s, GS_EXITING], gs[s, GS_OPENED] = side, last, 0.0, t
        elif (last - gs[s, GS_BEST]) * side > 0.0:
            gs[s, GS_BEST] = last
        if gs[s, GS_EXITING] == side:
            continue
        if trail > 0.0 and _beyond((gs[s, GS_BEST] - last) * side / gs[s, GS_BEST], trail):
            exits[0] += 1
            exits[exits[0]] = s
        elif gp[GP_MAX_HOLD_NS] > 0.0 and t - gs[s, GS_OPENED] >= gp[GP_MAX_HOLD_NS]:
            exits[0] += 1
            exits[exits[0]] = -(s + 1)
    if equity > gv[G_PEAK]:
        gv[G_PEAK] = equity
    if gv[G_KILLED] != 0.0:
        return MARK_KILL, 0.0, gp[GP_KILL_LOSS]
    day_start = acct[A_DAY_START]
    loss = 1.0 - equity / day_start if day_start > 0.0 else 0.0
    if gp[GP_KILL_LOSS] > 0.0 and _beyond(loss, gp[GP_KILL_LOSS]):
        gv[G_KILLED] = 1.0
        return MARK_KILL, loss, gp[GP_KILL_LOSS]
    drawdown = 1.0 - equity / gv[G_PEAK] if gv[G_PEAK] > 0.0 else 0.0
    if gp[GP_DRAWDOWN] > 0.0 and _beyond(drawdown, gp[GP_DRAWDOWN]):
        gv[G_PEAK] = equity
        return MARK_LIQUIDATE, drawdown, gp[GP_DRAWDOWN]
    return MARK_OK, 0.0, 0.0


@njit(cache=True, inline="always")
def guard_order(t, s, gv, gs, gring):  # noqa: ANN001
    """An order was placed for symbol s at t: count it for the rate and per-symbol limits."""
    k = int(gv[G_RING_NEXT])
    gring[k] = t
    gv[G_RING_NEXT] = (k + 1) % gring.shape[0]
    day = t // DAY_NS
    if gs[s, GS_DAY] != day:
        gs[s, GS_DAY], gs[s, GS_DAY_COUNT] = day, 0.0
    gs[s, GS_DAY_COUNT] += 1.0


@njit(cache=True, inline="always")
def guard_fill(t, s, realized, filled_value, slippage, gv, gs, gp):  # noqa: ANN001
    """A fill of symbol s: `realized` P&L it closed (0 for an opening fill), its value and slippage cost.
    Returns (reason, action, value, threshold) of a rule it set off, reason OK otherwise."""
    if realized < 0.0:
        gv[G_STREAK] += 1.0
        if gp[GP_LOSSES] > 0.0 and gv[G_STREAK] >= gp[GP_LOSSES]:
            streak = gv[G_STREAK]
            gv[G_PAUSE_DAY], gv[G_STREAK] = t // DAY_NS, 0.0
            return R_LOSSES, A_PAUSE, streak, gp[GP_LOSSES]
    elif realized > 0.0:
        gv[G_STREAK] = 0.0
    expected = gp[GP_EXPECTED_SLIP] * filled_value
    if gp[GP_SLIP_MULT] > 0.0 and expected > 0.0 and _beyond(slippage / expected, gp[GP_SLIP_MULT]):
        gs[s, GS_BLOCK_UNTIL] = t + gp[GP_SLIP_BLOCK_NS]
        return R_SLIPPAGE, A_BLOCK, slippage / expected, gp[GP_SLIP_MULT]
    return OK, 0, 0.0, 0.0


@njit(cache=True, inline="always")
def _cvar(pos, equity, s, add_value, grets, rows):  # noqa: ANN001
    """Historical CVaR-95 of the portfolio (plus add_value of symbol s) over the return history, as a share of
    equity: the mean loss of the worst 5% of bar times."""
    n = rows
    pnl = np.zeros(n)
    for k in range(pos.shape[0]):
        value = pos[k, Q] * pos[k, LAST] + (add_value if k == s else 0.0)
        if value != 0.0:
            for r in range(n):
                pnl[r] += value * grets[r, k]
    pnl.sort()
    tail = max(int(math.ceil(0.05 * n)), 1)
    return -pnl[:tail].mean() / equity


@njit(cache=True, inline="always")
def guard_entry(t, s, side, notional, equity, pos, acct, gv, gs, gring, grets, gp):  # noqa: ANN001, PLR0911, PLR0912
    """May an entry of `notional` (currency) on `side` (+1 buy, -1 sell) in symbol s be placed at t?
    (The entries already placed at t count through G_PLACED_VALUE / G_PLACED_NEW.)
    Returns (reason, value, threshold, notional allowed): reason OK with the whole notional; another reason with
    a smaller notional when it was capped, with 0 when it is refused."""
    if gv[G_OPERATOR_PAUSE] != 0.0:
        return R_PAUSED, 0.0, 0.0, 0.0
    if gv[G_NO_ENTRIES] != 0.0:
        return R_DRAWDOWN, 0.0, gp[GP_DRAWDOWN], 0.0
    placed_value, placed_new = gv[G_PLACED_VALUE], gv[G_PLACED_NEW]
    day = t // DAY_NS
    day_start = acct[A_DAY_START]
    loss = 1.0 - equity / day_start if day_start > 0.0 else 0.0
    if gp[GP_DAILY_LOSS] > 0.0 and _beyond(loss, gp[GP_DAILY_LOSS]):
        return R_DAILY_LOSS, loss, gp[GP_DAILY_LOSS], 0.0
    if gv[G_PAUSE_DAY] == day:
        return R_LOSSES, gp[GP_LOSSES], gp[GP_LOSSES], 0.0
    if t < gs[s, GS_BLOCK_UNTIL]:
        return R_SLIPPAGE, (gs[s, GS_BLOCK_UNTIL] - t) / MINUTE_NS, gp[GP_SLIP_BLOCK_NS] / MINUTE_NS, 0.0
    if gp[GP_RATE] > 0.0:
        recent = 0
        for k in range(gring.shape[0]):
            if gring[k] > t - MINUTE_NS:
                recent += 1
        if recent >= gp[GP_RATE]:
            return R_RATE, recent + 1.0, gp[GP_RATE], 0.0
    if gp[GP_SYMBOL_DAY] > 0.0:
        count = gs[s, GS_DAY_COUNT] if gs[s, GS_DAY] == day else 0.0
        if count >= gp[GP_SYMBOL_DAY]:
            return R_SYMBOL_DAY, count + 1.0, gp[GP_SYMBOL_DAY], 0.0
    held = pos[s, Q]
    opening = held == 0.0 or (held > 0.0) != (side > 0)
    long_value, short_value, sector_value, open_positions = 0.0, 0.0, 0.0, 0
    sector = gs[s, GS_SECTOR]
    for k in range(pos.shape[0]):
        if k == s and opening:  # a position being turned around is on its way out: it does not count
            continue
        v = pos[k, Q] * pos[k, LAST]
        if v > 0.0:
            long_value += v
        elif v < 0.0:
            short_value -= v
        if pos[k, Q] != 0.0:
            open_positions += 1
            if sector > 0.0 and gs[k, GS_SECTOR] == sector:
                sector_value += abs(v)
    if gp[GP_MAX_POSITIONS] > 0.0 and opening and open_positions + placed_new >= gp[GP_MAX_POSITIONS]:
        return R_MAX_POSITIONS, open_positions + placed_new + 1.0, gp[GP_MAX_POSITIONS], 0.0
    # Caps first: the rules below judge the entry at the size it would be placed.
    allowed = notional
    reason, value, threshold = OK, 0.0, 0.0
    symbol_value = abs(held * pos[s, LAST]) if not opening else 0.0
    if gp[GP_SYMBOL] > 0.0 and _beyond(symbol_value + allowed, gp[GP_SYMBOL]):
        allowed = max(gp[GP_SYMBOL] - symbol_value, 0.0)
        reason, value, threshold = R_SYMBOL, symbol_value + notional, gp[GP_SYMBOL]
    gross = long_value + short_value + placed_value
    if gp[GP_TOTAL] > 0.0 and _beyond(gross + allowed, gp[GP_TOTAL]):
        allowed = max(gp[GP_TOTAL] - gross, 0.0)
        reason, value, threshold = R_TOTAL, gross + notional, gp[GP_TOTAL]
    if gp[GP_POSITION_RISK] > 0.0 and gp[GP_STOP] > 0.0:
        most = gp[GP_POSITION_RISK] * equity / gp[GP_STOP] - symbol_value
        if _beyond(allowed, most):
            allowed = max(most, 0.0)
            reason, value, threshold = R_POSITION_RISK, (symbol_value + notional) * gp[GP_STOP] / equity, \
                gp[GP_POSITION_RISK]
    if allowed <= 0.0:
        return reason, value, threshold, 0.0
    if gp[GP_SHORT_SHARE] > 0.0 and side < 0:
        share = (short_value + allowed) / (gross + allowed)
        if _beyond(share, gp[GP_SHORT_SHARE]):
            return R_SHORT, share, gp[GP_SHORT_SHARE], 0.0
    if gp[GP_SECTOR] > 0.0 and sector > 0.0:
        share = (sector_value + allowed) / equity
        if _beyond(share, gp[GP_SECTOR]):
            return R_SECTOR, share, gp[GP_SECTOR], 0.0
    rows = int(gv[G_RET_ROWS])
    if gp[GP_CVAR] > 0.0 and rows >= gp[GP_CVAR_MIN] and rows > 1:
        cvar = _cvar(pos, equity, s, allowed * side, grets, rows)
        if _beyond(cvar, gp[GP_CVAR]):
            return R_CVAR, cvar, gp[GP_CVAR], 0.0
    return (reason if allowed < notional else OK), value, threshold, allowed
