"""The feature set: research (batch) and live (streaming) vectors are equal bar by bar."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from utp.core.config import FeaturesConfig, load_config
from utp.core.features import Benchmark, FeatureSpec, StreamingFeatures, compute_features
from utp.core.universe import Universe
from utp.storage.datasets import dataset, load_sp500_index, synthetic_bars

SYMBOLS = ["AAPL", "JPM", "XOM", "KO", "PFE"]


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    # skfolio's stocks have closes only, so give them GOOG-like ranges: real multi-symbol timing, and
    # OHLC spreads from the synthetic generator so range-based features are exercised.
    closes = dataset("sp500").bars(SYMBOLS, end=None).filter(pl.col("event_time_ns") >= 1_104_537_600_000_000_000)
    noise = synthetic_bars(closes.height, seed=3)
    scale = closes["close"] / noise["close"]
    return closes.with_columns(
        (noise["open"] * scale).alias("open"),
        pl.max_horizontal(noise["high"] * scale, pl.col("close")).alias("high"),
        pl.min_horizontal(noise["low"] * scale, pl.col("close")).alias("low"),
        noise["volume"].alias("volume"),
    ).with_columns(
        pl.max_horizontal("high", "open").alias("high"), pl.min_horizontal("low", "open").alias("low")
    )


@pytest.fixture(scope="module")
def benchmark() -> Benchmark:
    return Benchmark.from_frame(load_sp500_index())


def stream(bars: pl.DataFrame, config: FeaturesConfig, benchmark: Benchmark, batch_times: list[int]) -> pl.DataFrame:
    """Feed the streaming features batch by batch, each batch a run of complete bar times."""
    features = StreamingFeatures(config, Universe(SYMBOLS), benchmark)
    times = bars["event_time_ns"].unique(maintain_order=True).to_list()
    out, start, i = [], 0, 0
    while start < len(times):
        size = batch_times[i % len(batch_times)]
        chunk = bars.filter(pl.col("event_time_ns").is_between(times[start], times[min(start + size, len(times)) - 1]))
        values = features.update(chunk)
        out.append(chunk.select("event_time_ns", "symbol").with_columns(
            pl.Series(n, values[n], pl.Float64) for n in features.spec.names))  # fmt: skip
        start, i = start + size, i + 1
    return pl.concat(out)


def test_the_feature_set_is_big_enough_and_versioned() -> None:
    spec = FeatureSpec(FeaturesConfig())
    assert len(spec.names) >= 30 and len(set(spec.names)) == len(spec.names)
    for category in ("ret_20", "rsi_14", "volume_zscore_20", "garman_klass_vol_20", "cs_spread_20",
                     "rank_ret_20", "rs_benchmark_20", "days_to_month_end", "vwap_distance"):  # fmt: skip
        assert category in spec.names
    assert spec.version == FeatureSpec(FeaturesConfig()).version
    assert spec.version != FeatureSpec(FeaturesConfig(cci_period=10)).version


def test_research_and_live_vectors_are_equal_bar_by_bar(bars: pl.DataFrame, benchmark: Benchmark) -> None:
    config = FeaturesConfig()
    research = compute_features(bars, config, benchmark=benchmark)
    for batch_times in ([1], [1000], [7, 1, 250, 3]):
        live = stream(bars, config, benchmark, batch_times)
        for name in FeatureSpec(config).names:
            a, b = research[name].to_numpy(), live[name].to_numpy()
            assert np.array_equal(a, b, equal_nan=True), f"{name} differs (batches of {batch_times})"
    assert research.height == bars.height
    assert research.select(pl.all().exclude("event_time_ns", "symbol").is_nan().sum()).row(0)  # warm-ups exist
    late = research.filter(pl.col("event_time_ns") > research["event_time_ns"][2000])
    assert late.select(pl.all().exclude("event_time_ns", "symbol").is_nan().any()).row(0) == (False,) * (
        len(research.columns) - 2
    ), "every feature is warm after a few hundred bars"


def test_features_never_look_ahead(bars: pl.DataFrame, benchmark: Benchmark) -> None:
    cut = bars["event_time_ns"].unique(maintain_order=True)[1500]
    past = bars.filter(pl.col("event_time_ns") <= cut)
    shuffled_future = bars.filter(pl.col("event_time_ns") > cut).with_columns(
        pl.col(c).shuffle(seed=1) for c in ("open", "high", "low", "close", "volume")
    )
    changed = pl.concat([past, shuffled_future])
    a = compute_features(bars, FeaturesConfig(), benchmark=benchmark).filter(pl.col("event_time_ns") <= cut)
    b = compute_features(changed, FeaturesConfig(), benchmark=benchmark).filter(pl.col("event_time_ns") <= cut)
    assert a.equals(b)


def test_cross_sectional_ranks_relative_strength_and_calendar(bars: pl.DataFrame, benchmark: Benchmark) -> None:
    research = compute_features(bars, FeaturesConfig(), benchmark=benchmark)
    row_time = research["event_time_ns"][3000]
    at = research.filter(pl.col("event_time_ns") == row_time)
    expected = at["ret_20"].rank("average").to_numpy()
    assert np.allclose(at["rank_ret_20"].to_numpy(), (expected - 1) / (len(expected) - 1))
    index = load_sp500_index().filter(pl.col("event_time_ns") <= row_time)["close"].to_numpy()
    assert np.allclose(at["rs_benchmark_20"], at["ret_20"] - (index[-1] / index[-21] - 1))
    day = pl.Series([row_time]).cast(pl.Datetime("ns")).dt
    assert at["day_of_week"][0] == day.weekday()[0] - 1  # polars counts Monday as 1
    assert at["month"][0] == day.month()[0]
    month_end = pl.Series([row_time]).cast(pl.Datetime("ns")).dt.month_end().dt.day()[0]
    assert at["days_to_month_end"][0] == month_end - day.day()[0]


def test_unknown_rank_features_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown features: nope"):
        FeatureSpec(FeaturesConfig(rank_features=("nope",))).names


def test_defaults_validate_against_the_rest_of_the_configuration() -> None:
    assert load_config(environ={}).features == FeaturesConfig()
