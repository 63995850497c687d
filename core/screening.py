"""Universe screening: which symbols are liquid, tight and priced well enough to trade, in which tier.

`screen_universe` looks only at bars at or before `as_of_ns` (no look-ahead) and, per symbol, at the last
`lookback` of them:

* last_price: the last close;
* avg_dollar_volume: mean of close x volume;
* spread: the median relative quoted spread (ask - bid) / mid of the quotes in the same window when quotes
  are given, else the Corwin-Schultz (2012) estimate from the bars' highs and lows; null when neither says
  anything (close-only bars, no quotes), and then the spread criterion does not apply;
* tier: 1 for the most liquid (average dollar volume >= tiers[0]) .. len(tiers); 0 below every tier;
* eligible / reason: all criteria met, or every failing one, e.g. "price 3.10 below 5.00".

`UniverseRefresh` says when the daily refresh is due: once per exchange session day (see core/filters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from utp.core.filters import exchange_sessions

#: (3 - 2 sqrt 2), the denominator of Corwin and Schultz's alpha.
_CS_K = 3.0 - 2.0 * math.sqrt(2.0)

SCREEN_SCHEMA = {
    "symbol": pl.Utf8,
    "last_price": pl.Float64,
    "avg_dollar_volume": pl.Float64,
    "spread": pl.Float64,
    "spread_source": pl.Utf8,
    "bars": pl.UInt32,
    "tier": pl.Int32,
    "eligible": pl.Boolean,
    "reason": pl.Utf8,
}


def corwin_schultz_spread(high: pl.Expr, low: pl.Expr, close: pl.Expr) -> pl.Expr:
    """Corwin-Schultz spread estimate for each pair of consecutive bars (null for a symbol's first bar), as a
    fraction of price; negative estimates are set to 0 as the authors suggest. The second bar's range is
    first shifted by any overnight gap beyond the first bar's close, as the paper recommends, so a gap is
    not mistaken for spread. Use within a group (`over("symbol")`)."""
    prev_close = close.shift(1)
    gap = (
        pl.when(low > prev_close).then(low - prev_close).when(high < prev_close).then(high - prev_close).otherwise(0.0)
    )
    high2, low2 = high - gap, low - gap
    high1, low1 = high.shift(1), low.shift(1)
    beta = (high1 / low1).log() ** 2 + (high2 / low2).log() ** 2
    gamma = (pl.max_horizontal(high1, high2) / pl.min_horizontal(low1, low2)).log() ** 2
    alpha = ((2.0 * beta).sqrt() - beta.sqrt()) / _CS_K - (gamma / _CS_K).sqrt()
    spread = 2.0 * (alpha.exp() - 1.0) / (1.0 + alpha.exp())
    return pl.when(spread < 0.0).then(0.0).otherwise(spread)  # a null (first bar) stays null


def _money(x: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def screen_universe(
    bars: pl.DataFrame,
    as_of_ns: int,
    *,
    lookback: int = 20,
    min_price: float = 5.0,
    max_price: float = 500.0,
    min_dollar_volume: float = 5e6,
    max_spread: float = 0.005,
    quotes: pl.DataFrame | None = None,
    tiers: Sequence[float] = (5e8, 5e7, 5e6),
    interval_ns: int = 0,
    symbols: Sequence[str] = (),
) -> pl.DataFrame:
    """One row per symbol (those in `bars`, and any listed in `symbols` with no bars), sorted by symbol;
    columns SCREEN_SCHEMA.

    A bar counts when event_time_ns + interval_ns <= as_of_ns: pass the bar interval so that a bar still in
    progress at as_of (bars are stamped at their start) is left out; with 0 every bar starting at or before
    as_of counts. A symbol needs `lookback` bars to be eligible. Eligible means min_price <= price <=
    max_price, avg_dollar_volume >= min_dollar_volume and spread < max_spread.
    """
    if lookback < 2:
        raise ValueError(f"lookback must be >= 2 (the spread estimate needs pairs of bars), got {lookback}")
    if not 0 <= min_price <= max_price:
        raise ValueError(f"need 0 <= min_price <= max_price, got {min_price} and {max_price}")
    tiers = [float(t) for t in tiers]
    if any(t <= 0 for t in tiers) or any(a <= b for a, b in zip(tiers, tiers[1:], strict=False)):
        raise ValueError(f"tiers must be positive dollar volumes in strictly falling order, got {tiers}")
    missing = {"event_time_ns", "symbol", "high", "low", "close", "volume"} - set(bars.columns)
    if missing:
        raise ValueError(f"bars lack column(s) {', '.join(sorted(missing))}")

    window = (
        bars.filter(pl.col("event_time_ns") + interval_ns <= as_of_ns)
        .sort("symbol", "event_time_ns")
        .group_by("symbol", maintain_order=True)
        .tail(lookback)
    )
    stats = window.group_by("symbol").agg(
        pl.col("close").last().alias("last_price"),
        (pl.col("close") * pl.col("volume")).mean().alias("avg_dollar_volume"),
        pl.len().cast(pl.UInt32).alias("bars"),
        pl.col("event_time_ns").first().alias("_window_start"),
        # High-low estimate, unless every bar has high == low (close-only data: the range says nothing).
        pl.when((pl.col("high") > pl.col("low")).any())
        .then(corwin_schultz_spread(pl.col("high"), pl.col("low"), pl.col("close")).mean())
        .alias("_high_low_spread"),
    )
    if quotes is not None:
        stats = stats.join(_quoted_spreads(quotes, stats, as_of_ns), on="symbol", how="left")
    else:
        stats = stats.with_columns(pl.lit(None, pl.Float64).alias("_quoted_spread"))
    stats = stats.with_columns(
        pl.coalesce("_quoted_spread", "_high_low_spread").alias("spread"),
        pl.when(pl.col("_quoted_spread").is_not_null()).then(pl.lit("quotes"))
        .when(pl.col("_high_low_spread").is_not_null()).then(pl.lit("high-low"))
        .otherwise(pl.lit("")).alias("spread_source"),
    )  # fmt: skip
    absent = sorted(set(symbols) - set(stats["symbol"].to_list()))
    if absent:
        no_bars = pl.DataFrame(
            {"symbol": absent, "bars": [0] * len(absent)}, schema={"symbol": pl.Utf8, "bars": pl.UInt32}
        )
        stats = pl.concat([stats, no_bars], how="diagonal_relaxed")
    tier = pl.lit(0, pl.Int32)
    for rank in range(len(tiers), 0, -1):  # the highest threshold met wins, so apply it last
        tier = pl.when(pl.col("avg_dollar_volume") >= tiers[rank - 1]).then(pl.lit(rank, pl.Int32)).otherwise(tier)
    stats = stats.with_columns(tier.fill_null(0).alias("tier")).sort("symbol")

    limits = {"lookback": lookback, "min_price": min_price, "max_price": max_price,
              "min_dollar_volume": min_dollar_volume, "max_spread": max_spread}  # fmt: skip
    reasons = [_reasons(row, limits) for row in stats.select(
        "bars", "last_price", "avg_dollar_volume", "spread").iter_rows(named=True)]  # fmt: skip
    return (
        stats.with_columns(
            pl.Series("reason", reasons, pl.Utf8),
            pl.Series("eligible", [not r for r in reasons], pl.Boolean),
        )
        .select(list(SCREEN_SCHEMA))
        .cast(SCREEN_SCHEMA)
    )  # type: ignore[arg-type]


def _reasons(row: dict[str, Any], limits: dict[str, float]) -> str:
    """Every failing criterion of one symbol, '; '-joined ("" when eligible)."""
    if row["bars"] == 0:
        return "no bars up to as_of"
    out = []
    if row["bars"] < limits["lookback"]:
        out.append(f"only {row['bars']} bars of {limits['lookback']}")
    price = row["last_price"]
    if not price >= limits["min_price"]:
        out.append(f"price {price:.2f} below {limits['min_price']:.2f}")
    elif price > limits["max_price"]:
        out.append(f"price {price:.2f} above {limits['max_price']:.2f}")
    adv = row["avg_dollar_volume"]
    if not adv >= limits["min_dollar_volume"]:
        out.append(f"average dollar volume {_money(adv)} below {_money(limits['min_dollar_volume'])}")
    spread = row["spread"]
    if spread is not None and not spread < limits["max_spread"]:
        out.append(f"spread {spread * 1e4:.1f} bps not below {limits['max_spread'] * 1e4:.1f} bps")
    return "; ".join(out)


def _quoted_spreads(quotes: pl.DataFrame, stats: pl.DataFrame, as_of_ns: int) -> pl.DataFrame:
    """Median relative spread per symbol of the valid quotes inside the symbol's bar window (from its first
    counted bar to as_of); crossed, one-sided or non-finite quotes are ignored."""
    missing = {"symbol", "event_time_ns", "bid", "ask"} - set(quotes.columns)
    if missing:
        raise ValueError(f"quotes lack column(s) {', '.join(sorted(missing))}")
    mid = (pl.col("bid") + pl.col("ask")) / 2.0
    valid = (
        pl.col("bid").is_finite() & pl.col("ask").is_finite() & (pl.col("bid") > 0) & (pl.col("ask") >= pl.col("bid"))
    )
    return (
        quotes.filter(pl.col("event_time_ns") <= as_of_ns)
        .join(stats.select("symbol", "_window_start"), on="symbol")
        .filter((pl.col("event_time_ns") >= pl.col("_window_start")) & valid)
        .group_by("symbol")
        .agg(((pl.col("ask") - pl.col("bid")) / mid).median().alias("_quoted_spread"))
    )


class UniverseRefresh:
    """Decides when the universe is refreshed: once per exchange session day.

    The session day of a time is the session in progress or the next to open, so the refresh for Monday
    falls due as soon as Friday's session has closed and is not due again until Monday closes.
    """

    def __init__(self, calendar: str = "XNYS") -> None:
        self.sessions = exchange_sessions(calendar)
        self.last_session: np.datetime64 | None = None

    def due(self, now_ns: int) -> bool:
        return self.last_session is None or self.sessions.session_day(now_ns) != self.last_session

    def mark_done(self, now_ns: int) -> None:
        self.last_session = self.sessions.session_day(now_ns)

    def snapshot(self) -> str | None:
        return None if self.last_session is None else str(self.last_session)

    def restore(self, state: str | None) -> None:
        self.last_session = None if state is None else np.datetime64(state, "D")
