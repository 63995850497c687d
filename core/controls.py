"""The operator's safety state, shared by the daemon (which persists it) and the engines (which obey it)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from utp.v1 import events_pb2 as pb


_ORDER_ACTIONS = frozenset({pb.CONTROL_ACTION_FLATTEN, pb.CONTROL_ACTION_CANCEL_ORDER, pb.CONTROL_ACTION_APPROVE_ORDER,
                            pb.CONTROL_ACTION_REJECT_ORDER})  # fmt: skip


@dataclass(frozen=True, slots=True)
class ControlState:
    """Paper only, execution revoked and trading allowed, until the operator says otherwise."""

    halted: bool = False
    halt_reason: str = ""
    execution_approved: bool = False
    #: The operator paused new entries (exits still go).
    entries_paused: bool = False
    #: ApprovalMode; 0 = as configured (execution.approval_mode).
    approval_mode: int = 0
    # Number of operator commands applied; commands carry their sequence so replays apply once.
    sequence: int = 0

    def apply(self, command: pb.ControlCommand) -> ControlState:
        """The state after `command`; unchanged for a command already applied (sequence not newer)."""
        if command.sequence and command.sequence <= self.sequence:
            return self
        sequence = command.sequence or self.sequence
        action = command.action
        if action == pb.CONTROL_ACTION_HALT:
            return replace(self, halted=True, halt_reason=command.reason or "halted by operator", sequence=sequence)
        if action == pb.CONTROL_ACTION_RESUME:
            return replace(self, halted=False, halt_reason="", sequence=sequence)
        if action == pb.CONTROL_ACTION_APPROVE_EXECUTION:
            return replace(self, execution_approved=True, sequence=sequence)
        if action == pb.CONTROL_ACTION_REVOKE_EXECUTION:
            return replace(self, execution_approved=False, sequence=sequence)
        if action == pb.CONTROL_ACTION_PAUSE_ENTRIES:
            return replace(self, entries_paused=True, sequence=sequence)
        if action == pb.CONTROL_ACTION_RESUME_ENTRIES:
            return replace(self, entries_paused=False, sequence=sequence)
        if action == pb.CONTROL_ACTION_SET_APPROVAL_MODE:
            if command.approval_mode not in (pb.APPROVAL_MODE_BLANKET, pb.APPROVAL_MODE_PER_ORDER):
                raise ValueError(f"unknown approval mode {command.approval_mode}")
            return replace(self, approval_mode=command.approval_mode, sequence=sequence)
        if action in _ORDER_ACTIONS:  # acts on orders, not on the flags (execution does the work)
            return replace(self, sequence=sequence)
        raise ValueError(f"unknown control action {action}")

    def per_order(self, configured: str) -> bool:
        """Whether orders wait for the operator one by one: the operator's choice, else the configuration's."""
        if self.approval_mode:
            return self.approval_mode == pb.APPROVAL_MODE_PER_ORDER
        return configured == "per_order"
