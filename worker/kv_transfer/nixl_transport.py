"""KV transfer over NIXL (UCX backend), the library vLLM, SGLang, Dynamo and llm-d move KV
with: the reader READs the source blocks in place, device memory on a GPU, host memory between
processes on a CPU. The source registers its cache once; a reader loads its agent's metadata
from the handle the first time it reads from it.

One block of one layer is two regions of the cache tensor [2, num_blocks, block_size, H, D]:

    keys   at base + (0 * num_blocks + block_id) * block_bytes
    values at base + (1 * num_blocks + block_id) * block_bytes

and runs of consecutive blocks on both sides become one descriptor each.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worker.kv_transfer.handle import KVSource
from worker.kv_transfer.transport import KVTransferError, KVTransport

_POLL_S = 0.0002


@dataclass(frozen=True, slots=True)
class NixlSource(KVSource):
    agent_name: str
    agent_metadata: bytes
    layer_addresses: tuple[int, ...]
    num_blocks: int
    block_bytes: int
    device_id: int


class NixlTransport(KVTransport):
    name = "nixl"
    holds_blocks = True

    def __init__(self, kv_caches: list[torch.Tensor], agent_name: str) -> None:
        from nixl_cu12 import nixl_agent, nixl_agent_config

        self.kv_caches = kv_caches
        self.agent = nixl_agent(agent_name, nixl_agent_config(backends=["UCX"]))
        self._registered = self.agent.register_memory(kv_caches)
        first = kv_caches[0]
        self._mem = "VRAM" if first.is_cuda else "DRAM"
        self._device_id = max(first.get_device(), 0)
        self._source = NixlSource(
            self.name,
            agent_name,
            self.agent.get_agent_metadata(),
            tuple(c.data_ptr() for c in kv_caches),
            first.shape[1],
            first[0, 0].numel() * first.element_size(),
            self._device_id,
        )
        self._remote_agents: dict[str, str] = {}  # source agent name -> name NIXL knows it by

    def export(self, block_ids: Sequence[int]) -> NixlSource:
        return self._source

    def fetch(
        self,
        source: KVSource,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        if not isinstance(source, NixlSource):
            raise KVTransferError(f"a {source.transport} source reached the NIXL transport")
        mine = self._source
        if len(source.layer_addresses) != len(mine.layer_addresses):
            raise KVTransferError(
                f"the source has {len(source.layer_addresses)} layers, this rank "
                f"{len(mine.layer_addresses)}"
            )
        if source.block_bytes != mine.block_bytes:
            raise KVTransferError(
                f"source blocks are {source.block_bytes} bytes, this rank's {mine.block_bytes}"
            )
        if not src_block_ids:
            return
        remote = self._remote_agent(source)
        runs = _joint_runs(src_block_ids, dst_block_ids)
        agent = self.agent
        local_descs = _descriptors(mine, [(dst, n) for _, dst, n in runs])
        remote_descs = _descriptors(source, [(src, n) for src, _, n in runs])
        local = agent.get_xfer_descs(local_descs, self._mem)
        far = agent.get_xfer_descs(remote_descs, self._mem)
        try:
            handle = agent.initialize_xfer("READ", local, far, remote)
        except Exception as exc:  # nixlBind raises its own types for an unreachable peer
            self._forget(source)
            raise KVTransferError(f"could not start a NIXL read from {remote}: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        try:
            state = agent.transfer(handle)
            while state == "PROC" and time.monotonic() < deadline:
                time.sleep(_POLL_S)
                state = agent.check_xfer_state(handle)
        except Exception as exc:  # the peer went away in the middle, say
            state = f"ERR ({exc})"
        # A read still in flight cannot always be released; NIXL then keeps it.
        with contextlib.suppress(Exception):
            agent.release_xfer_handle(handle)
        if state != "DONE":
            self._forget(source)
            why = f"timed out after {timeout_s} s" if state == "PROC" else f"failed: {state}"
            raise KVTransferError(f"NIXL read from {remote} {why}")

    def close(self) -> None:
        for name in self._remote_agents.values():
            with contextlib.suppress(Exception):
                self.agent.remove_remote_agent(name)
        self._remote_agents.clear()
        self.agent.deregister_memory(self._registered)

    def _remote_agent(self, source: NixlSource) -> str:
        name = self._remote_agents.get(source.agent_name)
        if name is None:
            try:
                loaded = self.agent.add_remote_agent(source.agent_metadata)
            except Exception as exc:
                raise KVTransferError(
                    f"could not load NIXL agent {source.agent_name}: {exc}"
                ) from exc
            name = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
            self._remote_agents[source.agent_name] = name
        return name

    def _forget(self, source: NixlSource) -> None:
        """After a failure the peer may be gone; the next read from it loads it afresh."""
        name = self._remote_agents.pop(source.agent_name, None)
        if name is not None:
            with contextlib.suppress(Exception):
                self.agent.remove_remote_agent(name)


def _joint_runs(src: Sequence[int], dst: Sequence[int]) -> list[tuple[int, int, int]]:
    """(first source block, first destination block, count) for each run that is consecutive
    on both sides: the two descriptor lists must pair up region by region."""
    runs: list[tuple[int, int, int]] = []
    for s, d in zip(src, dst, strict=True):
        if runs and runs[-1][0] + runs[-1][2] == s and runs[-1][1] + runs[-1][2] == d:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((s, d, 1))
    return runs


def _descriptors(side: NixlSource, runs: list[tuple[int, int]]) -> np.ndarray:
    """(address, length, device) rows for the runs' (first block, count) keys and values in
    every layer."""
    size = side.block_bytes
    rows = [
        (base + (half * side.num_blocks + first) * size, count * size, side.device_id)
        for base in side.layer_addresses
        for half in (0, 1)
        for first, count in runs
    ]
    return np.array(rows, dtype=np.uint64)
