"""The serving path: the inference engine in the engine graph, model sources, hot reload, drift, votes.

Models here are small linear ONNX graphs (tests/ml_models.py) whose forecasts a test can compute by hand;
the trained models' own exports are tested in test_lgbm.py and test_tft.py.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.ml_models import linear_model
from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock, WallClock
from utp.core.config import DriftConfig, load_config
from utp.core.controls import ControlState
from utp.core.features import FeatureSpec
from utp.core.kinds import KINDS
from utp.core.ml.drift import DriftMonitor
from utp.core.ml.serving import ModelMetadata, fit_platt, load_served, platt_scale, raw_confidence, reference_bins
from utp.core.ml.sources import FixedModel, ModelSchedule, RegistryWatcher
from utp.daemon.session import Session
from utp.v1 import events_pb2 as pb


def goog_config(**overrides: object):
    return load_config([], environ={}, overrides={
        "market_data.dataset": "goog", "market_data.end": "2006-12-31", "ensemble.weights": {"tft": 1.0},
        "ensemble.min_confidence": 0.0, "inference.packaged_fallback": False, **overrides,
    })  # fmt: skip


def model_bytes(config, weight: float = 1.0, **kwargs: object) -> bytes:
    spec = FeatureSpec(config.features)
    return linear_model(spec.names, spec.version, weights={"ret_5": weight}, **kwargs)


async def run_session(config, sources, *, clock=None, on_prediction=None) -> dict[str, pl.DataFrame]:
    bus = InProcessBus()
    session = Session(config, bus=bus, clock=clock or SimulatedClock(), controls=ControlState(execution_approved=True),
                      model_sources=sources)  # fmt: skip
    seen: dict[str, list] = {"prediction": [], "model_alert": [], "feature_vector": [], "scored_signal": []}

    async def tap(kind: str, messages: list) -> None:
        seen[kind].extend(messages)
        if kind == "prediction" and on_prediction is not None:
            on_prediction(len(seen["prediction"]))

    await bus.tap(tap, lambda kind: kind in seen)
    await session.start()
    await session.run()
    await session.stop()
    return {k: KINDS[k].to_frame(v) for k, v in seen.items()}


def test_predictions_equal_the_model_on_the_feature_vectors_and_skip_incomplete_ones() -> None:
    config = goog_config()
    served = load_served("tft", "1", model_bytes(config, 2.0))
    out = asyncio.run(run_session(config, [FixedModel(served)]))
    vectors, predictions = out["feature_vector"], out["prediction"]
    names = FeatureSpec(config.features).names
    complete = vectors.filter(pl.all_horizontal(pl.col(n).is_finite() for n in names))
    assert predictions.height == complete.height > 0
    joined = predictions.join(complete, on=["event_time_ns", "symbol"])
    q = joined["forecasts"].to_list()
    assert all(len(f) == 3 and [x["horizon_bars"] for x in f] == [1, 5, 20] for f in q)
    q50 = np.array([f[1]["q50"] for f in q])
    np.testing.assert_allclose(q50, 2.0 * joined["ret_5"].to_numpy(), rtol=0, atol=1e-12)
    assert set(predictions["model_version"]) == {"1"} and set(predictions["signal_horizon_bars"]) == {5}
    expected_conf = raw_confidence(q50 - 0.01, q50, q50 + 0.01)
    np.testing.assert_allclose(joined["confidence"].to_numpy(), expected_conf, atol=1e-12)
    up = joined["direction"].to_numpy() == pb.DIRECTION_UP
    assert np.array_equal(up, q50 > 0)
    # The first bar time a model serves is announced.
    assert out["model_alert"]["kind"].to_list() == [pb.MODEL_ALERT_KIND_MODEL_SWAPPED]


def test_batch_size_never_changes_a_prediction_or_a_signal() -> None:
    outputs = []
    for batch in (1, 1000):
        config = goog_config(**{"market_data.batch_bar_times": batch})
        served = load_served("tft", "1", model_bytes(config, 3.0))
        outputs.append(asyncio.run(run_session(config, [FixedModel(served)])))
    for kind in ("prediction", "scored_signal"):
        a, b = (o[kind].drop("event_id", "correlation_id") for o in outputs)
        assert a.height > 0 and a.equals(b), kind


def test_the_ensemble_votes_the_model_with_its_quantile_return_threshold() -> None:
    config = goog_config(**{"ensemble.min_expected_return": 0.02, "ensemble.regime_scale": {"bull": 1.0, "bear": 1.0, "sideways": 1.0}})
    served = load_served("tft", "1", model_bytes(config, 1.0))
    out = asyncio.run(run_session(config, [FixedModel(served)]))
    preds = out["prediction"].with_columns(
        pl.col("forecasts").list.get(1).struct.field("q50").alias("q50")).select("event_time_ns", "symbol", "q50", "confidence")
    scored = out["scored_signal"].join(preds, on=["event_time_ns", "symbol"])
    assert scored.height > 0
    strong = scored["q50"].abs().to_numpy() >= 0.02
    score = scored["score"].to_numpy()
    # Beyond the threshold the vote is the model's direction x confidence; inside it the model votes FLAT (0).
    np.testing.assert_allclose(score[strong], np.sign(scored["q50"].to_numpy()[strong]) * scored["confidence"].to_numpy()[strong])
    assert np.all(score[~strong] == 0.0) and strong.any() and (~strong).any()


def test_a_model_schedule_swaps_versions_between_bar_times_without_gaps() -> None:
    config = goog_config()
    first, second = (load_served("tft", v, model_bytes(config, w)) for v, w in (("a", 1.0), ("b", -1.0)))
    swap = 1117584000 * 10**9  # 2005-06-01 00:00 UTC
    out = asyncio.run(run_session(config, [ModelSchedule("tft", [(0, first), (swap, second)])]))
    p = out["prediction"]
    assert p.select(pl.struct("event_time_ns", "symbol").is_duplicated().any()).item() is False
    before, after = p.filter(pl.col("event_time_ns") < swap), p.filter(pl.col("event_time_ns") >= swap)
    assert set(before["model_version"]) == {"a"} and set(after["model_version"]) == {"b"}
    alerts = out["model_alert"]
    assert alerts["kind"].to_list() == [pb.MODEL_ALERT_KIND_MODEL_SWAPPED] * 2
    assert alerts["event_time_ns"][1] == after["event_time_ns"].min()


def test_hot_reload_from_the_registry_mid_stream_drops_and_duplicates_nothing(tmp_path: Path) -> None:
    from utp.core.ml.registry import ModelRegistry

    config = goog_config(**{"market_data.replay_rate": 150.0, "market_data.batch_bar_times": 1})
    registry = ModelRegistry(tmp_path / "mlflow")
    tags = {"gate_passed": "true", "feature_set_version": FeatureSpec(config.features).version, "model_kind": "lgbm",
            "oos_sharpe": "1", "oos_win_rate": "0.5", "min_fold_sharpe": "0.1", "deflated_sharpe": "0.9"}  # fmt: skip
    with registry.start_run("test", "models", {}, {}) as run:
        v1 = registry.register("tft", run, model_bytes(config, 1.0), tags)
        v2 = registry.register("tft", run, model_bytes(config, -1.0), tags)
    registry.promote("tft", v1.version)

    def champion():
        found = registry.champion("tft")
        return None if found is None else (found.version, registry.model_bytes("tft", found.version))

    watcher = RegistryWatcher("tft", champion, poll_s=0.05)
    watcher.start()
    promoted = threading.Event()

    def promote_second() -> None:
        registry.promote("tft", v2.version, reason="test")
        promoted.set()

    def on_prediction(count: int) -> None:
        if count == 100:  # promote while bars stream
            threading.Thread(target=promote_second, daemon=True).start()

    try:
        out = asyncio.run(run_session(config, [watcher], clock=WallClock(), on_prediction=on_prediction))
    finally:
        watcher.stop()
    assert promoted.is_set()
    p = out["prediction"]
    names = FeatureSpec(config.features).names
    complete = out["feature_vector"].filter(pl.all_horizontal(pl.col(n).is_finite() for n in names))
    assert p.height == complete.height  # nothing dropped
    assert not p.select(pl.struct("event_time_ns", "symbol").is_duplicated().any()).item()  # nothing twice
    versions = p.sort("event_time_ns")["model_version"].to_list()
    swap = versions.index("2")
    assert versions[:swap] == ["1"] * swap and set(versions[swap:]) == {"2"} and 100 <= swap < len(versions) - 10
    swapped = out["model_alert"].filter(pl.col("kind") == pb.MODEL_ALERT_KIND_MODEL_SWAPPED)
    assert swapped["model_version"].to_list() == ["1", "2"]


def test_a_model_of_another_feature_set_is_refused_with_an_alert() -> None:
    config = goog_config()
    spec = FeatureSpec(config.features)
    served = load_served("tft", "1", linear_model(spec.names, "not-" + spec.version, weights={"ret_5": 1.0}))
    out = asyncio.run(run_session(config, [FixedModel(served)]))
    assert out["prediction"].height == 0
    alerts = out["model_alert"]
    assert alerts["kind"].to_list() == [pb.MODEL_ALERT_KIND_FEATURE_MISMATCH]
    assert "feature set" in alerts["message"][0]


def test_confidence_drift_pauses_the_model_with_an_alert() -> None:
    config = goog_config(**{"inference.drift.window": 50})
    served = load_served("tft", "1", model_bytes(config, 0.01, reference_confidence=0.99))  # confidence about 0.53
    out = asyncio.run(run_session(config, [FixedModel(served)]))
    alerts = out["model_alert"].filter(pl.col("kind") == pb.MODEL_ALERT_KIND_CONFIDENCE_DRIFT)
    assert alerts.height == 1 and alerts["inference_paused"][0]
    assert out["prediction"].height == 50  # the window that raised it, then nothing
    assert out["prediction"]["event_time_ns"].max() == alerts["event_time_ns"][0]


# -- the pieces ---------------------------------------------------------------------------------------
def _metadata(**kwargs: object) -> ModelMetadata:
    return ModelMetadata(model_name="m", model_kind="lgbm", feature_set_version="v", feature_names=("a", "b"),
                         horizons=(1, 5), signal_horizon=5, **kwargs)  # fmt: skip


def test_drift_monitor_psi_alarm_at_and_around_its_threshold() -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(20_000, 2))
    md = _metadata(reference_bins=reference_bins(train, ("a", "b")), reference_confidence=0.6)
    same = DriftMonitor(md, DriftConfig(window=2000))
    assert same.observe(np.full(2000, 0.6), rng.normal(size=(2000, 2))) is None
    assert max(same.psi().values()) < 0.05
    shifted = rng.normal(size=(2000, 2))
    shifted[:, 1] += 1.0  # a one-sigma shift: PSI about 1
    monitor = DriftMonitor(md, DriftConfig(window=2000))
    alarm = monitor.observe(np.full(2000, 0.6), shifted)
    assert alarm is not None and alarm.kind == "feature" and alarm.feature == "b" and alarm.value > 0.25
    assert monitor.observe(np.full(10, 0.6), shifted[:10]) is None  # paused: one alarm only
    # The threshold is exclusive: PSI equal to it does not fire.
    psi = DriftMonitor(md, DriftConfig(window=2000, psi_threshold=10.0))
    psi.observe(np.full(2000, 0.6), shifted)
    value = max(psi.psi().values())
    at = DriftMonitor(md, DriftConfig(window=2000, psi_threshold=value))
    assert at.observe(np.full(2000, 0.6), shifted) is None


def test_drift_monitor_confidence_alarm_at_a_twenty_percent_drop() -> None:
    md = _metadata(reference_confidence=0.7)
    rows = np.zeros((100, 2))
    ok = DriftMonitor(md, DriftConfig(window=100))
    assert ok.observe(np.full(100, 0.7 * 0.8 + 1e-9), rows) is None
    low = DriftMonitor(md, DriftConfig(window=100))
    alarm = low.observe(np.full(100, 0.7 * 0.8 - 1e-6), rows)
    assert alarm is not None and alarm.kind == "confidence" and alarm.threshold == pytest.approx(0.56)
    early = DriftMonitor(md, DriftConfig(window=100))
    assert early.observe(np.full(99, 0.1), rows[:99]) is None  # nothing judged before the window is full


def test_platt_fit_recovers_a_known_sigmoid() -> None:
    rng = np.random.default_rng(5)
    raw = rng.uniform(0.5, 1.0, 50_000)
    p = 1.0 / (1.0 + np.exp(-6.0 * raw + 4.0))
    correct = rng.uniform(size=raw.size) < p
    a, b = fit_platt(raw, correct)
    assert a == pytest.approx(-6.0, abs=0.3) and b == pytest.approx(4.0, abs=0.2)
    np.testing.assert_allclose(platt_scale(raw[:5], (a, b)), p[:5], atol=0.02)
    assert fit_platt(raw, np.ones(raw.size, bool)) == (0.0, 0.0)  # nothing to learn from one class


def test_metadata_round_trips_through_the_onnx_file() -> None:
    config = goog_config()
    bins = reference_bins(np.random.default_rng(1).normal(size=(100, 1)), ("ret_5",))
    data = model_bytes(config, 1.0, reference_confidence=0.61, reference_bins=bins)
    md = load_served("tft", "1", data).metadata
    assert md.reference_confidence == 0.61 and md.signal_horizon == 5 and md.horizons == (1, 5, 20)
    assert md.reference_bins["ret_5"][0] == bins["ret_5"][0]
    assert md.feature_set_version == FeatureSpec(config.features).version



def test_the_packaged_tft_matches_the_default_feature_set_and_serves_without_torch() -> None:
    import subprocess
    import sys

    from utp.daemon.models import packaged_model, packaged_model_path

    config = load_config([], environ={})
    served = packaged_model(config)
    assert served is not None and packaged_model_path().stat().st_size < 5_000_000
    md = served.metadata
    # A change of the default features without `utp train` again would leave the demo's model unserved.
    assert md.feature_set_version == FeatureSpec(config.features).version
    assert md.model_kind == "tft" and md.lookback > 1 and md.horizons == (1, 5, 20) and md.reference_bins
    # Serving imports no torch: the demo runs on an install without the train extra.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from utp.core.config import load_config; from utp.daemon.models import packaged_model\n"
            "import numpy as np; m = packaged_model(load_config([], environ={}))\n"
            "x = np.zeros((3, m.metadata.lookback, len(m.metadata.feature_names)))\n"
            "print(m.model.predict(x).shape)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(3, 3, 3)"


def test_a_model_that_fails_at_run_time_stops_with_an_alert_and_the_session_goes_on() -> None:
    import onnx
    from onnx import numpy_helper

    config = goog_config(**{"ensemble.weights": {"tft": 0.5, "ema_cross": 0.5}})
    broken = onnx.load_from_string(model_bytes(config, 1.0))
    for init in broken.graph.initializer:
        if init.name == "shape":  # [N, 9] cannot be reshaped to [N, 3, 4]: onnxruntime fails on the first call
            init.CopyFrom(numpy_helper.from_array(np.array([-1, 3, 4], np.int64), "shape"))
    served = load_served("tft", "1", broken.SerializeToString())
    out = asyncio.run(run_session(config, [FixedModel(served)]))
    assert out["prediction"].height == 0 and out["scored_signal"].height > 0  # the alphas still vote
    failed = out["model_alert"].filter(pl.col("kind") == pb.MODEL_ALERT_KIND_MODEL_FAILED)
    assert failed.height == 1 and failed["inference_paused"][0] and "Reshape" in failed["message"][0]
