"""One rank of a replica as a Ray actor: joins the process groups, loads its shard, runs steps."""

from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from worker.executor.control import ControlClient, RankFailure
from worker.executor.kv_commands import Export, Fetch, OpenTransport, RankTransfers, Release
from worker.model.loader import load_model
from worker.model_config import ModelConfig
from worker.model_runner import ModelRunner
from worker.parallel.state import ParallelConfig, init_parallel

_log = logging.getLogger(__name__)


class RankWorker:
    """Built on every rank at once: the constructors meet in ``init_process_group``."""

    def __init__(
        self,
        model_dir: str,
        dtype: str,
        parallel: ParallelConfig,
        rank: int,
        store_address: tuple[str, int],
        num_blocks: int,
        block_size: int,
        load_format: str = "safetensors",
        seed: int = 0,
        kv_cache_dtype: str = "auto",
        quantization: str | None = None,
    ) -> None:
        self.rank = rank
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            torch.cuda.set_device(0)  # Ray gives each rank actor exactly one visible GPU
        store = dist.TCPStore(
            store_address[0],
            store_address[1],
            is_master=False,
            timeout=datetime.timedelta(seconds=120),
        )
        self.state = init_parallel(rank, parallel, store, "nccl" if device == "cuda" else "gloo")
        config = ModelConfig.from_dir(Path(model_dir), dtype)
        model = load_model(
            Path(model_dir),
            config,
            self.state,
            device,
            load_format=load_format,
            seed=seed,
            quantization=quantization,
        )
        self.runner = ModelRunner(model, config, num_blocks, block_size, self.state, kv_cache_dtype)

    def pid(self) -> int:
        return os.getpid()

    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.runner.model.parameters())

    def serve(self, control_address: tuple[str, int], key: bytes) -> None:
        """Run steps (and KV-transfer commands, each answered) as the driver sends them, until
        it sends None. A failed step is reported to the driver, then this rank stops: the
        replica has to be rebuilt anyway. ``key`` authenticates the control channel's frames
        (worker/executor/control.py)."""
        client = ControlClient(control_address, self.rank, key)
        transfers = RankTransfers(self.rank, self.runner.kv_caches)
        try:
            while (step := client.receive()) is not None:
                if isinstance(step, OpenTransport | Export | Release | Fetch):
                    client.send(transfers.run(step))
                    continue
                start = time.perf_counter()
                sampled = self.runner.execute(step)
                if sampled is not None:
                    client.send((sampled, time.perf_counter() - start))
        except Exception as exc:
            _log.exception("rank %d failed", self.rank)
            client.send(RankFailure(self.rank, repr(exc)))
            raise
        finally:
            transfers.close()
            client.close()
