"""`utp engine NAME`: one engine of a JetStream session in a process of its own, killed with SIGKILL mid-run and
restarted: the session ends with the orders and positions of the whole graph in one process, none placed twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from utp.core.config import load_config
from utp.daemon.cli import main as utp
from utp.v1 import core_service_pb2 as api
from tests.test_graph import run
from tests.test_restart import SETTINGS, daemon_args, new_order_events, order_rows, position_rows, reference


#: Two and a half years of GOOG rather than test_restart's four.
SHORTER = {"market_data.end": "2006-12-31"}


def engine_process(name: str, session_id: str, nats_url: str, stream: str, data_dir: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "utp.daemon.cli", "engine", name, "--session", session_id, "--nats", nats_url,
           "--stream", stream, "--data-dir", str(data_dir)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("UTP_")}
    with log.open("a") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def risk_status(daemon):  # noqa: ANN001, ANN201
    return next((e for e in daemon.status().engines if e.engine == "risk"), None)


def test_an_engine_in_its_own_process_survives_sigkill_and_the_orders_do_not_change(
    nats_url, stream_names, daemon_factory, tmp_path  # noqa: ANN001
) -> None:
    stream, root = stream_names
    config = load_config(environ={}, overrides={**SETTINGS, **SHORTER, "market_data.batch_bar_times": 1000})
    expected_orders, expected_positions = reference(run(config))
    assert len(expected_orders) > 10

    daemon = daemon_factory(*daemon_args(nats_url, stream, root), "--set", f"market_data.end={SHORTER['market_data.end']}",
                            "--set", "bus.remote_engines=[risk]").start()  # fmt: skip
    session_id = daemon.status().session_id
    log = tmp_path / "risk.log"
    risk = engine_process("risk", session_id, nats_url, stream, tmp_path / "risk", log)
    try:
        # Killed a third of the way through the session, as the engine's own status (relayed by the daemon) says.
        first, last = 1092873600 * 10**9, 1167523200 * 10**9  # GOOG's first bar (2004-08-19), market_data.end
        deadline = time.monotonic() + 120
        while (status := risk_status(daemon)) is None or status.through_time_ns < first + (last - first) // 3:
            assert time.monotonic() < deadline, f"the engine made no progress:\n{log.read_text()[-3000:]}"
            assert risk.poll() is None, log.read_text()[-3000:]
            time.sleep(0.02)
        risk.send_signal(signal.SIGKILL)
        assert risk.wait(30) == -signal.SIGKILL
        assert "processed the whole session" not in log.read_text(), "killed too late to test anything"

        risk = engine_process("risk", session_id, nats_url, stream, tmp_path / "risk", log)
        assert risk.wait(240) == 0, log.read_text()[-3000:]
        assert "risk restored at through=" in log.read_text(), "the restarted engine should resume, not start over"
        assert "the session is over; everything is processed" in log.read_text()
        daemon.wait_for(lambda s: s.session_state == api.SESSION_STATE_COMPLETED, timeout=240, what="the session to complete")
        deadline = time.monotonic() + 60
        while order_rows(daemon.stub.ListOrders(api.ListOrdersRequest()).orders) != expected_orders:
            assert time.monotonic() < deadline, "the orders differ from the in-process run's"
            time.sleep(0.2)
        assert position_rows(daemon.stub.ListPositions(api.ListPositionsRequest()).positions) == expected_positions
        status = risk_status(daemon)
        assert status is not None, "the daemon shows the engine it does not run"
    finally:
        if risk.poll() is None:
            risk.kill()
    ids = [o.client_order_id for o in asyncio.run(new_order_events(nats_url, stream, root))]
    assert len(ids) == len(set(ids)) == len(expected_orders), "an order was submitted twice or lost"


def test_engine_refuses_an_engine_the_daemon_runs_and_an_unknown_session(nats_url, stream_names, daemon_factory,
                                                                          tmp_path, capsys) -> None:  # noqa: ANN001  # fmt: skip
    stream, root = stream_names
    daemon = daemon_factory(*daemon_args(nats_url, stream, root)).start()
    session_id = daemon.status().session_id
    args = ["engine", "risk", "--session", session_id, "--nats", nats_url, "--stream", stream, "--data-dir", str(tmp_path)]
    assert utp(args) == 2
    assert "runs risk in its daemon" in capsys.readouterr().err
    args[3] = "nope"
    assert utp(args) == 2
    assert "no session 'nope'" in capsys.readouterr().err
    assert utp(["core", "--set", "bus.remote_engines=[execution]"]) == 2
    assert "execution cannot run in a process of its own" in capsys.readouterr().err
