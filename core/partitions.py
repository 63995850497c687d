"""Several processes sharing one engine's symbols: partitions, and leases that say who holds which.

An engine whose state is per symbol (alpha, and features without cross-sectional ranks) can run as
`bus.partitions[engine]` partitions. Partition `k` of `n` holds the symbols whose CRC-32 is `k` modulo `n`: the
same in every process and every run, unlike Python's salted `hash`. Each partition is an engine of its own, with
its own checkpoint and consumers, and publishes as producer `<engine>.p<k>` on its own subjects; the engines that
consume its outputs wait for every partition's watermark (`EngineRunner(producers=...)`).

`utp engine NAME` processes share the partitions through leases in a JetStream key-value bucket whose entries
expire: each process renews its members' entry and its partitions' leases every third of the lease time, holds
at most its fair share (partitions / processes alive, rounded up), takes free partitions, and gives back what is
more than its share once others join. A process that stops gives its partitions back at once; one that dies
loses them when their leases expire. Whoever takes a partition over resumes from that partition's checkpoint if
it holds one, else replays the partition's inputs from the session's start: what the partition had published
already is published again with the same producer name, and consumers drop it as carried already.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import nats.js.errors
import numpy as np
import polars as pl

from utp.core.columns import take_rows

log = logging.getLogger(__name__)

#: Engines whose state is per symbol, so that partitions of their symbols can run apart.
PARTITIONABLE_ENGINES = ("features", "alpha")


@lru_cache(maxsize=1 << 16)
def partition_of(symbol: str, count: int) -> int:
    return zlib.crc32(symbol.encode()) % count


@dataclass(frozen=True, slots=True)
class Partition:
    """Partition `index` of `count` of an engine's symbols."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} of {self.count} does not exist")

    @property
    def name(self) -> str:
        return f"p{self.index}"

    def owns(self, symbol: str) -> bool:
        return partition_of(symbol, self.count) == self.index

    def keep(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows of `frame` whose symbol is in this partition (all of a frame without symbols)."""
        if not frame.height or "symbol" not in frame.columns:
            return frame
        mine = [s for s in frame["symbol"].unique().to_list() if self.owns(s)]
        return frame.filter(pl.col("symbol").is_in(mine))


def split(frame: pl.DataFrame, count: int) -> list[pl.DataFrame]:
    """`frame`'s rows by the partition of their symbol: `count` frames (some may be empty), each in the order the
    rows had."""
    if not frame.height:
        return [frame] * count
    index = np.fromiter((partition_of(s, count) for s in frame["symbol"].to_list()), np.int64, frame.height)
    return [take_rows(frame, np.flatnonzero(index == k)) for k in range(count)]


def producers_of(engine: str, count: int) -> tuple[str, ...]:
    """The producer names of an engine's partitions, as consumers of its outputs wait for them."""
    return tuple(f"{engine}.{Partition(k, count).name}" for k in range(count))


@dataclass
class Rebalance:
    """What a process must do after a round of leasing: stop the partitions it `lost` (their leases expired and
    maybe went to another), stop and then `release` its `surplus`, and start those it `gained`."""

    gained: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    surplus: list[int] = field(default_factory=list)


class PartitionLeases:
    """This process's leases on the partitions of one engine, in a JetStream key-value bucket whose entries
    expire after `lease_s`; a partition marked done (in a second bucket, without expiry) is leased no more."""

    def __init__(self, js: object, bucket: str, engine: str, count: int, worker: str, lease_s: float) -> None:
        self.js = js
        self.bucket = bucket
        self.engine = engine
        self.count = count
        self.worker = worker
        self.lease_s = lease_s
        self.held: dict[int, int] = {}  # partition -> revision of our lease entry
        # partition -> when our lease ends (monotonic) unless renewed, counted from before the request that took
        # or renewed it: on this side it never looks longer than the server's.
        self._until: dict[int, float] = {}
        self._kv = self._done = None

    async def open(self) -> None:
        self._kv = await self._bucket(self.bucket, self.lease_s)
        self._done = await self._bucket(f"{self.bucket}-done", None)

    async def _bucket(self, name: str, ttl: float | None):  # noqa: ANN202
        try:
            return await self.js.key_value(name)  # type: ignore[attr-defined]
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(bucket=name, ttl=ttl, history=1)  # type: ignore[attr-defined]

    def _lease(self, k: int) -> str:
        return f"{self.engine}.p{k}"

    def _member(self) -> str:
        return f"{self.engine}.member.{self.worker}"

    async def _members(self) -> list[str]:
        # nats-py's keys() can end its listing before the first entry arrives when the client is slow (it takes
        # "nothing pending" from the consumer's info as the end): our own entry, just put, must be in it.
        prefix = f"{self.engine}.member."
        for _ in range(5):
            try:
                members = [k for k in await self._kv.keys() if k.startswith(prefix)]
            except nats.js.errors.NoKeysError:
                members = []
            if self._member() in members:
                return members
        return [self._member()]  # no better answer: act alone this round, the next rebalance corrects it

    async def done(self) -> set[int]:
        """The partitions marked done, each read by its key (a direct get; a listing can come back short)."""
        out = set()
        for k in range(self.count):
            try:
                await self._done.get(self._lease(k))
            except nats.js.errors.KeyNotFoundError:  # also a deleted key
                continue
            out.add(k)
        return out

    async def mark_done(self, k: int) -> None:
        await self._done.put(self._lease(k), self.worker.encode())

    async def rebalance(self) -> Rebalance:
        """Renew what this process holds, and take or give back partitions towards its fair share."""
        out = Rebalance()
        await self._kv.put(self._member(), b"")
        members = await self._members()
        done = await self.done()
        open_ = [k for k in range(self.count) if k not in done]
        fair = math.ceil(len(open_) / max(1, len(members)))
        for k, revision in list(self.held.items()):
            asked = time.monotonic()
            try:
                self.held[k] = await self._kv.update(self._lease(k), self.worker.encode(), last=revision)
                self._until[k] = asked + self.lease_s
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("%s: the lease of partition %d expired; another process may hold it now", self.engine, k)
                del self.held[k]
                self._until.pop(k, None)
                out.lost.append(k)
        mine = [k for k in sorted(self.held) if k not in done]
        out.surplus = mine[fair:]
        for k in open_:
            if len(self.held) - len(out.surplus) >= fair:
                break
            if k in self.held:
                continue
            asked = time.monotonic()
            try:
                self.held[k] = await self._kv.create(self._lease(k), self.worker.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # held by another process
            self._until[k] = asked + self.lease_s
            out.gained.append(k)
        return out

    def holds(self, k: int) -> bool:
        """Whether this process's lease of partition `k` is still good by its own clock (renewed within the lease
        time): a process held up longer than that must assume another took the partition over."""
        return k in self.held and time.monotonic() < self._until.get(k, 0.0)

    async def release(self, k: int) -> None:
        revision = self.held.pop(k, None)
        self._until.pop(k, None)
        if revision is not None:
            try:
                await self._kv.delete(self._lease(k), last=revision)
            except nats.js.errors.APIError:
                pass  # expired, and maybe taken, already

    async def leave(self) -> None:
        for k in list(self.held):
            await self.release(k)
        await self._kv.delete(self._member())
