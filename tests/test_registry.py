"""The model registry on a local SQLite store: tracking runs, registration with the challenger alias,
gated promotion and rollback, ONNX artifacts, and state surviving a new registry object."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from utp.core.ml.registry import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    PromotionRefused,
    UnknownModel,
)

FAKE_ONNX = bytes(range(256)) * 64 + b"\x00tail"


def version_tags(gate_passed: bool, sharpe: float = 1.2) -> dict[str, str]:
    return {
        "gate_passed": "true" if gate_passed else "false",
        "feature_set_version": "fs-3",
        "model_kind": "lgbm",
        "oos_sharpe": str(sharpe),
        "oos_win_rate": "0.54",
        "min_fold_sharpe": "0.3" if gate_passed else "-0.8",
        "deflated_sharpe": "0.97",
    }


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly created store, made once: creating MLflow's tables takes seconds, copying them not."""
    root = tmp_path_factory.mktemp("template")
    ModelRegistry(root)
    return root / "mlflow.db"


def registry_root(tmp_path: Path, empty_database: Path) -> Path:
    root = tmp_path / "registry"
    root.mkdir()
    shutil.copyfile(empty_database, root / "mlflow.db")
    return root


@pytest.fixture
def registry(tmp_path: Path, empty_database: Path) -> ModelRegistry:
    return ModelRegistry(registry_root(tmp_path, empty_database))


def register_trained(
    registry: ModelRegistry, gate_passed: bool, onnx: bytes = FAKE_ONNX, name: str = "lgbm"
) -> str:
    with registry.start_run("walk-forward", f"{name}-train", {"num_leaves": 31}, {"model": name}) as run:
        info = registry.register(name, run, onnx, version_tags(gate_passed))
    return info.version


def test_run_logs_params_metrics_and_json_artifacts(registry: ModelRegistry, tmp_path: Path) -> None:
    params = {"num_leaves": 31, "lr": 0.05}
    with registry.start_run("walk-forward", "lgbm-fold-test", params, {"symbol_set": "sp500"}) as run:
        for fold, sharpe in enumerate([0.8, 1.1, 0.9]):
            run.log_metrics({"fold_sharpe": sharpe, "fold_hit_rate": 0.5 + fold / 100}, step=fold)
        run.log_dict("config", {"horizon": 5, "features": ["rsi", "atr"]})
        run.log_table("walk_forward_results", [{"fold": 0, "sharpe": 0.8}, {"fold": 1, "sharpe": 1.1}])

    client = MlflowClient(registry.uri)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "lgbm-fold-test"
    assert stored.data.params == {"num_leaves": "31", "lr": "0.05"}
    assert stored.data.tags["symbol_set"] == "sp500"
    history = client.get_metric_history(run.run_id, "fold_sharpe")
    by_step = sorted(history, key=lambda metric: metric.step)
    assert [(metric.step, metric.value) for metric in by_step] == [(0, 0.8), (1, 1.1), (2, 0.9)]

    downloaded = Path(client.download_artifacts(run.run_id, "", str(tmp_path / "download")))
    assert json.loads((downloaded / "config.json").read_text()) == {"horizon": 5, "features": ["rsi", "atr"]}
    assert json.loads((downloaded / "walk_forward_results.json").read_text())[1] == {"fold": 1, "sharpe": 1.1}
    # Artifacts live under the registry root, not in the working directory.
    assert stored.info.artifact_uri.startswith((tmp_path / "registry" / "artifacts").as_uri())


def test_exception_inside_run_marks_it_failed(registry: ModelRegistry) -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        with registry.start_run("walk-forward", "doomed", {}, {}) as run:
            raise RuntimeError("training diverged")
    assert MlflowClient(registry.uri).get_run(run.run_id).info.status == "FAILED"


def test_challenger_alias_goes_to_passing_versions_only(registry: ModelRegistry) -> None:
    passing = register_trained(registry, gate_passed=True)
    failing = register_trained(registry, gate_passed=False)

    assert registry.by_alias("lgbm", CHALLENGER).version == passing
    assert registry.get("lgbm", passing).aliases == (CHALLENGER,)
    assert registry.get("lgbm", failing).aliases == ()
    assert not registry.get("lgbm", failing).gate_passed
    assert registry.get("lgbm", passing).feature_set_version == "fs-3"
    assert registry.champion("lgbm") is None

    newer_passing = register_trained(registry, gate_passed=True, onnx=FAKE_ONNX + b"v3")
    assert registry.by_alias("lgbm", CHALLENGER).version == newer_passing
    assert registry.get("lgbm", passing).aliases == ()


def test_promotion_is_gated_and_moves_the_aliases(registry: ModelRegistry) -> None:
    passing = register_trained(registry, gate_passed=True)
    failing = register_trained(registry, gate_passed=False)

    with pytest.raises(PromotionRefused, match="promotion gate") as refused:
        registry.promote("lgbm", failing)
    assert "min_fold_sharpe=-0.8" in str(refused.value)
    with pytest.raises(PromotionRefused, match="version 99"):
        registry.promote("lgbm", "99")

    champion = registry.promote("lgbm", actor="alice", reason="beats baseline")
    assert champion.version == passing
    assert champion.aliases == (CHAMPION,)  # the challenger alias is used up
    assert champion.tags["promoted_by"] == "alice"
    assert champion.tags["promoted_reason"] == "beats baseline"
    assert int(champion.tags["promoted_at_ms"]) > 0
    assert registry.champion("lgbm") == champion

    with pytest.raises(PromotionRefused, match="already the champion"):
        registry.promote("lgbm", passing)
    with pytest.raises(PromotionRefused, match="no challenger"):
        registry.promote("lgbm")


def test_rollback_returns_to_the_previous_champion_once(registry: ModelRegistry) -> None:
    first = register_trained(registry, gate_passed=True)
    registry.promote("lgbm", first, actor="alice")
    second = register_trained(registry, gate_passed=True, onnx=FAKE_ONNX + b"second")
    assert registry.promote("lgbm", actor="alice").version == second

    restored = registry.rollback("lgbm", actor="bob", reason="live drawdown")
    assert restored.version == first
    assert restored.tags["promoted_by"] == "bob"
    assert restored.tags["promoted_reason"] == "live drawdown"
    assert registry.champion("lgbm").version == first
    assert CHAMPION not in registry.get("lgbm", second).aliases

    with pytest.raises(PromotionRefused, match="no previous champion"):
        registry.rollback("lgbm")


def test_model_bytes_round_trip_and_model_file_caches(registry: ModelRegistry, tmp_path: Path) -> None:
    version = register_trained(registry, gate_passed=True)
    assert registry.model_bytes("lgbm", version) == FAKE_ONNX

    cache = tmp_path / "cache"
    path = registry.model_file("lgbm", version, cache)
    assert path.read_bytes() == FAKE_ONNX
    modified_ns = path.stat().st_mtime_ns
    assert registry.model_file("lgbm", version, cache) == path
    assert path.stat().st_mtime_ns == modified_ns  # served from the cache, not downloaded again

    path.write_bytes(b"corrupt")  # e.g. a cache shared with a rebuilt registry
    assert registry.model_file("lgbm", version, cache).read_bytes() == FAKE_ONNX


def test_one_run_registers_two_models_without_overwriting(registry: ModelRegistry) -> None:
    with registry.start_run("walk-forward", "both", {}, {}) as run:
        lgbm = registry.register("lgbm", run, b"lgbm-graph", version_tags(True))
        tft = registry.register("tft", run.run_id, b"tft-graph", version_tags(True))
    assert registry.model_bytes("lgbm", lgbm.version) == b"lgbm-graph"
    assert registry.model_bytes("tft", tft.version) == b"tft-graph"


def test_versions_newest_first_with_aliases(registry: ModelRegistry) -> None:
    first = register_trained(registry, gate_passed=True)
    registry.promote("lgbm", first)
    second = register_trained(registry, gate_passed=False, onnx=b"2")
    third = register_trained(registry, gate_passed=True, onnx=b"3")
    tft = register_trained(registry, gate_passed=False, onnx=b"t", name="tft")

    listed = registry.versions("lgbm")
    assert [(v.version, v.aliases) for v in listed] == [
        (third, (CHALLENGER,)),
        (second, ()),
        (first, (CHAMPION,)),
    ]
    everything = registry.versions()
    assert [(v.name, v.version) for v in everything] == [
        ("tft", tft),
        ("lgbm", third),
        ("lgbm", second),
        ("lgbm", first),
    ]
    assert everything[1].aliases == (CHALLENGER,)


def test_a_new_registry_object_sees_the_same_state(tmp_path: Path, empty_database: Path) -> None:
    root = registry_root(tmp_path, empty_database)
    before = ModelRegistry(root)
    first = register_trained(before, gate_passed=True)
    before.promote("lgbm", first)
    second = register_trained(before, gate_passed=True, onnx=b"second")
    before.promote("lgbm", second)

    after = ModelRegistry(root)  # as after a process restart
    assert after.uri == before.uri
    assert after.champion("lgbm").version == second
    assert [v.version for v in after.versions("lgbm")] == [second, first]
    assert after.rollback("lgbm").version == first  # the promotion history survived too
    assert after.model_bytes("lgbm", first) == FAKE_ONNX


def test_unknown_models_and_versions_raise_unknown_model(registry: ModelRegistry) -> None:
    register_trained(registry, gate_passed=True)
    with pytest.raises(UnknownModel, match="model nope"):
        registry.get("nope", "1")
    with pytest.raises(UnknownModel, match="version 7"):
        registry.get("lgbm", "7")
    with pytest.raises(UnknownModel, match="positive integers"):
        registry.get("lgbm", "latest")
    with pytest.raises(UnknownModel, match="model nope"):
        registry.champion("nope")
    with pytest.raises(UnknownModel, match="model nope"):
        registry.versions("nope")
    with pytest.raises(UnknownModel):
        registry.model_bytes("lgbm", "7")
    with pytest.raises(LookupError):  # UnknownModel is a LookupError
        registry.register("lgbm", "0123456789abcdef", FAKE_ONNX, version_tags(True))


def test_register_requires_the_gate_tags(registry: ModelRegistry) -> None:
    with registry.start_run("walk-forward", "incomplete", {}, {}) as run:
        tags = version_tags(True)
        del tags["deflated_sharpe"]
        with pytest.raises(ValueError, match="deflated_sharpe"):
            registry.register("lgbm", run, FAKE_ONNX, tags)
        with pytest.raises(ValueError, match="gate_passed"):
            registry.register("lgbm", run, FAKE_ONNX, {**version_tags(True), "gate_passed": "True"})


def test_a_process_killed_while_it_creates_the_store_leaves_none_or_a_whole_one(tmp_path: Path) -> None:
    # bench/chaos.py found it: a daemon killed while MLflow built its tables left a database every later start
    # refused. Kill the creating process at several points; whatever it left, the next registry works.
    import signal
    import subprocess
    import sys
    import time

    build = "from pathlib import Path; from utp.core.ml.registry import ModelRegistry; ModelRegistry(Path(r'%s'))"
    for delay in (0.0, 0.3, 0.7, 1.2):
        root = tmp_path / f"killed-after-{delay}"
        process = subprocess.Popen([sys.executable, "-c", build % root])
        # Killed once the database file exists (under its own name or in place): while MLflow builds its tables.
        deadline = time.monotonic() + 120
        while not (root.exists() and any(root.glob("mlflow.db*"))) and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        registry = ModelRegistry(root)
        assert registry.versions() == []
        with registry.start_run("walk-forward", "after-the-kill", {}, {}) as run:
            run.log_metrics({"fold_sharpe": 1.0}, step=0)
