"""Events the block pool publishes about its prefix cache; the router folds them into its index."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from worker.block_hash import BlockHash


@dataclass(frozen=True, slots=True)
class BlockStored:
    """A full block entered the prefix cache. A first block (no parent) carries its request's
    tagged extra keys, such as ("cache_salt", ...), so a router can rehash it exactly."""

    seq: int
    block_hash: BlockHash
    parent_hash: BlockHash | None
    token_ids: tuple[int, ...]
    extra_keys: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    seq: int
    block_hash: BlockHash


KVEvent = BlockStored | BlockRemoved


@dataclass(frozen=True, slots=True)
class KVSnapshot:
    """Every block a replica's prefix cache holds, and the sequence number of the first event
    not folded into it. Blocks may come in any order; a router places a block once its parent
    is placed, and drops the blocks whose parent is not cached (the engine cannot hit them)."""

    next_seq: int
    blocks: tuple[BlockStored, ...]


class KVEventLog:
    """A bounded log of numbered events. Consumers that fall behind by more than ``capacity`` see
    a gap in the sequence numbers and must resynchronise from a snapshot."""

    def __init__(self, capacity: int = 65536) -> None:
        self._events: deque[KVEvent] = deque(maxlen=capacity)
        self._next_seq = 0

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def stored(
        self,
        block_hash: BlockHash,
        parent_hash: BlockHash | None,
        token_ids: tuple[int, ...],
        extra_keys: tuple[tuple[str, str], ...] = (),
    ) -> None:
        event = BlockStored(self._take_seq(), block_hash, parent_hash, token_ids, extra_keys)
        self._events.append(event)

    def removed(self, block_hash: BlockHash) -> None:
        self._events.append(BlockRemoved(self._take_seq(), block_hash))

    def drain(self) -> list[KVEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq


class SnapshotBuilder:
    """Folds one replica's own events into the set of blocks it holds, to serve snapshots to
    routers that join late or lost events. It runs beside the replica, which sees every event."""

    def __init__(self) -> None:
        self._blocks: dict[BlockHash, BlockStored] = {}
        self._next_seq = 0

    def apply(self, events: Iterable[KVEvent]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                self._blocks[event.block_hash] = event
            else:
                self._blocks.pop(event.block_hash, None)
            self._next_seq = event.seq + 1

    def snapshot(self) -> KVSnapshot:
        return KVSnapshot(self._next_seq, tuple(self._blocks.values()))
