"""Inference: the served models' forecasts for every bar of every symbol.

Consumes: `feature_vector`. Produces: `prediction`, `model_alert`.

Per bar time, the feature vectors of all its symbols go to each model in ONE onnxruntime call (a
sequence model gets each symbol's last `lookback` vectors, kept here in a ring per symbol). A symbol gets
a prediction when its vectors are complete (every feature finite) for the whole window, the rule its
training data followed. The same per-bar-time calls happen whatever the batch size, so batching never
changes a forecast.

Which version serves a bar time is the model source's answer (`core.ml.sources`): a swap (hot reload
on promotion) takes effect between two bar times and is announced with a MODEL_SWAPPED alert. A version
whose features are not the session's (another feature-set hash, a missing feature) is refused with a
FEATURE_MISMATCH alert; one whose call fails stops serving with a MODEL_FAILED alert while the session
goes on. Each version has a drift monitor (`core.ml.drift`); its alarm pauses that model's
predictions, with an alert, until another version takes over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from utp.core.config import DriftConfig
from utp.core.kernels import entry, writable
from utp.core.kinds import KINDS, feature_columns
from utp.core.ml.drift import DriftMonitor
from utp.core.ml.serving import ServedModel, platt_scale, raw_confidence
from utp.core.ml.sources import ModelSource
from utp.core.runtime import Engine, EngineContext, Input
from utp.core.universe import Universe
from utp.v1 import events_pb2 as pb


@entry
@njit(cache=True)
def _push(sid, values, history, head, run):  # noqa: ANN001
    """Append each row's vector to its symbol's ring; count consecutive complete vectors."""
    capacity = history.shape[1]
    for r in range(sid.shape[0]):
        s = sid[r]
        h = (head[s] + 1) % capacity
        head[s] = h
        complete = True
        for j in range(values.shape[1]):
            history[s, h, j] = values[r, j]
            if not np.isfinite(values[r, j]):
                complete = False
        run[s] = run[s] + 1 if complete else 0


@entry
@njit(cache=True)
def _gather(sid, columns, history, head, out):  # noqa: ANN001
    """out[i] = the last `lookback` vectors (the model's columns) of symbol sid[i], oldest first."""
    capacity = history.shape[1]
    lookback = out.shape[1]
    for i in range(sid.shape[0]):
        s = sid[i]
        for k in range(lookback):
            h = (head[s] - (lookback - 1 - k)) % capacity
            for c in range(columns.shape[0]):
                out[i, k, c] = history[s, h, columns[c]]


class _Serving:
    """The state of one model name: the version in service, its columns and drift monitor."""

    def __init__(self, model: ServedModel, columns: np.ndarray, monitor: DriftMonitor) -> None:
        self.model = model
        self.columns = columns
        self.monitor = monitor
        #: Why the model stopped serving when a call failed (it is not tried again until another version).
        self.failure = ""


class InferenceEngine(Engine):
    name = "inference"
    inputs = (Input("feature_vector"),)
    outputs = ("prediction", "model_alert")

    def __init__(
        self,
        sources: Sequence[ModelSource],
        universe: Universe,
        *,
        feature_set_version: str,
        history_bars: int = 64,
        drift: DriftConfig | None = None,
    ) -> None:
        self.sources = tuple(sources)
        self.universe = universe
        self.feature_set_version = feature_set_version
        self.history_bars = history_bars
        self.drift = drift or DriftConfig()
        self.vector_names: tuple[str, ...] = ()
        self.history = np.zeros((len(universe), history_bars, 0))
        self.head = np.full(len(universe), -1, np.int64)
        self.run = np.zeros(len(universe), np.int64)
        self.serving: dict[str, _Serving | None] = {s.name: None for s in self.sources}
        self.refused: set[tuple[str, str]] = set()
        self._restored_monitors: dict[str, tuple[str, dict]] = {}

    # -- the step -------------------------------------------------------------------------------------
    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        vectors, sid, unknown = self.universe.split(frames["feature_vector"])
        if unknown:
            ctx.log.warning("dropped %d feature vectors of symbols outside the universe", unknown)
            ctx.count_rejected(unknown)
        if not vectors.height:
            return
        self._ensure_history(feature_columns(vectors))
        # C order: a frame's to_numpy is Fortran-ordered, and a slice of it a new kernel signature (layout 'A')
        values = writable(vectors.select(self.vector_names).to_numpy(), np.float64)
        times = vectors["event_time_ns"].to_numpy()
        starts = np.flatnonzero(np.r_[True, times[1:] != times[:-1]])
        ends = np.r_[starts[1:], times.size]
        parts: list[tuple[ServedModel, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        alerts: list[dict[str, Any]] = []
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            _push(sid[a:b], values[a:b], self.history, self.head, self.run)
            t = int(times[a])
            for source in self.sources:
                serving = self._serving_at(source, t, alerts)
                if serving is None or serving.monitor.paused is not None or serving.failure:
                    continue
                md = serving.model.metadata
                ready = np.flatnonzero(self.run[sid[a:b]] >= md.lookback) + a
                if not ready.size:
                    continue
                windows = np.empty((ready.size, md.lookback, serving.columns.size))
                _gather(sid[ready], serving.columns, self.history, self.head, windows)
                try:
                    quantiles = serving.model.model.predict(windows)
                    if quantiles.shape != (ready.size, len(md.horizons), 3):
                        raise ValueError(f"it returned quantiles of shape {quantiles.shape}, "
                                         f"not ({ready.size}, {len(md.horizons)}, 3)")  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - a broken model must not stop the session
                    serving.failure = str(exc).splitlines()[0][:300]
                    alerts.append(self._alert(t, serving.model, pb.MODEL_ALERT_KIND_MODEL_FAILED,
                                              f"model {serving.model.name} {serving.model.version} failed and "
                                              f"stopped serving: {serving.failure}", paused=True))  # fmt: skip
                    ctx.log.error("model %s %s failed: %s", serving.model.name, serving.model.version, serving.failure)
                    continue
                signal = quantiles[:, md.signal_index, :]
                raw = raw_confidence(signal[:, 0], signal[:, 1], signal[:, 2])
                parts.append((serving.model, ready, quantiles, raw, platt_scale(raw, md.platt)))
                alarm = serving.monitor.observe(raw, windows[:, -1, :])
                if alarm is not None:
                    alerts.append(self._alert(t, serving.model, pb.MODEL_ALERT_KIND_CONFIDENCE_DRIFT
                                              if alarm.kind == "confidence" else pb.MODEL_ALERT_KIND_FEATURE_DRIFT,
                                              alarm.message, value=alarm.value, threshold=alarm.threshold,
                                              feature=alarm.feature, paused=True))  # fmt: skip
                    ctx.log.warning("model %s %s paused: %s", serving.model.name, serving.model.version, alarm.message)
        if parts:
            ctx.emit("prediction", self._frame(vectors, parts))
        if alerts:
            ctx.emit("model_alert", pl.DataFrame(alerts, schema=KINDS["model_alert"].schema))

    def _serving_at(self, source: ModelSource, time_ns: int, alerts: list[dict[str, Any]]) -> _Serving | None:
        model = source.model_at(time_ns)
        current = self.serving[source.name]
        if model is None or (current is not None and current.model is model):
            return current
        if (model.name, model.version) in self.refused:
            return current
        md = model.metadata
        missing = [n for n in md.feature_names if n not in self.vector_names]
        if md.feature_set_version != self.feature_set_version or missing:
            why = (f"features {', '.join(missing[:5])} are not computed" if missing else
                   f"it was trained on feature set {md.feature_set_version}, the session computes {self.feature_set_version}")
            alerts.append(self._alert(time_ns, model, pb.MODEL_ALERT_KIND_FEATURE_MISMATCH,
                                      f"model {model.name} {model.version} is not served: {why}"))  # fmt: skip
            self.refused.add((model.name, model.version))
            return current
        if md.lookback > self.history_bars:
            alerts.append(self._alert(time_ns, model, pb.MODEL_ALERT_KIND_FEATURE_MISMATCH,
                                      f"model {model.name} {model.version} needs {md.lookback} bars of history; "
                                      f"inference.history_bars is {self.history_bars}"))  # fmt: skip
            self.refused.add((model.name, model.version))
            return current
        columns = np.array([self.vector_names.index(n) for n in md.feature_names], np.int64)
        serving = _Serving(model, columns, DriftMonitor(md, self.drift))
        restored = self._restored_monitors.pop(source.name, None)
        if restored is not None and restored[0] == model.version:  # the same version after a restart
            serving.monitor.restore(restored[1])
        self.serving[source.name] = serving
        previous = f" (was {current.model.version})" if current is not None else ""
        alerts.append(self._alert(time_ns, model, pb.MODEL_ALERT_KIND_MODEL_SWAPPED,
                                  f"model {model.name} {model.version} serves from this bar{previous}"))  # fmt: skip
        return serving

    # -- outputs --------------------------------------------------------------------------------------
    def _frame(self, vectors: pl.DataFrame, parts: list[tuple[ServedModel, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> pl.DataFrame:
        frames = []
        for model, rows, quantiles, _raw, confidence in parts:
            md = model.metadata
            signal_median = quantiles[:, md.signal_index, 1]
            direction = np.where(signal_median > 0, pb.DIRECTION_UP,
                                 np.where(signal_median < 0, pb.DIRECTION_DOWN, pb.DIRECTION_FLAT)).astype(np.int32)  # fmt: skip
            forecasts = pl.concat_list([
                pl.struct(pl.lit(h, pl.Int32).alias("horizon_bars"), pl.lit(pl.Series(quantiles[:, k, 0])).alias("q10"),
                          pl.lit(pl.Series(quantiles[:, k, 1])).alias("q50"), pl.lit(pl.Series(quantiles[:, k, 2])).alias("q90"))
                for k, h in enumerate(md.horizons)
            ])  # fmt: skip
            frames.append(
                vectors[rows].select(
                    (pl.lit(f"prediction/{model.name}/") + pl.col("correlation_id")).alias("event_id"),
                    "correlation_id", "event_time_ns", "symbol",
                    pl.lit(model.name).alias("model_name"), pl.lit(model.version).alias("model_version"),
                    pl.lit(md.feature_set_version).alias("feature_set_version"),
                    forecasts.alias("forecasts"),
                    pl.lit(md.signal_horizon, pl.Int32).alias("signal_horizon_bars"),
                    pl.lit(pl.Series(direction)).alias("direction"),
                    pl.lit(pl.Series(confidence)).alias("confidence"),
                )  # fmt: skip
            )
        schema = KINDS["prediction"].schema
        out = pl.concat(frames).sort("event_time_ns", maintain_order=True) if len(frames) > 1 else frames[0]
        return out.select(list(schema)).cast(schema)  # type: ignore[arg-type]

    def _alert(self, time_ns: int, model: ServedModel, kind: int, message: str, *, value: float = 0.0,
               threshold: float = 0.0, feature: str = "", paused: bool = False) -> dict[str, Any]:  # fmt: skip
        return {"event_id": f"model_alert/{model.name}/{model.version}/{kind}/{time_ns}", "correlation_id": "",
                "event_time_ns": time_ns, "symbol": "", "model_name": model.name, "model_version": model.version,
                "kind": kind, "message": message, "value": value, "threshold": threshold, "feature": feature,
                "inference_paused": paused}  # fmt: skip

    # -- state ----------------------------------------------------------------------------------------
    def _ensure_history(self, names: list[str]) -> None:
        if tuple(names) == self.vector_names:
            return
        if self.vector_names:
            raise ValueError("the feature vectors changed their features mid-session")
        self.vector_names = tuple(names)
        self.history = np.full((len(self.universe), self.history_bars, len(names)), np.nan)

    def snapshot(self) -> Any:
        monitors = {name: (s.model.version, s.monitor.state()) for name, s in self.serving.items() if s is not None}
        return {"vector_names": self.vector_names, "history": self.history, "head": self.head, "run": self.run,
                "monitors": monitors, "refused": self.refused}  # fmt: skip

    def restore(self, state: Any) -> None:
        self.vector_names, self.history, self.head, self.run = (
            state["vector_names"], state["history"], state["head"], state["run"])  # fmt: skip
        self.refused = state["refused"]
        # The versions come back from their sources; a monitor resumes only for the same version.
        self._restored_monitors = state["monitors"]
