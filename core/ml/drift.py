"""The drift monitor: is a served model still seeing the world it was trained on?

Two alarms, each measured over a rolling window of the model's last `window` predictions:

* confidence drift: the window's median raw confidence is more than `confidence_drop` below the median of
  the model's out-of-sample predictions in training (the seeds' "confidence p50 drops 20%");
* feature drift: a feature's population stability index, PSI = sum over bins (a - e) ln(a / e), between
  the window's share of rows per training decile bin (a) and the training share (e), exceeds
  `psi_threshold`. Shares are floored at 1e-4 so an empty bin gives a large but finite PSI.

Nothing is judged before the window is full. The first alarm pauses the model (the caller stops serving
it) until another version takes its place; the monitor says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utp.core.config import DriftConfig
from utp.core.ml.serving import ModelMetadata

_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftAlarm:
    kind: str  # "confidence" | "feature"
    value: float
    threshold: float
    feature: str
    message: str


class DriftMonitor:
    """Rolling confidence median and per-feature PSI of one served model version."""

    def __init__(self, metadata: ModelMetadata, config: DriftConfig) -> None:
        self.config = config
        self.reference = metadata.reference_confidence
        names = [n for n in metadata.feature_names if n in metadata.reference_bins]
        self.features = tuple(names)
        self.columns = np.array([metadata.feature_names.index(n) for n in names], np.int64)
        self.edges = [np.asarray(metadata.reference_bins[n][0], np.float64) for n in names]
        self.expected = [np.maximum(np.asarray(metadata.reference_bins[n][1], np.float64), _FLOOR) for n in names]
        w = config.window
        self.confidences = np.full(w, np.nan)
        self.bins = np.zeros((w, len(names)), np.int64)
        self.seen = 0
        self.paused: DriftAlarm | None = None

    def observe(self, raw_confidence: np.ndarray, features: np.ndarray) -> DriftAlarm | None:
        """Add predictions (raw confidences and the feature rows they came from, model column order);
        returns the alarm that pauses the model, once, when one goes off."""
        if not self.config.enabled or self.paused is not None or raw_confidence.size == 0:
            return None
        w = self.config.window
        rows = np.arange(self.seen, self.seen + raw_confidence.size) % w
        self.confidences[rows] = raw_confidence
        for j, column in enumerate(self.columns):
            self.bins[rows, j] = np.searchsorted(self.edges[j], features[:, column], side="right")
        self.seen += raw_confidence.size
        if self.seen < w:
            return None
        self.paused = self._confidence_alarm() or self._feature_alarm()
        return self.paused

    def psi(self) -> dict[str, float]:
        """The current window's PSI per feature (NaN before the window is full)."""
        if self.seen < self.config.window:
            return dict.fromkeys(self.features, float("nan"))
        return {name: self._psi(j) for j, name in enumerate(self.features)}

    def _psi(self, j: int) -> float:
        expected = self.expected[j]
        actual = np.maximum(np.bincount(self.bins[:, j], minlength=expected.size) / self.config.window, _FLOOR)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def _confidence_alarm(self) -> DriftAlarm | None:
        if not np.isfinite(self.reference) or self.reference <= 0:
            return None
        median = float(np.median(self.confidences))
        floor = (1.0 - self.config.confidence_drop) * self.reference
        if median >= floor:
            return None
        return DriftAlarm("confidence", median, floor, "",
                          f"median confidence {median:.4f} over the last {self.config.window} predictions is below "
                          f"{floor:.4f} ({self.config.confidence_drop:.0%} under the training median {self.reference:.4f})")  # fmt: skip

    def _feature_alarm(self) -> DriftAlarm | None:
        worst, worst_j = 0.0, -1
        for j in range(len(self.features)):
            value = self._psi(j)
            if value > worst:
                worst, worst_j = value, j
        if worst_j < 0 or worst <= self.config.psi_threshold:
            return None
        name = self.features[worst_j]
        return DriftAlarm("feature", worst, self.config.psi_threshold, name,
                          f"feature {name} shifted: PSI {worst:.3f} over the last {self.config.window} predictions "
                          f"> {self.config.psi_threshold}")  # fmt: skip

    def state(self) -> dict:
        return {"confidences": self.confidences, "bins": self.bins, "seen": self.seen, "paused": self.paused}

    def restore(self, state: dict) -> None:
        self.confidences, self.bins, self.seen, self.paused = (
            state["confidences"], state["bins"], state["seen"], state["paused"])  # fmt: skip
