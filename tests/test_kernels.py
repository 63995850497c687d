"""Each kernel Python calls keeps one signature, whether its arrays arrive read-only or writable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from numba import njit

from utp.core.indicators import Ema
from utp.core.kernels import entry, writable


@entry
@njit
def _add_into(x, total):  # noqa: ANN001
    for i in range(x.shape[0]):
        total[0] += x[i]


def _read_only(values: list[float]) -> np.ndarray:
    array = np.array(values)
    array.flags.writeable = False
    return array


def test_an_entry_kernel_compiles_once_for_read_only_and_writable_arrays_and_writes_its_state() -> None:
    total = np.zeros(1)
    _add_into(_read_only([1.0, 2.0]), total)
    _add_into(np.array([3.0]), total)
    assert total[0] == 6.0  # the state array is passed as it is, not copied
    assert len(_add_into.kernel.signatures) == 1


def test_writable_returns_the_array_itself_when_it_already_is_one() -> None:
    array = np.arange(3, dtype=np.float64)
    assert writable(array) is array
    copied = writable(_read_only([1.0]))
    assert copied.flags.writeable and copied.tolist() == [1.0]
    assert writable(array[::2]).flags.c_contiguous
    assert writable(np.arange(3), np.float64).dtype == np.float64


def test_an_indicator_takes_read_only_and_writable_rows_with_one_kernel_signature() -> None:
    from utp.core.indicators.averages import _ema_stream

    ema = Ema(2, 3)
    before = len(_ema_stream.signatures)
    ema.update(_read_only([0, 1]), _read_only([10.0, 20.0]))
    ema.update(np.array([0, 1]), np.array([11.0, 21.0]))
    assert len(_ema_stream.signatures) <= max(before, 1)


# A backtest of the whole graph twice in one process: as it comes, then with every polars column handed out as a
# writable copy (what a frame in several chunks gives, as a JetStream consumer joining a backlog makes). Every
# kernel Python calls must have met one signature: a second one is compiled on the engine's event loop (70 s for
# the execution kernel), which held a daemon's status RPC past its deadline.
_BOTH_WAYS = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    import polars as pl
    from numba.core.registry import CPUDispatcher
    from utp.core.bus import InProcessBus
    from utp.core.clock import SimulatedClock
    from utp.core.config import load_config
    from utp.core.controls import ControlState
    from utp.daemon.session import Session

    def backtest():
        config = load_config(environ={}, overrides={
            "market_data.dataset": "goog", "market_data.end": "2006-12-31", "risk.max_position_pct": 0.95,
            "risk.universe.enabled": False, "market_data.batch_bar_times": 50})
        session = Session(config, bus=InProcessBus(), clock=SimulatedClock(),
                          controls=ControlState(execution_approved=True), collect_results=True)
        async def go():
            await session.start()
            await session.run()
        asyncio.run(go())
        return session.collector.result.summary.orders

    orders = [backtest()]
    plain = pl.Series.to_numpy
    pl.Series.to_numpy = lambda self, *a, **k: np.array(plain(self, *a, **k), copy=True)
    orders.append(backtest())
    kernels = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("utp."):
            continue
        for attr, value in vars(module).items():
            kernel = getattr(value, "kernel", None)
            if isinstance(kernel, CPUDispatcher):
                kernels[f"{name}.{attr}"] = len(kernel.signatures)
            elif isinstance(value, CPUDispatcher) and attr.endswith(("_stream", "_batch")):
                kernels[f"{name}.{attr}"] = len(value.signatures)
    print(json.dumps({"orders": orders, "kernels": kernels}))
    """
)


def test_every_kernel_of_the_graph_meets_one_signature_whatever_its_arrays_writability() -> None:
    done = subprocess.run([sys.executable, "-c", _BOTH_WAYS], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["orders"][0] == result["orders"][1] > 0
    called = {name: n for name, n in result["kernels"].items() if n}
    assert {"utp.engines.execution._execute", "utp.engines.risk._walk", "utp.engines.ensemble._vote"} <= set(called)
    assert {name: n for name, n in called.items() if n > 1} == {}
