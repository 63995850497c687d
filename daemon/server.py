"""The gRPC server of `utp core`: CoreService, the standard health service and server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from utp.core.config import AlphaConfig, Config, ConfigError, load_config, parse_assignments, parse_yaml
from utp.core.kinds import KIND_BY_NUMBER
from utp.daemon import sweep, walkforward
from utp.daemon.core import REJECTIONS_KEPT, CoreDaemon
from utp.daemon.session import NamedRun, backtest, named_runs
from utp.daemon.sweep import SweepError, SweepReport, SweepSpec, SweepStreams
from utp.daemon.walkforward import FoldResult, WalkForwardResult
from utp.storage.datasets import DATASETS
from utp.storage.state import WORKING_STATUSES
from utp.v1 import core_service_pb2 as api
from utp.v1 import core_service_pb2_grpc as api_grpc
from utp.v1 import events_pb2 as pb
from utp.v1 import research_pb2 as rpb

log = logging.getLogger(__name__)

SERVICE_NAME = api.DESCRIPTOR.services_by_name["CoreService"].full_name
#: Ensemble sources: the alpha models plus the learned model (tft).
KNOWN_SOURCES = frozenset({"tft", *AlphaConfig.__struct_fields__})
_MAX_TEXT = 1_000


class InvalidRequest(ValueError):
    """A request field is invalid; the message names the field."""


def _text(field: str, value: str) -> str:
    if len(value) > _MAX_TEXT:
        raise InvalidRequest(f"{field}: at most {_MAX_TEXT} characters")
    return value


_MAX_DOCUMENTS, _MAX_DOCUMENT = 16, 200_000
_MAX_SETS = 200


def _documents(documents: Sequence[str]) -> None:
    if len(documents) > _MAX_DOCUMENTS or any(len(d) > _MAX_DOCUMENT for d in documents):
        raise InvalidRequest(f"config_yaml: at most {_MAX_DOCUMENTS} documents of {_MAX_DOCUMENT} characters")


def request_config(
    base: Config, request: api.RunBacktestRequest | api.RunWalkForwardRequest
) -> Callable[[Mapping[str, Any]], Config]:
    """The configuration of a RunBacktest or RunWalkForward request, built like the CLI's: the daemon's
    configuration, then the YAML documents, the KEY=VALUE settings, the request's own fields and `extra`
    (the argument of the returned function), later wins. The fields are checked here (InvalidRequest names
    the bad one); the function raises ConfigError for a bad setting."""
    _documents(request.config_yaml)
    if len(request.set) > _MAX_SETS or any(len(item) > _MAX_TEXT for item in request.set):
        raise InvalidRequest(f"set: at most {_MAX_SETS} items of {_MAX_TEXT} characters")
    try:
        overrides = parse_assignments(request.set, "set")
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None
    if request.dataset:
        if request.dataset not in DATASETS:
            raise InvalidRequest(f"dataset: unknown data set {request.dataset!r}; choose one of {', '.join(DATASETS)}")
        overrides["market_data.dataset"] = request.dataset
    if request.symbols:
        overrides["market_data.symbols"] = list(request.symbols)
    dates = {}
    for name, key in (("start_date", "market_data.start"), ("end_date", "market_data.end")):
        value = getattr(request, name)
        if value:
            try:
                dates[name] = date.fromisoformat(value)
            except ValueError:
                raise InvalidRequest(f"{name}: {value[:40]!r} is not a date YYYY-MM-DD") from None
            overrides[key] = value
    if "start_date" in dates and "end_date" in dates and dates["start_date"] > dates["end_date"]:
        raise InvalidRequest("start_date is after end_date")
    for source, weight in request.weights.items():
        if source not in KNOWN_SOURCES:
            raise InvalidRequest(f"weights: unknown source {source[:40]!r}; known: {', '.join(sorted(KNOWN_SOURCES))}")
        if not (weight >= 0 and weight < float("inf")):
            raise InvalidRequest(f"weights: {source} must be a finite number >= 0")
    if request.weights:
        overrides["ensemble.weights"] = dict(request.weights)
    if not (request.initial_cash >= 0 and request.initial_cash < 1e15):
        raise InvalidRequest("initial_cash must be >= 0 and finite")
    if request.initial_cash:
        overrides["execution.initial_cash"] = request.initial_cash
    if request.batch_bar_times < 0:
        raise InvalidRequest("batch_bar_times must be >= 0")
    # A backtest batches many bar times unless told otherwise (the live session's batch is 1).
    overrides["market_data.batch_bar_times"] = request.batch_bar_times or max(base.market_data.batch_bar_times, 1000)

    def build(extra: Mapping[str, Any]) -> Config:
        config = load_config(documents=request.config_yaml, base=base, environ={}, overrides={**overrides, **extra})
        md = config.market_data
        if md.dataset not in DATASETS:
            raise ConfigError(f"dataset: unknown data set {md.dataset!r}; choose one of {', '.join(DATASETS)}")
        unknown = [s for s in md.symbols if s not in DATASETS[md.dataset].symbols]
        if unknown:
            raise ConfigError(f"symbols: {', '.join(unknown[:5])} not in {md.dataset}")
        return config

    return build


def backtest_runs(base: Config, request: api.RunBacktestRequest) -> list[NamedRun]:
    """The runs of a RunBacktest request (see `request_config`), one per compared value.
    InvalidRequest names the bad field."""
    _text("compare", request.compare)
    build = request_config(base, request)
    try:
        return named_runs(request.compare, build)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None


def _batched(base: Config) -> Config:
    """The daemon's configuration for a backtest: many bar times per batch unless it says more (the live
    session's batch is 1; a batch never changes a decision)."""
    batch = max(base.market_data.batch_bar_times, 1000)
    return load_config(base=base, environ={}, overrides={"market_data.batch_bar_times": batch})


@dataclass(frozen=True)
class WalkForwardPlan:
    """A validated RunWalkForward request: the configuration and `walkforward.walk_forward`'s options."""

    config: Config
    scheme: walkforward.Scheme
    train: int | None
    test: int | None
    step: int | None
    n_folds: int | None
    anchored: bool

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments of `walkforward.walk_forward` and `walkforward.fold_splits`."""
        return {"scheme": self.scheme, "train": self.train, "test": self.test, "step": self.step,
                "n_folds": self.n_folds, "anchored": self.anchored}  # fmt: skip


def walk_forward_plan(base: Config, request: api.RunWalkForwardRequest) -> WalkForwardPlan:
    """What a RunWalkForward request runs, with `utp walk-forward`'s defaults for the fields left at 0.
    InvalidRequest names the bad field (whether a fold fits the data is known only once it is loaded)."""
    scheme = _text("scheme", request.scheme) or "bars"
    if scheme not in walkforward.DEFAULT_WINDOWS:
        raise InvalidRequest(f"scheme: {scheme[:40]!r} is not bars or months")
    for name in ("train", "test", "step", "folds"):
        if getattr(request, name) < 0:
            raise InvalidRequest(f"{name} must be >= 0 (0 = the scheme's default)")
    if request.all_folds and request.folds:
        raise InvalidRequest("folds: give folds or all_folds, not both")
    n_folds = None if request.all_folds else request.folds or walkforward.DEFAULT_FOLDS[scheme]
    try:
        config = request_config(base, request)({})
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None
    return WalkForwardPlan(config, scheme, request.train or None, request.test or None,  # type: ignore[arg-type]
                           request.step or None, n_folds, request.anchored)  # fmt: skip


#: Variants of one RunSweep (before duplicate draws are dropped); `utp sweep` has no limit.
MAX_SWEEP_VARIANTS = 10_000
_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


@dataclass(frozen=True)
class SweepPlan:
    """A validated RunSweep request."""

    spec: SweepSpec
    metric: str
    #: Processes on the daemon's machine; 0 when the variants go to workers over NATS.
    processes: int
    nats_url: str
    streams: SweepStreams


def sweep_plan(base: Config, request: api.RunSweepRequest) -> SweepPlan:
    """What a RunSweep request runs: its spec over the daemon's configuration (`base`) and the request's
    YAML documents. InvalidRequest names the bad field; a variant whose configuration is invalid (fast >=
    slow) is found later, when the sweep process expands the spec."""
    if not request.spec_yaml.strip():
        raise InvalidRequest("spec_yaml: empty; a sweep spec has grid and/or random settings")
    if len(request.spec_yaml) > _MAX_DOCUMENT:
        raise InvalidRequest(f"spec_yaml: at most {_MAX_DOCUMENT} characters")
    try:
        data = parse_yaml(request.spec_yaml, "spec_yaml")
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None
    if not isinstance(data, Mapping):
        raise InvalidRequest("spec_yaml: a sweep spec is a mapping (overrides, grid, random, samples, seed)")
    if data.get("config"):
        # The files are on the client's machine: reading the daemon's files of the same names would run
        # another configuration than the client meant.
        raise InvalidRequest("spec_yaml: config names files, which the daemon cannot read; send their text in "
                             "config_yaml (the base is the daemon's configuration, then config_yaml)")  # fmt: skip
    _documents(request.config_yaml)
    metric = _text("metric", request.metric) or "sharpe"
    if metric not in api.BacktestSummary.DESCRIPTOR.fields_by_name:
        known = ", ".join(sorted(api.BacktestSummary.DESCRIPTOR.fields_by_name))
        raise InvalidRequest(f"metric: {metric[:40]!r} is not a summary statistic; one of {known}")
    if request.processes < 0:
        raise InvalidRequest("processes must be >= 0 (0 = server.max_backtests)")
    nats_url = _text("nats_url", request.nats_url)
    if nats_url:
        parsed = urlparse(nats_url)
        if parsed.scheme not in _NATS_SCHEMES or not parsed.hostname:
            raise InvalidRequest(f"nats_url: {nats_url[:80]!r} is not nats://host:port")
    elif request.streams:
        raise InvalidRequest("streams: only with nats_url")
    try:
        streams = SweepStreams(_text("streams", request.streams)) if request.streams else SweepStreams()
    except SweepError as exc:
        raise InvalidRequest(f"streams: {exc}") from None
    try:
        config = load_config(documents=request.config_yaml, base=_batched(base), environ={})
    except ConfigError as exc:
        raise InvalidRequest(f"config_yaml: {exc}") from None
    try:
        spec = sweep.parse_spec(data, name="spec_yaml", base=config)
    except SweepError as exc:  # it names the spec and the setting
        raise InvalidRequest(str(exc)) from None
    variants = math.prod(len(values) for values in spec.grid.values()) * max(spec.samples, 1)
    if variants > MAX_SWEEP_VARIANTS:
        raise InvalidRequest(f"spec_yaml: {variants} variants; at most {MAX_SWEEP_VARIANTS} in one RunSweep")
    max_processes = base.server.max_backtests
    processes = 0 if nats_url else min(request.processes or max_processes, max_processes, variants)
    return SweepPlan(spec, metric, processes, nats_url, streams)


def report_folder(data_dir: Path, name: str) -> Path:
    """Where RunBacktest writes a report: a relative folder under the daemon's `<data dir>/reports` (a client
    must not pick any path on the daemon's machine)."""
    _text("report_dir", name)
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise InvalidRequest("report_dir: a relative folder name under the daemon's reports folder, without '..'")
    return data_dir / "reports" / path


# -- protobuf forms of the research results ----------------------------------------------------------
def sweep_variant(result: rpb.SweepResult) -> api.SweepVariant:
    """A variant's result as RunSweep streams it (SweepResult without the per-bar returns and queue fields)."""
    variant = api.SweepVariant(variant_id=result.variant_id, params=dict(result.params), error=result.error,
                               worker=result.worker, elapsed_s=result.elapsed_s)  # fmt: skip
    if result.HasField("summary") and not result.error:
        variant.summary.CopyFrom(result.summary)
    return variant


def sweep_summary(report: SweepReport, parameters: Sequence[str]) -> api.SweepSummary:
    """The table and overfitting statistics of `sweep.report_dict`, as a message."""
    summary = api.SweepSummary(sweep_id=report.sweep_id, metric=report.metric, variants=report.n_variants,
                               failed=report.n_failed, duplicate_results=report.duplicates,
                               parameters=list(parameters), rows=[sweep_variant(r) for r in report.results],
                               notes=list(report.notes))  # fmt: skip
    if report.dsr is not None:
        d = report.dsr
        summary.dsr.CopyFrom(api.DeflatedSharpeRatio(
            variant_id=report.dsr_variant or "", dsr=d.dsr, psr=d.psr, sharpe_per_bar=d.sharpe,
            sharpe_threshold_per_bar=d.sharpe_threshold, n_trials=int(d.n_trials), n_obs=d.n_obs))  # fmt: skip
    if report.pbo is not None:
        p = report.pbo
        summary.pbo.CopyFrom(api.BacktestOverfitting(
            pbo=p.pbo, n_blocks=p.n_blocks, n_combinations=p.n_combinations, n_variants=p.n_variants,
            n_observations=p.n_observations, prob_oos_loss=p.prob_oos_loss,
            degradation_slope=p.degradation_slope))  # fmt: skip
    return summary


def walk_forward_fold(fold: FoldResult) -> api.WalkForwardFold:
    return api.WalkForwardFold(index=fold.index, train_start_time_ns=fold.train_start_ns,
                               test_start_time_ns=fold.test_start_ns, test_end_time_ns=fold.test_end_ns,
                               bars=int(fold.times_ns.size), total_return=fold.total_return, sharpe=fold.sharpe,
                               max_drawdown=fold.max_drawdown, trades=fold.trades)  # fmt: skip


def walk_forward_summary(result: WalkForwardResult) -> api.WalkForwardSummary:
    """The out-of-sample figures of `walkforward.summary_dict` (NaN stays NaN)."""
    times = result.oos_times_ns
    train, test, step = result.windows
    return api.WalkForwardSummary(
        scheme=result.scheme, train=train, test=test, step=step, anchored=result.anchored,
        periods_per_year=result.periods_per_year, folds=len(result.folds), oos_bars=int(result.oos_returns.size),
        oos_start_time_ns=int(times[0]) if times.size else 0, oos_end_time_ns=int(times[-1]) if times.size else 0,
        oos_total_return=result.oos_total_return, oos_sharpe=result.oos_sharpe, oos_psr=result.oos_psr,
        negative_sharpe_share=result.negative_share,
    )  # fmt: skip


# -- the processes that run them ----------------------------------------------------------------------
# Each sends (kind, payload) tuples through `conn`: protobuf bytes, or text for "invalid" (the request
# cannot run: INVALID_ARGUMENT) and "error" (it failed: INTERNAL).
def _send_failure(conn: Connection, exc: BaseException) -> None:
    with contextlib.suppress(OSError):  # the daemon may have stopped listening (it is ending this process)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _backtest_process(config: Config, include_details: bool, conn: Connection) -> None:
    """A backtest in a process of its own: progress and the result go back through `conn` as protobuf bytes."""
    try:
        result = backtest(config, on_progress=lambda p: conn.send(("progress", p.SerializeToString())),
                          include_details=include_details)  # fmt: skip
        conn.send(("result", result.SerializeToString()))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the caller
        _send_failure(conn, exc)
    finally:
        conn.close()


def _interrupt_on_sigterm(parent: int) -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does in `utp sweep`, so that a sweep ended by the daemon
    kills its pool and purges its queued jobs on the way out; so does the daemon's death, which sends none
    (the process then belongs to someone else)."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once: a second one ends the process at once
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-the-daemon", daemon=True).start()


def _sweep_process(plan: SweepPlan, parent: int, conn: Connection) -> None:
    """A sweep's coordinator: expands and validates the spec, runs the variants (its own process pool, or
    workers over NATS) and sends each result, then the summary. Everything, the DSR and PBO included, is
    computed here, off the daemon's interpreter."""
    _interrupt_on_sigterm(parent)
    try:
        try:
            variants = sweep.expand(plan.spec)
        except SweepError as exc:
            conn.send(("invalid", str(exc)))
            return
        sweep_id = sweep.new_sweep_id()
        processes = min(plan.processes, len(variants))
        started = api.SweepStarted(sweep_id=sweep_id, variants=len(variants), base_config_yaml=plan.spec.base_yaml,
                                   processes=processes)  # fmt: skip
        conn.send(("started", started.SerializeToString()))
        report = sweep.run_sweep(
            plan.spec, processes=processes or None, nats_url=plan.nats_url or None, streams=plan.streams,
            metric=plan.metric, variants=variants, sweep_id=sweep_id,
            on_result=lambda result: conn.send(("variant", sweep_variant(result).SerializeToString())),
        )  # fmt: skip
        conn.send(("summary", sweep_summary(report, plan.spec.keys).SerializeToString()))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the caller
        _send_failure(conn, exc)
    finally:
        # Nothing is left to clean up: the daemon may stop this process quietly while it exits.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.close()


def _walk_forward_process(plan: WalkForwardPlan, conn: Connection) -> None:
    """A walk-forward: each fold as it completes, then the out-of-sample summary."""
    from utp.daemon.session import MarketData

    try:
        market_data = MarketData.from_config(plan.config)
        options = plan.options
        try:
            walkforward.fold_splits(walkforward.bar_times(market_data.bars), **options)
        except ValueError as exc:
            conn.send(("invalid", f"train/test/step ({plan.scheme}): {exc}"))
            return
        result = walkforward.walk_forward(
            plan.config, market_data=market_data, **options,
            on_fold=lambda fold: conn.send(("fold", walk_forward_fold(fold).SerializeToString())),
        )  # fmt: skip
        conn.send(("summary", walk_forward_summary(result).SerializeToString()))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the caller
        _send_failure(conn, exc)
    finally:
        conn.close()


def _retrain_process(config: Config, kind: str, promote: bool, actor: str, conn: Connection) -> None:
    """`utp train` in a process of its own: each stage as progress, then the result."""
    import json

    from utp.daemon.ml_cli import open_registry
    from utp.daemon.train import train_walk_forward

    try:
        def progress(stage: str, info: dict[str, Any]) -> None:
            conn.send(("progress", api.RetrainProgress(stage=stage, detail_json=json.dumps(info, default=float)).SerializeToString()))

        report = train_walk_forward(config, kind, registry=open_registry(config), promote=promote, progress=progress,
                                    actor=actor)  # fmt: skip
        g = report.gate
        folds = [api.ModelFold(fold=f.fold, in_sample_start=r["in_sample_start"], in_sample_end=r["in_sample_end"],
                               oos_start=r["oos_start"], oos_end=r["oos_end"], ic=f.ic, rank_ic=f.rank_ic, icir=f.icir,
                               sharpe=f.sharpe, win_rate=f.win_rate, trades=f.trades)
                 for f in report.folds for r in [f.row()]]  # fmt: skip
        result = api.RetrainResult(model=report.model_name, version=report.version, run_id=report.run_id,
                                   gate_passed=g.passed, gate_reasons=g.reasons, oos_sharpe=g.oos_sharpe,
                                   oos_win_rate=g.oos_win_rate, min_fold_sharpe=g.min_fold_sharpe,
                                   deflated_sharpe=g.deflated_sharpe, promoted=report.promoted, folds=folds)  # fmt: skip
        conn.send(("result", result.SerializeToString()))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the caller
        _send_failure(conn, exc)
    finally:
        conn.close()


def model_version_message(info: Any) -> api.ModelVersion:
    return api.ModelVersion(name=info.name, version=info.version, aliases=list(info.aliases), run_id=info.run_id,
                            created_ms=info.created_ms, gate_passed=info.gate_passed, tags=dict(info.tags))  # fmt: skip


class CoreServicer(api_grpc.CoreServiceServicer):
    def __init__(self, daemon: CoreDaemon) -> None:
        self.daemon = daemon
        #: Processes of RunBacktest, RunWalkForward and RunSweep running at once (a local sweep holds one per
        #: process of its pool), so research never takes more of the machine than server.max_backtests.
        self._backtests = asyncio.Semaphore(daemon.config.server.max_backtests)
        self._gathering = asyncio.Lock()

    async def GetStatus(self, request: api.GetStatusRequest, context: grpc.aio.ServicerContext) -> api.GetStatusResponse:
        return self.daemon.status()

    async def WatchEvents(
        self, request: api.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.WatchEventsResponse]:
        kinds = set()
        for number in request.kinds:
            kind = KIND_BY_NUMBER.get(number)
            if kind is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"kinds: unknown event kind {number}")
            kinds.add(kind.name)  # type: ignore[union-attr]
        if len(request.symbols) > 10_000 or any(len(s) > 64 for s in request.symbols):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "symbols: at most 10000 symbols of 64 characters")
        watcher = await self.daemon.add_watcher(frozenset(kinds), frozenset(request.symbols))
        try:
            while True:
                event = await watcher.queue.get()
                if watcher.overflowed:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "client reads events too slowly")
                if event.WhichOneof("payload") is None:  # the daemon is stopping
                    return
                yield api.WatchEventsResponse(event=event)
        finally:
            self.daemon.remove_watcher(watcher)

    async def ListPositions(
        self, request: api.ListPositionsRequest, context: grpc.aio.ServicerContext
    ) -> api.ListPositionsResponse:
        return api.ListPositionsResponse(positions=self.daemon.positions())

    async def ListOrders(self, request: api.ListOrdersRequest, context: grpc.aio.ServicerContext) -> api.ListOrdersResponse:
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be >= 0")
        return api.ListOrdersResponse(orders=self.daemon.orders(request.limit, working_only=request.working_only))

    async def SetExecutionApproval(
        self, request: api.SetExecutionApprovalRequest, context: grpc.aio.ServicerContext
    ) -> api.SetExecutionApprovalResponse:
        reason, actor = await self._who(request, context)
        state = await self.daemon.set_execution_approval(request.approved, reason, actor)
        return api.SetExecutionApprovalResponse(execution_approved=state.execution_approved)

    async def Halt(self, request: api.HaltRequest, context: grpc.aio.ServicerContext) -> api.HaltResponse:
        reason, actor = await self._who(request, context)
        state = await self.daemon.halt(reason, actor)
        return api.HaltResponse(halted=state.halted)

    async def Resume(self, request: api.ResumeRequest, context: grpc.aio.ServicerContext) -> api.ResumeResponse:
        reason, actor = await self._who(request, context)
        state = await self.daemon.resume(reason, actor)
        return api.ResumeResponse(halted=state.halted)

    async def SetEntriesPaused(self, request: api.SetEntriesPausedRequest, context: grpc.aio.ServicerContext
                               ) -> api.SetEntriesPausedResponse:  # fmt: skip
        reason, actor = await self._who(request, context)
        state = await self.daemon.set_entries_paused(request.paused, reason, actor)
        return api.SetEntriesPausedResponse(entries_paused=state.entries_paused)

    async def Flatten(self, request: api.FlattenRequest, context: grpc.aio.ServicerContext) -> api.FlattenResponse:
        reason, actor = await self._who(request, context)
        symbol = await self._symbol(request.symbol, context)
        symbols, state = await self.daemon.flatten(symbol, request.halt, reason, actor)
        return api.FlattenResponse(symbols=symbols, halted=state.halted)

    async def CancelOrder(self, request: api.CancelOrderRequest, context: grpc.aio.ServicerContext) -> api.CancelOrderResponse:
        reason, actor = await self._who(request, context)
        cid = request.client_order_id
        if not cid or len(cid) > 200:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_order_id: which order (at most 200 characters)")
        order = self.daemon.order(cid)
        if order is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"client_order_id: no order {cid!r} in the hot state")
        if order.status not in WORKING_STATUSES:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"order {cid} is {pb.OrderStatus.Name(order.status)}: only a working order can be cancelled")  # fmt: skip
        await self.daemon.cancel_order(cid, reason, actor)
        return api.CancelOrderResponse(client_order_id=cid)

    async def SetApprovalMode(self, request: api.SetApprovalModeRequest, context: grpc.aio.ServicerContext
                              ) -> api.SetApprovalModeResponse:  # fmt: skip
        reason, actor = await self._who(request, context)
        if request.mode not in (pb.APPROVAL_MODE_BLANKET, pb.APPROVAL_MODE_PER_ORDER):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "mode: APPROVAL_MODE_BLANKET or APPROVAL_MODE_PER_ORDER")
        await self.daemon.set_approval_mode(request.mode, reason, actor)
        return api.SetApprovalModeResponse(mode=self.daemon.approval_mode())

    async def ListApprovals(self, request: api.ListApprovalsRequest, context: grpc.aio.ServicerContext
                            ) -> api.ListApprovalsResponse:  # fmt: skip
        if request.decided < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decided must be >= 0")
        pending, decided = self.daemon.approvals()
        return api.ListApprovalsResponse(pending=pending, decided=decided[: request.decided], mode=self.daemon.approval_mode())

    async def DecideApprovals(self, request: api.DecideApprovalsRequest, context: grpc.aio.ServicerContext
                              ) -> api.DecideApprovalsResponse:  # fmt: skip
        reason, actor = await self._who(request, context)
        if request.all == bool(request.intent_ids):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "intent_ids: give some intent ids, or all, not both")
        pending = {a.intent_id for a in self.daemon.approvals()[0]}
        unknown = [i for i in request.intent_ids if i not in pending]
        if unknown:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"intent_ids: not pending: {', '.join(i[:80] for i in unknown[:5])}")
        ids = list(request.intent_ids) if not request.all else []
        await self.daemon.decide_approvals(ids, request.approve, reason, actor)
        return api.DecideApprovalsResponse(intent_ids=ids or sorted(pending))

    async def ListSignals(self, request: api.ListSignalsRequest, context: grpc.aio.ServicerContext) -> api.ListSignalsResponse:
        if len(request.symbols) > 10_000 or any(len(s) > 64 for s in request.symbols):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "symbols: at most 10000 symbols of 64 characters")
        wanted = set(request.symbols)
        signals = [self.daemon.signals[s] for s in sorted(self.daemon.signals) if not wanted or s in wanted]
        return api.ListSignalsResponse(signals=signals)

    async def ListDeadLetters(self, request: api.ListDeadLettersRequest, context: grpc.aio.ServicerContext
                              ) -> api.ListDeadLettersResponse:  # fmt: skip
        if not 0 <= request.limit <= 10_000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be in 0..10000")
        return api.ListDeadLettersResponse(letters=await self.daemon.dead_letters(request.limit or 100))

    async def ReplayDeadLetters(self, request: api.ReplayDeadLettersRequest, context: grpc.aio.ServicerContext
                                ) -> api.ReplayDeadLettersResponse:  # fmt: skip
        reason, actor = await self._who(request, context)
        if request.all == bool(request.sequences):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sequences: give some letters, or all, not both")
        if len(request.sequences) > 10_000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sequences: at most 10000 letters")
        try:
            replayed, dropped, errors = await self.daemon.replay_dead_letters(
                list(request.sequences), request.all, request.drop, reason, actor)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return api.ReplayDeadLettersResponse(replayed=replayed, dropped=dropped, errors=errors[:100])

    async def ListAlerts(self, request: api.ListAlertsRequest, context: grpc.aio.ServicerContext) -> api.ListAlertsResponse:
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be >= 0")
        return api.ListAlertsResponse(alerts=list(reversed(self.daemon.alerts))[: request.limit or 100])

    async def ListRejections(self, request: api.ListRejectionsRequest, context: grpc.aio.ServicerContext
                             ) -> api.ListRejectionsResponse:  # fmt: skip
        if not 0 <= request.limit <= REJECTIONS_KEPT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 0 and {REJECTIONS_KEPT}")
        if len(request.symbols) > 10_000 or any(len(s) > 64 for s in request.symbols):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "symbols: at most 10000 symbols of 64 characters")
        wanted, limit = set(request.symbols), request.limit or 100
        rejections = []
        for event in reversed(self.daemon.rejections):
            symbol = getattr(event, event.WhichOneof("payload")).header.symbol
            if not wanted or not symbol or symbol in wanted:
                rejections.append(event)
                if len(rejections) == limit:
                    break
        return api.ListRejectionsResponse(rejections=rejections)

    async def ListAudit(self, request: api.ListAuditRequest, context: grpc.aio.ServicerContext) -> api.ListAuditResponse:
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be >= 0")
        for name in ("method", "actor", "outcome"):
            if len(getattr(request, name)) > _MAX_TEXT:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: at most {_MAX_TEXT} characters")
        entries = await asyncio.to_thread(self.daemon.audit.entries, request)
        return api.ListAuditResponse(entries=entries)

    async def GetDashboard(self, request: api.GetDashboardRequest, context: grpc.aio.ServicerContext
                           ) -> api.GetDashboardResponse:  # fmt: skip
        if not 0 <= request.points <= 100_000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "points must be between 0 and 100000")
        return self.daemon.dashboard(request.points)

    async def ListJobs(self, request: api.ListJobsRequest, context: grpc.aio.ServicerContext) -> api.ListJobsResponse:
        return api.ListJobsResponse(jobs=self.daemon.jobs())

    async def RunJob(self, request: api.RunJobRequest, context: grpc.aio.ServicerContext) -> api.RunJobResponse:
        from utp.daemon.scheduler import JobBusy, UnknownJob

        reason, actor = await self._who(request, context)
        try:
            job = await self.daemon.run_job(_text("name", request.name), actor or "operator", reason)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except UnknownJob as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except JobBusy as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return api.RunJobResponse(job=job)

    async def _symbol(self, symbol: str, context: grpc.aio.ServicerContext) -> str:
        if symbol and symbol not in self.daemon.symbols():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"symbol: {symbol[:64]!r} is not traded in this session")
        return symbol

    async def _who(self, request: object, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        try:
            return _text("reason", request.reason), _text("actor", request.actor)  # type: ignore[attr-defined]
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    async def RunBacktest(
        self, request: api.RunBacktestRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.RunBacktestResponse]:
        try:
            runs = backtest_runs(self.daemon.config, request)
            folder = report_folder(self.daemon.data_dir, request.report_dir) if request.report_dir else None
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        results: list[api.BacktestResult] = []
        for run in runs:
            # Each run in a process of its own: the live engines keep their event loop and interpreter.
            responses = self._run_in_process(run, request.include_details or folder is not None, context)
            async with self._process_slots(1), contextlib.aclosing(responses):
                async for response in responses:
                    if response.HasField("result"):
                        results.append(response.result)
                        for listener in self.daemon.backtest_listeners:
                            listener(response.result.summary)
                    yield response
        if folder is not None:
            path = await asyncio.to_thread(self._write_report, folder, runs, results)
            yield api.RunBacktestResponse(report_path=str(path))

    async def _run_in_process(
        self, run: NamedRun, include_details: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.RunBacktestResponse]:
        name = f"backtest {run.name}".strip()
        messages = self._process_messages(_backtest_process, (run.config, include_details), name, context, last="result")
        async with contextlib.aclosing(messages):
            async for kind, payload in messages:
                if kind == "progress":
                    progress = api.BacktestProgress.FromString(payload)
                    progress.run = run.name
                    yield api.RunBacktestResponse(progress=progress)
                else:
                    result = api.BacktestResult.FromString(payload)
                    result.name = run.name
                    yield api.RunBacktestResponse(result=result)

    async def RunSweep(
        self, request: api.RunSweepRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.RunSweepResponse]:
        try:
            plan = sweep_plan(self.daemon.config, request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # The coordinator is a process of its own and its pool's processes are its children, so it cannot
        # be daemonic; it ends with the call (and with the daemon) through _interrupt_on_sigterm.
        messages = self._process_messages(_sweep_process, (plan, os.getpid()), "sweep", context, last="summary",
                                          daemonic=False)  # fmt: skip
        # A distributed sweep's coordinator mostly waits, but it is a process (and a thread here) all the same.
        async with self._process_slots(max(plan.processes, 1)), contextlib.aclosing(messages):
            async for kind, payload in messages:
                if kind == "started":
                    yield api.RunSweepResponse(started=api.SweepStarted.FromString(payload))
                elif kind == "variant":
                    yield api.RunSweepResponse(variant=api.SweepVariant.FromString(payload))
                else:
                    yield api.RunSweepResponse(summary=api.SweepSummary.FromString(payload))

    async def RunWalkForward(
        self, request: api.RunWalkForwardRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.RunWalkForwardResponse]:
        try:
            plan = walk_forward_plan(self.daemon.config, request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        messages = self._process_messages(_walk_forward_process, (plan,), "walk-forward", context, last="summary")
        async with self._process_slots(1), contextlib.aclosing(messages):
            async for kind, payload in messages:
                if kind == "fold":
                    yield api.RunWalkForwardResponse(fold=api.WalkForwardFold.FromString(payload))
                else:
                    yield api.RunWalkForwardResponse(summary=api.WalkForwardSummary.FromString(payload))

    async def TriggerRetrain(
        self, request: api.TriggerRetrainRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.TriggerRetrainResponse]:
        if request.model not in ("lgbm", "tft"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"model: {request.model!r} is not lgbm or tft")
        try:
            overrides = parse_assignments(request.set, "set")
            config = load_config([], base=self.daemon.config, overrides={"data_dir": str(self.daemon.data_dir), **overrides},
                                 environ={})  # fmt: skip
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        reason, who = await self._who(request, context)
        actor = (who or "TriggerRetrain") + (f" ({reason})" if reason else "")
        messages = self._process_messages(_retrain_process, (config, request.model, request.promote, actor), "retrain",
                                          context, last="result")  # fmt: skip
        async with self._process_slots(1), contextlib.aclosing(messages):
            async for kind, payload in messages:
                if kind == "progress":
                    yield api.TriggerRetrainResponse(progress=api.RetrainProgress.FromString(payload))
                else:
                    yield api.TriggerRetrainResponse(result=api.RetrainResult.FromString(payload))

    async def ListModels(self, request: api.ListModelsRequest, context: grpc.aio.ServicerContext) -> api.ListModelsResponse:
        from utp.core.ml.registry import InvalidModelRequest, UnknownModel

        try:
            registry = await self.daemon.model_registry()
            versions = await asyncio.to_thread(registry.versions, request.name or None)
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except InvalidModelRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"name: {exc}")
        return api.ListModelsResponse(versions=[model_version_message(v) for v in versions])

    async def PromoteModel(self, request: api.PromoteModelRequest, context: grpc.aio.ServicerContext) -> api.PromoteModelResponse:
        from utp.core.ml.registry import InvalidModelRequest, PromotionRefused, UnknownModel

        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: which model (lgbm, tft)")
        reason, actor = await self._who(request, context)
        actor = actor or "grpc"
        try:
            registry = await self.daemon.model_registry()
            if request.rollback:
                info = await asyncio.to_thread(registry.rollback, request.name, actor=actor, reason=reason)
            else:
                info = await asyncio.to_thread(registry.promote, request.name, request.version or None, actor=actor,
                                               reason=reason)  # fmt: skip
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except PromotionRefused as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InvalidModelRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"name: {exc}")
        log.info("%s made %s %s champion (%s)", actor, info.name, info.version, reason or "no reason given")
        return api.PromoteModelResponse(champion=model_version_message(info))

    @contextlib.asynccontextmanager
    async def _process_slots(self, n: int) -> AsyncIterator[None]:
        """Hold `n` of the server.max_backtests processes that research calls may run at once, waiting for
        them. One caller at a time gathers several, so two sweeps never each hold part of what both need."""
        taken = 0
        try:
            async with self._gathering:
                while taken < n:
                    await self._backtests.acquire()
                    taken += 1
            yield
        finally:
            for _ in range(taken):
                self._backtests.release()

    async def _process_messages(
        self,
        target: Callable[..., None],
        args: tuple[Any, ...],
        what: str,
        context: grpc.aio.ServicerContext,
        *,
        last: str,
        daemonic: bool = True,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """Run `target(*args, conn)` in a spawned process and yield the (kind, payload) it sends through
        `conn`, up to and including the first of kind `last`. "invalid" aborts the call with
        INVALID_ARGUMENT, "error" or an early end with INTERNAL. When the call ends first (the client went
        away, the daemon stops) the process is stopped: nobody wants its work any more."""
        ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no copy of the daemon's threads
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(target=target, args=(*args, sender), daemon=daemonic, name=what)
        process.start()
        sender.close()
        try:
            while True:
                try:
                    kind, payload = await asyncio.to_thread(receiver.recv)
                except EOFError:
                    await asyncio.to_thread(process.join, 1)
                    await context.abort(grpc.StatusCode.INTERNAL, f"{what} process ended (exit {process.exitcode})")
                if kind == "invalid":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, payload)
                if kind == "error":
                    log.error("%s failed: %s", what, payload)
                    await context.abort(grpc.StatusCode.INTERNAL, f"{what} failed: {payload}")
                yield kind, payload
                if kind == last:
                    return
        finally:
            if process.is_alive():
                process.terminate()
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():  # a sweep that did not stop in time
                process.kill()
                await asyncio.to_thread(process.join, 5)
            # Closed only now: a thread may still wait in recv() until the process's end closes the pipe.
            receiver.close()

    def _write_report(self, folder: Path, runs: list[NamedRun], results: list[api.BacktestResult]) -> Path:
        from utp.daemon.cli import write_backtest_report
        from utp.daemon.session import MarketData

        named = [(run.name, result, MarketData.from_config(run.config)) for run, result in zip(runs, results, strict=True)]
        md = runs[0].config.market_data
        title = f"utp backtest (RPC): {md.dataset} {','.join(md.symbols) or 'all symbols'}"
        return write_backtest_report(folder, title, named).resolve()


async def serve(
    daemon: CoreDaemon, listen: str, on_call: Callable[[str, str, float], None] | None = None
) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    """Start the gRPC server for `daemon` on `listen` (TLS and tokens as server.* says); returns the server
    (already started). `on_call(method, code, seconds)` hears of every CoreService call (metrics)."""
    from utp.daemon.auth import AuthInterceptor, TokenBook, server_credentials

    settings = daemon.config.server
    interceptor = AuthInterceptor(TokenBook(daemon.data_dir), daemon.audit, on_call=on_call, required=settings.auth)
    server = grpc.aio.server(interceptors=[interceptor])
    api_grpc.add_CoreServiceServicer_to_server(CoreServicer(daemon), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise OSError("TLS needs both server.tls_cert and server.tls_key")
        port = server.add_secure_port(listen, server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca))
    elif settings.tls_client_ca:
        raise OSError("server.tls_client_ca (mutual TLS) needs server.tls_cert and server.tls_key")
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC listening on %s", listen)
    return server, health


async def shutdown(server: grpc.aio.Server, health: health_aio.HealthServicer, daemon: CoreDaemon) -> None:
    with contextlib.suppress(Exception):
        await health.enter_graceful_shutdown()
    await server.stop(grace=3)
    await daemon.stop()
