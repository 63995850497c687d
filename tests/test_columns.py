"""The column helpers engines build their step outputs with: the Python path for a live step's few rows and the
polars path for a backtest's batches must give the same values and types, and a frame built column by column must
have its kind's schema exactly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from utp.core import columns
from utp.core.columns import FEW_ROWS, column_of, flags, formatted, joined, take, take_rows
from utp.core.kinds import KINDS


def _both_paths(monkeypatch: pytest.MonkeyPatch, build):  # noqa: ANN001, ANN202
    """`build()` with the Python path taken for every size, and with the polars path taken for every size."""
    monkeypatch.setattr(columns, "FEW_ROWS", 1 << 30)
    few = build()
    monkeypatch.setattr(columns, "FEW_ROWS", -1)
    many = build()
    return few, many


@pytest.mark.parametrize("n", [0, 1, 7, FEW_ROWS + 5])
def test_take_gives_what_polars_gather_gives_on_either_path(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    rng = np.random.default_rng(n)
    index = rng.integers(0, max(n, 1), n) if n else np.empty(0, np.int64)
    cases = [
        pl.Series("s", [f"x{i}" for i in range(max(n, 1))], pl.Utf8),
        pl.Series("f", rng.normal(size=max(n, 1))),
        pl.Series("i", np.arange(max(n, 1), dtype=np.int32)),
        pl.Series("nullable", [None if i % 3 == 0 else float(i) for i in range(max(n, 1))], pl.Float64),
        pl.Series("lists", [[f"a{i}", "b"] for i in range(max(n, 1))], pl.List(pl.Utf8)),
    ]
    for column in cases:
        expected = column.gather(index)
        few, many = _both_paths(monkeypatch, lambda c=column: take(c, index))
        for got in (few, many):
            assert got.dtype == column.dtype and got.name == column.name
            assert got.equals(expected, null_equal=True)


def test_take_rows_returns_the_frame_itself_for_every_row_in_order_and_gathers_otherwise() -> None:
    frame = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert take_rows(frame, np.arange(3)) is frame
    picked = take_rows(frame, np.array([2, 0]))
    assert picked.equals(frame[[2, 0]]) and picked.schema == frame.schema


def test_formatted_ids_are_the_same_on_both_paths_and_refuse_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    symbols = pl.Series("symbol", ["AAPL", "MSFT", "GOOG"])
    times = pl.Series("t", [1, 20, -3], pl.Int64)
    few, many = _both_paths(monkeypatch, lambda: formatted("id", "x/{}@{}", symbols, times))
    assert few.to_list() == many.to_list() == ["x/AAPL@1", "x/MSFT@20", "x/GOOG@-3"]
    assert few.dtype == many.dtype == pl.Utf8 and few.name == many.name == "id"
    with pytest.raises(TypeError, match="Float64"):
        formatted("id", "{}", pl.Series([1.5]))


def test_joined_skips_null_items_and_keeps_null_lists_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    lists = pl.Series("a", [["rsi", "ema_cross"], [], None, ["rsi", None]], pl.List(pl.Utf8))
    few, many = _both_paths(monkeypatch, lambda: joined(lists, "+"))
    assert few.to_list() == many.to_list() == lists.list.join("+").to_list() == ["rsi+ema_cross", "", None, "rsi"]


def test_flags_read_null_as_false() -> None:
    assert flags(pl.Series([True, None, False, True])).tolist() == [True, False, False, True]
    assert flags(pl.Series([True, False])).tolist() == [True, False]


def test_column_of_builds_structs_scalars_and_casts_and_checks_the_height() -> None:
    dtype = pl.Struct({"header": pl.Struct({"id": pl.Utf8, "t": pl.Int64}), "side": pl.Int32, "note": pl.Utf8})
    built = column_of("intent", dtype, {"header": {"id": ["a", "b"], "t": np.array([1, 2])}, "side": np.array([1, 2]),
                                        "note": ""}, 2)  # fmt: skip
    assert built.dtype == dtype
    assert built.to_list() == [{"header": {"id": "a", "t": 1}, "side": 1, "note": ""},
                               {"header": {"id": "b", "t": 2}, "side": 2, "note": ""}]  # fmt: skip
    assert column_of("x", pl.Float64, None, 3).to_list() == [None, None, None]
    assert column_of("x", pl.Int32, pl.Series("y", [1, 2], pl.Int64), 2).dtype == pl.Int32
    with pytest.raises(ValueError, match="has 2 rows, not 3"):
        column_of("x", pl.Int32, np.array([1, 2]), 3)


def test_a_kind_built_column_by_column_has_its_schema_and_conform_reorders_and_casts() -> None:
    kind = KINDS["portfolio_target"]
    built = kind.frame({
        "event_id": ["portfolio_target/A@1"], "correlation_id": pl.Series(["A@1"]), "event_time_ns": np.array([1]),
        "symbol": "A", "target_percent": np.array([0.1]), "reference_price": 10.0, "direction": 1, "confidence": None,
        "strategy": "rsi", "method": "fixed", "rebalance_band": 0.0,
    }, 1)  # fmt: skip
    assert built.schema == kind.schema
    shuffled = built.select(list(reversed(built.columns))).with_columns(pl.col("direction").cast(pl.Int64),
                                                                          pl.lit(1).alias("extra"))  # fmt: skip
    conformed = kind.conform(shuffled)
    assert conformed.schema == kind.schema and conformed.equals(built, null_equal=True)
    with pytest.raises(KeyError):
        kind.frame({"event_id": ["x"]}, 1)
