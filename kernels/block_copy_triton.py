"""Triton kernels packing KV blocks into a contiguous transfer buffer and back.

Same buffer layout as block_copy_ref: [num_moved, 2, block_size, KV, D]. A block's keys (or its
values) are one contiguous run of ``block_size * KV * D`` elements in the cache, so each program
copies a chunk of one such run: grid (moved block, key or value, chunk).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.block_copy_ref import block_buffer_shape, check_block_buffer

CHUNK = 4096


@triton.jit
def _copy_blocks_kernel(  # type: ignore[no-untyped-def]
    cache_ptr,
    buffer_ptr,
    block_ids_ptr,
    block_numel,
    stride_kv,
    stride_block,
    TO_BUFFER: tl.constexpr,
    CHUNK: tl.constexpr,
):
    moved = tl.program_id(0).to(tl.int64)
    kv = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(2) * CHUNK + tl.arange(0, CHUNK)
    mask = offs < block_numel
    block = tl.load(block_ids_ptr + moved).to(tl.int64)
    cache = cache_ptr + kv * stride_kv + block * stride_block + offs
    buffer = buffer_ptr + (moved * 2 + kv) * block_numel + offs
    # A plain copy, no arithmetic: the bytes move unchanged in any dtype.
    if TO_BUFFER:
        tl.store(buffer, tl.load(cache, mask=mask), mask=mask)
    else:
        tl.store(cache, tl.load(buffer, mask=mask), mask=mask)


def gather_blocks_triton(kv_cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Copy blocks ``block_ids`` [N] of ``kv_cache`` [2, num_blocks, block_size, KV, D] into a new
    contiguous buffer [N, 2, block_size, KV, D] (layout in block_copy_ref)."""
    shape = block_buffer_shape(kv_cache, block_ids.numel())
    buffer = torch.empty(shape, dtype=kv_cache.dtype, device=kv_cache.device)
    _launch(kv_cache, buffer, block_ids, to_buffer=True)
    return buffer


def scatter_blocks_triton(
    buffer: torch.Tensor, kv_cache: torch.Tensor, block_ids: torch.Tensor
) -> None:
    """Write ``buffer`` [N, 2, block_size, KV, D] into blocks ``block_ids`` [N] of ``kv_cache``;
    the inverse of ``gather_blocks_triton``. Block ids must be distinct."""
    check_block_buffer(buffer, kv_cache, block_ids)
    _launch(kv_cache, buffer.contiguous(), block_ids, to_buffer=False)


def _launch(
    kv_cache: torch.Tensor, buffer: torch.Tensor, block_ids: torch.Tensor, to_buffer: bool
) -> None:
    num_moved = block_ids.numel()
    if num_moved == 0:
        return
    if not kv_cache[0, 0].is_contiguous():
        raise ValueError("each cache block must be contiguous: [block_size, KV, D]")
    block_numel = kv_cache[0, 0].numel()
    block_ids = block_ids.to(device=kv_cache.device, dtype=torch.int64)
    grid = (num_moved, 2, triton.cdiv(block_numel, CHUNK))
    _copy_blocks_kernel[grid](
        kv_cache,
        buffer,
        block_ids,
        block_numel,
        kv_cache.stride(0),
        kv_cache.stride(1),
        TO_BUFFER=to_buffer,
        CHUNK=CHUNK,
    )
