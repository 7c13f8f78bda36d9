"""What paged attention needs to know about one step's flattened, mixed batch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class PagedAttentionMetadata:
    """Layout of one step's batch.

    The batch is flattened: sequence ``i`` owns query rows
    ``query_start_loc[i] : query_start_loc[i + 1]``; its queries are the *last* rows of a context
    of ``seq_lens[i]`` tokens whose keys and values live in the paged cache at
    ``block_table[i]``. A decode row has one query; a prefill chunk has several and may sit on top
    of a cached prefix (context longer than its query).

        context of seq i:  [ cached / earlier chunks ........ | this step's queries ]
                           0                     seq_len - query_len          seq_len
    """

    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_table: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    slot_mapping: torch.Tensor  # [num_tokens] int64, -1 = do not store
    query_lens_host: list[int]
    seq_lens_host: list[int]
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_host, default=0)

    @cached_property
    def decode_plan(self) -> DecodePlan | None:
        """Batched gather indices for the single-query rows, built once per step, used per layer."""
        rows = [i for i, q in enumerate(self.query_lens_host) if q == 1]
        if not rows:
            return None
        index = torch.tensor(rows, dtype=torch.long)
        lens = self.seq_lens[index].to(torch.long)
        max_len = int(lens.max())
        num_blocks = -(-max_len // self.block_size)
        blocks = self.block_table[index, :num_blocks].to(torch.long)
        offsets = torch.arange(self.block_size, dtype=torch.long)
        slots = (blocks[:, :, None] * self.block_size + offsets).reshape(len(rows), -1)[:, :max_len]
        valid = torch.arange(max_len)[None, :] < lens[:, None]
        query_rows = self.query_start_loc[index].to(torch.long)
        return DecodePlan(query_rows=query_rows, slots=slots, valid=valid)


@dataclass
class DecodePlan:
    query_rows: torch.Tensor  # [num_decode] rows of the flattened query
    slots: torch.Tensor  # [num_decode, max_len] flat slot of each context position
    valid: torch.Tensor  # [num_decode, max_len] bool, False past the sequence's length
