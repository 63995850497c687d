"""Where the console's data comes from: the daemon over gRPC, or fixed messages for snapshots and screenshots.

Every screen talks to a `DataSource` by RPC name (`await source.call("Halt", request)`), so the same screens
render a live daemon (`GrpcSource`) and a canned, deterministic state (`FixtureSource`, for layout snapshots
and the docs' screenshots only: it changes nothing and answers only what it was given). Both raise
`SourceError` for every failure, so screens handle one exception type.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from utp.daemon.auth import client_channel
from utp.v1 import core_service_pb2_grpc as api_grpc

#: Codes that mean "the daemon is not there right now" (as opposed to "it refused").
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: Codes that mean the token is wrong: retrying will not help, the operator must fix --token.
_UNAUTHORIZED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class SourceError(Exception):
    """A call failed: the RPC, the gRPC status code and the daemon's explanation."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}" if details else f"{method}: {code.name}")
        self.method = method
        self.code = code
        self.details = details

    @property
    def unreachable(self) -> bool:
        return self.code in _UNREACHABLE

    @property
    def unauthorized(self) -> bool:
        return self.code in _UNAUTHORIZED

    @property
    def unimplemented(self) -> bool:
        return self.code == grpc.StatusCode.UNIMPLEMENTED

    def explain(self) -> str:
        """One line for a notification: what failed and what the operator can do about it."""
        if self.unimplemented:
            return f"{self.method}: this daemon does not offer it (UNIMPLEMENTED); upgrade the daemon"
        if self.unreachable:
            return f"{self.method}: the daemon is unreachable ({self.code.name}); retrying"
        if self.code == grpc.StatusCode.UNAUTHENTICATED:
            return f"{self.method}: the daemon refused the token (UNAUTHENTICATED); start the console with --token"
        if self.code == grpc.StatusCode.PERMISSION_DENIED:
            return f"{self.method}: the token may not change the daemon (read-only token); use the admin token"
        return str(self)


class DataSource(Protocol):
    """The daemon's CoreService by RPC name."""

    #: Shown in the header: the daemon's address, or what the data is.
    label: str

    async def call(self, method: str, request: Message, timeout: float = 10.0) -> Any:
        """A unary call; raises SourceError."""
        ...

    def stream(self, method: str, request: Message, timeout: float | None = None) -> AsyncIterator[Any]:
        """A server-streaming call's responses; raises SourceError."""
        ...

    async def close(self) -> None: ...


class GrpcSource:
    """The daemon over gRPC, with the bearer token on every call.

    The channel is opened on first use (grpc.aio binds it to the running event loop). When the daemon is
    unreachable the channel is replaced at most every `reopen_after_s`, so a restarted daemon is found at
    the next poll instead of after gRPC's reconnect backoff (which grows to two minutes).

    The token goes with each call as metadata rather than through client_channel's interceptor: grpc.aio files
    an interceptor object under its first matching call kind only, so one interceptor for unary and streaming
    calls leaves the streams (WatchEvents, RunBacktest, TriggerRetrain) without it.
    """

    def __init__(
        self,
        target: str,
        token: str = "",
        *,
        tls: bool = False,
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        server_name: str = "",
        reopen_after_s: float = 2.0,
    ) -> None:
        self.label = target
        self.target = target
        self._token = token
        self._tls = {"tls": tls, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key, "server_name": server_name}
        self._reopen_after_s = reopen_after_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_grpc.CoreServiceStub | None = None
        self._opened_at = 0.0
        self._retired: set[asyncio.Task] = set()

    def _current_stub(self) -> api_grpc.CoreServiceStub:
        if self._stub is None:
            self._channel = client_channel(self.target, self._token, aio=True, **self._tls)
            self._stub = api_grpc.CoreServiceStub(self._channel)
            self._opened_at = time.monotonic()
        return self._stub

    def _failed(self, method: str, exc: grpc.aio.AioRpcError) -> SourceError:
        error = SourceError(method, exc.code(), exc.details() or "")
        if error.unreachable and time.monotonic() - self._opened_at > self._reopen_after_s:
            self._retire_channel()
        return error

    def _retire_channel(self) -> None:
        old, self._channel, self._stub = self._channel, None, None
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(grace=None))
            self._retired.add(task)  # keep a reference until it is done
            task.add_done_callback(self._retired.discard)

    async def call(self, method: str, request: Message, timeout: float = 10.0) -> Any:
        rpc = getattr(self._current_stub(), method)
        try:
            return await rpc(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(method, exc) from None

    async def stream(self, method: str, request: Message, timeout: float | None = None) -> AsyncIterator[Any]:
        call = getattr(self._current_stub(), method)(request, timeout=timeout)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise self._failed(method, exc) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)
        self._channel = self._stub = None
        for task in list(self._retired):
            with contextlib.suppress(Exception):
                await task


#: Streams that stay open until the client leaves (the daemon's event stream), as opposed to streams that end.
_OPEN_STREAMS = frozenset({"WatchEvents"})


class FixtureSource:
    """Fixed answers by RPC name, for deterministic snapshots and screenshots; never for behaviour tests.

    A message answers a unary call, a sequence of messages a streaming one. Anything else is UNIMPLEMENTED,
    mutating calls included unless an answer was given: it pretends to change nothing.
    """

    def __init__(self, answers: Mapping[str, Message | Sequence[Message]], label: str = "canned data") -> None:
        self.label = label
        self._answers = dict(answers)

    def _answer(self, method: str, streaming: bool) -> Any:
        answer = self._answers.get(method)
        if answer is None or isinstance(answer, Message) == streaming:
            raise SourceError(method, grpc.StatusCode.UNIMPLEMENTED, "not in the canned data")
        return answer

    async def call(self, method: str, request: Message, timeout: float = 10.0) -> Any:
        answer = self._answer(method, streaming=False)
        copy = type(answer)()
        copy.CopyFrom(answer)
        return copy

    async def stream(self, method: str, request: Message, timeout: float | None = None) -> AsyncIterator[Any]:
        for answer in self._answer(method, streaming=True):
            copy = type(answer)()
            copy.CopyFrom(answer)
            yield copy
            await asyncio.sleep(0)
        if method in _OPEN_STREAMS:
            await asyncio.Event().wait()  # the daemon's event stream never ends by itself

    async def close(self) -> None:
        return None
