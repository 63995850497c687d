"""Real market data that ships inside packages, so the demo, the tests and the benchmarks need no network.

* `goog`: GOOG daily OHLCV, 2004-08-19 .. 2013-03-01 (the `backtesting` package).
* `eurusd`: EURUSD hourly OHLCV, 2017-04-19 .. 2018-02-07 (the `backtesting` package).
* `sp500`: 20 S&P 500 stocks, daily adjusted closes, 1990-01-02 .. 2022-12-28 (the `skfolio` package).
  Only closes exist, so open = high = low = close and the volume is 0 (unknown).

Timestamps are the sources' own (dates at 00:00, hours), read as UTC.

`synthetic_bars(n)` makes any number of deterministic, realistic minute bars (a geometric random walk in
390-bar sessions on weekdays) for tests and benchmarks that need more bars than the real sets have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

import polars as pl

DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
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


def _load_goog() -> pl.DataFrame:
    from backtesting.test import GOOG

    return _from_ohlcv_pandas(GOOG, "GOOG")


def _load_eurusd() -> pl.DataFrame:
    from backtesting.test import EURUSD

    return _from_ohlcv_pandas(EURUSD, "EURUSD")


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
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}") from None
