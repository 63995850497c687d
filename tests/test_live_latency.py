"""The load and soak harness's short version (bench/live_latency.py): the full engine graph over JetStream, as
fast as it goes and at a fixed rate, then a short soak; every decision of the in-process reference arrives once,
and the latencies and memory figures are printed. The issue's run is `python bench/live_latency.py` (500 symbols)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.conftest import REPO


def test_the_graph_over_jetstream_loses_and_duplicates_no_decision_and_reports_its_figures(nats_url: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "live_latency.py"), "--nats", nats_url, "--symbols", "20",
                             "--bar-times", "60", "--fixed-bar-times", "50", "--rate", "10", "--soak-minutes", "0.15"],
                            capture_output=True, text=True, timeout=540, env={**os.environ, "UTP_NATS_URL": nats_url})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["symbols"] == 20 and outcome["decisions"] > 0, outcome
    assert outcome["hot_state"] is True, outcome  # the engines commit to LMDB as the daemon's do
    assert outcome["lost"] == outcome["duplicated"] == 0, outcome
    assert outcome["bars_per_s"] > 0 and math.isfinite(outcome["p50_ms"]) and outcome["p50_ms"] <= outcome["p99_ms"], outcome
    # A decision is sent before it is acked.
    assert 0 < outcome["sent_p50_ms"] <= outcome["p50_ms"] and outcome["sent_p50_ms"] <= outcome["sent_p99_ms"], outcome
    assert outcome["end_rss_mb"] > 0 and outcome["soak_minutes"] > 0 and outcome["rss_by_minute_mb"] == [], outcome  # < 1 min


def test_the_engine_step_bench_times_every_engine_of_the_graph() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "engine_steps.py"), "--symbols", "20", "--bar-times", "30",
                             "--runs", "1"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    engines = outcome["engines"]
    assert set(engines) == {"market_data", "features", "alpha", "ensemble", "portfolio", "risk", "exit", "execution"}, engines
    assert all(e["ms_per_bar_time"] > 0 and e["median_ms"] > 0 for e in engines.values()), engines
    assert math.isclose(outcome["ms_per_bar_time"], sum(e["ms_per_bar_time"] for e in engines.values()), rel_tol=0.01), outcome
    assert outcome["bars_per_s"] > 0, outcome
