"""Frames <-> `EventBatch`, the columnar protobuf form in which batches of events travel between processes.

One message per batch (or per part of a large one) instead of one per event: a batch of 500 bars is one
publish, one store and one delivery on every hop, and its columns go in and out of protobuf as whole
arrays, never row by row. The column set and types are the kind's frame schema (`utp.core.kinds`), so the
proto stays the single source of truth; a batch whose columns do not match its kind is refused with the
reason (ValueError), never half-read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

from utp.core.kinds import KIND_BY_NUMBER, Kind
from utp.v1 import events_pb2 as pb

# polars type -> (the Column oneof that carries it, numpy type of its values or None for Python objects)
_SCALARS: dict[type[pl.DataType], tuple[str, Any]] = {
    pl.Float64: ("doubles", np.float64),
    pl.Float32: ("floats", np.float32),
    pl.Int64: ("int64s", np.int64),
    pl.UInt64: ("uint64s", np.uint64),
    pl.Int32: ("int32s", np.int32),
    pl.UInt32: ("uint32s", np.uint32),
    pl.Boolean: ("bools", np.bool_),
    pl.Utf8: ("strings", None),
    pl.Binary: ("binaries", None),
}
_PLACEHOLDER: dict[str, Any] = {"strings": "", "binaries": b"", "bools": False}
# Fixed-width values: a packed repeated field of them is its tag, its length and the little-endian values back to
# back, so a whole column goes in and out as one buffer instead of one Python number per row.
_FIXED_WIDTH: dict[str, np.dtype] = {"doubles": np.dtype("<f8"), "floats": np.dtype("<f4")}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _packed_values(values: np.ndarray) -> bytes:
    """A `*Values` message (field 1, packed) holding `values`, serialized."""
    raw = values.tobytes()
    return b"\x0a" + _varint(len(raw)) + raw


def _unpacked_values(message: Any, dtype: np.dtype, rows: int) -> np.ndarray | None:
    """The `rows` fixed-width values of a `*Values` message as an array, or None if it holds anything else (the
    caller then reads it value by value, and says what is wrong)."""
    data = message.SerializeToString()  # always packed, whatever form the sender used
    size = rows * dtype.itemsize
    head = b"\x0a" + _varint(size)
    if len(data) != len(head) + size or not data.startswith(head):
        return None
    return np.frombuffer(data, dtype, count=rows, offset=len(head))


def _write(column: pb.Column, series: pl.Series) -> None:
    """Fill `column` with `series` (its name, validity and values). Whole arrays or Python lists only: a polars
    expression per column (is_not_null, fill_null, struct.field) cost ~0.1 ms each, most of a small batch's time."""
    column.name = series.name
    dtype = series.dtype
    nulls = series.null_count()
    fixed = _FIXED_WIDTH.get(_SCALARS[type(dtype)][0]) if type(dtype) in _SCALARS else None
    values = series.to_list() if nulls or not (fixed is not None or isinstance(dtype, pl.Struct)) else None
    if nulls:
        column.valid.extend([v is not None for v in values])  # type: ignore[union-attr]
    if isinstance(dtype, pl.Struct):
        fields = column.structs.fields
        column.structs.SetInParent()
        for field in series.struct.unnest().get_columns():
            _write(fields.add(), field)
        return
    if isinstance(dtype, pl.List):
        lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))  # type: ignore[union-attr]
        lists = column.lists
        lists.offsets.append(0)
        lists.offsets.extend(np.cumsum(lengths).tolist())
        items = [item for v in values if v for item in v]  # type: ignore[union-attr]
        _write(lists.items, pl.Series("items", items, dtype=dtype.inner))
        return
    oneof, _ = _SCALARS[type(dtype)]
    if fixed is not None and series.len():
        # Nulls are NaN here: the validity says which, and the reader puts them back.
        getattr(column, oneof).MergeFromString(_packed_values(series.to_numpy().astype(fixed, copy=False)))
        return
    if values is None:
        values = series.to_list()
    if nulls:
        placeholder = _PLACEHOLDER.get(oneof, 0)
        values = [placeholder if v is None else v for v in values]
    getattr(column, oneof).values.extend(values)


def _read(column: pb.Column, dtype: pl.DataType, rows: int, where: str) -> pl.Series:
    """The series `column` holds, checked against the type its place in the kind's schema calls for."""
    name = column.name
    which = column.WhichOneof("values")
    if isinstance(dtype, pl.Struct):
        if which != "structs":
            raise ValueError(f"column {where} is a struct, sent as {which}")
        fields = {f.name: f for f in column.structs.fields}
        if set(fields) != {f.name for f in dtype.fields}:
            raise ValueError(f"struct column {where} has fields {sorted(fields)}, expected "
                             f"{sorted(f.name for f in dtype.fields)}")  # fmt: skip
        children = [_read(fields[f.name], f.dtype, rows, f"{where}.{f.name}") for f in dtype.fields]
        series = pl.DataFrame(children).to_struct(name) if rows else pl.Series(name, [], dtype=dtype)
    elif isinstance(dtype, pl.List):
        if which != "lists":
            raise ValueError(f"column {where} is a list, sent as {which}")
        offsets = np.asarray(column.lists.offsets, dtype=np.int64)
        if offsets.size != rows + 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValueError(f"list column {where} has bad offsets")
        items = _read(column.lists.items, dtype.inner, int(offsets[-1]), f"{where}[]")
        series = _lists(name, items, offsets, rows, dtype)
    else:
        oneof, np_type = _SCALARS[type(dtype)]
        if which != oneof:
            raise ValueError(f"column {where} holds {oneof}, sent as {which}")
        fixed = _FIXED_WIDTH.get(oneof)
        array = _unpacked_values(getattr(column, oneof), fixed, rows) if fixed is not None and rows else None
        if array is not None:
            series = pl.Series(name, array, dtype=dtype)
        else:
            values = getattr(column, oneof).values
            if len(values) != rows:
                raise ValueError(f"column {where} has {len(values)} entries for {rows} rows")
            series = pl.Series(name, np.asarray(values, dtype=np_type) if np_type is not None else list(values), dtype=dtype)
    if len(column.valid):
        if len(column.valid) != rows:
            raise ValueError(f"column {where} has {len(column.valid)} validity entries for {rows} rows")
        series = series.zip_with(pl.Series(list(column.valid), dtype=pl.Boolean), pl.Series([None] * rows, dtype=dtype))
    return series.alias(name)


def _lists(name: str, items: pl.Series, offsets: np.ndarray, rows: int, dtype: pl.DataType) -> pl.Series:
    """Row i = items[offsets[i]:offsets[i + 1]], sliced by polars (a Python list per row is ~20x slower)."""
    if not rows:
        return pl.Series(name, [], dtype=dtype)
    bounds = pl.DataFrame({"offset": offsets[:-1], "length": np.diff(offsets)})
    whole = pl.lit(items.implode(), dtype=dtype)
    return bounds.select(whole.list.slice(pl.col("offset"), pl.col("length")).alias(name)).to_series()


def to_event_batch(kind: Kind, frame: pl.DataFrame) -> pb.EventBatch:
    """A frame of `kind` as one EventBatch part (no watermark)."""
    out = pb.EventBatch(kind=kind.number, rows=frame.height)
    for series in frame.get_columns():
        _write(out.columns.add(), series)
    return out


def to_frame(message: pb.EventBatch) -> pl.DataFrame:
    """The frame an EventBatch part holds; ValueError (saying what is wrong) if it is not a valid one."""
    kind = KIND_BY_NUMBER.get(message.kind)
    if kind is None:
        raise ValueError(f"unknown event kind {message.kind}")
    rows = message.rows
    if rows < 0:
        raise ValueError(f"negative row count {rows}")
    schema = dict(kind.schema)
    names = [c.name for c in message.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{kind.name} batch repeats a column")
    extra = [n for n in names if n not in schema]
    if kind.name == "feature_vector":  # one double column per feature, after the fixed ones
        schema.update(dict.fromkeys(extra, pl.Float64()))
    elif extra:
        raise ValueError(f"{kind.name} batch has columns its kind does not: {extra}")
    missing = [n for n in schema if n not in names]
    if missing:
        raise ValueError(f"{kind.name} batch lacks columns {missing}")
    by_name = {c.name: c for c in message.columns}
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame([_read(by_name[n], dtype, rows, f"{kind.name}.{n}") for n, dtype in schema.items()])


def _row_budget(kind: Kind, frame: pl.DataFrame, budget_bytes: int) -> int:
    # From the schema alone, so that the same batch always splits the same way (re-published parts keep
    # their ids, and the server drops them as duplicates); a part that is still too large is halved.
    key = (kind.name, tuple(frame.columns))
    per_row = _BYTES_PER_ROW.get(key)
    if per_row is None:
        # Comparing (and hashing) polars types costs microseconds each: worked out once per kind and column set,
        # whose types the kind's schema fixes.
        per_row = sum(64 if dtype == pl.Utf8 or dtype == pl.Binary else (256 if dtype.is_nested() else 10)
                      for dtype in frame.schema.values())  # fmt: skip
        if len(_BYTES_PER_ROW) < 1024:
            _BYTES_PER_ROW[key] = per_row
    return max(1, budget_bytes // max(1, per_row))


_BYTES_PER_ROW: dict[tuple[str, tuple[str, ...]], int] = {}


def parts(kind: Kind, frame: pl.DataFrame, budget_bytes: int) -> Iterator[bytes]:
    """The batch's EventBatch parts, serialized, each (but a single-row one) at most `budget_bytes`; the
    caller sets the watermark on the last (`with_watermark`)."""
    step = _row_budget(kind, frame, budget_bytes)
    for start in range(0, max(frame.height, 1), step):
        yield from _fitting(kind, frame.slice(start, step), budget_bytes)


def _fitting(kind: Kind, frame: pl.DataFrame, budget_bytes: int) -> Iterator[bytes]:
    data = to_event_batch(kind, frame).SerializeToString()
    if len(data) <= budget_bytes or frame.height <= 1:
        yield data
        return
    half = frame.height // 2
    yield from _fitting(kind, frame.slice(0, half), budget_bytes)
    yield from _fitting(kind, frame.slice(half), budget_bytes)


def with_watermark(part: bytes, index: int, watermark: pb.Watermark | None) -> bytes:
    """A serialized part with its index (and, on the last part, the watermark) added: appending fields to
    serialized protobuf is the same as setting them, without parsing the columns again."""
    extra = pb.EventBatch(part=index)
    if watermark is not None:
        extra.watermark.CopyFrom(watermark)
    return part + extra.SerializeToString()

