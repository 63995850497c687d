"""Backtest benchmark: the reference strategy in utp (event-driven graph and vectorised path) and in the
peers (backtrader, backtesting.py, vectorbt), on the same bars, in one run.

    python bench/backtest.py [--bars 1000000] [--backtrader-bars 0]

The reference strategy is configs/reference.yaml (EMA 12/26 cross, long only, all-in, next-open fills, no
costs); tests/peers.py sets each peer up to follow the same rule. Two data sets:

* `--bars` synthetic one-minute bars (`utp.storage.datasets.synthetic_bars`);
* the 20 `skfolio` S&P 500 stocks, daily 1990-2022 (about 8,300 days each): the reference strategy is a
  one-instrument strategy, so each stock is one run and the figures are summed over the 20 runs.

What is timed (wall clock, best of one run after a warm-up on a short prefix, so numba's caches are loaded):
utp's event path from the bars' frame to the result (every engine of the graph: market data validation,
features, alpha, ensemble, risk, exit, execution, the summary); utp's vectorised path and the peers from
the bars' columns and the shared signals to their trades (signals are the same for every one and left
out; tests/peers.py says exactly what each peer's time holds). vectorbt's first call in a process compiles
for seconds and is reported apart. `--backtrader-bars N` runs backtrader on the first N synthetic bars
only (0: all), for machines where it would take over two minutes; the output says so.

Trades must match: every peer's round trips (entry/exit bars, prices, sizes) equal utp's event path's, and
the vectorised path's equal them too. The last line is one JSON object:
{"bars", "event_bars_per_s", "vector_bars_per_s", "backtrader_bars_per_s", "backtesting_py_bars_per_s",
 "vectorbt_bars_per_s", "trades_match": {"backtrader", "backtesting_py", "vectorbt", "vector"},
 "event_vs_backtrader", "event_vs_backtesting_py", "vector_vs_vectorbt", "stocks": {same keys for the 20
 stocks}, "backtrader_bars", "vectorbt_first_call_s"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.peers import (  # noqa: E402
    DEFAULT_CASH, PeerRun, PeerTrade, compare_trades, reference_signals, run_backtesting_py, run_backtrader, run_utp,
    run_vectorbt,
)  # fmt: skip
from utp.core.vectorized import backtest_signals  # noqa: E402
from utp.storage.datasets import dataset, synthetic_bars  # noqa: E402

DAY_NS = 86_400 * 10**9


def run_vector(bars: pl.DataFrame, signals: tuple[np.ndarray, np.ndarray]) -> PeerRun:
    open_ = np.ascontiguousarray(bars["open"].to_numpy(), np.float64)
    close = np.ascontiguousarray(bars["close"].to_numpy(), np.float64)
    start = time.perf_counter()
    result = backtest_signals(open_, close, signals[0], signals[1], initial_cash=DEFAULT_CASH)
    seconds = time.perf_counter() - start
    t = result.trades
    trades = [
        PeerTrade(int(t.entry_bar[k]), None if t.exit_bar[k] < 0 else int(t.exit_bar[k]), float(t.entry_price[k]),
                  None if t.exit_bar[k] < 0 else float(t.exit_price[k]), int(t.quantity[k]))
        for k in range(len(t))
    ]  # fmt: skip
    return PeerRun("vector", trades, result.final_equity, seconds, None, len(close))


def run_all(bars: pl.DataFrame, *, daily: bool, backtrader_bars: int) -> dict[str, PeerRun]:
    signals = reference_signals(bars["close"].to_numpy())
    kw = {"interval_ns": DAY_NS, "periods_per_year": 252.0} if daily else {}
    runs = {"event": run_utp(bars, **kw), "vector": run_vector(bars, signals)}
    runs["backtesting_py"] = run_backtesting_py(bars, DEFAULT_CASH, signals=signals)
    runs["vectorbt"] = run_vectorbt(bars, DEFAULT_CASH, signals=signals)
    if backtrader_bars and backtrader_bars < bars.height:
        head = bars.head(backtrader_bars)
        runs["backtrader"] = run_backtrader(head, DEFAULT_CASH, signals=reference_signals(head["close"].to_numpy()))
    else:
        runs["backtrader"] = run_backtrader(bars, DEFAULT_CASH, signals=signals)
    return runs


def matches(runs: dict[str, PeerRun], bars: pl.DataFrame) -> dict[str, bool]:
    event = runs["event"]
    out = {}
    for name in ("backtrader", "backtesting_py", "vectorbt", "vector"):
        peer = runs[name]
        reference = event
        if peer.bars < event.bars:  # backtrader on a prefix: compare with utp on the same prefix
            reference = run_utp(bars.head(peer.bars))
        problems = compare_trades(reference, peer)
        if problems:
            print(f"  {name}: trades differ: {problems[:3]}")
        out[name] = not problems
    return out


def figures(totals: dict[str, tuple[int, float]]) -> dict[str, float]:
    rate = {name: bars / seconds for name, (bars, seconds) in totals.items()}
    return {
        "event_bars_per_s": rate["event"], "vector_bars_per_s": rate["vector"],
        "backtrader_bars_per_s": rate["backtrader"], "backtesting_py_bars_per_s": rate["backtesting_py"],
        "vectorbt_bars_per_s": rate["vectorbt"],
        "event_vs_backtrader": rate["event"] / rate["backtrader"],
        "event_vs_backtesting_py": rate["event"] / rate["backtesting_py"],
        "vector_vs_vectorbt": rate["vector"] / rate["vectorbt"],
    }  # fmt: skip


def report(title: str, totals: dict[str, tuple[int, float]]) -> None:
    print(title)
    for name, (bars, seconds) in totals.items():
        print(f"  {name:15s} {bars:>10,d} bars {seconds:8.3f} s {bars / seconds:>14,.0f} bars/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--backtrader-bars", type=int, default=0, help="backtrader on this many bars only (0: all)")
    args = parser.parse_args()

    warm = synthetic_bars(3_000)
    # numba caches, vectorbt's compile, imports
    first_call = run_all(warm, daily=False, backtrader_bars=0)["vectorbt"].first_call_seconds
    # A second, larger warm-up: the first large run of a process also pays for growing buffers and tables
    # (and, on a fresh checkout, for numba specialisations that small runs never reach). Timing that would
    # measure the machine's first touch of memory, not the backtest.
    big = synthetic_bars(min(args.bars, 200_000))
    run_utp(big)
    run_vectorbt(big, DEFAULT_CASH, signals=reference_signals(big["close"].to_numpy()))

    bars = synthetic_bars(args.bars)
    runs = run_all(bars, daily=False, backtrader_bars=args.backtrader_bars)
    totals = {name: (run.bars, run.seconds) for name, run in runs.items()}
    report(f"{args.bars:,} synthetic minute bars", totals)
    for name, run in runs.items():
        print(f"  {name:15s} trades {len(run.trades):>7,d} final equity {run.final_equity:,.2f}")
    if args.backtrader_bars and args.backtrader_bars < args.bars:
        print(f"  backtrader ran on the first {args.backtrader_bars:,} bars only (--backtrader-bars)")
    match = matches(runs, bars)

    stocks = dataset("sp500")
    stock_totals: dict[str, tuple[int, float]] = {}
    stock_match = dict.fromkeys(match, True)
    for symbol in stocks.symbols:
        one = stocks.bars([symbol])
        r = run_all(one, daily=True, backtrader_bars=0)
        for name, run in r.items():
            n, s = stock_totals.get(name, (0, 0.0))
            stock_totals[name] = (n + run.bars, s + run.seconds)
        for name, ok in matches(r, one).items():
            stock_match[name] = stock_match[name] and ok
    report(f"{len(stocks.symbols)} S&P 500 stocks, daily (one run per stock, summed)", stock_totals)

    line = {
        "bars": args.bars,
        **figures(totals),
        "trades_match": {name: match[name] and stock_match[name] for name in match},
        "stocks": {"bars": stock_totals["event"][0], **figures(stock_totals), "trades_match": stock_match},
        "backtrader_bars": runs["backtrader"].bars,
        "vectorbt_first_call_s": first_call,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
