"""`utp walk-forward`: folds from core.validation's splitters, each fold an honest backtest of its window,
the out-of-sample series and its statistics, the command line."""

from __future__ import annotations

import csv
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from utp.core.config import Config, load_config
from utp.core.validation import walk_forward_bars, walk_forward_months
from utp.daemon import walkforward as wf
from utp.daemon.cli import main
from utp.daemon.session import MarketData, backtest

SYMBOLS = ["AAPL", "KO", "XOM", "JPM"]
SETTINGS = {"market_data.dataset": "sp500", "market_data.symbols": SYMBOLS, "market_data.start": "2010-01-01",
            "market_data.end": "2012-12-31", "market_data.batch_bar_times": 1000}  # fmt: skip
CLI = ["walk-forward", "--dataset", "sp500", "--symbols", ",".join(SYMBOLS), "--start", "2010-01-01",
       "--end", "2012-12-31"]  # fmt: skip


def day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")


def window_returns(start_ns: int, end_ns: int, test_start_ns: int) -> tuple[np.ndarray, list]:
    """A plain backtest of the dates [start, end] (cut by the config, not by the module) and the returns of
    its test part, from the equity at the last bar before the test window; and its trades."""
    window = load_config(environ={}, overrides={**SETTINGS, "market_data.start": day(start_ns),
                                                "market_data.end": day(end_ns)})  # fmt: skip
    result = backtest(window)
    times = np.array(result.equity_curve.time_ns)
    equity = np.array(result.equity_curve.equity)
    test = times >= test_start_ns
    curve = np.concatenate([[equity[~test][-1]], equity[test]])
    return curve[1:] / curve[:-1] - 1.0, list(result.trades)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(environ={}, overrides=SETTINGS)


@pytest.fixture(scope="module")
def market_data(config: Config) -> MarketData:
    return MarketData.from_config(config)


@pytest.fixture(scope="module")
def rolling(config: Config, market_data: MarketData) -> wf.WalkForwardResult:
    return wf.walk_forward(config, market_data=market_data)


def test_bar_folds_are_the_validation_splitters(rolling: wf.WalkForwardResult, market_data: MarketData) -> None:
    times = np.unique(market_data.bars["event_time_ns"].to_numpy())  # one per date, four symbols each
    expected = walk_forward_bars(times, train_bars=252, test_bars=63, step_bars=21)
    assert len(rolling.folds) == len(expected) == (times.size - 252 - 63) // 21 + 1
    for got, want in zip(rolling.folds, expected, strict=True):
        assert (got.index, got.train_start_ns, got.test_start_ns, got.test_end_ns) == (
            want.index, want.train_first_ns, want.test_first_ns, want.test_last_ns)  # fmt: skip
        assert np.array_equal(got.times_ns, times[want.test])  # every test bar measured, nothing else


def test_month_folds_are_the_validation_splitters(config: Config, market_data: MarketData) -> None:
    result = wf.walk_forward(config, market_data=market_data, scheme="months", n_folds=12)
    times = np.unique(market_data.bars["event_time_ns"].to_numpy())
    expected = walk_forward_months(times)  # the seeds' defaults: 12 folds, 12 months / 1 month
    assert result.windows == (12, 1, 1) and len(result.folds) == 12
    for got, want in zip(result.folds, expected, strict=True):
        assert (got.train_start_ns, got.test_start_ns, got.test_end_ns) == (
            want.train_first_ns, want.test_first_ns, want.test_last_ns)  # fmt: skip
        assert np.array_equal(got.times_ns, times[want.test])
    assert day(result.folds[-1].test_start_ns) == "2012-11-01"  # Dec 2012 is the last, still open month


def test_anchored_folds_are_the_full_run_restricted_to_the_test_windows(config: Config,
                                                                        market_data: MarketData) -> None:  # fmt: skip
    """The graph is causal, so a fold trained from the first bar is a prefix of the full run: its test
    returns are the full run's, and so is the out-of-sample series."""
    full = backtest(config, market_data=market_data)
    times = np.array(full.equity_curve.time_ns)
    curve = np.concatenate([[full.summary.initial_equity], np.array(full.equity_curve.equity)])
    full_returns = dict(zip(times.tolist(), (curve[1:] / curve[:-1] - 1.0).tolist(), strict=True))
    result = wf.walk_forward(config, market_data=market_data, train=252, test=63, step=63, anchored=True)
    assert len(result.folds) == 7
    for fold in result.folds:
        assert fold.train_start_ns == times[0]
        assert np.array_equal(fold.returns, [full_returns[t] for t in fold.times_ns.tolist()])
    assert np.array_equal(result.oos_returns, [full_returns[t] for t in result.oos_times_ns.tolist()])


def test_each_rolling_fold_is_an_independent_backtest_of_its_window(config: Config, rolling: wf.WalkForwardResult,
                                                                     market_data: MarketData) -> None:  # fmt: skip
    """Rolling folds start later with the initial cash, so they are not the full run (checked below); what
    holds is that each is exactly a backtest of its own train + test window, measured on the test part."""
    full = backtest(config, market_data=market_data)
    full_times = np.array(full.equity_curve.time_ns)
    full_curve = np.concatenate([[full.summary.initial_equity], np.array(full.equity_curve.equity)])
    differs = 0
    for fold in (rolling.folds[0], rolling.folds[len(rolling.folds) // 2], rolling.folds[-1]):
        returns, trades = window_returns(fold.train_start_ns, fold.test_end_ns, fold.test_start_ns)
        assert np.array_equal(fold.returns, returns)
        wealth = np.cumprod(1.0 + returns)
        assert fold.total_return == pytest.approx(wealth[-1] - 1.0, rel=1e-12, abs=1e-15)
        sharpe = returns.mean() / returns.std(ddof=1) * math.sqrt(252)
        assert fold.sharpe == pytest.approx(sharpe, rel=1e-9)
        assert fold.max_drawdown == pytest.approx(-np.min(wealth / np.maximum.accumulate(wealth) - 1.0), abs=1e-15)
        assert fold.trades == sum(1 for t in trades if not t.open and fold.test_start_ns <= t.exit_time_ns)
        at = np.searchsorted(full_times, fold.times_ns)
        differs += not np.allclose(fold.returns, full_curve[at + 1] / full_curve[at] - 1.0, rtol=0, atol=1e-12)
    assert differs >= 2  # the later folds hold other share counts than the full run


def test_out_of_sample_series_and_its_statistics(rolling: wf.WalkForwardResult) -> None:
    folds = rolling.folds
    # Every bar of the union of the test windows once, measured by the fold trained most recently before it.
    union = np.unique(np.concatenate([f.times_ns for f in folds]))
    assert np.array_equal(rolling.oos_times_ns, union)
    for k, fold in enumerate(folds):
        end = folds[k + 1].test_start_ns if k + 1 < len(folds) else fold.test_end_ns + 1
        mine = (rolling.oos_times_ns >= fold.test_start_ns) & (rolling.oos_times_ns < end)
        assert np.array_equal(rolling.oos_returns[mine], fold.returns[fold.times_ns < end])
    r = rolling.oos_returns
    sr = r.mean() / r.std(ddof=1)
    assert rolling.oos_sharpe == pytest.approx(sr * math.sqrt(252), rel=1e-9)
    centred = r - r.mean()
    skew = np.mean(centred**3) / np.mean(centred**2) ** 1.5
    kurt = np.mean(centred**4) / np.mean(centred**2) ** 2
    psr = NormalDist().cdf(sr * math.sqrt(r.size - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert rolling.oos_psr == pytest.approx(psr, rel=1e-9)
    assert rolling.negative_share == sum(f.sharpe < 0 for f in folds) / len(folds)
    assert 0 < rolling.negative_share < 1  # a real mix of folds, not a degenerate run


def test_folds_in_a_process_pool_equal_the_serial_run(config: Config, market_data: MarketData,
                                                      rolling: wf.WalkForwardResult) -> None:  # fmt: skip
    pooled = wf.walk_forward(config, market_data=market_data, n_folds=3, processes=2)
    assert [f.index for f in pooled.folds] == [f.index for f in rolling.folds[-3:]]
    for a, b in zip(pooled.folds, rolling.folds[-3:], strict=True):
        assert np.array_equal(a.returns, b.returns) and a.trades == b.trades


def test_cli_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str], rolling: wf.WalkForwardResult) -> None:
    out = tmp_path / "folds" / "table.csv"
    assert main([*CLI, "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["scheme"] == "bars" and (printed["train"], printed["test"], printed["step"]) == (252, 63, 21)
    assert [f["fold"] for f in printed["folds"]] == [f.index for f in rolling.folds]
    assert [f["return"] for f in printed["folds"]] == [f.total_return for f in rolling.folds]
    assert printed["oos"]["sharpe"] == rolling.oos_sharpe and printed["oos"]["psr"] == rolling.oos_psr
    assert printed["oos"]["bars"] == rolling.oos_returns.size
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(rolling.folds)
    assert list(rows[0]) == ["fold", "train_start", "test_start", "test_end", "bars", "return", "sharpe",
                             "max_drawdown", "trades"]  # fmt: skip
    assert [int(r["trades"]) for r in rows] == [f.trades for f in rolling.folds]
    assert rows[0]["test_start"] == day(rolling.folds[0].test_start_ns)


def test_cli_prints_the_fold_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CLI, "--scheme", "months", "--folds", "3"]) == 0
    text = capsys.readouterr().out
    assert "3 (months: train 12, test 1, step 1 months)" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "test start" in line)
    assert [line.split()[1] for line in lines[header + 1 : header + 4]] == ["2012-09-04", "2012-10-01", "2012-11-01"]
    assert "out of sample" in text and "probabilistic sharpe" in text and "of folds" in text


def test_cli_refuses_impossible_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CLI, "--train", "2000"]) == 2  # longer than the data
    assert "one fold needs" in capsys.readouterr().err
    assert main([*CLI, "--processes", "0"]) == 2
    with pytest.raises(SystemExit):
        main([*CLI, "--folds", "none"])
