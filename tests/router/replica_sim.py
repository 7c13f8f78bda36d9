"""A replica's prefix cache, driven the way the engine drives it, for router tests."""

from __future__ import annotations

from collections.abc import Sequence

from worker.kv_cache_manager import KVCacheManager
from worker.kv_events import KVEvent
from worker.request import Request
from worker.sampling_params import SamplingParams


class CacheReplica:
    """The real KVCacheManager and block pool; a prompt is admitted, computed whole, cached and
    freed at once, so the pool emits exactly the events the engine would."""

    def __init__(self, num_blocks: int = 256, block_size: int = 16) -> None:
        self.kv = KVCacheManager(num_blocks, block_size)
        self.block_size = block_size
        self._next_id = 0

    def run(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        """Prefill ``token_ids``; return how many of them were prefix-cache hits."""
        self._next_id += 1
        request = Request(
            f"req-{self._next_id}", list(token_ids), SamplingParams(), self.block_size, cache_salt
        )
        assert self.kv.admit(request, len(token_ids)) is not None
        hit_tokens = request.num_computed_tokens
        request.num_computed_tokens = len(token_ids)
        self.kv.cache_blocks(request)
        self.kv.free(request)
        return hit_tokens

    def cached_prefix_tokens(self, token_ids: Sequence[int], cache_salt: str | None = None) -> int:
        """What the engine would find cached for this prompt, without touching the cache."""
        request = Request("probe", list(token_ids), SamplingParams(), self.block_size, cache_salt)
        return len(self.kv.get_computed_blocks(request)) * self.block_size

    def drain(self) -> list[KVEvent]:
        return self.kv.pool.events.drain()
