"""Fuzzing every gRPC request type of the daemon with hypothesis: each request message is built field by field from
its descriptor with random values (huge and odd strings, extreme integers, NaN and infinite floats, unknown enum
numbers, long repeated fields, nested messages). Whatever arrives, the daemon answers OK or refuses with a status
that says what was wrong (never UNKNOWN or INTERNAL, never without details), stays up, and a refused request
leaves its state as it was.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DaemonProcess
from utp.daemon.auth import MUTATING_METHODS
from utp.v1 import core_service_pb2 as api

SERVICE = api.DESCRIPTOR.services_by_name["CoreService"]
#: Cases per request type: 40 in the default run (1,120 over the 28 request types, the issue's 1,000 for this
#: target, in about a minute); UTP_FUZZ_CASES=1000 runs 1,000 of each (about 12 minutes).
CASES_PER_TYPE = int(os.environ.get("UTP_FUZZ_CASES", "40"))
# Derandomized: CI draws the same requests each run, so a failure is reproducible and not a flake.
CASES = settings(max_examples=CASES_PER_TYPE, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
#: A refusal names what was wrong; these are the codes that do (UNKNOWN and INTERNAL say nothing useful).
CLEAR_REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                  grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
                  grpc.StatusCode.RESOURCE_EXHAUSTED}  # fmt: skip
#: How long a streaming call runs before the test ends it: a request still running then was accepted (a
#: watcher, a backtest): the refusals all come before the first response.
STREAM_SECONDS = 0.25

INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip

odd_texts = st.sampled_from(["", " ", "x" * 100_000, "x" * 1001, "../../etc/passwd", "\x00", "AAPL", "GOOG", "lgbm", "tft",
                             "risk.max_position_pct=2", "=", "a=b=c", "🚀" * 1000, "\ud7ff", "1e309", "NaN", "-1",
                             "2010-13-45", "2012-01-01", "goog", "sp500", "*", "%s%n", "'; DROP TABLE x;--"])  # fmt: skip
texts = st.one_of(st.text(max_size=30), odd_texts, st.text(min_size=70, max_size=300), st.just("y" * 1001))


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type in INT_BOUNDS:
        low, high = INT_BOUNDS[field.type]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, -1 if low < 0 else 1, 10**6]))
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_STRING:
        return texts
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=2000)
    if field.type == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: unknown numbers travel too
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return st.deferred(lambda: messages(field.message_type, depth + 1))
    raise AssertionError(f"no strategy for field type {field.type} ({field.full_name})")


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if _is_map(field):
        key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        return st.dictionaries(_scalar(key, depth), _scalar(value, depth), max_size=5)
    if field.is_repeated:
        element = _scalar(field, depth)
        return st.one_of(st.lists(element, max_size=5), st.lists(element, min_size=100, max_size=120))
    return _scalar(field, depth)


@st.composite
def messages(draw: st.DrawFn, descriptor, depth: int = 0) -> Message:  # noqa: ANN001 - a protobuf Descriptor
    """A message of `descriptor` with a random subset of its fields set to random values; below three levels of
    nesting the messages are left empty, so that recursive types stay finite."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if depth > 2 or not draw(st.booleans()):
            continue
        value = draw(_field_values(field, depth))
        if _is_map(field):
            target = getattr(message, field.name)
            for key, item in value.items():
                if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            getattr(message, field.name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(value)
        else:
            setattr(message, field.name, value)
    return message


MODEL_METHODS = {"ListModels", "PromoteModel", "TriggerRetrain"}


def state_of(daemon: DaemonProcess, models: bool = False) -> tuple:
    """What a refused request must leave as it was: the gates, the session, the account, orders and positions
    (and the model registry, for the methods that touch it)."""
    status = daemon.status()
    equity = status.account.equity
    orders = daemon.stub.ListOrders(api.ListOrdersRequest(), timeout=10)
    positions = daemon.stub.ListPositions(api.ListPositionsRequest(), timeout=10)
    registry = daemon.stub.ListModels(api.ListModelsRequest(), timeout=10) if models else api.ListModelsResponse()
    return (status.halted, status.halt_reason, status.entries_paused, status.execution_approved,
            status.approval_mode, status.session_state, equity if not math.isnan(equity) else "nan",
            orders.SerializeToString(deterministic=True), positions.SerializeToString(deterministic=True),
            registry.SerializeToString(deterministic=True))  # fmt: skip


def settled_state(daemon: DaemonProcess, models: bool = False) -> tuple:
    """The state once an accepted request's effects have gone through the engines (controls travel the bus)."""
    state = state_of(daemon, models)
    while True:
        time.sleep(0.005)
        again = state_of(daemon, models)
        if again == state:
            return state
        state = again


def call(daemon: DaemonProcess, method: MethodDescriptor, request: Message) -> grpc.RpcError | None:
    """The refusal, or None when the daemon accepted the request (a stream still running after a while counts)."""
    rpc = getattr(daemon.stub, method.name)
    try:
        if method.server_streaming:
            for _ in rpc(request, timeout=STREAM_SECONDS):
                break  # the first response: accepted
        else:
            rpc(request, timeout=30)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
            return None
        return error
    return None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    # A short GOOG session run to its end, so that nothing but the fuzzed requests changes the daemon's state.
    folder = tmp_path_factory.mktemp("fuzz-daemon")
    process = DaemonProcess(folder / "data", ["--dataset", "goog", "--replay-rate", "0", "--set", "market_data.start=2012-01-01",
                                              "--set", "market_data.end=2012-03-31"], folder / "core.log")  # fmt: skip
    process.start()
    process.wait_for(lambda s: s.session_state == api.SESSION_STATE_COMPLETED, timeout=240, what="the session's end")
    yield process
    process.stop()


# The models' retrain and the research runs start processes once accepted; every refusal comes before that, and
# an accepted one is cancelled by the short stream deadline above (the daemon ends its process with the call).
@pytest.mark.parametrize("method", SERVICE.methods, ids=lambda m: m.name)
def test_every_request_type_is_answered_or_refused_clearly_and_a_refusal_changes_nothing(
    daemon: DaemonProcess, method: MethodDescriptor
) -> None:
    refused: list[str] = []
    models = method.name in MODEL_METHODS
    known = [settled_state(daemon, models)]  # the state is read once per request: after it, and then kept

    @CASES
    @given(request=messages(method.input_type))
    def fuzz(request: Message) -> None:
        error = call(daemon, method, request)
        if error is None:
            if method.name in MUTATING_METHODS:
                known[0] = settled_state(daemon, models)
            return
        assert error.code() in CLEAR_REFUSALS, f"{method.name}({request!r:.300}) -> {error.code()}: {error.details()}"
        assert error.details(), f"{method.name} refused with no details"
        assert state_of(daemon, models) == known[0], f"{method.name}({request!r:.300}) was refused but changed the state"
        refused.append(error.details())

    fuzz()
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log()[-4000:]
    daemon.wait_for(lambda s: True, timeout=10, what="the daemon to answer after the fuzzing")
    # Requests with no fields are valid for most methods; the random ones must have found the validation.
    if any(f.name not in ("reason", "actor") for f in method.input_type.fields):
        assert refused, f"no {method.name} request was refused in {CASES_PER_TYPE} random ones"


def test_a_request_that_is_not_protobuf_is_refused_and_the_daemon_stays_up(daemon: DaemonProcess) -> None:
    assert daemon.channel is not None
    before = state_of(daemon)
    raw = daemon.channel.unary_unary("/utp.v1.CoreService/Halt", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff\xff\x0f not a protobuf message", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in caught.value.details()
    assert state_of(daemon) == before


# What the fuzzing found (each answered UNKNOWN with a library's exception before it was mended), kept as cases
# that run every time, whatever hypothesis happens to draw.
FOUND = [
    ("ListModels", api.ListModelsRequest(name="/"), grpc.StatusCode.INVALID_ARGUMENT, "Names cannot contain"),
    ("PromoteModel", api.PromoteModelRequest(name=" "), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    ("PromoteModel", api.PromoteModelRequest(name="lgbm", version="9223372036854775808"),
     grpc.StatusCode.FAILED_PRECONDITION, "versions are positive integers"),
    ("PromoteModel", api.PromoteModelRequest(name="lgbm", version="²"), grpc.StatusCode.FAILED_PRECONDITION,
     "positive integers"),
    ("RunBacktest", api.RunBacktestRequest(compare="risk.max_position_pct=0\x1f1"), grpc.StatusCode.INVALID_ARGUMENT,
     "not valid YAML"),
    ("RunSweep", api.RunSweepRequest(spec_yaml="0000-00-00"), grpc.StatusCode.INVALID_ARGUMENT, "spec_yaml: not valid YAML"),
    ("RunBacktest", api.RunBacktestRequest(set=["risk.max_position_pct=0000-00-00"]), grpc.StatusCode.INVALID_ARGUMENT,
     "not valid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_", "code", "detail"), FOUND, ids=[f"{c[0]}-{i}" for i, c in enumerate(FOUND)])
def test_what_the_fuzzing_found_is_refused_clearly(
    daemon: DaemonProcess, name: str, request_: Message, code: grpc.StatusCode, detail: str
) -> None:
    before = settled_state(daemon, models=True)
    error = call(daemon, SERVICE.methods_by_name[name], request_)
    assert error is not None and error.code() == code, error
    assert detail in error.details()
    assert state_of(daemon, models=True) == before
