"""Signal filters on the real XNYS calendar: entry hours at their edges (DST weeks, holidays, half days),
volume and spread thresholds, the earnings blackout counted in sessions, and loading earnings dates."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from utp.core.filters import (
    DAY_NS,
    FilterReason,
    MarketHours,
    SignalFilters,
    day_to_ns,
    exchange_sessions,
    load_earnings,
    session_day,
)

NY = ZoneInfo("America/New_York")
MINUTE_NS = 60 * 10**9


def et(text: str) -> int:
    """ns UTC of a New York wall-clock time."""
    return int(datetime.fromisoformat(text).replace(tzinfo=NY).timestamp() * 1e6) * 1000


@pytest.fixture(scope="module")
def hours() -> MarketHours:
    return MarketHours()


# --------------------------------------------------------------------------------------------------------------
# Market hours
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "day",
    [
        "2024-01-16",  # winter (EST)
        "2024-07-16",  # summer (EDT)
        "2024-03-08", "2024-03-11",  # the Friday before and the Monday after clocks went forward (Mar 10)
        "2024-11-01", "2024-11-04",  # the Friday before and the Monday after clocks went back (Nov 3)
    ],
)  # fmt: skip
def test_entry_window_edges_in_local_time(hours, day):
    times = np.array([et(f"{day} {t}") for t in ("09:29:59", "09:30:00", "15:44:59", "15:45:00")])
    assert hours.allows(times).tolist() == [False, True, True, False]


def test_dst_moves_the_window_in_utc(hours):
    before, after = et("2024-03-08 09:30"), et("2024-03-11 09:30")
    assert (before // 10**9) % 86_400 == 14 * 3600 + 30 * 60  # 14:30 UTC in EST
    assert (after // 10**9) % 86_400 == 13 * 3600 + 30 * 60  # 13:30 UTC in EDT
    # 13:30 UTC is 09:30 on the Monday after the change but 08:30 on the Friday before it.
    utc_1330 = [day_to_ns(date(2024, 3, 8)) + 810 * MINUTE_NS, day_to_ns(date(2024, 3, 11)) + 810 * MINUTE_NS]
    assert hours.allows(np.array(utc_1330)).tolist() == [False, True]


def test_holidays_weekends_and_half_days(hours):
    christmas = [et(f"2024-12-25 {t}") for t in ("09:30", "12:00", "15:00")]
    assert not hours.allows(np.array(christmas)).any()
    assert not hours.allows(np.array([et("2024-11-30 11:00"), et("2024-12-01 11:00")])).any()  # Sat, Sun
    # Half days close 13:00 ET: entries end 12:45.
    for day in ("2024-11-29", "2024-12-24", "2024-07-03"):
        times = [et(f"{day} {t}") for t in ("09:30", "12:44", "12:44:59", "12:45", "13:30")]
        assert hours.allows(np.array(times)).tolist() == [True, True, True, False, False], day
    assert hours.explain(et("2024-11-29 12:45")) == (
        "2024-11-29 12:45:00 EST is outside entry hours 09:30-12:45 on 2024-11-29"
    )
    assert hours.explain(et("2024-12-25 10:00")) == "2024-12-25 10:00:00 EST: no XNYS session on Wed 2024-12-25"


def test_daily_bars_are_outside_hours_and_applies_to_intraday_only(hours):
    assert not hours.allows(np.array([day_to_ns(date(2024, 5, 1))])).any()
    assert MarketHours.applies_to(60 * 10**9) and MarketHours.applies_to(3600 * 10**9)
    assert not MarketHours.applies_to(DAY_NS) and not MarketHours.applies_to(0)


def test_custom_window_and_close_buffer():
    late = MarketHours(entry_start="10:00", entry_end="16:00")  # 16:00 is capped at close - 15 min
    times = [et(f"2024-05-01 {t}") for t in ("09:59:59", "10:00", "15:44:59", "15:45")]
    assert late.allows(np.array(times)).tolist() == [False, True, True, False]
    no_buffer = MarketHours(entry_end="16:00", close_buffer_minutes=0)
    assert no_buffer.allows(np.array([et("2024-05-01 15:59:59"), et("2024-05-01 16:00")])).tolist() == [True, False]


def test_vectorised_matches_one_at_a_time_and_keeps_shape(hours):
    rng = np.random.default_rng(0)
    times = rng.integers(et("2020-01-01 00:00"), et("2024-12-31 00:00"), 100_000)
    allowed = hours.allows(times)  # 1e5 timestamps: one searchsorted, well under a second
    assert allowed.shape == times.shape and 0.1 < allowed.mean() < 0.25
    sessions = set(exchange_sessions().days.tolist())  # datetime.date objects
    for t, got in zip(times[:300].tolist(), allowed[:300].tolist(), strict=True):
        local = datetime.fromtimestamp(t / 1e9, NY)
        is_session = local.date() in sessions
        minutes = local.hour * 60 + local.minute
        half_day = local.date() in {date(2020, 11, 27), date(2020, 12, 24), date(2021, 11, 26), date(2022, 11, 25),
                                    date(2023, 7, 3), date(2023, 11, 24), date(2024, 7, 3), date(2024, 11, 29),
                                    date(2024, 12, 24)}  # fmt: skip
        end = 12 * 60 + 45 if half_day else 15 * 60 + 45
        assert got == (is_session and 9 * 60 + 30 <= minutes < end), local
    assert hours.allows(np.array(times[:6]).reshape(2, 3)).shape == (2, 3)


def test_session_day_and_bad_settings():
    days = session_day(np.array([
        et("2024-05-03 17:00"),  # Friday after the close -> Monday
        day_to_ns(date(2024, 5, 1)),  # a daily bar stamped 00:00 UTC -> its own date
        et("2024-12-25 10:00"),  # holiday -> next session
        et("2024-05-06 09:00"),  # before Monday's open -> Monday
    ]))  # fmt: skip
    assert days.astype(str).tolist() == ["2024-05-06", "2024-05-01", "2024-12-26", "2024-05-06"]
    with pytest.raises(ValueError, match="after the last XNYS session"):
        session_day(et("2100-01-04 10:00"))
    with pytest.raises(ValueError, match="entry_start must be a time of day"):
        MarketHours(entry_start="9h30")
    with pytest.raises(ValueError, match="must be before entry_end"):
        MarketHours(entry_start="15:00", entry_end="10:00")
    with pytest.raises(ValueError, match="unknown time zone"):
        MarketHours(tz="Mars/Olympus")
    with pytest.raises(ValueError, match="unknown exchange calendar"):
        MarketHours(calendar="NOPE")


# --------------------------------------------------------------------------------------------------------------
# Volume, spread, order of reasons
# --------------------------------------------------------------------------------------------------------------


def test_volume_and_spread_thresholds():
    filters = SignalFilters()
    n = 6
    codes, messages = filters.check(
        pl.Series(["A", "B", "C", "D", "E", "F"]),
        np.full(n, et("2024-05-01 10:00")),
        np.array([499_999.0, 500_000.0, 1e6, 1e6, 1e6, np.nan]),
        np.array([np.nan, np.nan, 0.000999, 0.001, 0.002, 0.0]),
    )
    assert codes.tolist() == [FilterReason.LOW_VOLUME, FilterReason.OK, FilterReason.OK, FilterReason.WIDE_SPREAD,
                              FilterReason.WIDE_SPREAD, FilterReason.LOW_VOLUME]  # fmt: skip
    assert messages[0] == "A: average volume 499,999 below 500,000"
    assert messages[1] == "" and messages[2] == ""
    assert messages[3] == "D: spread 0.1000% not below 0.1000%"
    assert messages[5] == "F: average volume nan below 500,000"


def test_first_failing_filter_names_the_reason_and_none_disables(hours):
    earnings = pl.DataFrame({"symbol": ["A"], "date": [date(2024, 5, 2)]})
    args = (["A"] * 4, np.array([et("2024-05-01 08:00"), et("2024-05-01 10:00"), et("2024-05-01 10:00"),
                                 et("2024-05-01 10:00")]),
            np.array([1.0, 1.0, 1e6, 1e6]), np.array([0.01, 0.01, 0.01, 0.0]))  # fmt: skip
    codes, _ = SignalFilters(hours=hours, earnings=earnings).check(*args)
    assert codes.tolist() == [FilterReason.MARKET_CLOSED, FilterReason.LOW_VOLUME, FilterReason.WIDE_SPREAD,
                              FilterReason.EARNINGS_BLACKOUT]  # fmt: skip
    off = SignalFilters(min_avg_volume=None, max_spread=None, hours=None, earnings=None)
    assert not off.check(*args)[0].any()
    with pytest.raises(ValueError, match="one value per signal"):
        off.check(["A"], np.zeros(2, np.int64), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="max_spread must be > 0"):
        SignalFilters(max_spread=0)


# --------------------------------------------------------------------------------------------------------------
# Earnings blackout
# --------------------------------------------------------------------------------------------------------------


def test_blackout_counts_exchange_sessions_across_weekends():
    # Earnings Thursday 2024-05-02. Sessions: Apr 29 (-3), Apr 30 (-2), May 1 (-1), May 3 (+1), May 6 (+2),
    # May 7 (+3): the weekend between May 3 and May 6 does not count.
    earnings = pl.DataFrame({"symbol": ["AAPL", "AAPL", "MSFT"], "date": ["2024-05-02", "2024-08-01", "2024-04-25"]})
    filters = SignalFilters(earnings=earnings)
    days = ["2024-04-29", "2024-04-30", "2024-05-01", "2024-05-02", "2024-05-03", "2024-05-06", "2024-05-07",
            "2024-07-30", "2024-07-29"]  # fmt: skip
    times = np.array([et(f"{d} 11:00") for d in days])
    codes, messages = filters.check(pl.Series(["AAPL"] * len(days)), times, np.full(len(days), 1e6),
                                    np.full(len(days), np.nan))  # fmt: skip
    blocked = (codes == FilterReason.EARNINGS_BLACKOUT).tolist()
    assert blocked == [False, True, True, True, True, True, False, True, False]
    assert messages[2] == "AAPL: 2024-05-01 is within 2 trading days of earnings on 2024-05-02"
    assert messages[5] == "AAPL: 2024-05-06 is within 2 trading days of earnings on 2024-05-02"
    assert messages[0] == ""
    # Another symbol's earnings never block this one; daily bars (00:00 UTC) count by their date.
    codes, _ = filters.check(["IBM", "MSFT", "MSFT"], np.array([et("2024-05-01 11:00"), day_to_ns(date(2024, 4, 29)),
                                                              day_to_ns(date(2024, 4, 30))]),
                             np.full(3, 1e6), np.full(3, np.nan))  # fmt: skip
    assert codes.tolist() == [FilterReason.OK, FilterReason.EARNINGS_BLACKOUT, FilterReason.OK]


def test_blackout_around_holidays_and_non_session_earnings_dates():
    # Earnings on Saturday 2024-11-30 count as Monday Dec 2; Thanksgiving (Nov 28) is not a session,
    # so Wednesday Nov 27 is 2 sessions before Monday (Nov 29, Dec 2) and Tuesday Nov 26 is 3.
    filters = SignalFilters(earnings=pl.DataFrame({"symbol": ["X"], "date": [date(2024, 11, 30)]}))
    times = np.array([et("2024-11-26 11:00"), et("2024-11-27 11:00"), et("2024-12-04 11:00"), et("2024-12-05 11:00")])
    codes, _ = filters.check(["X"] * 4, times, np.full(4, 1e6), np.full(4, np.nan))
    assert (codes == FilterReason.EARNINGS_BLACKOUT).tolist() == [False, True, True, False]
    only_the_day = SignalFilters(
        earnings_blackout_days=0, earnings=pl.DataFrame({"symbol": ["X"], "date": ["2024-05-02"]})
    )
    codes, _ = only_the_day.check(["X"] * 2, np.array([et("2024-05-02 11:00"), et("2024-05-03 11:00")]),
                                  np.full(2, 1e6), np.full(2, np.nan))  # fmt: skip
    assert codes.tolist() == [FilterReason.EARNINGS_BLACKOUT, FilterReason.OK]


def test_load_earnings_from_csv_and_parquet(tmp_path):
    csv = tmp_path / "earnings.csv"
    csv.write_text("symbol,date\nAAPL,2024-05-02\nMSFT,2024-04-25\nAAPL,2024-05-02\n")
    loaded = load_earnings(csv)
    assert loaded.to_dicts() == [
        {"symbol": "AAPL", "date": date(2024, 5, 2)},
        {"symbol": "MSFT", "date": date(2024, 4, 25)},
    ]
    parquet = tmp_path / "earnings.parquet"
    loaded.write_parquet(parquet)
    assert load_earnings(parquet).equals(loaded)
    csv.write_text("symbol,date\nAAPL,2024-05-02\n,2024-05-02\nMSFT,May 2\n")
    with pytest.raises(ValueError) as err:
        load_earnings(csv)
    assert "row 2: symbol is missing" in str(err.value)
    assert "row 3: date 'May 2' is not a date (YYYY-MM-DD)" in str(err.value)
    (tmp_path / "no_date.csv").write_text("symbol\nAAPL\n")
    with pytest.raises(ValueError, match="missing column.*date"):
        load_earnings(tmp_path / "no_date.csv")


def test_many_signals_at_once(hours):
    rng = np.random.default_rng(1)
    n = 100_000
    times = rng.integers(et("2023-01-01 00:00"), et("2024-12-31 00:00"), n)
    symbols = pl.Series(rng.choice(["AAPL", "MSFT", "GOOG", "AMZN"], n))
    volume = rng.uniform(0, 2e6, n)
    spread = np.where(rng.random(n) < 0.5, np.nan, rng.uniform(0, 0.002, n))
    earnings = pl.DataFrame({"symbol": ["AAPL", "MSFT"], "date": [date(2024, 5, 2), date(2023, 10, 24)]})
    codes, messages = SignalFilters(hours=hours, earnings=earnings).check(symbols, times, volume, spread)
    assert codes.shape == messages.shape == (n,)
    assert set(np.unique(codes).tolist()) == {0, 1, 2, 3, 4}
    assert ((messages == "") == (codes == 0)).all()
    closed = codes == FilterReason.MARKET_CLOSED
    np.testing.assert_array_equal(closed, ~hours.allows(times))
