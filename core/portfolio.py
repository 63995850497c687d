"""Portfolio accounting: cash, positions at average price, realized and unrealized P&L, exposures.

Conventions: a fill's commission is paid from cash and counted in `commissions`, not in realized P&L;
realized P&L is booked when a position is reduced, at (fill price - average price) x closed quantity
(sign-adjusted for shorts); a fill that crosses zero closes the old position and opens the rest at the
fill price. Equity = cash + sum of quantity x last price. Day P&L is equity minus the equity at the last
bar of the previous (UTC) day.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_NS = 86_400 * 10**9


@dataclass(slots=True)
class Position:
    quantity: float = 0.0
    average_price: float = 0.0
    realized_pnl: float = 0.0
    last_price: float = 0.0

    @property
    def market_value(self) -> float:
        return self.quantity * self.last_price

    @property
    def unrealized_pnl(self) -> float:
        return self.quantity * (self.last_price - self.average_price)


class Portfolio:
    def __init__(self, initial_cash: float) -> None:
        self.initial_cash = initial_cash
        self.cash = initial_cash
        self.positions: dict[str, Position] = {}
        self.commissions = 0.0
        self.realized_pnl = 0.0
        self._day = None  # UTC day number of the last mark
        self._day_start_equity = initial_cash
        self._last_equity = initial_cash

    def position(self, symbol: str) -> Position:
        return self.positions.get(symbol) or Position()

    def apply_fill(self, symbol: str, quantity: float, price: float, commission: float) -> float:
        """Book a fill (quantity > 0 buys, < 0 sells); returns the realized P&L of the fill."""
        pos = self.positions.setdefault(symbol, Position(last_price=price))
        realized = 0.0
        if pos.quantity == 0 or (pos.quantity > 0) == (quantity > 0):
            new_quantity = pos.quantity + quantity
            pos.average_price = (pos.average_price * pos.quantity + price * quantity) / new_quantity
            pos.quantity = new_quantity
        else:
            closed = min(abs(quantity), abs(pos.quantity))
            direction = 1.0 if pos.quantity > 0 else -1.0
            realized = (price - pos.average_price) * closed * direction
            remaining = pos.quantity + quantity
            if remaining == 0 or (remaining > 0) == (pos.quantity > 0):
                pos.quantity = remaining
                if remaining == 0:
                    pos.average_price = 0.0
            else:  # crossed zero: the rest opens a position the other way at the fill price
                pos.quantity = remaining
                pos.average_price = price
        pos.realized_pnl += realized
        self.realized_pnl += realized
        self.cash -= quantity * price + commission
        self.commissions += commission
        if pos.last_price == 0:
            pos.last_price = price
        return realized

    def mark(self, symbol: str, price: float) -> None:
        pos = self.positions.get(symbol)
        if pos is not None:
            pos.last_price = price

    def close_day(self, time_ns: int) -> None:
        """Call after marking a bar time; rolls the day-start equity when the UTC day changes."""
        day = time_ns // DAY_NS
        if self._day is not None and day != self._day:
            self._day_start_equity = self._last_equity
        self._day = day
        self._last_equity = self.equity

    def drop_flat(self) -> list[str]:
        """Forget positions that are flat; returns their symbols."""
        flat = [s for s, p in self.positions.items() if p.quantity == 0]
        for s in flat:
            del self.positions[s]
        return flat

    @property
    def equity(self) -> float:
        return self.cash + sum(p.market_value for p in self.positions.values())

    @property
    def unrealized_pnl(self) -> float:
        return sum(p.unrealized_pnl for p in self.positions.values())

    @property
    def gross_exposure(self) -> float:
        return sum(abs(p.market_value) for p in self.positions.values())

    @property
    def net_exposure(self) -> float:
        return sum(p.market_value for p in self.positions.values())

    @property
    def day_pnl(self) -> float:
        return self.equity - self._day_start_equity

    @property
    def open_positions(self) -> int:
        return sum(1 for p in self.positions.values() if p.quantity != 0)
