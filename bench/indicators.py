"""Indicator and feature benchmark: utp's numba kernels against TA-Lib, in one run.

    python bench/indicators.py [--bars 1000000] [--repeat 7]

For each indicator on `--bars` synthetic bars: the batch time (best of `--repeat`, after a first call whose
compile or cache-load time is reported apart) and TA-Lib's time on the same data in the same run, and
their ratio. Indicators TA-Lib does not have (Keltner, z-scores, realized volatilities, VWAP, spreads) are
timed against the TA-Lib calls that compute their closest equivalent and listed without a ratio in the
summary. Then the streaming form: ns per update through the public `update` (kernel and output arrays),
best of several calls over all rows spread over 500 symbols;
and one full feature-vector update (every feature) for a 500-symbol universe at one bar time.

The last line is one JSON object:
{"bars", "per_indicator": {name: {"utp_s", "talib_s", "ratio", "stream_ns"}}, "worst_ratio",
 "median_ratio", "streaming_ns_per_update", "universe500_update_us", "compile_s"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import polars as pl
import talib

from utp.core import indicators as ind
from utp.core.config import FeaturesConfig
from utp.core.features import Benchmark, StreamingFeatures
from utp.core.universe import Universe
from utp.storage.datasets import load_sp500_index, synthetic_bars


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_pair(ours: Callable[[], object], theirs: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best times of both, measured alternately so both see the same machine state (caches, allocator,
    other load) instead of one running in a quieter moment than the other."""
    a, b = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        ours()
        a.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs()
        b.append(time.perf_counter() - start)
    return min(a), min(b)


def _channel(upper: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return upper, lower, (upper + lower) / 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bars = synthetic_bars(args.bars)
    o, h, lo, c, v = (bars[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    t = bars["event_time_ns"].to_numpy()

    # name: (utp batch call, TA-Lib call or None, streaming class factory, streaming inputs)
    cases: dict[str, tuple[Callable[[], object], Callable[[], object] | None, Callable[[int], object], tuple]] = {
        "sma20": (lambda: ind.sma(c, 20), lambda: talib.SMA(c, 20), lambda n: ind.Sma(n, 20), (c,)),
        "ema20": (lambda: ind.ema(c, 20), lambda: talib.EMA(c, 20), lambda n: ind.Ema(n, 20), (c,)),
        "wma20": (lambda: ind.wma(c, 20), lambda: talib.WMA(c, 20), lambda n: ind.Wma(n, 20), (c,)),
        "dema20": (lambda: ind.dema(c, 20), lambda: talib.DEMA(c, 20), lambda n: ind.Dema(n, 20), (c,)),
        "tema20": (lambda: ind.tema(c, 20), lambda: talib.TEMA(c, 20), lambda n: ind.Tema(n, 20), (c,)),
        "rsi14": (lambda: ind.rsi(c, 14), lambda: talib.RSI(c, 14), lambda n: ind.Rsi(n, 14), (c,)),
        "macd": (lambda: ind.macd(c), lambda: talib.MACD(c), lambda n: ind.Macd(n), (c,)),
        "bbands20": (lambda: ind.bbands(c, 20), lambda: talib.BBANDS(c, 20), lambda n: ind.Bbands(n, 20), (c,)),
        "stddev20": (lambda: ind.stddev(c, 20), lambda: talib.STDDEV(c, 20), lambda n: ind.Stddev(n, 20), (c,)),
        "atr14": (lambda: ind.atr(h, lo, c, 14), lambda: talib.ATR(h, lo, c, 14), lambda n: ind.Atr(n, 14), (h, lo, c)),
        "natr14": (lambda: ind.natr(h, lo, c, 14), lambda: talib.NATR(h, lo, c, 14), lambda n: ind.Natr(n, 14), (h, lo, c)),
        "adx14": (lambda: ind.adx(h, lo, c, 14),
                  lambda: (talib.ADX(h, lo, c, 14), talib.PLUS_DI(h, lo, c, 14), talib.MINUS_DI(h, lo, c, 14)),
                  lambda n: ind.Adx(n, 14), (h, lo, c)),
        "stoch": (lambda: ind.stoch(h, lo, c, 14, 3, 3), lambda: talib.STOCH(h, lo, c, 14, 3, 0, 3, 0),
                  lambda n: ind.Stoch(n, 14, 3, 3), (h, lo, c)),
        "willr14": (lambda: ind.willr(h, lo, c, 14), lambda: talib.WILLR(h, lo, c, 14), lambda n: ind.Willr(n, 14), (h, lo, c)),
        "cci20": (lambda: ind.cci(h, lo, c, 20), lambda: talib.CCI(h, lo, c, 20), lambda n: ind.Cci(n, 20), (h, lo, c)),
        "mfi14": (lambda: ind.mfi(h, lo, c, v, 14), lambda: talib.MFI(h, lo, c, v, 14), lambda n: ind.Mfi(n, 14), (h, lo, c, v)),
        "obv": (lambda: ind.obv(c, v), lambda: talib.OBV(c, v), lambda n: ind.Obv(n), (c, v)),
        "roc10": (lambda: ind.roc(c, 10), lambda: talib.ROC(c, 10), lambda n: ind.Roc(n, 10), (c,)),
        "mom10": (lambda: ind.mom(c, 10), lambda: talib.MOM(c, 10), lambda n: ind.Mom(n, 10), (c,)),
        # Same three outputs on both sides: upper, lower and the midpoint.
        "donchian20": (lambda: ind.donchian(h, lo, 20), lambda: _channel(talib.MAX(h, 20), talib.MIN(lo, 20)),
                       lambda n: ind.Donchian(n, 20), (h, lo)),
        # No TA-Lib counterpart: timed for the record, not in the ratio summary.
        "keltner20": (lambda: ind.keltner(h, lo, c, 20, 10, 2.0), None, lambda n: ind.Keltner(n, 20, 10, 2.0), (h, lo, c)),
        "zscore20": (lambda: ind.zscore(c, 20), None, lambda n: ind.ZScore(n, 20), (c,)),
        "realized_vol20": (lambda: ind.realized_volatility(c, 20), None, lambda n: ind.RealizedVolatility(n, 20), (c,)),
        "parkinson20": (lambda: ind.parkinson_volatility(h, lo, 20), None, lambda n: ind.ParkinsonVolatility(n, 20), (h, lo)),
        "garman_klass20": (lambda: ind.garman_klass_volatility(o, h, lo, c, 20), None,
                           lambda n: ind.GarmanKlassVolatility(n, 20), (o, h, lo, c)),
        "session_vwap": (lambda: ind.session_vwap(t, h, lo, c, v), None, lambda n: ind.SessionVwap(n), (t, h, lo, c, v)),
        "volume_zscore20": (lambda: ind.volume_zscore(v, 20), None, lambda n: ind.VolumeZScore(n, 20), (v,)),
        "corwin_schultz20": (lambda: ind.corwin_schultz_spread(h, lo, 20), None,
                             lambda n: ind.CorwinSchultzSpread(n, 20), (h, lo)),
        "roll20": (lambda: ind.roll_spread(c, 20), None, lambda n: ind.RollSpread(n, 20), (c,)),
    }  # fmt: skip

    symbols = 500
    sid = np.tile(np.arange(symbols, dtype=np.int64), args.bars // symbols + 1)[: args.bars]
    per_indicator: dict[str, dict[str, float | None]] = {}
    compile_s = 0.0
    for name, (ours, theirs, make_stream, inputs) in cases.items():
        start = time.perf_counter()
        ours()  # compiles, or loads numba's on-disk cache
        compile_s += time.perf_counter() - start
        if theirs is not None:
            theirs()
            utp_s, talib_s = best_pair(ours, theirs, args.repeat)
        else:
            utp_s, talib_s = best(ours, args.repeat), None
        make_stream(symbols).update(sid[:symbols], *(x[:symbols] for x in inputs))  # compile the streaming kernel
        stream_s = []
        for _ in range(max(3, args.repeat // 2)):  # fresh state each time; one call over every row
            stream = make_stream(symbols)
            start = time.perf_counter()
            stream.update(sid, *inputs)
            stream_s.append(time.perf_counter() - start)
        stream_ns = min(stream_s) / args.bars * 1e9
        per_indicator[name] = {
            "utp_s": round(utp_s, 6),
            "talib_s": None if talib_s is None else round(talib_s, 6),
            "ratio": None if talib_s is None else round(utp_s / talib_s, 3),
            "stream_ns": round(stream_ns, 2),
        }
        ratio = per_indicator[name]["ratio"]
        print(f"{name:18s} utp {utp_s * 1e3:8.2f} ms   talib {talib_s * 1e3 if talib_s else float('nan'):8.2f} ms"
              f"   ratio {ratio if ratio is not None else '   -':>6}   stream {stream_ns:6.1f} ns/update", flush=True)  # fmt: skip

    # One full feature vector per symbol for a 500-symbol universe, at one bar time (live).
    universe = Universe([f"S{i:03d}" for i in range(symbols)])
    features = StreamingFeatures(FeaturesConfig(), universe, Benchmark.from_frame(load_sp500_index()))
    per_time = 390
    history = synthetic_bars(per_time * 3, seed=5)
    updates = []
    for step in range(history.height):
        row = history.row(step, named=True)
        scale = 1.0 + np.arange(symbols) / symbols
        batch = pl.DataFrame({
            "event_time_ns": [row["event_time_ns"]] * symbols, "symbol": universe.symbols,
            **{k: row[k] * scale for k in ("open", "high", "low", "close")}, "volume": [row["volume"]] * symbols,
        })  # fmt: skip
        start = time.perf_counter()
        features.update(batch)
        updates.append(time.perf_counter() - start)
    warm = updates[per_time:]  # past every warm-up
    universe_us = statistics.median(warm) * 1e6
    print(f"feature vector ({len(features.spec.names)} features) x {symbols} symbols: median {universe_us:.0f} us "
          f"per bar time (p90 {np.percentile(warm, 90) * 1e6:.0f} us)")  # fmt: skip

    ratios = [v["ratio"] for v in per_indicator.values() if v["ratio"] is not None]
    result = {
        "bars": args.bars,
        "per_indicator": per_indicator,
        "worst_ratio": max(ratios),
        "median_ratio": statistics.median(ratios),
        "streaming_ns_per_update": round(max(v["stream_ns"] for v in per_indicator.values()), 2),
        "universe500_update_us": round(universe_us, 1),
        "compile_s": round(compile_s, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
