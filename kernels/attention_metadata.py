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
        """How the CPU path batches the single-query rows; built once per step, used per layer."""
        rows = [i for i, q in enumerate(self.query_lens_host) if q == 1]
        if not rows:
            return None
        bs = self.block_size
        lens = [self.seq_lens_host[i] for i in rows]
        index = torch.tensor(rows, dtype=torch.long)
        blocks = self.block_table[index, : -(-max(lens) // bs)].to(torch.long)
        shared_per_row = [0] * len(rows)
        groups = []
        for members, shared in _prefix_groups(blocks, lens, bs):
            groups.append(SharedPrefix(torch.tensor(members), blocks[members[0], :shared]))
            for m in members:
                shared_per_row[m] = shared
        own = [-(-n // bs) - s for n, s in zip(lens, shared_per_row, strict=True)]
        width = max(own)
        columns = torch.arange(width)
        start = torch.tensor(shared_per_row)
        take = (start[:, None] + columns).clamp(max=blocks.shape[1] - 1)
        suffix = blocks.gather(1, take)
        visible = (start[:, None] * bs + torch.arange(width * bs)) < torch.tensor(lens)[:, None]
        mask = torch.zeros(len(rows), 1, 1, width * bs).masked_fill_(
            ~visible[:, None, None, :], float("-inf")
        )
        return DecodePlan(
            query_rows=self.query_start_loc[index].to(torch.long),
            suffix_blocks=suffix.reshape(-1).contiguous(),
            suffix_mask=mask,
            shared=groups,
        )


def _prefix_groups(
    blocks: torch.Tensor, lens: list[int], block_size: int
) -> list[tuple[list[int], int]]:
    """Groups of rows that start with the same blocks (a shared cached prefix), with how many
    leading blocks they share. Shared blocks are full and lie before every member's query, so a
    group's prefix can be attended once for all its members."""
    by_first: dict[int, list[int]] = {}
    for row, first in enumerate(blocks[:, 0].tolist()):
        by_first.setdefault(first, []).append(row)
    groups = []
    for members in by_first.values():
        if len(members) < 2:
            continue
        sub = blocks[members]
        same = (sub == sub[:1]).all(dim=0).to(torch.int32)
        shared = int(same.cumprod(dim=0).sum())
        shared = min(shared, min((lens[m] - 1) // block_size for m in members))
        if shared > 0:
            groups.append((members, shared))
    return groups


@dataclass(frozen=True)
class DecodeMetadata:
    """A decode-only batch (one query per sequence, row ``i`` of the query is sequence ``i``)
    described by device tensors alone, for a forward that torch.compile traces: host-side
    lists would be baked into the graph, and guarded, recompiling it at every step.
    ``max_seq_len`` is a bound on every sequence's context, not the longest one this step."""

    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_table: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    slot_mapping: torch.Tensor  # [num_seqs] int64, -1 = do not store
    max_seq_len: int
    block_size: int


AttentionMetadata = PagedAttentionMetadata | DecodeMetadata


@dataclass
class SharedPrefix:
    members: torch.Tensor  # [M] decode-row indices (into DecodePlan's rows)
    blocks: torch.Tensor  # [S] the block ids they all start with


@dataclass
class DecodePlan:
    query_rows: torch.Tensor  # [B] rows of the flattened query
    suffix_blocks: torch.Tensor  # [B * R] each row's blocks after its shared prefix, padded
    suffix_mask: torch.Tensor  # [B, 1, 1, R * block_size] additive: 0 visible, -inf not
    shared: list[SharedPrefix]
