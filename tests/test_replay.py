"""`utp replay --session ID` rebuilds a paper session over JetStream from its log: the same decision log.

The session is steered while it runs (halt, resume, entries paused, a flatten, execution revoked and approved
again) and killed once, so the replay has to apply the commands where each engine applied them, and a
restarted session's re-published events count once."""

from __future__ import annotations

import asyncio
import signal
import time

import nats

from utp.core import wire
from utp.core.kinds import KINDS
from utp.core.subjects import Subjects
from utp.daemon.cli import main as utp
from utp.daemon.replay import DECISION_KINDS, ReplayError, list_sessions, read_session, replay
from utp.v1 import core_service_pb2 as api
from utp.v1 import events_pb2 as pb
from tests.test_restart import daemon_args as restart_daemon_args

import pytest

SETTINGS = {"market_data.end": "2005-12-31", "risk.max_position_pct": 0.95, "state.fsync": False,
            "approve_execution_on_start": True, "risk.universe.enabled": False}  # fmt: skip


def daemon_args(nats_url: str, stream: str, root: str) -> list[str]:
    # 20 bar times/s: ~18 s for the session, so that the restarted daemon (slow to start on a loaded machine)
    # still has bars to run when it is steered. At 40 it had finished at times before its first command.
    return restart_daemon_args(nats_url, stream, root, settings=SETTINGS, rate=20)


def _through(daemon) -> int:  # noqa: ANN001
    status = daemon.status()
    return max((e.through_time_ns for e in status.engines if e.engine == "execution"), default=0)


def _advance(daemon, seconds: float) -> None:  # noqa: ANN001
    """Let the session run on for a while (it must not have completed: the commands are to land mid-run)."""
    before = _through(daemon)
    deadline = time.monotonic() + 60
    time.sleep(seconds)
    while _through(daemon) <= before:
        assert time.monotonic() < deadline, "the session made no progress"
        time.sleep(0.05)
    assert daemon.status().session_state == api.SESSION_STATE_RUNNING, "the session ended too soon to steer it"


def test_a_steered_and_killed_session_replays_to_the_same_decision_log(nats_url, stream_names, daemon_factory, capsys) -> None:  # noqa: ANN001
    stream, root = stream_names
    first = daemon_factory(*daemon_args(nats_url, stream, root)).start()
    session_id = first.status().session_id
    assert session_id, "the daemon names its session"
    stub = first.stub
    _advance(first, 1.0)
    stub.Halt(api.HaltRequest(reason="replay test", actor="tester"))
    _advance(first, 0.5)
    stub.Resume(api.ResumeRequest(reason="replay test", actor="tester"))
    _advance(first, 0.5)
    stub.SetEntriesPaused(api.SetEntriesPausedRequest(paused=True, reason="replay test"))
    _advance(first, 0.5)
    stub.Flatten(api.FlattenRequest(reason="replay test"))
    stub.SetEntriesPaused(api.SetEntriesPausedRequest(paused=False, reason="replay test"))
    _advance(first, 0.5)
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL

    second = daemon_factory(*daemon_args(nats_url, stream, root), data_dir=first.data_dir).start()
    assert second.status().session_id == session_id, "a restart is the same session"
    second.stub.SetExecutionApproval(api.SetExecutionApprovalRequest(approved=False, reason="replay test"))
    _advance(second, 0.5)
    second.stub.SetExecutionApproval(api.SetExecutionApprovalRequest(approved=True, reason="replay test"))
    second.wait_for(lambda s: s.session_state == api.SESSION_STATE_COMPLETED, timeout=240, what="the session to complete")
    assert second.stub.ListOrders(api.ListOrdersRequest()).orders, "the session placed no order"

    recorded = asyncio.run(read_session(nats_url, session_id, stream))
    assert recorded.manifest.subject_root == root
    assert {"risk", "execution"} <= recorded.applied.keys(), "each engine that takes commands says where it applied them"
    report = asyncio.run(replay(recorded))
    summary = report.summary()
    assert report.commands_applied >= 2 * 8, summary  # 2 engines x (2 at each start + 6 given)
    for kind in ("alpha_signal", "scored_signal", "risk_decision", "order", "fill"):
        assert report.kinds[kind].recorded > 0, f"no {kind} recorded: {summary}"
    assert report.identical, {k: (v.missing[:3], v.extra[:3], v.different[:3], v.recorded, v.replayed) for k, v in report.kinds.items() if not v.identical}
    # The halt and the flatten changed what happened: without their records the replay would not be identical.
    assert any(c.action == pb.CONTROL_ACTION_FLATTEN for c in recorded.commands.values())

    # The command line says the same and exits 0; listing names the session.
    assert utp(["replay", "--nats", nats_url, "--stream", stream, "--session", session_id]) == 0
    out = capsys.readouterr().out
    assert "the replay reproduces the session's decision log" in out and '"identical": true' in out
    assert utp(["replay", "--nats", nats_url, "--stream", stream]) == 0
    assert session_id in capsys.readouterr().out

    # Where a command took effect matters: the halt moved to the start and the resume to the end halt the whole
    # replay, and the session did place orders (where the halt alone moved to the start changes nothing when
    # the session had decided nothing before its halt, which a slow start on a busy machine can cause).
    def ids_of(action: int) -> set[str]:
        return {i for i, c in recorded.commands.items() if c.action == action and c.actor == "tester"}

    halt_ids, resume_ids = ids_of(pb.CONTROL_ACTION_HALT), ids_of(pb.CONTROL_ACTION_RESUME)
    assert halt_ids and resume_ids
    moved = {engine: [(-(2**63) if set(ids) & halt_ids else (2**63 - 2 if set(ids) & resume_ids else through), ids)
                      for through, ids in records] for engine, records in recorded.applied.items()}  # fmt: skip
    recorded.applied = moved
    assert not asyncio.run(replay(recorded)).identical


def test_replay_says_what_differs_and_what_is_unknown(nats_url, stream_names, daemon_factory, capsys) -> None:  # noqa: ANN001
    stream, root = stream_names
    args = daemon_args(nats_url, stream, root)
    args[args.index("market_data.end=2005-12-31")] = "market_data.end=2005-03-31"
    daemon = daemon_factory(*args).start()
    session_id = daemon.status().session_id
    daemon.wait_for(lambda s: s.session_state == api.SESSION_STATE_COMPLETED, timeout=240, what="the session to complete")
    daemon.stop()

    # An order nobody placed, published into the session's log after the fact.
    async def forge() -> None:
        nc = await nats.connect(nats_url)
        forged = pb.Order(header=pb.EventHeader(event_id="order/forged", event_time_ns=1, symbol="GOOG"),
                          client_order_id="forged", quantity=1)  # fmt: skip
        part = wire.to_event_batch(KINDS["order"], KINDS["order"].to_frame([forged]))
        await nc.jetstream().publish(Subjects(root).batch("order"), part.SerializeToString(), stream=stream)
        await nc.close()

    asyncio.run(forge())
    assert utp(["replay", "--nats", nats_url, "--stream", stream, "--session", session_id]) == 1
    out = capsys.readouterr().out
    assert "order/forged" in out and "DIFFERS" in out
    report = asyncio.run(replay(asyncio.run(read_session(nats_url, session_id, stream))))
    assert report.kinds["order"].missing == ["order/forged"]
    assert all(report.kinds[k].identical for k in DECISION_KINDS if k != "order")

    with pytest.raises(ReplayError, match="no session 'nope'"):
        asyncio.run(read_session(nats_url, "nope", stream))
    assert utp(["replay", "--nats", nats_url, "--stream", stream, "--session", "nope"]) == 1
    assert "no session 'nope'" in capsys.readouterr().err
    assert session_id in [m.session_id for m in asyncio.run(list_sessions(nats_url, stream))]
