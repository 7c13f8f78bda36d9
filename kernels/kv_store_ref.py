"""Torch reference for writing new keys and values into the paged cache by slot."""

from __future__ import annotations

import torch

from kernels import kv_quant


def store_kv_ref(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write ``key``/``value`` [T, KV, D] into ``kv_cache`` [2, num_blocks, block_size, KV, D] at
    flat slots ``slot_mapping`` [T]; a slot of -1 is skipped. A quantized cache (kv_quant) gets
    each row quantized with its own scale."""
    num_kv_heads, width = kv_cache.shape[3], kv_cache.shape[4]
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    if kv_quant.is_quantized(kv_cache):
        key = kv_quant.quantize(key, kv_cache.dtype)
        value = kv_quant.quantize(value, kv_cache.dtype)
    kv_cache[0].view(-1, num_kv_heads, width)[slot_mapping] = key.to(kv_cache.dtype)
    kv_cache[1].view(-1, num_kv_heads, width)[slot_mapping] = value.to(kv_cache.dtype)
