"""Tensor and pipeline parallelism: rank layout, process groups, and the collectives."""

from worker.parallel.comm import (
    recv_intermediate,
    send_intermediate,
    tp_all_gather,
    tp_all_reduce,
)
from worker.parallel.state import ParallelState, RankGroup, init_parallel
from worker.parallel_config import ParallelConfig

__all__ = [
    "ParallelConfig",
    "ParallelState",
    "RankGroup",
    "init_parallel",
    "recv_intermediate",
    "send_intermediate",
    "tp_all_gather",
    "tp_all_reduce",
]
