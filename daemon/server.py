"""The gRPC server of `utp core`: CoreService, the standard health service and server reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from datetime import date

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from utp.core.config import AlphaConfig, Config, ConfigError, validate
from utp.core.kinds import KIND_BY_NUMBER
from utp.daemon.core import CoreDaemon
from utp.daemon.session import backtest
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


def backtest_config(base: Config, request: api.RunBacktestRequest) -> Config:
    """The configuration of a RunBacktest request; InvalidRequest names the bad field."""
    import msgspec

    dataset = request.dataset or "goog"
    if dataset not in DATASETS:
        raise InvalidRequest(f"dataset: unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    symbols = tuple(request.symbols)
    unknown = [s for s in symbols if s not in DATASETS[dataset].symbols]
    if unknown:
        raise InvalidRequest(f"symbols: {', '.join(unknown[:5])} not in {dataset}")
    dates = {}
    for name in ("start_date", "end_date"):
        value = getattr(request, name)
        if value:
            try:
                dates[name] = date.fromisoformat(value)
            except ValueError:
                raise InvalidRequest(f"{name}: {value[:40]!r} is not a date YYYY-MM-DD") from None
    if "start_date" in dates and "end_date" in dates and dates["start_date"] > dates["end_date"]:
        raise InvalidRequest("start_date is after end_date")
    for source, weight in request.weights.items():
        if source not in KNOWN_SOURCES:
            raise InvalidRequest(f"weights: unknown source {source[:40]!r}; known: {', '.join(sorted(KNOWN_SOURCES))}")
        if not (weight >= 0 and weight < float("inf")):
            raise InvalidRequest(f"weights: {source} must be a finite number >= 0")
    if not (request.initial_cash >= 0 and request.initial_cash < 1e15):
        raise InvalidRequest("initial_cash must be >= 0 and finite")
    if request.batch_bar_times < 0:
        raise InvalidRequest("batch_bar_times must be >= 0")
    md = msgspec.structs.replace(
        base.market_data,
        dataset=dataset,
        symbols=symbols,
        start=request.start_date,
        end=request.end_date,
        batch_bar_times=request.batch_bar_times or max(base.market_data.batch_bar_times, 1000),
    )
    config = msgspec.structs.replace(base, market_data=md)
    if request.weights:
        config = msgspec.structs.replace(
            config, ensemble=msgspec.structs.replace(config.ensemble, weights=dict(request.weights))
        )
    if request.initial_cash:
        config = msgspec.structs.replace(
            config, execution=msgspec.structs.replace(config.execution, initial_cash=request.initial_cash)
        )
    try:
        validate(config)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None
    return config


class CoreServicer(api_grpc.CoreServiceServicer):
    def __init__(self, daemon: CoreDaemon) -> None:
        self.daemon = daemon

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
            config = backtest_config(self.daemon.config, request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_progress(progress: api.BacktestProgress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, api.RunBacktestResponse(progress=progress))

        def work() -> None:
            # Its own thread and event loop: a long backtest never stalls the live session.
            try:
                result = backtest(config, on_progress=on_progress, include_details=request.include_details)
                loop.call_soon_threadsafe(queue.put_nowait, api.RunBacktestResponse(result=result))
            except Exception as exc:  # reported to the caller below
                log.exception("backtest failed")
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        threading.Thread(target=work, name="backtest", daemon=True).start()
        while True:
            item = await queue.get()
            if isinstance(item, Exception):
                await context.abort(grpc.StatusCode.INTERNAL, f"backtest failed: {item}")
            yield item
            if item.HasField("result"):
                return


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
