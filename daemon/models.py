"""Which models a session serves, and from where: the one place that knows about files, the packaged
model and the registry, so the engines see only model sources (`core.ml.sources`).

Per name in `inference.models` (only names with an ensemble weight are served at all):
1. `inference.model_files[name]`: that ONNX file, fixed for the run;
2. the registry's champion (when a registry is given): fixed at the start of a backtest, followed with
   hot reload in a live session (`RegistryWatcher`);
3. for "tft" with `inference.packaged_fallback` (the demo sets it), in backtests: the TFT that ships
   with utp (`configs/models/tft.onnx`, made by `utp train --model tft --dataset goog --set train.start=
   --set train.train_bars=500 --no-registry --output configs/models/tft.onnx`). A live session never
   serves it: there only a champion, which passed the promotion gate, reaches execution.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from utp.core.config import Config
from utp.core.ml.serving import ServedModel, load_served
from utp.core.ml.sources import FixedModel, ModelSource, RegistryWatcher

if TYPE_CHECKING:
    from utp.core.ml.registry import ModelRegistry

log = logging.getLogger(__name__)

PACKAGED_MODEL = "tft"


def packaged_model_path() -> Path:
    return Path(str(files("utp.configs").joinpath("models", "tft.onnx")))


def packaged_model(config: Config) -> ServedModel | None:
    path = packaged_model_path()
    if not path.exists():
        return None
    inf = config.inference
    return load_served(PACKAGED_MODEL, "packaged", path.read_bytes(), use_cuda=inf.use_cuda, threads=inf.threads)


def model_sources(
    config: Config, registry: ModelRegistry | Callable[[], ModelRegistry] | None, *, live: bool = False
) -> list[ModelSource]:
    """The sources of the models the session serves (see the module doc for the order). `registry` may be
    a function that opens it: a live session's watchers then open it from their own thread."""
    inf = config.inference
    session = {"use_cuda": inf.use_cuda, "threads": inf.threads}
    sources: list[ModelSource] = []
    for name in inf.models:
        if name not in config.ensemble.weights:
            continue
        if name in inf.model_files:
            sources.append(FixedModel.from_file(name, inf.model_files[name], **session))
            continue
        fallback = packaged_model(config) if name == PACKAGED_MODEL and inf.packaged_fallback and not live else None
        if registry is not None:
            def champion(name: str = name) -> tuple[str, bytes] | None:
                opened = registry() if callable(registry) else registry
                try:
                    found = opened.champion(name)
                except LookupError:  # nothing registered under this name yet: no champion
                    return None
                return None if found is None else (found.version, opened.model_bytes(name, found.version))

            watcher = RegistryWatcher(name, champion, poll_s=inf.registry_poll_s, fallback=fallback, session=session,
                                      look_now=not live)  # fmt: skip
            if live:
                sources.append(watcher)
                continue
            current = watcher.model_at(0)
            if current is not None:
                sources.append(FixedModel(current))
        elif fallback is not None:
            sources.append(FixedModel(fallback))
    return sources
