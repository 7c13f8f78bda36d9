"""Linear layers whose checkpoint tensors may arrive in several shards.

Q, K and V (and gate and up) read the same input, so each group is stored as one weight and
computed with one matmul; the checkpoint still holds them separately, and each parameter's
``weight_loader`` puts every shard in its rows:

    qkv_proj.weight   rows [0, q)       q_proj   (num_heads * head_dim)
                      rows [q, q+kv)    k_proj   (num_kv_heads * head_dim)
                      rows [q+kv, q+2kv) v_proj
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker.errors import ModelLoadError
from worker.model.weights import ShardId, copy_weight, default_weight_loader, set_weight_loader


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with parameters left uninitialised for the loader to fill."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.bias: nn.Parameter | None = None
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
        for param in self.parameters():
            set_weight_loader(param, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        default_weight_loader(param, loaded, shard_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output dimension; checkpoint shard
    ``i`` (an int) holds rows ``sum(output_sizes[:i]) : sum(output_sizes[:i + 1])``."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ModelLoadError(f"no shard {shard_id!r} in a merged layer")
        start = sum(self.output_sizes[:shard_id])
        copy_weight(param.data.narrow(0, start, self.output_sizes[shard_id]), loaded)


class QKVLinear(MergedLinear):
    """Query, key and value projections in one matmul; shards are named "q", "k" and "v"."""

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool
    ) -> None:
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        super().__init__(hidden_size, [self.q_size, self.kv_size, self.kv_size], bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if shard_id not in ("q", "k", "v"):
            raise ModelLoadError(f"no shard {shard_id!r} in a q/k/v layer")
        super().weight_loader(param, loaded, "qkv".index(shard_id))
