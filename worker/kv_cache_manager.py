"""Which KV blocks each request holds: prefix-cache hits, allocation for new tokens, release."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from worker.block_pool import BlockPool
from worker.free_block_queue import KVBlock
from worker.load_report import LoadReport
from worker.request import Request


class KVCacheManager:
    """Maps requests to their block tables on top of the shared BlockPool."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_caching)
        self._blocks: dict[str, list[KVBlock]] = {}
        self._num_cached_blocks: dict[str, int] = {}
        # Blocks kept past their request's end for another replica to read: by request id,
        # with when the lease runs out (time.monotonic()).
        self._leases: dict[str, tuple[list[KVBlock], float]] = {}
        # Copy-on-write copies (source block id, destination block id) that the next step's
        # ranks make before they run it (StepInput.block_copies).
        self._copies: list[tuple[int, int]] = []
        self.prefix_queries = 0  # tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self._blocks.get(request_id, ())]

    def get_computed_blocks(self, request: Request) -> list[KVBlock]:
        """The longest cached prefix of the request, in whole blocks. At least the last token is
        always left to compute, since its logits are needed."""
        if not self.pool.enable_caching:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def admit(self, request: Request, token_budget: int, lookahead_tokens: int = 0) -> int | None:
        """Start a waiting request: take its cached prefix, and blocks for up to
        ``token_budget`` of the tokens after it plus ``lookahead_tokens`` beyond those (room a
        caller reserves ahead, such as a simulation's output). Sets ``num_computed_tokens`` to
        the cached prefix and counts the lookup in the hit-rate statistics. Returns how many
        tokens to compute now, or None, with nothing changed, if the pool is short."""
        hits = self.get_computed_blocks(request)
        cached = len(hits) * self.block_size
        num_new = min(request.num_tokens - cached, token_budget)
        if not self.allocate_slots(request, num_new + lookahead_tokens, hits):
            return None
        request.num_computed_tokens = cached
        self.prefix_queries += request.num_tokens
        self.prefix_hits += cached
        return num_new

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: Sequence[KVBlock] = ()
    ) -> bool:
        """Give the request blocks for ``num_new_tokens`` more tokens on top of what it holds and
        of ``computed_blocks`` (cache hits, taken now). False, with nothing changed, if the pool
        is short."""
        held = self._blocks.get(request.request_id, [])
        num_tokens = (
            request.num_computed_tokens + len(computed_blocks) * self.block_size + num_new_tokens
        )
        needed = -(-num_tokens // self.block_size) - len(held) - len(computed_blocks)
        revived = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        shared = self._shared_write_block(request, held) if num_new_tokens else None
        if max(needed, 0) + revived + (shared is not None) > self.pool.num_free:
            return False
        self.pool.touch(computed_blocks)
        blocks = self._blocks.setdefault(request.request_id, [])
        blocks.extend(computed_blocks)
        if shared is not None:
            self._copy_on_write(blocks, shared)
        if needed > 0:
            blocks.extend(self.pool.allocate(needed))
        if computed_blocks:
            self._num_cached_blocks[request.request_id] = len(computed_blocks)
        return True

    def fork(self, parent: Request, child: Request) -> None:
        """Give ``child`` (a fork of ``parent`` holding its first tokens) the parent's blocks
        for its first ``child.num_computed_tokens`` tokens: shared, one more reference each,
        never copied until one of them writes into a block the other still reads."""
        count = -(-child.num_computed_tokens // self.block_size)
        shared = self._blocks[parent.request_id][:count]
        self.pool.touch(shared)
        self._blocks[child.request_id] = list(shared)
        done = self._num_cached_blocks.get(parent.request_id, 0)
        self._num_cached_blocks[child.request_id] = min(done, count)

    def take_copies(self) -> list[tuple[int, int]]:
        """The copy-on-write copies made since the last call, for the step about to run."""
        copies, self._copies = self._copies, []
        return copies

    def _shared_write_block(self, request: Request, held: list[KVBlock]) -> int | None:
        """The index in ``held`` of the block the request's next token is written into, if
        another sequence holds it too (only a fork's partly filled last block can be)."""
        index = request.num_computed_tokens // self.block_size
        if index < len(held) and held[index].ref_cnt > 1:
            return index
        return None

    def _copy_on_write(self, blocks: list[KVBlock], index: int) -> None:
        """Swap ``blocks[index]`` for a fresh copy of it; the other holders keep the original.

        before:  seq A [b0 b1 b2*]   seq B [b0 b1 b2*]     (b2 partly filled, shared)
        after:   seq A [b0 b1 b2*]   seq B [b0 b1 b9 ]     (b9 := b2, written by B only)
        """
        source = blocks[index]
        (copy,) = self.pool.allocate(1)
        self._copies.append((source.block_id, copy.block_id))
        blocks[index] = copy
        self.pool.free([source])

    def cache_blocks(self, request: Request) -> None:
        """Publish the request's blocks that are now full and computed to the prefix cache."""
        if not self.pool.enable_caching:
            return
        blocks = self._blocks.get(request.request_id)
        if not blocks:
            return
        done = self._num_cached_blocks.get(request.request_id, 0)
        num_full = min(request.num_computed_tokens // self.block_size, len(request.block_hashes))
        for index in range(done, num_full):
            start = index * self.block_size
            self.pool.cache(
                blocks[index],
                request.block_hashes[index],
                request.block_hashes[index - 1] if index else None,
                tuple(request.all_token_ids[start : start + self.block_size]),
                () if index else request.extra_keys,
            )
        self._num_cached_blocks[request.request_id] = max(done, num_full)

    def free(self, request: Request) -> None:
        blocks = self._blocks.pop(request.request_id, [])
        self._num_cached_blocks.pop(request.request_id, None)
        self.pool.free(reversed(blocks))

    def lease(self, request: Request, expires_at: float) -> None:
        """Keep the request's blocks held after it ends, until ``release`` or until
        ``expire`` runs past ``expires_at`` (monotonic seconds)."""
        blocks = self._blocks.pop(request.request_id, [])
        self._num_cached_blocks.pop(request.request_id, None)
        self._leases[request.request_id] = (blocks, expires_at)

    def release(self, request_id: str) -> bool:
        """End a lease early (its reader is done); False if there is none."""
        lease = self._leases.pop(request_id, None)
        if lease is None:
            return False
        self.pool.free(reversed(lease[0]))
        return True

    def expire(self, now: float) -> list[str]:
        """End the leases that ran out by ``now``; their request ids."""
        expired = [rid for rid, (_, expires_at) in self._leases.items() if expires_at <= now]
        for request_id in expired:
            self.release(request_id)
        return expired

    def next_expiry(self) -> float | None:
        """When the first lease runs out; None if nothing is leased."""
        return min((expires_at for _, expires_at in self._leases.values()), default=None)

    @property
    def num_leased_blocks(self) -> int:
        return sum(len(blocks) for blocks, _ in self._leases.values())

    def load_report(
        self,
        waiting: Iterable[Request],
        running: Iterable[Request],
        prefill_tokens_per_s: float = 0.0,
    ) -> LoadReport:
        """The replica's load as routers read it, given its waiting and running requests."""
        waiting, running = list(waiting), list(running)
        return LoadReport(
            num_waiting=len(waiting),
            # Net of what the prefix cache already holds: what prefill will really cost. A
            # running request with prefill left (a chunked prompt, or one in the step now
            # running) is still work ahead of the next arrival.
            prefill_tokens=sum(
                r.num_tokens - len(self.get_computed_blocks(r)) * self.block_size for r in waiting
            )
            + sum(max(0, r.num_prompt_tokens - r.num_computed_tokens) for r in running),
            num_running=len(running),
            kv_usage=self.pool.usage(),
            num_free_blocks=self.pool.num_free,
            prefix_queries=self.prefix_queries,
            prefix_hits=self.prefix_hits,
            prefill_tokens_per_s=prefill_tokens_per_s,
            num_blocks=self.pool.num_blocks,
        )

    def check_integrity(self) -> None:
        """Pool invariants, plus: each block's ref_cnt equals the number of block tables (and
        leases) holding it, and none holds a block twice."""
        self.pool.check_integrity()
        holders = [0] * self.pool.num_blocks
        tables = [*self._blocks.items(), *((r, b) for r, (b, _) in self._leases.items())]
        for request_id, blocks in tables:
            ids = [b.block_id for b in blocks]
            assert len(set(ids)) == len(ids), f"request {request_id} holds a block twice"
            for block_id in ids:
                holders[block_id] += 1
        for block in self.pool.blocks:
            assert block.ref_cnt == holders[block.block_id], (
                f"block {block.block_id}: ref_cnt {block.ref_cnt}, "
                f"held by {holders[block.block_id]} requests"
            )
