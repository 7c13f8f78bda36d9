"""The typed handle a prefill replica returns: where a request's KV blocks are, and for how
long they are kept there."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from worker.kv_transfer.layout import KVLayout


@dataclass(frozen=True, slots=True)
class KVSource:
    """Where one rank's blocks can be read from; each transport fills in a subclass."""

    transport: str


@dataclass(frozen=True, slots=True)
class KVHandle:
    """A prefill engine's blocks for one request, held under a lease until
    ``lease_expires_at`` (wall-clock seconds) or until released, whichever comes first.

    ``block_ids`` is the prefill engine's block table for the prompt; every rank of a replica
    uses the same table, each over its own shard of the heads and layers, so one list serves
    all ranks. ``sources`` holds one entry per rank, in rank order. The blocks hold the KV of
    the ``num_tokens`` prompt tokens whose digest is ``prompt_digest``."""

    engine_id: str
    request_id: str
    num_tokens: int
    prompt_digest: str
    block_ids: tuple[int, ...]
    layout: KVLayout
    compat_hash: str
    sources: tuple[KVSource, ...]
    lease_expires_at: float
    replica_id: str = ""  # the Serve replica of the prefill engine: whom to ask to release

    @property
    def transport(self) -> str:
        return self.sources[0].transport

    @property
    def leased(self) -> bool:
        """Whether the source blocks are held for the reader (read in place), so the reader
        should release them when done."""
        return self.transport != "packed"


def prompt_digest(token_ids: Sequence[int]) -> str:
    """Names a prompt exactly: a handle is used only for the prompt it was made for."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()[:24]
