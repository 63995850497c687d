"""Event kinds and the codec between columnar frames (inside a process) and protobuf (on the wire).

Inside a process a batch of events of one kind is a polars DataFrame whose schema is derived from the
kind's protobuf message: the `header` is flattened into the columns `event_id`, `correlation_id`,
`event_time_ns` and `symbol`; scalars map to the matching polars type (enums to Int32, proto3
`optional` scalars to nullable columns); sub-messages to Struct and repeated fields to List. The one
exception is FeatureVector, whose `names`/`values` become one Float64 column per feature so that
kernels read features as plain arrays. The proto stays the single source of truth for every schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from utp.core.columns import column_of
from utp.v1 import events_pb2 as pb

_HEADER_DTYPES: dict[str, pl.DataType] = {
    "event_id": pl.Utf8(),
    "correlation_id": pl.Utf8(),
    "event_time_ns": pl.Int64(),
    "symbol": pl.Utf8(),
}
HEADER_COLUMNS: tuple[str, ...] = tuple(_HEADER_DTYPES)
TIME = "event_time_ns"

_SCALAR_DTYPES: dict[int, pl.DataType] = {
    FieldDescriptor.TYPE_DOUBLE: pl.Float64(),
    FieldDescriptor.TYPE_FLOAT: pl.Float32(),
    FieldDescriptor.TYPE_INT64: pl.Int64(),
    FieldDescriptor.TYPE_SINT64: pl.Int64(),
    FieldDescriptor.TYPE_SFIXED64: pl.Int64(),
    FieldDescriptor.TYPE_UINT64: pl.UInt64(),
    FieldDescriptor.TYPE_FIXED64: pl.UInt64(),
    FieldDescriptor.TYPE_INT32: pl.Int32(),
    FieldDescriptor.TYPE_SINT32: pl.Int32(),
    FieldDescriptor.TYPE_SFIXED32: pl.Int32(),
    FieldDescriptor.TYPE_UINT32: pl.UInt32(),
    FieldDescriptor.TYPE_FIXED32: pl.UInt32(),
    FieldDescriptor.TYPE_BOOL: pl.Boolean(),
    FieldDescriptor.TYPE_STRING: pl.Utf8(),
    FieldDescriptor.TYPE_BYTES: pl.Binary(),
    FieldDescriptor.TYPE_ENUM: pl.Int32(),
}


def _dtype(field: FieldDescriptor) -> pl.DataType:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        inner: pl.DataType = pl.Struct({f.name: _dtype(f) for f in field.message_type.fields})
    else:
        inner = _SCALAR_DTYPES[field.type]
    return pl.List(inner) if field.is_repeated else inner


def _message_schema(descriptor: Descriptor) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {}
    for field in descriptor.fields:
        if field.name == "header":
            schema.update(_HEADER_DTYPES)
        else:
            schema[field.name] = _dtype(field)
    return schema


def _to_python(value: Any, field: FieldDescriptor) -> Any:
    """Protobuf field value -> the plain Python value polars expects for its column."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.is_repeated:
            return [_message_to_dict(v) for v in value]
        return _message_to_dict(value)
    if field.is_repeated:
        return list(value)
    return value


def _message_to_dict(message: Message) -> dict[str, Any]:
    # An unset `optional` scalar is null, as at the top level: an intent without a target must not read as 0.
    return {f.name: None if f.has_presence and f.type != FieldDescriptor.TYPE_MESSAGE and not message.HasField(f.name)
            else _to_python(getattr(message, f.name), f) for f in message.DESCRIPTOR.fields}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of event: its subject token, protobuf message and frame schema."""

    name: str
    number: int
    message: type[Message]
    # Streams with watermarks can be joined by time; command-like kinds (status, control) cannot.
    watermarked: bool

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return _SCHEMAS[self.name]

    def empty_frame(self) -> pl.DataFrame:
        """A frame with no rows (shared: frames are never modified in place)."""
        return _EMPTY[self.name]

    def frame(self, columns: dict[str, Any], height: int) -> pl.DataFrame:
        """A frame of this kind from every one of its columns: a Series, an array or list, a dict of a struct's
        fields, or one value for all `height` rows. Built series by series in the schema's order and types: a
        `select` or `with_columns` plans and runs a query, about 0.1-0.2 ms however few the rows, and an
        engine's step at one bar time would spend most of its time on them."""
        return pl.DataFrame([column_of(name, dtype, columns[name], height) for name, dtype in _SCHEMAS[self.name].items()])

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame`'s columns of this kind, in the kind's order and types (others dropped), with no query."""
        return self.frame({name: frame.get_column(name) for name in _SCHEMAS[self.name]}, frame.height)

    def to_messages(self, frame: pl.DataFrame) -> list[Message]:
        """Frame rows -> protobuf messages (the wire form)."""
        if self.name == "feature_vector":
            return _features_to_messages(frame)
        fields = self.message.DESCRIPTOR.fields_by_name
        optional = {n for n, f in fields.items() if f.has_presence and f.type != FieldDescriptor.TYPE_MESSAGE}
        out: list[Message] = []
        for row in frame.iter_rows(named=True):
            header = pb.EventHeader(
                event_id=row.pop("event_id"),
                correlation_id=row.pop("correlation_id"),
                event_time_ns=row.pop("event_time_ns"),
                symbol=row.pop("symbol"),
            )
            for name in optional:
                if row.get(name) is None:
                    row.pop(name, None)
            out.append(self.message(header=header, **row))
        return out

    def to_frame(self, messages: Sequence[Message]) -> pl.DataFrame:
        """Protobuf messages -> frame. Raises ValueError if a message is of another kind."""
        if not messages:
            return self.empty_frame()
        if self.name == "feature_vector":
            return _features_to_frame(messages)
        fields = [f for f in self.message.DESCRIPTOR.fields if f.name != "header"]
        columns: dict[str, list[Any]] = {name: [] for name in self.schema}
        event_id, correlation_id = columns["event_id"], columns["correlation_id"]
        event_time, symbol = columns["event_time_ns"], columns["symbol"]
        # Built column by column: far cheaper for polars than rows checked against the schema.
        plan = [
            (columns[f.name], f.name, f.has_presence and f.type != FieldDescriptor.TYPE_MESSAGE,
             f.type == FieldDescriptor.TYPE_MESSAGE or f.is_repeated, f)
            for f in fields
        ]  # fmt: skip
        for message in messages:
            if message.DESCRIPTOR is not self.message.DESCRIPTOR:
                raise ValueError(f"expected {self.message.DESCRIPTOR.name}, got {message.DESCRIPTOR.name}")
            h = message.header  # type: ignore[attr-defined]
            event_id.append(h.event_id)
            correlation_id.append(h.correlation_id)
            event_time.append(h.event_time_ns)
            symbol.append(h.symbol)
            for column, name, has_presence, convert, field in plan:
                if has_presence and not message.HasField(name):
                    column.append(None)
                elif convert:
                    column.append(_to_python(getattr(message, name), field))
                else:
                    column.append(getattr(message, name))
        return pl.DataFrame(columns, schema=self.schema)


def _features_to_messages(frame: pl.DataFrame) -> list[Message]:
    names = feature_columns(frame)
    out: list[Message] = []
    for row in frame.iter_rows(named=True):
        out.append(
            pb.FeatureVector(
                header=pb.EventHeader(
                    event_id=row["event_id"],
                    correlation_id=row["correlation_id"],
                    event_time_ns=row["event_time_ns"],
                    symbol=row["symbol"],
                ),
                feature_set_version=row["feature_set_version"],
                names=names,
                values=[row[n] for n in names],
            )
        )
    return out


def _features_to_frame(messages: Sequence[Message]) -> pl.DataFrame:
    names = list(messages[0].names)  # type: ignore[attr-defined]
    columns: dict[str, list[Any]] = {c: [] for c in (*HEADER_COLUMNS, "feature_set_version", *names)}
    for m in messages:
        if list(m.names) != names:  # type: ignore[attr-defined]
            raise ValueError("feature vectors in one batch have different feature names")
        h = m.header  # type: ignore[attr-defined]
        columns["event_id"].append(h.event_id)
        columns["correlation_id"].append(h.correlation_id)
        columns["event_time_ns"].append(h.event_time_ns)
        columns["symbol"].append(h.symbol)
        columns["feature_set_version"].append(m.feature_set_version)  # type: ignore[attr-defined]
        for name, value in zip(names, m.values, strict=True):  # type: ignore[attr-defined]
            columns[name].append(value)
    schema = {**KINDS["feature_vector"].schema, **{n: pl.Float64() for n in names}}
    return pl.DataFrame(columns, schema=schema)


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """Names of the feature columns of a feature_vector frame, in order."""
    fixed = {*HEADER_COLUMNS, "feature_set_version"}
    return [c for c in frame.columns if c not in fixed]


def _build_kinds() -> dict[str, Kind]:
    event_fields = pb.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
    by_name = {f.name: f for f in event_fields}
    # Not joined by time (applied or recorded on arrival), so they carry no watermarks.
    command_like = {"engine_status", "control_command", "rejected_bar", "model_alert", "data_alert", "operator_alert"}
    kinds: dict[str, Kind] = {}
    for value in pb.EventKind.DESCRIPTOR.values:
        if value.number == 0:
            continue
        name = value.name.removeprefix("EVENT_KIND_").lower()
        field = by_name[name]  # the proto keeps EventKind and Event's oneof in step
        message_cls = getattr(pb, field.message_type.name)
        kinds[name] = Kind(name, value.number, message_cls, watermarked=name not in command_like)
    return kinds


KINDS: dict[str, Kind] = _build_kinds()
_SCHEMAS: dict[str, dict[str, pl.DataType]] = {n: _message_schema(k.message.DESCRIPTOR) for n, k in KINDS.items()}
# Feature vectors are wide in frames: one column per feature instead of names/values lists.
del _SCHEMAS["feature_vector"]["names"], _SCHEMAS["feature_vector"]["values"]
_EMPTY: dict[str, pl.DataFrame] = {n: pl.DataFrame(schema=schema) for n, schema in _SCHEMAS.items()}
KIND_BY_NUMBER: dict[int, Kind] = {k.number: k for k in KINDS.values()}


def kind(name: str) -> Kind:
    """The kind called `name`; ValueError naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown event kind {name!r}; known: {', '.join(KINDS)}") from None


def wrap_event(kind_name: str, message: Message) -> pb.Event:
    """Put a message into the `Event` envelope used by streams that carry several kinds."""
    return pb.Event(**{kind_name: message})


def concat(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    if not frames:
        raise ValueError("concat of no rows; use Kind.empty_frame()")
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
