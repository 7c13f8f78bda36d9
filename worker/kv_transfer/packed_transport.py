"""The fallback transport, for where NIXL is absent: the blocks are packed into the handle at
export, so they travel with it (through Ray Serve, as Ray objects) and the prefill side keeps
nothing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels import gather_blocks, scatter_blocks
from worker.kv_transfer.handle import KVSource
from worker.kv_transfer.transport import KVTransferError, KVTransport


@dataclass(frozen=True, slots=True)
class PackedSource(KVSource):
    """``blocks[layer]`` holds the bytes of [N, 2, block_size, kv_heads, head_dim]: block
    ``block_ids[i]`` of that layer's cache in row i (the kernels' block gather layout). Plain
    bytes, not tensors: torch pickles a CPU tensor between processes as a shared-memory
    handle, which only a multiprocessing child can open."""

    block_ids: tuple[int, ...]
    blocks: tuple[bytes, ...]


class PackedTransport(KVTransport):
    name = "packed"
    holds_blocks = False

    def __init__(self, kv_caches: list[torch.Tensor]) -> None:
        self.kv_caches = kv_caches

    def export(self, block_ids: Sequence[int], key: str) -> PackedSource:
        index = torch.tensor(list(block_ids), dtype=torch.long)
        blocks = tuple(
            gather_blocks(cache, index).cpu().view(torch.uint8).numpy().tobytes()
            for cache in self.kv_caches
        )
        return PackedSource(self.name, tuple(block_ids), blocks)

    def fetch(
        self,
        source: KVSource,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        if not isinstance(source, PackedSource):
            raise KVTransferError(f"a {source.transport} source reached the packed transport")
        if len(source.blocks) != len(self.kv_caches):
            raise KVTransferError(
                f"the source packed {len(source.blocks)} layers, this rank has "
                f"{len(self.kv_caches)}"
            )
        row_of = {block_id: row for row, block_id in enumerate(source.block_ids)}
        missing = [b for b in src_block_ids if b not in row_of]
        if missing:
            raise KVTransferError(f"blocks {missing[:8]} are not in the packed source")
        rows = torch.tensor([row_of[b] for b in src_block_ids], dtype=torch.long)
        dst = torch.tensor(list(dst_block_ids), dtype=torch.long)
        for packed, cache in zip(source.blocks, self.kv_caches, strict=True):
            shape = (len(source.block_ids), 2, *cache.shape[2:])
            if len(packed) != math.prod(shape) * cache.element_size():
                raise KVTransferError(
                    f"a packed layer holds {len(packed)} bytes, expected {shape} {cache.dtype}"
                )
            blocks = torch.frombuffer(bytearray(packed), dtype=cache.dtype).view(shape)
            scatter_blocks(blocks[rows].to(cache.device), cache, dst)

    def release(self, key: str) -> None:
        """The handle carries the blocks: nothing stays here."""

    def close(self) -> None:
        self.kv_caches = []
