"""The one interface that moves KV blocks between two engines' ranks."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from worker.config import TRANSPORTS
from worker.errors import KVFleetError
from worker.kv_transfer.handle import KVSource


class KVTransferError(KVFleetError):
    """A transfer failed or timed out; the decode side recomputes the prompt instead."""


class KVTransport(ABC):
    """One rank's end of KV transfer, over that rank's KV cache tensors (one per local layer,
    [2, num_blocks, block_size, kv_heads, head_dim]).

    ``holds_blocks``: whether a reader reads the source blocks in place, so the prefill side
    must keep them (under a lease) until the reader is done; a transport that copies them into
    the handle at export frees them at once."""

    name: str
    holds_blocks: bool

    @abstractmethod
    def export(self, block_ids: Sequence[int], key: str) -> KVSource:
        """What a reader needs to read ``block_ids`` of this rank's cache; what the export
        holds stays held under ``key`` until ``release(key)``."""

    @abstractmethod
    def release(self, key: str) -> None:
        """Drop what the export under ``key`` holds (nothing, if it holds nothing)."""

    @abstractmethod
    def fetch(
        self,
        source: KVSource,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        """Copy the source's blocks ``src_block_ids`` into this rank's ``dst_block_ids``;
        raise KVTransferError if that fails or takes longer than ``timeout_s``."""

    @abstractmethod
    def close(self) -> None:
        """Release what the transport registered."""


def nixl_available() -> bool:
    return importlib.util.find_spec("nixl_cu12") is not None


def make_transport(kind: str, kv_caches: list[torch.Tensor], agent_name: str) -> KVTransport:
    """``kind`` "auto" takes NIXL where it is installed and the packed copy elsewhere."""
    if kind not in TRANSPORTS:
        raise ValueError(f"kv_transport must be one of {', '.join(TRANSPORTS)}, got {kind!r}")
    if kind == "auto":
        kind = "nixl" if nixl_available() else "packed"
    if kind == "nixl":
        from worker.kv_transfer.nixl_transport import NixlTransport

        return NixlTransport(kv_caches, agent_name)
    from worker.kv_transfer.packed_transport import PackedTransport

    return PackedTransport(kv_caches)
