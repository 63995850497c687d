"""Real market data that ships inside packages, so the demo, the tests and the benchmarks need no network.

* `goog`: GOOG daily OHLCV, 2004-08-19 .. 2013-03-01 (the `backtesting` package).
* `eurusd`: EURUSD hourly OHLCV, 2017-04-19 .. 2018-02-07 (the `backtesting` package).
* `sp500`: 20 S&P 500 stocks, daily adjusted closes, 1990-01-02 .. 2022-12-28 (the `skfolio` package).
  Only closes exist, so open = high = low = close and the volume is 0 (unknown).

Timestamps are the sources' own (dates at 00:00, hours), read as UTC.

`store` (`store_dataset`): the local bar store (`storage.bars.BarStore`, filled by `utp data backfill`) as a
data set, split- and dividend-adjusted with a corporate-actions table when one is given.

`synthetic_bars(n)` makes any number of deterministic, realistic minute bars (a geometric random walk in
390-bar sessions on weekdays) for tests and benchmarks that need more bars than the real sets have.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache, partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
#: Regular trading hours of a US equity session: intraday bars annualise as 252 such sessions.
SESSION_NS = 390 * 60 * 10**9
#: The name that selects the local bar store as market_data.dataset.
STORE_DATASET = "store"
BAR_COLUMNS = ("event_time_ns", "symbol", "open", "high", "low", "close", "volume")


def _from_ohlcv_pandas(df: object, symbol: str) -> pl.DataFrame:
    frame = pl.from_pandas(df.reset_index(names="time"))  # type: ignore[attr-defined]
    return frame.select(
        pl.col("time").cast(pl.Datetime("ns")).cast(pl.Int64).alias("event_time_ns"),
        pl.lit(symbol).alias("symbol"),
        pl.col("Open").cast(pl.Float64).alias("open"),
        pl.col("High").cast(pl.Float64).alias("high"),
        pl.col("Low").cast(pl.Float64).alias("low"),
        pl.col("Close").cast(pl.Float64).alias("close"),
        pl.col("Volume").cast(pl.Float64).alias("volume"),
    )


def _cache_folder() -> Path:
    """Where the packaged data sets are kept as parquet once read: `UTP_CACHE_DIR`, else the user's cache folder."""
    if folder := os.environ.get("UTP_CACHE_DIR"):
        return Path(folder) / "datasets"
    import platformdirs

    return Path(platformdirs.user_cache_dir("utp")) / "datasets"


def _kept(package: str) -> Callable[[Callable[[], pl.DataFrame]], Callable[[], pl.DataFrame]]:
    """A loader of a data set shipped in `package`, read from the package once per package version and kept as
    parquet: importing `backtesting` (bokeh) or `skfolio` (scipy, sklearn) and parsing their files took 1-2 s of
    every process that starts a session (each daemon, each `utp engine`), the parquet copy milliseconds. The copy is
    the package's data unchanged (parquet keeps float64, int64 and strings exactly); one that cannot be read is
    read from the package again, and one that cannot be written is not kept."""

    def wrap(load: Callable[[], pl.DataFrame]) -> Callable[[], pl.DataFrame]:
        @cache
        def kept() -> pl.DataFrame:
            try:
                path = _cache_folder() / f"{load.__name__.removeprefix('_load_')}-{package}-{version(package)}.parquet"
            except PackageNotFoundError:
                return load()
            try:
                return pl.read_parquet(path)
            except (OSError, pl.exceptions.PolarsError):
                pass  # not kept yet, or unreadable: from the package
            frame = load()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                scratch = path.with_name(f".{path.name}.{os.getpid()}")
                frame.write_parquet(scratch)
                os.replace(scratch, path)  # whole or not at all, whoever else writes it at the same time
            except OSError as exc:
                log.debug("not keeping %s: %s", path, exc)
            return frame

        kept.__doc__ = load.__doc__
        return kept

    return wrap


@_kept("backtesting")
def _load_goog() -> pl.DataFrame:
    from backtesting.test import GOOG

    return _from_ohlcv_pandas(GOOG, "GOOG")


@_kept("backtesting")
def _load_eurusd() -> pl.DataFrame:
    from backtesting.test import EURUSD

    return _from_ohlcv_pandas(EURUSD, "EURUSD")


@_kept("skfolio")
def _load_sp500() -> pl.DataFrame:
    from skfolio.datasets import load_sp500_dataset

    wide = pl.from_pandas(load_sp500_dataset().reset_index(names="time"))
    long = wide.unpivot(index="time", variable_name="symbol", value_name="close")
    return long.select(
        pl.col("time").cast(pl.Datetime("ns")).cast(pl.Int64).alias("event_time_ns"),
        pl.col("symbol"),
        pl.col("close").alias("open"),
        pl.col("close").alias("high"),
        pl.col("close").alias("low"),
        pl.col("close"),
        pl.lit(0.0).alias("volume"),
    )


def load_sp500_index() -> pl.DataFrame:
    """The S&P 500 index closes (the benchmark), as (event_time_ns, close)."""
    return _load_sp500_index()


@_kept("skfolio")
def _load_sp500_index() -> pl.DataFrame:
    from skfolio.datasets import load_sp500_index as _load

    frame = pl.from_pandas(_load().reset_index(names="time"))
    return frame.select(
        pl.col("time").cast(pl.Datetime("ns")).cast(pl.Int64).alias("event_time_ns"),
        pl.col("SP500").alias("close"),
    )


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    description: str
    symbols: tuple[str, ...]
    interval_ns: int
    # For annualising: 252 trading days; FX trades about 24 hours x 5 days x 52 weeks.
    periods_per_year: float
    _load: Callable[[], pl.DataFrame]

    def bars(
        self, symbols: Sequence[str] = (), start: date | None = None, end: date | None = None
    ) -> pl.DataFrame:
        """Bars sorted by time, then by the order of `symbols`; columns BAR_COLUMNS.

        Raises ValueError for a symbol outside the data set or an empty selection.
        """
        chosen = tuple(symbols) or self.symbols
        unknown = [s for s in chosen if s not in self.symbols]
        if unknown:
            raise ValueError(f"{self.name} has no symbol {', '.join(unknown)}; it has {', '.join(self.symbols)}")
        frame = self._load().filter(pl.col("symbol").is_in(chosen))
        if start is not None:
            frame = frame.filter(pl.col("event_time_ns") >= _date_ns(start))
        if end is not None:
            frame = frame.filter(pl.col("event_time_ns") < _date_ns(end) + DAY_NS)
        if frame.is_empty():
            raise ValueError(f"{self.name} has no bars for {', '.join(chosen)} between {start} and {end}")
        order = {s: i for i, s in enumerate(chosen)}
        frame = frame.with_columns(pl.col("symbol").replace_strict(order, return_dtype=pl.Int32).alias("_order"))
        return frame.sort(["event_time_ns", "_order"]).drop("_order").select(BAR_COLUMNS)


def synthetic_bars(n: int, *, seed: int = 7, symbol: str = "SYN", start: date = date(2000, 1, 3)) -> pl.DataFrame:
    """`n` deterministic one-minute OHLCV bars with columns BAR_COLUMNS.

    Close follows a geometric random walk (0.1% per bar); each bar opens near the previous close, its
    high and low enclose open and close; volume is log-normal. Sessions are 390 bars from 14:30 UTC on
    weekdays, so session indicators (VWAP) see real session breaks.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0.0, 0.0002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.0005, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.0005, n)))
    volume = np.round(rng.lognormal(np.log(20_000.0), 0.8, n))
    sessions = np.arange(n) // 390
    days = np.busday_offset(np.datetime64(start, "D"), sessions, roll="forward").astype("datetime64[ns]")
    minutes = (np.arange(n) % 390 + 14 * 60 + 30).astype("timedelta64[m]")
    times = (days + minutes).astype(np.int64)
    return pl.DataFrame(
        {"event_time_ns": times, "symbol": [symbol] * n, "open": open_, "high": high, "low": low,
         "close": close, "volume": volume}  # fmt: skip
    ).select(BAR_COLUMNS)


def _date_ns(d: date) -> int:
    return (d - date(1970, 1, 1)).days * DAY_NS


SP500_SYMBOLS = (
    "AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO",
    "LLY", "MRK", "MSFT", "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM",
)  # fmt: skip

DATASETS: dict[str, Dataset] = {
    "goog": Dataset("goog", "GOOG daily OHLCV 2004-2013 (backtesting)", ("GOOG",), DAY_NS, 252.0, _load_goog),
    "eurusd": Dataset(
        "eurusd", "EURUSD hourly OHLCV 2017-2018 (backtesting)", ("EURUSD",), HOUR_NS, 24 * 5 * 52.0, _load_eurusd
    ),
    "sp500": Dataset(
        "sp500", "20 S&P 500 stocks, daily closes 1990-2022 (skfolio)", SP500_SYMBOLS, DAY_NS, 252.0, _load_sp500
    ),
}


def dataset(name: str) -> Dataset:
    """A packaged data set; the bar store (`store`) needs its folder: `store_dataset`."""
    if name == STORE_DATASET:
        raise ValueError("the 'store' data set is the local bar store: open it with store_dataset(folder)")
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; choose one of {', '.join(DATASETS)} or {STORE_DATASET} (the bar store)"
        ) from None


# --------------------------------------------------------------------------------------------------------------
# The local bar store as a data set
# --------------------------------------------------------------------------------------------------------------


def store_dataset(
    root: str | Path,
    symbols: Sequence[str] = (),
    start: date | None = None,
    end: date | None = None,
    *,
    corporate_actions: str | Path | None = None,
) -> Dataset:
    """The bars of `symbols` (all the store holds when empty) from `start` to `end` (inclusive, UTC days) in
    the bar store at `root`, as a data set.

    The bars are read once, here. With `corporate_actions` (CSV/Parquet: symbol, ex_date, split_ratio,
    cash_dividend) they are back-adjusted (`utp.core.quality.adjust_bars`) for the actions up to `end`, so a
    split or dividend inside the period leaves no jump and the last bars keep their traded prices. The
    interval is the most common gap between consecutive bars of a symbol; it sets `periods_per_year` (daily:
    252; intraday: 252 sessions of 6.5 hours). ValueError naming the store and what it holds when it has
    nothing for the request.
    """
    from utp.storage.bars import BarStore  # storage.bars imports this module

    root = Path(root)
    store = BarStore(root)
    held = store.symbols()
    if not held:
        raise ValueError(f"the bar store {root} holds no bars; fill it with `utp data backfill` "
                         "(or point data.store_dir / --data-dir at the folder that has them)")  # fmt: skip
    chosen = tuple(dict.fromkeys(symbols)) or tuple(held)
    unknown = [s for s in chosen if s not in held]
    if unknown:
        raise ValueError(f"the bar store {root} has no bars of {', '.join(unknown)}; it holds {_holdings(store)}")
    bars = store.read(chosen, _date_ns(start) if start else None, _date_ns(end) + DAY_NS if end else None)
    missing = [s for s in chosen if s not in set(bars["symbol"].unique().to_list())]
    if missing:
        raise ValueError(f"the bar store {root} has no bars of {', '.join(missing)} between {start or 'the start'} "
                         f"and {end or 'the end'}; it holds {_holdings(store, missing)}")  # fmt: skip
    adjusted = ""
    if corporate_actions:
        from utp.core.quality import CorporateActions, adjust_bars

        actions = CorporateActions.load(corporate_actions)
        bars = adjust_bars(bars, actions, as_of=end)
        adjusted = f", adjusted with {corporate_actions}"
    interval_ns = infer_interval_ns(bars)
    if interval_ns <= DAY_NS:  # 252 sessions, each as many bars as fit in 6.5 hours (at least one)
        periods = 252.0 * max(1.0, SESSION_NS / interval_ns)
    else:  # weekly or longer bars: calendar time, 365.25 days a year
        periods = 365.25 * DAY_NS / interval_ns
    description = f"bar store {root}: {len(chosen)} symbol(s), {_interval_text(interval_ns)} bars{adjusted}"
    # A partial, not a lambda: the data set pickles (with its bars) to a process pool's workers.
    return Dataset(STORE_DATASET, description, chosen, interval_ns, periods, partial(_given, bars.select(BAR_COLUMNS)))


def _given(frame: pl.DataFrame) -> pl.DataFrame:
    return frame


def infer_interval_ns(bars: pl.DataFrame) -> int:
    """The most common gap between consecutive bar times of a symbol (the smallest among equally common ones):
    weekends, holidays and missing bars are rarer than the interval itself. ValueError with fewer than two bars
    of any symbol."""
    gaps = (
        bars.select("symbol", "event_time_ns")
        .sort("symbol", "event_time_ns")
        .select(pl.col("event_time_ns").diff().over("symbol").alias("gap"))
        .filter(pl.col("gap") > 0)
    )
    if gaps.is_empty():
        raise ValueError("cannot tell the bar interval: no symbol has two bars at different times")
    counts = gaps.group_by("gap").len().sort(["len", "gap"], descending=[True, False])
    return int(counts["gap"][0])


def _interval_text(interval_ns: int) -> str:
    for unit, size in (("day", DAY_NS), ("hour", HOUR_NS), ("minute", 60 * 10**9), ("second", 10**9)):
        if interval_ns % size == 0:
            return f"{interval_ns // size}-{unit}"
    return f"{interval_ns} ns"


def _holdings(store: object, symbols: Sequence[str] | None = None) -> str:
    """What the store holds (of `symbols`, else all), for error messages: symbol first..last day, 20 at most."""
    coverage = store.coverage()  # type: ignore[attr-defined]
    if symbols is not None:
        coverage = coverage.filter(pl.col("symbol").is_in(list(symbols)))
    if coverage.is_empty():
        return "nothing of them"
    days = [
        f"{row['symbol']} {_ns_day(row['first_ns'])}..{_ns_day(row['last_ns'])}"
        for row in coverage.head(20).iter_rows(named=True)
    ]
    more = f" and {coverage.height - 20} more symbols" if coverage.height > 20 else ""
    return ", ".join(days) + more


def _ns_day(time_ns: int) -> str:
    return date.fromordinal(date(1970, 1, 1).toordinal() + time_ns // DAY_NS).isoformat()
