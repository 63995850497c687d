"""Small ONNX models with the serving contract, for tests of the serving path (no training needed).

`linear_model` forecasts q50 = scale * (weights . x) at every horizon with q10/q90 = q50 -/+ spread: a
real ONNX graph run by onnxruntime, whose outputs a test can compute by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utp.core.ml.serving import ModelMetadata


def linear_model(
    feature_names: Sequence[str],
    feature_set_version: str,
    *,
    weights: dict[str, float],
    horizons: Sequence[int] = (1, 5, 20),
    signal_horizon: int = 5,
    spread: float = 0.01,
    name: str = "tft",
    reference_confidence: float = float("nan"),
    reference_bins: dict | None = None,
) -> bytes:
    f, h = len(feature_names), len(horizons)
    w = np.zeros((f, h * 3))
    for feature, value in weights.items():
        j = list(feature_names).index(feature)
        for k in range(h):
            w[j, 3 * k : 3 * k + 3] = value
    offset = np.tile(np.array([-spread, 0.0, spread]), h)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["linear"]),
            helper.make_node("Add", ["linear", "offset"], ["flat"]),
            helper.make_node("Reshape", ["flat", "shape"], ["quantiles"]),
        ],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["batch", f])],
        [helper.make_tensor_value_info("quantiles", TensorProto.DOUBLE, ["batch", h, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(offset, "offset"),
         numpy_helper.from_array(np.array([-1, h, 3], np.int64), "shape")],  # fmt: skip
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    metadata = ModelMetadata(
        model_name=name, model_kind="lgbm", feature_set_version=feature_set_version,
        feature_names=tuple(feature_names), horizons=tuple(horizons), signal_horizon=signal_horizon,
        reference_confidence=reference_confidence, reference_bins=reference_bins or {},
    )  # fmt: skip
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()
