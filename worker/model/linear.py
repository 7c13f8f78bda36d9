"""Linear layers sharded across tensor-parallel ranks, filled from checkpoint shards.

Column-parallel layers keep a block of output rows per rank and need no communication;
row-parallel layers keep a block of input columns and all-reduce their partial sums. A
column-parallel layer may stack several checkpoint tensors that read the same input (gate and
up; q, k and v) so that each group is one matmul; each parameter's ``weight_loader`` puts this
rank's rows of every checkpoint tensor in place:

    qkv_proj.weight   rows [0, q)          this rank's q heads     (heads / tp * head_dim)
                      rows [q, q+kv)       this rank's k heads     (kv_heads / tp * head_dim)
                      rows [q+kv, q+2kv)   this rank's v heads

With fewer KV heads than ranks, ``tp / kv_heads`` consecutive ranks share a copy of one KV head,
the one their query heads attend with (tp = 4, 8 query heads, 2 KV heads):

    tp_rank        0      1      2      3
    q heads       0 1    2 3    4 5    6 7
    kv head        0      0      1      1      kv head = tp_rank // (tp / kv_heads)

With a WeightQuantization the weight is int8 or fp8 with a float32 ``weight_scale`` per output
row (worker/model/quantization.py); the scales shard with the weight's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ops
from worker.errors import ModelLoadError
from worker.model.quantization import WeightQuantization
from worker.model.weights import (
    CheckpointTensor,
    ShardId,
    copy_weight,
    default_weight_loader,
    expect_shape,
    is_computed,
    mark_computed,
    set_weight_loader,
)
from worker.parallel.comm import tp_all_reduce
from worker.parallel.state import ParallelState


@dataclass(frozen=True)
class RowShard:
    """Rows ``[src, src + length)`` of a checkpoint tensor with ``total`` rows, kept at rows
    ``[dst, dst + length)`` of this rank's weight (and bias)."""

    total: int
    src: int
    dst: int
    length: int


class QuantizableLinear(nn.Module):
    """Holds ``weight`` [out, in], in the model's dtype or, with ``quantization``, quantized
    with a float32 ``weight_scale`` [out]; parameters start uninitialised for the loader."""

    def __init__(
        self, output_size: int, input_size: int, quantization: WeightQuantization | None
    ) -> None:
        super().__init__()
        self.quantization = quantization
        dtype = None if quantization is None else quantization.dtype
        self.weight = nn.Parameter(
            torch.empty(output_size, input_size, dtype=dtype), requires_grad=False
        )
        self.weight_scale: nn.Parameter | None = None
        if quantization is not None:
            self.weight_scale = nn.Parameter(
                torch.empty(output_size, dtype=torch.float32), requires_grad=False
            )
            if not quantization.prequantized:
                mark_computed(self.weight_scale)

    def fill_weight_rows(self, start: int, block: CheckpointTensor) -> None:
        """Rows ``[start, start + len(block))`` of the weight (and, quantized as it loads,
        their scales) from a checkpoint block."""
        rows = self.weight.data.narrow(0, start, block.shape[0])
        if self.quantization is None or self.weight_scale is None:
            copy_weight(rows, block)
            return
        scales = self.weight_scale.data.narrow(0, start, block.shape[0])
        self.quantization.fill(rows, scales, block)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.weight_scale is None:
            return F.linear(x, self.weight, bias)
        return ops.quant_linear(x, self.weight, self.weight_scale, bias)


class _RowShardedLinear(QuantizableLinear):
    """``y = x W^T (+ b)`` where W (and its scales) holds, for each checkpoint shard id, the
    rows of ``shards``."""

    def __init__(
        self,
        input_size: int,
        shards: dict[ShardId, RowShard],
        bias: bool,
        quantization: WeightQuantization | None,
    ) -> None:
        output_size = sum(shard.length for shard in shards.values())
        super().__init__(output_size, input_size, quantization)
        self.shards = shards
        self.bias: nn.Parameter | None = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
        for param in self.parameters():
            if not is_computed(param):
                set_weight_loader(param, self.weight_loader)

    def weight_loader(
        self, param: nn.Parameter, loaded: CheckpointTensor, shard_id: ShardId
    ) -> None:
        shard = self.shards.get(shard_id)
        if shard is None:
            raise ModelLoadError(
                f"no shard {shard_id!r} in a layer with shards {list(self.shards)}"
            )
        expect_shape(loaded, (shard.total, *param.shape[1:]))
        block = loaded.narrow(0, shard.src, shard.length)
        if param is self.weight:
            self.fill_weight_rows(shard.dst, block)
        else:
            copy_weight(param.data.narrow(0, shard.dst, shard.length), block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


class ColumnParallelLinear(_RowShardedLinear):
    """Output features split evenly across TP ranks; ``forward`` returns this rank's slice of
    the output, with no communication.

    One output size: one checkpoint tensor (shard id None). Several (gate and up): that many
    checkpoint tensors stacked, shard ids 0, 1, ..., each split across ranks on its own so a
    rank's slice of each stays next to the other (``silu(gate) * up`` needs both halves).
    """

    def __init__(
        self,
        input_size: int,
        output_sizes: Sequence[int],
        bias: bool,
        parallel: ParallelState,
        quantization: WeightQuantization | None = None,
    ) -> None:
        tp, rank = parallel.tp_size, parallel.tp_rank
        shards: dict[ShardId, RowShard] = {}
        dst = 0
        for i, size in enumerate(output_sizes):
            local = size // tp
            shards[None if len(output_sizes) == 1 else i] = RowShard(size, rank * local, dst, local)
            dst += local
        super().__init__(input_size, shards, bias, quantization)


class QKVParallelLinear(_RowShardedLinear):
    """Query, key and value projections in one matmul, split by heads across TP ranks; shard
    ids "q", "k", "v". ``num_heads``, ``num_kv_heads``, ``q_size`` and ``kv_size`` are this
    rank's."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        parallel: ParallelState,
        quantization: WeightQuantization | None = None,
    ) -> None:
        tp, rank = parallel.tp_size, parallel.tp_rank
        self.num_heads = num_heads // tp
        self.num_kv_heads = parallel.config.local_kv_heads(num_kv_heads)
        replicas = max(1, tp // num_kv_heads)
        first_kv_head = rank // replicas * self.num_kv_heads
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        total_q, total_kv = num_heads * head_dim, num_kv_heads * head_dim
        kv_src = first_kv_head * head_dim
        super().__init__(
            hidden_size,
            {
                "q": RowShard(total_q, rank * self.q_size, 0, self.q_size),
                "k": RowShard(total_kv, kv_src, self.q_size, self.kv_size),
                "v": RowShard(total_kv, kv_src, self.q_size + self.kv_size, self.kv_size),
            },
            bias,
            quantization,
        )


class RowParallelLinear(QuantizableLinear):
    """Input features split evenly across TP ranks: each rank multiplies its slice of the input
    (the output of a column-parallel layer) and the partial sums are all-reduced. The bias is
    whole on every rank and added once, after the sum; so are the scales of a pre-quantized
    checkpoint, which span whole rows."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool,
        parallel: ParallelState,
        quantization: WeightQuantization | None = None,
    ) -> None:
        super().__init__(output_size, input_size // parallel.tp_size, quantization)
        self.parallel = parallel
        self.input_size = input_size
        set_weight_loader(self.weight, self.weight_loader)
        self.bias: nn.Parameter | None = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            set_weight_loader(self.bias, default_weight_loader)

    def weight_loader(
        self, param: nn.Parameter, loaded: CheckpointTensor, shard_id: ShardId
    ) -> None:
        if shard_id is not None:
            raise ModelLoadError(f"parameter stored whole has no shard {shard_id!r}")
        expect_shape(loaded, (param.shape[0], self.input_size))
        local = param.shape[1]
        self.fill_weight_rows(0, loaded.narrow(1, self.parallel.tp_rank * local, local))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel.tp_size == 1:
            return self.matmul(x, self.bias)
        y = tp_all_reduce(self.matmul(x, None), self.parallel)
        return y if self.bias is None else y + self.bias
