"""Compute kernels: torch references (CPU), Triton kernels (CUDA), and the one dispatch point."""

from kernels import compiled_ops  # noqa: F401  (registers the kvfleet:: torch operators)
from kernels.attention_metadata import AttentionMetadata, DecodeMetadata, PagedAttentionMetadata
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
    "AttentionMetadata",
    "DecodeMetadata",
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
