"""The decode side of a transfer: requests whose prompt KV is pulled from a prefill replica.

add(request, handle) -> waiting (FIFO, holding nothing)
start()              -> blocks for the whole prompt (this replica's own prefix-cache hits
                        first), pull the blocks it lacks, then run the request with all but
                        the last prompt token computed: the first step recomputes that one
                        and samples the first output token, as a colocated prefill would
                     -> a pull that fails or times out frees what it took and queues the
                        request for an ordinary local prefill: it costs a recompute, never
                        a hang
"""

from __future__ import annotations

import logging
from collections import deque

from worker.executor import Executor
from worker.kv_cache_manager import KVCacheManager
from worker.kv_transfer import KVHandle
from worker.kv_transfer.transport import KVTransferError
from worker.request import Request
from worker.scheduler import Scheduler

_log = logging.getLogger(__name__)


class KVImports:
    def __init__(
        self, kv: KVCacheManager, scheduler: Scheduler, executor: Executor, timeout_s: float
    ) -> None:
        self.kv = kv
        self.scheduler = scheduler
        self.executor = executor
        self.timeout_s = timeout_s
        self.waiting: deque[tuple[Request, KVHandle]] = deque()
        self.num_pulled = 0  # requests whose KV came from a prefill replica
        self.num_failed = 0  # pulls that failed: recomputed here instead

    @property
    def requests(self) -> list[Request]:
        return [request for request, _ in self.waiting]

    def add(self, request: Request, handle: KVHandle) -> None:
        self.waiting.append((request, handle))

    def remove(self, request: Request) -> bool:
        """Take out a request still waiting (an abort); it holds no blocks yet."""
        for entry in self.waiting:
            if entry[0] is request:
                self.waiting.remove(entry)
                return True
        return False

    def start(self) -> None:
        """Pull and start the waiting requests, in order, while blocks and sequence slots
        last. Synchronous: call only while no step is in flight."""
        block_size = self.kv.block_size
        while self.waiting and self.scheduler.has_free_slot:
            request, handle = self.waiting[0]
            hits = self.kv.get_computed_blocks(request)
            needed = request.num_tokens - len(hits) * block_size
            if not self.kv.allocate_slots(request, needed, hits):
                return  # the pool is short: wait for blocks to free up
            self.waiting.popleft()
            cached = len(hits) * block_size
            computed = request.num_prompt_tokens - 1  # the last one is recomputed here
            first, end = len(hits), -(-computed // block_size)
            mine = self.kv.block_ids(request.request_id)
            try:
                self.executor.fetch_kv(
                    handle.sources, handle.block_ids[first:end], mine[first:end], self.timeout_s
                )
            except KVTransferError as exc:
                _log.warning("request %s: %s; computing its prompt here", request.request_id, exc)
                self.num_failed += 1
                self.kv.free(request)
                self.scheduler.add(request, front=True)
                continue
            self.num_pulled += 1
            request.num_computed_tokens = computed
            request.num_transferred_tokens = computed - cached
            self.scheduler.resume(request, cached)
