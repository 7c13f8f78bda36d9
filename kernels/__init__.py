"""Compute kernels: torch references (CPU, tests) and the single dispatch point the model calls."""

from kernels.attention_metadata import PagedAttentionMetadata
from kernels.ops import (
    fused_add_rms_norm,
    paged_attention,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    store_kv,
)

__all__ = [
    "PagedAttentionMetadata",
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
]
