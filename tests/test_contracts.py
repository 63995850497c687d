"""Contracts: generated code is fresh, buf lint passes, every event kind survives frame <-> protobuf."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from utp.core.kinds import KINDS, kind
from utp.core.subjects import Subjects, symbol_token, token_symbol
from utp.v1 import events_pb2 as pb

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generated = _generator().generate(out_dir=tmp_path)
    assert generated, "protoc produced nothing"
    committed = sorted((REPO / "proto" / "utp" / "v1").glob("*_pb2*.py*"))
    assert [p.name for p in generated] == [p.name for p in committed]
    stale = [p.name for p in generated if p.read_bytes() != (REPO / "proto" / "utp" / "v1" / p.name).read_bytes()]
    assert not stale, f"generated code is stale, run `python proto/generate.py`: {stale}"


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    if not Path(buf).exists():
        pytest.fail("buf is missing: install the test extra (buf-bin)")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _sample(message: Message, seed: int = 1) -> Message:
    """Fill every field of a message with a distinct value, recursively."""
    for field in message.DESCRIPTOR.fields:
        value: object
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for i in range(2):
                    _sample(getattr(message, field.name).add(), seed + i + 1)
            else:
                _sample(getattr(message, field.name), seed + 1)
            continue
        if field.type == FieldDescriptor.TYPE_ENUM:
            value = field.enum_type.values[-1].number
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type == FieldDescriptor.TYPE_STRING:
            value = f"{field.name}-{seed}"
        elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            value = seed + 0.5
        else:
            value = seed * 1000 + field.number
        if field.is_repeated:
            getattr(message, field.name).extend([value, value])
        else:
            setattr(message, field.name, value)
    return message


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_round_trips_between_frame_and_protobuf(name: str) -> None:
    k = kind(name)
    messages = [_sample(k.message(), seed) for seed in (1, 2)]
    if name == "feature_vector":
        for m in messages:  # the wide frame form needs the same feature names in a batch
            del m.names[:]
            m.names.extend(["a", "b"])
    frame = k.to_frame(messages)
    assert frame.height == 2
    assert k.to_messages(frame) == messages


def test_unset_optional_fields_stay_unset() -> None:
    signal = pb.AlphaSignal(header=pb.EventHeader(event_id="x"), direction=pb.DIRECTION_UP, period_bars=3)
    frame = kind("alpha_signal").to_frame([signal])
    assert frame["confidence"].null_count() == 1
    (back,) = kind("alpha_signal").to_messages(frame)
    assert not back.HasField("confidence") and back == signal


def test_kinds_cover_every_event_kind_and_the_event_envelope() -> None:
    names = {v.name.removeprefix("EVENT_KIND_").lower() for v in pb.EventKind.DESCRIPTOR.values if v.number}
    assert names == set(KINDS) == {f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
    with pytest.raises(ValueError, match="unknown event kind 'nope'"):
        kind("nope")


@pytest.mark.parametrize("symbol", ["GOOG", "BRK.B", "A*B>C", "", "über"])
def test_symbol_tokens_are_reversible_nats_tokens(symbol: str) -> None:
    token = symbol_token(symbol)
    assert not any(c in token for c in ".*> \t")
    assert token_symbol(token) == symbol
    subjects = Subjects("utp")
    assert subjects.parse(subjects.event("bar", symbol)) == ("bar", symbol)
    assert subjects.parse(subjects.batch("bar")) == ("bar", None)
    assert subjects.batch("bar", "p3") == subjects.batch("bar") + ".p3"  # a partition's own batch subject
    assert subjects.parse(subjects.batch("bar", "p3")) == ("bar", None)
