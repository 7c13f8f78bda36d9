"""Torch reference for packing KV blocks into a contiguous buffer and back (KV transfer).

Buffer layout, one row per moved block, in the order of ``block_ids``::

    buffer[i, 0] = kv_cache[0, block_ids[i]]   keys   [block_size, KV, D]
    buffer[i, 1] = kv_cache[1, block_ids[i]]   values [block_size, KV, D]

so ``buffer`` is [num_moved, 2, block_size, KV, D] in the cache's dtype, contiguous: one block's
keys and values sit together, and a prefix of rows is a prefix of the blocks.
"""

from __future__ import annotations

import torch


def block_buffer_shape(kv_cache: torch.Tensor, num_moved: int) -> torch.Size:
    """Shape of the transfer buffer holding ``num_moved`` blocks of ``kv_cache``."""
    return torch.Size((num_moved, 2, *kv_cache.shape[2:]))


def check_block_buffer(
    buffer: torch.Tensor, kv_cache: torch.Tensor, block_ids: torch.Tensor
) -> None:
    """Raise ``ValueError`` unless ``buffer`` can hold ``block_ids``' blocks of ``kv_cache``."""
    expected = block_buffer_shape(kv_cache, block_ids.numel())
    if buffer.shape != expected or buffer.dtype != kv_cache.dtype:
        raise ValueError(
            f"block buffer is {tuple(buffer.shape)} {buffer.dtype}, "
            f"expected {tuple(expected)} {kv_cache.dtype}"
        )


def gather_blocks_ref(kv_cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Copy blocks ``block_ids`` [N] of ``kv_cache`` [2, num_blocks, block_size, KV, D] into a new
    contiguous buffer [N, 2, block_size, KV, D] (layout in the module docstring)."""
    index = block_ids.to(device=kv_cache.device, dtype=torch.long)
    return kv_cache[:, index].transpose(0, 1).contiguous()


def scatter_blocks_ref(
    buffer: torch.Tensor, kv_cache: torch.Tensor, block_ids: torch.Tensor
) -> None:
    """Write ``buffer`` [N, 2, block_size, KV, D] into blocks ``block_ids`` [N] of ``kv_cache``;
    the inverse of ``gather_blocks_ref``. Block ids must be distinct."""
    check_block_buffer(buffer, kv_cache, block_ids)
    index = block_ids.to(device=kv_cache.device, dtype=torch.long)
    kv_cache[:, index] = buffer.transpose(0, 1)
