"""The transport half of bench.kv_transfer: one prompt's KV blocks moved between two processes
by each transport, against a same-process copy of the same bytes; and the prefill of that
prompt, to say what the transfer costs beside it.

For each round, each transport, the interval runs from the reader asking the source process for
the blocks to the blocks sitting in the reader's cache: for NIXL the handle's metadata round
trip and the READ; for the packed transport the source's gather, the bytes through a pipe, and
the scatter. The source and the reader hold the engine's own cache layout for the demo model,
and move the blocks a 1,024-token prompt holds, scattered over both pools.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from worker.config import EngineConfig
from worker.engine import Engine
from worker.kv_transfer.transport import KVTransport, make_transport, nixl_available
from worker.sampling_params import SamplingParams

NUM_BLOCKS = 512  # per layer in each process's cache: room for the prompt and scatter


def transports() -> list[str]:
    return ["nixl", "packed"] if nixl_available() else ["packed"]


def cache_shape(engine: Engine) -> tuple[int, ...]:
    runner = engine.executor.runner  # type: ignore[attr-defined]
    return tuple(runner.kv_caches[0].shape[2:])


def _caches(
    num_layers: int, shape: Sequence[int], dtype: torch.dtype, fill: bool
) -> list[torch.Tensor]:
    make = torch.randn if fill else torch.zeros
    return [make(2, NUM_BLOCKS, *shape, dtype=dtype) for _ in range(num_layers)]


def _source(conn: Connection, kind: str, num_layers: int, shape: Sequence[int], dtype: str) -> None:
    """The prefill side: a cache full of KV, answering export requests until told to stop."""
    torch.set_num_threads(1)
    caches = _caches(num_layers, shape, getattr(torch, dtype), fill=True)
    transport = make_transport(kind, caches, f"bench-source-{kind}")
    conn.send("ready")
    while (block_ids := conn.recv()) is not None:
        if block_ids == "checksum":
            conn.send([c.double().sum().item() for c in caches])
            continue
        conn.send(transport.export(block_ids, "bench"))
        conn.recv()  # the reader is done
        transport.release("bench")
    transport.close()


class TransferRig:
    """A source process per transport and this process's reading end of each."""

    def __init__(self, kinds: list[str], num_layers: int, shape: Sequence[int], dtype: torch.dtype):
        context = multiprocessing.get_context("spawn")
        self.num_layers, self.shape, self.dtype = num_layers, tuple(shape), dtype
        self.ends: dict[
            str, tuple[Connection, multiprocessing.process.BaseProcess, KVTransport]
        ] = {}
        for kind in kinds:
            ours, theirs = context.Pipe()
            name = str(dtype).removeprefix("torch.")
            process = context.Process(
                target=_source, args=(theirs, kind, num_layers, shape, name), daemon=True
            )
            process.start()
            assert ours.recv() == "ready"
            caches = _caches(num_layers, shape, dtype, fill=False)
            self.ends[kind] = (ours, process, make_transport(kind, caches, f"bench-reader-{kind}"))

    def move(self, kind: str, src: list[int], dst: list[int]) -> float:
        """Seconds to bring ``src`` blocks of the source into ``dst`` blocks here."""
        conn, _, transport = self.ends[kind]
        start = time.perf_counter()
        conn.send(src)
        transport.fetch(conn.recv(), src, dst, timeout_s=30.0)
        elapsed = time.perf_counter() - start
        conn.send("done")  # the source releases what it staged (after the pull, as a lease)
        return elapsed

    def close(self) -> None:
        for conn, process, transport in self.ends.values():
            conn.send(None)
            process.join(timeout=30)
            transport.close()


def memcpy_s(num_bytes: int, dtype: torch.dtype) -> float:
    """A same-process copy of ``num_bytes``: the baseline."""
    src = torch.randn(num_bytes // dtype.itemsize, dtype=dtype)
    dst = torch.empty_like(src)
    start = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - start


def scattered_blocks(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Source and destination block ids scattered at random over each pool, as long-running
    pools hand them out (the worst case for NIXL: no two blocks merge into one region)."""
    rng = random.Random(seed)
    return rng.sample(range(NUM_BLOCKS), count), rng.sample(range(NUM_BLOCKS), count)


def prefill_s(engine: Engine, prompt_len: int, seed: int) -> float:
    """Seconds to prefill a fresh ``prompt_len``-token prompt (no prefix-cache hit)."""
    rng = random.Random(seed)
    prompt = [rng.randrange(100, engine.model_config.vocab_size) for _ in range(prompt_len)]
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    engine.add_request(engine.make_request(f"prefill-{seed}", prompt, params))
    start = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    return time.perf_counter() - start


def demo_engine(model: Path) -> Engine:
    return Engine(EngineConfig(model=model, num_kv_blocks=NUM_BLOCKS, max_num_batched_tokens=2048))


def median(values: list[float]) -> float:
    return statistics.median(values)
