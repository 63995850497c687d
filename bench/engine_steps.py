"""Where a bar time goes: each engine's step, timed, for the graph of `bench/live_latency.py` on the in-process bus.

    python bench/live_latency.py        # the load figures over JetStream
    python bench/engine_steps.py        # the engines' own share of them: no wire, no server

500 symbols of one-minute bars (the same real GOOG bars as the load bench) run through every engine of a paper
session on the in-process bus and the simulated clock, `--runs` times; every engine's `on_step` (market data's
`produce`) is timed. The figure that bounds the load bench's throughput and latency is `ms_per_bar_time`: the
engines' total per 500-symbol bar time (the best run's). Last line, JSON: `{"symbols": 500, "ms_per_bar_time": ..,
"bars_per_s": .., "engines": {"features": {"ms_per_bar_time": .., "median_ms": ..}, ...}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from utp.core.bus import InProcessBus
from utp.core.clock import SimulatedClock
from utp.core.controls import ControlState
from utp.daemon.session import MarketData, Session

from live_latency import config, minute_bars  # bench/ is on the path when a script in it runs


def _timed(name: str, step: Callable[..., Any], spent: dict[str, list[float]]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            spent[name].append(time.perf_counter() - started)

    return timed


async def timed_session(market_data: MarketData) -> tuple[dict[str, list[float]], float]:
    """(seconds of each step, per engine; the session's wall time) for one run on the in-process bus."""
    session = Session(config(0.0), bus=InProcessBus(), clock=SimulatedClock(), market_data=market_data,
                      controls=ControlState(execution_approved=True))  # fmt: skip
    spent: dict[str, list[float]] = defaultdict(list)
    for runner in session.all_runners:
        engine = runner.engine
        method = "produce" if hasattr(engine, "produce") else "on_step"
        setattr(engine, method, _timed(engine.name, getattr(engine, method), spent))
    await session.start()
    started = time.monotonic()
    try:
        await session.run()
    finally:
        elapsed = time.monotonic() - started
        await session.stop()
    return spent, elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--bar-times", type=int, default=120)
    parser.add_argument("--runs", type=int, default=3, help="the best run is reported (this machine's speed varies)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(timed_session(minute_bars(args.symbols, 10)))  # kernels loaded, imports done
    data = minute_bars(args.symbols, args.bar_times)
    best: tuple[float, dict[str, list[float]], float] | None = None
    for run in range(args.runs):
        spent, elapsed = asyncio.run(timed_session(data))
        total_ms = sum(sum(v) for v in spent.values()) * 1000 / args.bar_times
        print(f"run {run + 1}: engines {total_ms:.2f} ms per bar time, session {elapsed * 1000 / args.bar_times:.2f} ms "
              f"per bar time", flush=True)  # fmt: skip
        if best is None or total_ms < best[0]:
            best = (total_ms, spent, elapsed)
    assert best is not None
    total_ms, spent, elapsed = best
    engines = {}
    for name, seconds in sorted(spent.items(), key=lambda kv: -sum(kv[1])):
        ms = np.array(seconds) * 1000
        engines[name] = {"ms_per_bar_time": round(float(ms.sum()) / args.bar_times, 3), "median_ms": round(float(np.median(ms)), 3)}
        print(f"  {name:12s} {engines[name]['ms_per_bar_time']:6.2f} ms per bar time (median step {engines[name]['median_ms']:.2f} ms)",
              flush=True)  # fmt: skip
    result = {"symbols": args.symbols, "ms_per_bar_time": round(total_ms, 3),
              "bars_per_s": round(data.bars.height / elapsed), "engines": engines}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
