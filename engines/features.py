"""Features: streaming indicators over every symbol, one feature vector per bar.

Consumes: `bar`. Produces: `feature_vector`.

Constant work per bar: each indicator keeps per-symbol state (ring buffers, running sums, averages) in
arrays updated by numba kernels, so a live batch of one bar time and a backtest batch of thousands give
the same vectors. Values are NaN while an indicator warms up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from utp.core.config import FeaturesConfig
from utp.core.indicators import Ema, Returns, Rsi, Sma
from utp.core.runtime import Engine, EngineContext, Input
from utp.core.universe import Universe


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Names and parameters of the feature set; its hash is stamped on every vector (and model)."""

    config: FeaturesConfig

    @property
    def names(self) -> tuple[str, ...]:
        c = self.config
        return (
            "close",
            *(f"ret_{h}" for h in c.return_horizons),
            "log_ret_1",
            *(f"sma_{p}" for p in c.sma_periods),
            *(f"close_to_sma_{p}" for p in c.sma_periods),
            *(f"ema_{p}" for p in c.ema_periods),
            f"rsi_{c.rsi_period}",
        )

    @property
    def version(self) -> str:
        payload = json.dumps({"names": self.names, "config": _plain(self.config)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _plain(config: FeaturesConfig) -> dict[str, Any]:
    return {f: getattr(config, f) for f in config.__struct_fields__}


class FeatureEngine(Engine):
    name = "features"
    inputs = (Input("bar"),)
    outputs = ("feature_vector",)

    def __init__(self, config: FeaturesConfig, universe: Universe) -> None:
        self.config = config
        self.universe = universe
        self.spec = FeatureSpec(config)
        n = len(universe)
        horizons = tuple(sorted({1, *config.return_horizons}))
        self.returns = Returns(n, horizons)
        self._horizon_column = {h: horizons.index(h) for h in horizons}
        self.smas = {p: Sma(n, p) for p in config.sma_periods}
        self.emas = {p: Ema(n, p) for p in config.ema_periods}
        self.rsi = Rsi(n, config.rsi_period)

    def compute(self, bars: pl.DataFrame, sid: np.ndarray | None = None) -> pl.DataFrame:
        """Feature vectors for bars (sorted by time, symbols in the universe), advancing the streaming state."""
        sid = self.universe.indices(bars["symbol"]) if sid is None else sid
        close = bars["close"].to_numpy()
        rets = self.returns.update(sid, close)
        values: dict[str, np.ndarray] = {"close": close}
        for h in self.config.return_horizons:
            values[f"ret_{h}"] = rets[:, self._horizon_column[h]]
        values["log_ret_1"] = np.log1p(rets[:, self._horizon_column[1]])
        smas = {p: sma.update(sid, close) for p, sma in self.smas.items()}
        values.update({f"sma_{p}": v for p, v in smas.items()})
        values.update({f"close_to_sma_{p}": close / v - 1.0 for p, v in smas.items()})
        values.update({f"ema_{p}": ema.update(sid, close) for p, ema in self.emas.items()})
        values[f"rsi_{self.config.rsi_period}"] = self.rsi.update(sid, close)
        return bars.select(
            ("feature_vector/" + pl.col("correlation_id")).alias("event_id"),
            "correlation_id",
            "event_time_ns",
            "symbol",
            pl.lit(self.spec.version).alias("feature_set_version"),
        ).with_columns(pl.Series(name, values[name]) for name in self.spec.names)

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        bars, sid, unknown = self.universe.split(frames["bar"])
        if unknown:
            ctx.log.warning("dropped %d bars of symbols outside the universe", unknown)
            ctx.count_rejected(unknown)
        ctx.emit("feature_vector", self.compute(bars, sid))

    def snapshot(self) -> Any:
        return {"returns": self.returns, "smas": self.smas, "emas": self.emas, "rsi": self.rsi}

    def restore(self, state: Any) -> None:
        self.returns, self.smas, self.emas, self.rsi = state["returns"], state["smas"], state["emas"], state["rsi"]
