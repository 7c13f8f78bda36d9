"""Executors run a step on a replica's ranks: in-process, or one Ray actor per rank."""

from worker.executor.base import Executor
from worker.executor.local import LocalExecutor, OverlappingExecutor

__all__ = ["Executor", "LocalExecutor", "OverlappingExecutor"]
