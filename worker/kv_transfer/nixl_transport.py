"""KV transfer over NIXL (UCX backend), the library vLLM, SGLang, Dynamo and llm-d move KV
with: the reader READs registered memory of the source's process in place, device memory on a
GPU, host memory between processes on a CPU. Each side registers its cache and a staging arena
once; a reader loads a source agent's metadata from the handle the first time it reads from it.

A block of one layer is two regions of the cache [2, num_blocks, block_size, H, D] (keys, then
values), and every region costs the transport an operation of its own (about 12 us through
UCX's cross-memory attach here, for a few KiB each). So the source packs an exported request's
blocks into its staging arena (one index_select per layer, straight into the arena):

    staged:  layer 0 [K of blocks 0..N-1 | V of blocks 0..N-1] layer 1 [...] ...

and the reader READs two regions per layer into its own arena, then copies them into its
blocks. Where an arena is full, the blocks are read in place instead, consecutive runs merged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worker.kv_transfer.handle import KVSource
from worker.kv_transfer.staging import StagingArena
from worker.kv_transfer.transport import KVTransferError, KVTransport

_POLL_S = 0.0001
STAGING_BYTES = 64 << 20  # at most; never more than the cache itself
_READING = "read"  # the reader's own arena range, for the length of one fetch


@dataclass(frozen=True, slots=True)
class NixlSource(KVSource):
    """``staged``: (offset in the source's arena, the block ids packed there in row order), or
    None when the blocks are read in place."""

    agent_name: str
    agent_metadata: bytes
    layer_addresses: tuple[int, ...]
    num_blocks: int
    block_bytes: int
    device_id: int
    staging_address: int
    staged: tuple[int, tuple[int, ...]] | None = None


class NixlTransport(KVTransport):
    name = "nixl"
    holds_blocks = True

    def __init__(self, kv_caches: list[torch.Tensor], agent_name: str) -> None:
        from nixl_cu12 import nixl_agent, nixl_agent_config

        self.kv_caches = kv_caches
        first = kv_caches[0]
        cache_bytes = sum(c.numel() * c.element_size() for c in kv_caches)
        self.staging = torch.zeros(
            min(STAGING_BYTES, cache_bytes), dtype=torch.uint8, device=first.device
        )
        self.arena = StagingArena(self.staging.numel())
        self.agent = nixl_agent(agent_name, nixl_agent_config(backends=["UCX"]))
        self._registered = self.agent.register_memory([*kv_caches, self.staging])
        self._mem = "VRAM" if first.is_cuda else "DRAM"
        self._source = NixlSource(
            self.name,
            agent_name,
            self.agent.get_agent_metadata(),
            tuple(c.data_ptr() for c in kv_caches),
            first.shape[1],
            first[0, 0].numel() * first.element_size(),
            max(first.get_device(), 0),
            self.staging.data_ptr(),
        )
        self._remote_agents: dict[str, str] = {}  # source agent name -> name NIXL knows it by

    def export(self, block_ids: Sequence[int], key: str) -> NixlSource:
        layers, count = len(self.kv_caches), len(block_ids)
        layer_bytes = 2 * count * self._source.block_bytes
        offset = self.arena.allocate(key, layers * layer_bytes) if count else None
        if offset is None:
            return self._source  # read in place
        index = torch.tensor(list(block_ids), dtype=torch.long, device=self.staging.device)
        for layer, cache in enumerate(self.kv_caches):
            start = offset + layer * layer_bytes
            out = self._view(start, count, cache).view(torch.uint8)
            torch.index_select(cache.view(torch.uint8), 1, index, out=out)  # bytes: any dtype
        return dataclasses.replace(self._source, staged=(offset, tuple(block_ids)))

    def _view(self, start: int, count: int, cache: torch.Tensor) -> torch.Tensor:
        """Arena bytes from ``start`` as [2, count, block_size, H, D] of the cache's dtype."""
        length = 2 * count * self._source.block_bytes
        raw = self.staging[start : start + length]
        return raw.view(cache.dtype).view(2, count, *cache.shape[2:])

    def release(self, key: str) -> None:
        self.arena.free(key)

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
        if source.staged is None:
            runs = _joint_runs(src_block_ids, dst_block_ids)
            local = _block_regions(mine, [(d, n) for _, d, n in runs])
            remote = _block_regions(source, [(s, n) for s, _, n in runs])
            self._read(source, local, remote, timeout_s)
            return
        self._fetch_staged(source, src_block_ids, dst_block_ids, timeout_s)

    def _fetch_staged(
        self,
        source: NixlSource,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        assert source.staged is not None
        offset, staged_ids = source.staged
        row_of = {block_id: row for row, block_id in enumerate(staged_ids)}
        if any(b not in row_of for b in src_block_ids):
            raise KVTransferError("blocks asked for were not staged by the source")
        rows = [row_of[b] for b in src_block_ids]
        first, count = rows[0], len(rows)
        if rows != list(range(first, first + count)):
            raise KVTransferError("the blocks asked for are not consecutive in the source")
        layers, size, staged = len(self.kv_caches), self._source.block_bytes, len(staged_ids)
        local_offset = self.arena.allocate(_READING, layers * 2 * count * size)
        if local_offset is None:
            raise KVTransferError("this rank's staging arena is full")
        try:
            # Keys, then values, of rows first..first+count of each layer: two regions a layer.
            remote = [
                (source.staging_address + offset + ((2 * layer + half) * staged + first) * size,
                 count * size, source.device_id)
                for layer in range(layers) for half in (0, 1)
            ]  # fmt: skip
            base = self.staging.data_ptr() + local_offset
            local = [
                (base + (2 * layer + half) * count * size, count * size, self._source.device_id)
                for layer in range(layers)
                for half in (0, 1)
            ]
            self._read(source, np.array(local, np.uint64), np.array(remote, np.uint64), timeout_s)
            dst = torch.tensor(list(dst_block_ids), dtype=torch.long, device=self.staging.device)
            for layer, cache in enumerate(self.kv_caches):
                start = local_offset + layer * 2 * count * size
                # As bytes: index_copy_ has no float8 kernel on a CPU, and a copy is a copy.
                blocks = self._view(start, count, cache).view(torch.uint8)
                cache.view(torch.uint8).index_copy_(1, dst, blocks)
        finally:
            self.arena.free(_READING)

    def _read(
        self, source: NixlSource, local: np.ndarray, remote: np.ndarray, timeout_s: float
    ) -> None:
        """READ ``remote`` regions of the source into ``local`` ones, pairwise."""
        agent, peer = self.agent, self._remote_agent(source)
        try:
            handle = agent.initialize_xfer(
                "READ",
                agent.get_xfer_descs(local, self._mem),
                agent.get_xfer_descs(remote, self._mem),
                peer,
            )
        except Exception as exc:  # nixlBind raises its own types for an unreachable peer
            self._forget(source)
            raise KVTransferError(f"could not start a NIXL read from {peer}: {exc}") from exc
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
            raise KVTransferError(f"NIXL read from {peer} {why}")

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


def _block_regions(side: NixlSource, runs: list[tuple[int, int]]) -> np.ndarray:
    """(address, length, device) rows for the runs' (first block, count) keys and values in
    every layer of a cache read in place."""
    size = side.block_bytes
    rows = [
        (base + (half * side.num_blocks + first) * size, count * size, side.device_id)
        for base in side.layer_addresses
        for half in (0, 1)
        for first, count in runs
    ]
    return np.array(rows, dtype=np.uint64)
