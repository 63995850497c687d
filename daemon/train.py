"""`utp train`: walk-forward training, the out-of-sample backtest, the promotion gate, MLflow and the registry.

1. The data set (`train.dataset`, `symbols`, `start`, `end`) becomes feature rows with forward-return
   labels (`core.ml.dataset`), the live feature set's code and version hash.
2. Walk-forward folds over the bar times (`core.validation.walk_forward_bars`): rolling `train_bars`
   windows, `test_bars` test windows stepping by `test_bars`, the most recent `folds` of them. Between a
   training window and its test window lie `max(horizons)` bars (purge: no training label reaches into
   the test window) plus `embargo_bars`. Inside a training window the latest `validation_share` of its
   bars (after another purge gap) is held out for early stopping and the fold's Platt scaling.
3. Per fold: fit, forecast the test rows, measure IC / Rank IC / ICIR of the signal horizon's median
   forecast against the realised return, and export the fold's model to ONNX.
4. The out-of-sample backtest: the issue-4 engine graph over the whole data range, each fold's ONNX
   model serving its own test window (`ModelSchedule`) through the inference engine, the ensemble voting
   with that model alone. A cross-sectional data set trades portfolio method `rank` (long the top_n by
   score, short the bottom_n); a single series trades the vote's direction (`fixed`, shorts allowed).
   `train.backtest` overrides any of it. Per-fold Sharpe and win rate come from this backtest's equity
   curve and closed trades in the fold's test window.
5. The gate: OOS Sharpe >= min_oos_sharpe, OOS win rate >= min_win_rate, no fold Sharpe below
   min_fold_sharpe; the Deflated Sharpe Ratio is reported (n_trials = this model's registered versions
   + 1; the Sharpe variance across trials estimated by the variance of the fold Sharpe ratios).
6. The served model: fitted on the most recent `train_bars` bars, Platt-scaled on all out-of-sample
   predictions, with the drift monitor's references (median OOS confidence, training feature deciles).
   Logged to MLflow with every fold, registered with the gate's verdict; `promote=True` promotes it when
   it passed (the registry refuses one that did not).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import polars as pl

from utp.core.config import Config, load_config
from utp.core.features import Benchmark
from utp.core.ml.dataset import LabelledDataset, build_dataset
from utp.core.ml.serving import ModelMetadata, fit_platt, load_served, raw_confidence, reference_bins
from utp.core.ml.sources import ModelSchedule
from utp.core.performance import sharpe_ratio
from utp.core.validation import deflated_sharpe_ratio, probabilistic_sharpe_ratio, walk_forward_bars
from utp.storage.datasets import dataset as find_dataset
from utp.storage.datasets import load_sp500_index

log = logging.getLogger(__name__)

Progress = Callable[[str, dict[str, Any]], None]
#: Bars the out-of-sample backtest runs before the first test window: the slowest feature (SMA 50, ADX)
#: and the longest model window are ready by then.
WARM_UP_BARS = 250


# -- the two model kinds behind one face ------------------------------------------------------------
class _Lgbm:
    kind = "lgbm"

    def __init__(self, params: dict[str, Any]) -> None:
        from utp.core.ml.lgbm import LgbmParams

        self.params = LgbmParams(**params)
        self.lookback = 1

    def inputs(self, data: LabelledDataset, rows: np.ndarray) -> np.ndarray:
        return data.features(rows)

    def fit(self, data: LabelledDataset, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> Any:
        from utp.core.ml.lgbm import fit_lgbm

        return fit_lgbm(x, y, xv, yv, data.feature_names, self.params)

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        return model.predict(x)

    def export(self, model: Any, metadata: ModelMetadata) -> bytes:
        from utp.core.ml.lgbm import lgbm_to_onnx

        return lgbm_to_onnx(model, metadata.to_props())

    def explain(self, model: Any, x: np.ndarray, data: LabelledDataset, signal_index: int) -> dict[str, Any]:
        shap = model.shap_values(x[: min(len(x), 5000)], horizon=signal_index)[:, :-1]
        mean_abs = np.abs(shap).mean(axis=0)
        return {"feature_importance_gain": model.feature_importance("gain"),
                "mean_abs_shap": dict(zip(data.feature_names, mean_abs.tolist(), strict=True))}  # fmt: skip


class _Tft:
    kind = "tft"

    def __init__(self, params: dict[str, Any]) -> None:
        try:
            from utp.core.ml.tft import TftParams
        except ImportError as exc:  # serving needs no torch, so a plain install has none
            raise ValueError(f"training the TFT needs torch ({exc}): pip install 'utp[train]'") from None
        self.params = TftParams(**params)
        self.lookback = self.params.lookback

    def inputs(self, data: LabelledDataset, rows: np.ndarray) -> np.ndarray:
        return data.windows(rows, self.lookback)

    def fit(self, data: LabelledDataset, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> Any:
        from utp.core.ml.tft import fit_tft

        return fit_tft(x, y, xv, yv, self.params)

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        from utp.core.ml.tft import predict_tft

        return predict_tft(model, x)

    def export(self, model: Any, metadata: ModelMetadata) -> bytes:
        from utp.core.ml.tft import export_tft_onnx

        return export_tft_onnx(model, metadata.to_props())

    def explain(self, model: Any, x: np.ndarray, data: LabelledDataset, signal_index: int) -> dict[str, Any]:  # noqa: ARG002
        from utp.core.ml.tft import attention_by_lag, variable_importance

        sample = x[: min(len(x), 5000)]
        weights = variable_importance(model, sample)
        lags = attention_by_lag(model, sample)  # oldest bar first
        return {"variable_selection_weight": dict(zip(data.feature_names, weights.tolist(), strict=True)),
                "attention_by_bars_ago": {str(len(lags) - 1 - i): float(w) for i, w in enumerate(lags)}}


def _trainer(kind: str, config: Config) -> _Lgbm | _Tft:
    if kind not in ("lgbm", "tft"):
        raise ValueError(f"unknown model kind {kind!r}; choose lgbm or tft")
    try:
        return _Lgbm(dict(config.train.lgbm)) if kind == "lgbm" else _Tft(dict(config.train.tft))
    except TypeError as exc:  # a parameter the model does not have
        raise ValueError(f"train.{kind}: {exc}") from None


# -- results ------------------------------------------------------------------------------------------
@dataclass
class FoldResult:
    fold: int
    train_start_ns: int
    train_end_ns: int
    test_start_ns: int
    test_end_ns: int
    train_rows: int
    test_rows: int
    ic: float
    rank_ic: float
    icir: float
    sharpe: float = float("nan")
    win_rate: float = float("nan")
    trades: int = 0
    total_return: float = float("nan")

    def row(self) -> dict[str, Any]:
        """The seeds' walk_forward_results row (run_id and model_id are filled in by the caller)."""
        day = _iso_day
        return {
            "fold": self.fold,
            "in_sample_start": day(self.train_start_ns), "in_sample_end": day(self.train_end_ns),
            "oos_start": day(self.test_start_ns), "oos_end": day(self.test_end_ns),
            "metrics": {"ic": self.ic, "rank_ic": self.rank_ic, "icir": self.icir, "sharpe": self.sharpe,
                        "win_rate": self.win_rate, "trades": self.trades, "total_return": self.total_return,
                        "train_rows": self.train_rows, "test_rows": self.test_rows},
        }  # fmt: skip


@dataclass
class GateResult:
    passed: bool
    oos_sharpe: float
    oos_win_rate: float
    min_fold_sharpe: float
    deflated_sharpe: float
    probabilistic_sharpe: float
    reasons: list[str] = field(default_factory=list)


@dataclass
class TrainingReport:
    model_kind: str
    model_name: str
    feature_set_version: str
    folds: list[FoldResult]
    gate: GateResult
    oos_trades: int
    platt: tuple[float, float]
    onnx: bytes
    metadata: ModelMetadata
    explain: dict[str, Any]
    #: Platt scaling of the ensemble confidence (ensemble.platt), fitted on the out-of-sample scored signals
    #: of the whole ensemble (the model with the configured alphas) against the realised direction.
    ensemble_platt: tuple[float, float] = (0.0, 0.0)
    ensemble_signals: int = 0
    run_id: str = ""
    version: str = ""
    promoted: bool = False
    seconds: float = 0.0


def _iso_day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).date().isoformat()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def information_coefficients(times: np.ndarray, forecast: np.ndarray, realised: np.ndarray) -> tuple[float, float, float]:
    """(IC, Rank IC, ICIR). With several symbols per bar time: the mean of the per-time cross-sectional
    Pearson (IC) and Spearman (Rank IC) correlations, and ICIR = mean / std of the per-time ICs. With one
    symbol (a single series): the correlations over time, and ICIR undefined (NaN)."""
    ok = np.isfinite(forecast) & np.isfinite(realised)
    times, forecast, realised = times[ok], forecast[ok], realised[ok]
    unique, counts = np.unique(times, return_counts=True)
    if counts.size == 0:
        return float("nan"), float("nan"), float("nan")
    if counts.max() < 3:
        return _correlation(forecast, realised), _correlation(_ranks(forecast), _ranks(realised)), float("nan")
    ics, rank_ics = [], []
    order = np.argsort(times, kind="stable")
    bounds = np.r_[0, np.cumsum(counts)]
    for k in range(unique.size):
        idx = order[bounds[k]:bounds[k + 1]]
        if idx.size >= 3:
            ics.append(_correlation(forecast[idx], realised[idx]))
            rank_ics.append(_correlation(_ranks(forecast[idx]), _ranks(realised[idx])))
    ic = np.array([v for v in ics if np.isfinite(v)])
    ric = np.array([v for v in rank_ics if np.isfinite(v)])
    if ic.size == 0:
        return float("nan"), float("nan"), float("nan")
    icir = float(ic.mean() / ic.std(ddof=1)) if ic.size > 1 and ic.std(ddof=1) > 1e-12 else float("nan")
    return float(ic.mean()), float(ric.mean()) if ric.size else float("nan"), icir


# -- training ----------------------------------------------------------------------------------------
def load_training_data(config: Config) -> LabelledDataset:
    tr = config.train
    ds = find_dataset(tr.dataset)
    start = date.fromisoformat(tr.start) if tr.start else None
    end = date.fromisoformat(tr.end) if tr.end else None
    bars = ds.bars(tr.symbols or ds.symbols, start, end)
    benchmark = Benchmark.from_frame(load_sp500_index()) if config.features.benchmark == "sp500" else None
    return build_dataset(ds.name, bars, config.features, tr.horizons, benchmark=benchmark,
                         periods_per_year=ds.periods_per_year)  # fmt: skip


def _fit_rows(data: LabelledDataset, first_ns: int, last_ns: int, usable: np.ndarray, labelled: np.ndarray,
              times: np.ndarray, validation_share: float, purge: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rows to fit on and rows to validate on inside a training window [first_ns, last_ns]."""
    window = times[(times >= first_ns) & (times <= last_ns)]
    n_valid = max(1, int(round(window.size * validation_share)))
    fit_last = window[max(0, window.size - n_valid - purge - 1)]
    valid_first = window[window.size - n_valid]
    t = data.frame["event_time_ns"].to_numpy()
    ok = usable & labelled
    fit = np.flatnonzero(ok & (t >= first_ns) & (t <= fit_last))
    valid = np.flatnonzero(ok & (t >= valid_first) & (t <= last_ns))
    return fit, valid


def _metadata(config: Config, kind: str, data: LabelledDataset, lookback: int, *, platt: tuple[float, float] = (0.0, 0.0),
              reference_confidence: float = float("nan"), bins: dict | None = None, notes: dict | None = None) -> ModelMetadata:  # fmt: skip
    return ModelMetadata(
        model_name=kind, model_kind=kind, feature_set_version=data.feature_set_version,
        feature_names=data.feature_names, horizons=data.horizons, signal_horizon=config.train.signal_horizon,
        lookback=lookback, platt=platt, reference_confidence=reference_confidence, reference_bins=bins or {},
        notes=notes or {},
    )  # fmt: skip


def _fold_platt(raw: np.ndarray, median: np.ndarray, realised: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(realised) & (median != 0)
    return fit_platt(raw[ok], np.sign(median[ok]) == np.sign(realised[ok]))


def backtest_config(config: Config, data: LabelledDataset, model_name: str, first_test_ns: int, end_ns: int) -> Config:
    """The configuration of the out-of-sample backtest (see the module doc). It starts `WARM_UP_BARS`
    before the first test window so that features (and a sequence model's window) are ready there."""
    times = data.times
    start_ns = int(times[max(0, int(np.searchsorted(times, first_test_ns)) - WARM_UP_BARS)])
    tr = config.train
    n = max(1, config.portfolio.top_n + config.portfolio.bottom_n)
    single = len(data.symbols) == 1
    overrides: dict[str, Any] = {
        "market_data.dataset": tr.dataset, "market_data.symbols": list(tr.symbols), "market_data.start": _iso_day(start_ns),
        "market_data.end": _iso_day(end_ns), "market_data.batch_bar_times": 1000,
        # The model votes alone; dict-valued settings are replaced, not merged.
        "ensemble.weights": {model_name: 1.0},
        "inference.models": [model_name], "inference.model_files": {}, "inference.packaged_fallback": False,
        "risk.allow_short": True,
        "portfolio.method": "fixed" if single else "rank",
        "risk.max_position_pct": 0.95 if single else max(config.portfolio.gross / n, 0.01),
    }  # fmt: skip
    overrides.update(tr.backtest)
    return load_config([], base=config, overrides=overrides, environ={})


def _window_returns(times: np.ndarray, equity: np.ndarray, first_ns: int, last_ns: int) -> np.ndarray:
    inside = np.flatnonzero((times >= first_ns) & (times <= last_ns))
    if inside.size == 0:
        return np.zeros(0)
    start = max(inside[0] - 1, 0)
    e = equity[start : inside[-1] + 1]
    return e[1:] / e[:-1] - 1.0


def train_walk_forward(
    config: Config,
    kind: str,
    *,
    registry: Any | None = None,
    promote: bool = False,
    progress: Progress | None = None,
    actor: str = "",
) -> TrainingReport:
    """Train, validate out of sample, gate, log and register one model (see the module doc)."""
    from utp.daemon.session import MarketData, backtest

    began = time.monotonic()
    tell = progress or (lambda stage, info: None)
    tr = config.train
    trainer = _trainer(kind, config)
    data = load_training_data(config)
    tell("data", {"rows": data.frame.height, "symbols": len(data.symbols), "features": len(data.feature_names)})
    times = data.times
    purge = max(data.horizons)
    folds = walk_forward_bars(times, train_bars=tr.train_bars, test_bars=tr.test_bars, step_bars=tr.test_bars,
                              gap_bars=purge + tr.embargo_bars, n_folds=tr.folds)  # fmt: skip
    usable = data.usable(trainer.lookback)
    labelled = data.labelled()
    row_times = data.frame["event_time_ns"].to_numpy()
    signal = data.horizons.index(tr.signal_horizon)
    results: list[FoldResult] = []
    schedule = []
    oos_raw, oos_correct = [], []
    for fold in folds:
        fit, valid = _fit_rows(data, fold.train_first_ns, fold.train_last_ns, usable, labelled, times,
                               tr.validation_share, purge)  # fmt: skip
        test = np.flatnonzero(usable & (row_times >= fold.test_first_ns) & (row_times <= fold.test_last_ns))
        if fit.size < 50 or valid.size < 10 or test.size == 0:
            raise ValueError(f"fold {fold.index} has too few usable rows (fit {fit.size}, validation {valid.size}, "
                             f"test {test.size}); lower train.lookback or use more data")  # fmt: skip
        model = trainer.fit(data, trainer.inputs(data, fit), data.labels(fit), trainer.inputs(data, valid), data.labels(valid))
        q_valid = trainer.predict(model, trainer.inputs(data, valid))
        raw_valid = raw_confidence(*(q_valid[:, signal, k] for k in range(3)))
        platt = _fold_platt(raw_valid, q_valid[:, signal, 1], data.labels(valid)[:, signal])
        q_test = trainer.predict(model, trainer.inputs(data, test))
        realised = data.labels(test)[:, signal]
        ic, rank_ic, icir = information_coefficients(row_times[test], q_test[:, signal, 1], realised)
        raw_test = raw_confidence(*(q_test[:, signal, k] for k in range(3)))
        known = np.isfinite(realised) & (q_test[:, signal, 1] != 0)
        oos_raw.append(raw_test[known])
        oos_correct.append(np.sign(q_test[known, signal, 1]) == np.sign(realised[known]))
        metadata = _metadata(config, kind, data, trainer.lookback, platt=platt)
        served = load_served(kind, f"fold{fold.index}", trainer.export(model, metadata))
        schedule.append((fold.test_first_ns, served))
        result = FoldResult(fold.index, fold.train_first_ns, fold.train_last_ns, fold.test_first_ns,
                            fold.test_last_ns, fit.size + valid.size, test.size, ic, rank_ic, icir)  # fmt: skip
        results.append(result)
        tell("fold", {"fold": fold.index, "of": len(folds), "ic": ic, "rank_ic": rank_ic, "icir": icir})
    # The out-of-sample backtest: each fold's model serves its own test window.
    bt_config = backtest_config(config, data, kind, folds[0].test_first_ns, folds[-1].test_last_ns)
    tell("backtest", {"start": bt_config.market_data.start, "end": bt_config.market_data.end})
    result = backtest(bt_config, market_data=MarketData.from_config(bt_config), include_details=True,
                      model_sources=[ModelSchedule(kind, schedule)])  # fmt: skip
    curve_t = np.array(result.equity_curve.time_ns, np.int64)
    curve_e = np.array(result.equity_curve.equity, np.float64)
    ppy = data.periods_per_year
    closed = [t for t in result.trades if not t.open]
    all_returns = []
    for r in results:
        returns = _window_returns(curve_t, curve_e, r.test_start_ns, r.test_end_ns)
        all_returns.append(returns)
        r.sharpe = sharpe_ratio(returns, ppy) if returns.size > 1 and np.std(returns) > 0 else 0.0
        r.total_return = float(np.prod(1.0 + returns) - 1.0) if returns.size else 0.0
        inside = [t for t in closed if r.test_start_ns <= t.exit_time_ns <= r.test_end_ns]
        r.trades = len(inside)
        r.win_rate = float(np.mean([t.pnl > 0 for t in inside])) if inside else float("nan")
    gate = _gate(config, results, np.concatenate(all_returns), closed, ppy, registry, kind)
    tell("gate", {"passed": gate.passed, "oos_sharpe": gate.oos_sharpe, "oos_win_rate": gate.oos_win_rate,
                  "min_fold_sharpe": gate.min_fold_sharpe, "deflated_sharpe": gate.deflated_sharpe,
                  "reasons": gate.reasons})  # fmt: skip
    ensemble_platt, n_signals = ensemble_calibration(config, data, kind, schedule, bt_config)
    tell("ensemble calibration", {"platt": list(ensemble_platt), "signals": n_signals})
    # The model to serve: the most recent window, calibrated on every out-of-sample prediction.
    last = times[-1]
    first = times[max(0, times.size - tr.train_bars)]
    fit, valid = _fit_rows(data, int(first), int(last), usable, labelled, times, tr.validation_share, purge)
    x_fit = trainer.inputs(data, fit)
    model = trainer.fit(data, x_fit, data.labels(fit), trainer.inputs(data, valid), data.labels(valid))
    raw_all, correct_all = np.concatenate(oos_raw), np.concatenate(oos_correct)
    platt = fit_platt(raw_all, correct_all)
    notes = {"dataset": data.name, "train_start": _iso_day(int(first)), "train_end": _iso_day(int(last)),
             "gate_passed": str(gate.passed).lower(), "ensemble_platt": f"{ensemble_platt[0]:.6g},{ensemble_platt[1]:.6g}"}  # fmt: skip
    metadata = _metadata(config, kind, data, trainer.lookback, platt=platt,
                         reference_confidence=float(np.median(raw_all)) if raw_all.size else float("nan"),
                         bins=reference_bins(data.features(fit), data.feature_names), notes=notes)  # fmt: skip
    onnx_bytes = trainer.export(model, metadata)
    explain = trainer.explain(model, x_fit, data, signal)
    report = TrainingReport(kind, kind, data.feature_set_version, results, gate, len(closed), platt, onnx_bytes,
                            metadata, explain, ensemble_platt, n_signals)  # fmt: skip
    if registry is not None:
        _log_and_register(config, report, registry, promote=promote, actor=actor, tell=tell)
    report.seconds = time.monotonic() - began
    return report


def ensemble_calibration(config: Config, data: LabelledDataset, kind: str, schedule: list, oos: Config) -> tuple[tuple[float, float], int]:
    """Fit ensemble.platt on the out-of-sample scored signals of the configured ensemble (its weights, the
    model voting under its name with the fold models of `schedule`), uncalibrated, against whether the
    signal's direction matched the realised return of the signal horizon. Returns ((a, b), signals used)."""
    import asyncio

    from utp.core.bus import InProcessBus
    from utp.core.clock import SimulatedClock
    from utp.core.controls import ControlState
    from utp.core.kinds import KINDS
    from utp.daemon.session import Session

    if kind not in config.ensemble.weights:
        return (0.0, 0.0), 0
    overrides = {k: v for k, v in {
        "market_data.dataset": oos.market_data.dataset, "market_data.symbols": list(oos.market_data.symbols),
        "market_data.start": oos.market_data.start, "market_data.end": oos.market_data.end,
        "market_data.batch_bar_times": 1000, "ensemble.platt": [0.0, 0.0], "inference.models": [kind],
        "inference.model_files": {}, "inference.packaged_fallback": False}.items()}  # fmt: skip
    ensemble_config = load_config([], base=config, overrides=overrides, environ={})
    signals: list = []

    async def run() -> None:
        bus = InProcessBus()
        session = Session(ensemble_config, bus=bus, clock=SimulatedClock(), controls=ControlState(execution_approved=True),
                          model_sources=[ModelSchedule(kind, schedule)])  # fmt: skip

        async def keep(kind_name: str, messages: list) -> None:  # noqa: ARG001 - tap signature
            signals.extend(messages)

        await bus.tap(keep, lambda k: k == "scored_signal")
        await session.start()
        await session.run()
        await session.stop()

    asyncio.run(run())
    scored = KINDS["scored_signal"].to_frame(signals)
    first_test = schedule[0][0]
    scored = scored.filter((pl.col("event_time_ns") >= first_test) & (pl.col("score") != 0.0))
    label = data.frame.select("event_time_ns", "symbol", pl.col(f"fwd_ret_{config.train.signal_horizon}").alias("realised"))
    joined = scored.join(label, on=["event_time_ns", "symbol"]).filter(pl.col("realised").is_finite() & (pl.col("realised") != 0))
    if joined.height < 20:
        return (0.0, 0.0), joined.height
    score, realised = joined["score"].to_numpy(), joined["realised"].to_numpy()
    return fit_platt(np.abs(score), np.sign(score) == np.sign(realised)), joined.height


def _gate(config: Config, folds: list[FoldResult], returns: np.ndarray, closed: list, ppy: float,
          registry: Any | None, kind: str) -> GateResult:  # fmt: skip
    g = config.train.gate
    oos_sharpe = sharpe_ratio(returns, ppy) if returns.size > 1 and np.std(returns) > 0 else 0.0
    win_rate = float(np.mean([t.pnl > 0 for t in closed])) if closed else 0.0
    fold_sharpes = np.array([f.sharpe for f in folds])
    min_fold = float(np.min(fold_sharpes)) if fold_sharpes.size else float("nan")
    trials = 1
    if registry is not None:
        try:
            trials = len(registry.versions(kind)) + 1
        except LookupError:
            trials = 1
    per_bar = fold_sharpes / math.sqrt(ppy)
    variance = float(np.var(per_bar, ddof=1)) if per_bar.size > 1 else 0.0
    if returns.size > 1 and np.std(returns) > 0:
        dsr = deflated_sharpe_ratio(returns, max(trials, 1), variance) if trials > 1 else None
        psr = probabilistic_sharpe_ratio(returns)
        deflated = dsr.dsr if dsr is not None else psr
    else:
        psr = deflated = float("nan")
    reasons = []
    if not oos_sharpe >= g.min_oos_sharpe:
        reasons.append(f"OOS Sharpe {oos_sharpe:.2f} < {g.min_oos_sharpe}")
    if not win_rate >= g.min_win_rate:
        reasons.append(f"OOS win rate {win_rate:.1%} < {g.min_win_rate:.0%}")
    if not min_fold >= g.min_fold_sharpe:
        worst = int(np.argmin(fold_sharpes))
        reasons.append(f"fold {folds[worst].fold} Sharpe {min_fold:.2f} < {g.min_fold_sharpe}")
    return GateResult(not reasons, float(oos_sharpe), win_rate, min_fold, float(deflated), float(psr), reasons)


def _log_and_register(config: Config, report: TrainingReport, registry: Any, *, promote: bool, actor: str,
                      tell: Progress) -> None:  # fmt: skip
    tr = config.train
    params = {"model_kind": report.model_kind, "dataset": tr.dataset, "symbols": ",".join(tr.symbols) or "all",
              "start": tr.start, "end": tr.end, "horizons": list(tr.horizons), "signal_horizon": tr.signal_horizon,
              "folds": tr.folds, "train_bars": tr.train_bars, "test_bars": tr.test_bars,
              "embargo_bars": tr.embargo_bars, "validation_share": tr.validation_share,
              **{f"{report.model_kind}.{k}": v for k, v in (dict(tr.lgbm) if report.model_kind == "lgbm" else dict(tr.tft)).items()}}  # fmt: skip
    tags = {"feature_set_version": report.feature_set_version, "model_kind": report.model_kind}
    with registry.start_run(config.models.experiment, f"{report.model_kind}-walk-forward", params, tags) as run:
        for f in report.folds:
            run.log_metrics({"ic": f.ic, "rank_ic": f.rank_ic, "icir": f.icir, "sharpe": f.sharpe,
                             "win_rate": f.win_rate, "trades": f.trades, "total_return": f.total_return}, step=f.fold)  # fmt: skip
        g = report.gate
        run.log_metrics({"oos_sharpe": g.oos_sharpe, "oos_win_rate": g.oos_win_rate, "min_fold_sharpe": g.min_fold_sharpe,
                         "deflated_sharpe": g.deflated_sharpe, "probabilistic_sharpe": g.probabilistic_sharpe,
                         "gate_passed": float(g.passed)})  # fmt: skip
        run.log_dict("explain", report.explain)
        run.log_dict("ensemble_calibration", {"platt": list(report.ensemble_platt), "signals": report.ensemble_signals,
                                              "setting": f"ensemble.platt=[{report.ensemble_platt[0]:.6g}, {report.ensemble_platt[1]:.6g}]"})
        run.log_dict("gate", {"passed": g.passed, "reasons": g.reasons, "oos_sharpe": g.oos_sharpe,
                              "oos_win_rate": g.oos_win_rate, "min_fold_sharpe": g.min_fold_sharpe,
                              "deflated_sharpe": g.deflated_sharpe})  # fmt: skip
        version_tags = {"gate_passed": str(g.passed).lower(), "feature_set_version": report.feature_set_version,
                        "model_kind": report.model_kind, "oos_sharpe": f"{g.oos_sharpe:.6g}",
                        "oos_win_rate": f"{g.oos_win_rate:.6g}", "min_fold_sharpe": f"{g.min_fold_sharpe:.6g}",
                        "deflated_sharpe": f"{g.deflated_sharpe:.6g}", "gate_reasons": "; ".join(g.reasons)}  # fmt: skip
        info = registry.register(report.model_name, run, report.onnx, version_tags)
        report.run_id, report.version = run.run_id, info.version
        tell("registered", {"model": report.model_name, "version": report.version, "run_id": report.run_id})
        if promote and g.passed:
            registry.promote(report.model_name, report.version, actor=actor or "utp train", reason="passed the gate")
            report.promoted = True
            tell("promoted", {"model": report.model_name, "version": report.version})
        # The seeds' walk_forward_results rows, written last so that `promoted` is what happened.
        model_id = f"{report.model_name}/{report.version}"
        run.log_table("walk_forward_results", [
            {"run_id": run.run_id, "model_id": model_id, "params": params, "promoted": report.promoted, **f.row()}
            for f in report.folds])  # fmt: skip
