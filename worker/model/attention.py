"""Self-attention over the paged KV cache."""

from __future__ import annotations

import torch
from torch import nn

from kernels import ops
from kernels.attention_metadata import AttentionMetadata
from worker.model.linear import QKVParallelLinear, RowParallelLinear
from worker.model.norm import RMSNorm
from worker.model.quantization import WeightQuantization
from worker.model.rotary import RotaryEmbedding
from worker.model_config import ModelConfig
from worker.parallel.state import ParallelState


class Attention(nn.Module):
    """qkv projection → (Qwen3: RMSNorm of each q and k head) → rotary → store this step's keys
    and values in the layer's cache → causal attention over the cached context → o projection.

    Under tensor parallelism each rank runs all of this for its own heads only; the o
    projection's all-reduce sums the heads' contributions."""

    def __init__(
        self,
        config: ModelConfig,
        rotary_emb: RotaryEmbedding,
        parallel: ParallelState,
        quantization: WeightQuantization | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            config.head_dim,
            config.num_attention_heads,
            config.num_key_value_heads,
            bias=config.qkv_bias,
            parallel=parallel,
            quantization=quantization,
        )
        # This rank's heads: a slice of the query heads and their KV heads.
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * config.head_dim,
            config.hidden_size,
            bias=config.o_proj_bias,
            parallel=parallel,
            quantization=quantization,
        )
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        # Shared by every layer: one cos/sin table per model.
        self.rotary_emb = rotary_emb

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """``hidden`` [T, hidden_size] → [T, hidden_size]; writes this step's keys and values
        into ``kv_cache`` [2, num_blocks, block_size, KV, D] (KV: this rank's heads) at
        ``meta.slot_mapping``."""
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(
            [self.qkv_proj.q_size, self.qkv_proj.kv_size, self.qkv_proj.kv_size], dim=-1
        )
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        ops.store_kv(k, v, kv_cache, meta.slot_mapping)
        out = ops.paged_attention(q, kv_cache, meta, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))
