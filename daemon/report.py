"""The backtest report: a static HTML page with charts, metrics and trades, for one run or several side by side.

`write_report(directory, runs, title=...)` writes into `directory` (created if missing):

* `index.html`: one self-contained page (inline CSS, no scripts, the PNGs referenced relatively): the
  title, the period, a metric table with one column per run, the charts and each run's trade list.
* `equity.png`, `drawdown.png`, `rolling_sharpe.png`: every run overlaid; the equity chart adds each
  run's benchmark rebased to the run's initial equity.
* `monthly_returns_<run>.png`: one per run, years x months heat map of the equity curve's monthly
  returns in %, with each year's compounded return beside it.
* `trades_<run>_<symbol>.png`: entries (▲) and exits (▼) on the closes, for the symbols with the most
  trades of each run (only symbols whose closes the run carries).
* `metrics.json`: ``{"title": str, "runs": {run name: {summary field: number or null}}, "attribution":
  {run name: {"by_symbol": [row, ...], "by_strategy": [row, ...]}}}``; the runs appear in the order of
  the table's columns, and every field of BacktestSummary is there, undefined values (NaN, inf) as null.
  An attribution row is ``{"key", "pnl", "trades", "win_rate", "share"}``, in the result's order (largest
  P&L first), with the same null rule.

The page's attribution section shows the same rows as tables, by symbol and by strategy, for each run: the
P&L of the run's trades net of commissions (open trades valued at the last close), their count, the win
rate of the closed ones and the share of the run's total P&L.

The summary is rendered from its descriptor, so a field added to BacktestSummary shows up without a change
here; its name decides its label and format (see `metric_label` and `format_metric`).

Charts are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: writing a report
opens no window and leaves the caller's pyplot backend and state alone. Existing files in `directory` are
overwritten, never deleted.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib import dates as mdates
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb

TimeSeries = tuple[np.ndarray, np.ndarray]  # (times_ns, values)

DAY_NS = 86_400 * 10**9
DEFAULT_PERIODS_PER_YEAR = 252.0
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DPI = 110


@dataclass(frozen=True)
class ReportRun:
    """One backtest in a report: a column of the metric table and a line on the overlaid charts."""

    name: str
    result: api.BacktestResult
    # e.g. the S&P 500 index closes: (times_ns, closes)
    benchmark: TimeSeries | None = None
    # symbol -> (times_ns, closes) to mark the run's trades on
    prices: Mapping[str, TimeSeries] = field(default_factory=dict)


# -- metrics -----------------------------------------------------------------------------------------
# A float field whose name contains one of these is a fraction and is shown in %.
_PERCENT_WORDS = ("return", "drawdown", "volatility", "rate", "exposure", "alpha", "pct", "fraction")
# Floats that are really counts or factors; two decimals would only add noise.
_PLAIN_FLOATS = frozenset({"periods_per_year"})
_LABELS = {
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "calmar": "Calmar ratio",
    "max_drawdown_bars": "Longest drawdown (bars)",
    "alpha": "Alpha (annual)",
    "turnover": "Turnover (per year)",
    "exposure_time": "Exposure (share of bars)",
    "start_time_ns": "Start",
    "end_time_ns": "End",
}


def metric_label(name: str) -> str:
    """A summary field's row label: `total_return` -> "Total return"."""
    if name in _LABELS:
        return _LABELS[name]
    words = name.removesuffix("_ns").replace("_", " ")
    return words[:1].upper() + words[1:]


def format_metric(name: str, value: object) -> str:
    """A summary value as the table shows it: integers with thousands separators, `*_time_ns` as UTC
    dates, fractions (see _PERCENT_WORDS) in %, other floats (ratios, money) with 2 decimals, and "—"
    for an undefined (NaN) value."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        if name.endswith("_time_ns"):
            return format_time(value) if value else "—"
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if name in _PLAIN_FLOATS:
            return f"{value:,g}"
        if any(word in name for word in _PERCENT_WORDS):
            return f"{value:.2%}"
        return f"{value:,.2f}"
    return str(value)


def summary_values(summary: api.BacktestSummary) -> dict[str, object]:
    """Every field of the summary as plain JSON values, in declaration order; NaN and inf become None
    (strict JSON has neither)."""
    values: dict[str, object] = {}
    for f in summary.DESCRIPTOR.fields:
        value = getattr(summary, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        values[f.name] = value
    return values


def attribution_values(rows: Sequence[api.Attribution]) -> list[dict[str, object]]:
    """Attribution rows (`BacktestResult.by_symbol` / `by_strategy`) as plain JSON values, in their order;
    NaN and inf become None, as in `summary_values`."""
    return [
        {
            "key": row.key,
            "pnl": _finite_or_none(row.pnl),
            "trades": int(row.trades),
            "win_rate": _finite_or_none(row.win_rate),
            "share": _finite_or_none(row.share),
        }
        for row in rows
    ]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def format_time(ns: int, *, with_time: bool | None = None) -> str:
    """A UTC timestamp as a date, with the time of day when it is not midnight (or when asked)."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    if with_time is None:
        with_time = ns % DAY_NS != 0
    return moment.strftime("%Y-%m-%d %H:%M" if with_time else "%Y-%m-%d")


# -- computations ------------------------------------------------------------------------------------
def equity_curve(result: api.BacktestResult) -> TimeSeries:
    """The result's equity curve as (times_ns int64, equity float64) arrays."""
    times = np.asarray(result.equity_curve.time_ns, np.int64)
    equity = np.asarray(result.equity_curve.equity, np.float64)
    return times, equity


def monthly_returns(times_ns: np.ndarray, equity: np.ndarray, initial_equity: float | None = None) -> pl.DataFrame:
    """The return of each calendar month (UTC) of an equity curve, as columns year, month (1-12), return.

    A month's return is its last equity over the last equity of the month before it (the previous month
    that has data, when months are missing); the first month's is over `initial_equity`, or over the first
    equity when that is not given or not positive. Months without data have no row.
    """
    frame = pl.DataFrame(
        {"time": np.asarray(times_ns, np.int64), "equity": np.asarray(equity, np.float64)},
        schema={"time": pl.Int64, "equity": pl.Float64},
    )
    schema = {"year": pl.Int32, "month": pl.Int32, "return": pl.Float64}
    if frame.is_empty():
        return pl.DataFrame(schema=schema)
    frame = frame.sort("time", maintain_order=True)
    base = initial_equity if initial_equity is not None and initial_equity > 0 else float(frame["equity"][0])
    moment = pl.from_epoch("time", time_unit="ns")
    return (
        frame.group_by(
            moment.dt.year().cast(pl.Int32).alias("year"),
            moment.dt.month().cast(pl.Int32).alias("month"),
            maintain_order=True,
        )
        .agg(pl.col("equity").last())
        .sort("year", "month")
        .select(
            "year",
            "month",
            (pl.col("equity") / pl.col("equity").shift(1, fill_value=base) - 1.0).alias("return"),
        )
    )


def yearly_returns(monthly: pl.DataFrame) -> pl.DataFrame:
    """Each year's compounded return from `monthly_returns` (equal to its last equity over the year before's)."""
    return monthly.group_by("year").agg(((pl.col("return") + 1.0).product() - 1.0).alias("return")).sort("year")


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Equity below its running peak at each bar, as a fraction <= 0."""
    equity = np.asarray(equity, np.float64)
    if equity.size == 0:
        return equity
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, equity / peak - 1.0, 0.0)


def rolling_sharpe(equity: np.ndarray, window: int, periods_per_year: float) -> np.ndarray:
    """At each bar, the Sharpe ratio of the last `window` bar-to-bar returns (mean / std with ddof 1,
    annualised by sqrt(periods_per_year), zero risk-free rate, as the summary's sharpe). Aligned with
    `equity`: NaN before a full window and where the returns in the window do not vary."""
    equity = np.asarray(equity, np.float64)
    out = np.full(equity.size, np.nan)
    if window < 2 or equity.size < window + 1:
        return out
    returns = pl.Series(equity[1:] / equity[:-1] - 1.0)
    mean = returns.rolling_mean(window).to_numpy()
    std = returns.rolling_std(window, ddof=1).to_numpy()
    # A running std of constant returns comes out as rounding noise rather than 0, which would turn a flat
    # stretch into a huge ratio; min == max says exactly where the window is constant.
    flat = (returns.rolling_max(window) == returns.rolling_min(window)).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(flat, np.nan, mean / std * math.sqrt(periods_per_year))
    out[1:] = sharpe
    return out


def rebased_benchmark(times_ns: np.ndarray, benchmark: TimeSeries, initial_equity: float) -> np.ndarray:
    """The benchmark on the run's bars (its last close at or before each bar), scaled so that its first
    value equals `initial_equity`. NaN before the benchmark starts and after it ends (once the run is
    further past its last close than the benchmark's longest gap between two closes)."""
    times_ns = np.asarray(times_ns, np.int64)
    out = np.full(times_ns.size, np.nan)
    bench_times = np.asarray(benchmark[0], np.int64)
    closes = np.asarray(benchmark[1], np.float64)
    keep = np.isfinite(closes) & (closes > 0)
    bench_times, closes = bench_times[keep], closes[keep]
    if times_ns.size == 0 or bench_times.size == 0:
        return out
    order = np.argsort(bench_times, kind="stable")
    bench_times, closes = bench_times[order], closes[order]
    idx = np.searchsorted(bench_times, times_ns, side="right") - 1
    longest_gap = int(np.diff(bench_times).max()) if bench_times.size > 1 else DAY_NS
    valid = (idx >= 0) & (times_ns <= bench_times[-1] + longest_gap)
    out[valid] = closes[idx[valid]]
    first = np.flatnonzero(valid)
    if first.size:
        out *= initial_equity / out[first[0]]
    return out


def _initial_equity(result: api.BacktestResult, equity: np.ndarray) -> float:
    initial = result.summary.initial_equity
    if initial > 0:
        return float(initial)
    return float(equity[0]) if equity.size else float("nan")


def _span(result: api.BacktestResult, times: np.ndarray) -> tuple[int, int] | None:
    s = result.summary
    if s.start_time_ns and s.end_time_ns:
        return s.start_time_ns, s.end_time_ns
    if times.size:
        return int(times[0]), int(times[-1])
    return None


# -- charts ------------------------------------------------------------------------------------------
def _figure(width: float = 10.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    # No "Software" entry: the same report renders to the same bytes whatever matplotlib wrote it.
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def _dates(times_ns: np.ndarray) -> np.ndarray:
    return np.asarray(times_ns, np.int64).astype("datetime64[ns]")


def _time_axis(ax: Axes) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _color(i: int) -> str:
    return f"C{i % 10}"


def _equity_chart(path: Path, runs: Sequence[ReportRun], curves: Sequence[TimeSeries]) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    benchmarks: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i, (run, (times, equity)) in enumerate(zip(runs, curves, strict=True)):
        if not times.size:
            continue
        ax.plot(_dates(times), equity, color=_color(i), lw=1.2, label=run.name)
        drawn = True
        if run.benchmark is not None:
            rebased = rebased_benchmark(times, run.benchmark, _initial_equity(run.result, equity))
            # Runs compared side by side usually share one benchmark and period: draw it once.
            if np.isfinite(rebased).any() and not any(
                np.array_equal(t, times) and np.array_equal(b, rebased, equal_nan=True) for _, t, b in benchmarks
            ):
                benchmarks.append((i, times, rebased))
    for i, times, rebased in benchmarks:
        label = "benchmark" if len(benchmarks) == 1 else f"benchmark ({runs[i].name})"
        color = "0.45" if len(benchmarks) == 1 else _color(i)
        ax.plot(_dates(times), rebased, color=color, lw=1.0, ls="--", label=label)
    ax.set_title("Equity" + (" vs benchmark (rebased to the initial equity)" if benchmarks else ""))
    if drawn:
        _time_axis(ax)
        ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    else:
        _note(ax, "no equity curve")
    _save(fig, path)


def _drawdown_chart(path: Path, runs: Sequence[ReportRun], curves: Sequence[TimeSeries]) -> None:
    fig = _figure(height=3.2)
    ax = fig.add_subplot()
    drawn = [i for i, (times, _) in enumerate(curves) if times.size]
    for i in drawn:
        times, equity = curves[i]
        dd = drawdown(equity) * 100.0
        ax.plot(_dates(times), dd, color=_color(i), lw=1.0, label=runs[i].name)
        if len(drawn) == 1:
            ax.fill_between(_dates(times), dd, 0.0, color=_color(i), alpha=0.3)
    ax.set_title("Drawdown (below the running peak of equity)")
    if drawn:
        _time_axis(ax)
        ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:.1f}%"))
        ax.set_ylim(top=0.0)
        ax.grid(alpha=0.3)
        if len(drawn) > 1:
            ax.legend(loc="lower left", fontsize="small")
    else:
        _note(ax, "no equity curve")
    _save(fig, path)


def _rolling_sharpe_chart(
    path: Path, runs: Sequence[ReportRun], curves: Sequence[TimeSeries], window: int, periods: Sequence[float]
) -> None:
    fig = _figure(height=3.2)
    ax = fig.add_subplot()
    drawn = 0
    for i, (run, (times, equity)) in enumerate(zip(runs, curves, strict=True)):
        sharpe = rolling_sharpe(equity, window, periods[i])
        if np.isfinite(sharpe).any():
            ax.plot(_dates(times), sharpe, color=_color(i), lw=1.0, label=run.name)
            drawn += 1
    per_year = ", ".join(sorted({f"{p:,g}" for p in periods}))
    ax.set_title(f"Rolling Sharpe ratio ({window} bars, annualised with {per_year} periods a year)")
    if drawn:
        ax.axhline(0.0, color="0.3", lw=0.8)
        _time_axis(ax)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(loc="best", fontsize="small")
    elif all(times.size < window + 1 for times, _ in curves):
        _note(ax, f"the run is shorter than the {window}-bar window")
    else:
        _note(ax, "undefined: the returns do not vary within any window")
    _save(fig, path)


def _annotate_cells(ax: Axes, values: np.ndarray, limit: float) -> None:
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            # White text where the colour map is dark (its ends).
            color = "white" if abs(value) > 0.65 * limit else "black"
            text = f"{value * 100:.1f}"
            # A tiny loss rounds to "-0.0", which reads as a sign where there is no number.
            text = "0.0" if text == "-0.0" else text
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color=color)


def _monthly_chart(path: Path, name: str, monthly: pl.DataFrame) -> None:
    years = sorted(set(monthly["year"].to_list()))
    fig = _figure(width=10.0, height=max(2.2, 1.2 + 0.32 * len(years)))
    if not years:
        _note(fig.add_subplot(), "no equity curve")
        _save(fig, path)
        return
    grid = np.full((len(years), 12), np.nan)
    row_of = {year: row for row, year in enumerate(years)}
    for year, month, value in monthly.iter_rows():
        grid[row_of[year], month - 1] = value
    yearly = dict(yearly_returns(monthly).iter_rows())
    by_year = np.array([[yearly[year]] for year in years])
    gs = fig.add_gridspec(1, 2, width_ratios=(12, 1.4))
    ax = fig.add_subplot(gs[0])
    ay = fig.add_subplot(gs[1], sharey=ax)
    # Each panel gets its own symmetric scale, so a year's total does not wash out the months' colours.
    for axis, values in ((ax, grid), (ay, by_year)):
        limit = float(np.nanmax(np.abs(values))) or 1e-12
        axis.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
        _annotate_cells(axis, values, limit)
    ax.set_xticks(range(12), MONTHS)
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    ay.set_xticks([0], ["Year"])
    ay.tick_params(axis="y", left=False, labelleft=False)
    for axis in (ax, ay):
        axis.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_title(f"Monthly returns (%): {name}")
    _save(fig, path)


def _trade_chart(
    path: Path, run: ReportRun, symbol: str, prices: TimeSeries, span: tuple[int, int] | None
) -> None:
    times = np.asarray(prices[0], np.int64)
    closes = np.asarray(prices[1], np.float64)
    order = np.argsort(times, kind="stable")
    times, closes = times[order], closes[order]
    if span is not None:
        inside = (times >= span[0]) & (times <= span[1])
        times, closes = times[inside], closes[inside]
    trades = [t for t in run.result.trades if t.symbol == symbol]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(_dates(times), closes, color="0.35", lw=0.9, label=f"{symbol} close")

    def on_close(at: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        # The marker sits on the close series (the last close at or before the fill), not at the fill price.
        idx = np.searchsorted(times, at, side="right") - 1
        return np.where(idx >= 0, closes[np.clip(idx, 0, None)], fallback) if times.size else fallback

    entry_t = np.array([t.entry_time_ns for t in trades], np.int64)
    entry_y = on_close(entry_t, np.array([t.entry_price for t in trades], np.float64))
    # A trade still open at the end has no exit to mark.
    closed = [t for t in trades if not _is_open(t)]
    exit_t = np.array([t.exit_time_ns for t in closed], np.int64)
    exit_y = on_close(exit_t, np.array([t.exit_price for t in closed], np.float64))
    short = np.array([t.side == pb.ORDER_SIDE_SELL for t in trades], bool)
    if (~short).any():
        ax.scatter(_dates(entry_t[~short]), entry_y[~short], marker="^", s=45, color="tab:green", zorder=3,
                   label="entry (long)")  # fmt: skip
    if short.any():
        ax.scatter(_dates(entry_t[short]), entry_y[short], marker="^", s=45, color="tab:orange", zorder=3,
                   label="entry (short)")  # fmt: skip
    if closed:
        ax.scatter(_dates(exit_t), exit_y, marker="v", s=45, color="tab:red", zorder=3, label="exit")
    ax.set_title(f"{symbol}: {len(trades):,} trades of {run.name}")
    _time_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    _save(fig, path)


# -- the page ----------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; }
.period { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td.text { text-align: left; }
.metrics th[scope=row] { background: none; font-weight: normal; }
.pos { color: #1a7f37; }
.neg { color: #c62828; }
.note { color: #666; font-size: 0.85rem; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0 1.5rem; }
footer { color: #888; font-size: 0.8rem; margin-top: 2rem; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _img(src: str, alt: str) -> str:
    return f'<img src="{_e(src)}" alt="{_e(alt)}">'


def _metric_table(runs: Sequence[ReportRun]) -> str:
    head = "".join(f'<th scope="col">{_e(run.name)}</th>' for run in runs)
    rows = []
    for f in api.BacktestSummary.DESCRIPTOR.fields:
        cells = "".join(f"<td>{_e(format_metric(f.name, getattr(run.result.summary, f.name)))}</td>" for run in runs)
        rows.append(f'<tr><th scope="row" title="{_e(f.name)}">{_e(metric_label(f.name))}</th>{cells}</tr>')
    return f'<table class="metrics"><thead><tr><th>Metric</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _is_open(trade: api.Trade) -> bool:
    # `open` and `strategy` are newer Trade fields; getattr keeps results written without them readable.
    return bool(getattr(trade, "open", False))


def _strategy(trade: api.Trade) -> str:
    return str(getattr(trade, "strategy", ""))


def _price(value: float) -> str:
    # FX quotes need more than the 2 decimals that suit stock prices.
    return f"{value:,.2f}" if abs(value) >= 10 else f"{value:,.4f}"


def _trade_table(result: api.BacktestResult, shown: int) -> str:
    trades = result.trades
    total = len(trades)
    if total == 0:
        return '<p class="note">No trades.</p>'
    numbered = list(enumerate(trades, 1))
    omitted = 0
    if total > 2 * shown:
        omitted = total - 2 * shown
        numbered = numbered[:shown] + numbered[-shown:] if shown else []
    with_time = any(t.entry_time_ns % DAY_NS or t.exit_time_ns % DAY_NS for t in trades)
    with_strategy = any(_strategy(t) for t in trades)
    header = ("#", "Symbol", "Side", "Quantity", "Entry", "Entry price", "Exit", "Exit price", "P&L", "Return",
              *(("Strategy",) if with_strategy else ()))  # fmt: skip
    rows = []
    for k, (n, t) in enumerate(numbered):
        if omitted and k == shown:
            rows.append(f'<tr><td class="text note" colspan="{len(header)}">… {omitted:,} trades omitted …</td></tr>')
        tone = "pos" if t.pnl > 0 else "neg" if t.pnl < 0 else ""
        # An open trade's exit is the last bar's close, its P&L unrealized.
        exit_time = format_time(t.exit_time_ns, with_time=with_time) + (" (open)" if _is_open(t) else "")
        cells = (
            f"<td>{n:,}</td><td class=text>{_e(t.symbol)}</td>"
            f"<td class=text>{'short' if t.side == pb.ORDER_SIDE_SELL else 'long'}</td><td>{t.quantity:,g}</td>"
            f"<td class=text>{format_time(t.entry_time_ns, with_time=with_time)}</td><td>{_price(t.entry_price)}</td>"
            f"<td class=text>{exit_time}</td><td>{_price(t.exit_price)}</td>"
            f'<td class="{tone}">{t.pnl:,.2f}</td><td class="{tone}">{t.return_pct:.2%}</td>'
            + (f"<td class=text>{_e(_strategy(t))}</td>" if with_strategy else "")
        )
        rows.append(f"<tr>{cells}</tr>")
    note = (
        f"{total:,} trades; showing the first {shown:,} and the last {shown:,} ({omitted:,} omitted)."
        if omitted
        else f"{total:,} trade{'s' if total != 1 else ''}."
    )
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f'<p class="note">{note}</p><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


_ATTRIBUTION_HEADER = ("P&L", "Trades", "Win rate", "Share")


def _number(value: float, spec: str) -> str:
    # A win rate is undefined (NaN) for a key whose trades are all still open.
    return "—" if math.isnan(value) else format(value, spec)


def _attribution_table(rows: Sequence[api.Attribution], by: str) -> str:
    """One attribution table (`by`: "symbol" or "strategy"): money with 2 decimals, win rate and share in %,
    "—" where undefined, like the metric table."""
    head = f"<th>{_e(by.capitalize())}</th>" + "".join(f"<th>{_e(h)}</th>" for h in _ATTRIBUTION_HEADER)
    body = []
    for row in rows:
        tone = "pos" if row.pnl > 0 else "neg" if row.pnl < 0 else ""
        body.append(
            f"<tr><td class=text>{_e(row.key)}</td><td class=\"{tone}\">{_number(row.pnl, ',.2f')}</td>"
            f"<td>{row.trades:,}</td><td>{_number(row.win_rate, '.2%')}</td><td>{_number(row.share, '.2%')}</td></tr>"
        )
    return (f'<table class="attribution" data-by="{_e(by)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')  # fmt: skip


def _attribution_section(run: ReportRun) -> str:
    result = run.result
    if not result.by_symbol and not result.by_strategy:
        return f'<h3>{_e(run.name)}</h3><p class="note">No trades.</p>'
    return (
        f"<h3>{_e(run.name)}</h3>"
        f"<h4>By symbol</h4>{_attribution_table(result.by_symbol, 'symbol')}"
        f"<h4>By strategy</h4>{_attribution_table(result.by_strategy, 'strategy')}"
    )


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def write_report(
    directory: Path,
    runs: Sequence[ReportRun],
    *,
    title: str,
    rolling_window: int = 63,
    periods_per_year: float | None = None,
    trades_shown: int = 10,
    trade_chart_symbols: int = 4,
) -> Path:
    """Write the report of `runs` (one column each, in this order) into `directory`; return index.html's path.

    `periods_per_year` annualises the rolling Sharpe ratio; None takes each run's summary.periods_per_year
    (252 where that is 0). The trade list shows the first and the last `trades_shown` trades of each run;
    trades are charted on the prices of at most `trade_chart_symbols` symbols per run, those with the
    most trades. Run names must be unique and not empty.
    """
    if not runs:
        raise ValueError("write_report: no runs")
    names = [run.name for run in runs]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"write_report: run names must be unique and not empty, got {names}")
    if rolling_window < 2:
        raise ValueError(f"write_report: rolling_window must be at least 2, got {rolling_window}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    curves = [equity_curve(run.result) for run in runs]
    periods = [
        float(periods_per_year or run.result.summary.periods_per_year or DEFAULT_PERIODS_PER_YEAR) for run in runs
    ]
    _equity_chart(directory / "equity.png", runs, curves)
    _drawdown_chart(directory / "drawdown.png", runs, curves)
    _rolling_sharpe_chart(directory / "rolling_sharpe.png", runs, curves, rolling_window, periods)

    taken: set[str] = set()
    monthly_imgs: list[str] = []
    trade_sections: list[str] = []
    for run, (times, equity) in zip(runs, curves, strict=True):
        slug = _slug(run.name, taken)
        monthly_name = f"monthly_returns_{slug}.png"
        monthly = monthly_returns(times, equity, _initial_equity(run.result, equity))
        _monthly_chart(directory / monthly_name, run.name, monthly)
        monthly_imgs.append(_img(monthly_name, f"monthly returns of {run.name}"))

        counts = Counter(t.symbol for t in run.result.trades if t.symbol in run.prices)
        # Most trades first; ties in symbol order, so the same run always charts the same symbols.
        symbols = sorted(counts, key=lambda s: (-counts[s], s))[: max(trade_chart_symbols, 0)]
        symbol_slugs: set[str] = set()
        imgs = []
        for symbol in symbols:
            name = f"trades_{slug}_{_slug(symbol, symbol_slugs)}.png"
            _trade_chart(directory / name, run, symbol, run.prices[symbol], _span(run.result, times))
            imgs.append(_img(name, f"{run.name}: trades on {symbol}"))
        traded = len({t.symbol for t in run.result.trades})
        if not run.result.trades:
            note = "No trades."
        elif not imgs:
            note = "No prices were given for the traded symbols."
        else:
            note = f"Entries ▲ and exits ▼ on the closes: {len(imgs)} of {traded} traded symbols, most trades first."
        trade_sections.append(
            f'<h3>{_e(run.name)}</h3><p class="note">{_e(note)}</p>{"".join(imgs)}'
            f"{_trade_table(run.result, max(trades_shown, 0))}"
        )

    spans = [s for s in (_span(run.result, times) for run, (times, _) in zip(runs, curves, strict=True)) if s]
    if spans:
        start, end = min(s[0] for s in spans), max(s[1] for s in spans)
        period = f"{format_time(start)} – {format_time(end)}"
    else:
        period = "no data"
    multiple = len(runs) > 1
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="period">Period {_e(period)} · {len(runs)} run{"s" if multiple else ""}: {_e(", ".join(names))}</p>',
        "<h2>Metrics</h2>",
        _metric_table(runs),
        "<h2>Equity</h2>",
        _img("equity.png", "equity vs benchmark"),
        "<h2>Drawdown</h2>",
        _img("drawdown.png", "drawdown"),
        "<h2>Rolling Sharpe ratio</h2>",
        _img("rolling_sharpe.png", "rolling Sharpe ratio"),
        "<h2>Monthly returns</h2>",
        *monthly_imgs,
        "<h2>Attribution</h2>",
        '<p class="note">P&amp;L of the trades net of commissions (open trades at the last close), trades, '
        "win rate of the closed trades and share of the run's total P&amp;L.</p>",
        *(_attribution_section(run) for run in runs),
        "<h2>Trades</h2>",
        *trade_sections,
        '<footer>Metrics as JSON: <a href="metrics.json">metrics.json</a>. Times are UTC.</footer>',
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    metrics = {
        "title": title,
        "runs": {run.name: summary_values(run.result.summary) for run in runs},
        "attribution": {
            run.name: {"by_symbol": attribution_values(run.result.by_symbol),
                       "by_strategy": attribution_values(run.result.by_strategy)}  # fmt: skip
            for run in runs
        },
    }
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
