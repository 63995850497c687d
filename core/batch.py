"""The unit engines exchange: a batch of events of one kind, with a watermark."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import polars as pl

#: Watermark of a stream before any event.
NOTHING: int = -(2**63)
#: Watermark of a stream that will publish nothing more.
END: int = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one kind from one producer, sorted by event time.

    `through_ns` is the watermark: the producer has now published every event of this kind with event time
    <= through_ns (rows may lie beyond it; they are early, not complete). Command-like kinds (status,
    control) have no watermark and are applied on arrival.
    """

    kind: str
    producer: str
    frame: pl.DataFrame
    through_ns: int | None
    # Transport cursor of the message that closed the batch (the JetStream stream sequence);
    # None on the in-process bus. Engines store it to resume exactly there after a restart.
    position: int | None = None
    # The producer is one partition of its engine (processes sharing its symbols): its batches go to their own
    # subject. None: the engine's only producer.
    partition: str | None = None
    # Handed over by a producer in the same process before the bus holds it durably (JetStream's local
    # delivery): resolves once it does, or raises if it never will. A consumer commits nothing of it before.
    stored: asyncio.Future | None = None
    # Not rows: the transport's word that the consumer's position may move to `position` (it applied what
    # lies before, handed over in process). Its runner records the position and commits it with its next step.
    only_position: bool = False

    @property
    def end_of_stream(self) -> bool:
        return self.through_ns == END

    def __len__(self) -> int:
        return self.frame.height


def not_yet_taken(frame: pl.DataFrame, through_ns: int, early_ids: pl.Series | None) -> pl.DataFrame:
    """The rows of a producer's time-sorted batch that its earlier batches did not carry: those after their
    watermark `through_ns`, less the ones they carried early (beyond it), whose ids are `early_ids`.

    A producer restarted from an older checkpoint publishes again what it had published, cut into other batches:
    other message ids, so the server's duplicate window lets them through, and consumers drop them here."""
    if frame.height and frame["event_time_ns"][0] <= through_ns:
        frame = frame.filter(pl.col("event_time_ns") > through_ns)
    if early_ids is not None and early_ids.len() and frame.height:
        frame = frame.filter(~pl.col("event_id").is_in(early_ids.implode()))
    return frame
