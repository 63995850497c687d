"""Portfolio accounting: cash, positions at average price, realized and unrealized P&L, exposures, costs.

Conventions: a fill's commission is paid from cash and counted in `commissions`, not in realized P&L;
realized P&L is booked when a position is reduced, at (fill price - average price) x closed quantity
(sign-adjusted for shorts); a fill that crosses zero closes the old position and opens the rest at the
fill price. Equity = cash + sum of quantity x last price. Short positions pay a borrow fee of
`borrow_rate` a year on their market value, accrued bar by bar over the time since the previous bar
time and taken from cash. Day P&L is equity minus the equity at the last bar time of the previous UTC
day. All of it per symbol too (`PositionView`), for attribution.

The books move in one numba pass over a block of bars and the fills that happened in it (fills happen at
or after a bar's open, so a bar time's fills are booked before its closes mark the positions); one row
of account figures comes out per bar time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from utp.core.kernels import entry

DAY_NS = 86_400 * 10**9
YEAR_NS = 365 * DAY_NS

# Per-symbol columns.
Q, AVG, REALIZED, LAST, COMMISSIONS, BORROW, _NPOS = range(7)
# Account scalars.
A_CASH, A_REALIZED, A_COMMISSIONS, A_BORROW, A_DAY, A_DAY_START, A_LAST_EQUITY, A_LAST_TIME, _NACC = range(9)
# Columns of an account row.
ACCOUNT_COLUMNS = ("cash", "equity", "gross_exposure", "net_exposure", "long_exposure", "short_exposure",
                   "realized_pnl", "unrealized_pnl", "day_pnl", "commissions", "borrow_costs", "open_positions")  # fmt: skip
R_TIME = len(ACCOUNT_COLUMNS)


@njit(cache=True, inline="always")
def book_fill(pos, acct, s, q, price, commission):  # noqa: ANN001
    """Book a fill of q shares (> 0 bought) of symbol s."""
    held = pos[s, Q]
    if held == 0.0 or (held > 0.0) == (q > 0.0):
        total = held + q
        pos[s, AVG] = (pos[s, AVG] * held + price * q) / total
        pos[s, Q] = total
    else:
        closed = min(abs(q), abs(held))
        direction = 1.0 if held > 0.0 else -1.0
        realized = (price - pos[s, AVG]) * closed * direction
        pos[s, REALIZED] += realized
        acct[A_REALIZED] += realized
        remaining = held + q
        if abs(remaining) < 1e-12:
            pos[s, Q] = 0.0
            pos[s, AVG] = 0.0
        elif (remaining > 0.0) == (held > 0.0):
            pos[s, Q] = remaining
        else:  # crossed zero: the rest opens the other way at the fill price
            pos[s, Q] = remaining
            pos[s, AVG] = price
    acct[A_CASH] -= q * price + commission
    acct[A_COMMISSIONS] += commission
    pos[s, COMMISSIONS] += commission
    if pos[s, LAST] == 0.0:
        pos[s, LAST] = price


@njit(cache=True, inline="always")
def accrue_borrow(pos, acct, t, borrow_rate):  # noqa: ANN001
    """Borrow fees on shorts for the time since the previous bar time, at the previous marks."""
    if borrow_rate > 0.0 and acct[A_LAST_TIME] >= 0.0:  # -1: no bar time yet
        dt = (t - acct[A_LAST_TIME]) / YEAR_NS
        for s in range(pos.shape[0]):
            if pos[s, Q] < 0.0:
                fee = -pos[s, Q] * pos[s, LAST] * borrow_rate * dt
                pos[s, BORROW] += fee
                acct[A_BORROW] += fee
                acct[A_CASH] -= fee


@njit(cache=True, inline="always")
def account_row(pos, acct, t, r):  # noqa: ANN001
    """The account after bar time t (closes marked) into row r; rolls the day. Returns equity."""
    equity = acct[A_CASH]
    long_value, short_value, unrealized, open_positions = 0.0, 0.0, 0.0, 0
    for s in range(pos.shape[0]):
        q = pos[s, Q]
        if q != 0.0:
            value = q * pos[s, LAST]
            equity += value
            unrealized += q * (pos[s, LAST] - pos[s, AVG])
            open_positions += 1
            if q > 0.0:
                long_value += value
            else:
                short_value -= value
    day = t // DAY_NS
    if acct[A_DAY] >= 0.0 and day != acct[A_DAY]:
        acct[A_DAY_START] = acct[A_LAST_EQUITY]
    acct[A_DAY] = day
    acct[A_LAST_EQUITY] = equity
    acct[A_LAST_TIME] = t
    r[0] = acct[A_CASH]
    r[1] = equity
    r[2] = long_value + short_value
    r[3] = long_value - short_value
    r[4] = long_value
    r[5] = short_value
    r[6] = acct[A_REALIZED]
    r[7] = unrealized
    r[8] = equity - acct[A_DAY_START]
    r[9] = acct[A_COMMISSIONS]
    r[10] = acct[A_BORROW]
    r[11] = open_positions
    r[R_TIME] = t
    return equity


@entry
@njit(cache=True)
def _run(time, sym, close, f_time, f_sym, f_qty, f_price, f_comm, pos, acct, borrow_rate, rows, touched):  # noqa: ANN001
    """Book fills and mark closes over bars sorted by time; one row per bar time into `rows`. `touched[s]`
    is set for symbols that had a fill. Returns the number of rows."""
    n, m = time.shape[0], f_time.shape[0]
    f = 0
    n_rows = 0
    i = 0
    while i < n:
        t = time[i]
        accrue_borrow(pos, acct, t, borrow_rate)
        while f < m and f_time[f] <= t:
            book_fill(pos, acct, f_sym[f], f_qty[f], f_price[f], f_comm[f])
            touched[f_sym[f]] = True
            f += 1
        while i < n and time[i] == t:
            pos[sym[i], LAST] = close[i]
            i += 1
        account_row(pos, acct, t, rows[n_rows])
        n_rows += 1
    while f < m:  # fills after the last bar (none in a healthy run) are still booked
        book_fill(pos, acct, f_sym[f], f_qty[f], f_price[f], f_comm[f])
        touched[f_sym[f]] = True
        f += 1
    return n_rows


@dataclass(frozen=True, slots=True)
class PositionView:
    symbol: str
    quantity: float
    average_price: float
    last_price: float
    realized_pnl: float
    commissions: float
    borrow_costs: float

    @property
    def market_value(self) -> float:
        return self.quantity * self.last_price

    @property
    def unrealized_pnl(self) -> float:
        return self.quantity * (self.last_price - self.average_price)


@dataclass(frozen=True, slots=True)
class AccountRows:
    """Account figures after each bar time of a block: `times` and one array per ACCOUNT_COLUMNS name."""

    times: np.ndarray
    values: np.ndarray  # (bar times, len(ACCOUNT_COLUMNS))
    touched: np.ndarray  # bool per symbol: had a fill in the block

    def column(self, name: str) -> np.ndarray:
        return self.values[:, ACCOUNT_COLUMNS.index(name)]


class Portfolio:
    """The books of one account over a universe of symbols (indexed as the universe orders them)."""

    def __init__(self, symbols: tuple[str, ...] | list[str], initial_cash: float, *, borrow_rate: float = 0.0) -> None:
        self.symbols = tuple(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.initial_cash = initial_cash
        self.borrow_rate = borrow_rate
        self.pos = np.zeros((len(self.symbols), _NPOS))
        self.acct = np.zeros(_NACC)
        self.acct[A_CASH] = initial_cash
        self.acct[A_DAY] = -1.0
        self.acct[A_DAY_START] = initial_cash
        self.acct[A_LAST_EQUITY] = initial_cash
        self.acct[A_LAST_TIME] = -1.0
        self._rows = np.zeros((64, R_TIME + 1))
        self._no_fill = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0))

    def run(
        self,
        time: np.ndarray,
        symbol: np.ndarray,
        close: np.ndarray,
        fills: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> AccountRows:
        """Book `fills` (time, symbol index, signed quantity, price, commission; sorted by time) and mark the
        closes of bars sorted by time. Returns the account after each bar time."""
        n = time.shape[0]
        if self._rows.shape[0] < n:
            self._rows = np.zeros((max(n, 2 * self._rows.shape[0]), R_TIME + 1))
        touched = np.zeros(len(self.symbols), np.bool_)
        f = fills if fills is not None else self._no_fill
        rows = _run(time, symbol, close, *f, self.pos, self.acct, self.borrow_rate, self._rows, touched)
        values = self._rows[:rows]
        return AccountRows(values[:, R_TIME].astype(np.int64), values[:, :R_TIME].copy(), touched)

    def apply_fill(self, symbol: str, quantity: float, price: float, commission: float) -> float:
        """Book one fill outside a bar block (tests, reconciliation); returns the P&L it realized."""
        before = self.acct[A_REALIZED]
        book_fill(self.pos, self.acct, self.index[symbol], quantity, price, commission)
        return float(self.acct[A_REALIZED] - before)

    def mark(self, symbol: str, price: float) -> None:
        self.pos[self.index[symbol], LAST] = price

    def position(self, symbol: str) -> PositionView:
        s = self.index[symbol]
        p = self.pos[s]
        return PositionView(symbol, float(p[Q]), float(p[AVG]), float(p[LAST]), float(p[REALIZED]),
                            float(p[COMMISSIONS]), float(p[BORROW]))  # fmt: skip

    def quantity(self, s: int) -> float:
        return float(self.pos[s, Q])

    def held_symbols(self) -> list[int]:
        return [int(s) for s in np.flatnonzero(self.pos[:, Q])]

    @property
    def positions(self) -> dict[str, PositionView]:
        """Open positions by symbol."""
        return {self.symbols[s]: self.position(self.symbols[s]) for s in self.held_symbols()}

    @property
    def cash(self) -> float:
        return float(self.acct[A_CASH])

    @property
    def equity(self) -> float:
        return float(self.acct[A_CASH] + np.dot(self.pos[:, Q], self.pos[:, LAST]))

    @property
    def realized_pnl(self) -> float:
        return float(self.acct[A_REALIZED])

    @property
    def unrealized_pnl(self) -> float:
        return float(np.dot(self.pos[:, Q], self.pos[:, LAST] - self.pos[:, AVG]))

    @property
    def commissions(self) -> float:
        return float(self.acct[A_COMMISSIONS])

    @property
    def borrow_costs(self) -> float:
        return float(self.acct[A_BORROW])

    @property
    def gross_exposure(self) -> float:
        return float(np.abs(self.pos[:, Q] * self.pos[:, LAST]).sum())

    @property
    def net_exposure(self) -> float:
        return float((self.pos[:, Q] * self.pos[:, LAST]).sum())
