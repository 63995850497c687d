"""The operator's safety state, shared by the daemon (which persists it) and the engines (which obey it)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from utp.v1 import events_pb2 as pb


@dataclass(frozen=True, slots=True)
class ControlState:
    """Paper only, execution revoked and trading allowed, until the operator says otherwise."""

    halted: bool = False
    halt_reason: str = ""
    execution_approved: bool = False
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
        raise ValueError(f"unknown control action {action}")
