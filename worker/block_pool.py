"""The pool of KV blocks: reference counts, the prefix cache, and the events that describe it."""

from __future__ import annotations

from collections.abc import Iterable

from worker.block_hash import BlockHash
from worker.free_block_queue import FreeBlockQueue, KVBlock
from worker.kv_events import KVEventLog


class BlockPool:
    """Owns every KV block. A block is either free (ref_cnt 0, in the free queue, possibly still
    holding a cached prefix that a hit can revive) or in use (ref_cnt = number of requests whose
    block table holds it). Only full blocks are cached, keyed by their chained hash."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(block_id=i) for i in range(num_blocks)]
        self._free = FreeBlockQueue(self.blocks)
        self._cached: dict[BlockHash, KVBlock] = {}
        self.events = KVEventLog()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def lookup(self, block_hash: BlockHash) -> KVBlock | None:
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on cache-hit blocks, reviving them if they were free."""
        for block in blocks:
            if block.ref_cnt == 0:
                self._free.remove(block)
            block.ref_cnt += 1

    def allocate(self, count: int) -> list[KVBlock]:
        """Take ``count`` blocks from the head of the free queue, evicting their cached prefix."""
        if count > self.num_free:
            raise ValueError(f"asked for {count} blocks, {self.num_free} free")
        blocks = []
        for _ in range(count):
            block = self._free.popleft()
            self._evict(block)
            block.ref_cnt = 1
            blocks.append(block)
        return blocks

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference on each block. Pass a request's blocks tail first: blocks freed
        earlier are evicted earlier, so a shared prefix outlives the tails that extend it."""
        for block in blocks:
            assert block.ref_cnt > 0, f"block {block.block_id} freed more often than taken"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    self._free.appendleft(block)
                else:
                    self._free.append(block)

    def cache(
        self,
        block: KVBlock,
        block_hash: BlockHash,
        parent_hash: BlockHash | None,
        token_ids: tuple[int, ...],
        extra_keys: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Register a full, computed block under its hash. If an equal block is cached already,
        this one stays uncached: block tables are append-only, so it is not swapped out."""
        if not self.enable_caching or block.block_hash is not None or block_hash in self._cached:
            return
        block.block_hash = block_hash
        self._cached[block_hash] = block
        self.events.stored(block_hash, parent_hash, token_ids, extra_keys)

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        del self._cached[block.block_hash]
        self.events.removed(block.block_hash)
        block.block_hash = None

    def check_integrity(self) -> None:
        """Raise AssertionError if the pool's bookkeeping is inconsistent."""
        free = list(self._free)
        assert len(free) == len(self._free), "free queue length is off"
        assert len({b.block_id for b in free}) == len(free), "a block is free twice"
        for block in self.blocks:
            assert block.ref_cnt >= 0, f"block {block.block_id} has ref_cnt {block.ref_cnt}"
            assert block.in_free_queue == (block.ref_cnt == 0), (
                f"block {block.block_id}: ref_cnt {block.ref_cnt}, free={block.in_free_queue}"
            )
            if block.block_hash is not None:
                assert self._cached.get(block.block_hash) is block, (
                    f"block {block.block_id} has a hash the cache does not map to it"
                )
        assert all(b.block_hash == h for h, b in self._cached.items()), "cache map is stale"
        in_use = sum(1 for b in self.blocks if b.ref_cnt > 0)
        assert in_use + len(free) == self.num_blocks, "free + in use != total"
