"""How a replica's ranks split one model: tensor-parallel size, pipeline stages, layer split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # worker.model_config imports this module; importing it here would be a cycle
    from worker.model_config import ModelConfig


@dataclass(frozen=True)
class ParallelConfig:
    """``tensor_parallel_size`` x ``pipeline_parallel_size`` ranks serve one model.

    Ranks are laid out as vLLM does: ``rank = pp_rank * tp + tp_rank``, so the ranks of one
    tensor-parallel group are contiguous (they belong on one node) and a pipeline group strides
    across them. ``layer_split`` gives the number of layers of each stage; without it the layers
    are split evenly (see ``stage_layers``).

    The checks that need no model run at construction; ``validate`` adds those against a model.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    layer_split: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        split = self.layer_split
        if split is None:
            return
        if len(split) != self.pipeline_parallel_size:
            raise ValueError(
                f"layer_split {split} has {len(split)} entries but pipeline_parallel_size is "
                f"{self.pipeline_parallel_size}: give one layer count per stage"
            )
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in split):
            raise ValueError(
                f"layer_split {split}: every stage needs a positive whole number of layers"
            )

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def rank_of(self, pp_rank: int, tp_rank: int) -> int:
        """The global rank of tensor-parallel rank ``tp_rank`` in stage ``pp_rank``."""
        return pp_rank * self.tensor_parallel_size + tp_rank

    def validate(self, model: ModelConfig) -> None:
        """Raise ValueError, saying what to change, if ``model`` cannot be split this way."""
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        heads, kv_heads = model.num_attention_heads, model.num_key_value_heads
        if heads % tp:
            raise ValueError(
                f"num_attention_heads {heads} is not divisible by tensor_parallel_size {tp}"
            )
        if kv_heads % tp and tp % kv_heads:
            raise ValueError(
                f"num_key_value_heads {kv_heads} and tensor_parallel_size {tp} do not fit: "
                f"one must be a multiple of the other (each rank holds kv_heads / tp heads, or "
                f"tp / kv_heads ranks share a copy of one head)"
            )
        if model.intermediate_size % tp:
            raise ValueError(
                f"intermediate_size {model.intermediate_size} is not divisible by "
                f"tensor_parallel_size {tp}"
            )
        layers = model.num_hidden_layers
        if pp > layers:
            raise ValueError(
                f"pipeline_parallel_size {pp} exceeds num_hidden_layers {layers}: "
                f"every stage needs at least one layer"
            )
        if self.layer_split is not None and sum(self.layer_split) != layers:
            raise ValueError(
                f"layer_split {self.layer_split} sums to {sum(self.layer_split)} but the model "
                f"has {layers} layers"
            )

    def stage_layers(self, pp_rank: int, num_layers: int) -> range:
        """The global indices of the layers stage ``pp_rank`` runs.

        Without ``layer_split`` the split is even and the ``num_layers % pp`` leftover layers
        go one each to the earliest stages: the last stage also computes logits and samples,
        so it is the one that should not get an extra layer (5 layers, pp 2 → 3 + 2).
        """
        if not 0 <= pp_rank < self.pipeline_parallel_size:
            raise ValueError(f"pp_rank {pp_rank} outside [0, {self.pipeline_parallel_size})")
        sizes = self.layer_split
        if sizes is None:
            base, extra = divmod(num_layers, self.pipeline_parallel_size)
            sizes = tuple(
                base + (1 if i < extra else 0) for i in range(self.pipeline_parallel_size)
            )
        start = sum(sizes[:pp_rank])
        return range(start, start + sizes[pp_rank])

    def local_kv_heads(self, num_kv_heads: int) -> int:
        """KV heads each rank holds, which sizes its KV cache: ``num_kv_heads / tp``, or one
        replicated head when there are fewer KV heads than ranks."""
        return max(1, num_kv_heads // self.tensor_parallel_size)
