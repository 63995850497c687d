"""LightGBM baseline: training helpers, and the one-graph ONNX export equal to LightGBM's own prediction."""

from __future__ import annotations

import json

import lightgbm
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from utp.core.ml.lgbm import (
    BOOSTER_OBJECTIVES,
    LIGHTGBM_ZERO_THRESHOLD,
    LgbmModel,
    LgbmParams,
    fit_lgbm,
    lgbm_to_onnx,
)

FEATURES = ("signal", "with_nan", "zero_heavy", "noise_a", "noise_b")
HORIZONS = 2
PARAMS = LgbmParams(num_threads=1)
"""One thread: LightGBM's OpenMP threads slow down by 100x on a busy 2-core machine (measured)."""


def synthetic(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y depends mostly on `signal`; `with_nan` and `zero_heavy` carry NaN in training so that splits on
    them learn a default side ("NaN" missing type) while the other features split with "None"."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, len(FEATURES)))
    x[rng.random(n_rows) < 0.15, 1] = np.nan
    x[rng.random(n_rows) < 0.3, 2] = 0.0
    x[rng.random(n_rows) < 0.1, 2] = np.nan
    shared = 0.8 * x[:, 0] + 0.3 * np.nan_to_num(x[:, 1]) + 0.5 * np.isnan(x[:, 1]) + 0.3 * (x[:, 2] == 0.0)
    y = np.stack([shared + (0.4 + 0.2 * h) * rng.normal(size=n_rows) for h in range(HORIZONS)], axis=1)
    return x, y


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": synthetic(4000, 1), "valid": synthetic(1000, 2), "test": synthetic(2000, 3)}


@pytest.fixture(scope="module")
def fitted(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> LgbmModel:
    (x_train, y_train), (x_valid, y_valid) = data["train"], data["valid"]
    return fit_lgbm(x_train, y_train, x_valid, y_valid, FEATURES, PARAMS)


def boosters_with(extra: dict[str, object], data: dict[str, tuple[np.ndarray, np.ndarray]]) -> LgbmModel:
    """One horizon's three boosters trained with LightGBM parameters fit_lgbm does not expose
    (use_missing, zero_as_missing), to cover the other missing types."""
    x, y = data["train"]
    train_set = lightgbm.Dataset(x, label=y[:, 0], feature_name=list(FEATURES))
    boosters = [
        lightgbm.train(PARAMS.booster_params(objective, alpha) | extra, train_set, num_boost_round=60)
        for objective, alpha in BOOSTER_OBJECTIVES
    ]
    return LgbmModel(boosters=boosters, feature_names=FEATURES, n_horizons=1)


def splits(model: LgbmModel) -> list[dict]:
    found = []
    for booster in model.boosters:
        pending = [tree["tree_structure"] for tree in booster.dump_model()["tree_info"]]
        while pending:
            node = pending.pop()
            if "split_feature" in node:
                found.append(node)
                pending += [node["left_child"], node["right_child"]]
    return found


def probe_rows(model: LgbmModel, n_rows: int, seed: int) -> np.ndarray:
    """Rows that hit every edge of LightGBM's decision rule: NaN, +-inf, 0.0, -0.0, values at and around
    kZeroThreshold (read as 0 by LightGBM), and split thresholds exactly and one ulp above (the dump's
    thresholds, so also 1e300 where LightGBM's is +inf)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, len(FEATURES)))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    zero = LIGHTGBM_ZERO_THRESHOLD
    edges = [np.inf, -np.inf, -0.0, zero, -zero, zero / 2, -zero / 2, np.nextafter(zero, 1.0), -np.nextafter(zero, 1.0)]
    at_edge = rng.random(x.shape) < 0.05
    x[at_edge] = rng.choice(edges, at_edge.sum())
    thresholds = [(node["split_feature"], node["threshold"]) for node in splits(model)]
    for row in range(n_rows):
        for _ in range(2):
            feature, threshold = thresholds[rng.integers(len(thresholds))]
            x[row, feature] = threshold if rng.random() < 0.5 else np.nextafter(threshold, np.inf)
    return x


def session(model: LgbmModel) -> ort.InferenceSession:
    return ort.InferenceSession(lgbm_to_onnx(model), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("variant", "missing_types"),
    [("fit_lgbm", {"NaN", "None"}), ("use_missing=false", {"None"}), ("zero_as_missing=true", {"Zero"})],
)
def test_onnx_equals_lightgbm(variant: str, missing_types: set[str], fitted: LgbmModel, data: dict) -> None:
    extra = {"use_missing=false": {"use_missing": False}, "zero_as_missing=true": {"zero_as_missing": True}}
    model = fitted if variant == "fit_lgbm" else boosters_with(extra[variant], data)
    assert {node["missing_type"] for node in splits(model)} == missing_types
    x = probe_rows(model, 3000, seed=11)
    got = session(model).run(None, {"features": x})[0]
    assert got.dtype == np.float64 and got.shape == (3000, model.n_horizons, 3)
    np.testing.assert_allclose(got, model.predict(x), rtol=0, atol=1e-9)


def test_numbers_against_nan_split_keeps_its_infinite_threshold(fitted: LgbmModel) -> None:
    """Such a split has threshold +inf in LightGBM but 1e300 in dump_model(): 1e301 must go left."""
    features = sorted({node["split_feature"] for node in splits(fitted) if node["threshold"] == 1e300})
    assert features
    x = np.random.default_rng(14).normal(size=(1000, len(FEATURES)))
    x[:, features] = 1e301
    np.testing.assert_allclose(session(fitted).run(None, {"features": x})[0], fitted.predict(x), rtol=0, atol=1e-9)


def test_trees_without_a_split_export(data: dict) -> None:
    """min_data_in_leaf above the row count: every tree is a single leaf (the boosted average)."""
    model = boosters_with({"min_data_in_leaf": 10_000}, data)
    assert not splits(model)
    x = data["test"][0]
    np.testing.assert_allclose(session(model).run(None, {"features": x})[0], model.predict(x), rtol=0, atol=1e-9)


def test_graph_signature_and_metadata(fitted: LgbmModel) -> None:
    proto = onnx.load_from_string(lgbm_to_onnx(fitted, {"run_id": "abc"}))
    onnx.checker.check_model(proto, full_check=True)
    props = {prop.key: prop.value for prop in proto.metadata_props}
    assert props["run_id"] == "abc" and json.loads(props["feature_names"]) == list(FEATURES)
    assert [node.op_type for node in proto.graph.node].count("TreeEnsemble") == 1
    (features,), (quantiles,) = proto.graph.input, proto.graph.output
    assert features.name == "features" and features.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert quantiles.name == "quantiles" and [d.dim_value for d in quantiles.type.tensor_type.shape.dim][1:] == [HORIZONS, 3]


def test_batch_of_one_equals_batch_of_thousand(fitted: LgbmModel) -> None:
    x = probe_rows(fitted, 1000, seed=12)
    runner = session(fitted)
    batched = runner.run(None, {"features": x})[0]
    one_by_one = np.concatenate([runner.run(None, {"features": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_array_equal(one_by_one, batched)


def test_quantiles_do_not_cross(fitted: LgbmModel) -> None:
    x = probe_rows(fitted, 2000, seed=13)
    # The q10 and q90 boosters swapped: every row crosses, so the rule has something to repair.
    crossed = LgbmModel([fitted.boosters[i] for i in (2, 1, 0, 5, 4, 3)], FEATURES, HORIZONS)
    assert (crossed.raw_predict(x)[:, 0] > crossed.raw_predict(x)[:, 1]).mean() > 0.9
    for model in (fitted, crossed):
        raw = model.raw_predict(x).reshape(len(x), HORIZONS, 3)
        cube = model.predict(x)
        np.testing.assert_array_equal(cube[..., 1], raw[..., 1])
        np.testing.assert_array_equal(cube[..., 0], np.minimum(raw[..., 0], raw[..., 1]))
        np.testing.assert_array_equal(cube[..., 2], np.maximum(raw[..., 2], raw[..., 1]))
        served = session(model).run(None, {"features": x})[0]
        np.testing.assert_allclose(served, cube, rtol=0, atol=1e-9)
        for quantiles in (cube, served):
            assert (quantiles[..., 0] <= quantiles[..., 1]).all() and (quantiles[..., 1] <= quantiles[..., 2]).all()


def test_learns_the_signal_and_its_spread(fitted: LgbmModel, data: dict) -> None:
    x, y = data["test"]
    cube = fitted.predict(x)
    for horizon in range(HORIZONS):
        assert np.corrcoef(cube[:, horizon, 1], y[:, horizon])[0, 1] > 0.5
        coverage = np.mean((cube[:, horizon, 0] <= y[:, horizon]) & (y[:, horizon] <= cube[:, horizon, 2]))
        assert 0.7 < coverage < 0.9, coverage


def test_fit_is_deterministic(fitted: LgbmModel, data: dict) -> None:
    (x_train, y_train), (x_valid, y_valid) = data["train"], data["valid"]
    again = fit_lgbm(x_train, y_train, x_valid, y_valid, FEATURES, PARAMS)
    assert [b.model_to_string() for b in again.boosters] == [b.model_to_string() for b in fitted.boosters]
    x = data["test"][0]
    np.testing.assert_array_equal(again.predict(x), fitted.predict(x))


def test_early_stopping_keeps_only_the_best_trees(fitted: LgbmModel) -> None:
    assert all(0 < booster.num_trees() < PARAMS.n_estimators for booster in fitted.boosters)


def test_shap_sums_to_the_median_and_importance_ranks_the_signal(fitted: LgbmModel, data: dict) -> None:
    x = data["test"][0][:500]
    raw = fitted.raw_predict(x)
    for horizon in range(HORIZONS):
        contributions = fitted.shap_values(x, horizon)
        assert contributions.shape == (len(x), len(FEATURES) + 1)
        np.testing.assert_allclose(contributions.sum(axis=1), raw[:, 3 * horizon + 1], rtol=0, atol=1e-9)
    for kind in ("gain", "split"):
        importance = fitted.feature_importance(kind)
        assert sum(importance.values()) == pytest.approx(1.0)
        assert max(importance, key=importance.__getitem__) == "signal"


def test_categorical_split_is_refused(data: dict) -> None:
    x, y = data["train"]
    categories = np.random.default_rng(5).integers(0, 6, len(x))
    x = np.column_stack([categories, x[:, 1:]]).astype(np.float64)
    label = y[:, 0] + categories % 2  # so that the categorical feature is split on
    train_set = lightgbm.Dataset(x, label=label, feature_name=list(FEATURES), categorical_feature=[0])
    boosters = [lightgbm.train(PARAMS.booster_params(o, a), train_set, num_boost_round=5) for o, a in BOOSTER_OBJECTIVES]
    assert any(node["decision_type"] == "==" for node in splits(LgbmModel(boosters, FEATURES, 1)))
    with pytest.raises(ValueError, match="categorical split"):
        lgbm_to_onnx(LgbmModel(boosters, FEATURES, 1))


def test_objective_with_a_link_function_is_refused(fitted: LgbmModel, data: dict) -> None:
    x, y = data["train"]
    binary = lightgbm.train({"objective": "binary", "num_threads": 1, "verbosity": -1}, lightgbm.Dataset(x, label=y[:, 0] > 0), num_boost_round=3)
    with pytest.raises(ValueError, match="objective"):
        lgbm_to_onnx(LgbmModel([binary, *fitted.boosters[1:3]], FEATURES, 1))
