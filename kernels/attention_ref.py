"""Torch reference for paged attention over a mixed batch of prefill chunks and decodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import kv_quant
from kernels.attention_metadata import PagedAttentionMetadata


def paged_attention_ref(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: PagedAttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of ``query`` [T, H, D] over the paged ``kv_cache``
    [2, num_blocks, block_size, KV, D] (or quantized, see kv_quant); GQA when H is a multiple of
    KV. Returns [T, H, D].
    One sequence at a time: the definition every faster path is tested against."""
    out = torch.empty_like(query)
    starts = meta.query_start_loc.tolist()
    for i, seq_len in enumerate(meta.seq_lens_host):
        rows = slice(starts[i], starts[i + 1])
        out[rows] = attend_sequence(query[rows], kv_cache, meta.block_table[i], seq_len, scale)
    return out


def attend_sequence(
    query: torch.Tensor, kv_cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int, scale: float
) -> torch.Tensor:
    """The last ``len(query)`` positions of a ``seq_len``-token context attend causally to the
    context's keys, found through ``block_ids``. Returns [q, H, D]."""
    query_len, num_heads, _ = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    num_blocks = -(-seq_len // block_size)
    blocks = block_ids[:num_blocks].to(torch.long)
    k = kv_quant.gather(kv_cache, 0, blocks, query.dtype).flatten(0, 1)[:seq_len].transpose(0, 1)
    v = kv_quant.gather(kv_cache, 1, blocks, query.dtype).flatten(0, 1)[:seq_len].transpose(0, 1)
    # Query j sits at context position seq_len - query_len + j and sees keys up to it.
    q_pos = torch.arange(seq_len - query_len, seq_len)[:, None]
    mask = torch.arange(seq_len)[None, :] <= q_pos
    attn = F.scaled_dot_product_attention(
        query.transpose(0, 1).unsqueeze(0),
        k.unsqueeze(0),
        v.unsqueeze(0),
        attn_mask=mask,
        scale=scale,
        enable_gqa=num_heads != num_kv_heads,
    )
    return attn.squeeze(0).transpose(0, 1)
