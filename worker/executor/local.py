"""The in-process executor, for tensor_parallel_size = pipeline_parallel_size = 1."""

from __future__ import annotations

from collections import deque

from worker.executor.base import Executor
from worker.model_runner import ModelRunner
from worker.sampler import SampledToken
from worker.step_input import StepInput


class LocalExecutor(Executor):
    """Runs each step at submission, in the caller's thread."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._done: deque[list[SampledToken]] = deque()

    def submit(self, step: StepInput) -> None:
        sampled = self.runner.execute(step)
        assert sampled is not None, "a single rank always samples"
        self._done.append(sampled)

    def receive(self) -> list[SampledToken]:
        return self._done.popleft()

    def shutdown(self) -> None:
        self._done.clear()
