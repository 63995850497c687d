"""Features: the platform's feature set for every bar of every symbol, streaming.

Consumes: `bar`. Produces: `feature_vector` (one per bar; NaN while a feature warms up).

The definition lives in `core.features`, shared with research: `compute_features` gives the same
vectors in batch, so a model trained on research features sees exactly what this engine computes live.
Every vector carries the feature set's version hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from utp.core.config import FeaturesConfig
from utp.core.features import Benchmark, FeatureSpec, StreamingFeatures
from utp.core.runtime import Engine, EngineContext, Input
from utp.core.universe import Universe


def _float_column(name: str, values: np.ndarray) -> pl.Series:
    return pl.Series(name, values if values.dtype == np.float64 else values.astype(np.float64))


class FeatureEngine(Engine):
    name = "features"
    inputs = (Input("bar"),)
    outputs = ("feature_vector",)

    def __init__(self, config: FeaturesConfig, universe: Universe, benchmark: Benchmark | None = None) -> None:
        self.universe = universe
        self.features = StreamingFeatures(config, universe, benchmark)
        self.spec: FeatureSpec = self.features.spec

    def compute(self, bars: pl.DataFrame, sid: np.ndarray | None = None) -> pl.DataFrame:
        """Feature vectors for bars (sorted by time, symbols in the universe; pass their indices if known),
        advancing the state."""
        if sid is None:
            bars, sid, _ = self.universe.split(bars)
        values = self.features.update(bars, sid)
        return bars.select(
            ("feature_vector/" + pl.col("correlation_id")).alias("event_id"),
            "correlation_id",
            "event_time_ns",
            "symbol",
            pl.lit(self.spec.version).alias("feature_set_version"),
        ).hstack([_float_column(name, values[name]) for name in self.spec.names])  # no query: ~0.3 ms less

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        bars, sid, unknown = self.universe.split(frames["bar"])
        if unknown:
            ctx.log.warning("dropped %d bars of symbols outside the universe", unknown)
            ctx.count_rejected(unknown)
        ctx.emit("feature_vector", self.compute(bars, sid))

    def snapshot(self) -> Any:
        return self.features.provider.states

    def restore(self, state: Any) -> None:
        self.features.provider.states = state
