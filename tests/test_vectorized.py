"""The vectorised fast path against plain Python loops written here from the rules, and backtesting.py."""

from __future__ import annotations

import math
import warnings
from datetime import date
from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from utp.core.indicators import ema
from utp.core.performance import compute_metrics, simple_returns
from utp.core.vectorized import VectorResult, backtest_signals, ema_cross_signals, wide_bars
from utp.storage.datasets import dataset, load_sp500_index

TOL = 1e-9


@pytest.fixture(scope="module")
def goog() -> tuple[np.ndarray, np.ndarray]:
    bars = dataset("goog").bars()
    return bars["open"].to_numpy(), bars["close"].to_numpy()


@pytest.fixture(scope="module")
def stocks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    wide = wide_bars(dataset("sp500").bars(("AAPL", "JPM", "KO", "XOM", "AMD", "WMT")))
    return wide.times, wide.open, wide.close


# -- independent references -------------------------------------------------------------------------
def reference_loop(open_: np.ndarray, close: np.ndarray, entries: np.ndarray, exits: np.ndarray, cash: float):
    """The reference strategy in its simplest words: all in with cash // next open, all out at the next open."""
    shares, trades, pending = 0.0, [], None
    for t in range(len(close)):
        if pending == "buy":
            shares = cash // open_[t]
            cash -= shares * open_[t]
            trades.append([t, open_[t], None, None, shares])
        elif pending == "sell":
            cash += shares * open_[t]
            trades[-1][2:4] = [t, open_[t]]
            shares = 0.0
        pending = None
        if shares and exits[t]:
            pending = "sell"
        elif not shares and entries[t] and not exits[t]:
            pending = "buy"
    return trades, cash + shares * close[-1]


def plain_loop(open_, close, entries, exits, cash, *, weight=1.0, fractional=False, slippage_bps=0.0,  # noqa: ANN001
               per_share=0.0, minimum=0.0, bps=0.0):  # fmt: skip
    """The rules, one symbol and one order at a time, in plain Python (2-d inputs)."""
    n_bars, n_symbols = close.shape
    slip, rate = slippage_bps / 1e4, bps / 1e4
    qty, last, pending = [0.0] * n_symbols, [math.nan] * n_symbols, {}  # pending: symbol -> (decided, side, notional)
    fills, trades, open_trades, equity_curve, cash_curve = [], [], {}, [], []
    orders = rejected = 0

    def commission(q: float, price: float) -> float:
        return max(minimum, per_share * q) + rate * (q * price)

    def exact_cost(q: float, price: float) -> Fraction:
        notional = Fraction(q) * Fraction(price)
        return notional + max(Fraction(minimum), Fraction(per_share) * Fraction(q)) + Fraction(rate) * notional

    for t in range(n_bars):
        due = sorted((decided, side, s) for s, (decided, side, _) in pending.items() if not math.isnan(open_[t, s]))
        for _, side, s in due:  # side 0 = sell sorts before 1 = buy
            notional = pending.pop(s)[2]
            if side == 0:
                price = open_[t, s] * (1 - slip)
                q = qty[s]
                c = commission(q, price)
                cash += q * price - c
                qty[s] = 0.0
                trade = open_trades.pop(s)
                trade.update(exit_bar=t, exit_price=price, pnl=q * price - c - trade["spent"])
                fills.append((t, s, -q, price, c))
                continue
            price = open_[t, s] * (1 + slip)
            budget = min(notional, cash)
            if fractional:
                q = max(0.0, min((budget - minimum) / (price * (1 + rate)), budget / (price * (1 + rate) + per_share)))
            else:  # in exact arithmetic, stepping down from a bound two shares above the affordable
                unit = price * (1 + rate)
                bound = min((budget - minimum) / unit, budget / (unit + per_share))
                q = float(max(0, math.floor(bound) + 2)) if budget > 0 else 0.0
                while q >= 1 and exact_cost(q, price) > Fraction(budget):
                    q -= 1.0
            if q <= 0 or (not fractional and q < 1):
                rejected += 1
                continue
            c = commission(q, price)
            cash -= q * price + c
            qty[s] = q
            trade = {"symbol": s, "entry_bar": t, "entry_price": price, "exit_bar": -1, "exit_price": math.nan,
                     "quantity": q, "spent": q * price + c, "pnl": math.nan}  # fmt: skip
            open_trades[s] = trade
            trades.append(trade)
            fills.append((t, s, q, price, c))
        for s in range(n_symbols):
            if not math.isnan(close[t, s]):
                last[s] = close[t, s]
        equity = cash + sum(q * last[s] for s, q in enumerate(qty) if q)
        equity_curve.append(equity)
        cash_curve.append(cash)
        for s in range(n_symbols):  # exits, then entries
            if qty[s] > 0 and exits[t, s] and not math.isnan(close[t, s]):
                pending[s] = (t, 0, 0.0)
                orders += 1
        for s in range(n_symbols):
            if qty[s] == 0 and entries[t, s] and not exits[t, s] and s not in pending and not math.isnan(close[t, s]):
                pending[s] = (t, 1, weight * equity)
                orders += 1
    for s, trade in open_trades.items():
        trade["pnl"] = qty[s] * last[s] - trade["spent"]
    return {"fills": fills, "trades": trades, "equity": np.array(equity_curve), "cash": np.array(cash_curve),
            "orders": orders, "rejected": rejected}  # fmt: skip


def assert_same_as_plain(result: VectorResult, plain: dict) -> None:
    fills = np.array(plain["fills"], np.float64).reshape(-1, 5)
    assert len(result.fills) == len(fills)
    np.testing.assert_array_equal(result.fills.bar, fills[:, 0])
    np.testing.assert_array_equal(result.fills.symbol, fills[:, 1])
    for got, col in ((result.fills.quantity, 2), (result.fills.price, 3), (result.fills.commission, 4)):
        np.testing.assert_allclose(got, fills[:, col], rtol=TOL, atol=TOL)
    trades = plain["trades"]
    assert len(result.trades) == len(trades)
    for name in ("symbol", "entry_bar", "exit_bar"):
        np.testing.assert_array_equal(getattr(result.trades, name), [t[name] for t in trades], err_msg=name)
    for name in ("entry_price", "exit_price", "quantity", "pnl"):
        np.testing.assert_allclose(getattr(result.trades, name), [t[name] for t in trades], rtol=TOL, atol=TOL,
                                   err_msg=name)  # fmt: skip
    np.testing.assert_allclose(result.equity, plain["equity"], rtol=TOL)
    np.testing.assert_allclose(result.cash, plain["cash"], rtol=TOL, atol=TOL)
    assert (result.orders, result.rejected) == (plain["orders"], plain["rejected"])


# -- signals -------------------------------------------------------------------------------------
def test_ema_cross_signals_follow_the_definition(goog) -> None:  # noqa: ANN001
    close = goog[1]
    entries, exits = ema_cross_signals(close)
    fast, slow = ema(close, 12).tolist(), ema(close, 26).tolist()
    want_entries, want_exits = [False], [False]
    for t in range(1, len(close)):
        ready = not (math.isnan(slow[t - 1]) or math.isnan(fast[t - 1]))
        want_entries.append(ready and fast[t] > slow[t] and fast[t - 1] <= slow[t - 1])
        want_exits.append(ready and fast[t] < slow[t] and fast[t - 1] >= slow[t - 1])
    np.testing.assert_array_equal(entries, want_entries)
    np.testing.assert_array_equal(exits, want_exits)
    assert not entries[:26].any() and not exits[:26].any()  # bar 25 is the first ready: no cross there
    assert 20 < entries.sum() < 40 and abs(int(entries.sum()) - int(exits.sum())) <= 1
    # 2-d: each column as the 1-d call on that symbol's own bars; a NaN gap is skipped, not a restart.
    gappy = close.copy()
    gappy[500:520] = np.nan
    both_entries, both_exits = ema_cross_signals(np.column_stack([close, gappy]))
    np.testing.assert_array_equal(both_entries[:, 0], entries)
    present = ~np.isnan(gappy)
    own_entries, own_exits = ema_cross_signals(gappy[present])
    np.testing.assert_array_equal(both_entries[present, 1], own_entries)
    np.testing.assert_array_equal(both_exits[present, 1], own_exits)
    assert not both_entries[~present, 1].any()


def test_ema_cross_from_equal_emas() -> None:
    flat = np.full(40, 10.0)  # both EMAs exactly 10 once ready
    up, down = flat.copy(), flat.copy()
    up[30:], down[30:] = 11.0, 9.0
    assert ema_cross_signals(flat)[0].sum() == ema_cross_signals(flat)[1].sum() == 0
    assert np.flatnonzero(ema_cross_signals(up)[0]).tolist() == [30] and not ema_cross_signals(up)[1].any()
    assert np.flatnonzero(ema_cross_signals(down)[1]).tolist() == [30] and not ema_cross_signals(down)[0].any()


# -- the reference strategy ---------------------------------------------------------------------------
def test_reference_strategy_equals_the_plain_loop(goog) -> None:  # noqa: ANN001
    open_, close = goog
    entries, exits = ema_cross_signals(close)
    result = backtest_signals(open_, close, entries, exits, initial_cash=10_000.0)
    trades, final = reference_loop(open_, close, entries, exits, 10_000.0)
    assert len(result.trades) == len(trades) > 20
    for i, (entry_bar, entry_price, exit_bar, exit_price, shares) in enumerate(trades):
        assert result.trades.entry_bar[i] == entry_bar and result.trades.quantity[i] == shares
        assert result.trades.entry_price[i] == pytest.approx(entry_price, rel=TOL)
        if exit_bar is None:
            assert result.trades.exit_bar[i] == -1 and np.isnan(result.trades.exit_price[i])
        else:
            assert result.trades.exit_bar[i] == exit_bar
            assert result.trades.exit_price[i] == pytest.approx(exit_price, rel=TOL)
    assert result.final_equity == pytest.approx(final, rel=TOL)
    assert result.rejected == 0 and len(result.fills) == result.orders - int(entries[-1] or exits[-1])
    assert_same_as_plain(result, plain_loop(open_[:, None], close[:, None], entries[:, None], exits[:, None], 10_000.0))


def test_reference_strategy_equals_backtesting_py(goog) -> None:  # noqa: ANN001
    backtesting = pytest.importorskip("backtesting")
    from backtesting.test import GOOG

    open_, close = goog
    np.testing.assert_array_equal(GOOG["Open"].to_numpy(), open_)
    entries, exits = ema_cross_signals(close)

    class Cross(backtesting.Strategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            t = len(self.data) - 1
            if entries[t] and not self.position:
                self.buy()
            elif exits[t] and self.position:
                self.position.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = backtesting.Backtest(
            GOOG, Cross, cash=10_000, commission=0.0, trade_on_close=False, exclusive_orders=True
        ).run()
    theirs = stats["_trades"]
    result = backtest_signals(open_, close, entries, exits, initial_cash=10_000.0)
    closed = result.trades.closed
    assert closed.sum() == len(theirs) > 20
    np.testing.assert_array_equal(result.trades.entry_bar[closed], theirs["EntryBar"].to_numpy())
    np.testing.assert_array_equal(result.trades.exit_bar[closed], theirs["ExitBar"].to_numpy())
    np.testing.assert_array_equal(result.trades.quantity[closed], theirs["Size"].to_numpy())
    np.testing.assert_allclose(result.trades.entry_price[closed], theirs["EntryPrice"].to_numpy(), rtol=TOL)
    np.testing.assert_allclose(result.trades.exit_price[closed], theirs["ExitPrice"].to_numpy(), rtol=TOL)
    np.testing.assert_allclose(result.trades.pnl[closed], theirs["PnL"].to_numpy(), rtol=TOL)
    assert result.final_equity == pytest.approx(stats["Equity Final [$]"], rel=TOL)
    np.testing.assert_allclose(result.equity, stats["_equity_curve"]["Equity"].to_numpy(), rtol=TOL)


# -- costs, sizing, several symbols ---------------------------------------------------------------------
@pytest.mark.parametrize("fractional", [False, True])
def test_costs_equal_the_plain_loop(goog, fractional: bool) -> None:  # noqa: ANN001
    open_, close = goog
    entries, exits = ema_cross_signals(close, 5, 20)  # more trades
    result = backtest_signals(open_, close, entries, exits, initial_cash=10_000.0, fractional=fractional,
                              weight=0.9, slippage_bps=5.0, commission_per_share=0.2, commission_min=10.0,
                              commission_bps=2.0)  # fmt: skip
    plain = plain_loop(open_[:, None], close[:, None], entries[:, None], exits[:, None], 10_000.0,
                       fractional=fractional, weight=0.9, slippage_bps=5.0, per_share=0.2, minimum=10.0, bps=2.0)  # fmt: skip
    assert_same_as_plain(result, plain)
    assert len(result.trades) > 50
    # Both branches of the commission are taken (the minimum on small fills, per share on large ones).
    per_share_part = result.fills.commission - 2e-4 * np.abs(result.fills.quantity) * result.fills.price
    assert np.isclose(per_share_part, 10.0).any() and (per_share_part > 10.0 + 1e-9).any()
    # Slippage moves both prices against the trade.
    np.testing.assert_allclose(result.trades.entry_price, open_[result.trades.entry_bar] * 1.0005, rtol=1e-15)
    # Every buy spends at most its budget and leaves no cash negative.
    assert (result.cash >= 0).all()
    if not fractional:
        np.testing.assert_array_equal(result.trades.quantity, np.floor(result.trades.quantity))
    # The P&L of the trades, open ones marked at the last close, is the whole gain.
    assert result.trades.pnl.sum() == pytest.approx(result.final_equity - 10_000.0, rel=1e-9)


def test_several_symbols_share_cash(stocks) -> None:  # noqa: ANN001
    _, open_, close = stocks
    entries, exits = ema_cross_signals(close, 10, 40)
    result = backtest_signals(open_, close, entries, exits, initial_cash=100_000.0, weight=0.25,
                              commission_per_share=0.01, commission_min=1.0)  # fmt: skip
    plain = plain_loop(open_, close, entries, exits, 100_000.0, weight=0.25, per_share=0.01, minimum=1.0)
    assert_same_as_plain(result, plain)
    assert set(result.trades.symbol.tolist()) == set(range(close.shape[1]))
    # Six symbols at a quarter each: some entries find less cash than their notional, some none at all.
    assert result.rejected > 0
    cost = result.trades.quantity * result.trades.entry_price
    budget = 0.25 * result.equity[result.trades.entry_bar - 1]
    assert (cost < 0.9 * budget).any() and (cost > 0.99 * budget).any()
    # Sells come before buys at the same open (their cash pays for the buys).
    for bar in np.unique(result.fills.bar):
        signs = np.sign(result.fills.quantity[result.fills.bar == bar])
        assert (np.diff(signs) >= 0).all()


def test_rejected_when_cash_is_too_small(goog) -> None:  # noqa: ANN001
    open_, close = goog
    entries, exits = ema_cross_signals(close)
    poor = backtest_signals(open_, close, entries, exits, initial_cash=50.0)  # GOOG never trades below $50
    assert len(poor.fills) == 0 and len(poor.trades) == 0
    assert poor.rejected == poor.orders == entries[:-1].sum() + entries[-1]  # the last bar's order stays open
    assert poor.rejected > 0
    np.testing.assert_array_equal(poor.equity, 50.0)
    # A share is affordable, the share plus the minimum commission is not.
    first = np.flatnonzero(entries)[0] + 1
    price = open_[first]
    tight = backtest_signals(open_[:400], close[:400], entries[:400], exits[:400], initial_cash=price + 5.0,
                             commission_min=10.0)  # fmt: skip
    assert tight.fills.bar.size == 0 and tight.rejected >= 1
    loose = backtest_signals(open_[:400], close[:400], entries[:400], exits[:400], initial_cash=price + 5.0)
    assert loose.fills.bar[0] == first and loose.fills.quantity[0] == 1.0


@pytest.mark.parametrize(
    ("cash", "price", "per_share", "minimum", "bps", "shares"),
    [
        (29842.288212, 20.76, 0.005, 1.0, 1.0, 1436),  # the division's estimate (1437) costs more than the cash
        (387179.0999999999, 256.4, 0.01, 0.0, 0.0, 1509),  # 1510 shares' cost rounds to <= cash, exactly it is more
        (854078.4, 721.35, 0.0, 0.0, 0.0, 1183),  # no costs: cash // price, though 1184 x price rounds to <= cash
    ],
)
def test_whole_share_sizing_at_the_rounding_edge(cash, price, per_share, minimum, bps, shares) -> None:  # noqa: ANN001
    bar = np.array([price, price])
    result = backtest_signals(bar, bar, np.array([True, False]), np.zeros(2, bool), initial_cash=cash,
                              commission_per_share=per_share, commission_min=minimum, commission_bps=bps)  # fmt: skip
    assert result.fills.quantity.tolist() == [shares]
    assert result.cash[-1] >= 0
    plain = plain_loop(bar[:, None], bar[:, None], np.array([[True], [False]]), np.zeros((2, 1), bool), cash,
                       per_share=per_share, minimum=minimum, bps=bps)  # fmt: skip
    assert_same_as_plain(result, plain)
    if per_share == minimum == bps == 0:
        assert shares == cash // price


def test_fractional_all_in_never_overdraws() -> None:
    cash, price = 936448.42, 360.08  # (cash / price) x price rounds to more than the cash
    bar = np.array([price, price])
    result = backtest_signals(bar, bar, np.array([True, False]), np.zeros(2, bool), initial_cash=cash, fractional=True)
    (q,) = result.fills.quantity
    assert q == pytest.approx(cash / price, rel=1e-15) and q * price <= cash < np.nextafter(q, np.inf) * price
    assert result.cash[-1] >= 0


def test_signals_on_the_last_bar_never_fill() -> None:
    open_ = np.array([10.0, 11.0, 12.0, 13.0])
    close = np.array([10.5, 11.5, 12.5, 13.5])
    entries = np.array([True, False, False, True])
    exits = np.array([False, False, False, True])
    held = backtest_signals(open_, close, entries, exits, initial_cash=100.0)
    # Bought 100 // 11 = 9 at bar 1; the exit on the last bar is an order that never fills.
    assert held.fills.bar.tolist() == [1] and held.fills.quantity.tolist() == [9.0]
    assert held.orders == 2 and held.rejected == 0
    assert held.trades.exit_bar.tolist() == [-1] and np.isnan(held.trades.exit_price[0])
    assert held.trades.pnl[0] == pytest.approx(9 * (13.5 - 11.0))
    assert held.final_equity == pytest.approx(100.0 - 99.0 + 9 * 13.5)
    flat = backtest_signals(open_, close, np.array([False, False, False, True]), np.zeros(4, bool), initial_cash=100.0)
    assert flat.orders == 1 and len(flat.fills) == 0 and flat.rejected == 0
    np.testing.assert_array_equal(flat.equity, 100.0)
    # Both set: the exit wins, so a flat symbol stays flat.
    both = backtest_signals(open_, close, np.array([True, False, False, False]), np.array([True, False, False, False]),
                            initial_cash=100.0)  # fmt: skip
    assert both.orders == 0 and len(both.fills) == 0


def test_nan_gaps_keep_orders_pending(stocks) -> None:  # noqa: ANN001
    _, open_, close = stocks
    open_, close = open_[:3000, :3].copy(), close[:3000, :3].copy()
    entries, exits = ema_cross_signals(close, 10, 40)
    # A gap right after each of symbol 1's first decisions, so those orders wait; a long gap mid-way.
    decided = np.flatnonzero(entries[:, 1] | exits[:, 1])[:6]
    for t in decided:
        open_[t + 1 : t + 4, 1] = close[t + 1 : t + 4, 1] = np.nan
    open_[1500:1700, 1] = close[1500:1700, 1] = np.nan
    entries, exits = ema_cross_signals(close, 10, 40)
    result = backtest_signals(open_, close, entries, exits, initial_cash=100_000.0, weight=0.4)
    assert_same_as_plain(result, plain_loop(open_, close, entries, exits, 100_000.0, weight=0.4))
    filled_late = [t for t in decided if (result.fills.bar[result.fills.symbol == 1] == t + 4).any()]
    assert filled_late  # orders waited through the gap to the next bar


def test_wide_bars_leave_nan_where_a_symbol_has_no_bar() -> None:
    bars = dataset("sp500").bars(("KO", "PEP"), end=date(1990, 3, 1))
    times = bars["event_time_ns"].unique().sort().to_numpy()
    dropped = bars.filter(~((pl.col("symbol") == "PEP") & pl.col("event_time_ns").is_in(times[5:8].tolist())))
    wide = wide_bars(dropped, ("PEP", "KO"))
    assert wide.symbols == ("PEP", "KO") and wide.close.shape == (times.size, 2)
    np.testing.assert_array_equal(wide.times, times)
    assert np.isnan(wide.close[5:8, 0]).all() and np.isnan(wide.open[5:8, 0]).all()
    assert np.isfinite(np.delete(wide.close, [5, 6, 7], axis=0)).all() and np.isfinite(wide.close[:, 1]).all()
    ko = bars.filter(pl.col("symbol") == "KO")
    np.testing.assert_array_equal(wide.close[:, 1], ko["close"].to_numpy())


def test_gap_fills_in_decision_order_and_marks_the_last_close() -> None:
    # Symbol 0: entry decided at bar 0, exit at bar 2. Symbol 1: entry decided at bar 1, no bar at 2, so it
    # fills at bar 3 together with symbol 0's exit. Decision order: the older buy goes first, with the cash
    # there is before that sale (sells first would have given it 3 shares).
    nan = np.nan
    open_ = np.array([[10.0, 20.0], [10.0, 20.0], [12.0, nan], [12.0, 20.0], [12.0, nan]])
    close = np.array([[10.0, 20.0], [10.0, 20.0], [12.0, nan], [12.0, 21.0], [12.0, nan]])
    entries = np.array([[True, False], [False, True], [False, False], [False, False], [False, False]])
    exits = np.array([[False, False], [False, False], [True, False], [False, False], [False, False]])
    result = backtest_signals(open_, close, entries, exits, initial_cash=100.0, weight=0.6)
    # bar 1: 60 // 10 = 6 bought, cash 40; symbol 1's notional at bar 1's close: 0.6 x 100 = 60.
    # bar 3: symbol 1 buys min(60, cash 40) // 20 = 2, cash 0; then symbol 0 sells 6 @ 12, cash 72.
    assert result.fills.bar.tolist() == [1, 3, 3]
    assert result.fills.symbol.tolist() == [0, 1, 0]
    assert result.fills.quantity.tolist() == [6.0, 2.0, -6.0]
    np.testing.assert_allclose(result.cash, [100.0, 40.0, 40.0, 72.0, 72.0])
    # Symbol 1 has no bar at the last bar: it is marked (equity, open trade) at its last close, 21.
    np.testing.assert_allclose(result.equity, [100.0, 100.0, 40.0 + 72.0, 72.0 + 42.0, 72.0 + 42.0])
    assert result.trades.exit_bar.tolist() == [3, -1] and result.trades.pnl.tolist() == [12.0, 2.0]
    assert_same_as_plain(result, plain_loop(open_, close, entries, exits, 100.0, weight=0.6))


def test_open_and_close_must_agree_on_gaps() -> None:
    open_, close = np.ones((3, 1)), np.ones((3, 1))
    close[1, 0] = np.nan
    with pytest.raises(ValueError, match="same bars"):
        backtest_signals(open_, close, np.zeros((3, 1), bool), np.zeros((3, 1), bool))
    with pytest.raises(ValueError, match="differ"):
        backtest_signals(np.ones(3), np.ones(4), np.zeros(3, bool), np.zeros(3, bool))


# -- metrics -------------------------------------------------------------------------------------------
def test_metrics_equal_compute_metrics_on_the_equity(stocks) -> None:  # noqa: ANN001
    times, open_, close = stocks
    entries, exits = ema_cross_signals(close, 10, 40)
    result = backtest_signals(open_, close, entries, exits, initial_cash=100_000.0, weight=0.25)
    index = load_sp500_index()
    closes = index["close"].to_numpy()[np.searchsorted(index["event_time_ns"].to_numpy(), times)]
    benchmark = simple_returns(np.concatenate([closes[:1], closes]))
    plain = plain_loop(open_, close, entries, exits, 100_000.0, weight=0.25)
    closed = [t["pnl"] for t in plain["trades"] if t["exit_bar"] >= 0]
    notional = sum(abs(q) * p for _, _, q, p, _ in plain["fills"])
    invested = plain["equity"] != plain["cash"]
    expected = compute_metrics(simple_returns(np.concatenate([[100_000.0], plain["equity"]])), 252.0,
                               benchmark=benchmark, trade_pnls=closed, traded_notional=notional,
                               equity=plain["equity"], invested=invested)  # fmt: skip
    got = result.metrics(252.0, benchmark=benchmark)
    for name, value in expected.as_dict().items():
        assert getattr(got, name) == pytest.approx(value, rel=TOL, abs=1e-12, nan_ok=True), name
    assert got.total_return == pytest.approx(result.final_equity / 100_000.0 - 1.0, rel=TOL)
    assert not np.isnan(got.beta) and 0 < got.exposure_time < 1
    # The first bar's return is measured from the initial cash.
    assert result.returns()[0] == result.equity[0] / 100_000.0 - 1.0 and result.returns().size == len(times)
