"""The per-order approval queue on its own: what is held, released, rejected, expired and superseded, and when."""

from __future__ import annotations

import pickle

import polars as pl

from utp.core.approvals import ApprovalQueue, Verdict
from utp.core.kinds import KINDS
from utp.v1 import events_pb2 as pb

MINUTE = 60 * 10**9
SCHEMA = {"intent_id": pl.Utf8, "correlation_id": pl.Utf8, "event_time_ns": pl.Int64, "symbol": pl.Utf8,
          "target": pl.Float64, "tif": pl.Int32, "reason": pl.Int32, "strategy": pl.Utf8, "band": pl.Float64,
          "reference_price": pl.Float64, "cid": pl.Utf8, "symbol_index": pl.Int64}  # fmt: skip


def decisions(*rows: tuple[str, str, int, float]) -> pl.DataFrame:
    return pl.DataFrame([{"intent_id": i, "correlation_id": f"{s}@{t}", "event_time_ns": t, "symbol": s, "target": target,
                          "tif": 0, "reason": pb.INTENT_REASON_ENTRY if target else pb.INTENT_REASON_SIGNAL_EXIT,
                          "strategy": "rsi", "band": 0.0, "reference_price": 100.0, "cid": f"cid-{i}",
                          "symbol_index": 0 if s == "AAPL" else 1} for i, s, t, target in rows], schema=SCHEMA)  # fmt: skip


def legs(*parents: str) -> pl.DataFrame:
    intents = [pb.OrderIntent(header=pb.EventHeader(event_id=f"{p}/{tag}", event_time_ns=0, symbol="AAPL"),
                              parent_intent_id=p, reason=pb.INTENT_REASON_TAKE_PROFIT) for p in parents
               for tag in ("tp", "sl")]  # fmt: skip
    return KINDS["order_intent"].to_frame(intents) if intents else KINDS["order_intent"].empty_frame()


def estimate(symbol_index: int, target: float) -> tuple[int, float]:
    return (pb.ORDER_SIDE_BUY if target > 0 else pb.ORDER_SIDE_SELL), abs(target) * 1000


def test_entries_wait_with_their_legs_and_closes_go_at_once() -> None:
    queue = ApprovalQueue(timeout_s=300)
    d = decisions(("a", "AAPL", MINUTE, 0.1), ("m", "MSFT", MINUTE, 0.0))
    go, rest, changed = queue.hold(d, legs("a"), MINUTE, estimate)
    assert go["intent_id"].to_list() == ["m"] and rest.height == 0
    [pending] = changed
    assert (pending.state, pending.intent_id, pending.client_order_id, pending.legs) == (pb.APPROVAL_STATE_PENDING, "a", "cid-a", 2)
    assert (pending.side, pending.estimated_quantity, pending.expires_time_ns) == (pb.ORDER_SIDE_BUY, 100.0, 6 * MINUTE)
    assert pending.header.event_id == "a/pending"
    assert list(queue.held) == ["a"]


def test_an_approved_order_goes_at_the_next_bar_time_with_its_legs() -> None:
    queue = ApprovalQueue(timeout_s=300)
    queue.hold(decisions(("a", "AAPL", MINUTE, 0.1)), legs("a"), MINUTE, estimate)
    queue.decide(Verdict("a", True, "alice", "fine"))
    released, released_legs, changed = queue.release(3 * MINUTE)
    assert [d["event_time_ns"].to_list() for d in released] == [[3 * MINUTE]]
    assert [leg.height for leg in released_legs] == [2] and released_legs[0]["event_time_ns"].to_list() == [3 * MINUTE] * 2
    assert [(c.state, c.actor, c.message, c.header.event_time_ns) for c in changed] == \
        [(pb.APPROVAL_STATE_APPROVED, "alice", "fine", 3 * MINUTE)]  # fmt: skip
    assert not queue.held
    queue.decide(Verdict("a", False, "bob", "too late"))  # decided already: nothing happens twice
    assert queue.release(4 * MINUTE) == ([], [], [])


def test_reject_all_expiry_and_supersession() -> None:
    queue = ApprovalQueue(timeout_s=120)
    queue.hold(decisions(("a", "AAPL", MINUTE, 0.1), ("m", "MSFT", MINUTE, -0.1)), legs(), MINUTE, estimate)
    queue.decide(Verdict("", False, "bob", "market is wild"))
    _, _, changed = queue.release(2 * MINUTE)
    assert sorted((c.intent_id, c.state) for c in changed) == [("a", pb.APPROVAL_STATE_REJECTED), ("m", pb.APPROVAL_STATE_REJECTED)]

    queue.hold(decisions(("b", "AAPL", 2 * MINUTE, 0.1)), legs(), 2 * MINUTE, estimate)
    assert queue.release(4 * MINUTE) == ([], [], [])  # at its expiry time it still waits: "more than" expires
    _, _, changed = queue.release(4 * MINUTE + 1)
    assert [(c.intent_id, c.state) for c in changed] == [("b", pb.APPROVAL_STATE_EXPIRED)]

    queue.hold(decisions(("c", "AAPL", 5 * MINUTE, 0.1)), legs(), 5 * MINUTE, estimate)
    _, _, changed = queue.hold(decisions(("d", "AAPL", 6 * MINUTE, 0.2)), legs(), 6 * MINUTE, estimate)
    assert [(c.intent_id, c.state) for c in changed] == [("c", pb.APPROVAL_STATE_SUPERSEDED), ("d", pb.APPROVAL_STATE_PENDING)]
    assert changed[0].message == "replaced by d"
    go, _, changed = queue.hold(decisions(("e", "AAPL", 7 * MINUTE, 0.0)), legs(), 7 * MINUTE, estimate)
    assert go["intent_id"].to_list() == ["e"] and [(c.intent_id, c.state) for c in changed] == [("d", pb.APPROVAL_STATE_SUPERSEDED)]


def test_the_queue_survives_a_checkpoint() -> None:
    queue = ApprovalQueue(timeout_s=300)
    queue.hold(decisions(("a", "AAPL", MINUTE, 0.1)), legs("a"), MINUTE, estimate)
    queue.decide(Verdict("a", True, "alice", ""))
    restored = pickle.loads(pickle.dumps(queue))
    released, released_legs, _ = restored.release(2 * MINUTE)
    assert released[0]["intent_id"].to_list() == ["a"] and released_legs[0].height == 2
