"""A replica's KV-event stream as a router consumes it: sequence numbers, gaps, snapshots."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.block_hash import BlockHash
from worker.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


@dataclass(frozen=True, slots=True)
class KVSnapshot:
    """Every block a replica's prefix cache holds, and the sequence number of the first event
    not folded into it. Blocks may come in any order; the index places a block once its parent
    is placed, and drops the blocks whose parent is not cached (the engine cannot hit them)."""

    next_seq: int
    blocks: tuple[BlockStored, ...]


@dataclass(slots=True)
class ReplicaFeed:
    """Where this router stands in one replica's event stream, and what it could not use.

    A gap in the sequence numbers means events were lost (a bounded log overflowed, a
    subscription started late): the index keeps applying what it gets, best effort, and
    ``needs_resync`` stays set until a snapshot is applied.
    """

    next_seq: int = 0
    needs_resync: bool = False
    gaps: int = 0
    duplicates: int = 0
    applied: int = 0
    orphans: int = 0  # BlockStored whose parent the index does not know: cannot be placed
    unknown_roots: int = 0  # first blocks whose extra keys (cache_salt) this router never saw

    def admit(self, seq: int) -> bool:
        """Whether the event numbered ``seq`` is new; notes a gap before it."""
        if seq < self.next_seq:
            self.duplicates += 1
            return False
        if seq > self.next_seq:
            self.gaps += 1
            self.needs_resync = True
        self.next_seq = seq + 1
        self.applied += 1
        return True


class SnapshotBuilder:
    """Folds one replica's own events into the set of blocks it holds, to serve snapshots.
    It runs next to the replica (it sees every event), not in the router."""

    def __init__(self) -> None:
        self._blocks: dict[BlockHash, BlockStored] = {}
        self._next_seq = 0

    def apply(self, events: Iterable[KVEvent]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                self._blocks[event.block_hash] = event
            elif isinstance(event, BlockRemoved):
                self._blocks.pop(event.block_hash, None)
            elif isinstance(event, AllBlocksCleared):
                self._blocks.clear()
            self._next_seq = event.seq + 1

    def snapshot(self) -> KVSnapshot:
        return KVSnapshot(self._next_seq, tuple(self._blocks.values()))
