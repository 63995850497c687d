"""The LightGBM baseline: per horizon a q10, a q50 and a q90 booster, and their export to ONE ONNX graph.

The baseline forecasts forward returns at H horizons with three outputs each: the 10% and 90% quantiles
(LightGBM's "quantile" objective) around an L2 regression that serves as the median / point forecast.
That is 3H boosters, but serving wants one onnxruntime call that returns [N, H, 3], so `lgbm_to_onnx`
writes every booster's trees into a single `ai.onnx.ml` TreeEnsemble node, one target per booster.

Why the converter is hand-written: onnxmltools converts one booster per graph with float32 thresholds
and outputs. ai.onnx.ml opset 3's TreeEnsembleRegressor compares in double when given the
`*_as_tensor` attributes but its output is float32 by the ONNX spec (onnxruntime 1.32 refuses a double
output), so the graph uses ai.onnx.ml opset 5's `TreeEnsemble`, whose thresholds, leaf weights and
output are all double: the graph equals LightGBM's own prediction to rounding in the sum of leaves.

LightGBM's decision rule for a numerical split (include/LightGBM/tree.h, `NumericalDecision`) and how
the graph reproduces it, node by node:

* Every prediction path from numpy (`RowPairFunctionFromDenseMatrix` in src/c_api.cpp) drops values
  with |x| <= kZeroThreshold (1e-35f widened to double), so they read as exactly 0.0. The graph does the
  same with one Where before the trees.
* missing_type "None" (the feature had no NaN in training, or use_missing=false): NaN is read as 0.0,
  then `x <= threshold`. A NaN therefore goes where 0.0 goes: missing_value_tracks_true = (0 <= threshold).
* missing_type "NaN": NaN goes to the default side (`default_left`); everything else `x <= threshold`.
* missing_type "Zero" (zero_as_missing=true): 0.0 and NaN go to the default side. The graph appends, for
  each feature such nodes split on, a copy of the column with 0.0 replaced by NaN; those nodes read the
  copy and send NaN to the default side. A copy, because other nodes on the same feature (another
  booster, another missing type) must still compare 0.0 as a number.
* Thresholds come from the model text, not the JSON dump, which clamps the +inf threshold of a
  "numbers left, NaN right" split to 1e300 (see `_split_thresholds`).
* Categorical splits ("==") have no exact counterpart worth the complexity and are refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightgbm
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QUANTILES = (0.1, 0.5, 0.9)
"""The three outputs per horizon, in output order; 0.5 is the L2 regression (the point forecast)."""

BOOSTER_OBJECTIVES: tuple[tuple[str, float | None], ...] = (("quantile", 0.1), ("regression", None), ("quantile", 0.9))
"""(LightGBM objective, alpha) of each output slot, in the order of QUANTILES."""

_Q50_SLOT = 1

LIGHTGBM_ZERO_THRESHOLD = float(np.float32(1e-35))
"""LightGBM's kZeroThreshold (`const double kZeroThreshold = 1e-35f`): |x| at or below it reads as 0."""

_ONNX_OPSET = 21
_ONNX_ML_OPSET = 5
_ONNX_IR_VERSION = 10
"""IR 10 and opset 21 are onnx 1.16's, the release that added ai.onnx.ml opset 5 (TreeEnsemble): the
graph needs nothing newer, so runtimes older than the onnx package that writes it still load it."""

INPUT_NAME = "features"
OUTPUT_NAME = "quantiles"


@dataclass(frozen=True)
class LgbmParams:
    """Training parameters shared by all 3H boosters; small trees and strong regularisation because
    forward returns are mostly noise."""

    num_leaves: int = 15
    learning_rate: float = 0.05
    n_estimators: int = 200
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 20
    seed: int = 7
    num_threads: int = 1
    """1 by default: training often runs beside a live session (TriggerRetrain) and OpenMP's spinning
    threads on cores other processes keep busy can make a fit 100x slower (measured: a 6-booster fit took
    0.8 s on 1 thread and 180 s on 2 threads on a loaded 2-core machine); the baseline's data fit in
    seconds on one core. 0 lets LightGBM take every core."""

    def booster_params(self, objective: str, alpha: float | None) -> dict[str, Any]:
        """LightGBM's parameter dict for one booster. `deterministic` with `force_row_wise` makes two
        fits on the same data and thread count give the same trees (LightGBM otherwise picks row- or
        column-wise histograms by timing, and may sum in a different order)."""
        params: dict[str, Any] = {
            "objective": objective,
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "num_threads": self.num_threads,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        if alpha is not None:
            params["alpha"] = alpha
        return params


@dataclass
class LgbmModel:
    """3H boosters ordered [h0_q10, h0_q50, h0_q90, h1_q10, ...], each holding exactly the trees it
    predicts with (early stopping's surplus is cut off at fit time)."""

    boosters: list[lightgbm.Booster]
    feature_names: tuple[str, ...]
    n_horizons: int

    def __post_init__(self) -> None:
        if len(self.boosters) != len(QUANTILES) * self.n_horizons:
            raise ValueError(f"{len(self.boosters)} boosters for {self.n_horizons} horizons; expected {len(QUANTILES)} per horizon")
        self.feature_names = tuple(self.feature_names)
        for booster in self.boosters:
            if booster.num_feature() != len(self.feature_names):
                raise ValueError(f"a booster has {booster.num_feature()} features, the model names {len(self.feature_names)}")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N, H, 3] float64: q10, q50, q90 per horizon. Quantile boosters are fitted independently and
        can cross the median, so the outputs are sorted around q50: q10 = min(q10, q50) and
        q90 = max(q90, q50). The ONNX graph applies the same rule."""
        raw = self.raw_predict(x)
        return _non_crossing(raw.reshape(raw.shape[0], self.n_horizons, len(QUANTILES)))

    def raw_predict(self, x: np.ndarray) -> np.ndarray:
        """[N, 3H] float64: each booster's own prediction, before the non-crossing rule."""
        features = self._as_features(x)
        return np.stack([booster.predict(features) for booster in self.boosters], axis=1)

    def feature_importance(self, kind: Literal["gain", "split"] = "gain") -> dict[str, float]:
        """Importance summed over the q50 boosters (the point forecasts), normalised to sum to 1, so
        that models with different horizon counts or tree counts compare. All zeros when no q50
        booster has a single split (nothing was learnt)."""
        total = np.zeros(len(self.feature_names))
        for horizon in range(self.n_horizons):
            total += self._q50_booster(horizon).feature_importance(importance_type=kind)
        denominator = total.sum()
        shares = total / denominator if denominator > 0 else total
        return dict(zip(self.feature_names, shares.tolist(), strict=True))

    def shap_values(self, x: np.ndarray, horizon: int = 0) -> np.ndarray:
        """[N, F+1] TreeSHAP contributions of the q50 booster of `horizon` (LightGBM's pred_contrib);
        the last column is the expected value, and each row sums to that booster's prediction."""
        if not 0 <= horizon < self.n_horizons:
            raise ValueError(f"horizon {horizon} outside [0, {self.n_horizons})")
        return self._q50_booster(horizon).predict(self._as_features(x), pred_contrib=True)

    def _q50_booster(self, horizon: int) -> lightgbm.Booster:
        return self.boosters[horizon * len(QUANTILES) + _Q50_SLOT]

    def _as_features(self, x: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(x, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(f"features of shape {features.shape}; expected [N, {len(self.feature_names)}]")
        return features


def _non_crossing(cube: np.ndarray) -> np.ndarray:
    q10, q50, q90 = cube[..., 0], cube[..., 1], cube[..., 2]
    return np.stack([np.minimum(q10, q50), q50, np.maximum(q90, q50)], axis=-1)


def fit_lgbm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray | None,
    y_valid: np.ndarray | None,
    feature_names: Sequence[str],
    params: LgbmParams = LgbmParams(),
) -> LgbmModel:
    """Fit the 3H boosters: per horizon quantile 0.1, L2 regression, quantile 0.9.

    x: float64 [N, F], NaN allowed (LightGBM learns a default side per split); y: [N, H], finite (drop
    rows without a forward return before calling). With a validation set each booster stops early on its
    own objective's validation loss and keeps only its best iterations; without one it grows
    `params.n_estimators` trees.
    """
    x_train = np.ascontiguousarray(x_train, dtype=np.float64)
    y_train = _as_targets(y_train, x_train.shape[0], "train")
    if x_train.ndim != 2 or x_train.shape[1] != len(feature_names):
        raise ValueError(f"x_train of shape {x_train.shape} for {len(feature_names)} feature names")
    if (x_valid is None) != (y_valid is None):
        raise ValueError("give both x_valid and y_valid, or neither")
    n_horizons = y_train.shape[1]
    if x_valid is not None and y_valid is not None:
        x_valid = np.ascontiguousarray(x_valid, dtype=np.float64)
        y_valid = _as_targets(y_valid, x_valid.shape[0], "valid")
        if x_valid.shape[1:] != x_train.shape[1:] or y_valid.shape[1] != n_horizons:
            raise ValueError(f"validation shapes {x_valid.shape}, {y_valid.shape} do not match training's {x_train.shape}, {y_train.shape}")
    boosters: list[lightgbm.Booster] = []
    for horizon in range(n_horizons):
        train_set = lightgbm.Dataset(x_train, label=y_train[:, horizon], feature_name=list(feature_names))
        valid_sets = []
        if x_valid is not None and y_valid is not None:
            valid_sets.append(train_set.create_valid(x_valid, label=y_valid[:, horizon]))
        for objective, alpha in BOOSTER_OBJECTIVES:
            boosters.append(_train_one(train_set, valid_sets, params, objective, alpha))
    return LgbmModel(boosters=boosters, feature_names=tuple(feature_names), n_horizons=n_horizons)


def _as_targets(y: np.ndarray, n_rows: int, which: str) -> np.ndarray:
    targets = np.asarray(y, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[0] != n_rows:
        raise ValueError(f"y_{which} of shape {targets.shape}; expected [{n_rows}, H]")
    if not np.isfinite(targets).all():
        raise ValueError(f"y_{which} has NaN or infinite targets; drop those rows first")
    return targets


def _train_one(
    train_set: lightgbm.Dataset, valid_sets: list[lightgbm.Dataset], params: LgbmParams, objective: str, alpha: float | None
) -> lightgbm.Booster:
    callbacks = [lightgbm.early_stopping(params.early_stopping_rounds, verbose=False)] if valid_sets else []
    booster = lightgbm.train(
        params.booster_params(objective, alpha),
        train_set,
        num_boost_round=params.n_estimators,
        valid_sets=valid_sets,
        callbacks=callbacks,
    )
    if booster.best_iteration > 0:
        # Drop the trees past the best iteration so that predict, SHAP, importance and the ONNX export
        # all see the same trees without each having to pass num_iteration.
        booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


# ---------------------------------------------------------------------------------------------- ONNX


class _TreeEnsembleBuilder:
    """Accumulates the ai.onnx.ml opset 5 TreeEnsemble attributes: interior nodes in `nodes_*`, leaves
    in `leaf_*`, a child reference being an index into one or the other per `nodes_*leafs`."""

    def __init__(self, feature_count: int) -> None:
        self.feature_count = feature_count
        self.tree_roots: list[int] = []
        self.node_features: list[int] = []
        self.node_thresholds: list[float] = []
        self.node_true_ids: list[int] = []
        self.node_true_is_leaf: list[int] = []
        self.node_false_ids: list[int] = []
        self.node_false_is_leaf: list[int] = []
        self.node_missing_tracks_true: list[int] = []
        self.leaf_targets: list[int] = []
        self.leaf_weights: list[float] = []
        self.zero_as_missing_columns: dict[int, int] = {}
        """feature -> the appended input column that holds it with 0.0 replaced by NaN."""

    def add_booster(self, booster: lightgbm.Booster, target: int) -> None:
        dump = booster.dump_model()
        _check_exportable(dump, target, self.feature_count)
        thresholds = _split_thresholds(booster)
        if len(thresholds) != len(dump["tree_info"]):
            raise ValueError(f"booster {target}: {len(thresholds)} trees in its model text, {len(dump['tree_info'])} in its dump")
        for tree, tree_thresholds in zip(dump["tree_info"], thresholds, strict=True):
            self._add_tree(tree["tree_structure"], tree_thresholds, target, f"booster {target} tree {tree['tree_index']}")

    def _add_tree(self, root: dict[str, Any], thresholds: list[float], target: int, where: str) -> None:
        if "leaf_value" in root:
            # A tree without a split: one node whose both branches are the same leaf (as the spec says).
            leaf = self._add_leaf(root, target, where)
            self.tree_roots.append(self._new_node())
            self._set_split(self.tree_roots[-1], feature=0, threshold=0.0, missing_tracks_true=False)
            self._set_children(self.tree_roots[-1], (leaf, True), (leaf, True))
            return
        self.tree_roots.append(self._new_node())
        pending = [(root, self.tree_roots[-1])]
        while pending:
            split, node = pending.pop()
            self._set_split(node, *self._decision(split, thresholds[split["split_index"]], where))
            children = []
            for child in (split["left_child"], split["right_child"]):
                if "leaf_value" in child:
                    children.append((self._add_leaf(child, target, where), True))
                else:
                    child_node = self._new_node()
                    pending.append((child, child_node))
                    children.append((child_node, False))
            self._set_children(node, children[0], children[1])

    def _decision(self, split: dict[str, Any], threshold: float, where: str) -> tuple[int, float, bool]:
        """(input column, threshold, NaN goes left) reproducing LightGBM's rule; left is `x <= threshold`."""
        if split["decision_type"] != "<=":
            raise ValueError(
                f"{where} has a categorical split on feature {split['split_feature']} (decision_type "
                f"{split['decision_type']!r}); the ONNX export supports numerical splits only, train without categorical_feature"
            )
        feature, missing_type = split["split_feature"], split["missing_type"]
        if missing_type == "None":
            return feature, threshold, 0.0 <= threshold
        if missing_type == "NaN":
            return feature, threshold, bool(split["default_left"])
        if missing_type == "Zero":
            column = self.zero_as_missing_columns.setdefault(feature, self.feature_count + len(self.zero_as_missing_columns))
            return column, threshold, bool(split["default_left"])
        raise ValueError(f"{where}: unknown missing_type {missing_type!r}")

    def _new_node(self) -> int:
        self.node_features.append(0)
        self.node_thresholds.append(0.0)
        self.node_missing_tracks_true.append(0)
        for ids in (self.node_true_ids, self.node_true_is_leaf, self.node_false_ids, self.node_false_is_leaf):
            ids.append(0)
        return len(self.node_features) - 1

    def _set_split(self, node: int, feature: int, threshold: float, missing_tracks_true: bool) -> None:
        self.node_features[node] = feature
        self.node_thresholds[node] = threshold
        self.node_missing_tracks_true[node] = int(missing_tracks_true)

    def _set_children(self, node: int, left: tuple[int, bool], right: tuple[int, bool]) -> None:
        self.node_true_ids[node], self.node_true_is_leaf[node] = left[0], int(left[1])
        self.node_false_ids[node], self.node_false_is_leaf[node] = right[0], int(right[1])

    def _add_leaf(self, leaf: dict[str, Any], target: int, where: str) -> int:
        if "leaf_const" in leaf:
            raise ValueError(f"{where} is a linear tree (linear_tree=true); the ONNX export supports constant leaves only")
        self.leaf_targets.append(target)
        self.leaf_weights.append(float(leaf["leaf_value"]))
        return len(self.leaf_weights) - 1

    def node(self, inputs: str, output: str, n_targets: int) -> onnx.NodeProto:
        return helper.make_node(
            "TreeEnsemble",
            [inputs],
            [output],
            domain="ai.onnx.ml",
            name="boosters",
            n_targets=n_targets,
            aggregate_function=1,  # SUM: a booster's prediction is the sum of its trees' leaves
            post_transform=0,  # NONE
            tree_roots=self.tree_roots,
            nodes_featureids=self.node_features,
            nodes_splits=numpy_helper.from_array(np.asarray(self.node_thresholds, dtype=np.float64)),
            nodes_modes=numpy_helper.from_array(np.zeros(len(self.node_features), dtype=np.uint8)),  # BRANCH_LEQ
            nodes_truenodeids=self.node_true_ids,
            nodes_trueleafs=self.node_true_is_leaf,
            nodes_falsenodeids=self.node_false_ids,
            nodes_falseleafs=self.node_false_is_leaf,
            nodes_missing_value_tracks_true=self.node_missing_tracks_true,
            leaf_targetids=self.leaf_targets,
            leaf_weights=numpy_helper.from_array(np.asarray(self.leaf_weights, dtype=np.float64)),
        )


def _split_thresholds(booster: lightgbm.Booster) -> list[list[float]]:
    """Per tree, the thresholds indexed by split_index, read from the model text rather than the JSON
    dump: the dump clamps thresholds to +-1e300 (LightGBM's AvoidInf) while the trees compare with the
    real value, and a split that sends NaN one way and every number the other has threshold +inf
    (x = 1e301 goes left in LightGBM; with the dump's 1e300 it would go right). The text keeps "inf"."""
    prefix = "threshold="
    return [[float(value) for value in line[len(prefix) :].split()] for line in booster.model_to_string().splitlines() if line.startswith(prefix)]


_IDENTITY_OBJECTIVES = ("regression", "quantile")
"""Objectives whose prediction is the raw sum of leaves (no link function), the only ones the graph computes."""


def _check_exportable(dump: dict[str, Any], target: int, feature_count: int) -> None:
    objective = dump.get("objective", "").split()
    if not objective or objective[0] not in _IDENTITY_OBJECTIVES or "sqrt" in objective:
        raise ValueError(f"booster {target} has objective {dump.get('objective')!r}; the export computes {_IDENTITY_OBJECTIVES} only")
    if dump["num_tree_per_iteration"] != 1 or dump["average_output"]:
        raise ValueError(f"booster {target} is multi-class or a random forest; the export computes plain boosted regressions only")
    if dump["max_feature_idx"] + 1 != feature_count:
        raise ValueError(f"booster {target} has {dump['max_feature_idx'] + 1} features, the model {feature_count}")


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value, name))


def _graph_nodes(builder: _TreeEnsembleBuilder, n_horizons: int) -> Iterator[onnx.NodeProto]:
    """features -> (LightGBM's zero snap) -> [zero-as-missing copies] -> trees -> [N, H, 3] -> non-crossing."""
    yield _constant("zero_threshold", np.array(LIGHTGBM_ZERO_THRESHOLD))
    yield _constant("zero", np.array(0.0))
    yield helper.make_node("Abs", [INPUT_NAME], ["magnitude"])
    yield helper.make_node("LessOrEqual", ["magnitude", "zero_threshold"], ["reads_as_zero"])
    yield helper.make_node("Where", ["reads_as_zero", "zero", INPUT_NAME], ["snapped"])
    tree_input = "snapped"
    if builder.zero_as_missing_columns:
        yield _constant("zero_as_missing_features", np.array(list(builder.zero_as_missing_columns), dtype=np.int64))
        yield _constant("nan", np.array(np.nan))
        yield helper.make_node("Gather", ["snapped", "zero_as_missing_features"], ["zero_as_missing_source"], axis=1)
        yield helper.make_node("Equal", ["zero_as_missing_source", "zero"], ["is_zero"])
        yield helper.make_node("Where", ["is_zero", "nan", "zero_as_missing_source"], ["zero_as_nan"])
        yield helper.make_node("Concat", ["snapped", "zero_as_nan"], ["tree_input"], axis=1)
        tree_input = "tree_input"
    yield builder.node(tree_input, "raw", n_targets=len(QUANTILES) * n_horizons)
    yield _constant("cube_shape", np.array([-1, n_horizons, len(QUANTILES)], dtype=np.int64))
    yield helper.make_node("Reshape", ["raw", "cube_shape"], ["cube"])
    yield helper.make_node("Split", ["cube"], ["q10", "q50", "q90"], axis=2, num_outputs=len(QUANTILES))
    yield helper.make_node("Min", ["q10", "q50"], ["q10_below_median"])
    yield helper.make_node("Max", ["q90", "q50"], ["q90_above_median"])
    yield helper.make_node("Concat", ["q10_below_median", "q50", "q90_above_median"], [OUTPUT_NAME], axis=2)


def lgbm_to_onnx(model: LgbmModel, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise the model as one ONNX graph: input "features" double [batch, F], output "quantiles"
    double [batch, H, 3] equal to `model.predict` (to the rounding of summing the same leaves).

    The metadata props hold "feature_names" (JSON list, the input's column order) and "quantiles",
    then `metadata` (its keys win).
    """
    feature_count = len(model.feature_names)
    builder = _TreeEnsembleBuilder(feature_count)
    for target, booster in enumerate(model.boosters):
        builder.add_booster(booster, target)
    graph = helper.make_graph(
        list(_graph_nodes(builder, model.n_horizons)),
        "lgbm_quantiles",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.DOUBLE, ["batch", feature_count])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.DOUBLE, ["batch", model.n_horizons, len(QUANTILES)])],
    )
    proto = helper.make_model(
        graph,
        producer_name="utp.core.ml.lgbm",
        opset_imports=[helper.make_opsetid("", _ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", _ONNX_ML_OPSET)],
        ir_version=_ONNX_IR_VERSION,
    )
    properties = {"feature_names": json.dumps(list(model.feature_names)), "quantiles": json.dumps(list(QUANTILES))}
    properties.update(metadata or {})
    helper.set_model_props(proto, properties)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()
