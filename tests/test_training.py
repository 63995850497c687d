"""Datasets (no look-ahead), the walk-forward trainer, the promotion gate and the CLI around them."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from utp.core.config import FeaturesConfig, load_config
from utp.core.features import Benchmark
from utp.core.ml.dataset import build_dataset, label_column
from utp.daemon.cli import main
from utp.daemon.train import FoldResult, _gate, information_coefficients, train_walk_forward
from utp.storage.datasets import dataset, load_sp500_index

SYMBOLS = ("AAPL", "JPM", "XOM", "KO", "MSFT")


def _sp500(start: date, end: date) -> pl.DataFrame:
    return dataset("sp500").bars(SYMBOLS, start, end)


def test_features_never_look_ahead_and_labels_are_forward_returns() -> None:
    bars = _sp500(date(2012, 1, 1), date(2014, 12, 31))
    benchmark = Benchmark.from_frame(load_sp500_index())
    data = build_dataset("sp500", bars, FeaturesConfig(), (1, 5, 20), benchmark=benchmark)
    cut = int(np.unique(bars["event_time_ns"].to_numpy())[400])
    # Scramble every bar after the cut (each symbol's future closes shuffled among its later bars).
    rng = np.random.default_rng(11)
    past, future = bars.filter(pl.col("event_time_ns") <= cut), bars.filter(pl.col("event_time_ns") > cut)
    future = future.with_columns(
        pl.col(c).shuffle(seed=int(rng.integers(1 << 30))).over("symbol") for c in ("open", "high", "low", "close", "volume")
    )
    scrambled = build_dataset("sp500", pl.concat([past, future]), FeaturesConfig(), (1, 5, 20), benchmark=benchmark)
    before = data.frame.filter(pl.col("event_time_ns") <= cut)
    after = scrambled.frame.filter(pl.col("event_time_ns") <= cut)
    assert before.height > 1000
    assert before.select(data.feature_names).equals(after.select(data.feature_names))  # features: unchanged
    # Labels change exactly where they reach past the cut.
    reaching = before["label_end_ns"].to_numpy() > cut
    same = before[label_column(20)].to_numpy() == after[label_column(20)].to_numpy()
    assert same[~reaching & np.isfinite(before[label_column(20)].to_numpy())].all() and not same[reaching].all()
    # A label is the close h bars later over the close now, per symbol.
    aapl = bars.filter(pl.col("symbol") == "AAPL")["close"].to_numpy()
    rows = data.frame.filter(pl.col("symbol") == "AAPL")
    np.testing.assert_allclose(rows[label_column(5)].to_numpy()[:-5], aapl[5:] / aapl[:-5] - 1.0, rtol=1e-15)
    assert rows[label_column(5)].tail(5).is_nan().all()


def test_windows_are_each_symbols_latest_rows_and_need_complete_history() -> None:
    data = build_dataset("sp500", _sp500(date(2015, 1, 1), date(2015, 12, 31)), FeaturesConfig(), (1, 5),
                         benchmark=Benchmark.from_frame(load_sp500_index()))  # fmt: skip
    usable = data.usable(10)
    rows = np.flatnonzero(usable)
    windows = data.windows(rows[:50], 10)
    x = data.features()
    np.testing.assert_array_equal(windows[7], x[rows[7] - 9 : rows[7] + 1].astype(np.float32))
    first_usable = np.flatnonzero(data.usable(1))[0]
    assert not usable[first_usable + 8] and usable[first_usable + 9]
    with pytest.raises(ValueError, match="fewer than 10 rows"):
        data.windows(np.array([0]), 10)


def test_information_coefficients_per_bar_time() -> None:
    times = np.repeat(np.arange(50), 10)
    rng = np.random.default_rng(2)
    realised = rng.normal(size=times.size)
    ic, rank_ic, icir = information_coefficients(times, realised * 2.0 + 1.0, realised)
    assert ic == pytest.approx(1.0) and rank_ic == pytest.approx(1.0) and math.isnan(icir)  # no spread of ICs
    noisy = realised + rng.normal(size=times.size)
    ic, rank_ic, icir = information_coefficients(times, noisy, realised)
    assert 0.5 < ic < 0.9 and 0.5 < rank_ic < 0.9 and icir > 1


def _folds(sharpes: list[float]) -> list[FoldResult]:
    return [FoldResult(i, 0, 1, 2, 3, 10, 10, 0.0, 0.0, 0.0, sharpe=s) for i, s in enumerate(sharpes)]


class _Trade:
    def __init__(self, pnl: float) -> None:
        self.pnl = pnl


def test_the_gate_passes_only_a_model_that_meets_every_threshold() -> None:
    config = load_config([], environ={})
    rng = np.random.default_rng(4)
    good = rng.normal(0.002, 0.01, 756)  # annualised Sharpe about 3
    wins = [_Trade(1.0)] * 55 + [_Trade(-1.0)] * 45
    passed = _gate(config, _folds([1.0, 0.2, 2.0]), good, wins, 252.0, None, "lgbm")
    assert passed.passed and passed.reasons == [] and passed.oos_win_rate == 0.55
    assert 0.99 < passed.deflated_sharpe <= 1.0
    # One fold below 0 fails it, whatever the rest.
    one_bad = _gate(config, _folds([1.0, -0.01, 2.0]), good, wins, 252.0, None, "lgbm")
    assert not one_bad.passed and one_bad.reasons == ["fold 1 Sharpe -0.01 < 0.0"]
    # The win rate at its threshold passes, just below fails.
    at = _gate(config, _folds([1.0]), good, [_Trade(1.0)] * 45 + [_Trade(-1.0)] * 55, 252.0, None, "lgbm")
    below = _gate(config, _folds([1.0]), good, [_Trade(1.0)] * 44 + [_Trade(-1.0)] * 56, 252.0, None, "lgbm")
    assert at.passed and not below.passed and "win rate" in below.reasons[0]
    flat = _gate(config, _folds([0.1]), rng.normal(0.0, 0.01, 756) - 0.0005, wins, 252.0, None, "lgbm")
    assert not flat.passed and flat.reasons[0].startswith("OOS Sharpe")


SMALL = ["--set", "train.start=2014-06-01", "--set", "train.train_bars=250", "--set", "train.test_bars=30",
         "--folds", "2", "--set", "train.lgbm={n_estimators: 30}", "--symbols", ",".join(SYMBOLS)]  # fmt: skip
LENIENT = ["--set", "train.gate={min_oos_sharpe: -100, min_win_rate: 0.0, min_fold_sharpe: -100}",
           "--set", "ensemble.weights={lgbm: 0.5, rsi: 0.2, ema_cross: 0.2, macd: 0.1}"]


def test_train_logs_gates_registers_and_only_a_passing_model_can_be_promoted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--data-dir", str(tmp_path)]
    assert main(["train", "--model", "lgbm", *SMALL, *common, "--json"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert len(strict["folds"]) == 2 and strict["version"] == "1"
    assert set(strict["folds"][0]) == {"fold", "in_sample_start", "in_sample_end", "oos_start", "oos_end", "metrics"}
    assert main(["train", "--model", "lgbm", *SMALL, *LENIENT, *common, "--json"]) == 0
    lenient = json.loads(capsys.readouterr().out)
    assert lenient["gate"]["passed"] and lenient["version"] == "2"
    # The ensemble's confidence is calibrated on its out-of-sample signals (the model with the alphas).
    assert strict["ensemble_signals"] == 0 and lenient["ensemble_signals"] > 20
    assert lenient["ensemble_platt"] != [0.0, 0.0] and all(math.isfinite(v) for v in lenient["ensemble_platt"])
    # The same data and model: the lenient gate changes only the verdict.
    assert lenient["gate"]["oos_sharpe"] == strict["gate"]["oos_sharpe"]
    if not strict["gate"]["passed"]:
        assert main(["models", "promote", "lgbm", "1", *common]) == 1
        assert "gate" in capsys.readouterr().err
    assert main(["models", "promote", "lgbm", *common]) == 0  # the challenger: version 2
    assert "version 2 is champion" in capsys.readouterr().out
    assert main(["models", "list", "lgbm", *common, "--json"]) == 0
    listed = {v["version"]: v for v in json.loads(capsys.readouterr().out)}
    assert "champion" in listed["2"]["aliases"] and listed["2"]["tags"]["gate_passed"] == "true"
    assert listed["1"]["tags"]["gate_passed"] == str(strict["gate"]["passed"]).lower()
    # MLflow holds the folds in the seeds' walk_forward_results shape.
    from utp.core.ml.registry import ModelRegistry

    from mlflow import MlflowClient

    client = MlflowClient(ModelRegistry(tmp_path / "mlflow").uri, ModelRegistry(tmp_path / "mlflow").uri)
    run_id = listed["2"]["run_id"]
    path = client.download_artifacts(run_id, "walk_forward_results.json", str(tmp_path))
    rows = json.loads(Path(path).read_text())
    assert [r["fold"] for r in rows] == [f["fold"] for f in lenient["folds"]] and all(r["run_id"] == run_id for r in rows)
    assert sorted(m.step for m in client.get_metric_history(run_id, "ic")) == [f["fold"] for f in lenient["folds"]]
    assert client.get_run(run_id).data.tags["feature_set_version"] == listed["2"]["tags"]["feature_set_version"]


def test_the_walk_forward_purges_the_label_horizon_between_train_and_test() -> None:
    config = load_config([], environ={}, overrides={
        "train.start": "2014-06-01", "train.train_bars": 250, "train.test_bars": 30, "train.folds": 2,
        "train.lgbm": {"n_estimators": 20}, "train.symbols": list(SYMBOLS)})  # fmt: skip
    report = train_walk_forward(config, "lgbm")
    times = np.unique(dataset("sp500").bars(SYMBOLS, date(2014, 6, 1))["event_time_ns"].to_numpy())
    for fold in report.folds:
        gap = np.searchsorted(times, fold.test_start_ns) - np.searchsorted(times, fold.train_end_ns)
        assert gap == max(config.train.horizons) + config.train.embargo_bars + 1
    md = report.metadata
    assert md.signal_horizon == 5 and md.horizons == (1, 5, 20) and md.reference_bins
    assert 0.5 <= md.reference_confidence <= 1.0


def test_train_refuses_unknown_model_parameters_and_explains_a_missing_torch(capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    assert main(["train", "--model", "lgbm", "--no-registry", "--set", "train.lgbm={n_trees: 5}"]) == 2
    err = capsys.readouterr().err
    assert "train.lgbm" in err and "n_trees" in err
    code = ("import sys; sys.modules['torch'] = None\n"
            "from utp.daemon.cli import main\n"
            "sys.exit(main(['train', '--model', 'tft', '--no-registry']))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "pip install 'utp[train]'" in out.stderr


def test_backtest_serves_a_registered_version_exactly_as_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.ml_models import linear_model
    from utp.core.features import FeatureSpec
    from utp.core.ml.registry import ModelRegistry

    spec = FeatureSpec(load_config([], environ={}).features)
    model = linear_model(spec.names, spec.version, weights={"ret_5": 1.0})
    (tmp_path / "model.onnx").write_bytes(model)
    registry = ModelRegistry(tmp_path / "mlflow")
    tags = {"gate_passed": "true", "feature_set_version": spec.version, "model_kind": "lgbm", "oos_sharpe": "1",
            "oos_win_rate": "0.5", "min_fold_sharpe": "0", "deflated_sharpe": "0.9"}  # fmt: skip
    with registry.start_run("test", "backtest", {}, {}) as run:
        version = registry.register("tft", run, model, tags).version
    registry.promote("tft", version)
    common = ["backtest", "--dataset", "goog", "--end", "2007-12-31", "--json", "--data-dir", str(tmp_path),
              "--set", "ensemble.weights={tft: 0.5, ema_cross: 0.5}", "--set", "ensemble.min_confidence=0.3"]  # fmt: skip
    results = []
    for which in ("tft=champion", f"tft={version}", f"tft={tmp_path / 'model.onnx'}"):
        assert main([*common, "--model", which]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] == results[2] and results[0]["trades"] > 0
    assert main([*common]) == 0  # without the model the ensemble votes otherwise
    assert json.loads(capsys.readouterr().out) != results[0]
    assert main([*common, "--model", "tft=challenger"]) == 2
    assert "has no challenger" in capsys.readouterr().err
