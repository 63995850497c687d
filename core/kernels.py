"""Calling numba kernels from Python with one signature per kernel, whatever the arrays' origin.

Numba compiles a kernel once per signature, and an array's signature includes whether it is writable.
Arrays reach the kernels from polars: `Series.to_numpy()` is a read-only view of a single-chunk column
and a writable copy of a column that nulls or a `pl.concat` left in several chunks. Which one an engine
gets depends on how its input was cut into batches (a JetStream consumer joining a backlog, a runner
concatenating pending rows), so the same kernel met new signatures at run time. A new signature of the
execution kernel took 70 s to compile on the engine's event loop: a daemon that answered no status for
that long (`tests/test_chaos.py` in fresh clones, where the on-disk cache held only the demo's
signatures).

So every array a kernel gets from Python is writable: a read-only one is copied (inputs are columns of
one batch, so the copy is cheap next to the kernel) and a writable one, such as a kernel's state, is
passed as it is so that the kernel's writes land in it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np


def writable(array: np.ndarray, dtype: Any = None) -> np.ndarray:
    """`array` as a writable C-contiguous array of `dtype` (its own dtype if None): itself if it is one."""
    return np.require(array, dtype=dtype, requirements="CW")


def _as_called(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not value.flags.writeable:
        return value.copy()
    return value


def entry(kernel: Any) -> Callable[..., Any]:
    """A kernel called from Python: read-only array arguments are copied, so each kernel keeps one signature.

    Only for kernels that Python calls; a kernel that other kernels call stays a plain dispatcher (a wrapper
    cannot be called from compiled code). The dispatcher is kept as `.kernel` (its `.signatures` show what
    was compiled).
    """

    @functools.wraps(kernel.py_func)
    def call(*args: Any) -> Any:
        return kernel(*map(_as_called, args))

    call.kernel = kernel  # type: ignore[attr-defined]
    return call
