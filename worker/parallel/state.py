"""This rank's place in a replica and the process groups it talks through.

Layout for tp = 2, pp = 2 (``rank = pp_rank * tp + tp_rank``, as in vLLM):

              tp_rank 0   tp_rank 1
    stage 0     rank 0      rank 1      ← a TP group: contiguous ranks, one node
    stage 1     rank 2      rank 3
                  ↑ a PP group strides: ranks 0, 2 (and 1, 3)

The state is passed explicitly to the model and its layers rather than kept in a module global:
a layer's sharding is then visible in its constructor, and one process can build models for
several layouts (the tests do).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from worker.parallel_config import ParallelConfig

__all__ = ["ParallelConfig", "ParallelState", "RankGroup", "init_parallel"]

CPU = torch.device("cpu")


@dataclass(frozen=True)
class RankGroup:
    """One set of ranks with two communicators: ``device`` for tensors (NCCL on CUDA, gloo on
    CPU) and ``cpu``, always gloo, for metadata, small objects and barriers (an NCCL barrier
    occupies the GPU and cannot time out cleanly)."""

    ranks: tuple[int, ...]
    device: dist.ProcessGroup
    cpu: dist.ProcessGroup


@dataclass(frozen=True)
class ParallelState:
    """Where this rank sits: its tensor-parallel rank, its pipeline stage, and the groups.

    A state without groups (``single()``, or one built directly for a given rank) is enough to
    build and load that rank's shard of the model, but any collective over a size above 1
    raises: collectives need ``init_parallel``.
    """

    config: ParallelConfig
    tp_rank: int = 0
    pp_rank: int = 0
    device: torch.device = CPU
    world_group: RankGroup | None = None
    tp_group: RankGroup | None = None
    pp_group: RankGroup | None = None

    @classmethod
    def single(cls) -> ParallelState:
        """tp = pp = 1: no torch.distributed at all."""
        return cls(ParallelConfig())

    @property
    def tp_size(self) -> int:
        return self.config.tensor_parallel_size

    @property
    def pp_size(self) -> int:
        return self.config.pipeline_parallel_size

    @property
    def rank(self) -> int:
        return self.config.rank_of(self.pp_rank, self.tp_rank)

    @property
    def world_size(self) -> int:
        return self.config.world_size

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def next_stage_rank(self) -> int:
        """The global rank this one sends its stage output to (same tp_rank, next stage)."""
        return self.config.rank_of(self.pp_rank + 1, self.tp_rank)

    @property
    def prev_stage_rank(self) -> int:
        return self.config.rank_of(self.pp_rank - 1, self.tp_rank)

    def destroy(self) -> None:
        """Tear down every process group of this process (the default one included)."""
        if self.world_group is not None and dist.is_initialized():
            dist.destroy_process_group()


def init_parallel(
    rank: int,
    config: ParallelConfig,
    store: dist.Store,
    backend: str,
    timeout: datetime.timedelta | None = None,
) -> ParallelState:
    """Join the replica's ``config.world_size`` ranks through ``store`` and create every group.

    Called once per process by every rank with the same config; it blocks until all have
    joined. ``backend`` ("nccl" or "gloo") is that of the device groups; the CPU groups are
    always gloo. With "nccl" the caller must have selected this rank's CUDA device first.
    ``timeout`` bounds every collective (torch's default when None).
    """
    world = config.world_size
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world}) for {config}")
    dist.init_process_group(
        backend=backend, world_size=world, rank=rank, store=store, timeout=timeout
    )
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    grid = torch.arange(world).reshape(pp, tp)
    # new_group is collective over the whole world: every rank creates every group, in the same
    # order, and keeps the ones it belongs to.
    world_cpu = dist.new_group(list(range(world)), timeout=timeout, backend="gloo")
    assert dist.group.WORLD is not None and world_cpu is not None
    world_group = RankGroup(tuple(range(world)), dist.group.WORLD, world_cpu)
    tp_groups = [_new_group(grid[i].tolist(), backend, timeout) for i in range(pp)]
    pp_groups = [_new_group(grid[:, i].tolist(), backend, timeout) for i in range(tp)]
    pp_rank, tp_rank = divmod(rank, tp)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    return ParallelState(
        config=config,
        tp_rank=tp_rank,
        pp_rank=pp_rank,
        device=device,
        world_group=world_group,
        tp_group=tp_groups[pp_rank],
        pp_group=pp_groups[tp_rank],
    )


def _new_group(ranks: list[int], backend: str, timeout: datetime.timedelta | None) -> RankGroup:
    device = dist.new_group(ranks, timeout=timeout, backend=backend)
    cpu = dist.new_group(ranks, timeout=timeout, backend="gloo")
    assert device is not None and cpu is not None
    return RankGroup(tuple(ranks), device, cpu)
