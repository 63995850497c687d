"""Deterministic identifiers.

Ids are pure functions of the data that caused an event, never random and never wall-clock based:
re-processing the same bars after a crash, in a replay or in another bus gives byte-identical events,
which JetStream de-duplicates by id and which tests compare for parity.
"""

from __future__ import annotations

import hashlib

import polars as pl


def correlation_id(symbol: str, event_time_ns: int) -> str:
    """The id that follows one bar to everything it causes."""
    return f"{symbol}@{event_time_ns}"


def correlation_id_expr(symbol: str = "symbol", time: str = "event_time_ns") -> pl.Expr:
    """`correlation_id` as a vectorised polars expression over a frame's columns."""
    return pl.format("{}@{}", pl.col(symbol), pl.col(time))


def event_id(kind: str, *parts: object) -> str:
    """`kind/part/part...`; the parts must make the id unique within the kind."""
    return "/".join((kind, *(str(p) for p in parts)))


def client_order_id(intent_id: str) -> str:
    """Broker client order id derived from the intent, so a retried intent maps to the same order.

    Hashed to stay within brokers' length limits (Alpaca: 128 characters).
    """
    return "utp-" + hashlib.blake2b(intent_id.encode(), digest_size=12).hexdigest()
