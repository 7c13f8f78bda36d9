"""Compute kernels: torch references (CPU), Triton kernels (CUDA), and the one dispatch point."""

from kernels.attention_metadata import PagedAttentionMetadata
from kernels.ops import (
    fused_add_rms_norm,
    gather_blocks,
    paged_attention,
    rms_norm,
    rotary_embedding,
    scatter_blocks,
    silu_and_mul,
    store_kv,
)

__all__ = [
    "PagedAttentionMetadata",
    "fused_add_rms_norm",
    "gather_blocks",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "scatter_blocks",
    "silu_and_mul",
    "store_kv",
]
