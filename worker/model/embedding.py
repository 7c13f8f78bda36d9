"""Token embedding and LM head, their vocabulary split across tensor-parallel ranks.

Each rank keeps ``ceil(vocab / tp)`` consecutive rows; the vocabulary is padded up to a multiple
of tp and the padding rows are zero (vocab 10, tp 4: rows 0-2, 3-5, 6-8, 9 + 2 padding). Padded
logits are cut off before anyone can sample them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worker.errors import ModelLoadError
from worker.model.weights import (
    CheckpointTensor,
    ShardId,
    copy_weight,
    expect_shape,
    set_weight_loader,
)
from worker.parallel.comm import tp_all_gather, tp_all_reduce
from worker.parallel.state import ParallelState


class VocabParallelEmbedding(nn.Module):
    """Looks up one row per token id. A rank returns zeros for ids outside its rows and the
    all-reduce fills them in, so each row is summed with zeros only and the result is exact.

    The table starts uninitialised: the loader fills it, and a random init of a large
    vocabulary would only cost start-up time.
    """

    def __init__(self, vocab_size: int, hidden_size: int, parallel: ParallelState) -> None:
        super().__init__()
        self.parallel = parallel
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.rows_per_rank = math.ceil(vocab_size / parallel.tp_size)
        self.vocab_start = parallel.tp_rank * self.rows_per_rank
        # Real (not padding) rows of this rank: the last ranks may have fewer, or none.
        self.num_real_rows = max(0, min(self.rows_per_rank, vocab_size - self.vocab_start))
        self.weight = nn.Parameter(
            torch.empty(self.rows_per_rank, hidden_size), requires_grad=False
        )
        set_weight_loader(self.weight, self.weight_loader)

    def weight_loader(
        self, param: nn.Parameter, loaded: CheckpointTensor, shard_id: ShardId
    ) -> None:
        """Also the loader of a tied LM head: both are the [vocab, hidden] table."""
        if shard_id is not None:
            raise ModelLoadError(f"an embedding table has no shard {shard_id!r}")
        expect_shape(loaded, (self.vocab_size, self.hidden_size))
        real = self.num_real_rows
        param.data[real:].zero_()
        if real:
            copy_weight(param.data[:real], loaded.narrow(0, self.vocab_start, real))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local_ids = input_ids - self.vocab_start
        outside = (local_ids < 0) | (local_ids >= self.rows_per_rank)
        hidden = F.embedding(local_ids.masked_fill(outside, 0), self.weight)
        hidden.masked_fill_(outside.unsqueeze(-1), 0)
        return tp_all_reduce(hidden, self.parallel)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection, split by vocabulary rows like the embedding table (and loaded the
    same way, which a tied head needs)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise TypeError("the LM head is not an embedding: call logits()")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [N, hidden] → float32 logits [N, vocab_size] for the whole vocabulary,
        on every TP rank."""
        logits = tp_all_gather(F.linear(hidden, self.weight), self.parallel)
        if logits.shape[-1] != self.vocab_size:
            logits = logits[..., : self.vocab_size].contiguous()
        return logits.float()
