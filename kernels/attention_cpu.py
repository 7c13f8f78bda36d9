"""Paged attention on CPU: the reference's result, batched for decode-heavy steps.

Decode rows are attended together. Keys and values are gathered a whole block at a time, and the
blocks every row starts with (a shared cached prefix, common in serving) are attended once for
the whole batch rather than once per row (cascade attention); the two partial results are
merged through their log-sum-exp:

    row r:  [ blocks shared with its group | r's own blocks ........ ]
             one matmul per group            one batched flash call for all rows
"""

from __future__ import annotations

import torch

from kernels import kv_quant
from kernels.attention_metadata import DecodePlan, PagedAttentionMetadata
from kernels.attention_ref import attend_sequence


def paged_attention_cpu(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: PagedAttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Same contract as ``paged_attention_ref``."""
    out = torch.empty_like(query)
    plan = meta.decode_plan
    if plan is not None:
        out[plan.query_rows] = _decode(query[plan.query_rows], kv_cache, plan, scale)
    starts = meta.query_start_loc.tolist()
    for i, (query_len, seq_len) in enumerate(
        zip(meta.query_lens_host, meta.seq_lens_host, strict=True)
    ):
        if query_len > 1:
            rows = slice(starts[i], starts[i + 1])
            out[rows] = attend_sequence(query[rows], kv_cache, meta.block_table[i], seq_len, scale)
    return out


def _decode(
    query: torch.Tensor, kv_cache: torch.Tensor, plan: DecodePlan, scale: float
) -> torch.Tensor:
    batch, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    # A kv head's `group` query heads act as `group` queries against the same keys.
    q = query.view(batch, num_kv_heads, group, head_dim)
    blocks = plan.suffix_blocks
    k = kv_quant.gather(kv_cache, 0, blocks, query.dtype).view(batch, -1, num_kv_heads, head_dim)
    v = kv_quant.gather(kv_cache, 1, blocks, query.dtype).view(batch, -1, num_kv_heads, head_dim)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    # The flash kernel itself: the public SDPA entry point takes a much slower path for this
    # layout, and the log-sum-exp it returns is what merging with the shared part needs.
    out_own, lse_own = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=plan.suffix_mask.to(q.dtype), scale=scale
    )
    if not plan.shared:
        return out_own.reshape(batch, num_heads, head_dim)
    out = out_own.clone()
    for prefix in plan.shared:
        rows = prefix.members
        out_shared, lse_shared = _attend_shared(q[rows], kv_cache, prefix.blocks, scale)
        # Each part weighted by its share of the softmax mass.
        own = lse_own[rows]
        lse = torch.logaddexp(own, lse_shared)
        out[rows] = (
            out_own[rows] * (own - lse).exp()[..., None]
            + out_shared * (lse_shared - lse).exp()[..., None]
        ).to(out.dtype)
    return out.reshape(batch, num_heads, head_dim)


def _attend_shared(
    q: torch.Tensor, kv_cache: torch.Tensor, blocks: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's queries against the shared blocks in one matmul per kv head.
    ``q`` is [B, KV, G, D]; returns the output [B, KV, G, D] and log-sum-exp [B, KV, G]."""
    batch, num_kv_heads, group, head_dim = q.shape
    k = kv_quant.gather(kv_cache, 0, blocks, q.dtype).view(-1, num_kv_heads, head_dim)
    v = kv_quant.gather(kv_cache, 1, blocks, q.dtype).view(-1, num_kv_heads, head_dim)
    k, v = k.permute(1, 2, 0), v.transpose(0, 1)
    rows = q.permute(1, 0, 2, 3).reshape(num_kv_heads, batch * group, head_dim).float()
    scores = torch.bmm(rows, k.float()) * scale  # [KV, B*G, S]
    lse = scores.logsumexp(dim=-1)
    out = torch.bmm((scores - lse[..., None]).exp(), v.float())
    out = out.view(num_kv_heads, batch, group, head_dim).transpose(0, 1)
    return out, lse.view(num_kv_heads, batch, group).transpose(0, 1)
