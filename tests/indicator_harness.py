"""Shared checks for indicator kernels: agreement with TA-Lib and streaming = batch.

Every indicator test goes through these two functions, on the real GOOG bars and on a million synthetic
bars (`storage.datasets.synthetic_bars`), so all indicators are held to the same bar:

* `assert_matches_reference(ours, theirs)`: NaN exactly where the reference has NaN (the same warm-up),
  and elsewhere |ours - ref| <= 1e-9 * max(|ref|, mean |ref|) — relative, except near zero crossings
  where a relative error is meaningless, so it is relative to the series' typical magnitude there.
* `assert_streaming_equals_batch(...)`: the streaming class, fed three symbols interleaved row by row
  and cut into random chunks, reproduces the batch function for each symbol **bit for bit**.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

from utp.storage.datasets import dataset, synthetic_bars

RTOL = 1e-9
OHLCV = ("open", "high", "low", "close", "volume")


@cache
def goog_bars() -> dict[str, np.ndarray]:
    frame = dataset("goog").bars()
    return {c: frame[c].to_numpy() for c in (*OHLCV, "event_time_ns")}


@cache
def synthetic(n: int = 1_000_000) -> dict[str, np.ndarray]:
    frame = synthetic_bars(n)
    return {c: frame[c].to_numpy() for c in (*OHLCV, "event_time_ns")}


def _as_tuple(x: object) -> tuple[np.ndarray, ...]:
    return tuple(x) if isinstance(x, tuple) else (x,)  # NamedTuples are tuples


def assert_matches_reference(ours: object, theirs: object, rtol: float = RTOL, what: str = "") -> None:
    for i, (a, b) in enumerate(zip(_as_tuple(ours), _as_tuple(theirs), strict=True)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        label = f"{what} output {i}"
        assert a.shape == b.shape, f"{label}: shape {a.shape} != {b.shape}"
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if not np.array_equal(nan_a, nan_b):
            first = int(np.argmax(nan_a != nan_b))
            raise AssertionError(f"{label}: NaN differs first at index {first}: ours {a[first]}, reference {b[first]}")
        valid = ~nan_b
        if not valid.any():
            continue
        scale = np.maximum(np.abs(b[valid]), np.mean(np.abs(b[valid])))
        err = np.abs(a[valid] - b[valid]) / scale
        worst = int(np.argmax(err))
        assert err[worst] <= rtol, (
            f"{label}: relative error {err[worst]:.3e} > {rtol:.0e} at valid index {worst} "
            f"(ours {a[valid][worst]!r}, reference {b[valid][worst]!r})"
        )


def interleave(inputs: dict[str, np.ndarray], n_rows: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Three symbols' worth of rows, interleaved as a live feed delivers them: symbol 0 gets the inputs,
    symbol 1 the inputs scaled by 1.5 (prices and volumes alike), symbol 2 the inputs reversed in time."""
    n_rows = min(n_rows, *(len(v) for v in inputs.values()))
    first = {k: np.ascontiguousarray(v[:n_rows]) for k, v in inputs.items()}
    variants = [first, {k: v * 1.5 for k, v in first.items()}, {k: v[::-1].copy() for k, v in first.items()}]
    sid = np.tile(np.arange(3, dtype=np.int64), n_rows)
    merged = {k: np.stack([variant[k] for variant in variants], axis=1).reshape(-1) for k in first}
    return sid, merged


def assert_streaming_equals_batch(
    make_stream: Callable[[int], object],
    batch: Callable[..., object],
    inputs: dict[str, np.ndarray],
    *,
    n_rows: int = 3000,
    seed: int = 11,
    time_key: str | None = None,
) -> None:
    """`make_stream(n_symbols)` builds the streaming indicator; `update(sid, *inputs.values())` must return
    the same arrays (or NamedTuple of arrays) as `batch(*inputs.values())` for each symbol, bit for bit.

    `time_key` names an input that is a timestamp (not scaled, not reversed), for session indicators.
    """
    keys = list(inputs)
    n_rows = min(n_rows, *(len(v) for v in inputs.values()))
    sid, merged = interleave({k: v for k, v in inputs.items() if k != time_key}, n_rows)
    if time_key is not None:
        merged[time_key] = np.repeat(np.ascontiguousarray(inputs[time_key][:n_rows]), 3)
    stream = make_stream(3)
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, sid.size), size=97, replace=False))
    pieces = [
        _as_tuple(stream.update(s, *(merged[k][lo:hi] for k in keys)))  # type: ignore[attr-defined]
        for s, lo, hi in zip(np.split(sid, cuts), np.r_[0, cuts], np.r_[cuts, sid.size], strict=True)
    ]
    streamed = [np.concatenate(parts) for parts in zip(*pieces, strict=True)]
    for symbol in range(3):
        rows = sid == symbol
        own = {k: merged[k][rows] for k in keys}
        expected = _as_tuple(batch(*(own[k] for k in keys)))
        for i, (got, want) in enumerate(zip((s[rows] for s in streamed), expected, strict=True)):
            if not np.array_equal(got, want, equal_nan=True):
                diff = np.flatnonzero(~((got == want) | (np.isnan(got) & np.isnan(want))))
                raise AssertionError(
                    f"symbol {symbol}, output {i}: streaming differs from batch first at row {diff[0]} "
                    f"({got[diff[0]]!r} != {want[diff[0]]!r}), {diff.size} rows differ"
                )
