"""The gRPC server of `utp core`: CoreService, the standard health service and server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import AsyncIterator, Mapping
from datetime import date
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from utp.core.config import AlphaConfig, Config, ConfigError, load_config, parse_assignments
from utp.core.kinds import KIND_BY_NUMBER
from utp.daemon.core import CoreDaemon
from utp.daemon.session import NamedRun, backtest, named_runs
from utp.storage.datasets import DATASETS
from utp.v1 import core_service_pb2 as api
from utp.v1 import core_service_pb2_grpc as api_grpc

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


def backtest_runs(base: Config, request: api.RunBacktestRequest) -> list[NamedRun]:
    """The runs of a RunBacktest request, configured like the CLI's: the daemon's configuration, then the
    YAML documents, the KEY=VALUE settings, the request's own fields and the compared value, later wins.
    InvalidRequest names the bad field."""
    if len(request.config_yaml) > _MAX_DOCUMENTS or any(len(d) > _MAX_DOCUMENT for d in request.config_yaml):
        raise InvalidRequest(f"config_yaml: at most {_MAX_DOCUMENTS} documents of {_MAX_DOCUMENT} characters")
    if len(request.set) > _MAX_SETS or any(len(item) > _MAX_TEXT for item in request.set):
        raise InvalidRequest(f"set: at most {_MAX_SETS} items of {_MAX_TEXT} characters")
    _text("compare", request.compare)
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

    try:
        return named_runs(request.compare, build)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None


def report_folder(data_dir: Path, name: str) -> Path:
    """Where RunBacktest writes a report: a relative folder under the daemon's `<data dir>/reports` (a client
    must not pick any path on the daemon's machine)."""
    _text("report_dir", name)
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise InvalidRequest("report_dir: a relative folder name under the daemon's reports folder, without '..'")
    return data_dir / "reports" / path


def _backtest_process(config: Config, include_details: bool, conn: Connection) -> None:
    """A backtest in a process of its own: progress and the result go back through `conn` as protobuf bytes."""
    try:
        result = backtest(config, on_progress=lambda p: conn.send(("progress", p.SerializeToString())),
                          include_details=include_details)  # fmt: skip
        conn.send(("result", result.SerializeToString()))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the caller
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class CoreServicer(api_grpc.CoreServiceServicer):
    def __init__(self, daemon: CoreDaemon) -> None:
        self.daemon = daemon
        self._backtests = asyncio.Semaphore(daemon.config.server.max_backtests)

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
        watcher = self.daemon.add_watcher(frozenset(kinds), frozenset(request.symbols))
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
        return api.ListOrdersResponse(orders=self.daemon.orders(request.limit))

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
            async with self._backtests:
                async for response in self._run_in_process(run, request.include_details or folder is not None, context):
                    if response.HasField("result"):
                        results.append(response.result)
                    yield response
        if folder is not None:
            path = await asyncio.to_thread(self._write_report, folder, runs, results)
            yield api.RunBacktestResponse(report_path=str(path))

    async def _run_in_process(
        self, run: NamedRun, include_details: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.RunBacktestResponse]:
        ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no copy of the daemon's threads
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_backtest_process, args=(run.config, include_details, sender), daemon=True,
                              name=f"backtest {run.name}".strip())  # fmt: skip
        process.start()
        sender.close()
        try:
            while True:
                try:
                    kind, payload = await asyncio.to_thread(receiver.recv)
                except EOFError:
                    process.join(1)
                    await context.abort(grpc.StatusCode.INTERNAL, f"backtest process ended (exit {process.exitcode})")
                if kind == "progress":
                    progress = api.BacktestProgress.FromString(payload)
                    progress.run = run.name
                    yield api.RunBacktestResponse(progress=progress)
                elif kind == "result":
                    result = api.BacktestResult.FromString(payload)
                    result.name = run.name
                    yield api.RunBacktestResponse(result=result)
                    return
                else:
                    log.error("backtest %s failed: %s", run.name or "", payload)
                    await context.abort(grpc.StatusCode.INTERNAL, f"backtest failed: {payload}")
        finally:
            receiver.close()
            if process.is_alive():  # the caller went away or the stream failed: stop the work it asked for
                process.terminate()
            await asyncio.to_thread(process.join, 5)

    def _write_report(self, folder: Path, runs: list[NamedRun], results: list[api.BacktestResult]) -> Path:
        from utp.daemon.cli import write_backtest_report
        from utp.daemon.session import MarketData

        named = [(run.name, result, MarketData.from_config(run.config)) for run, result in zip(runs, results, strict=True)]
        md = runs[0].config.market_data
        title = f"utp backtest (RPC): {md.dataset} {','.join(md.symbols) or 'all symbols'}"
        return write_backtest_report(folder, title, named).resolve()


async def serve(daemon: CoreDaemon, listen: str) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    """Start the gRPC server for `daemon` on `listen`; returns the server (already started)."""
    server = grpc.aio.server()
    api_grpc.add_CoreServiceServicer_to_server(CoreServicer(daemon), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
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
