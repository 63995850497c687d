"""Who may call the daemon, and the record of what they did.

Two bearer tokens live in `<data dir>/auth/` (folder 0700, files 0600, created on the daemon's first start):
`admin.token` may call everything, `read.token` only the calls that change nothing (Get*, List*, Watch*). The
standard health service and server reflection stay open so that probes and `grpcurl list` work without one.
`utp token rotate` writes a new token; the daemon reads the files again when they change, so a rotation takes
effect at the next call without a restart.

Every mutating call, allowed or refused, and every refused call of any kind goes to the audit trail: LMDB
(`audit` table, newest first through `AuditTrail.entries`) and the log (logger `utp.audit`), with who (the
request's actor, the token's role, the peer), when, what (the method and its request as JSON) and why (the
request's reason), and the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from utp.storage.state import AUDIT, StateStore
from utp.v1 import core_service_pb2 as api

log = logging.getLogger("utp.audit")

ADMIN, READ, NONE = "admin", "read", "none"
ROLES = (ADMIN, READ)
SERVICE = api.DESCRIPTOR.services_by_name["CoreService"]
#: Calls a read-only token may make: those that change nothing.
READ_ONLY_METHODS = frozenset(
    m.name for m in SERVICE.methods if m.name.startswith(("Get", "List", "Watch"))
)
MUTATING_METHODS = frozenset(m.name for m in SERVICE.methods) - READ_ONLY_METHODS
_PREFIX = f"/{SERVICE.full_name}/"
_MAX_FIELD = 300  # characters of one text field kept in an audit entry


class AuthError(RuntimeError):
    """A token file is missing or unreadable where one is required."""


# -- tokens -----------------------------------------------------------------------------------------------
def token_path(data_dir: Path, role: str = ADMIN) -> Path:
    return data_dir / "auth" / f"{role}.token"


def _write_secret(path: Path, text: str) -> None:
    """Write a secret readable by its owner only: created 0600 (never world-readable, even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def ensure_tokens(data_dir: Path) -> dict[str, Path]:
    """Create the admin and read-only tokens if they do not exist; returns their paths."""
    paths = {}
    for role in ROLES:
        path = token_path(data_dir, role)
        if not path.exists():
            _write_secret(path, new_token())
            log.warning("created the %s token in %s (0600)", role, path)
        paths[role] = path
    return paths


def rotate_token(data_dir: Path, role: str = ADMIN) -> str:
    """Replace a role's token; the old one stops working at the daemon's next call."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    token = new_token()
    _write_secret(token_path(data_dir, role), token)
    return token


def read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise AuthError(f"cannot read the token in {path}: {exc.strerror}") from None


def resolve_token(explicit: str | None = None, data_dir: Path | None = None, role: str = ADMIN) -> str:
    """The token a client sends: `--token`, else $UTP_TOKEN, else the daemon's own token file when the client
    runs beside it (same data folder), else "" (the daemon will refuse what needs one)."""
    if explicit:
        return explicit
    if os.environ.get("UTP_TOKEN"):
        return os.environ["UTP_TOKEN"]
    if data_dir is not None:
        path = token_path(data_dir, role)
        if path.exists():
            return read_token(path)
    return ""


class TokenBook:
    """The daemon's tokens, read again whenever a file changes (rotation without a restart)."""

    def __init__(self, data_dir: Path) -> None:
        self.paths = ensure_tokens(data_dir)
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, str]] = {}

    def _token(self, role: str) -> str:
        path = self.paths[role]
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return ""  # a deleted token file refuses its role rather than keeping the old token alive
        with self._lock:
            seen = self._seen.get(role)
            if seen is None or seen[0] != mtime:
                seen = (mtime, read_token(path))
                self._seen[role] = seen
            return seen[1]

    def role_of(self, token: str) -> str:
        """admin, read or none; compared in constant time."""
        if not token:
            return NONE
        for role in ROLES:
            known = self._token(role)
            if known and hmac.compare_digest(known.encode(), token.encode()):
                return role
        return NONE


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


# -- the audit trail ---------------------------------------------------------------------------------------
def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_FIELD:
        return value[:_MAX_FIELD] + f"... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value[:20]] + ([f"... ({len(value)} items)"] if len(value) > 20 else [])
    return value


def request_summary(request: Message | None) -> tuple[str, str, str]:
    """(actor, reason, request as JSON with long texts cut) of a request message."""
    if request is None:
        return "", "", ""
    fields = request.DESCRIPTOR.fields_by_name
    actor = getattr(request, "actor", "") if "actor" in fields else ""
    reason = getattr(request, "reason", "") if "reason" in fields else ""
    as_dict = json_format.MessageToDict(request, preserving_proto_field_name=True)
    return str(actor)[:_MAX_FIELD], str(reason)[:_MAX_FIELD], json.dumps(_cut(as_dict), sort_keys=True)


class AuditTrail:
    """Operator actions in LMDB (key: zero-padded wall time and a counter, so keys sort by time) and the log."""

    def __init__(self, store: StateStore, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._last = 0

    def record(self, entry: api.AuditEntry) -> api.AuditEntry:
        with self._lock:
            now = entry.time_ns or self.clock()
            now = max(now, self._last + 1)  # unique, increasing keys even within one nanosecond tick
            self._last = now
            entry.time_ns = now
            self.store.put(AUDIT, f"{now:020d}", entry.SerializeToString())
        level = logging.INFO if entry.outcome == "OK" else logging.WARNING
        log.log(level, "%s %s by %s (%s, %s): %s%s", entry.method, entry.outcome, entry.actor or "-", entry.role,
                entry.peer, entry.reason or "no reason given", f" [{entry.detail}]" if entry.detail else "",
                extra={"audit": json_format.MessageToDict(entry, preserving_proto_field_name=True)})  # fmt: skip
        return entry

    def entries(self, request: api.ListAuditRequest) -> list[api.AuditEntry]:
        limit = request.limit or 200
        wanted = {"method": request.method.lower(), "actor": request.actor.lower(), "outcome": request.outcome.lower()}
        found: list[api.AuditEntry] = []
        for _, value in self.store.items_reversed(AUDIT):
            entry = api.AuditEntry.FromString(value)
            if entry.time_ns < request.since_time_ns:
                break
            if any(w and getattr(entry, k).lower() != w for k, w in wanted.items()):
                continue
            found.append(entry)
            if len(found) >= limit:
                break
        return found


# -- the server's interceptor -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Call:
    method: str
    role: str
    peer: str


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every CoreService call and audits what must be audited."""

    def __init__(self, tokens: TokenBook, audit: AuditTrail, on_call: Callable[[str, str, float], None] | None = None,
                 *, required: bool = True) -> None:  # fmt: skip
        """`required` False (server.auth off): every caller is treated as admin, and still audited."""
        self.tokens = tokens
        self.audit = audit
        self.required = required
        self.on_call = on_call  # (method, status code name, seconds), for metrics

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(_PREFIX):
            return handler  # health, reflection: open
        method = details.method[len(_PREFIX):]
        role = self.tokens.role_of(bearer(details.invocation_metadata))
        if role == NONE and not self.required:
            role = "open"
        if role == NONE:
            refusal = (grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required (authorization: Bearer <token>); "
                       "the daemon's tokens are in <data dir>/auth/")  # fmt: skip
        elif role == READ and method in MUTATING_METHODS:
            refusal = (grpc.StatusCode.PERMISSION_DENIED, f"{method} changes the daemon: the read-only token may not call it")
        else:
            refusal = None
        return _wrap(handler, self, method, role, refusal)

    def finish(self, call: _Call, request: Message | None, code: grpc.StatusCode, detail: str, started: float) -> None:
        if self.on_call is not None:
            self.on_call(call.method, code.name, time.perf_counter() - started)
        if call.method not in MUTATING_METHODS and code not in (grpc.StatusCode.UNAUTHENTICATED,
                                                                 grpc.StatusCode.PERMISSION_DENIED):  # fmt: skip
            return
        actor, reason, as_json = request_summary(request)
        self.audit.record(api.AuditEntry(actor=actor, role=call.role, peer=call.peer, method=call.method,
                                         request_json=as_json, reason=reason,
                                         outcome="OK" if code == grpc.StatusCode.OK else code.name,
                                         detail=detail[:_MAX_FIELD]))  # fmt: skip


def _status_of(context: grpc.aio.ServicerContext, exc: BaseException | None) -> tuple[grpc.StatusCode, str]:
    """The call's outcome: the code an abort or set_code left on the context; UNKNOWN for an exception that left
    none, CANCELLED when the client went away."""
    code, details = context.code(), context.details() or ""
    if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
        return code, details if isinstance(details, str) else details.decode(errors="replace")
    if exc is None:
        return grpc.StatusCode.OK, ""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED, "the client went away"
    return grpc.StatusCode.UNKNOWN, str(exc)


@contextlib.asynccontextmanager
async def _accounted(interceptor: AuthInterceptor, method: str, role: str, refusal: tuple[grpc.StatusCode, str] | None,
                     request: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:  # fmt: skip
    """Refuses the call (with its audit entry) or runs the body and accounts for its outcome, whatever it was."""
    call, started = _Call(method, role, context.peer()), time.perf_counter()
    if isinstance(request, _Malformed):
        refusal = refusal or (grpc.StatusCode.INVALID_ARGUMENT, request.error)
        request = None
    if refusal is not None:
        interceptor.finish(call, request, refusal[0], refusal[1], started)
        await context.abort(*refusal)
    exc: BaseException | None = None
    try:
        yield
    except BaseException as e:
        exc = e
        raise
    finally:
        interceptor.finish(call, request, *_status_of(context, exc), started)


@dataclass(frozen=True)
class _Malformed:
    """Bytes that did not parse as the method's request; grpc's own answer would be UNKNOWN."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Message] | None) -> Callable[[bytes], Message | _Malformed] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Message | _Malformed:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Malformed(f"the request is not a valid protobuf message of this method's type: {exc}")

    return deserialize


def _wrap(handler: grpc.RpcMethodHandler, interceptor: AuthInterceptor, method: str, role: str,
          refusal: tuple[grpc.StatusCode, str] | None) -> grpc.RpcMethodHandler:  # fmt: skip
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Message, context: grpc.aio.ServicerContext) -> Any:
            async with _accounted(interceptor, method, role, refusal, request, context):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_tolerant(handler.request_deserializer),
                                                   response_serializer=handler.response_serializer)  # fmt: skip
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(request: Message, context: grpc.aio.ServicerContext) -> Any:
            async with _accounted(interceptor, method, role, refusal, request, context):
                async for response in inner_stream(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=_tolerant(handler.request_deserializer),
                                                    response_serializer=handler.response_serializer)  # fmt: skip
    return handler  # CoreService has no client-streaming calls


# -- TLS ------------------------------------------------------------------------------------------------
def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; with `client_ca`, mutual TLS: a client must present a
    certificate that CA signed."""
    chain, private = Path(cert).read_bytes(), Path(key).read_bytes()
    roots = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials([(private, chain)], root_certificates=roots, require_client_auth=bool(client_ca))


# -- clients ------------------------------------------------------------------------------------------------
class _BearerDetails:
    """Adds the token to a call's metadata."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else type(details)(
            details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready)


# grpc.aio files an interceptor object under the first call type it implements only: one class per type.
class _BearerUnary(_BearerDetails, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerStream(_BearerDetails, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _SyncBearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self.token}")]
        return _SyncDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))  # fmt: skip

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


@dataclass(frozen=True)
class _SyncDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def _channel_credentials(tls_ca: str, tls_cert: str, tls_key: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
    )


def client_channel(target: str, token: str = "", *, aio: bool = False, tls: bool = False, tls_ca: str = "",
                   tls_cert: str = "", tls_key: str = "", server_name: str = "") -> Any:  # fmt: skip
    """A channel to a daemon that sends `token` with every call; TLS when `tls` or any certificate is given
    (`tls_ca`: the CA that signed the server's certificate; `tls_cert`/`tls_key`: the client's, for mutual TLS;
    `server_name`: the name the server's certificate is for, when it is not the target's host)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    secure = tls or bool(tls_ca or tls_cert or tls_key)
    if aio:
        interceptors = [_BearerUnary(token), _BearerStream(token)] if token else []
        if secure:
            return grpc.aio.secure_channel(target, _channel_credentials(tls_ca, tls_cert, tls_key), options=options,
                                           interceptors=interceptors)  # fmt: skip
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    channel = (grpc.secure_channel(target, _channel_credentials(tls_ca, tls_cert, tls_key), options=options)
               if secure else grpc.insecure_channel(target, options=options))  # fmt: skip
    return grpc.intercept_channel(channel, _SyncBearer(token)) if token else channel
