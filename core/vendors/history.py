"""Historical bars from Alpaca and Polygon through the vendors' own REST clients.

`fetch_bar_chunks` walks [start, end) symbol by symbol in chunks of whole days and yields one `BarChunk` per
(symbol, chunk), also when the chunk has no bars (a weekend), so that a backfill can checkpoint after every
chunk and resume exactly where it stopped. `fetch_bars` yields just the frames.

Retries are the clients' own: alpaca-py's `RESTClient` retries the status codes in its `_retry_codes` after a
fixed `_retry_wait`; polygon-api-client hands urllib3 a `Retry(total=retries, status_forcelist=[413, 429, 499,
500, 502, 503, 504], backoff_factor=0.1)`. Neither constructor exposes everything a backfill needs (alpaca-py's
data client takes no retry settings at all and waits 3 s; neither sets a request timeout, polygon builds a
`urllib3.Timeout` and never passes it on), so the few attributes involved are set after construction here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from utp.core.config import DataConfig
from utp.storage.bars import BAR_DTYPES
from utp.storage.datasets import BAR_COLUMNS

SOURCES = ("alpaca", "polygon")
_UNIT_NS = {"Min": 60 * 10**9, "Hour": 3600 * 10**9, "Day": 86_400 * 10**9}
# Statuses worth asking again: rate limits and server trouble. alpaca-py's default is only 429 and 504.
_ALPACA_RETRY_CODES = [429, 500, 502, 503, 504]
# A chunk holds at most about this many bars, counted over 16 hours a day (pre-market to after-hours), so one
# chunk is one page of either vendor at its default page size, and a resume refetches little.
_BARS_PER_CHUNK = 4_800


class VendorError(RuntimeError):
    """A vendor request failed for good (after the client's retries). `status` is the HTTP status when known."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A bar interval as the settings spell it (1Min, 5Min, 15Min, 1Hour, 1Day)."""

    amount: int
    unit: str  # Min, Hour or Day

    @classmethod
    def parse(cls, text: str) -> Timeframe:
        match = re.fullmatch(r"([1-9]\d*)(Min|Hour|Day)", text.strip())
        amount, unit = (int(match[1]), match[2]) if match else (0, "")
        limits = {"Min": 59, "Hour": 23, "Day": 1}
        if not match or amount > limits[unit]:
            raise ValueError(
                f"data.timeframe {text!r}: expected <N>Min (N <= 59), <N>Hour (N <= 23) or 1Day, e.g. 1Min, 5Min, 1Hour"
            )
        return cls(amount, unit)

    @property
    def nanos(self) -> int:
        return self.amount * _UNIT_NS[self.unit]

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"

    def default_chunk_days(self) -> int:
        bars_per_day = max(1, 16 * 3600 * 10**9 // self.nanos)
        return max(1, min(366, _BARS_PER_CHUNK // bars_per_day))

    def alpaca(self) -> Any:
        from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

        unit = {"Min": TimeFrameUnit.Minute, "Hour": TimeFrameUnit.Hour, "Day": TimeFrameUnit.Day}[self.unit]
        return TimeFrame(self.amount, unit)

    def polygon(self) -> tuple[int, str]:
        return self.amount, {"Min": "minute", "Hour": "hour", "Day": "day"}[self.unit]


@dataclass(frozen=True, slots=True)
class BarChunk:
    """The bars of `symbol` that start in [start, end): BAR_COLUMNS, sorted by time, maybe none."""

    symbol: str
    start: datetime
    end: datetime
    bars: pl.DataFrame

    @property
    def last_day(self) -> date:
        """The last (UTC) day the chunk covers: what a checkpoint records as done."""
        return (self.end - timedelta(microseconds=1)).date()


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How hard to try: `retries` more attempts of a rate-limited or failing request, `wait_s` apart (Alpaca;
    Polygon's client backs off 0, 0.2, 0.4 .. s by itself), and `timeout_s` for one request."""

    retries: int = 3
    wait_s: float = 1.0
    timeout_s: float = 30.0


def chunk_ranges(start: datetime, end: datetime, chunk_days: int) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive ranges of `chunk_days` days (the last one shorter)."""
    if chunk_days < 1:
        raise ValueError(f"chunk_days must be >= 1, not {chunk_days}")
    start, end = _utc(start), _utc(end)
    ranges, cursor = [], start
    while cursor < end:
        stop = min(cursor + timedelta(days=chunk_days), end)
        ranges.append((cursor, stop))
        cursor = stop
    return ranges


def credentials(
    source: str,
    config: DataConfig,
    *,
    environ: Mapping[str, str] | None = None,
    key: str | None = None,
    secret: str | None = None,
    key_env: str = "APCA_API_KEY_ID",
    secret_env: str = "APCA_API_SECRET_KEY",
) -> tuple[str, str]:
    """(key, secret) for `source` from the arguments or the environment; ValueError saying what to set.
    Polygon has no secret ("")."""
    env = os.environ if environ is None else environ
    if source == "alpaca":
        key, secret = key or env.get(key_env, ""), secret or env.get(secret_env, "")
        if not key or not secret:
            missing = " and ".join(name for name, value in ((key_env, key), (secret_env, secret)) if not value)
            raise ValueError(f"Alpaca market data needs credentials: set {missing} in the environment")
        return key, secret
    if source == "polygon":
        key = key or env.get(config.polygon_key_env, "")
        if not key:
            raise ValueError(
                f"Polygon market data needs an API key: set {config.polygon_key_env} in the environment "
                "(data.polygon_key_env names the variable)"
            )
        return key, ""
    raise ValueError(f"unknown market data source {source!r}; choose one of {', '.join(SOURCES)}")


def fetch_bar_chunks(
    source: str,
    config: DataConfig,
    symbols: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    environ: Mapping[str, str] | None = None,
    key: str | None = None,
    secret: str | None = None,
    key_env: str = "APCA_API_KEY_ID",
    secret_env: str = "APCA_API_SECRET_KEY",
    chunk_days: int | None = None,
    retry: RetrySettings = RetrySettings(),
) -> Iterator[BarChunk]:
    """One `BarChunk` per symbol and chunk of [start, end) at `config.timeframe`, symbol after symbol.

    Settings and credentials are checked here, before anything is fetched (ValueError naming the fix); a request
    that still fails after the client's retries raises `VendorError` when its chunk is reached. Naive datetimes
    are UTC.
    """
    timeframe = Timeframe.parse(config.timeframe)
    user, password = credentials(
        source, config, environ=environ, key=key, secret=secret, key_env=key_env, secret_env=secret_env
    )
    if not symbols:
        raise ValueError("no symbols to fetch")
    ranges = chunk_ranges(start, end, chunk_days or timeframe.default_chunk_days())
    if source == "alpaca":
        client = _alpaca_client(config, user, password, retry)
        fetch = lambda symbol, lo, hi: _alpaca_chunk(client, config, timeframe, symbol, lo, hi)  # noqa: E731
    else:
        client = _polygon_client(config, user, retry)
        fetch = lambda symbol, lo, hi: _polygon_chunk(client, timeframe, symbol, lo, hi)  # noqa: E731

    def chunks() -> Iterator[BarChunk]:
        for symbol in symbols:
            for lo, hi in ranges:
                bars = _in_range(fetch(symbol, lo, hi), lo, hi)
                yield BarChunk(symbol, lo, hi, bars)

    return chunks()


def fetch_bars(
    source: str,
    config: DataConfig,
    symbols: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    environ: Mapping[str, str] | None = None,
    key: str | None = None,
    secret: str | None = None,
    key_env: str = "APCA_API_KEY_ID",
    secret_env: str = "APCA_API_SECRET_KEY",
    chunk_days: int | None = None,
    retry: RetrySettings = RetrySettings(),
) -> Iterator[pl.DataFrame]:
    """The bar frames of `fetch_bar_chunks` (BAR_COLUMNS), one per symbol and chunk, empty ones included."""
    chunks = fetch_bar_chunks(
        source, config, symbols, start, end, environ=environ, key=key, secret=secret, key_env=key_env,
        secret_env=secret_env, chunk_days=chunk_days, retry=retry,
    )  # fmt: skip
    return (chunk.bars for chunk in chunks)


# -- Alpaca ----------------------------------------------------------------------------------------------
def _alpaca_client(config: DataConfig, key: str, secret: str, retry: RetrySettings) -> Any:
    import functools

    from alpaca.data.historical.stock import StockHistoricalDataClient
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    # raw_data: the bars' own JSON values, no pydantic models on the way (exact, and quicker for big pages).
    client = StockHistoricalDataClient(key, secret, raw_data=True, url_override=config.alpaca_data_url.rstrip("/"))
    # alpaca-py's retry loop (RESTClient._request) reads these; its data client has no arguments for them.
    # It retries `_retry` times, so a status in `_retry_codes` is asked `_retry + 1` times in all.
    client._retry = retry.retries
    client._retry_wait = retry.wait_s
    client._retry_codes = list(_ALPACA_RETRY_CODES)
    # Timeouts and dropped connections never reach that loop (requests raises them), so urllib3 retries those
    # under the session; statuses are left to alpaca-py (empty status_forcelist, raise_on_status off).
    session = client._session
    adapter = HTTPAdapter(max_retries=Retry(total=retry.retries, status_forcelist=(), raise_on_status=False,
                                            backoff_factor=retry.wait_s / 2))  # fmt: skip
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.request = functools.partial(session.request, timeout=retry.timeout_s)
    return client


def _alpaca_chunk(
    client: Any, config: DataConfig, timeframe: Timeframe, symbol: str, lo: datetime, hi: datetime
) -> pl.DataFrame:
    import requests
    from alpaca.common.exceptions import APIError
    from alpaca.data.requests import StockBarsRequest

    request = StockBarsRequest(
        symbol_or_symbols=[symbol], timeframe=timeframe.alpaca(), start=lo,
        # Alpaca's end is inclusive; the chunk's is not.
        end=hi - timedelta(microseconds=1), feed=config.alpaca_feed, adjustment="raw",
    )  # fmt: skip
    try:
        raw = client.get_stock_bars(request)
    except APIError as exc:
        status = exc.status_code
        raise VendorError(_describe("Alpaca", symbol, lo, hi, f"HTTP {status}: {exc}"), status) from exc
    except requests.RequestException as exc:
        raise VendorError(_describe("Alpaca", symbol, lo, hi, f"{type(exc).__name__}: {exc}")) from exc
    rows = raw.get(symbol) or []
    if not rows:
        return empty_bars()
    times = pl.Series([row["t"] for row in rows]).str.to_datetime(time_unit="ns", time_zone="UTC")
    return pl.DataFrame(
        {"event_time_ns": times.dt.epoch("ns"), "symbol": [symbol] * len(rows),
         **{name: [float(row[k]) for row in rows] for name, k in _OHLCV.items()}}  # fmt: skip
    ).cast(BAR_DTYPES)  # type: ignore[arg-type]


_OHLCV = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}


# -- Polygon ---------------------------------------------------------------------------------------------
def _polygon_client(config: DataConfig, key: str, retry: RetrySettings) -> Any:
    from polygon import RESTClient

    client = RESTClient(api_key=key, base=config.polygon_url.rstrip("/"), retries=retry.retries, pagination=True,
                        connect_timeout=retry.timeout_s, read_timeout=retry.timeout_s)  # fmt: skip
    # The client computes `client.timeout` but never hands it to urllib3; connection pools made from now on
    # take it from the pool manager's keywords (the pools are made lazily, on the first request).
    client.client.connection_pool_kw["timeout"] = client.timeout
    return client


def _polygon_chunk(client: Any, timeframe: Timeframe, symbol: str, lo: datetime, hi: datetime) -> pl.DataFrame:
    from polygon.exceptions import BadResponse
    from urllib3.exceptions import HTTPError, MaxRetryError

    multiplier, timespan = timeframe.polygon()
    lo_ms, hi_ms = _ms(lo), _ms(hi) - 1  # Polygon's `to` is inclusive
    try:
        aggs = list(client.list_aggs(symbol, multiplier, timespan, lo_ms, hi_ms, adjusted=False, sort="asc",
                                     limit=50_000))  # fmt: skip
    except MaxRetryError as exc:
        status = _status_of_retry(exc)
        raise VendorError(_describe("Polygon", symbol, lo, hi, f"gave up after retries: {exc.reason}"), status) from exc
    except BadResponse as exc:
        raise VendorError(_describe("Polygon", symbol, lo, hi, f"refused: {exc}"), _polygon_status(str(exc))) from exc
    except HTTPError as exc:
        raise VendorError(_describe("Polygon", symbol, lo, hi, f"{type(exc).__name__}: {exc}")) from exc
    if not aggs:
        return empty_bars()
    return pl.DataFrame(
        {"event_time_ns": [a.timestamp * 1_000_000 for a in aggs], "symbol": [symbol] * len(aggs),
         "open": [a.open for a in aggs], "high": [a.high for a in aggs], "low": [a.low for a in aggs],
         "close": [a.close for a in aggs], "volume": [a.volume for a in aggs]}  # fmt: skip
    ).cast(BAR_DTYPES)  # type: ignore[arg-type]


def _status_of_retry(exc: Any) -> int | None:
    match = re.search(r"too many (\d{3}) error", str(exc.reason))
    return int(match[1]) if match else None


def _polygon_status(body: str) -> int | None:
    # BadResponse carries only the body; Polygon's auth failures say so in it.
    return 401 if "API Key" in body else None


# -- helpers ---------------------------------------------------------------------------------------------
def empty_bars() -> pl.DataFrame:
    return pl.DataFrame(schema=BAR_DTYPES)


def _in_range(bars: pl.DataFrame, lo: datetime, hi: datetime) -> pl.DataFrame:
    """Only bars starting in [lo, hi), sorted, one per time: a vendor that answers a little more than asked
    (inclusive ends, rounding) must not spill into the next chunk."""
    t = pl.col("event_time_ns")
    return (
        bars.filter((t >= _ns(lo)) & (t < _ns(hi)))
        .unique("event_time_ns", keep="last", maintain_order=True)
        .sort("event_time_ns")
        .select(BAR_COLUMNS)
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ns(moment: datetime) -> int:
    return (_utc(moment) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _ms(moment: datetime) -> int:
    return _ns(moment) // 1_000_000


def _describe(vendor: str, symbol: str, lo: datetime, hi: datetime, what: str) -> str:
    return f"{vendor} bars for {symbol} {lo:%Y-%m-%d %H:%M}..{hi:%Y-%m-%d %H:%M} UTC failed: {what}"
