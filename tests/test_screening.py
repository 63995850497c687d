"""Universe screening: criteria at their thresholds, tiers, spreads from quotes and from highs/lows, no look-ahead,
and when the daily refresh is due."""

from __future__ import annotations

import math
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from utp.core.filters import DAY_NS, day_to_ns
from utp.core.screening import SCREEN_SCHEMA, UniverseRefresh, corwin_schultz_spread, screen_universe
from utp.storage.datasets import dataset, synthetic_bars

DAYS = [d.astype(object) for d in np.busday_offset(np.datetime64("2024-03-01"), np.arange(30), roll="forward")]
AS_OF = day_to_ns(DAYS[-1])
NY = ZoneInfo("America/New_York")


def flat_bars(symbol: str, price: float, volume: float, n: int = 30, spread: float = 0.0) -> pl.DataFrame:
    """n daily bars at a constant price and volume; high/low `spread` apart (0 = close-only)."""
    return pl.DataFrame({
        "event_time_ns": [day_to_ns(d) for d in DAYS[-n:]], "symbol": [symbol] * n,
        "open": [price] * n, "high": [price * (1 + spread / 2)] * n, "low": [price * (1 - spread / 2)] * n,
        "close": [price] * n, "volume": [volume] * n,
    })  # fmt: skip


def row(result: pl.DataFrame, symbol: str) -> dict:
    return result.filter(pl.col("symbol") == symbol).row(0, named=True)


def test_criteria_at_and_either_side_of_each_threshold():
    bars = pl.concat([
        flat_bars("CHEAP", 4.99, 1e7), flat_bars("FIVE", 5.0, 1e7), flat_bars("TOP", 500.0, 1e5),
        flat_bars("DEAR", 500.01, 1e5), flat_bars("THIN", 10.0, 499_999.0), flat_bars("ADV", 10.0, 500_000.0),
    ])  # fmt: skip
    result = screen_universe(bars, AS_OF)
    assert result.columns == list(SCREEN_SCHEMA) and result.schema == pl.Schema(SCREEN_SCHEMA)
    assert result["symbol"].to_list() == sorted(bars["symbol"].unique().to_list())
    eligible = dict(zip(result["symbol"], result["eligible"], strict=True))
    assert eligible == {"CHEAP": False, "FIVE": True, "TOP": True, "DEAR": False, "THIN": False, "ADV": True}
    assert row(result, "CHEAP")["reason"] == "price 4.99 below 5.00"
    assert row(result, "DEAR")["reason"] == "price 500.01 above 500.00"
    assert row(result, "THIN")["reason"] == "average dollar volume 5.0M below 5.0M"  # 4,999,990
    assert row(result, "ADV")["avg_dollar_volume"] == 5e6 and row(result, "ADV")["reason"] == ""
    assert row(result, "ADV")["last_price"] == 10.0 and row(result, "ADV")["bars"] == 20


def test_tiers_by_average_dollar_volume():
    bars = pl.concat([
        flat_bars("T1", 100.0, 5e6), flat_bars("T2", 100.0, 5e6 - 1), flat_bars("T2B", 100.0, 5e5),
        flat_bars("T3", 100.0, 5e4), flat_bars("T0", 100.0, 5e4 - 1),
    ])  # fmt: skip
    result = screen_universe(bars, AS_OF, min_dollar_volume=0)
    assert dict(zip(result["symbol"], result["tier"], strict=True)) == {"T0": 0, "T1": 1, "T2": 2, "T2B": 2, "T3": 3}
    assert result["eligible"].all()
    custom = screen_universe(bars, AS_OF, tiers=(1e8,), min_dollar_volume=0)
    assert dict(zip(custom["symbol"], custom["tier"], strict=True)) == {"T0": 0, "T1": 1, "T2": 1, "T2B": 0, "T3": 0}


def test_no_look_ahead_and_bars_in_progress():
    bars = flat_bars("A", 20.0, 1e6)
    as_of = day_to_ns(DAYS[20])
    before = screen_universe(bars, as_of)
    future = pl.DataFrame({"event_time_ns": [as_of + DAY_NS, as_of + 2 * DAY_NS], "symbol": ["A", "A"],
                           "open": [1.0, 1e4], "high": [2.0, 2e4], "low": [0.5, 1e3], "close": [1.0, 1e4],
                           "volume": [1.0, 1e12]})  # fmt: skip
    after = screen_universe(pl.concat([bars, future]), as_of)
    assert after.equals(before)
    # The bar starting at as_of counts unless the interval says it is still in progress.
    moved = bars.with_columns(
        pl.when(pl.col("event_time_ns") == as_of).then(3.0).otherwise(pl.col("close")).alias("close")
    )
    assert row(screen_universe(moved, as_of), "A")["last_price"] == 3.0
    assert row(screen_universe(moved, as_of, interval_ns=DAY_NS), "A")["last_price"] == 20.0


def test_short_history_and_listed_symbols_without_bars():
    bars = pl.concat([flat_bars("NEW", 20.0, 1e6, n=5), flat_bars("OLD", 20.0, 1e6)])
    result = screen_universe(bars, AS_OF, symbols=["OLD", "NEW", "GONE"])
    assert row(result, "NEW")["reason"] == "only 5 bars of 20" and not row(result, "NEW")["eligible"]
    gone = row(result, "GONE")
    assert gone["reason"] == "no bars up to as_of" and gone["tier"] == 0 and gone["bars"] == 0
    assert row(result, "OLD")["eligible"]


def test_every_failing_reason_is_listed():
    result = screen_universe(flat_bars("BAD", 2.0, 10.0, n=5, spread=0.02), AS_OF)
    assert row(result, "BAD")["reason"] == (
        "only 5 bars of 20; price 2.00 below 5.00; average dollar volume 20 below 5.0M; "
        "spread 200.0 bps not below 50.0 bps"
    )


def test_quoted_spread_median_threshold_and_window():
    bars = pl.concat(
        [flat_bars("TIGHT", 100.0, 1e6), flat_bars("EDGE", 100.0, 1e6), flat_bars("NOQ", 100.0, 1e6, spread=0.001)]
    )
    start = day_to_ns(DAYS[10])
    t = [start + k * DAY_NS for k in range(3)]

    def quotes(symbol: str, rel: list[float]) -> pl.DataFrame:
        return pl.DataFrame({"symbol": [symbol] * len(rel), "event_time_ns": t[: len(rel)],
                             "bid": [100 - 50 * r for r in rel], "ask": [100 + 50 * r for r in rel]})  # fmt: skip

    q = pl.concat([
        quotes("TIGHT", [0.0049, 0.0040, 0.0100]),  # median 0.0049: just under 50 bps
        quotes("EDGE", [0.0050, 0.0050, 0.0001]),   # median exactly 50 bps: not below
        # ignored: crossed, one-sided, before the window, after as_of
        pl.DataFrame({"symbol": ["TIGHT"] * 4, "event_time_ns": [t[0], t[0], start - 100 * DAY_NS, AS_OF + 1],
                      "bid": [101.0, 0.0, 50.0, 50.0], "ask": [100.0, 100.0, 150.0, 150.0]}),
    ])  # fmt: skip
    result = screen_universe(bars, AS_OF, quotes=q)
    tight, edge, noq = row(result, "TIGHT"), row(result, "EDGE"), row(result, "NOQ")
    assert tight["spread"] == pytest.approx(0.0049) and tight["spread_source"] == "quotes" and tight["eligible"]
    assert edge["spread"] == pytest.approx(0.005) and not edge["eligible"]
    assert edge["reason"] == "spread 50.0 bps not below 50.0 bps"
    assert noq["spread_source"] == "high-low" and noq["spread"] > 0  # no quotes: falls back to the range estimate


def test_close_only_bars_have_no_spread_and_skip_that_criterion():
    sp500 = dataset("sp500").bars(end=date(2022, 12, 28))
    as_of = int(sp500["event_time_ns"].max())
    result = screen_universe(sp500, as_of, min_dollar_volume=0.0)
    assert result.height == 20
    assert result["spread"].is_null().all() and (result["spread_source"] == "").all()
    expected = sp500.filter(pl.col("event_time_ns") == as_of).select("symbol", "close").sort("symbol")
    np.testing.assert_allclose(result["last_price"].to_numpy(), expected["close"].to_numpy())
    # With no volume (unknown) the default liquidity floor refuses everything.
    assert not screen_universe(sp500, as_of)["eligible"].any()


def _cs_reference(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> float:
    """Corwin-Schultz written out from the paper, one pair at a time."""
    k = 3 - 2 * math.sqrt(2)
    estimates = []
    for t in range(1, len(high)):
        h2, l2 = high[t], low[t]
        if l2 > close[t - 1]:
            h2, l2 = h2 - (l2 - close[t - 1]), close[t - 1]
        elif h2 < close[t - 1]:
            h2, l2 = close[t - 1], l2 + (close[t - 1] - h2)
        beta = math.log(high[t - 1] / low[t - 1]) ** 2 + math.log(h2 / l2) ** 2
        gamma = math.log(max(high[t - 1], h2) / min(low[t - 1], l2)) ** 2
        alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
        estimates.append(max(0.0, 2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha))))
    return float(np.mean(estimates))


def test_corwin_schultz_matches_the_paper_on_real_goog_bars():
    goog = dataset("goog").bars(start=date(2010, 1, 4), end=date(2010, 3, 1))
    window = goog.tail(20)
    result = screen_universe(goog, int(goog["event_time_ns"].max()))
    expected = _cs_reference(*(window[c].to_numpy() for c in ("high", "low", "close")))
    assert row(result, "GOOG")["spread"] == pytest.approx(expected, rel=1e-12)
    assert row(result, "GOOG")["spread_source"] == "high-low" and 0 < expected < 0.02
    # A first bar has no estimate (not a zero).
    first = goog.head(2).select(corwin_schultz_spread(pl.col("high"), pl.col("low"), pl.col("close")).alias("s"))
    assert first["s"][0] is None and first["s"][1] is not None


def test_minute_bars_and_real_goog_history():
    bars = pl.concat([synthetic_bars(2000, symbol="A"), synthetic_bars(2000, seed=3, symbol="B")])
    result = screen_universe(bars, int(bars["event_time_ns"].max()), lookback=390, min_dollar_volume=1e6)
    assert result["eligible"].to_list() == [True, True] and (result["bars"] == 390).all()
    goog = dataset("goog").bars()
    early = screen_universe(goog, day_to_ns(date(2005, 6, 1)))
    late = screen_universe(goog, int(goog["event_time_ns"].max()))
    assert row(early, "GOOG")["eligible"] and row(early, "GOOG")["tier"] == 1
    assert row(late, "GOOG")["reason"].startswith("price 806.19 above 500.00")


def test_arguments_are_checked():
    bars = flat_bars("A", 10.0, 1e6)
    with pytest.raises(ValueError, match="lookback must be >= 2"):
        screen_universe(bars, AS_OF, lookback=1)
    with pytest.raises(ValueError, match="strictly falling"):
        screen_universe(bars, AS_OF, tiers=(5e6, 5e7))
    with pytest.raises(ValueError, match="min_price <= max_price"):
        screen_universe(bars, AS_OF, min_price=10, max_price=5)
    with pytest.raises(ValueError, match="bars lack column"):
        screen_universe(bars.drop("volume"), AS_OF)
    with pytest.raises(ValueError, match="quotes lack column"):
        screen_universe(bars, AS_OF, quotes=pl.DataFrame({"symbol": ["A"]}))


def et_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * 10**9


def test_refresh_is_due_once_per_session_day():
    refresh = UniverseRefresh()
    assert refresh.due(et_ns("2024-11-29 08:00"))  # never refreshed
    refresh.mark_done(et_ns("2024-11-29 08:00"))  # before the (half-day) session: refreshed for Friday
    assert not refresh.due(et_ns("2024-11-29 12:59"))
    assert refresh.due(et_ns("2024-11-29 13:00"))  # Friday closed at 13:00: Monday's refresh is due
    refresh.mark_done(et_ns("2024-11-29 17:00"))
    for later in ("2024-11-30 10:00", "2024-12-01 20:00", "2024-12-02 09:00", "2024-12-02 15:59"):
        assert not refresh.due(et_ns(later)), later
    assert refresh.due(et_ns("2024-12-02 16:00"))
    # Checkpointed and restored.
    again = UniverseRefresh()
    again.restore(refresh.snapshot())
    assert refresh.snapshot() == "2024-12-02" and not again.due(et_ns("2024-12-02 12:00"))
    # Daily bars stamped 00:00 UTC belong to their own date's session.
    daily = UniverseRefresh()
    daily.mark_done(day_to_ns(date(2024, 12, 24)))
    assert not daily.due(day_to_ns(date(2024, 12, 24)) + 3600 * 10**9)
    assert daily.due(day_to_ns(date(2024, 12, 26)))
