"""The multi-rank executor: one Ray actor per rank, driven over the control channel."""

from __future__ import annotations

import datetime
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import ray
import torch
import torch.distributed as dist
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from worker.config import EngineConfig
from worker.errors import WorkerFailedError
from worker.executor.base import Executor
from worker.executor.control import ControlServer
from worker.executor.kv_commands import Export, Fetch, KVCommand, KVReply, OpenTransport, Release
from worker.executor.rank_worker import RankWorker
from worker.kv_transfer import KVSource
from worker.kv_transfer.transport import KVTransferError
from worker.sampler import RowTokens
from worker.step_input import StepInput

_START_TIMEOUT_S = 300.0


class RayExecutor(Executor):
    """Ranks are laid out as in vLLM: rank = pp_rank * tp + tp_rank. Each pipeline stage's TP
    ranks share one node (a STRICT_PACK placement group per stage, or one for the whole replica
    with placement "pack"); stages may land on different nodes. The sampling rank is the last
    stage's first TP rank. Up to pp steps are in flight, one per stage."""

    def __init__(self, config: EngineConfig, num_blocks: int) -> None:
        parallel = config.parallel
        self.tp, self.pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
        self.world_size = self.tp * self.pp
        self.max_in_flight = self.pp
        self.sampling_rank = (self.pp - 1) * self.tp
        self.step_timeout_s = config.step_timeout_s
        self.rank_execute_s = 0.0  # the sampling rank's own time in steps; the rest is dispatch
        # Step results that arrived while the driver waited for the ranks' KV replies.
        self._early: deque[Any] = deque()
        host = ray.util.get_node_ip_address()
        self._store = dist.TCPStore(
            host, 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=120)
        )
        self._control = ControlServer(host)
        self._gpu = config.accelerator == "gpu" or (
            config.accelerator == "auto" and torch.cuda.is_available()
        )
        self._custom = dict(config.ray_resources)  # custom Ray resources each rank asks for
        self._groups = self._placement_groups(config.placement)
        resource: dict[str, Any] = {"num_gpus": 1} if self._gpu else {"num_cpus": 1}
        if self._custom:
            resource["resources"] = self._custom
        # Two threads: serve() runs for the replica's life; pid() and param_bytes() still answer.
        remote_worker = ray.remote(RankWorker)
        self.workers: list[Any] = []
        for rank in range(self.world_size):
            group, bundle = self._bundle_of(rank)
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=bundle)
            self.workers.append(
                remote_worker.options(
                    scheduling_strategy=strategy, max_concurrency=2, **resource
                ).remote(
                    str(config.model),
                    config.dtype,
                    parallel,
                    rank,
                    (host, self._store.port),
                    num_blocks,
                    config.block_size,
                    config.load_format,
                    config.seed,
                    config.kv_cache_dtype,
                    config.quantization,
                )
            )
        control = self._control
        self._loops = [w.serve.remote(control.address, control.key) for w in self.workers]
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._control.accept(self.world_size, timeout_s=1.0):
            self._raise_start_failure()
            if time.monotonic() > deadline:
                missing = self._control.missing(self.world_size)
                raise WorkerFailedError(f"ranks {missing} did not start in {_START_TIMEOUT_S} s")

    def submit(self, step: StepInput) -> None:
        self._control.broadcast(step)

    def receive(self) -> list[RowTokens]:
        if self._early:
            sampled, execute_s = self._early.popleft()
        else:
            sampled, execute_s = self._control.receive(self.sampling_rank, self.step_timeout_s)
        self.rank_execute_s += execute_s
        return list(sampled)

    def open_kv_transport(self, kind: str, agent_name: str) -> bool:
        return bool(self._command(OpenTransport(kind, agent_name))[0])

    def export_kv(self, block_ids: Sequence[int], key: str) -> list[KVSource]:
        return list(self._command(Export(tuple(block_ids), key)))

    def release_export(self, key: str) -> None:
        self._command(Release(key))

    def fetch_kv(
        self,
        sources: Sequence[KVSource],
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        if len(sources) != self.world_size:
            raise KVTransferError(
                f"the source has {len(sources)} ranks, this replica {self.world_size}"
            )
        command = Fetch(tuple(sources), tuple(src_block_ids), tuple(dst_block_ids), timeout_s)
        self._command(command)

    def _command(self, command: KVCommand) -> list[Any]:
        """Every rank runs ``command``; their values in rank order. KVTransferError names
        each rank that failed. Step results the sampling rank sends meanwhile are kept for
        ``receive``."""
        self._control.broadcast(command)
        replies: dict[int, KVReply] = {}
        while len(replies) < self.world_size:
            rank, message = self._control.receive_any(self.step_timeout_s)
            if isinstance(message, KVReply):
                replies[rank] = message
            elif rank == self.sampling_rank:
                self._early.append(message)
            else:
                raise WorkerFailedError(f"rank {rank} sent an unexpected {type(message).__name__}")
        failed = [f"rank {r}: {replies[r].error}" for r in sorted(replies) if replies[r].error]
        if failed:
            raise KVTransferError("; ".join(failed))
        return [replies[rank].value for rank in range(self.world_size)]

    def shutdown(self) -> None:
        try:
            self._control.broadcast(None)
            ray.wait(self._loops, num_returns=len(self._loops), timeout=10)
        except WorkerFailedError:
            pass  # a dead rank is why we are shutting down; the rest are killed below
        for worker in self.workers:
            ray.kill(worker)
        for group in self._groups:
            remove_placement_group(group)
        self._control.close()

    def _placement_groups(self, placement: str) -> list[PlacementGroup]:
        bundle = {"GPU" if self._gpu else "CPU": 1, **self._custom}
        # "spread": one group per stage, so only a stage's TP ranks must share a node.
        sizes = [self.world_size] if placement == "pack" else [self.tp] * self.pp
        groups = [placement_group([bundle] * n, strategy="STRICT_PACK") for n in sizes]
        ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=120)
        if len(ready) < len(groups):
            raise WorkerFailedError(
                f"the cluster cannot place {self.world_size} ranks ({', '.join(bundle)}) for "
                "this replica"
            )
        return groups

    def _bundle_of(self, rank: int) -> tuple[PlacementGroup, int]:
        if len(self._groups) == 1:
            return self._groups[0], rank
        return self._groups[rank // self.tp], rank % self.tp

    def _raise_start_failure(self) -> None:
        """A rank that crashed while starting says why through its serve() result."""
        done, _ = ray.wait(self._loops, num_returns=len(self._loops), timeout=0)
        for ref in done:
            try:
                ray.get(ref)
            except Exception as exc:
                self.shutdown()
                raise WorkerFailedError(f"a rank failed to start: {exc}") from exc
