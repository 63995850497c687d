"""Where the inference engine gets its models: which model version serves which bar time.

* `FixedModel`: one version for the whole run (a backtest of a chosen model, the packaged TFT).
* `ModelSchedule`: version k serves the bar times from its `from_ns` on (walk-forward out-of-sample
  backtests: each fold's model serves its own test window; a promotion replayed at its time).
* `RegistryWatcher`: a live session's champion. A background thread looks at the registry every
  `poll_s` seconds; a new champion is downloaded and its onnxruntime session built off the engine's path,
  then handed over whole. The engine asks for the model once per bar time, so every bar time is predicted
  by exactly one version: a swap neither drops nor repeats a prediction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from utp.core.ml.serving import ServedModel, load_served

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    name: str

    def model_at(self, time_ns: int) -> ServedModel | None:
        """The version that predicts bar time `time_ns` (None: nothing to serve yet)."""
        ...


class FixedModel:
    def __init__(self, model: ServedModel) -> None:
        self.name = model.name
        self.model = model

    def model_at(self, time_ns: int) -> ServedModel | None:  # noqa: ARG002 - the same at every time
        return self.model

    @classmethod
    def from_file(cls, name: str, path: str | Path, version: str = "", **session: object) -> FixedModel:
        path = Path(path)
        return cls(load_served(name, version or path.name, path.read_bytes(), **session))


class ModelSchedule:
    def __init__(self, name: str, schedule: Sequence[tuple[int, ServedModel]]) -> None:
        self.name = name
        self.schedule = sorted(schedule, key=lambda item: item[0])

    def model_at(self, time_ns: int) -> ServedModel | None:
        current = None
        for from_ns, model in self.schedule:
            if from_ns > time_ns:
                break
            current = model
        return current


class RegistryWatcher:
    """The champion of `name` in a registry, followed as it changes (hot reload)."""

    def __init__(
        self,
        name: str,
        champion: Callable[[], tuple[str, bytes] | None],
        *,
        poll_s: float = 5.0,
        fallback: ServedModel | None = None,
        session: dict | None = None,
        look_now: bool = True,
    ) -> None:
        """`champion()` returns (version, ONNX bytes) of the current champion, or None; it is called from
        the watcher's thread, and at construction with `look_now` (a session that starts with its
        champion); without, the thread looks first, and the fallback serves until then."""
        self.name = name
        self._champion = champion
        self.poll_s = poll_s
        self._session = session or {}
        self._current: ServedModel | None = fallback
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if look_now:
            self.refresh()

    def model_at(self, time_ns: int) -> ServedModel | None:  # noqa: ARG002 - whatever is champion now
        with self._lock:
            return self._current

    def refresh(self) -> bool:
        """Look once; True when a new version went into service."""
        try:
            found = self._champion()
            current = self.model_at(0)
            if found is None or (current is not None and current.version == found[0]):
                return False
            model = load_served(self.name, found[0], found[1], **self._session)
        except Exception as exc:  # noqa: BLE001 - a bad registry read or model keeps the old one serving
            log.warning("could not load the champion of %s: %s; the model in service stays", self.name, exc)
            return False
        with self._lock:
            self._current = model
        log.info("model %s version %s is ready to serve", self.name, model.version)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"models-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        self.refresh()
        while not self._stop.wait(self.poll_s):
            self.refresh()
