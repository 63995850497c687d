"""The reference strategy run in three peer backtesters (backtesting.py, backtrader, vectorbt), with
their trades in one common form, so utp can be checked trade for trade against them and timed beside them.

The reference strategy, identical in every peer:

* EMA(12) and EMA(26) of the closes, seeded TA-Lib style (first value = SMA of the first n closes),
  from `utp.core.indicators.ema`. An EMA seeded with the first close (pandas `ewm`, vectorbt's own)
  gives different early values and, on long series, an extra early trade, so no peer computes its own.
* "Above" means fast > slow. A cross up is a bar that is above after one that was not; a cross down
  is a bar that is not above after one that was (a tie counts as "not above"). Both EMAs must be defined
  on both bars, so the first possible signal is bar 26. Crosses therefore alternate strictly.
* Long only. On a cross up while flat: buy as many whole shares as the cash buys at the fill price.
  On a cross down while long: sell everything. Market orders fill at the NEXT bar's open; a signal on
  the last bar never fills. No commission, no slippage; initial cash `cash` (100,000 by default).
* A trade still open at the end is reported with `exit_index`/`exit_price` None; `final_equity`
  marks it at the last close (cash + size x last close), as all three peers do by themselves.

How each peer is set up to agree (see /work/shared/PEERS.md):

* backtesting.py: `trade_on_close=False` (True fills one bar early), `exclusive_orders=True`, the
  default all-equity `buy()`, which sizes at the fill bar's open: int(equity x (1 - 2^-52) // open).
  That equals floor(cash / open) except when cash / open is exactly a whole number (one share less):
  a coincidence real prices do not produce.
* backtrader: cheat-on-open off, market orders (fill at the next open), `set_checksubmit(False)`.
  Its all-in sizer would size at the signal bar's close and the broker then rejects the order whenever
  the next open is higher, so the size is `floor(cash / next open)`: the harness peeks at the next open
  for the size only (a strategy may not; a benchmark harness may, to state the same rule).
* vectorbt: the signals shifted one bar, `Portfolio.from_signals(price=open, size=inf,
  size_granularity=1, direction='longonly')`: it sizes floor(cash / open) at the fill bar.

Timing (`PeerRun.seconds`): wall time from the bars' numpy columns and the shared signals to the
trades: building the peer's input (pandas frames, feeds), the peer's run (backtesting.py's includes
its statistics) and reading its trades back. Extracting the columns from polars and computing the
signals are the same for every peer and are left out. vectorbt compiles its numba kernels on its first
call in a process (about 12 s); that call is timed as `first_call_seconds`, and `seconds` is a second,
steady-state run. `first_call_seconds` is None for every other run.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import polars as pl

from utp.core.indicators import ema

FAST, SLOW = 12, 26
DEFAULT_CASH = 100_000.0
PRICE_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class PeerTrade:
    """One round trip. Indices are bar positions in the input frame; `entry_index` is the bar whose
    open filled the entry, `exit_index` the bar whose open filled the exit (None while still open)."""

    entry_index: int
    exit_index: int | None
    entry_price: float
    exit_price: float | None
    size: int


@dataclass(frozen=True, slots=True)
class PeerRun:
    name: str
    trades: list[PeerTrade]
    final_equity: float
    seconds: float
    first_call_seconds: float | None
    bars: int

    @property
    def bars_per_second(self) -> float:
        return self.bars / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True, slots=True)
class _Columns:
    time_ns: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


def _columns(bars: pl.DataFrame) -> _Columns:
    """The bars' columns as float64 numpy arrays; one symbol only, in time order."""
    if bars.height < 2:
        raise ValueError("the reference strategy needs at least two bars")
    if bars["symbol"].n_unique() != 1:
        raise ValueError("the peers run one symbol at a time; filter the bars to one symbol first")
    time_ns = bars["event_time_ns"].to_numpy().astype(np.int64)
    if np.any(np.diff(time_ns) <= 0):
        raise ValueError("bars must be in strictly increasing time order")
    names = ("open", "high", "low", "close", "volume")
    f = {c: np.ascontiguousarray(bars[c].to_numpy(), dtype=np.float64) for c in names}
    return _Columns(time_ns, f["open"], f["high"], f["low"], f["close"], f["volume"])


def reference_signals(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(entries, exits): boolean arrays marking the bar on whose close the EMA(12)/EMA(26) cross is seen.

    The orders they cause fill at the next bar's open. Entries and exits alternate, starting with either.
    """
    close = np.ascontiguousarray(close, dtype=np.float64)
    fast, slow = ema(close, FAST), ema(close, SLOW)
    defined = ~(np.isnan(fast) | np.isnan(slow))
    above = defined & (fast > slow)
    # A signal needs both EMAs on this bar and the one before (the first defined bar only sets the state).
    both = np.zeros(close.shape[0], np.bool_)
    both[1:] = defined[1:] & defined[:-1]
    entries = np.zeros(close.shape[0], np.bool_)
    exits = np.zeros(close.shape[0], np.bool_)
    entries[1:] = above[1:] & ~above[:-1]
    exits[1:] = ~above[1:] & above[:-1]
    return entries & both, exits & both


def _prepare(
    bars: pl.DataFrame, signals: tuple[np.ndarray, np.ndarray] | None
) -> tuple[_Columns, np.ndarray, np.ndarray]:
    cols = _columns(bars)
    entries, exits = signals if signals is not None else reference_signals(cols.close)
    entries, exits = np.asarray(entries, np.bool_), np.asarray(exits, np.bool_)
    if entries.shape != cols.close.shape or exits.shape != cols.close.shape:
        raise ValueError("signals must have one value per bar")
    return cols, entries, exits


def _pandas_ohlcv(cols: _Columns) -> object:
    """The bars as the OHLCV pandas frame with a DatetimeIndex that backtesting.py and backtrader read."""
    import pandas as pd

    index = pd.DatetimeIndex(cols.time_ns.astype("datetime64[ns]"), name="time")
    return pd.DataFrame(
        {"Open": cols.open, "High": cols.high, "Low": cols.low, "Close": cols.close, "Volume": cols.volume},
        index=index,
    )


# -- backtesting.py --------------------------------------------------------------------------------


def run_backtesting_py(
    bars: pl.DataFrame, cash: float = DEFAULT_CASH, *, signals: tuple[np.ndarray, np.ndarray] | None = None
) -> PeerRun:
    """The reference strategy in backtesting.py (`backtesting.Backtest`)."""
    from backtesting import Backtest, Strategy

    cols, entries, exits = _prepare(bars, signals)
    started = time.perf_counter()

    class ReferenceCross(Strategy):
        def init(self) -> None:
            # Registered as indicators so backtesting.py slices them bar by bar like its own; booleans
            # have no NaN warm-up, so it starts calling next() at bar 1 (bar 0 can carry no signal).
            self.entry = self.I(lambda: entries, name="entry", plot=False)
            self.exit = self.I(lambda: exits, name="exit", plot=False)

        def next(self) -> None:
            if self.position:
                if self.exit[-1]:
                    self.position.close()
            elif self.entry[-1]:
                self.buy()

    frame = _pandas_ohlcv(cols)
    backtest = Backtest(
        frame, ReferenceCross, cash=cash, commission=0.0, spread=0.0, margin=1.0,
        trade_on_close=False, hedging=False, exclusive_orders=True, finalize_trades=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        # "Some trades remain open at the end": intended, an open trade is reported as open.
        warnings.simplefilter("ignore")
        stats = backtest.run()
    strategy = stats["_strategy"]
    trades = [_bt_py_trade(t, closed=True) for t in strategy.closed_trades]
    trades += [_bt_py_trade(t, closed=False) for t in strategy.trades]
    final_equity = float(stats["Equity Final [$]"])
    seconds = time.perf_counter() - started
    return PeerRun("backtesting.py", trades, final_equity, seconds, None, len(cols.close))


def _bt_py_trade(trade: object, *, closed: bool) -> PeerTrade:
    return PeerTrade(
        entry_index=int(trade.entry_bar),  # type: ignore[attr-defined]
        exit_index=int(trade.exit_bar) if closed else None,  # type: ignore[attr-defined]
        entry_price=float(trade.entry_price),  # type: ignore[attr-defined]
        exit_price=float(trade.exit_price) if closed else None,  # type: ignore[attr-defined]
        size=int(trade.size),  # type: ignore[attr-defined]
    )


# -- backtrader ------------------------------------------------------------------------------------


def run_backtrader(
    bars: pl.DataFrame, cash: float = DEFAULT_CASH, *, signals: tuple[np.ndarray, np.ndarray] | None = None
) -> PeerRun:
    """The reference strategy in backtrader (`bt.Cerebro`, default preload/runonce, no observers)."""
    import backtrader as bt

    cols, entries, exits = _prepare(bars, signals)
    started = time.perf_counter()

    # The next bar's open, for sizing only (NaN on the last bar, where no order can fill).
    next_open = np.full_like(cols.open, np.nan)
    next_open[:-1] = cols.open[1:]
    frame = _pandas_ohlcv(cols)
    frame["entry"] = entries.astype(np.float64)
    frame["exit"] = exits.astype(np.float64)
    frame["next_open"] = next_open

    class SignalFeed(bt.feeds.PandasData):
        # Precomputed lines next to OHLCV: backtrader reads them bar by bar like its own data.
        lines = ("entry", "exit", "next_open")
        params = (("entry", "entry"), ("exit", "exit"), ("next_open", "next_open"), ("openinterest", None))

    fills: list[tuple[int, float, float]] = []  # (bar, price, signed size) of each completed order

    class ReferenceCross(bt.Strategy):
        def notify_order(self, order: bt.Order) -> None:
            if order.status == order.Completed:
                # Notified while the fill bar is the current one, so its position is len - 1. A market
                # order fills in one execution bit; its price is the open itself, where
                # `executed.price` is a size-weighted average that can be an ulp off.
                bits = list(order.executed.exbits)
                if len(bits) != 1:
                    raise RuntimeError(f"backtrader filled a market order in {len(bits)} parts")
                fills.append((len(self.data) - 1, float(bits[0].price), float(order.executed.size)))
            elif order.status in (order.Canceled, order.Margin, order.Rejected):
                raise RuntimeError(f"backtrader refused an order at bar {len(self.data) - 1}: {order.getstatusname()}")

        def next(self) -> None:
            if self.position:
                if self.data.exit[0]:
                    self.close()
            elif self.data.entry[0] and not math.isnan(self.data.next_open[0]):
                size = math.floor(self.broker.getcash() / self.data.next_open[0])
                if size > 0:
                    self.buy(size=size)

    cerebro = bt.Cerebro(stdstats=False)  # observers only feed plots; they would slow every bar
    cerebro.adddata(SignalFeed(dataname=frame))
    cerebro.addstrategy(ReferenceCross)
    cerebro.broker.setcash(cash)
    cerebro.broker.setcommission(commission=0.0)
    cerebro.broker.set_coc(False)
    cerebro.broker.set_coo(False)
    cerebro.broker.set_checksubmit(False)
    cerebro.run()
    final_equity = float(cerebro.broker.getvalue())
    trades = _trades_from_fills(fills)
    seconds = time.perf_counter() - started
    return PeerRun("backtrader", trades, final_equity, seconds, None, len(cols.close))


def _trades_from_fills(fills: list[tuple[int, float, float]]) -> list[PeerTrade]:
    """Round trips from alternating buy-all / sell-all fills."""
    trades: list[PeerTrade] = []
    opened: tuple[int, float, float] | None = None
    for bar, price, size in fills:
        if opened is None:
            if size <= 0:
                raise RuntimeError(f"a sell at bar {bar} while flat")
            opened = (bar, price, size)
        else:
            if size != -opened[2]:
                raise RuntimeError(f"the sell at bar {bar} ({size}) does not close the position ({opened[2]})")
            trades.append(PeerTrade(opened[0], bar, opened[1], price, _whole(opened[2])))
            opened = None
    if opened is not None:
        trades.append(PeerTrade(opened[0], None, opened[1], None, _whole(opened[2])))
    return trades


# -- vectorbt --------------------------------------------------------------------------------------

_vectorbt_called = False


def run_vectorbt(
    bars: pl.DataFrame, cash: float = DEFAULT_CASH, *, signals: tuple[np.ndarray, np.ndarray] | None = None
) -> PeerRun:
    """The reference strategy in vectorbt (`vbt.Portfolio.from_signals`).

    On the first call in a process the run is done twice: the first, which compiles vectorbt's numba
    kernels, is reported as `first_call_seconds`; the second gives the result and `seconds`.
    """
    global _vectorbt_called
    cols, entries, exits = _prepare(bars, signals)
    first_call_seconds = None
    if not _vectorbt_called:
        started = time.perf_counter()
        _vectorbt_once(cols, entries, exits, cash)
        first_call_seconds = time.perf_counter() - started
        _vectorbt_called = True
    started = time.perf_counter()
    trades, final_equity = _vectorbt_once(cols, entries, exits, cash)
    seconds = time.perf_counter() - started
    return PeerRun("vectorbt", trades, final_equity, seconds, first_call_seconds, len(cols.close))


def _vectorbt_once(
    cols: _Columns, entries: np.ndarray, exits: np.ndarray, cash: float
) -> tuple[list[PeerTrade], float]:
    import vectorbt as vbt

    # vectorbt fills a signal on its own bar; shifting one bar makes the signal bar's order fill at the
    # next bar's `price`, the open.
    entries_next = np.zeros_like(entries)
    exits_next = np.zeros_like(exits)
    entries_next[1:], exits_next[1:] = entries[:-1], exits[:-1]
    portfolio = vbt.Portfolio.from_signals(
        close=cols.close, entries=entries_next, exits=exits_next, price=cols.open,
        size=np.inf, size_granularity=1.0, direction="longonly", init_cash=cash,
        fees=0.0, fixed_fees=0.0, slippage=0.0, accumulate=False,
    )  # fmt: skip
    # Trades rebuilt from the orders (each a whole fill at the open): vectorbt's own trade records
    # carry size-weighted average prices, an ulp off the open, and close an open trade on paper at the
    # last close, where the common form reports it open.
    orders = portfolio.orders.records_arr
    sell = int(vbt.portfolio.enums.OrderSide.Sell)
    fills = [
        (int(o["idx"]), float(o["price"]), -float(o["size"]) if int(o["side"]) == sell else float(o["size"]))
        for o in orders
    ]
    trades = _trades_from_fills(fills)
    return trades, float(portfolio.final_value())


def _whole(size: float) -> int:
    rounded = round(size)
    if rounded != size:
        raise RuntimeError(f"a peer traded a fractional size {size!r}")
    return int(rounded)


# -- comparing -------------------------------------------------------------------------------------


def compare_trades(a: PeerRun, b: PeerRun, *, limit: int = 20) -> list[str]:
    """Human-readable differences between two runs' trades (empty when identical: the same entry and
    exit bars, prices equal to 1e-9 relative, the same sizes). At most `limit` trade differences are
    listed, then a count of the rest."""
    out: list[str] = []
    if len(a.trades) != len(b.trades):
        out.append(f"{a.name} has {len(a.trades)} trades, {b.name} has {len(b.trades)}")
    differing = 0
    for k, (x, y) in enumerate(zip(a.trades, b.trades)):
        problems = []
        if x.entry_index != y.entry_index:
            problems.append(f"entry bar {x.entry_index} vs {y.entry_index}")
        if x.exit_index != y.exit_index:
            problems.append(f"exit bar {x.exit_index} vs {y.exit_index}")
        if not _same_price(x.entry_price, y.entry_price):
            problems.append(f"entry price {x.entry_price!r} vs {y.entry_price!r}")
        if not _same_price(x.exit_price, y.exit_price):
            problems.append(f"exit price {x.exit_price!r} vs {y.exit_price!r}")
        if x.size != y.size:
            problems.append(f"size {x.size} vs {y.size}")
        if problems:
            differing += 1
            if differing <= limit:
                out.append(f"trade {k} ({a.name} vs {b.name}): " + ", ".join(problems))
    if differing > limit:
        out.append(f"... and {differing - limit} more differing trades")
    return out


def _same_price(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return abs(x - y) <= PRICE_TOLERANCE * max(1.0, abs(x), abs(y))


# -- utp itself ------------------------------------------------------------------------------------
REFERENCE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "reference.yaml"


def run_utp(bars: pl.DataFrame, cash: float = DEFAULT_CASH, *, interval_ns: int = 60 * 10**9,
            periods_per_year: float = 252 * 390.0, batch_bar_times: int | None = None) -> PeerRun:  # fmt: skip
    """The reference strategy through utp's whole engine graph (configs/reference.yaml), timed like a peer:
    from the bars' frame to the trades, the engines' numba kernels compiled beforehand (cached on disk)."""
    from utp.core.config import load_config
    from utp.core.universe import Universe
    from utp.daemon.session import MarketData, backtest
    from utp.storage.datasets import Dataset

    cols = _columns(bars)
    symbol = bars["symbol"][0]
    overrides: dict[str, object] = {"execution.initial_cash": cash}
    if batch_bar_times is not None:
        overrides["market_data.batch_bar_times"] = batch_bar_times
    config = load_config([REFERENCE_CONFIG], environ={}, overrides=overrides)
    data = Dataset("bars", "the reference strategy's bars", (symbol,), interval_ns, periods_per_year, lambda: bars)
    market_data = MarketData(data, Universe((symbol,)), bars)
    start = time.perf_counter()
    result = backtest(config, market_data=market_data, include_details=True)
    seconds = time.perf_counter() - start
    index = {int(t): i for i, t in enumerate(cols.time_ns)}
    trades = [
        PeerTrade(index[t.entry_time_ns], None if t.open else index[t.exit_time_ns], t.entry_price,
                  None if t.open else t.exit_price, _whole(t.quantity))
        for t in result.trades
    ]  # fmt: skip
    return PeerRun("utp", trades, result.summary.final_equity, seconds, None, len(cols.time_ns))
