"""Experiment tracking and the model registry, on MLflow.

Training runs record their parameters, per-step metrics and JSON artifacts (walk-forward tables,
configurations); each trained model is an ONNX file registered as a version of a named model
("lgbm", "tft") together with string tags: whether it passed the promotion gate, the feature-set
version it was trained on, its kind and its out-of-sample metrics. Serving loads whichever version
carries the alias "champion"; the newest version that passed the gate carries "challenger".
Promotion moves "champion" only to a version that passed the gate, and keeps a history of earlier
champions so that a bad promotion can be rolled back in one step.

Locally everything lives under one root folder: a SQLite database (`mlflow.db`, tracking and
registry) and the artifact files (`artifacts/`). MLflow's file store (`./mlruns`) is not used: it
refuses to start in MLflow 3.17. A server URI (`http://host:5000`) or a database URI can replace the
local store. Each `ModelRegistry` talks through its own `MlflowClient` and never touches MLflow's
process-wide tracking URI, so several registries can live in one process.

Importing mlflow takes more than a second, so this module imports it only when a `ModelRegistry` is
made: code that merely names these types (command-line parsing, type hints) stays fast to start.

Errors: an unknown model, version or run raises `UnknownModel` (a `LookupError`); a promotion or
rollback that would break the rules raises `PromotionRefused`, with the reason in its message (that
includes promoting a version that does not exist). Registering with tags that break the contract
raises `ValueError`.

A promotion or rollback is several MLflow calls, not one transaction: run them from one operator at a
time (the console or the CLI), not from concurrent jobs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

CHAMPION = "champion"
CHALLENGER = "challenger"

# Tags every registered version must carry: the gate decides promotion, the feature-set version tells
# serving which features the model expects, and the out-of-sample metrics explain the gate's decision.
REQUIRED_TAGS = (
    "gate_passed",
    "feature_set_version",
    "model_kind",
    "oos_sharpe",
    "oos_win_rate",
    "min_fold_sharpe",
    "deflated_sharpe",
)
GATE_METRIC_TAGS = ("oos_sharpe", "oos_win_rate", "min_fold_sharpe", "deflated_sharpe")

# Tags that `register` writes itself (they override any given by the caller): where the ONNX file is
# among the run's artifacts, and its digest, which lets `model_file` trust a cached copy.
ONNX_ARTIFACT_TAG = "onnx_artifact"
ONNX_SHA256_TAG = "onnx_sha256"
ONNX_FILE_NAME = "model.onnx"

# Registered-model tag: JSON list of earlier champion versions, oldest first; rollback pops the last.
CHAMPION_HISTORY_TAG = "champion_history"

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LOCAL_DB_NAME = "mlflow.db"
_LOCAL_ARTIFACTS_DIR = "artifacts"


class PromotionRefused(Exception):
    """A promotion or rollback that the rules forbid; the message says which rule and why."""


class UnknownModel(LookupError):
    """The named model, version or run does not exist in the registry."""


class InvalidModelRequest(ValueError):
    """A name or version the registry cannot hold (e.g. a model name with '/' or ':', or blank)."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version as the platform sees it, detached from MLflow's entity classes."""

    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    created_ms: int
    tags: dict[str, str]

    @property
    def gate_passed(self) -> bool:
        """Whether walk-forward validation let this version through the promotion gate."""
        return self.tags.get("gate_passed") == "true"

    @property
    def feature_set_version(self) -> str:
        """The feature-set version the model was trained on; serving must compute the same features."""
        return self.tags.get("feature_set_version", "")


class TrainingRun:
    """One tracked training run. Made by `ModelRegistry.start_run`; end it with `end`, or use it as a
    context manager so that an exception marks it FAILED instead of leaving it RUNNING forever."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self._client = client
        self.run_id = run_id
        self._ended = False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log several metrics in one call; `step` orders values of the same metric (fold, epoch)."""
        from mlflow.entities import Metric

        timestamp_ms = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id,
            metrics=[Metric(key, float(value), timestamp_ms, step or 0) for key, value in metrics.items()],
        )

    def log_dict(self, name: str, data: Any) -> None:
        """Store `data` as a JSON artifact `name` (".json" is added when missing). Numpy scalars and
        dates are converted, so results can be logged as they come out of the training code."""
        self.log_bytes(_json_name(name), _to_json_bytes(data))

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Store rows (e.g. walk-forward results, one row per fold) as a JSON list of objects, which
        reads back as the same list without pandas."""
        self.log_bytes(_json_name(name), _to_json_bytes(rows))

    def log_bytes(self, name: str, data: bytes) -> None:
        """Store raw bytes as the artifact `name`, which may contain folders ("model/model.onnx")."""
        _upload_artifact(self._client, self.run_id, name, data)

    def end(self, status: Literal["FINISHED", "FAILED"] = "FINISHED") -> None:
        """Mark the run finished or failed."""
        self._client.set_terminated(self.run_id, status=status)
        self._ended = True

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A run ended explicitly inside the block keeps the status it was given.
        if not self._ended:
            self.end("FAILED" if exc_type is not None else "FINISHED")


def _create_local_store(path: Path) -> None:
    """Create the local store's database whole or not at all. MLflow builds its tables with a series of
    migrations; a process killed in the middle (chaos.py's SIGKILLs found it) left a database that every later
    start refused ("table _alembic_tmp_experiments already exists"). So a new store is built under a name of
    its own and linked into place, which fails, harmlessly, if another process got there first."""
    if path.exists():
        return
    from mlflow import MlflowClient

    building = path.with_name(f"{path.name}.building-{os.getpid()}")
    building.unlink(missing_ok=True)
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{building}", registry_uri=f"sqlite:///{building}")
        client.search_experiments()  # the tracking tables
        client.search_registered_models()  # and the registry's
        try:
            os.link(building, path)
        except FileExistsError:
            pass
    finally:
        building.unlink(missing_ok=True)


class ModelRegistry:
    """Tracking runs and registering, promoting and loading ONNX models, through one MLflow store."""

    def __init__(self, root: Path, uri: str | None = None) -> None:
        """`root` holds the local store (and is where a `uri` of None puts it); `uri` names an MLflow
        server or database used instead, for both tracking and the registry."""
        from mlflow import MlflowClient

        self._root = Path(root).resolve()
        self._local = uri is None
        if uri is None:
            self._root.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{self._root / _LOCAL_DB_NAME}"
            # MLflow announces at INFO level every time it creates or migrates the database tables.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            _create_local_store(self._root / _LOCAL_DB_NAME)
        # A download would otherwise draw a progress bar on stderr, noise in a service's log.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self._uri = uri
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._experiment_ids: dict[str, str] = {}

    @property
    def uri(self) -> str:
        """The tracking and registry URI, e.g. to point the MLflow UI at the same store."""
        return self._uri

    # ----------------------------------------------------------------------------- tracking

    def start_run(
        self,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> TrainingRun:
        """Open a run in `experiment` (created on first use) with its parameters and tags logged."""
        from mlflow.entities import Param

        run = self._client.create_run(self._experiment_id(experiment), run_name=run_name, tags=dict(tags))
        if params:
            logged = [Param(key, str(value)) for key, value in params.items()]
            self._client.log_batch(run.info.run_id, params=logged)
        return TrainingRun(self._client, run.info.run_id)

    def _experiment_id(self, name: str) -> str:
        if name in self._experiment_ids:
            return self._experiment_ids[name]
        from mlflow.entities import LifecycleStage

        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            # Local runs keep their files next to the database, whatever the working directory; a
            # server decides where artifacts go itself.
            artifact_location = (self._root / _LOCAL_ARTIFACTS_DIR).as_uri() if self._local else None
            with _tolerate_already_exists():
                self._client.create_experiment(name, artifact_location=artifact_location)
            # Read back rather than trust the id: another process may have created it first.
            experiment = self._client.get_experiment_by_name(name)
        elif experiment.lifecycle_stage == LifecycleStage.DELETED:
            # A deleted experiment still owns its name, and runs cannot be created in it.
            self._client.restore_experiment(experiment.experiment_id)
        self._experiment_ids[name] = experiment.experiment_id
        return experiment.experiment_id

    # ----------------------------------------------------------------------------- registry

    def register(
        self,
        name: str,
        run: TrainingRun | str,
        onnx_bytes: bytes,
        tags: Mapping[str, str],
    ) -> ModelVersionInfo:
        """Store the ONNX file as an artifact of `run` and register it as a new version of `name`.
        A version whose gate passed becomes the challenger, taking the alias from any earlier one."""
        if not _MODEL_NAME.fullmatch(name):
            # The name becomes a folder of the artifact store and of model caches, and a search filter.
            raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
        missing = [key for key in REQUIRED_TAGS if key not in tags]
        if missing:
            raise ValueError(f"cannot register {name}: tags {missing} are missing (required: {REQUIRED_TAGS})")
        if tags["gate_passed"] not in ("true", "false"):
            gate = tags["gate_passed"]
            raise ValueError(f"cannot register {name}: gate_passed must be 'true' or 'false', not {gate!r}")
        run_id = run.run_id if isinstance(run, TrainingRun) else run
        with _translate_not_found(f"run {run_id}"):
            self._client.get_run(run_id)

        # The folder is named by content, so a run that registers several models (or several
        # versions of one) never overwrites the file behind an earlier version.
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        artifact_dir = f"models/{name}/{digest[:16]}"
        artifact_path = f"{artifact_dir}/{ONNX_FILE_NAME}"
        _upload_artifact(self._client, run_id, artifact_path, onnx_bytes)

        with _tolerate_already_exists():
            self._client.create_registered_model(name)
        version_tags = {**tags, ONNX_ARTIFACT_TAG: artifact_path, ONNX_SHA256_TAG: digest}
        created = self._client.create_model_version(
            name, source=f"runs:/{run_id}/{artifact_dir}", run_id=run_id, tags=version_tags
        )
        if tags["gate_passed"] == "true":
            self._client.set_registered_model_alias(name, CHALLENGER, str(created.version))
        return self.get(name, str(created.version))

    def versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        """Versions of one model, or of all models when `name` is None, newest first, with aliases."""
        if name is None:
            aliases_by_model = {
                model.name: model.aliases
                for model in _all_pages(self._client.search_registered_models)
            }
            found = _all_pages(self._client.search_model_versions)
        else:
            aliases_by_model = {name: self._registered_model(name).aliases}
            with _translate_not_found(f"model {name}"):
                found = _all_pages(self._client.search_model_versions, filter_string=f"name = '{name}'")
        infos = [
            _info(version, _aliases_of(aliases_by_model.get(version.name, {}), str(version.version)))
            for version in found
        ]
        return sorted(infos, key=lambda info: (info.created_ms, int(info.version)), reverse=True)

    def get(self, name: str, version: str) -> ModelVersionInfo:
        """One version; `UnknownModel` when the model or the version does not exist."""
        # ASCII digits only ("²".isdigit() is true), and within SQLite's INTEGER, which MLflow's store uses.
        if not (version.isascii() and version.isdigit()) or int(version) >= 2**63:
            raise UnknownModel(f"model {name} has no version {version[:40]!r}: versions are positive integers")
        with _translate_not_found(f"model {name} version {version}"):
            found = self._client.get_model_version(name, version)
        return _info(found, tuple(found.aliases))

    def by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version carrying `alias`, or None when no version does (`UnknownModel` for a model that
        does not exist, so a misspelt name is not mistaken for "no champion yet")."""
        version = self._registered_model(name).aliases.get(alias)
        return None if version is None else self.get(name, str(version))

    def champion(self, name: str) -> ModelVersionInfo | None:
        """The version serving should run, or None before the first promotion."""
        return self.by_alias(name, CHAMPION)

    def promote(
        self,
        name: str,
        version: str | None = None,
        *,
        actor: str = "",
        reason: str = "",
    ) -> ModelVersionInfo:
        """Make `version` (the challenger when None) the champion. Refused for a version that did not
        pass the gate, that is champion already, or that does not exist. The previous champion is
        appended to the history that `rollback` returns to."""
        target = self._promotion_target(name, version)
        if not target.gate_passed:
            metrics = ", ".join(f"{key}={target.tags.get(key, '?')}" for key in GATE_METRIC_TAGS)
            raise PromotionRefused(
                f"{name} version {target.version} did not pass the promotion gate "
                f"(gate_passed={target.tags.get('gate_passed')!r}; {metrics})"
            )
        if CHAMPION in target.aliases:
            raise PromotionRefused(f"{name} version {target.version} is already the champion")

        model = self._registered_model(name)
        previous = model.aliases.get(CHAMPION)
        self._client.set_registered_model_alias(name, CHAMPION, target.version)
        if CHALLENGER in target.aliases:
            self._client.delete_registered_model_alias(name, CHALLENGER)
        if previous is not None:
            self._save_history(name, [*_champion_history(model), str(previous)])
        self._record_promotion(name, target.version, actor, reason)
        return self.get(name, target.version)

    def rollback(self, name: str, *, actor: str = "", reason: str = "") -> ModelVersionInfo:
        """Point "champion" back at the previous champion, dropping it from the history. Refused
        when no promotion has replaced an earlier champion (nothing to return to)."""
        history = _champion_history(self._registered_model(name))
        if not history:
            raise PromotionRefused(f"{name} has no previous champion to roll back to")
        restored = history.pop()
        self._client.set_registered_model_alias(name, CHAMPION, restored)
        self._save_history(name, history)
        self._record_promotion(name, restored, actor, reason)
        return self.get(name, restored)

    def model_bytes(self, name: str, version: str) -> bytes:
        """The ONNX file of a version, downloaded from the artifact store."""
        info = self.get(name, version)
        with tempfile.TemporaryDirectory() as scratch:
            return self._download(info, Path(scratch)).read_bytes()

    def model_file(self, name: str, version: str, cache_dir: Path) -> Path:
        """A local path to the ONNX file of a version, downloaded once into
        `cache_dir/<name>/<version>/model.onnx`. A cached file is used only while its digest matches
        the one recorded at registration, so a cache shared with another (or a rebuilt) registry,
        where the same version number is a different model, never serves the wrong model."""
        info = self.get(name, version)
        target = Path(cache_dir) / name / version / ONNX_FILE_NAME
        if target.exists() and _sha256_of(target) == info.tags.get(ONNX_SHA256_TAG):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download beside the target and rename, so a reader never sees a half-written file.
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            os.replace(self._download(info, Path(scratch)), target)
        return target

    # ----------------------------------------------------------------------------- internals

    def _registered_model(self, name: str) -> RegisteredModel:
        with _translate_not_found(f"model {name}"):
            return self._client.get_registered_model(name)

    def _promotion_target(self, name: str, version: str | None) -> ModelVersionInfo:
        try:
            target = self.by_alias(name, CHALLENGER) if version is None else self.get(name, version)
        except UnknownModel as exc:
            raise PromotionRefused(f"cannot promote {name}: {exc}") from exc
        if target is None:
            raise PromotionRefused(f"{name} has no challenger: no version that passed the gate awaits it")
        return target

    def _save_history(self, name: str, history: list[str]) -> None:
        self._client.set_registered_model_tag(name, CHAMPION_HISTORY_TAG, json.dumps(history))

    def _record_promotion(self, name: str, version: str, actor: str, reason: str) -> None:
        # Tags on the version, so the registry itself answers who put the champion there, and why.
        record = {
            "promoted_by": actor,
            "promoted_reason": reason,
            "promoted_at_ms": str(int(time.time() * 1000)),
        }
        for key, value in record.items():
            self._client.set_model_version_tag(name, version, key, value)

    def _download(self, info: ModelVersionInfo, destination: Path) -> Path:
        artifact_path = info.tags.get(ONNX_ARTIFACT_TAG)
        if artifact_path is None:
            raise UnknownModel(f"model {info.name} version {info.version} has no ONNX artifact recorded")
        return Path(self._client.download_artifacts(info.run_id, artifact_path, str(destination)))


def _info(version: ModelVersion, aliases: tuple[str, ...]) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=version.name,
        version=str(version.version),
        aliases=tuple(sorted(aliases)),
        run_id=version.run_id or "",
        created_ms=int(version.creation_timestamp),
        tags=dict(version.tags),
    )


def _champion_history(model: RegisteredModel) -> list[str]:
    return json.loads(model.tags.get(CHAMPION_HISTORY_TAG, "[]"))


def _aliases_of(aliases: Mapping[str, Any], version: str) -> tuple[str, ...]:
    return tuple(alias for alias, aliased in aliases.items() if str(aliased) == version)


def _all_pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every result of an MLflow search, following page tokens: a search returns one page only."""
    page_token = None
    while True:
        page = search(page_token=page_token, **kwargs)
        yield from page
        page_token = page.token
        if not page_token:
            return


@contextmanager
def _translate_not_found(what: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownModel(f"{what} does not exist in the registry") from exc
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            raise InvalidModelRequest(f"{what}: {exc.message}") from exc
        raise


@contextmanager
def _tolerate_already_exists() -> Iterator[None]:
    """For create-if-missing: the thing may exist already, or another process may just have made it."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _upload_artifact(client: MlflowClient, run_id: str, artifact_path: str, data: bytes) -> None:
    # MLflow uploads files, not bytes: write to a scratch file with the artifact's own file name.
    folder, _, file_name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / file_name
        local.write_bytes(data)
        client.log_artifact(run_id, str(local), artifact_path=folder or None)


def _json_name(name: str) -> str:
    return name if name.endswith(".json") else f"{name}.json"


def _to_json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    """Numpy scalars and arrays (`tolist`) and dates (`isoformat`): training results often contain
    them, and the json module knows neither."""
    for method in ("tolist", "isoformat"):
        if hasattr(value, method):
            return getattr(value, method)()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
