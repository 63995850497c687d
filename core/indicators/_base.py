"""Conventions shared by every indicator of the platform.

One definition, two forms. Each indicator is written once as a *step*: a numba function, inlined into
its callers, that advances one symbol's state by one bar (`_xyz_step(inputs, state..., params) ->
(value, ready, state...)`). Two kernels call that same step:

* the **batch** kernel (`_xyz_batch`) runs it over one whole series with the state in local variables,
  for research and benchmarks; its wrapper masks the warm-up (TA-Lib's lookback) with NaN, as TA-Lib;
* the **streaming** kernel (`_xyz_stream`) runs it over rows `(symbol index, inputs)` of many symbols
  in time order, loading and storing each symbol's state in arrays indexed by symbol. A live batch (one
  row per symbol) or a backtest batch (thousands of rows) is one call: 500 symbols cost one kernel call,
  not 500 Python calls. It writes the step's value (also before readiness, as Lean's indicators do) and
  a ready flag.

Because both forms execute the same step in the same order, they agree bit for bit; tests check both
against TA-Lib (1e-9 relative after the warm-up) on real GOOG bars and on a million synthetic bars.

Public API per indicator: a function `xyz(series..., params)` (batch) and a class `Xyz(n_symbols,
params)` whose `update(sid, series...)` returns the same values as the function would for those rows
(NaN while warming up) and whose `update_current(sid, series...)` returns `IndicatorUpdate(value, ready)`
with the values before readiness too (Lean's alpha models act on them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utp.core.kernels import writable

#: Flags of every indicator kernel: compiled once and cached on disk; fused multiply-add allowed (TA-Lib's
#: C build contracts too, so where both do, results are equal to the bit, and twice as fast on serial
#: chains like the EMA) and nothing else relaxed: no reassociation, so results stay deterministic.
KERNEL = {"cache": True, "fastmath": {"contract"}}
#: Also division by a loop-invariant as multiplication by its reciprocal: TA-Lib's RSI build does this
#: (equal to the bit with it, twice as fast); still deterministic.
KERNEL_RECIPROCAL = {"cache": True, "fastmath": {"contract", "arcp"}}
#: For kernels whose serial chain is a running sum: a fused multiply-add there lengthens the chain (its
#: latency exceeds an add's) and TA-Lib does not fuse them either.
KERNEL_NO_FMA = {"cache": True}
#: Flags of a step: inlined into each kernel, which then compiles it with its own flags.
STEP = {"inline": "always"}
NAN = np.nan


@dataclass(frozen=True, slots=True)
class IndicatorUpdate:
    value: np.ndarray  # float64 per row: the indicator's current value, also while warming up
    ready: np.ndarray  # bool per row

    def where_ready(self) -> np.ndarray:
        """Values with NaN where the indicator is still warming up."""
        return np.where(self.ready, self.value, np.nan)


def series(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Inputs of a batch call as contiguous, writable float64 arrays of one length (writable so that each
    kernel keeps one signature: see `utp.core.kernels`)."""
    out = tuple(writable(np.asarray(a), np.float64) for a in arrays)
    if any(a.ndim != 1 or a.shape != out[0].shape for a in out):
        raise ValueError("indicator inputs must be 1-d arrays of the same length")
    return out


def rows(n_symbols: int, sid: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Inputs of a streaming call: int64 symbol indices within the universe and float64 values."""
    sid = writable(np.asarray(sid), np.int64)
    values = series(*arrays) if arrays else ()
    if values and values[0].shape != sid.shape:
        raise ValueError("symbol indices and values differ in length")
    if sid.size and (sid.min() < 0 or sid.max() >= n_symbols):
        raise ValueError("symbol index outside the universe")
    return (sid, *values)


def check_period(name: str, period: int, minimum: int = 1) -> int:
    if int(period) != period or period < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {period!r}")
    return int(period)


def batch_output(n: int, outputs: int = 1) -> tuple[np.ndarray, ...]:
    return tuple(np.empty(n) for _ in range(outputs))


def mask_warmup(lookback: int, *arrays: np.ndarray) -> None:
    """NaN before the first value TA-Lib would output (batch kernels write every bar)."""
    for a in arrays:
        a[: min(lookback, a.shape[0])] = NAN
