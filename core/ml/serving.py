"""Serving a model: an ONNX file, its metadata, and the rules that turn quantile forecasts into a vote.

Every model the platform trains is one ONNX graph with input "features" and output "quantiles"
[batch, horizons, 3] (q10, q50, q90 of the forward return per horizon). A tabular model (LightGBM) takes
float64 [batch, features], the latest vector; a sequence model (the TFT) takes float32
[batch, lookback, features], the symbol's last `lookback` vectors. The graph's metadata says which
features in which order, which feature set (version hash) they come from, the horizons, the horizon the
model trades on, the Platt scaling fitted on its out-of-sample predictions, and the training reference
the drift monitor compares against. The file is the whole model: serving needs onnxruntime and nothing
that trained it.

Confidence. The forecast of the signal horizon gives a direction (sign of q50) and a raw confidence
Phi(|q50| / sigma), the probability of the sign under a normal with median q50 whose 10%..90% range is
q10..q90 (sigma = (q90 - q10) / (2 * 1.2816)). Platt scaling (1 / (1 + exp(a * raw + b)), fitted on the
walk-forward's out-of-sample predictions against whether the direction was right) makes it a calibrated
probability.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import ndtr  # scipy comes with skfolio

KEY_PREFIX = "utp."
Z90 = 1.2815515655446004  # standard normal 90% quantile


@dataclass(frozen=True)
class ModelMetadata:
    """What a served model needs to know about itself (stored as the ONNX graph's metadata_props)."""

    model_name: str
    model_kind: str  # lgbm | tft
    feature_set_version: str
    feature_names: tuple[str, ...]
    horizons: tuple[int, ...]
    signal_horizon: int
    lookback: int = 1
    #: Platt scaling of the raw confidence: p = 1 / (1 + exp(a * raw + b)); (0, 0) is not fitted.
    platt: tuple[float, float] = (0.0, 0.0)
    #: Median raw confidence over the out-of-sample predictions (the drift monitor's reference).
    reference_confidence: float = float("nan")
    #: Per feature, decile bin edges (inner edges) and the share of training rows per bin (PSI reference).
    reference_bins: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)
    #: Free-form facts (training run id, data range, gate results) for people, not for serving.
    notes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.signal_horizon not in self.horizons:
            raise ValueError(f"signal horizon {self.signal_horizon} is not among the horizons {list(self.horizons)}")
        if self.lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {self.lookback}")

    @property
    def signal_index(self) -> int:
        return self.horizons.index(self.signal_horizon)

    def to_props(self) -> dict[str, str]:
        props = {
            "model_name": self.model_name,
            "model_kind": self.model_kind,
            "feature_set_version": self.feature_set_version,
            "feature_names": json.dumps(list(self.feature_names)),
            "horizons": json.dumps(list(self.horizons)),
            "signal_horizon": str(self.signal_horizon),
            "lookback": str(self.lookback),
            "platt": json.dumps(list(self.platt)),
            "reference_confidence": json.dumps(self.reference_confidence),
            "reference_bins": json.dumps({k: [list(e), list(p)] for k, (e, p) in self.reference_bins.items()}),
            "notes": json.dumps(dict(self.notes)),
        }
        return {KEY_PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        p = {k.removeprefix(KEY_PREFIX): v for k, v in props.items() if k.startswith(KEY_PREFIX)}
        try:
            bins = json.loads(p.get("reference_bins", "{}"))
            return cls(
                model_name=p["model_name"],
                model_kind=p["model_kind"],
                feature_set_version=p["feature_set_version"],
                feature_names=tuple(json.loads(p["feature_names"])),
                horizons=tuple(int(h) for h in json.loads(p["horizons"])),
                signal_horizon=int(p["signal_horizon"]),
                lookback=int(p.get("lookback", "1")),
                platt=tuple(float(v) for v in json.loads(p.get("platt", "[0, 0]"))),  # type: ignore[arg-type]
                reference_confidence=float(json.loads(p.get("reference_confidence", "NaN"))),
                reference_bins={k: (tuple(e), tuple(s)) for k, (e, s) in bins.items()},
                notes=json.loads(p.get("notes", "{}")),
            )
        except KeyError as exc:
            raise ValueError(f"the model's metadata lacks {KEY_PREFIX}{exc.args[0]}") from None


def raw_confidence(q10: np.ndarray, q50: np.ndarray, q90: np.ndarray) -> np.ndarray:
    """Probability of the median's sign under a normal fitted to the quantiles (0.5 when q50 is 0)."""
    sigma = np.maximum((q90 - q10) / (2.0 * Z90), 1e-12)
    return ndtr(np.abs(q50) / sigma)


def platt_scale(raw: np.ndarray, platt: Sequence[float]) -> np.ndarray:
    """Calibrated probability; the identity when the scaling was not fitted ((0, 0))."""
    a, b = platt
    if a == 0.0 and b == 0.0:
        return raw
    return 1.0 / (1.0 + np.exp(a * raw + b))


def fit_platt(raw: np.ndarray, correct: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Platt's sigmoid fit of P(correct | raw) = 1 / (1 + exp(a * raw + b)) by Newton's method, with
    Platt's smoothed targets so that a separable sample does not drive the parameters to infinity."""
    raw = np.asarray(raw, np.float64)
    y = np.asarray(correct, np.float64)
    positives, negatives = y.sum(), y.size - y.sum()
    if y.size == 0 or positives == 0 or negatives == 0:
        return (0.0, 0.0)
    target = np.where(y > 0, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
    a, b = 0.0, math.log((negatives + 1.0) / (positives + 1.0))
    for _ in range(iterations):
        f = a * raw + b
        p = 1.0 / (1.0 + np.exp(f))
        # gradient and Hessian of the cross-entropy in (a, b); d p / d f = -p (1 - p)
        d = target - p
        g_a, g_b = float(np.dot(d, raw)), float(d.sum())
        w = p * (1.0 - p)
        h_aa, h_ab, h_bb = float(np.dot(w, raw * raw)) + 1e-12, float(np.dot(w, raw)), float(w.sum()) + 1e-12
        det = h_aa * h_bb - h_ab * h_ab
        if det <= 0:
            break
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        a, b = a - step_a, b - step_b
        if abs(step_a) < 1e-10 and abs(step_b) < 1e-10:
            break
    return (float(a), float(b))


def reference_bins(x: np.ndarray, names: Sequence[str], n_bins: int = 10) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Decile edges of each feature over the training rows and the share of rows per bin (PSI reference).
    A feature with fewer than two distinct values gets no reference (PSI is meaningless for it)."""
    out: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for j, name in enumerate(names):
        column = x[:, j][np.isfinite(x[:, j])]
        if column.size == 0:
            continue
        edges = np.unique(np.quantile(column, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
        if edges.size == 0 or np.unique(column).size < 2:
            continue
        counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1)
        out[name] = (tuple(float(e) for e in edges), tuple(float(c) for c in counts / column.size))
    return out


class OnnxModel:
    """An ONNX model in an onnxruntime session (CPU by default; CUDA first when asked and present)."""

    def __init__(self, data: bytes, *, use_cuda: bool = False, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if use_cuda and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(data, options, providers=providers)
        self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
        model_input = self.session.get_inputs()[0]
        if model_input.name != "features" or self.session.get_outputs()[0].name != "quantiles":
            raise ValueError("a model must take 'features' and give 'quantiles'")
        self.sequence = len(model_input.shape) == 3
        self.dtype = np.float32 if model_input.type == "tensor(float)" else np.float64
        if self.sequence != (self.metadata.lookback > 1 or self.metadata.model_kind == "tft"):
            raise ValueError("the model's input rank does not match its lookback")

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """[N, H, 3] float64 from windows [N, lookback, F] (the latest vector alone for a tabular model)."""
        x = windows if self.sequence else windows[:, -1, :]
        (out,) = self.session.run(["quantiles"], {"features": np.ascontiguousarray(x, dtype=self.dtype)})
        return np.asarray(out, np.float64)


@dataclass(frozen=True)
class ServedModel:
    """A model in service: its registry identity and its session."""

    name: str
    version: str
    model: OnnxModel

    @property
    def metadata(self) -> ModelMetadata:
        return self.model.metadata


def load_served(name: str, version: str, data: bytes, **session: Any) -> ServedModel:
    return ServedModel(name, version, OnnxModel(data, **session))
