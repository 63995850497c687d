"""Lean's alpha models: RSI hysteresis, the EMA-cross first-ready bar, insight fields."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from utp.core.config import AlphaConfig, EmaCrossAlphaConfig, MacdAlphaConfig, RsiAlphaConfig
from utp.core.universe import Universe
from utp.engines.alpha import _CANCEL, AlphaEngine, _ema_cross_insights, _macd_insights, _rsi_insights
from utp.storage.datasets import dataset
from utp.v1 import events_pb2 as pb

UP, DOWN = pb.DIRECTION_UP, pb.DIRECTION_DOWN


def rsi_directions(values: list[float], ready: list[bool] | None = None) -> list[int]:
    n = len(values)
    out = np.empty(n, np.int64)
    _rsi_insights(
        np.zeros(n, np.int32), np.array(values, float), np.array(ready or [True] * n), np.zeros(1, np.int64),
        70.0, 30.0, 65.0, 35.0, out,
    )  # fmt: skip
    return out.tolist()


def test_rsi_trips_high_once_and_resets_only_below_65() -> None:
    # 71 trips high (DOWN); 69 and 72 stay tripped (69 is not below 65); 60 resets; 75 trips again.
    assert rsi_directions([50, 71, 69, 72, 60, 75]) == [0, DOWN, 0, 0, 0, DOWN]


def test_rsi_trips_low_once_and_resets_only_above_35() -> None:
    assert rsi_directions([50, 29, 31, 28, 36, 25]) == [0, UP, 0, 0, 0, UP]


def test_rsi_thresholds_are_strict_at_every_edge() -> None:
    # Exactly 70 or 30 does not trip (Lean: > 70, < 30).
    assert rsi_directions([70, 30, 50]) == [0, 0, 0]
    # Tripped high, exactly 65 is not below 65: still tripped, so 71 emits nothing; 64.99 resets.
    assert rsi_directions([71, 65, 71, 64.99, 71]) == [DOWN, 0, 0, 0, DOWN]
    # Tripped low, exactly 35 is not above 35: still tripped; 35.01 resets.
    assert rsi_directions([29, 35, 29, 35.01, 29]) == [UP, 0, 0, 0, UP]


def test_rsi_goes_straight_from_low_to_high() -> None:
    assert rsi_directions([29, 71, 29]) == [UP, DOWN, UP]


def test_rsi_states_reached_during_warm_up_emit_nothing_later() -> None:
    # Lean runs the state machine on unready values: tripped high while warming up, still high when
    # ready -> no insight (the state did not change).
    assert rsi_directions([75, 80, 72, 60, 71], ready=[False, False, True, True, True]) == [0, 0, 0, 0, DOWN]


def ema_cross(fast: list[float], slow: list[float], fast_ready: list[bool], slow_ready: list[bool], lean: bool) -> list[int]:
    n = len(fast)
    out = np.empty(n, np.int64)
    _ema_cross_insights(
        np.zeros(n, np.int32), np.array(fast, float), np.array(fast_ready), np.array(slow, float), np.array(slow_ready),
        np.zeros(1, np.bool_), np.zeros(1, np.bool_), lean, out,
    )  # fmt: skip
    return out.tolist()


def test_ema_cross_lean_first_ready_bar() -> None:
    # Lean master: the slow EMA reads 0 until ready while the fast one is ready, so "fast over slow" is
    # already true on the first ready bar: slow > fast there emits DOWN, fast > slow emits nothing.
    fast_ready, slow_ready = [False, True, True, True], [False, False, True, True]
    assert ema_cross([0, 10, 10, 12], [0, 0, 11, 11], fast_ready, slow_ready, lean=True) == [0, 0, DOWN, UP]
    assert ema_cross([0, 10, 12, 12], [0, 0, 11, 11], fast_ready, slow_ready, lean=True) == [0, 0, 0, 0]


def test_ema_cross_ignores_ties() -> None:
    ready = [True] * 4
    # fast == slow is neither over nor under: no insight, and the next strict cross still counts.
    assert ema_cross([10, 10, 11, 10], [11, 10, 10, 10.5], ready, ready, lean=True) == [0, 0, UP, DOWN]


def test_ema_cross_without_the_quirk_starts_quietly() -> None:
    fast_ready, slow_ready = [False, True, True, True, True], [False, False, True, True, True]
    assert ema_cross([0, 10, 10, 12, 10], [0, 0, 11, 11, 11], fast_ready, slow_ready, lean=False) == [0, 0, 0, UP, DOWN]


@pytest.fixture(scope="module")
def goog_bars() -> pl.DataFrame:
    from utp.core.ids import correlation_id_expr

    return dataset("goog").bars().with_columns(correlation_id_expr().alias("correlation_id"))


def test_alpha_engine_emits_lean_insights_on_goog(goog_bars: pl.DataFrame) -> None:
    engine = AlphaEngine(AlphaConfig(), Universe(["GOOG"]))
    signals = engine.insights(goog_bars)
    assert signals.height > 20
    assert set(signals["source_model"]) == {"rsi", "ema_cross", "macd"}
    assert signals["confidence"].null_count() == signals.height  # Lean's models give no confidence
    insights = signals.filter(~pl.col("cancel"))
    periods = dict(insights.group_by("source_model").agg(pl.col("period_bars").first()).iter_rows())
    assert periods == {"rsi": 14, "ema_cross": 12, "macd": 12}
    cancels = signals.filter(pl.col("cancel"))
    assert cancels.height > 0 and set(cancels["source_model"]) == {"macd"}
    assert (cancels["direction"] == pb.DIRECTION_FLAT).all() and (cancels["period_bars"] == 0).all()
    assert signals["event_time_ns"].is_sorted()
    # An EMA-cross model alternates: two UPs never follow each other.
    ema = signals.filter(pl.col("source_model") == "ema_cross")["direction"].to_list()
    assert all(a != b for a, b in zip(ema, ema[1:], strict=False))


def test_disabled_models_are_silent(goog_bars: pl.DataFrame) -> None:
    config = AlphaConfig(rsi=RsiAlphaConfig(enabled=False), ema_cross=EmaCrossAlphaConfig(enabled=True),
                         macd=MacdAlphaConfig(enabled=False))  # fmt: skip
    signals = AlphaEngine(config, Universe(["GOOG"])).insights(goog_bars)
    assert set(signals["source_model"]) == {"ema_cross"}


def macd_directions(signal: list[float], close: list[float], threshold: float = 0.01) -> list[int]:
    n = len(signal)
    out = np.empty(n, np.int64)
    _macd_insights(
        np.zeros(n, np.int32), np.array(signal), np.array(close), np.zeros(1, np.int64), np.zeros(1, np.bool_),
        threshold, out,
    )  # fmt: skip
    return out.tolist()


def test_macd_emits_on_direction_changes_and_flat_cancels() -> None:
    close = [100.0] * 8
    # signal/price: 0 (flat: nothing open, nothing to cancel), 2% up, 1.5% up (unchanged), 0.5% flat (cancel),
    # -2% down, 0 flat (cancel), 0 flat (unchanged), 1% exactly (not above the threshold: flat, unchanged)
    signal = [0.0, 2.0, 1.5, 0.5, -2.0, 0.0, 0.0, 1.0]
    assert macd_directions(signal, close) == [0, UP, 0, _CANCEL, DOWN, _CANCEL, 0, 0]


def test_macd_skips_a_zero_price_and_honours_its_threshold() -> None:
    assert macd_directions([5.0, 5.0, 5.0], [0.0, 100.0, 100.0]) == [0, UP, 0]
    assert macd_directions([0.6, -0.6], [100.0, 100.0], threshold=0.005) == [UP, DOWN]


def mean_reversion(z: list[float], rsi: list[float], close: list[float], flatten: list[bool] | None = None) -> list[int]:
    from utp.engines.alpha import _mean_reversion_insights

    n = len(z)
    out = np.empty(n, np.int64)
    _mean_reversion_insights(
        np.zeros(n, np.int32), np.array(close, float), np.array(z, float), np.array(rsi, float), np.full(n, 2.0),
        np.array(flatten or [False] * n), np.zeros(1, np.int64), np.zeros(1), np.zeros(1),
        2.0, 0.5, 70.0, 30.0, 1.5, out,
    )  # fmt: skip
    return out.tolist()


def test_mean_reversion_enters_on_stretched_z_with_rsi_and_exits_near_vwap() -> None:
    # z -2.5 without RSI confirmation: nothing; with RSI 25: UP; z -1 holds; z -0.4: back near VWAP, exit.
    assert mean_reversion([-2.5, -2.5, -1.0, -0.4], [40, 25, 35, 45], [100, 100, 101, 102]) == [0, UP, 0, _CANCEL]
    # Short side: z +2.1 with RSI 75: DOWN; the ATR stop (1.5 x 2 = 3 above entry) exits at 103.
    assert mean_reversion([2.1, 1.5, 1.5], [75, 60, 60], [100, 102.9, 103.0]) == [DOWN, 0, _CANCEL]


def test_mean_reversion_flattens_at_the_session_end_and_waits_for_the_next() -> None:
    assert mean_reversion([-2.5, -1.5, -2.5], [25, 25, 25], [100, 100, 100], [False, True, True]) == [UP, _CANCEL, 0]


def trend_following(fast: list[float], slow: list[float], close: list[float], low: list[float], high: list[float],
                    adx: list[float]) -> list[int]:  # fmt: skip
    from utp.engines.alpha import _trend_following_insights

    n = len(fast)
    out = np.empty(n, np.int64)
    _trend_following_insights(
        np.zeros(n, np.int32), np.array(close, float), np.array(high, float), np.array(low, float), np.array(fast, float),
        np.array(slow, float), np.array(adx, float), np.full(n, 1.0), np.zeros(1, np.bool_), np.zeros(1, np.int64), np.zeros(1, np.int64),
        np.zeros(1), 20.0, 3.0, out,
    )  # fmt: skip
    return out.tolist()


def test_trend_following_waits_for_a_pullback_after_a_strong_cross_and_trails_its_stop() -> None:
    fast = [9, 11, 11.5, 12, 12.5, 13]
    slow = [10, 10, 10.2, 10.4, 10.6, 10.8]
    close = [9, 12, 12, 14, 15, 11.9]  # bar 2 pulls back to the fast EMA (low 11.4); best close 15, stop 12
    low = [9, 11.8, 11.4, 13.5, 14.5, 11.5]
    high = [10, 12.5, 12.5, 14.5, 15.5, 12.5]
    adx = [15, 25, 25, 25, 25, 25]
    assert trend_following(fast, slow, close, low, high, adx) == [0, 0, UP, 0, 0, _CANCEL]


def test_trend_following_ignores_weak_crosses_and_exits_on_the_opposite_cross() -> None:
    weak = trend_following([9, 11, 11.5], [10, 10, 10.2], [9, 12, 12], [9, 11.8, 11.4], [10, 12.5, 12.5], [15, 18, 18])
    assert weak == [0, 0, 0]
    crossing = trend_following(
        [9, 11, 11.5, 10.0], [10, 10, 10.2, 10.3], [9, 12, 12, 10.25], [9, 11.8, 11.4, 10.1], [10, 12.5, 12.5, 10.5],
        [15, 25, 25, 25],
    )  # fmt: skip
    assert crossing == [0, 0, UP, _CANCEL]


def test_the_seed_strategies_trade_real_and_synthetic_bars() -> None:
    from utp.core.ids import correlation_id_expr
    from utp.storage.datasets import synthetic_bars

    config = AlphaConfig(rsi=RsiAlphaConfig(enabled=False), ema_cross=EmaCrossAlphaConfig(enabled=False),
                         macd=MacdAlphaConfig(enabled=False))  # fmt: skip
    import msgspec

    swing = msgspec.structs.replace(config, trend_following=msgspec.structs.replace(config.trend_following, enabled=True))
    goog = dataset("goog").bars().with_columns(correlation_id_expr().alias("correlation_id"))
    signals = AlphaEngine(swing, Universe(["GOOG"])).insights(goog)
    assert set(signals["source_model"]) == {"trend_following"}
    entries, exits = signals.filter(~pl.col("cancel")), signals.filter(pl.col("cancel"))
    assert entries.height >= 3 and abs(entries.height - exits.height) <= 1  # every entry is closed (but the last)

    intraday = msgspec.structs.replace(config, mean_reversion=msgspec.structs.replace(config.mean_reversion, enabled=True))
    minutes = synthetic_bars(390 * 20).with_columns(correlation_id_expr().alias("correlation_id"))
    signals = AlphaEngine(intraday, Universe(["SYN"])).insights(minutes)
    entries, exits = signals.filter(~pl.col("cancel")), signals.filter(pl.col("cancel"))
    assert entries.height >= 5 and abs(entries.height - exits.height) <= 1
    minute = (entries["event_time_ns"] // 60_000_000_000) % 1440
    assert (minute < config.mean_reversion.flatten_minute_utc).all()  # no entries at the session's end
    # Whatever happens, a session never ends with a position still open.
    by_day = signals.with_columns((pl.col("event_time_ns") // 86_400_000_000_000).alias("day"))
    net = by_day.group_by("day").agg((~pl.col("cancel")).sum().alias("entries"), pl.col("cancel").sum().alias("exits"))
    assert (net["entries"] == net["exits"]).all()
