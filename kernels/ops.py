"""The one dispatch point between the model and its kernels.

Every operation the model runs goes through here, so the choice of implementation is made in
one place. On CPU the torch references run, except attention, whose batched CPU path
is tested against its reference.
"""

from __future__ import annotations

from kernels.activation_ref import silu_and_mul_ref as silu_and_mul
from kernels.attention_cpu import paged_attention_cpu as paged_attention
from kernels.kv_store_ref import store_kv_ref as store_kv
from kernels.norm_ref import fused_add_rms_norm_ref as fused_add_rms_norm
from kernels.norm_ref import rms_norm_ref as rms_norm
from kernels.rope_ref import rotary_embedding_ref as rotary_embedding

__all__ = [
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
]
