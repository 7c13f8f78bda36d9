"""The one executor interface the engine drives."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from worker.kv_transfer import KVSource
from worker.sampler import RowTokens
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
    def receive(self) -> list[RowTokens]:
        """The sampled tokens of the oldest submitted step; raises WorkerFailedError if a rank
        died or failed."""

    @abstractmethod
    def shutdown(self) -> None: ...

    # KV transfer between replicas (worker/kv_transfer): each rank moves its own shard.

    @abstractmethod
    def open_kv_transport(self, kind: str, agent_name: str) -> bool:
        """Open each rank's transport (see worker.kv_transfer.transport.make_transport);
        whether a reader reads the source blocks in place (so they must stay leased)."""

    @abstractmethod
    def export_kv(self, block_ids: Sequence[int], key: str) -> list[KVSource]:
        """Each rank's source for ``block_ids``, in rank order, held under ``key``."""

    @abstractmethod
    def release_export(self, key: str) -> None:
        """Each rank drops what its export under ``key`` holds."""

    @abstractmethod
    def fetch_kv(
        self,
        sources: Sequence[KVSource],
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        """Every rank copies its source's blocks into its own; KVTransferError if any fails.
        Called only while no step is in flight."""
