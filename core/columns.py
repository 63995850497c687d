"""Column operations for the few rows of a live step.

Most of polars' DataFrame and Series methods plan and run a lazy query, about 0.1-0.2 ms whatever the number
of rows. Live, an engine steps once per bar time on a handful of signals or decisions, and those fixed costs
were most of its time. These helpers do the same with numpy and Python lists up to `FEW_ROWS` rows and hand
larger columns (a backtest's batches) to polars; both paths give the same values and types.
"""

from __future__ import annotations

import numpy as np
import polars as pl

FEW_ROWS = 256


def column_of(name: str, dtype: pl.DataType, value: object, height: int) -> pl.Series:
    """A column of `dtype` from a Series, an array or list, a dict of a struct's fields, or one value for all
    `height` rows."""
    if isinstance(value, pl.Series):
        column = value.alias(name) if value.dtype == dtype else value.cast(dtype).alias(name)
    elif isinstance(value, list | np.ndarray):
        column = pl.Series(name, value, dtype)
    elif isinstance(value, dict) and isinstance(dtype, pl.Struct):
        fields = [column_of(f.name, f.dtype, value[f.name], height) for f in dtype.fields]
        column = pl.DataFrame(fields).to_struct(name)
    else:
        column = pl.Series(name, [value], dtype).new_from_index(0, height)
    if column.len() != height:
        raise ValueError(f"{name} has {column.len()} rows, not {height}")
    return column


def take(column: pl.Series, index: np.ndarray) -> pl.Series:
    """`column[index]` (any order, repeats allowed)."""
    if index.size > FEW_ROWS:
        return column.gather(index)
    if column.null_count() == 0 and column.dtype.is_numeric():
        return pl.Series(column.name, column.to_numpy()[index], column.dtype)
    values = column.to_list()
    return pl.Series(column.name, [values[i] for i in index.tolist()], column.dtype)


def take_rows(frame: pl.DataFrame, index: np.ndarray) -> pl.DataFrame:
    """`frame[index]`: the same frame when that is every row in order."""
    if index.size == frame.height and (index.size == 0 or (index[0] == 0 and np.all(np.diff(index) == 1))):
        return frame
    if index.size > FEW_ROWS:
        return frame[index]
    return pl.DataFrame([take(column, index) for column in frame.get_columns()])


def joined(column: pl.Series, separator: str) -> pl.Series:
    """Each list of strings joined by `separator` (null items skipped, a null list stays null)."""
    if column.len() > FEW_ROWS:
        return column.list.join(separator)
    return pl.Series(column.name, [None if v is None else separator.join(x for x in v if x is not None)
                                   for v in column.to_list()], pl.Utf8)  # fmt: skip


def flags(column: pl.Series) -> np.ndarray:
    """A boolean column as a numpy mask, null as False."""
    if column.null_count() == 0:
        return column.to_numpy()
    return np.fromiter((v is True for v in column.to_list()), np.bool_, column.len())


def formatted(name: str, template: str, *columns: pl.Series) -> pl.Series:
    """`template` ("{}/{}") filled in row by row from string or integer columns (both format alike in Python and
    polars, so an id does not depend on the path taken)."""
    for column in columns:
        if not (column.dtype == pl.Utf8 or column.dtype.is_integer()):
            raise TypeError(f"formatted ids take string or integer columns, not {column.dtype}")
    height = columns[0].len() if columns else 0
    if height > FEW_ROWS:
        frame = pl.DataFrame([c.alias(f"_{i}") for i, c in enumerate(columns)])
        return frame.select(pl.format(template, *(f"_{i}" for i in range(len(columns)))).alias(name)).to_series()
    values = [c.to_list() for c in columns]
    return pl.Series(name, [template.format(*row) for row in zip(*values, strict=True)], pl.Utf8)
