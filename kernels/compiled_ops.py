"""The two kernels a compiled forward cannot trace through, as torch custom operators.

Dynamo cannot see into the native attention (a ctypes call) and breaks the graph at the cache
write's data-dependent skip of unused slots. Registered as operators with a declared output
shape (and, for the write, a declared mutation of the cache), each stays one opaque node of a
single graph; at run time each calls kernels.ops, the one dispatch point, eagerly.
"""

from __future__ import annotations

import torch

from kernels import ops
from kernels.attention_metadata import PagedAttentionMetadata


@torch.library.custom_op("kvfleet::store_kv", mutates_args=("kv_cache",))
def store_kv(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    ops.store_kv(key, value, kv_cache, slot_mapping)


@store_kv.register_fake
def _(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    return None


@torch.library.custom_op("kvfleet::paged_decode_attention", mutates_args=())
def paged_decode_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    num_seqs = seq_lens.shape[0]
    # Lengths on the host: exact on a CPU (the torch path masks by them); on a GPU only their
    # bound, all the Triton kernel's split count needs, so that no step waits for the device.
    host_lens = seq_lens.tolist() if seq_lens.device.type == "cpu" else [max_seq_len] * num_seqs
    meta = PagedAttentionMetadata(
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        block_table=block_table,
        slot_mapping=seq_lens.new_empty(0, dtype=torch.int64),
        query_lens_host=[1] * num_seqs,
        seq_lens_host=host_lens,
        block_size=kv_cache.shape[2],
    )
    return ops.paged_attention(query, kv_cache, meta, scale).contiguous()


@paged_decode_attention.register_fake
def _(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    return query.new_empty(query.shape)
