"""Tensor and pipeline parallelism: rank layout, process groups, and the collectives."""

from worker.parallel.comm import (
    recv_intermediate,
    send_intermediate,
    tp_all_gather,
    tp_all_reduce,
)
from worker.parallel.config import ParallelConfig
from worker.parallel.state import ParallelState, RankGroup, init_parallel

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
