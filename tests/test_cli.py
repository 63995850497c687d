"""The command line: `utp demo` and `utp backtest` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]


def utp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utp.daemon.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_demo_prints_a_summary_and_writes_the_equity_curve(tmp_path: Path) -> None:
    result = utp("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for label in ("bars", "signals", "orders", "trades", "total return", "sharpe", "max drawdown", "equity curve"):
        assert label in result.stdout
    assert "bars           2148" in result.stdout
    counts = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if line.strip()[:6] in ("orders", "trades")}
    assert int(counts["orders"]) > 0 and int(counts["trades"]) > 0  # the demo trades, under the seeds' risk table
    curve = pl.read_csv(tmp_path / "utp-demo-equity.csv")
    assert curve.columns == ["time", "equity"] and curve.height == 2148
    assert str(tmp_path / "utp-demo-equity.csv") in result.stdout


def test_backtest_takes_data_set_symbols_dates_and_weights(tmp_path: Path) -> None:
    result = utp("backtest", "--dataset", "sp500", "--symbols", "KO,PEP", "--start", "2015-01-01", "--end", "2016-12-31",
                 "--weights", "rsi=1,ema_cross=0", "--json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bars"] == 2 * 504  # two symbols, 504 trading days
    assert int(summary["orders"]) > 0
    rsi_only = utp("backtest", "--dataset", "sp500", "--symbols", "KO,PEP", "--start", "2015-01-01",
                   "--end", "2016-12-31", "--json", cwd=tmp_path)  # fmt: skip
    assert json.loads(rsi_only.stdout.strip().splitlines()[-1]) != summary  # weights change decisions


def test_backtest_refuses_an_unknown_symbol(tmp_path: Path) -> None:
    result = utp("backtest", "--dataset", "goog", "--symbols", "MSFT", cwd=tmp_path)
    assert result.returncode == 2 and "goog has no symbol MSFT" in result.stderr


def test_json_summary_is_strict_json_with_null_for_undefined_statistics() -> None:
    from utp.daemon.cli import summary_dict
    from utp.v1 import core_service_pb2 as api

    summary = api.BacktestSummary(bars=3, sharpe=float("nan"), profit_factor=float("inf"), total_return=0.25)
    values = summary_dict(summary)
    assert values["sharpe"] is None and values["profit_factor"] is None
    assert values["bars"] == 3 and values["total_return"] == 0.25
    json.loads(json.dumps(values, allow_nan=False))


def test_backtest_report_writes_charts_and_every_metric(tmp_path: Path) -> None:
    args = ("backtest", "--dataset", "sp500", "--symbols", "AAPL,MSFT", "--start", "2012-01-01", "--end", "2013-12-31")
    result = utp(*args, "--json", "--report", "report", "--progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    report = tmp_path / "report"
    page = (report / "index.html").read_text()
    for chart in ("equity.png", "drawdown.png", "rolling_sharpe.png", "monthly_returns_sp500.png", "trades_sp500_aapl.png"):
        assert (report / chart).stat().st_size > 1000 and chart in page
    metrics = json.loads((report / "metrics.json").read_text())["runs"]["sp500"]
    assert metrics["total_return"] == summary["total_return"] and metrics["sharpe"] == summary["sharpe"]
    assert str(report / "index.html") in result.stderr
