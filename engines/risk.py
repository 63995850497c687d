"""Risk: turns scored signals into sized order intents and checks every intent before execution.

Consumes: `scored_signal`, `order_intent` (exits), `position_snapshot`, `account_snapshot` (joined by bar
time, so each check sees the portfolio as of that bar), `control_command` (on arrival).
Produces: `risk_decision` (approved or rejected, with a reason code).

Portfolio construction (from a ScoredSignal): UP while flat or short -> buy up to `max_position_pct` of
equity (capped by cash); DOWN while long -> sell the position (and, with `allow_short`, go short by the
same size); FLAT or a signal in the direction already held -> nothing. An exit intent for a symbol wins
over an entry for it at the same bar.

Checks, in order (the first that fails is the reason): a sane intent; not halted; execution approved by
the operator; no short unless allowed; the position stays within `max_position_pct` of equity; the cash
covers a buy. Exits (reduce-only) skip the last two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from utp.core.config import RiskConfig
from utp.core.controls import ControlState
from utp.core.kinds import KINDS
from utp.core.runtime import Engine, EngineContext, Input, InputMode
from utp.v1 import events_pb2 as pb

_REASON_TEXT = {
    pb.RISK_REASON_APPROVED: "approved",
    pb.RISK_REASON_HALTED: "trading is halted",
    pb.RISK_REASON_EXECUTION_NOT_APPROVED: "execution is not approved by the operator",
    pb.RISK_REASON_MAX_POSITION: "position would exceed the maximum share of equity",
    pb.RISK_REASON_INSUFFICIENT_CASH: "not enough cash",
    pb.RISK_REASON_INVALID_INTENT: "invalid intent",
    pb.RISK_REASON_SHORT_NOT_ALLOWED: "would open a short position; shorting is off",
}
# Within one bar time: the portfolio first, then exits, then entries.
_PRIORITY = {"account_snapshot": 0, "position_snapshot": 0, "order_intent": 1, "scored_signal": 2}


@dataclass(slots=True)
class _Holding:
    quantity: float = 0.0
    pending: float = 0.0

    @property
    def effective(self) -> float:
        return self.quantity + self.pending


class RiskEngine(Engine):
    name = "risk"
    inputs = (
        Input("scored_signal"),
        Input("order_intent"),
        Input("position_snapshot"),
        Input("account_snapshot"),
        Input("control_command", InputMode.COMMAND),
    )
    outputs = ("risk_decision",)

    def __init__(self, config: RiskConfig, controls: ControlState) -> None:
        self.config = config
        self.controls = controls
        self.holdings: dict[str, _Holding] = {}
        self.equity = 0.0
        self.cash = 0.0

    def on_command(self, ctx: EngineContext, kind: str, frame: pl.DataFrame) -> None:
        for command in KINDS[kind].to_messages(frame):
            self.controls = self.controls.apply(command)  # type: ignore[arg-type]
            ctx.log.info("control %s -> %s", pb.ControlAction.Name(command.action), self.controls)  # type: ignore[attr-defined]

    def on_step(self, ctx: EngineContext, through_ns: int, frames: Mapping[str, pl.DataFrame]) -> None:
        events = []
        for kind, frame in frames.items():
            for index, message in enumerate(KINDS[kind].to_messages(frame)):
                events.append((message.header.event_time_ns, _PRIORITY[kind], index, kind, message))  # type: ignore[attr-defined]
        events.sort(key=lambda e: e[:3])
        decisions: list[pb.RiskDecision] = []
        exiting: set[tuple[int, str]] = set()
        for time_ns, _, _, kind, message in events:
            if kind == "account_snapshot":
                self.equity, self.cash = message.equity, message.cash
            elif kind == "position_snapshot":
                h = self.holdings.setdefault(message.header.symbol, _Holding())
                h.quantity, h.pending = message.quantity, message.pending_quantity
            elif kind == "order_intent":
                exiting.add((time_ns, message.header.symbol))
                decisions.append(self._decide(message))
            elif kind == "scored_signal" and (time_ns, message.header.symbol) not in exiting:
                intent = self._construct(message)
                if intent is not None:
                    decisions.append(self._decide(intent))
        if decisions:
            ctx.emit("risk_decision", KINDS["risk_decision"].to_frame(decisions))

    def _construct(self, signal: pb.ScoredSignal) -> pb.OrderIntent | None:
        """Size an intent from a signal, or None when the signal asks for no change."""
        symbol, price = signal.header.symbol, signal.reference_price
        held = self.holdings.get(symbol, _Holding()).effective
        size = self._size(price)
        if signal.direction == pb.DIRECTION_UP and held <= 0:
            side, quantity, target, reason = pb.ORDER_SIDE_BUY, size - held, size, pb.INTENT_REASON_ENTRY
        elif signal.direction == pb.DIRECTION_DOWN and held > 0:
            short = size if self.config.allow_short else 0.0
            side, quantity, target, reason = pb.ORDER_SIDE_SELL, held + short, -short, pb.INTENT_REASON_SIGNAL_EXIT
        elif signal.direction == pb.DIRECTION_DOWN and held == 0 and self.config.allow_short:
            side, quantity, target, reason = pb.ORDER_SIDE_SELL, size, -size, pb.INTENT_REASON_ENTRY
        else:
            return None
        header = pb.EventHeader()
        header.CopyFrom(signal.header)
        header.event_id = f"order_intent/risk/{signal.header.correlation_id}"
        return pb.OrderIntent(
            header=header,
            side=side,
            quantity=quantity,
            order_type=pb.ORDER_TYPE_MARKET,
            reason=reason,
            reference_price=price,
            target_quantity=target,
            reduce_only=reason == pb.INTENT_REASON_SIGNAL_EXIT and target == 0,
            source="risk",
        )

    def _size(self, price: float) -> float:
        if not (price > 0 and math.isfinite(price)):
            return 0.0
        budget = min(self.config.max_position_pct * self.equity, max(self.cash, 0.0))
        quantity = budget / price
        return quantity if self.config.fractional_shares else float(math.floor(quantity))

    def check(self, intent: pb.OrderIntent) -> tuple[int, str]:
        """(reason code, message) for an intent; RISK_REASON_APPROVED when every check passes."""
        symbol = intent.header.symbol
        q, price = intent.quantity, intent.reference_price
        if (
            not (math.isfinite(q) and q > 0)
            or not (math.isfinite(price) and price > 0)
            or intent.side not in (pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL)
            or not symbol
        ):
            return pb.RISK_REASON_INVALID_INTENT, f"quantity {q}, price {price}, side {intent.side}, symbol {symbol!r}"
        if self.controls.halted:
            return pb.RISK_REASON_HALTED, self.controls.halt_reason or _REASON_TEXT[pb.RISK_REASON_HALTED]
        if not self.controls.execution_approved:
            return pb.RISK_REASON_EXECUTION_NOT_APPROVED, _REASON_TEXT[pb.RISK_REASON_EXECUTION_NOT_APPROVED]
        held = self.holdings.get(symbol, _Holding()).effective
        signed = q if intent.side == pb.ORDER_SIDE_BUY else -q
        after = held + signed
        if after < 0 and not self.config.allow_short:
            return pb.RISK_REASON_SHORT_NOT_ALLOWED, f"holding {held:g}, selling {q:g}"
        if intent.reduce_only:
            if abs(after) > abs(held) or (after != 0 and (after > 0) != (held > 0)):
                return pb.RISK_REASON_INVALID_INTENT, f"reduce-only intent would grow the position from {held:g} to {after:g}"
            return pb.RISK_REASON_APPROVED, _REASON_TEXT[pb.RISK_REASON_APPROVED]
        limit = self.config.max_position_pct * self.equity
        if abs(after) * price > limit * (1 + 1e-9) and abs(after) > abs(held):
            return pb.RISK_REASON_MAX_POSITION, f"{abs(after) * price:.2f} > {limit:.2f} ({self.config.max_position_pct:.1%} of equity)"
        if signed > 0 and signed * price > self.cash * (1 + 1e-9):
            return pb.RISK_REASON_INSUFFICIENT_CASH, f"cost {signed * price:.2f} > cash {self.cash:.2f}"
        return pb.RISK_REASON_APPROVED, _REASON_TEXT[pb.RISK_REASON_APPROVED]

    def _decide(self, intent: pb.OrderIntent) -> pb.RiskDecision:
        reason, message = self.check(intent)
        approved = reason == pb.RISK_REASON_APPROVED
        if approved:  # later intents of the same bar see this one as pending
            h = self.holdings.setdefault(intent.header.symbol, _Holding())
            h.pending += intent.quantity if intent.side == pb.ORDER_SIDE_BUY else -intent.quantity
        return pb.RiskDecision(
            header=pb.EventHeader(
                event_id=f"risk_decision/{intent.header.event_id}",
                correlation_id=intent.header.correlation_id,
                event_time_ns=intent.header.event_time_ns,
                symbol=intent.header.symbol,
            ),
            intent=intent,
            approved=approved,
            reason=reason,
            message=message,
        )

    def snapshot(self) -> Any:
        return {"controls": self.controls, "holdings": self.holdings, "equity": self.equity, "cash": self.cash}

    def restore(self, state: Any) -> None:
        self.controls, self.holdings = state["controls"], state["holdings"]
        self.equity, self.cash = state["equity"], state["cash"]
