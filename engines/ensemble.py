"""Ensemble: a weighted vote of the active alpha signals per symbol, with a minimum-confidence gate.

Consumes: `alpha_signal`, `feature_vector`. Produces: `scored_signal`.

Each source (rsi, ema_cross, later tft and macd) has a configured weight. A signal stays active for its
period in bars of its symbol (counted on the feature vectors, one per bar), as Lean's insights do.
Sources without an active signal drop out and the weights of the rest renormalise:

    score = sum(w_i * d_i * c_i) / sum(w_i)   over active sources,  d = +1 up, -1 down, 0 flat

where c_i is the signal's confidence (1 when the model gives none, as Lean's RSI and EMA-cross models
do). A signal with `cancel` withdraws its source's active signal. The ensemble confidence is |score|; the direction is UP/DOWN by the score's sign when the confidence
reaches `min_confidence`, FLAT otherwise. A ScoredSignal is emitted when the set of active votes of a
symbol changes (a new signal or an expiry), carrying every component's vote and the market regime
(bull when close > SMA50 and SMA20 > SMA50, bear when both are below, sideways otherwise; read from the
features close_to_sma_50 and sma_20_to_sma_50).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from utp.core.columns import formatted, take
from utp.core.config import EnsembleConfig
from utp.core.kernels import entry
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input
from utp.core.universe import Universe
from utp.v1 import events_pb2 as pb

_DIRECTION_SIGN = {pb.DIRECTION_UP: 1, pb.DIRECTION_DOWN: -1, pb.DIRECTION_FLAT: 0}
# The alpha_signal columns the vote reads; a model's predictions are turned into rows of these.
_VOTES = pl.DataFrame(schema={k: KINDS["alpha_signal"].schema[k] for k in (
    "event_time_ns", "symbol", "source_model", "direction", "confidence", "period_bars", "cancel")})


def _lookup(values: pl.Series, table: Mapping[Any, int], default: int) -> np.ndarray:
    """int64 `table[value]` per value (`default` when absent)."""
    if values.len() <= 2048:  # signals are sparse: plain lookups beat a columnar call's fixed cost
        return np.fromiter((table.get(v, default) for v in values.to_list()), np.int64, values.len())
    return values.replace_strict(table, default=default, return_dtype=pl.Int64).to_numpy()


def _confidences(confidence: pl.Series) -> np.ndarray:
    """Each signal's confidence, 1 where its model gives none (null; Lean's RSI and EMA-cross models never do)."""
    nulls = confidence.null_count()
    if nulls == 0:
        return confidence.to_numpy()
    if nulls == confidence.len():
        return np.ones(nulls)
    return confidence.fill_null(1.0).to_numpy()


@njit(cache=True)
def _regime(close_to_slow, fast_to_slow, volatility, max_volatility):  # noqa: ANN001
    """From the features close/SMA_slow - 1, SMA_fast/SMA_slow - 1 and the per-bar realised volatility."""
    if np.isnan(close_to_slow) or np.isnan(fast_to_slow):
        return 0  # REGIME_UNSPECIFIED
    if close_to_slow > 0.0 and fast_to_slow > 0.0:
        if max_volatility > 0.0 and volatility > max_volatility:
            return 3  # too noisy an uptrend: REGIME_SIDEWAYS
        return 1  # REGIME_BULL
    if close_to_slow < 0.0 and fast_to_slow < 0.0:
        return 2  # REGIME_BEAR
    return 3  # REGIME_SIDEWAYS


@njit(cache=True)
def _activate(j, asid, acomp, asign, aconf, aperiod, acancel, active, sign, conf, expires, bars_seen):  # noqa: ANN001
    s, m = asid[j], acomp[j]
    if m < 0:  # a source without a weight has no vote
        return
    if acancel[j]:  # the source withdrew its view
        active[s, m] = False
    else:
        active[s, m] = True
        sign[s, m] = asign[j]
        conf[s, m] = aconf[j]
        expires[s, m] = bars_seen[s] + aperiod[j]


@entry
@njit(cache=True)
def _vote(  # noqa: ANN001, PLR0913 - a kernel takes its state as arrays
    ftime, fsid, fclose_to_slow, ffast_to_slow, fvolatility, max_volatility,
    atime, asid, acomp, asign, aconf, aperiod, acancel,
    weights,
    active, sign, conf, expires, bars_seen, last_active, last_sign, last_conf,
    out_row, out_active, out_sign, out_conf, out_score, out_regime,
):  # fmt: skip
    n_components = weights.shape[0]
    n_out = 0
    j = 0
    i = 0
    while i < ftime.shape[0]:
        t = ftime[i]
        end = i
        while end < ftime.shape[0] and ftime[end] == t:
            bars_seen[fsid[end]] += 1
            end += 1
        # Signals of this bar start counting their period here: active for bars t .. t + period - 1.
        while j < atime.shape[0] and atime[j] <= t:
            _activate(j, asid, acomp, asign, aconf, aperiod, acancel, active, sign, conf, expires, bars_seen)
            j += 1
        for k in range(i, end):
            s = fsid[k]
            changed = False
            weight_sum = 0.0
            vote = 0.0
            for m in range(n_components):
                if active[s, m] and bars_seen[s] >= expires[s, m]:
                    active[s, m] = False
                if active[s, m]:
                    weight_sum += weights[m]
                    vote += weights[m] * sign[s, m] * conf[s, m]
                if active[s, m] != last_active[s, m] or (
                    active[s, m] and (sign[s, m] != last_sign[s, m] or conf[s, m] != last_conf[s, m])
                ):
                    changed = True
            if not changed:
                continue
            score = vote / weight_sum if weight_sum > 0.0 else 0.0
            for m in range(n_components):
                last_active[s, m] = active[s, m]
                last_sign[s, m] = sign[s, m]
                last_conf[s, m] = conf[s, m]
                out_active[n_out, m] = active[s, m]
                out_sign[n_out, m] = sign[s, m]
                out_conf[n_out, m] = conf[s, m]
            out_row[n_out] = k
            out_score[n_out] = score
            out_regime[n_out] = _regime(fclose_to_slow[k], ffast_to_slow[k], fvolatility[k], max_volatility)
            n_out += 1
        i = end
    # Signals for bars without a feature vector (none in a healthy graph) still update the state.
    while j < atime.shape[0]:
        _activate(j, asid, acomp, asign, aconf, aperiod, acancel, active, sign, conf, expires, bars_seen)
        j += 1
    return n_out


class EnsembleEngine(Engine):
    name = "ensemble"
    outputs = ("scored_signal",)

    def __init__(self, config: EnsembleConfig, universe: Universe, models: tuple[str, ...] = ()) -> None:
        self.config = config
        self.universe = universe
        self.sources = tuple(config.weights)
        # Served models vote under their names; without one that has a weight, predictions are not read.
        self.models = tuple(m for m in models if m in config.weights)
        self.inputs = (Input("alpha_signal"), Input("feature_vector"))
        if self.models:
            self.inputs = (*self.inputs, Input("prediction"))
        self._source_names = pl.Series(self.sources, dtype=pl.Utf8)
        self.weights = np.array([config.weights[s] for s in self.sources], np.float64)
        self._component = {s: i for i, s in enumerate(self.sources)}
        n, m = len(universe), len(self.sources)
        self.active = np.zeros((n, m), np.bool_)
        self.sign = np.zeros((n, m), np.int64)
        self.conf = np.zeros((n, m))
        self.expires = np.zeros((n, m), np.int64)
        self.bars_seen = np.zeros(n, np.int64)
        self.last_active = np.zeros((n, m), np.bool_)
        self.last_sign = np.zeros((n, m), np.int64)
        self.last_conf = np.zeros((n, m))
        fast, slow = config.regime_sma_fast, config.regime_sma_slow
        self.close_to_slow_column = f"close_to_sma_{slow}"
        self.fast_to_slow_column = f"sma_{fast}_to_sma_{slow}"
        self.volatility_column = config.regime_volatility_feature if config.regime_max_volatility > 0 else ""
        columns = ("close", self.close_to_slow_column, self.fast_to_slow_column, *filter(None, [self.volatility_column]))
        self._needed = frozenset(columns)
        self._no_features = pl.DataFrame(schema={**KINDS["feature_vector"].schema, **dict.fromkeys(columns, pl.Float64)})
        # Confidence multiplier by Regime value (UNSPECIFIED, BULL, BEAR, SIDEWAYS).
        scale = config.regime_scale
        self.regime_scale = np.array([1.0, scale["bull"], scale["bear"], scale["sideways"]])

    def model_votes(self, predictions: pl.DataFrame) -> pl.DataFrame:
        """Predictions as votes of their models: UP/DOWN when the median forecast of the model's signal
        horizon clears `min_expected_return`, FLAT (a vote for no position) otherwise; each holds one bar."""
        if not predictions.height:
            return _VOTES.clear()
        q50 = (
            predictions.select("signal_horizon_bars", "forecasts")
            .with_row_index("_row")
            .explode("forecasts")
            .unnest("forecasts")
            .filter(pl.col("horizon_bars") == pl.col("signal_horizon_bars"))
        )
        median = np.full(predictions.height, np.nan)
        median[q50["_row"].to_numpy()] = q50["q50"].to_numpy()
        threshold = self.config.min_expected_return
        direction = np.where(median >= threshold, pb.DIRECTION_UP,
                             np.where(median <= -threshold, pb.DIRECTION_DOWN, pb.DIRECTION_FLAT))  # fmt: skip
        return predictions.select(
            "event_time_ns", "symbol", pl.col("model_name").alias("source_model"),
            pl.Series("direction", direction.astype(np.int32)), "confidence",
            pl.lit(1, pl.Int32).alias("period_bars"), pl.lit(False).alias("cancel"),
        )  # fmt: skip

    def score(
        self,
        alphas: pl.DataFrame,
        features: pl.DataFrame,
        alpha_sid: np.ndarray | None = None,
        feature_sid: np.ndarray | None = None,
    ) -> pl.DataFrame:
        """Scored signals for one time range of alpha signals and feature vectors (both time-sorted,
        symbols in the universe; pass their indices if known)."""
        missing = self._needed - set(features.columns)
        if missing:
            raise ValueError(f"feature vectors lack {', '.join(sorted(missing))}, needed for the regime")
        volatility = (features[self.volatility_column].to_numpy() if self.volatility_column
                      else np.zeros(features.height))  # fmt: skip
        acomp = _lookup(alphas["source_model"], self._component, -1)
        asign = _lookup(alphas["direction"], _DIRECTION_SIGN, 0)
        n_rows = features.height
        m = len(self.sources)
        out_row = np.empty(n_rows, np.int64)
        out_active = np.empty((n_rows, m), np.bool_)
        out_sign = np.empty((n_rows, m), np.int64)
        out_conf = np.empty((n_rows, m))
        out_score = np.empty(n_rows)
        out_regime = np.empty(n_rows, np.int64)
        n_out = _vote(
            features["event_time_ns"].to_numpy(),
            self.universe.indices(features["symbol"]) if feature_sid is None else feature_sid,
            features[self.close_to_slow_column].to_numpy(),
            features[self.fast_to_slow_column].to_numpy(),
            volatility,
            self.config.regime_max_volatility,
            alphas["event_time_ns"].to_numpy(),
            self.universe.indices(alphas["symbol"]) if alpha_sid is None else alpha_sid,
            acomp,
            asign,
            _confidences(alphas.get_column("confidence")),
            alphas["period_bars"].cast(pl.Int64).to_numpy(),
            alphas["cancel"].to_numpy(),
            self.weights,
            self.active, self.sign, self.conf, self.expires, self.bars_seen,
            self.last_active, self.last_sign, self.last_conf,
            out_row, out_active, out_sign, out_conf, out_score, out_regime,
        )  # fmt: skip
        return self._scored_frame(features, n_out, out_row, out_active, out_sign, out_conf, out_score, out_regime)

    def _scored_frame(  # noqa: PLR0913 - the kernel's outputs
        self, features: pl.DataFrame, n_out: int, out_row: np.ndarray, out_active: np.ndarray, out_sign: np.ndarray,
        out_conf: np.ndarray, out_score: np.ndarray, out_regime: np.ndarray,
    ) -> pl.DataFrame:  # fmt: skip
        """The kernel's votes as a scored_signal frame, built column by column."""
        if n_out == 0:
            return KINDS["scored_signal"].empty_frame()
        rows = out_row[:n_out]
        active = out_active[:n_out]
        regime = out_regime[:n_out]
        score = out_score[:n_out] * self.regime_scale[regime]
        confidence = np.abs(score)
        a, b = self.config.platt
        if a or b:
            confidence = 1.0 / (1.0 + np.exp(a * confidence + b))
        direction = np.where(
            (confidence >= self.config.min_confidence) & (score != 0.0),
            np.where(score > 0, pb.DIRECTION_UP, pb.DIRECTION_DOWN),
            pb.DIRECTION_FLAT,
        ).astype(np.int32)
        # Components: every source of every signal, the active ones first (in source order), as fixed-size
        # arrays cut down to each signal's active count.
        n, m = active.shape
        count = active.sum(axis=1)
        r_idx, c_idx = np.repeat(np.arange(n), m), np.argsort(~active, axis=1, kind="stable").ravel()
        weight_sum = (active * self.weights).sum(axis=1)
        sign_to_direction = np.array([pb.DIRECTION_DOWN, pb.DIRECTION_FLAT, pb.DIRECTION_UP], np.int32)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(weight_sum[r_idx] > 0, self.weights[c_idx] / weight_sum[r_idx], 0.0)
        direction_of = sign_to_direction[out_sign[:n_out][r_idx, c_idx] + 1]
        confidence_of = out_conf[:n_out][r_idx, c_idx]
        components, active_alphas = self._component_lists(c_idx, direction_of, confidence_of, weight, count)
        rows_taken = rows.astype(np.int64)
        correlation = take(features.get_column("correlation_id"), rows_taken)
        return KINDS["scored_signal"].frame({
            "event_id": formatted("event_id", "scored_signal/{}", correlation),
            "correlation_id": correlation,
            "event_time_ns": features.get_column("event_time_ns").to_numpy()[rows_taken],
            "symbol": take(features.get_column("symbol"), rows_taken),
            "components": components, "direction": direction, "confidence": confidence, "score": score,
            "active_alphas": active_alphas, "regime": regime.astype(np.int32),
            "reference_price": features.get_column("close").to_numpy()[rows_taken],
        }, n)  # fmt: skip

    def _component_lists(  # noqa: PLR0913 - the components' fields
        self, c_idx: np.ndarray, direction: np.ndarray, confidence: np.ndarray, weight: np.ndarray, count: np.ndarray,
    ) -> tuple[pl.Series, pl.Series]:  # fmt: skip
        """Each signal's components and active sources: row-major (signal, source) fields, the first `count`
        of each signal's in a list (fixed-size arrays cut down in one query: lists of structs built from Python
        objects cost far more)."""
        n, m = count.size, len(self.sources)
        source = take(self._source_names, c_idx)
        flat = pl.DataFrame([
            source.alias("source"), pl.Series("direction", direction, pl.Int32),
            pl.Series("confidence", confidence, pl.Float64), pl.Series("weight", weight, pl.Float64),
        ]).to_struct("components")  # fmt: skip
        lists = pl.DataFrame([
            flat.reshape((n, m)), source.reshape((n, m)).alias("active_alphas"), pl.Series("count", count),
        ]).select(pl.col("components", "active_alphas").arr.head(pl.col("count"), as_array=False))  # fmt: skip
        return lists.get_column("components"), lists.get_column("active_alphas")

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        alphas = frames.get("alpha_signal", KINDS["alpha_signal"].empty_frame())
        features = frames.get("feature_vector", self._no_features)
        predictions = frames.get("prediction")
        if predictions is not None and predictions.height:
            # The kernel reads the alpha columns below; a model's votes join them in time order.
            votes = self.model_votes(predictions)
            alphas = pl.concat([alphas.select(_VOTES.columns), votes], how="vertical").sort(
                "event_time_ns", maintain_order=True)
        alphas, alpha_sid, unknown_alphas = self.universe.split(alphas)
        features, feature_sid, unknown_features = self.universe.split(features)
        if unknown_alphas or unknown_features:
            ctx.log.warning("dropped %d rows of symbols outside the universe", unknown_alphas + unknown_features)
            ctx.count_rejected(unknown_alphas + unknown_features)
        ctx.emit("scored_signal", self.score(alphas, features, alpha_sid, feature_sid))

    _STATE = ("active", "sign", "conf", "expires", "bars_seen", "last_active", "last_sign", "last_conf")

    def snapshot(self) -> Any:
        return {k: getattr(self, k) for k in self._STATE}

    def restore(self, state: Any) -> None:
        for key in self._STATE:
            setattr(self, key, state[key])
