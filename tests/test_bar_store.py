"""The bar store: Parquet by symbol and day, merged and de-duplicated, read back sorted."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from utp.storage.bars import BackfillCheckpoint, BarStore, decode_symbol, encode_symbol
from utp.storage.datasets import BAR_COLUMNS, DAY_NS, dataset, synthetic_bars


def _two_symbols() -> pl.DataFrame:
    # Three sessions of minute bars for two symbols, one of them with a dot like BRK.B.
    return pl.concat([synthetic_bars(3 * 390, symbol="AAPL"), synthetic_bars(3 * 390, seed=11, symbol="BRK.B")])


def test_round_trip_returns_every_bar_sorted_by_time_then_symbol(tmp_path: Path) -> None:
    bars = _two_symbols()
    store = BarStore(tmp_path)
    assert store.write(bars) == bars.height
    back = store.read()
    assert back.columns == list(BAR_COLUMNS)
    assert back.equals(bars.sort(["event_time_ns", "symbol"]))
    assert store.symbols() == ["AAPL", "BRK.B"]


def test_partitions_by_symbol_and_utc_day(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(_two_symbols())
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    # synthetic_bars starts on Monday 2000-01-03; three sessions are three weekdays.
    days = ["2000-01-03", "2000-01-04", "2000-01-05"]
    assert files == [f"AAPL/{d}.parquet" for d in days] + [f"BRK.B/{d}.parquet" for d in days]
    one_day = pl.read_parquet(tmp_path / "AAPL" / "2000-01-04.parquet")
    assert one_day.height == 390
    assert (one_day["event_time_ns"] // DAY_NS).n_unique() == 1
    assert one_day["event_time_ns"].is_sorted()


def test_overlapping_write_merges_and_the_newest_write_wins(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = synthetic_bars(2 * 390, symbol="MSFT")
    store.write(bars.head(500))
    # Rows 400..779: 100 overlap the first write, with changed closes that must replace the stored ones.
    second = bars.slice(400).with_columns(pl.col("close") + 1.0)
    assert store.write(second) == second.height
    back = store.read(["MSFT"])
    assert back.height == bars.height
    assert back["event_time_ns"].is_sorted() and back["event_time_ns"].n_unique() == bars.height
    expected = pl.concat([bars.head(400), second])
    assert back.equals(expected)


def test_duplicates_inside_one_write_keep_the_last(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = synthetic_bars(10, symbol="X")
    twice = pl.concat([bars, bars.with_columns(pl.col("open") * 2)])
    assert store.write(twice) == 10
    assert store.read()["open"].to_list() == (bars["open"] * 2).to_list()


def test_read_opens_only_the_asked_symbols_and_days(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = _two_symbols()
    store.write(bars)
    day = (date(2000, 1, 4) - date(1970, 1, 1)).days * DAY_NS
    start, end = day + 15 * 3600 * 10**9, day + DAY_NS
    back = store.read(["BRK.B"], start_ns=start, end_ns=end)
    in_range = pl.col("event_time_ns").is_between(start, end, closed="left")
    expected = bars.filter((pl.col("symbol") == "BRK.B") & in_range)
    assert back.height > 0 and back.equals(expected)
    assert store._files(["BRK.B"], start, end) == [tmp_path / "BRK.B" / "2000-01-04.parquet"]
    assert store.read(["NOPE"]).is_empty() and store.read(["NOPE"]).columns == list(BAR_COLUMNS)


def test_real_daily_bars_and_coverage(tmp_path: Path) -> None:
    goog = dataset("goog").bars(start=date(2010, 1, 1), end=date(2010, 3, 31))
    store = BarStore(tmp_path)
    store.write(goog)
    coverage = store.coverage()
    assert coverage.to_dicts() == [{
        "symbol": "GOOG", "first_ns": goog["event_time_ns"].min(), "last_ns": goog["event_time_ns"].max(),
        "days": goog.height, "rows": goog.height,
    }]  # fmt: skip
    assert store.read().equals(goog)


@pytest.mark.parametrize("symbol", ["BRK.B", "BRK/B", "brk.b", "../etc", ".hidden", "_checkpoints", "ÄX", "A B"])
def test_odd_symbols_get_safe_folders_and_round_trip(tmp_path: Path, symbol: str) -> None:
    name = encode_symbol(symbol)
    assert decode_symbol(name) == symbol
    assert "/" not in name and not name.startswith((".", "_")) and name == name.upper()
    store = BarStore(tmp_path)
    store.write(synthetic_bars(3, symbol=symbol))
    assert [p.parent.name for p in tmp_path.rglob("*.parquet")] == [name]
    assert all(tmp_path in p.parents for p in tmp_path.rglob("*"))
    assert store.symbols() == [symbol]
    assert store.read([symbol])["symbol"].to_list() == [symbol] * 3


def test_upper_and_lower_case_symbols_do_not_share_a_folder(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(pl.concat([synthetic_bars(2, symbol="ab"), synthetic_bars(2, symbol="AB")]))
    assert store.symbols() == ["AB", "ab"]
    assert store.read(["ab"]).height == 2


@pytest.mark.parametrize(
    ("change", "column"),
    [
        (lambda f: f.with_columns(pl.col("volume").cast(pl.Int64)), "volume"),
        (lambda f: f.with_columns(pl.col("event_time_ns").cast(pl.Datetime("ns"))), "event_time_ns"),
        (lambda f: f.drop("high"), "high"),
        (lambda f: f.with_columns(pl.lit(1).alias("trades")), "trades"),
        (lambda f: f.with_columns(pl.lit(None, pl.String).alias("symbol")), "symbol"),
    ],
)
def test_bad_columns_are_refused_naming_the_column(tmp_path: Path, change, column: str) -> None:
    store = BarStore(tmp_path)
    with pytest.raises(ValueError, match=repr(column)):
        store.write(change(synthetic_bars(5)))
    assert not any(tmp_path.rglob("*.parquet"))


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(synthetic_bars(400))
    store.write(synthetic_bars(400))
    assert [p.name for p in tmp_path.rglob(".*")] == []


def test_checkpoint_records_progress_per_symbol_atomically(tmp_path: Path) -> None:
    job = ("alpaca", ["MSFT", "AAPL"], date(2024, 1, 2), date(2024, 1, 31), "1Min")
    checkpoint = BackfillCheckpoint(tmp_path, *job)
    assert not checkpoint.exists() and checkpoint.done_through("AAPL") is None
    checkpoint.mark_done("AAPL", date(2024, 1, 7), 1200)
    checkpoint.mark_done("AAPL", date(2024, 1, 12), 1500)
    assert checkpoint.path.parent == tmp_path / "_checkpoints"
    # The same job, symbols in another order, reads the same file.
    again = BackfillCheckpoint(tmp_path, "alpaca", ["AAPL", "MSFT"], date(2024, 1, 2), date(2024, 1, 31), "1Min")
    assert again.path == checkpoint.path
    assert again.done_through("AAPL") == date(2024, 1, 12) and again.rows("AAPL") == 2700
    assert again.done_through("MSFT") is None and not again.complete
    # Another timeframe is another job.
    other = BackfillCheckpoint(tmp_path, "alpaca", ["AAPL", "MSFT"], date(2024, 1, 2), date(2024, 1, 31), "5Min")
    assert other.path != checkpoint.path
    again.mark_done("MSFT", date(2024, 1, 31), 10)
    again.mark_done("AAPL", date(2024, 1, 31), 10)
    assert again.complete
    with pytest.raises(ValueError, match="TSLA"):
        again.mark_done("TSLA", date(2024, 1, 31), 1)
    assert [p.name for p in (tmp_path / "_checkpoints").iterdir()] == [checkpoint.path.name]
    # The store never lists its checkpoint folder as a symbol.
    assert BarStore(tmp_path).symbols() == []


def test_a_damaged_checkpoint_says_how_to_start_over(tmp_path: Path) -> None:
    checkpoint = BackfillCheckpoint(tmp_path, "polygon", ["X"], date(2024, 1, 2), date(2024, 1, 3), "1Day")
    checkpoint.path.parent.mkdir(parents=True)
    checkpoint.path.write_text("{not json")
    with pytest.raises(ValueError, match="remove it"):
        BackfillCheckpoint(tmp_path, "polygon", ["X"], date(2024, 1, 2), date(2024, 1, 3), "1Day")
