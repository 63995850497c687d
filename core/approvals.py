"""Per-order approval: orders risk approved wait for the operator, one by one.

In per-order mode (`execution.approval_mode: per_order`, or the operator's SET_APPROVAL_MODE) execution holds
every target that opens, adds to or turns a position (a target of 0, a close, goes at once: holding an exit
back would hold risk on), with its protective legs, and says so with an `order_approval` event (PENDING). The
operator's APPROVE_ORDER / REJECT_ORDER commands decide; an approved target is placed at the next bar time
as if it had just been decided, sized on the portfolio then. A target nobody decides within
`execution.approval_timeout_s` of bar time expires, and a newer target for the same symbol replaces a
pending one (SUPERSEDED): the operator never approves a stale order. Everything here is decided on bar time
and on commands that travel on the bus, so a replay of the session decides the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from utp.v1 import events_pb2 as pb

PENDING, APPROVED, REJECTED = pb.APPROVAL_STATE_PENDING, pb.APPROVAL_STATE_APPROVED, pb.APPROVAL_STATE_REJECTED
EXPIRED, SUPERSEDED = pb.APPROVAL_STATE_EXPIRED, pb.APPROVAL_STATE_SUPERSEDED
_STATE_WORD = {PENDING: "pending", APPROVED: "approved", REJECTED: "rejected", EXPIRED: "expired",
               SUPERSEDED: "superseded"}  # fmt: skip


@dataclass
class _Held:
    decision: pl.DataFrame  # one row of execution's decisions
    legs: pl.DataFrame  # its protective legs (order_intent rows)
    approval: pb.OrderApproval


@dataclass(frozen=True)
class Verdict:
    intent_id: str  # "" = every pending order
    approve: bool
    actor: str
    reason: str


class ApprovalQueue:
    """The held targets and the operator's verdicts not applied yet (both pickled with execution's state)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_ns = int(timeout_s * 1e9)
        self.held: dict[str, _Held] = {}
        self.verdicts: list[Verdict] = []

    def decide(self, verdict: Verdict) -> None:
        self.verdicts.append(verdict)

    def hold(
        self, decisions: pl.DataFrame, legs: pl.DataFrame, now_ns: int, estimate: Callable[[int, float], tuple[int, float]]
    ) -> tuple[pl.DataFrame, pl.DataFrame, list[pb.OrderApproval]]:
        """Take the targets that need the operator out of `decisions` (and their legs out of `legs`); returns
        what goes at once and the approvals that changed. `estimate(symbol index, target)` -> (side, shares)."""
        changed: list[pb.OrderApproval] = []
        if not decisions.height:
            return decisions, legs, changed
        needs = decisions["target"] != 0.0
        for row in decisions.filter(~needs).iter_rows(named=True):  # a close replaces a pending entry
            changed += self._supersede(row["symbol"], row["event_time_ns"], "a close of the position came first")
        if not needs.any():
            return decisions, legs, changed
        held = decisions.filter(needs)
        parents = legs["parent_intent_id"] if legs.height else pl.Series([], dtype=pl.Utf8)
        for k, row in enumerate(held.iter_rows(named=True)):
            changed += self._supersede(row["symbol"], row["event_time_ns"], f"replaced by {row['intent_id']}")
            own = legs.filter(parents == row["intent_id"]) if legs.height else legs
            side, quantity = estimate(int(row["symbol_index"]), float(row["target"]))
            approval = pb.OrderApproval(
                header=pb.EventHeader(event_id=f"{row['intent_id']}/pending", correlation_id=row["correlation_id"],
                                      event_time_ns=row["event_time_ns"], symbol=row["symbol"]),
                state=PENDING, intent_id=row["intent_id"], client_order_id=row["cid"], target_percent=row["target"],
                side=side, estimated_quantity=quantity, reference_price=row["reference_price"], reason=row["reason"],
                strategy=row["strategy"], legs=own.height, expires_time_ns=row["event_time_ns"] + self.timeout_ns,
            )  # fmt: skip
            self.held[row["intent_id"]] = _Held(held[k], own, approval)
            changed.append(approval)
        if legs.height:
            legs = legs.filter(~parents.is_in(held["intent_id"].to_list()))
        return decisions.filter(~needs), legs, changed

    def release(self, now_ns: int) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[pb.OrderApproval]]:
        """Apply the verdicts and expiries at bar time `now_ns`: the approved targets' decision rows and legs, stamped
        `now_ns` (they are placed now, on the portfolio now), and the approvals that changed."""
        decisions, legs, changed = [], [], []
        verdicts, self.verdicts = self.verdicts, []
        for verdict in verdicts:
            ids = [verdict.intent_id] if verdict.intent_id else list(self.held)
            for intent_id in ids:
                held = self.held.pop(intent_id, None)
                if held is None:
                    continue  # decided already, expired or replaced: the operator's verdict came too late
                state = APPROVED if verdict.approve else REJECTED
                changed.append(self._settle(held, state, now_ns, verdict.actor, verdict.reason))
                if verdict.approve:
                    decisions.append(held.decision.with_columns(pl.lit(now_ns, pl.Int64).alias("event_time_ns")))
                    legs.append(held.legs.with_columns(pl.lit(now_ns, pl.Int64).alias("event_time_ns")))
        for intent_id in [i for i, h in self.held.items() if h.approval.expires_time_ns < now_ns]:
            held = self.held.pop(intent_id)
            changed.append(self._settle(held, EXPIRED, now_ns, "", f"not decided within {self.timeout_ns / 1e9:g} s"))
        return decisions, legs, changed

    def drop_symbols(self, symbols: set[str] | None, now_ns: int, why: str) -> list[pb.OrderApproval]:
        """Pending orders of these symbols (all when None) end SUPERSEDED: a flatten came first."""
        gone = [i for i, h in self.held.items() if symbols is None or h.approval.header.symbol in symbols]
        return [self._settle(self.held.pop(i), SUPERSEDED, now_ns, "", why) for i in gone]

    def _supersede(self, symbol: str, now_ns: int, why: str) -> list[pb.OrderApproval]:
        return self.drop_symbols({symbol}, now_ns, why)

    @staticmethod
    def _settle(held: _Held, state: int, now_ns: int, actor: str, message: str) -> pb.OrderApproval:
        approval = pb.OrderApproval()
        approval.CopyFrom(held.approval)
        approval.header.event_id = f"{approval.intent_id}/{_STATE_WORD[state]}"
        approval.header.event_time_ns = now_ns
        approval.state, approval.actor, approval.message = state, actor, message
        return approval
