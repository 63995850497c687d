"""The packaged data sets are read from their packages once per package version and kept as parquet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from utp.storage import datasets
from utp.storage.datasets import _from_ohlcv_pandas, dataset, load_sp500_index


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty cache folder, and loaders that remember nothing in this process."""
    monkeypatch.setenv("UTP_CACHE_DIR", str(tmp_path))
    loaders = (datasets._load_goog, datasets._load_eurusd, datasets._load_sp500, datasets._load_sp500_index)
    for loader in loaders:
        loader.cache_clear()
    yield tmp_path / "datasets"
    for loader in loaders:
        loader.cache_clear()


def test_the_first_read_keeps_the_packages_data_unchanged_and_later_processes_read_the_copy(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backtesting.test import GOOG

    goog = dataset("goog").bars()
    assert goog.height == len(GOOG)
    [kept] = fresh.glob("goog-backtesting-*.parquet")
    assert datasets.pl.read_parquet(kept).equals(_from_ohlcv_pandas(GOOG, "GOOG"))
    index = load_sp500_index()
    assert [p.name.split("-")[0] for p in sorted(fresh.glob("*.parquet"))] == ["goog", "sp500_index"]

    # A later process: the package is not imported at all.
    for loader in (datasets._load_goog, datasets._load_sp500_index):
        loader.cache_clear()
    monkeypatch.setitem(sys.modules, "backtesting.test", None)
    monkeypatch.setitem(sys.modules, "skfolio.datasets", None)
    assert dataset("goog").bars().equals(goog)
    assert load_sp500_index().equals(index)


def test_an_unreadable_copy_is_read_from_the_package_again_and_an_unwritable_folder_keeps_nothing(
    fresh: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    expected = dataset("goog").bars()
    [kept] = fresh.glob("goog-backtesting-*.parquet")
    kept.write_bytes(b"not parquet")
    datasets._load_goog.cache_clear()
    assert dataset("goog").bars().equals(expected)
    assert datasets.pl.read_parquet(kept).height == expected.height  # written again, whole

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("UTP_CACHE_DIR", str(blocker))  # its "datasets" folder cannot be made
    datasets._load_goog.cache_clear()
    assert dataset("goog").bars().equals(expected)
