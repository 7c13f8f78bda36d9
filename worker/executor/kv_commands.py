"""KV-transfer commands a multi-rank replica's driver sends every rank over the control channel
(beside the steps), and each rank's reply: every rank moves its own shard of the heads and
layers (worker/kv_transfer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.kv_transfer import KVSource
from worker.kv_transfer.transport import KVTransferError, KVTransport, make_transport


@dataclass(frozen=True, slots=True)
class OpenTransport:
    kind: str
    agent_name: str  # each rank appends its rank


@dataclass(frozen=True, slots=True)
class Export:
    block_ids: tuple[int, ...]
    key: str


@dataclass(frozen=True, slots=True)
class Release:
    key: str


@dataclass(frozen=True, slots=True)
class Fetch:
    sources: tuple[KVSource, ...]  # one per rank: each rank reads its own
    src_block_ids: tuple[int, ...]
    dst_block_ids: tuple[int, ...]
    timeout_s: float


KVCommand = OpenTransport | Export | Release | Fetch


@dataclass(frozen=True, slots=True)
class KVReply:
    """A rank's answer to a KVCommand: its value, or why it failed."""

    value: Any = None
    error: str | None = None


class RankTransfers:
    """One rank's side: runs each command on the rank's transport over its own cache."""

    def __init__(self, rank: int, kv_caches: Sequence[Any]) -> None:
        self.rank = rank
        self.kv_caches = list(kv_caches)
        self.transport: KVTransport | None = None

    def run(self, command: KVCommand) -> KVReply:
        try:
            return KVReply(self._run(command))
        except KVTransferError as exc:
            return KVReply(error=str(exc))

    def _run(self, command: KVCommand) -> Any:
        if isinstance(command, OpenTransport):
            name = f"{command.agent_name}-r{self.rank}"
            self.transport = make_transport(command.kind, self.kv_caches, name)
            return self.transport.holds_blocks
        transport = self.transport
        if transport is None:
            raise KVTransferError("no KV transport is open")
        if isinstance(command, Export):
            return transport.export(command.block_ids, command.key)
        if isinstance(command, Release):
            transport.release(command.key)
            return None
        if len(command.sources) <= self.rank:
            raise KVTransferError(f"the source has no rank {self.rank}")
        source = command.sources[self.rank]
        transport.fetch(source, command.src_block_ids, command.dst_block_ids, command.timeout_s)
        return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
