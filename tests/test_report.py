"""The backtest report: files, formatted metrics, strict JSON, monthly returns, side-by-side runs, edge cases."""

from __future__ import annotations

import html
import json
import math
import re
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from utp.core import performance as perf
from utp.core.config import load_config
from utp.daemon import report as rp
from utp.daemon.report import ReportRun, TimeSeries, write_report
from utp.daemon.session import backtest as run_graph
from utp.storage.datasets import DAY_NS, dataset, load_sp500_index
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ns(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 10**9


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert width >= 400 and height >= 200, (path, width, height)
    assert len(data) > 8_000, (path, len(data))


def synthetic(equity: list[float], *, start: str = "2020-01-02", step_ns: int = DAY_NS,
              trades: Sequence[api.Trade] = (), **summary: float) -> api.BacktestResult:  # fmt: skip
    times = [ns(start) + i * step_ns for i in range(len(equity))]
    result = api.BacktestResult(
        summary=api.BacktestSummary(
            bars=len(equity),
            initial_equity=equity[0],
            final_equity=equity[-1],
            start_time_ns=times[0],
            end_time_ns=times[-1],
            periods_per_year=252,
            trades=len(trades),
            **summary,
        )
    )
    result.equity_curve.time_ns.extend(int(t) for t in times)
    result.equity_curve.equity.extend(float(e) for e in equity)
    result.trades.extend(trades)
    return result


def img_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def metric_row(page: str, label: str) -> list[str]:
    match = re.search(rf"<tr><th scope=\"row\"[^>]*>{re.escape(label)}</th>(.*?)</tr>", page)
    assert match, label
    return re.findall(r"<td>(.*?)</td>", match.group(1))


def attribution_tables(page: str, by: str) -> list[list[list[str]]]:
    """The cells of each run's attribution table `by` ("symbol" or "strategy"), in the page's order."""
    tables = re.findall(rf'<table class="attribution" data-by="{by}">.*?<tbody>(.*?)</tbody></table>', page)
    return [[re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", t)] for t in tables]


def expected_attribution_cells(rows: Sequence[api.Attribution]) -> list[list[str]]:
    """The table cells written out independently of the module's formatting."""
    def pct(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.2%}"

    return [[html.escape(a.key), f"{a.pnl:,.2f}", f"{a.trades:,}", pct(a.win_rate), pct(a.share)] for a in rows]


# -- a real backtest ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backtest() -> api.BacktestResult:
    config = load_config(environ={}, overrides={"market_data.dataset": "goog", "market_data.end": "2006-12-31"})
    return run_graph(config)


@pytest.fixture(scope="module")
def benchmark() -> TimeSeries:
    index = load_sp500_index()
    return index["event_time_ns"].to_numpy(), index["close"].to_numpy()


@pytest.fixture(scope="module")
def goog_prices() -> dict[str, TimeSeries]:
    bars = dataset("goog").bars()
    return {"GOOG": (bars["event_time_ns"].to_numpy(), bars["close"].to_numpy())}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, backtest: api.BacktestResult, benchmark: TimeSeries,
           goog_prices: dict[str, TimeSeries]) -> Path:  # fmt: skip
    out = tmp_path_factory.mktemp("report") / "nested" / "goog"  # created with its parents
    return write_report(out, [ReportRun("ema_cross", backtest, benchmark, goog_prices)], title="GOOG <daily>")


def test_the_backtest_has_trades_and_a_curve(backtest: api.BacktestResult) -> None:
    # The report tests below mean something only on a run that traded.
    assert len(backtest.trades) > 0 and len(backtest.equity_curve.equity) > 300


def test_report_writes_the_page_the_charts_and_the_metrics(report: Path) -> None:
    directory = report.parent
    assert report.name == "index.html"
    pngs = sorted(p.name for p in directory.glob("*.png"))
    assert pngs == ["drawdown.png", "equity.png", "monthly_returns_ema-cross.png", "rolling_sharpe.png",
                    "trades_ema-cross_goog.png"]  # fmt: skip
    for name in pngs:
        assert_png(directory / name)
    page = report.read_text(encoding="utf-8")
    assert sorted(img_sources(page)) == pngs  # every chart linked, nothing dangling
    assert "<script" not in page and "://" not in page  # static, self-contained
    assert "<title>GOOG &lt;daily&gt;</title>" in page  # escaped
    assert "Period 2004-08-19 – 2006-12-29" in page
    assert (directory / "metrics.json").is_file()


def test_page_shows_every_metric_formatted(report: Path, backtest: api.BacktestResult) -> None:
    page = report.read_text(encoding="utf-8")
    s = backtest.summary
    # Written out independently of the module's formatter.
    expected = {
        "Bars": f"{s.bars:,}",
        "Trades": f"{s.trades:,}",
        "Total return": f"{s.total_return:.2%}",
        "Annual volatility": f"{s.annual_volatility:.2%}",
        "Max drawdown": f"{s.max_drawdown:.2%}",
        "Win rate": f"{s.win_rate:.2%}",
        "Exposure (share of bars)": f"{s.exposure_time:.2%}",
        "Sharpe ratio": f"{s.sharpe:.2f}",
        "Profit factor": f"{s.profit_factor:.2f}",
        "Beta": f"{s.beta:.2f}",
        "Final equity": f"{s.final_equity:,.2f}",
        "Periods per year": "252",
        "Start": "2004-08-19",
        "End": "2006-12-29",
    }
    for label, text in expected.items():
        assert metric_row(page, label) == [text], label
    # And every field of the summary has its row, so fields added later show up too.
    for f in api.BacktestSummary.DESCRIPTOR.fields:
        assert metric_row(page, rp.metric_label(f.name)) == [rp.format_metric(f.name, getattr(s, f.name))]


def test_metrics_json_is_strict_and_equals_the_summary(report: Path, backtest: api.BacktestResult) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"), parse_constant=refuse)
    assert metrics["title"] == "GOOG <daily>"
    assert list(metrics["runs"]) == ["ema_cross"]
    values = metrics["runs"]["ema_cross"]
    fields = api.BacktestSummary.DESCRIPTOR.fields
    assert list(values) == [f.name for f in fields]
    for f in fields:
        original = getattr(backtest.summary, f.name)
        if isinstance(original, float) and not math.isfinite(original):
            assert values[f.name] is None
        else:
            assert values[f.name] == original and type(values[f.name]) is type(original), f.name


def test_trade_list_and_trade_chart(report: Path, backtest: api.BacktestResult) -> None:
    page = report.read_text(encoding="utf-8")
    n = len(backtest.trades)
    first = backtest.trades[0]
    assert f"{first.pnl:,.2f}" in page and f"{first.return_pct:.2%}" in page
    assert rp.format_time(first.entry_time_ns) in page
    if n <= 20:
        assert f"{n:,} trade" in page and "omitted" not in page


def test_attribution_tables_show_the_results_attribution(report: Path, backtest: api.BacktestResult) -> None:
    page = report.read_text(encoding="utf-8")
    assert len(backtest.by_strategy) >= 2  # a table worth checking: several sources traded
    assert attribution_tables(page, "symbol") == [expected_attribution_cells(backtest.by_symbol)]
    assert attribution_tables(page, "strategy") == [expected_attribution_cells(backtest.by_strategy)]
    # And the result's attribution is what its trades say: P&L, count and closed-trade win rate per key.
    for by, rows in (("symbol", backtest.by_symbol), ("strategy", backtest.by_strategy)):
        for a in rows:
            trades = [t for t in backtest.trades if getattr(t, by) == a.key]
            closed = [t.pnl for t in trades if not t.open]
            assert a.trades == len(trades) and a.pnl == pytest.approx(sum(t.pnl for t in trades), abs=1e-6)
            assert a.win_rate == pytest.approx(sum(p > 0 for p in closed) / len(closed)) if closed else math.isnan(a.win_rate)
        assert sum(a.share for a in rows) == pytest.approx(1.0)


def test_metrics_json_carries_the_attribution(report: Path, backtest: api.BacktestResult) -> None:
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    assert list(metrics["attribution"]) == ["ema_cross"]
    got = metrics["attribution"]["ema_cross"]
    for by, rows in (("by_symbol", backtest.by_symbol), ("by_strategy", backtest.by_strategy)):
        assert [row["key"] for row in got[by]] == [a.key for a in rows]
        for row, a in zip(got[by], rows, strict=True):
            assert row["pnl"] == a.pnl and row["trades"] == a.trades and row["share"] == a.share
            assert row["win_rate"] == (None if math.isnan(a.win_rate) else a.win_rate)


def test_attribution_of_several_runs_with_open_only_keys_and_no_trades(tmp_path: Path) -> None:
    traded = synthetic([1e5, 1e5 + 30.0], sharpe=1.0)
    traded.by_symbol.extend([api.Attribution(key="KO", pnl=40.0, trades=2, win_rate=0.5, share=4 / 3),
                             api.Attribution(key="PEP", pnl=-10.0, trades=1, win_rate=float("nan"), share=-1 / 3)])  # fmt: skip
    traded.by_strategy.append(api.Attribution(key="a<b", pnl=30.0, trades=3, win_rate=0.5, share=1.0))
    idle = synthetic([1e5, 1e5])
    index = write_report(tmp_path, [ReportRun("traded", traded), ReportRun("idle", idle)], title="attribution")
    page = index.read_text(encoding="utf-8")
    # Only the run with trades has tables; the idle one says so.
    assert attribution_tables(page, "symbol") == [[["KO", "40.00", "2", "50.00%", "133.33%"],
                                                   ["PEP", "-10.00", "1", "—", "-33.33%"]]]  # fmt: skip
    assert attribution_tables(page, "strategy") == [[["a&lt;b", "30.00", "3", "50.00%", "100.00%"]]]
    section = page[page.index("<h2>Attribution</h2>") : page.index("<h2>Trades</h2>")]
    assert "<h3>idle</h3><p class=\"note\">No trades.</p>" in section
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["attribution"]["idle"] == {"by_symbol": [], "by_strategy": []}
    assert metrics["attribution"]["traded"]["by_symbol"][1] == {"key": "PEP", "pnl": -10.0, "trades": 1,
                                                                "win_rate": None, "share": -1 / 3}  # fmt: skip
    assert metrics["attribution"]["traded"]["by_strategy"] == [{"key": "a<b", "pnl": 30.0, "trades": 3,
                                                                "win_rate": 0.5, "share": 1.0}]  # fmt: skip


# -- computations ------------------------------------------------------------------------------------
def test_monthly_returns_equal_an_independent_computation(backtest: api.BacktestResult) -> None:
    times, equity = rp.equity_curve(backtest)
    initial = backtest.summary.initial_equity
    table = rp.monthly_returns(times, equity, initial)

    last: dict[tuple[int, int], float] = {}
    for t, e in zip(times.tolist(), equity.tolist(), strict=True):
        moment = datetime.fromtimestamp(t / 1e9, UTC)
        last[(moment.year, moment.month)] = e  # the curve is in time order: the month's last value wins
    expected, previous = [], initial
    for key in sorted(last):
        expected.append((*key, last[key] / previous - 1.0))
        previous = last[key]

    got = table.rows()
    assert [(y, m) for y, m, _ in got] == [(y, m) for y, m, _ in expected]
    assert np.allclose([r for *_, r in got], [r for *_, r in expected], rtol=0, atol=1e-12)
    assert len(got) == 29  # 2004-08 .. 2006-12
    # The months compound to the run's total return.
    assert np.prod(1.0 + table["return"].to_numpy()) - 1.0 == pytest.approx(equity[-1] / initial - 1.0, abs=1e-12)
    yearly = rp.yearly_returns(table)
    assert yearly["year"].to_list() == [2004, 2005, 2006]
    end_2005 = last[(2005, 12)]
    assert yearly["return"][2] == pytest.approx(equity[-1] / end_2005 - 1.0, abs=1e-12)


def test_monthly_returns_chain_over_missing_months_and_start_from_the_initial_equity() -> None:
    times = np.array([ns("2021-01-05"), ns("2021-01-29"), ns("2021-02-26"), ns("2021-04-01"), ns("2021-04-30")])
    equity = np.array([101.0, 110.0, 99.0, 120.0, 118.8])
    got = rp.monthly_returns(times, equity, 100.0).rows()
    assert got == [(2021, 1, pytest.approx(0.10)), (2021, 2, pytest.approx(-0.10)), (2021, 4, pytest.approx(0.20))]
    # Without an initial equity the first point is the base; the data need not be sorted.
    got = rp.monthly_returns(times[::-1], equity[::-1]).rows()
    assert got[0] == (2021, 1, pytest.approx(110.0 / 101.0 - 1.0))
    assert rp.monthly_returns(np.array([], np.int64), np.array([])).is_empty()


def test_rolling_sharpe_is_the_summary_sharpe_over_each_window(backtest: api.BacktestResult) -> None:
    _, equity = rp.equity_curve(backtest)
    window = 63
    rolling = rp.rolling_sharpe(equity, window, 252.0)
    assert rolling.shape == equity.shape and np.isnan(rolling[:window]).all()
    returns = perf.simple_returns(equity)
    checked = 0
    for i in range(window, equity.size):
        chunk = returns[i - window : i]
        if np.ptp(chunk) == 0:
            assert np.isnan(rolling[i])  # flat: no position in the window
        else:
            assert rolling[i] == pytest.approx(perf.sharpe_ratio(chunk, 252.0), rel=1e-6, abs=1e-9)
            checked += 1
    assert checked > 50
    assert np.isnan(rp.rolling_sharpe(np.full(100, 1e5), window, 252.0)).all()  # flat curve
    assert np.isnan(rp.rolling_sharpe(equity[:window], window, 252.0)).all()  # shorter than the window


def test_drawdown_and_rebased_benchmark() -> None:
    assert np.allclose(rp.drawdown(np.array([100.0, 110.0, 99.0, 121.0, 110.0])), [0, 0, -0.1, 0, -1 / 11])
    times = np.array([ns("2021-01-04"), ns("2021-01-05"), ns("2021-01-06"), ns("2021-02-20")])
    bench = (np.array([ns("2021-01-01"), ns("2021-01-05")]), np.array([50.0, 55.0]))
    rebased = rp.rebased_benchmark(times, bench, 1_000.0)
    # Jan 4 carries Jan 1's close; Feb 20 is beyond the benchmark's data by more than its largest gap.
    assert rebased[:3].tolist() == [1_000.0, 1_100.0, 1_100.0] and np.isnan(rebased[3])
    assert np.isnan(rp.rebased_benchmark(times, (np.array([ns("2022-01-01")]), np.array([1.0])), 1.0)).all()


def test_format_metric_by_field_name() -> None:
    assert rp.format_metric("total_return", 0.01234) == "1.23%"
    assert rp.format_metric("sharpe", 1.23456) == "1.23"
    assert rp.format_metric("sharpe", float("nan")) == "—"
    assert rp.format_metric("profit_factor", float("inf")) == "∞"
    assert rp.format_metric("bars", 2148) == "2,148"
    assert rp.format_metric("start_time_ns", ns("2004-08-19")) == "2004-08-19"
    assert rp.format_metric("end_time_ns", ns("2018-02-07") + 15 * 3600 * 10**9) == "2018-02-07 15:00"
    assert rp.format_metric("periods_per_year", 252.0) == "252"
    assert rp.format_metric("final_equity", 1234567.891) == "1,234,567.89"
    assert rp.format_metric("some_future_ratio", 0.5) == "0.50"
    assert rp.metric_label("annual_return") == "Annual return"
    assert rp.metric_label("some_future_time_ns") == "Some future time"


# -- several runs and edge cases ---------------------------------------------------------------------
def test_two_runs_side_by_side(tmp_path: Path, backtest: api.BacktestResult, benchmark: TimeSeries,
                               goog_prices: dict[str, TimeSeries]) -> None:  # fmt: skip
    other = synthetic([100_000.0 * (1.0 + 0.0004 * i) for i in range(400)], start="2004-08-19",
                      sharpe=2.5, total_return=0.16)  # fmt: skip
    runs = [ReportRun("ema cross", backtest, benchmark, goog_prices), ReportRun("risk parity", other, benchmark)]
    index = write_report(tmp_path, runs, title="two methods")
    page = index.read_text(encoding="utf-8")
    assert '<th scope="col">ema cross</th><th scope="col">risk parity</th>' in page
    assert metric_row(page, "Sharpe ratio") == [f"{backtest.summary.sharpe:.2f}", "2.50"]
    assert metric_row(page, "Total return") == [f"{backtest.summary.total_return:.2%}", "16.00%"]
    for row in re.findall(r'<tr><th scope="row".*?</tr>', page):
        assert row.count("<td>") == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert list(metrics["runs"]) == ["ema cross", "risk parity"]
    assert metrics["runs"]["risk parity"]["sharpe"] == 2.5
    for name in ("monthly_returns_ema-cross.png", "monthly_returns_risk-parity.png", "trades_ema-cross_goog.png"):
        assert name in img_sources(page)
        assert_png(tmp_path / name)
    assert sorted(img_sources(page)) == sorted(p.name for p in tmp_path.glob("*.png"))


def test_no_trades_no_benchmark_flat_curve_shorter_than_the_window(tmp_path: Path) -> None:
    flat = synthetic([50_000.0] * 10, sharpe=float("nan"), win_rate=float("nan"))  # ten bars in one month
    index = write_report(tmp_path, [ReportRun("idle", flat)], title="nothing happens")
    page = index.read_text(encoding="utf-8")
    assert "No trades." in page
    assert metric_row(page, "Sharpe ratio") == ["—"] and metric_row(page, "Win rate") == ["—"]
    for name in img_sources(page):
        assert_png(tmp_path / name)
    assert not list(tmp_path.glob("trades_*.png"))
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["runs"]["idle"]["sharpe"] is None and metrics["runs"]["idle"]["bars"] == 10
    assert rp.monthly_returns(*rp.equity_curve(flat), 50_000.0).rows() == [(2020, 1, 0.0)]


def test_empty_result_still_writes_a_report(tmp_path: Path) -> None:
    index = write_report(tmp_path, [ReportRun("empty", api.BacktestResult())], title="empty")
    page = index.read_text(encoding="utf-8")
    assert "Period no data" in page
    for name in img_sources(page):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_trade_list_shows_the_first_and_last_trades(tmp_path: Path) -> None:
    start = ns("2021-01-04")
    trades = [
        api.Trade(symbol="KO" if i % 3 else "PEP", side=pb.ORDER_SIDE_SELL if i % 2 else pb.ORDER_SIDE_BUY,
                  quantity=10, entry_time_ns=start + i * DAY_NS, entry_price=50.0 + i,
                  exit_time_ns=start + (i + 1) * DAY_NS, exit_price=51.0 + i, pnl=1000.0 + i, return_pct=0.02)
        for i in range(30)
    ]  # fmt: skip
    closes = np.linspace(50.0, 80.0, 40)
    times = start + np.arange(40) * DAY_NS
    result = synthetic([1e5 + 100.0 * i for i in range(40)], start="2021-01-04", trades=trades)
    index = write_report(tmp_path, [ReportRun("many", result, prices={"KO": (times, closes), "PEP": (times, closes)})],
                         title="many trades", trades_shown=5, trade_chart_symbols=1)  # fmt: skip
    page = index.read_text(encoding="utf-8")
    assert "30 trades; showing the first 5 and the last 5 (20 omitted)." in page
    assert "1,000.00" in page and "1,029.00" in page and "1,010.00" not in page
    assert "short" in page and "long" in page
    # One chart: KO, the symbol with the most trades.
    assert [p.name for p in tmp_path.glob("trades_*.png")] == ["trades_many_ko.png"]
    assert_png(tmp_path / "trades_many_ko.png")


@pytest.mark.skipif("open" not in api.Trade.DESCRIPTOR.fields_by_name, reason="Trade has no open/strategy fields")
def test_an_open_trade_is_marked_and_strategies_get_a_column(tmp_path: Path) -> None:
    start = ns("2021-01-04")
    trades = [
        api.Trade(symbol="KO", side=pb.ORDER_SIDE_BUY, quantity=5, entry_time_ns=start, entry_price=50.0,
                  exit_time_ns=start + DAY_NS, exit_price=51.0, pnl=5.0, return_pct=0.02, strategy="rsi"),
        api.Trade(symbol="KO", side=pb.ORDER_SIDE_BUY, quantity=5, entry_time_ns=start + 2 * DAY_NS,
                  entry_price=52.0, exit_time_ns=start + 4 * DAY_NS, exit_price=53.0, pnl=5.0, return_pct=0.02,
                  strategy="ema_cross", open=True),
    ]  # fmt: skip
    times = start + np.arange(5) * DAY_NS
    result = synthetic([1e5, 1e5, 1e5 + 5, 1e5 + 5, 1e5 + 10], start="2021-01-04", trades=trades)
    index = write_report(tmp_path, [ReportRun("one open", result, prices={"KO": (times, np.linspace(50, 53, 5))})],
                         title="open")  # fmt: skip
    page = index.read_text(encoding="utf-8")
    assert "2021-01-08 (open)" in page and page.count("(open)") == 1
    assert "<th>Strategy</th>" in page and "<td class=text>ema_cross</td>" in page
    assert_png(tmp_path / "trades_one-open_ko.png")


def test_run_names_must_be_unique(tmp_path: Path) -> None:
    run = ReportRun("a", synthetic([1.0, 2.0]))
    with pytest.raises(ValueError, match="unique"):
        write_report(tmp_path, [run, run], title="twice")
    with pytest.raises(ValueError, match="no runs"):
        write_report(tmp_path, [], title="none")
