"""The crash harness's short version (bench/chaos.py): a paper session over JetStream killed with SIGKILL three
times and nats-server restarted under it ends with the orders and positions of an uninterrupted run, each order
submitted once. The issue's 20-kill run is `python bench/chaos.py` (minutes; see the README)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_kills_and_a_nats_restart_lose_nothing_and_duplicate_nothing() -> None:
    # Paced at 50 bar times/s, the ~475 bar times take at least 9.5 s of the daemons' lives; four lives (three
    # kills and the NATS restart) of at most ~3 s each (its start, then 0.5-1.5 s) cannot finish the session
    # early, however fast the daemon is. Unpaced, a fast daemon finished it before the third kill.
    result = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--kills", "3", "--dataset", "goog",
                             "--end", "2006-06-30", "--replay-rate", "50", "--max-s", "1.5"],
                            capture_output=True, text=True, timeout=540)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["kills"] == 3 and outcome["nats_restarts"] == 1, outcome
    assert outcome["orders"] > 5, "too short a session to prove anything"
    assert outcome["lost"] == outcome["duplicated"] == outcome["unexpected"] == 0, outcome
    assert outcome["orders_equal"] and outcome["positions_equal"], outcome
