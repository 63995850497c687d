"""Every bus subject is built here, and nowhere else.

A batch of a watermarked kind goes to `<root>.<kind>._batch` as one columnar `EventBatch` (or several parts,
the last with the watermark), inside the kind's subject space, so one consumer filtered on `<root>.<kind>.>`
sees batches in publish order. Events of the other kinds (commands, status, alerts) and dead letters go one
by one to `<root>.<kind>.<symbol>`; portfolio-wide events use the symbol token `_`. `<root>._applied.<engine>` and
`<root>._session` hold what a replay needs besides the events (where commands took effect, the session). Characters that NATS does
not allow in a token (".", "*", ">", whitespace, ...) are percent-encoded: "BRK.B" -> "BRK%2EB".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[A-Za-z0-9_\-]")
PORTFOLIO_TOKEN = "_"
BATCH_TOKEN = "_batch"
#: Tokens in the kind position that are not kinds: records for `utp replay`, which no consumer of a kind sees.
APPLIED_TOKEN = "_applied"
MANIFEST_TOKEN = "_session"
DEAD_LETTER_TOKEN = "dlq"


def is_batch_token(token: str) -> bool:
    """Whether the subject tokens after the kind name a batch subject (of the whole kind or of a partition)."""
    return token == BATCH_TOKEN or token.startswith(BATCH_TOKEN + ".")


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

    def batch(self, kind: str, partition: str | None = None) -> str:
        """Where the batches of a watermarked kind go (`EventBatch` parts; the last carries the watermark). A
        producer that is one partition of an engine (several processes share its symbols) publishes under its own
        `<root>.<kind>._batch.<partition>`: its parts never interleave with another partition's, and a consumer of
        the whole kind (`of_kind`) still sees them all."""
        base = f"{self.root}.{kind}.{BATCH_TOKEN}"
        return base if partition is None else f"{base}.{symbol_token(partition)}"

    def of_kind(self, kind: str) -> str:
        return f"{self.root}.{kind}.>"

    def applied(self, engine: str) -> str:
        """Where an engine records the points at which it applied commands (`CommandsApplied`)."""
        return f"{self.root}.{APPLIED_TOKEN}.{symbol_token(engine)}"

    def dead_letter(self, kind: str, symbol: str) -> str:
        """Where an event that an engine kept failing on goes: `<root>.dlq.<its own subject's kind.symbol>`."""
        return f"{self.root}.{DEAD_LETTER_TOKEN}.{kind}.{symbol_token(symbol)}"

    def dead_letters(self) -> str:
        return f"{self.root}.{DEAD_LETTER_TOKEN}.>"

    def manifest(self) -> str:
        """Where a session's `SessionManifest` goes; outside every kind's subject space."""
        return f"{self.root}.{MANIFEST_TOKEN}"

    def everything(self) -> str:
        return f"{self.root}.>"

    def parse(self, subject: str) -> tuple[str, str | None]:
        """subject -> (kind, symbol); symbol is None for a batch subject."""
        root, kind, token = subject.split(".", 2)
        if root != self.root:
            raise ValueError(f"subject {subject!r} is not under {self.root!r}")
        return kind, (None if is_batch_token(token) else token_symbol(token))
