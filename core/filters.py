"""Signal filters: may an ENTRY signal be acted on now? (Exits are never filtered: a position must always be
able to close.)

Four filters, applied in this order; the first one that fails names the reason:

1. market hours: inside the entry window of an exchange session (`MarketHours`, XNYS by default), so
   holidays are closed and half days end early;
2. liquidity: the symbol's average volume is at least `min_avg_volume`;
3. spread: the relative quoted spread is below `max_spread` (NaN = no quotes: the filter does not apply);
4. earnings blackout: no entry within N exchange sessions of an earnings date.

The calendar comes from `exchange_calendars`. It is asked once per calendar for all its sessions; every
question afterwards (is this time inside hours, which session is this, how many sessions apart are these
dates) is an `np.searchsorted` over those arrays, so many timestamps cost one vectorised call.

A "session day" here is the session in progress at a time or, outside a session, the next one to open:
the session an entry decided at that time would trade in. A daily bar stamped 00:00 UTC on its date
belongs to the session of that date; Friday evening belongs to Monday.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, time
from enum import IntEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl

from utp.core.quality import coerce_columns, read_table

__all__ = [
    "DAY_NS", "ExchangeSessions", "FilterReason", "MarketHours", "SignalFilters", "day_to_ns", "exchange_sessions",
    "load_earnings", "session_day", "validate_earnings",
]  # fmt: skip

MINUTE_NS = 60 * 10**9
DAY_NS = 86_400 * 10**9
_EPOCH_DAY = np.datetime64("1970-01-01", "D")


# --------------------------------------------------------------------------------------------------------------
# Exchange sessions
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExchangeSessions:
    """Every session of one exchange calendar as arrays: the date label and the open / close instants.

    `open_ns` and `close_ns` are int64 ns UTC, ascending; `days` are datetime64[D] labels.
    """

    calendar: str
    days: np.ndarray
    open_ns: np.ndarray
    close_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.days)

    def index_at(self, time_ns: np.ndarray | int) -> np.ndarray:
        """Index of the session in progress at each time, or of the next one to open (the first session whose
        close is after the time). Raises ValueError for a time past the calendar's last session."""
        t = np.asarray(time_ns, dtype=np.int64)
        index = np.searchsorted(self.close_ns, t, side="right")
        if index.size and int(index.max()) >= len(self):
            latest = int(t.max())
            raise ValueError(
                f"{_format_utc(latest)} is after the last {self.calendar} session the calendar knows "
                f"({self.days[-1]}); update exchange_calendars"
            )
        return index

    def index_on_or_after(self, days: np.ndarray) -> np.ndarray:
        """Index of the first session on or after each date (datetime64[D]); a date that is a session maps to
        itself, a weekend or holiday to the next session."""
        d = np.asarray(days, dtype="datetime64[D]")
        index = np.searchsorted(self.days, d, side="left")
        if index.size and int(index.max()) >= len(self):
            raise ValueError(
                f"{d.max()} is after the last {self.calendar} session the calendar knows ({self.days[-1]})"
            )
        return index

    def session_day(self, time_ns: np.ndarray | int) -> np.ndarray:
        """Session label (datetime64[D]) of the session in progress at each time or the next one to open."""
        return self.days[self.index_at(time_ns)]


@functools.cache
def exchange_sessions(calendar: str = "XNYS") -> ExchangeSessions:
    """All sessions of `calendar` from 1885 (or its first) to the calendar's last known date; built once."""
    import exchange_calendars as xcals

    try:
        with warnings.catch_warnings():  # exchange_calendars' own use of a pandas API pandas 3.1 deprecates
            warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
            cal = xcals.get_calendar(calendar, start="1885-01-01")
    except xcals.errors.InvalidCalendarName:
        raise ValueError(f"unknown exchange calendar {calendar!r} (try XNYS, XNAS, XLON)") from None
    schedule = cal.schedule
    return ExchangeSessions(
        calendar=calendar,
        days=schedule.index.values.astype("datetime64[D]"),
        open_ns=_utc_ns(schedule["open"]),
        close_ns=_utc_ns(schedule["close"]),
    )


def _utc_ns(column: object) -> np.ndarray:
    """int64 ns of a pandas tz-aware column."""
    return column.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64)  # type: ignore[attr-defined]


def session_day(time_ns: np.ndarray | int, calendar: str = "XNYS") -> np.ndarray:
    """Session label (datetime64[D]) each time belongs to: the session in progress, else the next one."""
    return exchange_sessions(calendar).session_day(time_ns)


def _format_utc(time_ns: int) -> str:
    return str(np.datetime64(int(time_ns), "ns").astype("datetime64[s]")) + " UTC"


# --------------------------------------------------------------------------------------------------------------
# Market hours
# --------------------------------------------------------------------------------------------------------------


def _parse_clock(text: str, what: str) -> time:
    try:
        return time.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a time of day like '09:30', got {text!r}") from None


class MarketHours:
    """The entry window of each exchange session: [max(session open, entry_start),
    min(entry_end, session close - close_buffer)), local times in `tz`.

    Holidays have no window; half days end `close_buffer_minutes` before their early close (2024-11-29
    closes 13:00 ET, entries end 12:45). Local times are converted per session date, so the window follows
    daylight saving. Only intraday bars are meaningful here: a daily bar is stamped at midnight, outside any
    session, so callers ask `applies_to(interval_ns)` first.
    """

    def __init__(
        self,
        calendar: str = "XNYS",
        entry_start: str = "09:30",
        entry_end: str = "15:45",
        tz: str = "America/New_York",
        *,
        close_buffer_minutes: float = 15.0,
    ) -> None:
        start, end = _parse_clock(entry_start, "entry_start"), _parse_clock(entry_end, "entry_end")
        if start >= end:
            raise ValueError(f"entry_start {entry_start} must be before entry_end {entry_end}")
        if not (math.isfinite(close_buffer_minutes) and close_buffer_minutes >= 0):
            raise ValueError(f"close_buffer_minutes must be >= 0, got {close_buffer_minutes}")
        try:
            self.zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r}") from None
        self.calendar, self.tz = calendar, tz
        self.entry_start, self.entry_end = start, end
        self.close_buffer_ns = int(close_buffer_minutes * MINUTE_NS)
        self.sessions = exchange_sessions(calendar)
        local_start = _local_on_sessions(calendar, start, tz)
        local_end = _local_on_sessions(calendar, end, tz)
        self.window_start_ns = np.maximum(self.sessions.open_ns, local_start)
        self.window_end_ns = np.minimum(local_end, self.sessions.close_ns - self.close_buffer_ns)

    @staticmethod
    def applies_to(interval_ns: int) -> bool:
        """Whether bars of this interval can be judged by the hours: intraday bars only."""
        return 0 < interval_ns < DAY_NS

    def allows(self, time_ns: np.ndarray | int) -> np.ndarray:
        """True for each time inside its session's entry window (bool array shaped like the input)."""
        t = np.asarray(time_ns, dtype=np.int64)
        index = self.sessions.index_at(t)
        return (t >= self.window_start_ns[index]) & (t < self.window_end_ns[index])

    def window(self, time_ns: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(start_ns, end_ns) of the entry window of each time's session day (the session in progress or next)."""
        index = self.sessions.index_at(time_ns)
        return self.window_start_ns[index], self.window_end_ns[index]

    def explain(self, time_ns: int) -> str:
        """Why one time is (or is not) inside hours, in local time, for messages."""
        return self.explain_many(np.array([time_ns], np.int64))[0]

    def explain_many(self, time_ns: np.ndarray) -> list[str]:
        """`explain` for many times, formatted column-wise (a Python call per time would dominate)."""
        t = np.asarray(time_ns, dtype=np.int64)
        local_day = _local_dates(t, self.tz)
        i = np.minimum(np.searchsorted(self.sessions.days, local_day), len(self.sessions) - 1)
        is_session = self.sessions.days[i] == local_day
        frame = pl.DataFrame({
            "stamp": _local_strings(t, self.tz, "%Y-%m-%d %H:%M:%S %Z"),
            "day": pl.Series(local_day).dt.strftime("%a %Y-%m-%d"),
            "start": _local_strings(self.window_start_ns[i], self.tz, "%H:%M"),
            "end": _local_strings(self.window_end_ns[i], self.tz, "%H:%M"),
            "is_session": is_session,
            "inside": (t >= self.window_start_ns[i]) & (t < self.window_end_ns[i]) & is_session,
        })  # fmt: skip
        text = pl.when(~pl.col("is_session")).then(
            pl.format("{}: no {} session on {}", "stamp", pl.lit(self.calendar), "day")
        ).otherwise(
            pl.format("{} is {} entry hours {}-{} on {}", "stamp",
                      pl.when("inside").then(pl.lit("inside")).otherwise(pl.lit("outside")), "start", "end",
                      pl.col("day").str.slice(4))
        )  # fmt: skip
        return frame.select(text).to_series().to_list()


def _local_strings(time_ns: np.ndarray, tz: str, fmt: str) -> pl.Series:
    return pl.Series(time_ns, dtype=pl.Int64).cast(pl.Datetime("ns", "UTC")).dt.convert_time_zone(tz).dt.strftime(fmt)


def _local_dates(time_ns: np.ndarray, tz: str) -> np.ndarray:
    local = pl.Series(time_ns, dtype=pl.Int64).cast(pl.Datetime("ns", "UTC")).dt.convert_time_zone(tz).dt.date()
    return local.to_numpy().astype("datetime64[D]")


@functools.cache
def _local_on_sessions(calendar: str, clock: time, tz: str) -> np.ndarray:
    """`_local_on_days` of every session of `calendar`, read-only and computed once per process: each risk and
    execution engine asks for the same two edges, and the zone arithmetic over 35,000 sessions costs ~4 ms."""
    edges = _local_on_days(exchange_sessions(calendar).days, clock, tz)
    edges.flags.writeable = False
    return edges


def _local_on_days(days: np.ndarray, clock: time, tz: str) -> np.ndarray:
    """int64 ns UTC of local wall-clock time `clock` on each date (pandas does the zone arithmetic vectorised)."""
    import pandas as pd

    offset = pd.Timedelta(hours=clock.hour, minutes=clock.minute, seconds=clock.second)
    local = (pd.DatetimeIndex(days.astype("datetime64[ns]")) + offset).tz_localize(
        tz, ambiguous="NaT", nonexistent="shift_forward"
    )
    return local.tz_convert("UTC").as_unit("ns").asi8.copy()


# --------------------------------------------------------------------------------------------------------------
# Earnings dates
# --------------------------------------------------------------------------------------------------------------


EARNINGS_SCHEMA = {"symbol": pl.Utf8, "date": pl.Date}


def validate_earnings(frame: pl.DataFrame, source: str = "earnings") -> pl.DataFrame:
    """(symbol, date) rows, checked: ValueError naming every bad row; duplicates dropped."""
    frame = coerce_columns(frame, EARNINGS_SCHEMA, source)
    return frame.unique(maintain_order=True).sort("symbol", "date")


def load_earnings(path: str | Path) -> pl.DataFrame:
    """Earnings dates from a CSV or Parquet file with columns symbol, date (YYYY-MM-DD)."""
    return validate_earnings(read_table(path), str(path))


# --------------------------------------------------------------------------------------------------------------
# The filters
# --------------------------------------------------------------------------------------------------------------


class FilterReason(IntEnum):
    OK = 0
    MARKET_CLOSED = 1
    LOW_VOLUME = 2
    WIDE_SPREAD = 3
    EARNINGS_BLACKOUT = 4


class SignalFilters:
    """Vetoes entry signals outside hours, in thin or wide markets, and around earnings.

    A filter set to None is off (`hours=None` also for daily bars, see `MarketHours.applies_to`).
    Volume passes at `avg_volume >= min_avg_volume` (NaN fails: unknown liquidity is not liquidity); the
    spread passes when `spread < max_spread` (NaN passes: without quotes the filter does not apply). The
    earnings blackout covers every session within `earnings_blackout_days` sessions of an earnings date
    (0 = the earnings session only), counted on the exchange calendar; an earnings date on a non-session
    day counts as the next session.
    """

    def __init__(
        self,
        *,
        min_avg_volume: float | None = 500_000,
        max_spread: float | None = 0.001,
        earnings_blackout_days: int = 2,
        hours: MarketHours | None = None,
        earnings: pl.DataFrame | None = None,
        calendar: str = "XNYS",
    ) -> None:
        if min_avg_volume is not None and not (math.isfinite(min_avg_volume) and min_avg_volume >= 0):
            raise ValueError(f"min_avg_volume must be >= 0 or None, got {min_avg_volume}")
        if max_spread is not None and not (max_spread > 0):
            raise ValueError(f"max_spread must be > 0 or None, got {max_spread}")
        if earnings_blackout_days < 0:
            raise ValueError(f"earnings_blackout_days must be >= 0, got {earnings_blackout_days}")
        self.min_avg_volume, self.max_spread = min_avg_volume, max_spread
        self.earnings_blackout_days = int(earnings_blackout_days)
        self.hours = hours
        self.sessions = hours.sessions if hours is not None else exchange_sessions(calendar)
        self.earnings: pl.DataFrame | None = None
        if earnings is not None:
            checked = validate_earnings(earnings)
            index = self.sessions.index_on_or_after(checked["date"].to_numpy().astype("datetime64[D]"))
            self.earnings = checked.with_columns(pl.Series("earnings_session", index, pl.Int64)).sort(
                "earnings_session"
            )

    def check(
        self,
        symbols: pl.Series | Sequence[str],
        time_ns: np.ndarray,
        avg_volume: np.ndarray,
        spread: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(int8 FilterReason code per signal, message per signal: "" when OK)."""
        symbols = symbols if isinstance(symbols, pl.Series) else pl.Series("symbol", list(symbols), pl.Utf8)
        t = np.asarray(time_ns, dtype=np.int64)
        volume = np.asarray(avg_volume, dtype=np.float64)
        rel_spread = np.asarray(spread, dtype=np.float64)
        n = len(symbols)
        if not (t.shape == volume.shape == rel_spread.shape == (n,)):
            raise ValueError(
                f"check needs one value per signal: {n} symbols, time_ns {t.shape}, avg_volume {volume.shape}, "
                f"spread {rel_spread.shape}"
            )
        codes = np.zeros(n, np.int8)

        def fail(mask: np.ndarray, reason: FilterReason) -> None:
            codes[(codes == FilterReason.OK) & mask] = reason

        if self.hours is not None:
            fail(~self.hours.allows(t), FilterReason.MARKET_CLOSED)
        if self.min_avg_volume is not None:
            fail(~(volume >= self.min_avg_volume), FilterReason.LOW_VOLUME)
        if self.max_spread is not None:
            fail(rel_spread >= self.max_spread, FilterReason.WIDE_SPREAD)
        earnings_day = np.full(n, np.datetime64("NaT"), "datetime64[D]")
        if self.earnings is not None and n:
            blackout, earnings_day = self._blackout(symbols, t)
            fail(blackout, FilterReason.EARNINGS_BLACKOUT)
        return codes, self._messages(codes, symbols, t, volume, rel_spread, earnings_day)

    def _blackout(self, symbols: pl.Series, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each signal's session is within N sessions of its symbol's nearest earnings session, and
        that earnings date."""
        assert self.earnings is not None
        signal_session = self.sessions.index_at(t)
        signals = pl.DataFrame(
            {"row": np.arange(len(t)), "symbol": symbols.cast(pl.Utf8), "signal_session": signal_session}
        ).sort("signal_session")
        nearest = signals.join_asof(
            self.earnings,
            left_on="signal_session",
            right_on="earnings_session",
            by="symbol",
            strategy="nearest",
            check_sortedness=False,  # sorted just above; polars cannot verify it per group
        ).sort("row")
        distance = (nearest["signal_session"] - nearest["earnings_session"]).abs()
        blackout = (distance <= self.earnings_blackout_days).fill_null(False).to_numpy()
        return blackout, nearest["date"].to_numpy().astype("datetime64[D]")

    def _messages(
        self,
        codes: np.ndarray,
        symbols: pl.Series,
        t: np.ndarray,
        volume: np.ndarray,
        spread: np.ndarray,
        earnings_day: np.ndarray,
    ) -> np.ndarray:
        # Only failing rows get text, built per reason so each row costs one f-string at most.
        messages = np.full(len(codes), "", dtype=object)
        for reason in FilterReason:
            rows = np.flatnonzero(codes == reason) if reason != FilterReason.OK else np.empty(0, np.int64)
            if not rows.size:
                continue
            names = symbols.gather(rows).to_list()
            if reason == FilterReason.MARKET_CLOSED:
                assert self.hours is not None
                text = [f"{n}: {x}" for n, x in zip(names, self.hours.explain_many(t[rows]), strict=True)]
            elif reason == FilterReason.LOW_VOLUME:
                text = [f"{n}: average volume {v:,.0f} below {self.min_avg_volume:,.0f}"
                        for n, v in zip(names, volume[rows].tolist(), strict=True)]  # fmt: skip
            elif reason == FilterReason.WIDE_SPREAD:
                text = [f"{n}: spread {x:.4%} not below {self.max_spread:.4%}"
                        for n, x in zip(names, spread[rows].tolist(), strict=True)]  # fmt: skip
            else:
                days = self.sessions.session_day(t[rows]).astype(str).tolist()
                earned = earnings_day[rows].astype(str).tolist()
                text = [f"{n}: {d} is within {self.earnings_blackout_days} trading days of earnings on {e}"
                        for n, d, e in zip(names, days, earned, strict=True)]  # fmt: skip
            messages[rows] = text
        return messages


def day_to_ns(day: date | np.datetime64) -> int:
    """00:00 UTC of a date, in ns (how daily bars are stamped)."""
    return int((np.datetime64(day, "D") - _EPOCH_DAY).astype(np.int64)) * DAY_NS
