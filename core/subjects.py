"""Every bus subject is built here, and nowhere else.

Events go to `<root>.<kind>.<symbol>`; portfolio-wide events use the symbol token `_`; the watermark that
closes a batch of a kind goes to `<root>.<kind>._wm`, inside the kind's subject space, so one consumer
filtered on `<root>.<kind>.>` sees events and watermarks in publish order. Characters that NATS does
not allow in a token (".", "*", ">", whitespace, ...) are percent-encoded: "BRK.B" -> "BRK%2EB".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[A-Za-z0-9_\-]")
PORTFOLIO_TOKEN = "_"
WATERMARK_TOKEN = "_wm"


def symbol_token(symbol: str) -> str:
    if not symbol:
        return PORTFOLIO_TOKEN
    return "".join(c if _SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in symbol)


def token_symbol(token: str) -> str:
    if token == PORTFOLIO_TOKEN:
        return ""
    return re.sub(r"(%[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode(), token)


@dataclass(frozen=True, slots=True)
class Subjects:
    root: str = "utp"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.root):
            raise ValueError(f"subject root {self.root!r} must be one NATS token of letters, digits, _ or -")

    def event(self, kind: str, symbol: str) -> str:
        return f"{self.root}.{kind}.{symbol_token(symbol)}"

    def watermark(self, kind: str) -> str:
        return f"{self.root}.{kind}.{WATERMARK_TOKEN}"

    def of_kind(self, kind: str) -> str:
        return f"{self.root}.{kind}.>"

    def everything(self) -> str:
        return f"{self.root}.>"

    def parse(self, subject: str) -> tuple[str, str | None]:
        """subject -> (kind, symbol); symbol is None for a watermark subject."""
        root, kind, token = subject.split(".", 2)
        if root != self.root:
            raise ValueError(f"subject {subject!r} is not under {self.root!r}")
        return kind, (None if token == WATERMARK_TOKEN else token_symbol(token))
