"""The one executor interface the engine drives."""

from __future__ import annotations

from abc import ABC, abstractmethod

from worker.sampler import SampledToken
from worker.step_input import StepInput


class Executor(ABC):
    """Runs steps on the replica's ranks. Steps are submitted and their sampled tokens received
    in the same order; up to ``max_in_flight`` steps overlap: with pipeline parallelism each in
    a different stage (and each with requests of its own), or, when ``runs_ahead``, the next
    step is prepared while the current one runs, with the same requests one position on."""

    max_in_flight: int = 1
    runs_ahead: bool = False

    @abstractmethod
    def submit(self, step: StepInput) -> None: ...

    @abstractmethod
    def receive(self) -> list[SampledToken]:
        """The sampled tokens of the oldest submitted step; raises WorkerFailedError if a rank
        died or failed."""

    @abstractmethod
    def shutdown(self) -> None: ...
