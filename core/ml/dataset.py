"""Datasets for the models: the live feature set over recorded bars, with forward-return labels.

Features come from `core.features.compute_features`, the same definition (and version hash) the feature
engine computes live, so a model trained here sees exactly the vectors it is served. The label of the row
of symbol s at bar t for horizon h is s's simple return from the close of t to the close of its h-th
next bar: close[t+h] / close[t] - 1 (NaN where the future is not in the data). Nothing about a row's
features depends on later bars; the label is the only look at the future, and the walk-forward splitter
purges training rows whose label window reaches into the test window.

Models see every feature but the raw close (`NOT_MODEL_INPUTS`). A row is *usable* when every model input is finite; a sequence model needs its symbol's last `lookback`
rows (this one included) usable. The inference engine applies the same rules to decide which bars get a
prediction, so training and serving agree on which rows exist.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from numba import njit

from utp.core.config import FeaturesConfig
from utp.core.features import Benchmark, FeatureSpec, compute_features
from utp.core.kernels import entry


#: Features the models do not see: the raw price level is not comparable across symbols or years (a model
#: would learn the years' price levels, and the drift monitor would rightly call every other year a shift).
NOT_MODEL_INPUTS = frozenset({"close"})


def label_column(horizon: int) -> str:
    return f"fwd_ret_{horizon}"


@dataclass(frozen=True)
class LabelledDataset:
    """Feature rows of one or many symbols with their forward-return labels.

    `frame`: event_time_ns, symbol, one Float64 column per feature, one `fwd_ret_<h>` per horizon and
    `label_end_ns` (the time of the bar the longest label ends on; NaN-free, the row's own time when the
    future is missing), sorted by (symbol, time). `times`: the distinct bar times, sorted.
    """

    name: str
    frame: pl.DataFrame
    feature_names: tuple[str, ...]
    horizons: tuple[int, ...]
    feature_set_version: str
    periods_per_year: float

    @property
    def times(self) -> np.ndarray:
        return np.unique(self.frame["event_time_ns"].to_numpy())

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.frame["symbol"].unique(maintain_order=True).to_list())

    @functools.cached_property
    def _matrix(self) -> np.ndarray:
        matrix = np.array(self.frame.select(self.feature_names).to_numpy(), np.float64)
        matrix.flags.writeable = False  # shared by every caller of features()
        return matrix

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float64 [rows, features] (all rows when None; read-only)."""
        return self._matrix if rows is None else self._matrix[rows]

    def labels(self, rows: np.ndarray | None = None) -> np.ndarray:
        """float64 [rows, horizons]."""
        frame = self.frame if rows is None else self.frame[rows]
        return frame.select(label_column(h) for h in self.horizons).to_numpy().astype(np.float64, copy=False)

    def rows_between(self, first_ns: int, last_ns: int) -> np.ndarray:
        """Indices of the rows with first_ns <= time <= last_ns."""
        t = self.frame["event_time_ns"].to_numpy()
        return np.flatnonzero((t >= first_ns) & (t <= last_ns))

    def usable(self, lookback: int = 1) -> np.ndarray:
        """Boolean per row: the row and its symbol's previous lookback - 1 rows have finite features."""
        x = self.features()
        finite = np.isfinite(x).all(axis=1)
        run = np.empty(finite.shape[0], np.int64)
        _finite_runs(self._symbol_codes(), finite, run)
        return run >= lookback

    def labelled(self) -> np.ndarray:
        """Boolean per row: every horizon's label is known."""
        return np.isfinite(self.labels()).all(axis=1)

    def windows(self, rows: np.ndarray, lookback: int) -> np.ndarray:
        """float32 [len(rows), lookback, features]: each row's symbol's last `lookback` rows, oldest first.

        The rows must be usable with this lookback (see `usable`); rows of one symbol are contiguous in
        `frame`, so a window is a slice of it.
        """
        x = self.features()
        codes = self._symbol_codes()
        rows = np.asarray(rows, np.int64)
        first = rows - (lookback - 1)
        if rows.size and (np.any(first < 0) or np.any(codes[np.maximum(first, 0)] != codes[rows])):
            raise ValueError(f"some rows have fewer than {lookback} rows of history")
        offsets = np.arange(lookback, dtype=np.int64)
        return x[first[:, None] + offsets[None, :]].astype(np.float32)

    def _symbol_codes(self) -> np.ndarray:
        return self.frame["symbol"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)


@entry
@njit(cache=True)
def _finite_runs(codes, finite, out):  # noqa: ANN001
    """Consecutive finite rows up to and including each row, per symbol (rows grouped by symbol)."""
    run = 0
    for i in range(codes.shape[0]):
        if i > 0 and codes[i] != codes[i - 1]:
            run = 0
        run = run + 1 if finite[i] else 0
        out[i] = run


def build_dataset(
    name: str,
    bars: pl.DataFrame,
    features: FeaturesConfig,
    horizons: Sequence[int],
    *,
    benchmark: Benchmark | None = None,
    periods_per_year: float = 252.0,
) -> LabelledDataset:
    """Features and labels for `bars` (sorted by time, any number of symbols)."""
    horizons = tuple(int(h) for h in horizons)
    if not horizons or any(h <= 0 for h in horizons) or len(set(horizons)) != len(horizons):
        raise ValueError(f"horizons must be distinct positive bar counts, got {list(horizons)}")
    spec = FeatureSpec(features)
    frame = compute_features(bars, features, benchmark=benchmark)
    frame = frame.with_columns(bars["close"].alias("_close")).sort(["symbol", "event_time_ns"], maintain_order=True)
    longest = max(horizons)
    labels = [
        (pl.col("_close").shift(-h).over("symbol") / pl.col("_close") - 1.0).fill_null(np.nan).alias(label_column(h))
        for h in horizons
    ]
    label_end = (
        pl.col("event_time_ns").shift(-longest).over("symbol").fill_null(pl.col("event_time_ns")).alias("label_end_ns")
    )
    frame = frame.with_columns(*labels, label_end).drop("_close")
    inputs = tuple(n for n in spec.names if n not in NOT_MODEL_INPUTS)
    return LabelledDataset(name, frame, inputs, horizons, spec.version, periods_per_year)
