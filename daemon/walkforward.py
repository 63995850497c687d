"""`utp walk-forward`: the engine graph judged out of sample, fold by fold.

The folds are `utp.core.validation`'s walk-forward windows over the run's bar times (one per timestamp,
however many symbols trade at it): `bars` (train 252, test 63, step 21 bar times, every fold that fits)
or `months` (12 months of training, 1 month of test, the 12 most recent folds).

What "train" means here. The strategies of the graph are rules (Lean's RSI, EMA cross and MACD alpha
models, the ensemble's vote, risk's targets): nothing is fitted, so the training window has no
parameters to choose. It is the history the strategy has seen when the test window starts. Each fold is
therefore one ordinary backtest of the whole graph over its train and test windows together: it starts
flat with the initial cash at the first training bar, its indicators warm up on the training bars (the
training window must be longer than the longest look-back: 252 bars or 12 months easily are), and it
trades throughout, so the test window opens with whatever positions the rules hold by then, as it would
live. Only the test window is measured: its returns run from the equity at the last training bar to the
last test bar. A fold's trades are the round trips closed inside its test window.

Because the graph is causal (a decision at time t reads nothing after t), an anchored fold (training from
the first bar) is a prefix of the full run and its test returns are exactly the full run's over the same
bars. A rolling fold starts later with the initial cash, so its share counts, and with them its returns,
differ slightly from the full run's: the fold is what the strategy would have done had it been started
`train` bars before the test window.

The out-of-sample series concatenates, for each bar of the union of the test windows, the return measured
by the fold whose training ended most recently before it: fold k contributes its test bars up to the start
of fold k + 1's test window (all of them for the last fold). With the default bars scheme (step 21 < test
63) test windows overlap, and counting a bar three times would overstate the evidence; the months scheme
(step = test) uses every fold whole. On that series: the annualised Sharpe ratio, the probabilistic
Sharpe ratio (the probability that the true Sharpe ratio is above 0, Bailey & López de Prado), and the
share of folds whose own Sharpe ratio is below 0 (a fold that never moves has no Sharpe ratio and does not
count as negative).

Folds are independent backtests; `processes` > 1 runs them in a pool of spawned processes (fork is unsafe
with polars' and numba's threads).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from utp.core import performance as perf
from utp.core.config import Config, ConfigError, load_config
from utp.core.validation import WalkForwardFold, probabilistic_sharpe_ratio, walk_forward_bars, walk_forward_months

if TYPE_CHECKING:
    from utp.daemon.session import MarketData

Scheme = Literal["bars", "months"]
#: (train, test, step) of each scheme, in bar times or in months.
DEFAULT_WINDOWS: dict[str, tuple[int, int, int]] = {"bars": (252, 63, 21), "months": (12, 1, 1)}
#: Folds per scheme when not given: every fold that fits (bars), the 12 most recent (months).
DEFAULT_FOLDS: dict[str, int | None] = {"bars": None, "months": 12}


@dataclass(frozen=True)
class FoldResult:
    """One fold's test window: its bar times, the returns measured on them and their statistics."""

    index: int
    train_start_ns: int
    test_start_ns: int
    test_end_ns: int
    times_ns: np.ndarray  # the test window's bar times
    returns: np.ndarray  # bar-to-bar equity returns on them, the first from the last training bar
    total_return: float
    sharpe: float  # annualised; NaN when the returns do not vary
    max_drawdown: float  # positive fraction, as the backtest summary's
    trades: int  # round trips closed in the test window


@dataclass(frozen=True)
class WalkForwardResult:
    scheme: str
    windows: tuple[int, int, int]  # train, test, step
    anchored: bool
    periods_per_year: float
    folds: tuple[FoldResult, ...]
    oos_times_ns: np.ndarray  # the out-of-sample series (see the module docstring)
    oos_returns: np.ndarray
    oos_total_return: float
    oos_sharpe: float  # annualised
    oos_psr: float  # probability that the per-bar Sharpe ratio is above 0; NaN for constant returns
    negative_share: float  # share of folds with Sharpe < 0


def bar_times(bars: pl.DataFrame) -> np.ndarray:
    """The distinct bar times of a frame of bars, sorted: what the folds are counted in."""
    return bars["event_time_ns"].unique().sort().to_numpy()


def fold_splits(
    times_ns: np.ndarray,
    scheme: Scheme = "bars",
    *,
    train: int | None = None,
    test: int | None = None,
    step: int | None = None,
    n_folds: int | None = None,
    anchored: bool = False,
) -> tuple[WalkForwardFold, ...]:
    """`utp.core.validation`'s walk-forward folds over distinct bar times; windows default to the scheme's
    (`DEFAULT_WINDOWS`). `n_folds` None: every fold that fits. Raises ValueError as the splitters do."""
    train, test, step = windows(scheme, train, test, step)
    if scheme == "bars":
        return walk_forward_bars(times_ns, train_bars=train, test_bars=test, step_bars=step, anchored=anchored,
                                 n_folds=n_folds)  # fmt: skip
    return walk_forward_months(times_ns, train_months=train, test_months=test, step_months=step,
                               anchored=anchored, n_folds=n_folds)  # fmt: skip


def windows(scheme: str, train: int | None, test: int | None, step: int | None) -> tuple[int, int, int]:
    """(train, test, step) with the scheme's defaults for those not given."""
    if scheme not in DEFAULT_WINDOWS:
        raise ValueError(f"unknown walk-forward scheme {scheme!r}: bars or months")
    default = DEFAULT_WINDOWS[scheme]
    return (default[0] if train is None else train, default[1] if test is None else test,
            default[2] if step is None else step)  # fmt: skip


def run_fold(config: Config, dataset_name: str, symbols: Sequence[str], bars: pl.DataFrame,
             fold: WalkForwardFold) -> FoldResult:  # fmt: skip
    """Backtest the graph over the fold's train and test windows (`bars`: the run's bars, cut here) and
    measure the test window. A module-level function so that a process pool can run it."""
    from utp.core.universe import Universe
    from utp.daemon.session import MarketData, backtest
    from utp.storage.datasets import dataset

    window = _window(bars, fold)
    market_data = MarketData(dataset(dataset_name), Universe(tuple(symbols)), window)
    result = backtest(config, market_data=market_data, include_details=True)
    times = np.asarray(result.equity_curve.time_ns, np.int64)
    equity = np.asarray(result.equity_curve.equity, np.float64)
    before = times < fold.test_first_ns
    # The equity at the last training bar: the test window's returns start from it.
    base = float(equity[before][-1]) if before.any() else result.summary.initial_equity
    test_times, test_equity = times[~before], equity[~before]
    returns = perf.simple_returns(np.concatenate([[base], test_equity]))
    ppy = result.summary.periods_per_year
    trades = sum(1 for t in result.trades if not t.open and fold.test_first_ns <= t.exit_time_ns <= fold.test_last_ns)
    return FoldResult(
        index=fold.index,
        train_start_ns=fold.train_first_ns,
        test_start_ns=fold.test_first_ns,
        test_end_ns=fold.test_last_ns,
        times_ns=test_times,
        returns=returns,
        total_return=perf.total_return(returns),
        sharpe=perf.sharpe_ratio(returns, ppy),
        max_drawdown=abs(perf.max_drawdown(returns)),  # abs: a flat window shows 0, not -0
        trades=trades,
    )


def _window(bars: pl.DataFrame, fold: WalkForwardFold) -> pl.DataFrame:
    return bars.filter(pl.col("event_time_ns").is_between(fold.train_first_ns, fold.test_last_ns))


def _run_fold_job(job: tuple) -> FoldResult:
    return run_fold(*job)


def out_of_sample(folds: Sequence[FoldResult]) -> tuple[np.ndarray, np.ndarray]:
    """The out-of-sample series: each fold's test bars before the next fold's test window starts (the
    last fold's whole window), so every bar of the union of test windows appears once, measured by the
    fold trained most recently before it."""
    if not folds:
        return np.empty(0, np.int64), np.empty(0)
    times, returns = [], []
    for k, fold in enumerate(folds):
        end = folds[k + 1].test_start_ns if k + 1 < len(folds) else fold.test_end_ns + 1
        keep = fold.times_ns < end
        times.append(fold.times_ns[keep])
        returns.append(fold.returns[keep])
    return np.concatenate(times), np.concatenate(returns)


def walk_forward(
    config: Config,
    *,
    scheme: Scheme = "bars",
    train: int | None = None,
    test: int | None = None,
    step: int | None = None,
    n_folds: int | None = None,
    anchored: bool = False,
    processes: int = 1,
    market_data: MarketData | None = None,
    on_fold: Callable[[FoldResult], None] | None = None,
) -> WalkForwardResult:
    """Run every fold (see the module docstring) and measure them and their out-of-sample series.

    `market_data` defaults to the config's; `n_folds` None gives every fold that fits; `processes` > 1 runs
    folds in that many spawned processes. `on_fold` is called with each fold as soon as it and the folds
    before it are done (in fold order), so a caller can stream them."""
    from utp.daemon.session import MarketData

    md = market_data if market_data is not None else MarketData.from_config(config)
    sizes = windows(scheme, train, test, step)
    folds = fold_splits(bar_times(md.bars), scheme, train=sizes[0], test=sizes[1], step=sizes[2], n_folds=n_folds,
                        anchored=anchored)  # fmt: skip
    # Each job carries only its fold's bars: a pool pickles them to its worker.
    jobs = [(config, md.dataset.name, md.universe.symbols, _window(md.bars, fold), fold) for fold in folds]
    done: list[FoldResult] = []

    def collect(finished: Iterable[FoldResult]) -> None:
        for fold in finished:
            done.append(fold)
            if on_fold is not None:
                on_fold(fold)

    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=get_context("spawn")) as pool:
            collect(pool.map(_run_fold_job, jobs))
    else:
        collect(_run_fold_job(job) for job in jobs)
    results = tuple(done)
    ppy = md.dataset.periods_per_year
    oos_times, oos_returns = out_of_sample(results)
    try:
        psr = probabilistic_sharpe_ratio(oos_returns)
    except ValueError:  # constant returns (nothing traded) or fewer than 2 of them: no Sharpe ratio
        psr = float("nan")
    return WalkForwardResult(
        scheme=scheme,
        windows=sizes,
        anchored=anchored,
        periods_per_year=ppy,
        folds=results,
        oos_times_ns=oos_times,
        oos_returns=oos_returns,
        oos_total_return=perf.total_return(oos_returns),
        oos_sharpe=perf.sharpe_ratio(oos_returns, ppy),
        oos_psr=psr,
        negative_share=float(np.mean([f.sharpe < 0 for f in results])) if results else float("nan"),
    )


# -- output --------------------------------------------------------------------------------------------
def _date(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def fold_table(result: WalkForwardResult) -> pl.DataFrame:
    """One row per fold: dates, test bars, return, Sharpe, max drawdown, trades (NaN where undefined)."""
    folds = result.folds
    return pl.DataFrame(
        {
            "fold": [f.index for f in folds],
            "train_start": [_date(f.train_start_ns) for f in folds],
            "test_start": [_date(f.test_start_ns) for f in folds],
            "test_end": [_date(f.test_end_ns) for f in folds],
            "bars": [int(f.times_ns.size) for f in folds],
            "return": [f.total_return for f in folds],
            "sharpe": [f.sharpe for f in folds],
            "max_drawdown": [f.max_drawdown for f in folds],
            "trades": [f.trades for f in folds],
        },
        schema={"fold": pl.Int64, "train_start": pl.Utf8, "test_start": pl.Utf8, "test_end": pl.Utf8,
                "bars": pl.Int64, "return": pl.Float64, "sharpe": pl.Float64, "max_drawdown": pl.Float64,
                "trades": pl.Int64},  # fmt: skip
    )


def summary_dict(result: WalkForwardResult) -> dict[str, object]:
    """The result as strict-JSON values (NaN becomes null)."""
    return {
        "scheme": result.scheme,
        "train": result.windows[0],
        "test": result.windows[1],
        "step": result.windows[2],
        "anchored": result.anchored,
        "periods_per_year": result.periods_per_year,
        "folds": [{k: (_finite(v) if isinstance(v, float) else v) for k, v in row.items()}
                  for row in fold_table(result).iter_rows(named=True)],  # fmt: skip
        "oos": {
            "bars": int(result.oos_returns.size),
            "start": _date(int(result.oos_times_ns[0])) if result.oos_times_ns.size else None,
            "end": _date(int(result.oos_times_ns[-1])) if result.oos_times_ns.size else None,
            "total_return": _finite(result.oos_total_return),
            "sharpe": _finite(result.oos_sharpe),
            "psr": _finite(result.oos_psr),
            "negative_sharpe_share": _finite(result.negative_share),
        },
    }


def format_result(title: str, result: WalkForwardResult) -> str:
    unit = "bars" if result.scheme == "bars" else "months"
    train, test, step = result.windows
    lines = [
        title,
        f"  folds          {len(result.folds)} ({result.scheme}: train {train}, test {test}, step {step} {unit}"
        f"{', anchored' if result.anchored else ''})",
        f"  {'fold':>4}  {'test start':<10}  {'test end':<10}  {'return':>8}  {'sharpe':>7}  {'max dd':>7}  {'trades':>6}",
    ]
    for f in result.folds:
        sharpe = "—" if math.isnan(f.sharpe) else f"{f.sharpe:.2f}"
        lines.append(f"  {f.index:>4}  {_date(f.test_start_ns):<10}  {_date(f.test_end_ns):<10}  "
                     f"{f.total_return:>8.2%}  {sharpe:>7}  {f.max_drawdown:>7.2%}  {f.trades:>6}")  # fmt: skip
    psr = "—" if math.isnan(result.oos_psr) else f"{result.oos_psr:.3f}"
    sharpe = "—" if math.isnan(result.oos_sharpe) else f"{result.oos_sharpe:.2f}"
    lines += [
        f"  out of sample  {result.oos_returns.size} bars, return {result.oos_total_return:.2%}, sharpe {sharpe}, "
        f"probabilistic sharpe {psr}",
        f"  sharpe < 0     {result.negative_share:.0%} of folds",
    ]
    return "\n".join(lines)


# -- the subcommand ------------------------------------------------------------------------------------
def _folds_arg(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of folds or 'all'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the number of folds must be positive")
    return value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `utp walk-forward` (the config flags are `utp backtest`'s)."""
    from utp.daemon.cli import _add_config_args

    parser = sub.add_parser("walk-forward", help="run the engine graph fold by fold and measure it out of sample")
    _add_config_args(parser)
    parser.add_argument("--start", metavar="YYYY-MM-DD")
    parser.add_argument("--end", metavar="YYYY-MM-DD")
    parser.add_argument("--weights", metavar="SRC=W,...", help="ensemble weights, e.g. rsi=0.5,ema_cross=0.5")
    parser.add_argument("--initial-cash", type=float)
    parser.add_argument("--batch-bar-times", type=int, default=1000)
    parser.add_argument("--portfolio", metavar="METHOD", help="portfolio construction method (portfolio.method)")
    parser.add_argument("--scheme", choices=("bars", "months"), default="bars",
                        help="bars: windows counted in bar times (252/63/21); months: 12 months / 1 month")  # fmt: skip
    parser.add_argument("--train", type=int, metavar="N", help="training window (bar times or months)")
    parser.add_argument("--test", type=int, metavar="N", help="test window (bar times or months)")
    parser.add_argument("--step", type=int, metavar="N", help="step between folds (bar times or months)")
    parser.add_argument("--folds", type=_folds_arg, metavar="N|all",
                        help="the N most recent folds (default: all for bars, 12 for months)")  # fmt: skip
    parser.add_argument("--anchored", action="store_true", help="train from the first bar (expanding window)")
    parser.add_argument("--processes", type=int, default=1, metavar="N", help="run folds in N processes")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--out", metavar="FILE", help="write the fold table as CSV")
    parser.set_defaults(log_level="WARNING")
    return parser


def _weights(text: str) -> dict[str, float]:
    weights = {}
    for item in text.split(","):
        source, _, weight = item.partition("=")
        try:
            weights[source.strip()] = float(weight)
        except ValueError:
            raise ConfigError(f"--weights: {item!r} is not SOURCE=NUMBER") from None
    return weights


def run_command(args: argparse.Namespace) -> int:
    """`utp walk-forward`: print the fold table and the out-of-sample figures (or JSON); --out writes CSV."""
    from utp.daemon.cli import _config, _overrides

    flags = {"dataset": "market_data.dataset", "start": "market_data.start", "end": "market_data.end",
             "initial_cash": "execution.initial_cash", "batch_bar_times": "market_data.batch_bar_times",
             "portfolio": "portfolio.method"}  # fmt: skip
    config = _config(args, flags)
    if args.weights:
        config = load_config(args.config, overrides={**_overrides(args, flags), "ensemble.weights": _weights(args.weights)})
    if args.processes < 1:
        raise ValueError("--processes must be at least 1")
    n_folds = DEFAULT_FOLDS[args.scheme] if args.folds is None else None if args.folds == "all" else args.folds
    result = walk_forward(config, scheme=args.scheme, train=args.train, test=args.test, step=args.step,
                          n_folds=n_folds, anchored=args.anchored, processes=args.processes)  # fmt: skip
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fold_table(result).write_csv(path)
    if args.json:
        print(json.dumps(summary_dict(result), allow_nan=False))
    else:
        md = config.market_data
        print(format_result(f"utp walk-forward: {md.dataset} {','.join(md.symbols) or 'all symbols'}", result))
        if args.out:
            print(f"  fold table     {Path(args.out).resolve()}")
    sys.stdout.flush()
    return 0
