"""A replica's KV-event stream as a router consumes it: sequence numbers and gaps."""

from __future__ import annotations

from dataclasses import dataclass


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
    unknown_roots: int = 0  # first blocks with extra keys other than a cache_salt: not placed

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
