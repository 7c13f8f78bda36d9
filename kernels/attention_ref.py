"""Torch reference for paged attention over a mixed batch of prefill chunks and decodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attention_metadata import PagedAttentionMetadata


def paged_attention_ref(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: PagedAttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of ``query`` [T, H, D] over the paged ``kv_cache``
    [2, num_blocks, block_size, KV, D]; GQA when H is a multiple of KV. Returns [T, H, D]."""
    _, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    flat_k = kv_cache[0].reshape(-1, num_kv_heads, head_dim)
    flat_v = kv_cache[1].reshape(-1, num_kv_heads, head_dim)
    out = torch.empty_like(query)

    plan = meta.decode_plan
    if plan is not None:
        q = query[plan.query_rows].unsqueeze(2)  # [B, H, 1, D]
        k = flat_k[plan.slots].transpose(1, 2)  # [B, KV, L, D]
        v = flat_v[plan.slots].transpose(1, 2)
        mask = plan.valid[:, None, None, :]
        out[plan.query_rows] = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=num_heads != num_kv_heads
        ).squeeze(2)

    starts = meta.query_start_loc.tolist()
    for i, (query_len, seq_len) in enumerate(
        zip(meta.query_lens_host, meta.seq_lens_host, strict=True)
    ):
        if query_len == 1:
            continue
        num_blocks = -(-seq_len // meta.block_size)
        blocks = meta.block_table[i, :num_blocks].to(torch.long)
        slots = (blocks[:, None] * meta.block_size + torch.arange(meta.block_size)).reshape(-1)
        slots = slots[:seq_len]
        q = query[starts[i] : starts[i + 1]].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        k = flat_k[slots].transpose(0, 1).unsqueeze(0)  # [1, KV, L, D]
        v = flat_v[slots].transpose(0, 1).unsqueeze(0)
        # Query j sits at context position seq_len - query_len + j and sees keys up to it.
        q_pos = torch.arange(seq_len - query_len, seq_len)[:, None]
        mask = torch.arange(seq_len)[None, :] <= q_pos
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=num_heads != num_kv_heads
        )
        out[starts[i] : starts[i + 1]] = attn.squeeze(0).transpose(0, 1)
    return out
