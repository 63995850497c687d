"""The vectorised fast path: per-bar entry/exit signals to fills, round trips and an equity curve.

For signal-only research. One numba kernel runs the same rules as the event-driven engine graph (the
simulated broker fills market orders at the symbol's next open), so both give the same trades.

Inputs are (T bars x S symbols) arrays: `open` and `close` (NaN where a symbol has no bar; the two must
agree on where), and boolean `entries` / `exits` decided at bar t's close. Long only. Per bar t:

1. **Open.** Orders decided at the close of the symbol's previous bar fill at its open; a symbol with no
   bar at t keeps its order pending until its next bar. Buy price = open x (1 + slippage_bps / 1e4), sell
   price = open x (1 - slippage_bps / 1e4). Orders fill in decision order: by decision bar, and within
   one decision bar all exits first, then all entries, each in symbol order (sells free cash for buys).
   An order left pending by a gap therefore fills before the orders decided after it.
   * An exit sells the whole position.
   * An entry is a notional order: weight x equity at the decision close, minus the symbol's market value
     at that close (zero: entries are only decided when flat). At the fill the quantity is the largest q
     (whole shares unless `fractional`) with q x price + commission(q) <= min(notional, cash then);
     q < 1 share (whole) or q <= 0 rejects the order (no fill, counted in `rejected`). With no costs a whole
     q is exactly budget // price; a buy never leaves cash below zero, also not by rounding.
   Commission = max(commission_min, commission_per_share x q) + commission_bps / 1e4 x q x price.
2. **Close.** equity(t) = cash + sum of quantity x close (the last known close where a symbol has no bar).
3. **Decisions** (only for symbols with a bar at t): an exit for a symbol held long with `exits[t]`; an
   entry for a flat symbol with `entries[t]`, no order pending and no `exits[t]` (when both are set the
   exit wins: it sells a long position and keeps a flat symbol flat). A signal in the direction already
   held does nothing.

Orders decided on the last bar are counted in `orders` but never fill. A position still open at the end
stays open: its trade has exit bar -1 and exit price NaN, and its pnl is marked at the last close.

A trade's pnl is net of both commissions (sale proceeds - sale commission - (cost + buy commission)); its
`return_pct` is pnl / (entry price x quantity), a fraction, as the engine's `Trade.return_pct`.

`ema_cross_signals` makes the reference strategy's signals (EMA 12/26 cross, TA-Lib-seeded EMAs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from numba import njit

from utp.core.broker import affordable as _affordable
from utp.core.indicators import ema
from utp.core.kernels import entry
from utp.core.performance import Metrics, compute_metrics, simple_returns

# Kernel status codes (the kernel cannot raise with a message cheaply).
_OK = 0
_OPEN_CLOSE_DISAGREE = 1


@entry
@njit(cache=True)
def _simulate(  # noqa: PLR0913, PLR0915
    open_, close, entries, exits, initial_cash, weight, fractional, slippage, per_share, minimum, rate,
    fill_bar, fill_symbol, fill_quantity, fill_price, fill_commission,
    trade_symbol, trade_entry_bar, trade_entry_price, trade_exit_bar, trade_exit_price, trade_quantity,
    trade_pnl, trade_return, equity_out, cash_out, counts,
):  # fmt: skip
    """Writes into the arrays passed in (allocating large outputs inside a kernel is much slower).

    counts on return: fills, trades, orders, rejected, status."""
    n_bars, n_symbols = close.shape
    quantity = np.zeros(n_symbols)
    last = np.full(n_symbols, np.nan)
    open_trade = np.full(n_symbols, -1, np.int64)
    entry_cost = np.zeros(n_symbols)  # cash the open trade's buy took, commission included
    pending = np.zeros(n_symbols, np.bool_)
    # Pending orders in decision order (at most one per symbol): symbol, buy?, notional.
    queue_symbol = np.empty(n_symbols, np.int64)
    queue_buy = np.empty(n_symbols, np.bool_)
    queue_notional = np.empty(n_symbols)
    queued = 0
    cash = initial_cash
    fills = trades = orders = rejected = 0
    buy_factor, sell_factor = 1.0 + slippage, 1.0 - slippage

    for t in range(n_bars):
        # 1. the open
        if queued:
            kept = 0
            for k in range(queued):
                s = queue_symbol[k]
                o = open_[t, s]
                if np.isnan(o):  # no bar: the order waits for the symbol's next one
                    queue_symbol[kept], queue_buy[kept], queue_notional[kept] = s, queue_buy[k], queue_notional[k]
                    kept += 1
                    continue
                pending[s] = False
                if queue_buy[k]:
                    price = o * buy_factor
                    q = _affordable(min(queue_notional[k], cash), price, fractional, per_share, minimum, rate)
                    if q <= 0.0:
                        rejected += 1
                        continue
                    notional = q * price
                    commission = max(minimum, per_share * q) + rate * notional
                    spent = notional + commission
                    cash -= spent
                    quantity[s] = q
                    entry_cost[s] = spent
                    trade_symbol[trades], trade_entry_bar[trades], trade_entry_price[trades] = s, t, price
                    trade_quantity[trades] = q
                    open_trade[s] = trades
                    trades += 1
                else:
                    price = o * sell_factor
                    q = quantity[s]
                    notional = q * price
                    commission = max(minimum, per_share * q) + rate * notional
                    cash += notional - commission
                    quantity[s] = 0.0
                    i = open_trade[s]
                    trade_exit_bar[i], trade_exit_price[i] = t, price
                    pnl = (notional - commission) - entry_cost[s]
                    trade_pnl[i] = pnl
                    trade_return[i] = pnl / (trade_entry_price[i] * q)
                    open_trade[s] = -1
                    q = -q
                fill_bar[fills], fill_symbol[fills], fill_quantity[fills] = t, s, q
                fill_price[fills], fill_commission[fills] = price, commission
                fills += 1
            queued = kept

        # 2. the close; exits are decided here too (they need no equity)
        held = 0.0
        for s in range(n_symbols):
            c = close[t, s]
            bar = not np.isnan(c)
            if bar == np.isnan(open_[t, s]):
                counts[4] = _OPEN_CLOSE_DISAGREE
                return
            if bar:
                last[s] = c
            if quantity[s] != 0.0:
                held += quantity[s] * last[s]
                if bar and exits[t, s] and not pending[s]:
                    queue_symbol[queued], queue_buy[queued], queue_notional[queued] = s, False, 0.0
                    pending[s] = True
                    queued += 1
                    orders += 1
        equity = cash + held
        equity_out[t], cash_out[t] = equity, cash

        # 3. entries, after every exit of this bar: sells are applied first at the next open
        for s in range(n_symbols):
            wanted = entries[t, s] and not exits[t, s] and not np.isnan(close[t, s])
            if wanted and quantity[s] == 0.0 and not pending[s]:
                queue_symbol[queued], queue_buy[queued] = s, True
                queue_notional[queued] = weight * equity  # minus the market value held: zero when flat
                pending[s] = True
                queued += 1
                orders += 1

    # Open positions: the trade stays open, marked at the last close.
    for s in range(n_symbols):
        i = open_trade[s]
        if i >= 0:
            trade_exit_bar[i], trade_exit_price[i] = -1, np.nan
            pnl = quantity[s] * last[s] - entry_cost[s]
            trade_pnl[i] = pnl
            trade_return[i] = pnl / (trade_entry_price[i] * quantity[s])
    counts[0], counts[1], counts[2], counts[3], counts[4] = fills, trades, orders, rejected, _OK


@dataclass(frozen=True, slots=True)
class Fills:
    bar: np.ndarray  # int64 bar index
    symbol: np.ndarray  # int64 symbol (column) index
    quantity: np.ndarray  # > 0 bought, < 0 sold
    price: np.ndarray  # after slippage
    commission: np.ndarray

    def __len__(self) -> int:
        return int(self.bar.shape[0])


@dataclass(frozen=True, slots=True)
class Trades:
    """Round trips in order of entry. An open one has exit_bar -1, exit_price NaN, pnl marked at the last close."""

    symbol: np.ndarray  # int64
    entry_bar: np.ndarray  # int64
    entry_price: np.ndarray
    exit_bar: np.ndarray  # int64, -1 while open
    exit_price: np.ndarray  # NaN while open
    quantity: np.ndarray
    pnl: np.ndarray  # net of both commissions
    return_pct: np.ndarray  # pnl / (entry_price x quantity), a fraction

    def __len__(self) -> int:
        return int(self.symbol.shape[0])

    @property
    def closed(self) -> np.ndarray:
        return self.exit_bar >= 0


@dataclass(frozen=True, slots=True)
class VectorResult:
    fills: Fills
    trades: Trades
    equity: np.ndarray  # at each bar's close
    cash: np.ndarray  # at each bar's close
    initial_cash: float
    orders: int  # decided, including any left unfilled at the end
    rejected: int  # entries that could not buy a single (whole) share

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1]) if self.equity.size else self.initial_cash

    def returns(self) -> np.ndarray:
        """Per-bar returns measured from the initial cash: a loss on the first bar counts."""
        return simple_returns(np.concatenate([[self.initial_cash], self.equity]))

    def invested(self) -> np.ndarray:
        """Whether any position is held at each bar's close."""
        change = np.zeros(self.equity.shape[0] + 1, np.int64)
        opened = self.fills.quantity > 0
        np.add.at(change, self.fills.bar[opened], 1)
        np.add.at(change, self.fills.bar[~opened], -1)
        return np.cumsum(change[:-1]) > 0

    def metrics(self, periods_per_year: float, benchmark: np.ndarray | None = None) -> Metrics:
        """Every statistic of `utp.core.performance`, as the backtest engine reports them: trade statistics
        from closed round trips, turnover from the filled notional. `benchmark`: its returns on the same bars."""
        closed = self.trades.closed
        return compute_metrics(
            self.returns(),
            periods_per_year,
            benchmark=benchmark,
            trade_pnls=self.trades.pnl[closed].tolist(),
            traded_notional=float(np.sum(np.abs(self.fills.quantity) * self.fills.price)),
            equity=self.equity,
            invested=self.invested(),
        )


def _as_2d(name: str, a: np.ndarray, dtype: type) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-d (one symbol) or 2-d (bars x symbols), got {a.ndim}-d")
    a = np.ascontiguousarray(a, dtype=dtype).view()
    # Always read-only (polars hands out read-only arrays): numba types the two apart and would compile twice.
    a.flags.writeable = False
    return a


def backtest_signals(
    open_: np.ndarray,
    close: np.ndarray,
    entries: np.ndarray,
    exits: np.ndarray,
    *,
    initial_cash: float = 100_000.0,
    weight: float = 1.0,
    fractional: bool = False,
    slippage_bps: float = 0.0,
    commission_per_share: float = 0.0,
    commission_min: float = 0.0,
    commission_bps: float = 0.0,
) -> VectorResult:
    """Simulate long-only market orders from signals (see the module's docstring for the exact rules).

    Arrays are (bars x symbols), or 1-d for one symbol. Only the open (fills) and close (marks, sizing)
    are read: market orders need no high or low. Raises ValueError for mismatched shapes, open and close
    NaN on different bars, or a non-positive weight or initial cash.
    """
    open_ = _as_2d("open", open_, np.float64)
    close = _as_2d("close", close, np.float64)
    entries = _as_2d("entries", entries, np.bool_)
    exits = _as_2d("exits", exits, np.bool_)
    if not open_.shape == close.shape == entries.shape == exits.shape:
        raise ValueError(
            f"open {open_.shape}, close {close.shape}, entries {entries.shape} and exits {exits.shape} differ"
        )
    if not (initial_cash > 0 and np.isfinite(initial_cash)):
        raise ValueError(f"initial_cash must be a positive number, got {initial_cash!r}")
    if not (weight > 0 and np.isfinite(weight)):
        raise ValueError(f"weight must be a positive number, got {weight!r}")
    if min(slippage_bps, commission_per_share, commission_min, commission_bps) < 0:
        raise ValueError("slippage and commissions must be >= 0")
    n_bars = close.shape[0]
    # Every fill comes from one signal and every trade from one entry, which bounds the outputs.
    n_entries = int(np.count_nonzero(entries))
    max_fills = n_entries + int(np.count_nonzero(exits))
    fill = (np.empty(max_fills, np.int64), np.empty(max_fills, np.int64), *(np.empty(max_fills) for _ in range(3)))
    trade = (
        np.empty(n_entries, np.int64), np.empty(n_entries, np.int64), np.empty(n_entries),
        np.empty(n_entries, np.int64), *(np.empty(n_entries) for _ in range(4)),
    )  # fmt: skip
    equity, cash = np.empty(n_bars), np.empty(n_bars)
    counts = np.zeros(5, np.int64)
    _simulate(
        open_, close, entries, exits, float(initial_cash), float(weight), bool(fractional), slippage_bps / 1e4,
        float(commission_per_share), float(commission_min), commission_bps / 1e4, *fill, *trade, equity, cash, counts,
    )  # fmt: skip
    n_fills, n_trades, orders, rejected, status = (int(c) for c in counts)
    if status == _OPEN_CLOSE_DISAGREE:
        raise ValueError("open and close must be NaN on the same bars (NaN = the symbol has no bar)")
    return VectorResult(
        fills=Fills(*(a[:n_fills].copy() for a in fill)),
        trades=Trades(*(a[:n_trades].copy() for a in trade)),
        equity=equity,
        cash=cash,
        initial_cash=float(initial_cash),
        orders=orders,
        rejected=rejected,
    )


def _cross_1d(close: np.ndarray, fast: int, slow: int) -> tuple[np.ndarray, np.ndarray]:
    f, s = ema(close, fast), ema(close, slow)
    up, down = np.zeros(close.shape[0], np.bool_), np.zeros(close.shape[0], np.bool_)
    # NaN (warming up) compares False, so the first bar with both EMAs ready cannot cross.
    with np.errstate(invalid="ignore"):
        up[1:] = (f[1:] > s[1:]) & (f[:-1] <= s[:-1])
        down[1:] = (f[1:] < s[1:]) & (f[:-1] >= s[:-1])
    return up, down


def ema_cross_signals(close: np.ndarray, fast: int = 12, slow: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """(entries, exits): the fast EMA crossing above / below the slow one, shaped like `close` (1-d or 2-d).

    Up on bar t: fast > slow at t and fast <= slow at t-1; down: fast < slow at t and fast >= slow at t-1;
    both EMAs ready at t and t-1. The EMAs run over each symbol's own bars (NaN = no bar, skipped), as a
    streaming indicator sees them, so a gap neither breaks nor restarts them.
    """
    close = np.asarray(close, np.float64)
    if close.ndim not in (1, 2):
        raise ValueError(f"close must be 1-d or 2-d, got {close.ndim}-d")
    columns = close[:, None] if close.ndim == 1 else close
    entries, exits = np.zeros(columns.shape, np.bool_), np.zeros(columns.shape, np.bool_)
    for j in range(columns.shape[1]):
        column = columns[:, j]
        present = ~np.isnan(column)
        if present.all():
            entries[:, j], exits[:, j] = _cross_1d(column, fast, slow)
        else:
            rows = np.flatnonzero(present)
            entries[rows, j], exits[rows, j] = _cross_1d(column[rows], fast, slow)
    if close.ndim == 1:
        return entries[:, 0], exits[:, 0]
    return entries, exits


@dataclass(frozen=True, slots=True)
class WideBars:
    times: np.ndarray  # int64 event_time_ns, ascending
    symbols: tuple[str, ...]
    open: np.ndarray  # (bars x symbols), NaN where a symbol has no bar
    close: np.ndarray


def wide_bars(bars: pl.DataFrame, symbols: tuple[str, ...] | None = None) -> WideBars:
    """Long bars (BAR_COLUMNS, as `utp.storage.datasets` gives them) as (bars x symbols) arrays."""
    chosen = tuple(symbols) if symbols is not None else tuple(bars["symbol"].unique(maintain_order=True))
    times = bars["event_time_ns"].unique().sort()
    arrays = []
    for column in ("open", "close"):
        wide = bars.pivot(on="symbol", index="event_time_ns", values=column, aggregate_function=None)
        wide = pl.DataFrame({"event_time_ns": times}).join(wide, on="event_time_ns", how="left")
        missing = [s for s in chosen if s not in wide.columns]
        if missing:
            raise ValueError(f"no bars for {', '.join(missing)}")
        arrays.append(wide.select(chosen).to_numpy().astype(np.float64))
    return WideBars(times.to_numpy(), chosen, np.ascontiguousarray(arrays[0]), np.ascontiguousarray(arrays[1]))
