"""The feature set: defined once, computed in batch for research and streaming for live.

`_define` below is the only definition of the per-symbol features. It asks an *indicator provider* for
every indicator it needs. For research, `compute_features` hands it a provider that runs the batch
kernels over one symbol's whole history; for live, `StreamingFeatures` hands it one that advances
persistent streaming states over the rows of a batch (all symbols at one bar time, or many bar times).
Both kernel forms execute the same step (see `core.indicators._base`) and the normalisations are the same
numpy expressions, so research and live vectors are equal bar by bar, bit for bit: there is no
train/serve skew to chase. Cross-sectional ranks, relative strength against the benchmark and the
calendar are computed afterwards by shared functions of (time, values), for both paths alike.

Categories (names for the default configuration; 46 features):
* price: close, ret_1/5/20 (simple returns), log_ret_1, gap (open / previous close - 1), hl_range,
  close_location ((close - low)/(high - low)), close_to_sma_20/50, sma_20_to_sma_50, ema_12_to_ema_26,
  tema_20_to_close
* technical (normalised): rsi_14, macd_line, macd_signal, macd_hist (over the close), bb_percent_b,
  natr_14, adx_14, di_spread_14, stoch_k, stoch_d, willr_14, cci_20, roc_10, keltner_position,
  donchian_position
* volume: volume_ratio_20, volume_zscore_20, vwap_distance, mfi_14, obv_change_20
* volatility: realized_vol_20, parkinson_vol_20, garman_klass_vol_20, zscore_20 (per bar, not annualised)
* microstructure: cs_spread_20 (Corwin-Schultz), roll_spread_20 (Roll)
* cross-sectional: rank_<feature> for each of `rank_features` (percentile across the universe at the
  bar time), rs_benchmark_20 (ret_20 minus the benchmark's 20-bar return as of the bar time)
* calendar: day_of_week (Monday 0), month, days_to_month_end (calendar days)
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import polars as pl
from numba import njit

from utp.core import indicators as ind
from utp.core.config import FeaturesConfig
from utp.core.kernels import entry
from utp.core.universe import Universe

# Indicator name -> (batch function, streaming class). A provider call `ind(key, name, *inputs, **params)`
# resolves through this table in both paths.
_INDICATORS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "sma": (ind.sma, ind.Sma),
    "ema": (ind.ema, ind.Ema),
    "tema": (ind.tema, ind.Tema),
    "rsi": (ind.rsi, ind.Rsi),
    "macd": (ind.macd, ind.Macd),
    "lag": (ind.lag, ind.Lag),
    "roc": (ind.roc, ind.Roc),
    "mom": (ind.mom, ind.Mom),
    "stoch": (ind.stoch, ind.Stoch),
    "willr": (ind.willr, ind.Willr),
    "cci": (ind.cci, ind.Cci),
    "mfi": (ind.mfi, ind.Mfi),
    "obv": (ind.obv, ind.Obv),
    "bbands": (ind.bbands, ind.Bbands),
    "natr": (ind.natr, ind.Natr),
    "adx": (ind.adx, ind.Adx),
    "keltner": (ind.keltner, ind.Keltner),
    "donchian": (ind.donchian, ind.Donchian),
    "zscore": (ind.zscore, ind.ZScore),
    "realized_volatility": (ind.realized_volatility, ind.RealizedVolatility),
    "parkinson_volatility": (ind.parkinson_volatility, ind.ParkinsonVolatility),
    "garman_klass_volatility": (ind.garman_klass_volatility, ind.GarmanKlassVolatility),
    "vwap_distance": (ind.vwap_distance, ind.VwapDistance),
    "corwin_schultz": (ind.corwin_schultz_spread, ind.CorwinSchultzSpread),
    "roll": (ind.roll_spread, ind.RollSpread),
}

Provider = Callable[..., Any]
Columns = Mapping[str, np.ndarray]


def _ratio(numerator: np.ndarray, denominator: np.ndarray, flat: float = 0.5) -> np.ndarray:
    """numerator / denominator, `flat` where the denominator is 0 (a range that has not opened)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator
    return np.where(denominator == 0.0, flat, out)


def _define(ind_: Provider, c: FeaturesConfig, bar: Columns) -> dict[str, np.ndarray]:
    """The per-symbol features, from the indicator provider `ind_` and the bars' columns (with
    `features.only`, just those named: the indicators of the others are never run)."""
    o, h, lo, cl, v, t = bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"], bar["event_time_ns"]
    only = set(c.only)

    def want(*names: str) -> bool:
        return not only or any(name in only for name in names)

    f: dict[str, np.ndarray] = {"close": cl}
    with np.errstate(divide="ignore", invalid="ignore"):
        # price
        for horizon in c.return_horizons:
            if want(f"ret_{horizon}", f"rs_benchmark_{horizon}" if horizon == c.benchmark_horizon else ""):
                f[f"ret_{horizon}"] = ind_(f"roc_{horizon}", "roc", cl, horizon) / 100.0
        if want("log_ret_1"):
            f["log_ret_1"] = np.log(cl / ind_("lag_1", "lag", cl, 1))
        if want("gap"):
            f["gap"] = o / ind_("lag_1", "lag", cl, 1) - 1.0
        if want("hl_range"):
            f["hl_range"] = h / lo - 1.0
        if want("close_location"):
            f["close_location"] = _ratio(cl - lo, h - lo)
        fast, slow = c.sma_periods
        if want(f"close_to_sma_{fast}", f"close_to_sma_{slow}", f"sma_{fast}_to_sma_{slow}"):
            sma_fast, sma_slow = ind_(f"sma_{fast}", "sma", cl, fast), ind_(f"sma_{slow}", "sma", cl, slow)
            f[f"close_to_sma_{fast}"] = cl / sma_fast - 1.0
            f[f"close_to_sma_{slow}"] = cl / sma_slow - 1.0
            f[f"sma_{fast}_to_sma_{slow}"] = sma_fast / sma_slow - 1.0
        e_fast, e_slow = c.ema_periods
        if want(f"ema_{e_fast}_to_ema_{e_slow}"):
            f[f"ema_{e_fast}_to_ema_{e_slow}"] = (
                ind_(f"ema_{e_fast}", "ema", cl, e_fast) / ind_(f"ema_{e_slow}", "ema", cl, e_slow) - 1.0
            )
        if want(f"tema_{c.tema_period}_to_close"):
            f[f"tema_{c.tema_period}_to_close"] = ind_("tema", "tema", cl, c.tema_period) / cl - 1.0
        # technical, normalised to unit scale
        if want(f"rsi_{c.rsi_period}"):
            f[f"rsi_{c.rsi_period}"] = ind_("rsi", "rsi", cl, c.rsi_period) / 100.0
        if want("macd_line", "macd_signal", "macd_hist"):
            macd = ind_("macd", "macd", cl, *c.macd)
            f["macd_line"], f["macd_signal"], f["macd_hist"] = macd.macd / cl, macd.signal / cl, macd.histogram / cl
        if want("bb_percent_b"):
            bands = ind_("bbands", "bbands", cl, c.bbands_period, c.bbands_deviations, c.bbands_deviations)
            f["bb_percent_b"] = bands.percent_b
        if want(f"natr_{c.atr_period}"):
            f[f"natr_{c.atr_period}"] = ind_("natr", "natr", h, lo, cl, c.atr_period) / 100.0
        if want(f"adx_{c.adx_period}", f"di_spread_{c.adx_period}"):
            adx = ind_("adx", "adx", h, lo, cl, c.adx_period)
            f[f"adx_{c.adx_period}"] = adx.adx / 100.0
            f[f"di_spread_{c.adx_period}"] = (adx.plus_di - adx.minus_di) / 100.0
        if want("stoch_k", "stoch_d"):
            stoch = ind_("stoch", "stoch", h, lo, cl, *c.stoch)
            f["stoch_k"], f["stoch_d"] = stoch.slowk / 100.0, stoch.slowd / 100.0
        if want(f"willr_{c.willr_period}"):
            f[f"willr_{c.willr_period}"] = ind_("willr", "willr", h, lo, cl, c.willr_period) / 100.0
        if want(f"cci_{c.cci_period}"):
            f[f"cci_{c.cci_period}"] = ind_("cci", "cci", h, lo, cl, c.cci_period) / 100.0
        if want(f"roc_{c.roc_period}"):
            f[f"roc_{c.roc_period}"] = ind_(f"roc_{c.roc_period}", "roc", cl, c.roc_period) / 100.0
        if want("keltner_position"):
            keltner = ind_("keltner", "keltner", h, lo, cl, *c.keltner)
            f["keltner_position"] = _ratio(cl - keltner.middle, keltner.upper - keltner.lower, 0.0)
        if want("donchian_position"):
            donchian = ind_("donchian", "donchian", h, lo, c.donchian_period)
            f["donchian_position"] = _ratio(cl - donchian.lower, donchian.upper - donchian.lower)
        # volume
        vp = c.volume_period
        if want(f"volume_ratio_{vp}", f"volume_zscore_{vp}", "vwap_distance", f"mfi_{c.mfi_period}", f"obv_change_{vp}"):
            volume_mean = ind_("volume_sma", "sma", v, vp)
            f[f"volume_ratio_{vp}"] = _ratio(v, volume_mean, 1.0)
            f[f"volume_zscore_{vp}"] = ind_("volume_zscore", "zscore", v, vp)
            f["vwap_distance"] = ind_("vwap_distance", "vwap_distance", t, h, lo, cl, v)
            f[f"mfi_{c.mfi_period}"] = ind_("mfi", "mfi", h, lo, cl, v, c.mfi_period) / 100.0
            obv_change = ind_("obv_change", "mom", ind_("obv", "obv", cl, v), vp)
            f[f"obv_change_{vp}"] = _ratio(obv_change, vp * volume_mean, 0.0)
        # volatility, per bar (a model sees the same scale whatever the bar length)
        wp = c.volatility_period
        if want(f"realized_vol_{wp}", f"parkinson_vol_{wp}", f"garman_klass_vol_{wp}", f"zscore_{wp}"):
            f[f"realized_vol_{wp}"] = ind_("realized_vol", "realized_volatility", cl, wp, 1.0)
            f[f"parkinson_vol_{wp}"] = ind_("parkinson", "parkinson_volatility", h, lo, wp, 1.0)
            f[f"garman_klass_vol_{wp}"] = ind_("garman_klass", "garman_klass_volatility", o, h, lo, cl, wp, 1.0)
            f[f"zscore_{wp}"] = ind_("zscore", "zscore", cl, wp)
        # microstructure
        sp = c.spread_period
        if want(f"cs_spread_{sp}", f"roll_spread_{sp}"):
            f[f"cs_spread_{sp}"] = ind_("corwin_schultz", "corwin_schultz", h, lo, sp)
            f[f"roll_spread_{sp}"] = ind_("roll", "roll", cl, sp)
    # Ranks need their feature even when only the rank was asked for.
    for name in c.rank_features:
        if only and f"rank_{name}" in only and name not in f:
            raise ValueError(f"features.only asks for rank_{name}: name {name} too")
    return f


@entry
@njit(cache=True)
def _percentile_ranks(times, values, out):  # noqa: ANN001
    """Rank of each value among the values of its bar time, as a percentile in [0, 1] (ties get their
    average rank; a lone value 0.5; NaN stays NaN). Rows must be sorted by time."""
    n = times.shape[0]
    start = 0
    while start < n:
        end = start
        while end < n and times[end] == times[start]:
            end += 1
        idx = np.empty(end - start, np.int64)
        k = 0
        for i in range(start, end):
            if np.isnan(values[i]):
                out[i] = np.nan
            else:
                idx[k] = i
                k += 1
        idx = idx[:k]
        order = idx[np.argsort(values[idx], kind="mergesort")]
        j = 0
        while j < k:
            tie_end = j
            while tie_end + 1 < k and values[order[tie_end + 1]] == values[order[j]]:
                tie_end += 1
            rank = (j + tie_end) / 2.0  # 0-based average rank of the tie group
            for m in range(j, tie_end + 1):
                out[order[m]] = 0.5 if k == 1 else rank / (k - 1)
            j = tie_end + 1
        start = end


def _calendar(times: np.ndarray) -> dict[str, np.ndarray]:
    day = times.astype("datetime64[ns]").astype("datetime64[D]")
    month_start = day.astype("datetime64[M]")
    month_end = (month_start + 1).astype("datetime64[D]") - np.timedelta64(1, "D")
    return {
        "day_of_week": ((day.astype(np.int64) + 3) % 7).astype(np.float64),  # 1970-01-01 was a Thursday
        "month": (month_start.astype(np.int64) % 12 + 1).astype(np.float64),
        "days_to_month_end": (month_end - day).astype(np.int64).astype(np.float64),
    }


@dataclass(frozen=True, slots=True)
class Benchmark:
    """An index to measure relative strength against: its closes by time (e.g. the S&P 500)."""

    times: np.ndarray
    closes: np.ndarray

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> Benchmark:
        frame = frame.sort("event_time_ns")
        return cls(frame["event_time_ns"].to_numpy(), frame["close"].to_numpy().astype(np.float64))

    def returns_asof(self, times: np.ndarray, horizon: int) -> np.ndarray:
        """The benchmark's `horizon`-bar return as of each time (its latest bar at or before it)."""
        own = np.full(self.closes.shape, np.nan)
        own[horizon:] = self.closes[horizon:] / self.closes[:-horizon] - 1.0
        at = np.searchsorted(self.times, times, side="right") - 1
        return np.where(at >= 0, own[np.maximum(at, 0)], np.nan)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Names and parameters of the feature set; its hash is stamped on every vector and model."""

    config: FeaturesConfig

    @property
    def names(self) -> tuple[str, ...]:
        return _feature_names(self.config)

    @property
    def version(self) -> str:
        config = {f: getattr(self.config, f) for f in self.config.__struct_fields__}
        payload = json.dumps({"names": self.names, "config": config}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@functools.cache
def _feature_names(config: FeaturesConfig) -> tuple[str, ...]:
    # The names are what the definition produces: run it once on a short probe series.
    probe = {k: np.linspace(100.0, 101.0, 3) for k in ("open", "high", "low", "close", "volume")}
    probe["event_time_ns"] = np.arange(3, dtype=np.int64)
    per_symbol = tuple(_define(_BatchProvider(), config, probe))
    everything = _feature_names(msgspec.structs.replace(config, only=())) if config.only else None
    if everything is not None:
        unknown = [name for name in config.only if name not in everything]
        if unknown:
            raise ValueError(f"features.only names unknown features: {', '.join(unknown)}")
    else:
        unknown = [name for name in config.rank_features if name not in per_symbol]
        if unknown:
            raise ValueError(f"features.rank_features names unknown features: {', '.join(unknown)}")
    extra = (*(f"rank_{name}" for name in config.rank_features), f"rs_benchmark_{config.benchmark_horizon}",
             *_calendar(np.zeros(1, np.int64)))  # fmt: skip
    return (*per_symbol, *(name for name in extra if not config.only or name in config.only))


class _BatchProvider:
    """Batch kernels over one symbol's whole series (research)."""

    def __call__(self, key: str, name: str, *inputs: Any) -> Any:
        return _INDICATORS[name][0](*inputs)


class _StreamProvider:
    """Streaming kernels over rows of many symbols (live); one persistent state per call site `key`."""

    def __init__(self, n_symbols: int) -> None:
        self.n_symbols = n_symbols
        self.states: dict[str, Any] = {}
        self.sid: np.ndarray = np.empty(0, np.int64)
        self._cache: dict[str, Any] = {}

    def __call__(self, key: str, name: str, *inputs: Any) -> Any:
        # The same call site may be asked twice within one update (lag_1 for log_ret_1 and gap).
        if key in self._cache:
            return self._cache[key]
        arrays = [x for x in inputs if isinstance(x, np.ndarray)]
        params = inputs[len(arrays) :]
        if key not in self.states:
            self.states[key] = _INDICATORS[name][1](self.n_symbols, *params)
        result = self.states[key].update(self.sid, *arrays)
        self._cache[key] = result
        return result

    def begin(self, sid: np.ndarray) -> None:
        self.sid = sid
        self._cache = {}


def _finish(
    spec: FeatureSpec, per_symbol: dict[str, np.ndarray], times: np.ndarray, benchmark: Benchmark | None
) -> dict[str, np.ndarray]:
    """Add the cross-sectional and calendar features; rows must be sorted by time."""
    c = spec.config
    names = set(spec.names)
    out = dict(per_symbol)
    for name in c.rank_features:
        if f"rank_{name}" in names:
            ranks = np.empty(times.shape[0])
            _percentile_ranks(times, np.ascontiguousarray(per_symbol[name]), ranks)
            out[f"rank_{name}"] = ranks
    h = c.benchmark_horizon
    if f"rs_benchmark_{h}" in names:
        bench = benchmark.returns_asof(times, h) if benchmark is not None else np.full(times.shape[0], np.nan)
        out[f"rs_benchmark_{h}"] = per_symbol[f"ret_{h}"] - bench
    if names & {"day_of_week", "month", "days_to_month_end"}:
        out.update({k: v for k, v in _calendar(times).items() if k in names})
    return out


BAR_INPUTS = ("event_time_ns", "open", "high", "low", "close", "volume")


def compute_features(
    bars: pl.DataFrame, config: FeaturesConfig, *, benchmark: Benchmark | None = None
) -> pl.DataFrame:
    """Research: every feature for bars of any number of symbols (sorted by time), in batch.

    Returns `event_time_ns`, `symbol` and one Float64 column per feature, in the rows' order.
    """
    spec = FeatureSpec(config)
    times = bars["event_time_ns"].to_numpy()
    if times.size and not np.all(times[1:] >= times[:-1]):
        raise ValueError("bars must be sorted by event time")
    per_symbol: dict[str, np.ndarray] = {}
    for _, rows in bars.with_row_index("_row").group_by("symbol", maintain_order=True):
        index = rows["_row"].to_numpy()
        columns = {k: rows[k].to_numpy().astype(np.float64 if k != "event_time_ns" else np.int64) for k in BAR_INPUTS}
        for name, values in _define(_BatchProvider(), config, columns).items():
            per_symbol.setdefault(name, np.full(bars.height, np.nan))[index] = values
    features = _finish(spec, per_symbol, times, benchmark)
    return bars.select("event_time_ns", "symbol").with_columns(
        pl.Series(name, features[name], pl.Float64) for name in spec.names
    )


class StreamingFeatures:
    """Live: the same features, advanced batch by batch for a universe (state persists between calls)."""

    def __init__(self, config: FeaturesConfig, universe: Universe, benchmark: Benchmark | None = None) -> None:
        self.spec = FeatureSpec(config)
        self.universe = universe
        self.benchmark = benchmark
        self.provider = _StreamProvider(len(universe))

    def update(self, bars: pl.DataFrame, sid: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Features of `bars` (sorted by time, complete bar times, symbols in the universe)."""
        sid = self.universe.indices(bars["symbol"]) if sid is None else sid
        columns = {k: bars[k].to_numpy().astype(np.float64 if k != "event_time_ns" else np.int64) for k in BAR_INPUTS}
        self.provider.begin(sid)
        per_symbol = _define(self.provider, self.spec.config, columns)
        return _finish(self.spec, per_symbol, columns["event_time_ns"], self.benchmark)
