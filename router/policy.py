"""The routing policy: longest cached prefix against load, as one continuous cost."""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.cost import CostModel
from router.footprint import CacheFootprint
from router.hashing import PromptBlocks
from router.index import PrefixIndex
from router.load import ReplicaLoad
from worker.errors import NoReplicaError, OverloadedError
from worker.kv_events import KVEvent, KVSnapshot
from worker.load_report import LoadReport


@dataclass(frozen=True)
class RouterConfig:
    """How one router instance routes. ``seed`` makes its sampling reproducible; give each router
    of a fleet its own (or None), or routers with the same view make the same random picks."""

    block_size: int = 16
    max_index_bytes: int = 256 << 20
    predicted_ttl_s: float = 10.0
    dispatch_lag_s: float = 0.05
    cost: CostModel = field(default_factory=CostModel)
    choices: int = 2  # replicas sampled among the near-best; the one with fewest requests wins
    margin_rel: float = 0.05  # near-best: within this fraction of the best cost
    # What a placement costs later, in prefills of the tokens concerned: copying a prefix
    # another replica caches (the group then misses on two caches), or evicting prefixes in use.
    affinity: float = 1.0
    # A prefix counts towards a replica's cache footprint for this long after it was sent there.
    footprint_window_s: float = 30.0
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (Serve passes a request router's arguments as JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouterConfig:
        return cls(**{**data, "cost": CostModel(**data["cost"])})


@dataclass(frozen=True, slots=True)
class ReplicaScore:
    """One candidate's estimate: its cached prefix and estimated time to first token."""

    replica_id: str
    cached_tokens: int
    ttft_s: float


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Where a prompt goes and why; ``record`` it once the request is actually sent."""

    replica_id: str
    cached_tokens: int
    ttft_s: float
    prompt: PromptBlocks
    sampled: tuple[ReplicaScore, ...]  # the near-best replicas the pick was made among
    num_near_best: int  # how many replicas were within the margin of the best

    @property
    def uncached_tokens(self) -> int:
        return self.prompt.num_tokens - self.cached_tokens


@dataclass(slots=True)
class _Replica:
    load: ReplicaLoad
    prefill_rate: float  # what the cost model prices it at: the pool's rate
    footprint: CacheFootprint
    measured_rate: float = 0.0  # what the replica last reported; 0 until it has
    # The cost model's prompt-independent parts, kept current as the load changes:
    admitted: bool = True  # under the queue cap
    queue_s: float = 0.0
    free_blocks: int = 0
    capacity: int = 0  # KV blocks, as reported; 0 until then


class PrefixAwarePolicy:
    """The pure routing core, free of Ray and gRPC: fed KV events, snapshots and load reports,
    it picks a replica per prompt. Its API: ``choose`` then ``record`` (or ``route``, both),
    ``release``, ``on_kv_events``/``on_snapshot``, ``on_load_report``, ``add_replica``/
    ``remove_replica``; the Serve adapter, the benchmark and the tests all use just these.

    Each candidate's cost is its estimated time to first token (cost.py), with the cached prefix
    from the index (exact ∪ predicted) and the load from reports plus this router's dispatches
    (load.py), plus what the placement costs later, ``affinity`` times the prefill of:
      - the part of the prompt that another replica already caches: sending a group's prompt
        away from its replica writes a second copy and splits the group's later requests over
        two caches (a bare TTFT comparison ignores this, and one extra queued miss on the home
        replica would move the group, then the next, until every group is spread out);
      - the blocks of prefixes still in use that it pushes out of the replica's cache: what the
        replica's footprint (footprint.py, the prefixes this router sent it lately) overflows
        its cache by, so a new prefix goes where there is room.

    Anti-herding and balance: the pick is among the replicas within ``margin_rel`` of the best
    cost (relative, so a hit and a miss never tie however fast prefill is): ``choices`` of them
    sampled, then the one with the fewest requests. A clear winner is still chosen by every
    router; near-ties, such as a unique prompt on idle replicas, are spread by queue length
    instead of piling onto the replica several routers all see first.
    """

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.index = PrefixIndex(
            self.config.block_size, self.config.max_index_bytes, self.config.predicted_ttl_s
        )
        self._replicas: dict[str, _Replica] = {}
        self._rng = random.Random(self.config.seed)

    # -- membership and feeds ------------------------------------------------------------------

    @property
    def replica_ids(self) -> list[str]:
        return list(self._replicas)

    def add_replica(self, replica_id: str) -> None:
        self.index.add_replica(replica_id)
        footprint = CacheFootprint(self.config.footprint_window_s)
        load = ReplicaLoad(self.config.dispatch_lag_s)
        replica = _Replica(load, self._pool_rate(), footprint)
        self._replicas[replica_id] = replica
        self._refresh(replica)

    def _pool_rate(self) -> float:
        """The median of the rates the pool's replicas measured (the prior until one has).
        Replicas of a pool run the same model on the same hardware; what each measures
        depends on the batches it happened to run (short prompts pay a step's fixed cost on
        few tokens, and measured 7x slower than long ones here), so one replica's own figure
        would send it everything or nothing. A slow replica still shows in its queue."""
        measured = [r.measured_rate for r in self._replicas.values() if r.measured_rate > 0]
        return statistics.median(measured) if measured else self.config.cost.prefill_tokens_per_s

    def _reprice(self) -> None:
        rate = self._pool_rate()
        for replica in self._replicas.values():
            if replica.prefill_rate != rate:
                replica.prefill_rate = rate
                self._refresh(replica)

    def remove_replica(self, replica_id: str) -> None:
        self.index.remove_replica(replica_id)
        del self._replicas[replica_id]
        self._reprice()

    def on_kv_events(self, replica_id: str, events: Iterable[KVEvent], now: float) -> None:
        self.index.apply_events(replica_id, events, now)

    def on_snapshot(self, replica_id: str, snapshot: KVSnapshot, now: float) -> None:
        self.index.apply_snapshot(replica_id, snapshot, now)

    def needs_resync(self) -> list[str]:
        """Replicas whose event stream had a gap: fetch a snapshot and ``on_snapshot`` it."""
        return [r for r in self._replicas if self.index.feed(r).needs_resync]

    def on_load_report(self, replica_id: str, report: LoadReport, now: float) -> None:
        """``now``: when the report was taken (see ReplicaLoad). A prefill rate the replica
        measured enters the pool's rate, at which every replica is priced (``_pool_rate``)."""
        replica = self._replicas[replica_id]
        replica.load.on_report(report, now)
        if report.prefill_tokens_per_s > 0:
            replica.measured_rate = report.prefill_tokens_per_s
            self._reprice()
        self._refresh(replica)

    def _refresh(self, replica: _Replica) -> None:
        # Done when the load changes, not per decision: keeps the decision loop to arithmetic.
        cost = self.config.cost
        replica.admitted = cost.admits(replica.load)
        replica.queue_s = cost.queue_s(replica.load, replica.prefill_rate)
        replica.free_blocks = cost.free_blocks(replica.load, self.config.block_size)
        replica.capacity = replica.load.report.num_blocks

    def load(self, replica_id: str) -> ReplicaLoad:
        return self._replicas[replica_id].load

    # -- decisions -----------------------------------------------------------------------------

    def choose(
        self, token_ids: Sequence[int], cache_salt: str | None = None, *, now: float
    ) -> RoutingDecision:
        """Pick a replica for the prompt; changes nothing until ``record``."""
        if not self._replicas:
            raise NoReplicaError("no replica is registered")
        prompt = PromptBlocks(token_ids, self.config.block_size, cache_salt)
        matches = self.index.longest_match(prompt, now)
        block_size, num_tokens = self.config.block_size, prompt.num_tokens
        most_cached = max(matches.values(), default=0) * block_size
        affinity, model, costs = self.config.affinity, self.config.cost, []
        num_blocks = prompt.num_blocks
        first = prompt.first_key() if num_blocks else 0
        for replica_id, replica in self._replicas.items():
            if not replica.admitted:
                continue
            cached = matches.get(replica_id, 0) * block_size
            uncached = num_tokens - cached
            ttft = replica.queue_s + uncached / replica.prefill_rate
            needed = -(-uncached // block_size)
            if needed > replica.free_blocks:
                ttft += model.kv_wait_s(needed, replica.free_blocks)
            later = most_cached - cached  # cached elsewhere
            if num_blocks:  # prefixes in use that it would evict here
                overflow = replica.footprint.overflow(first, num_blocks, replica.capacity, now)
                later += overflow * block_size
            costs.append((ttft + affinity * later / replica.prefill_rate, ttft, replica_id, cached))
        if not costs:
            raise OverloadedError(f"all {len(self._replicas)} replicas are at their queue cap")
        limit = min(costs)[0] * (1.0 + self.config.margin_rel)
        near = [cost for cost in costs if cost[0] <= limit]
        # In random order, so that exact ties fall to no replica in particular.
        sampled = self._rng.sample(near, min(len(near), self.config.choices))
        # Among the sampled near-best, the fewest requests: near-equal costs say nothing about
        # balance, and the power of two choices on queue length keeps it without herding.
        _, ttft, replica_id, cached = min(
            sampled, key=lambda c: (self._replicas[c[2]].load.num_requests, c[0])
        )
        scores = tuple(ReplicaScore(r, c, t) for _, t, r, c in sampled)
        return RoutingDecision(replica_id, cached, ttft, prompt, scores, len(near))

    def record(self, decision: RoutingDecision, request_id: str, *, now: float) -> None:
        """The request was sent: predict its blocks on the replica and count its prefill."""
        self.index.predict(decision.replica_id, decision.prompt, now)
        replica = self._replicas[decision.replica_id]
        prompt = decision.prompt
        if prompt.num_blocks:
            replica.footprint.add(prompt.first_key(), prompt.num_blocks, now)
        replica.load.dispatched(request_id, decision.uncached_tokens, now)
        self._refresh(replica)

    def route(
        self,
        request_id: str,
        token_ids: Sequence[int],
        cache_salt: str | None = None,
        *,
        now: float,
    ) -> RoutingDecision:
        """``choose`` then ``record``."""
        decision = self.choose(token_ids, cache_salt, now=now)
        self.record(decision, request_id, now=now)
        return decision

    def release(self, replica_id: str, request_id: str) -> None:
        """The request's first token (or its end) came back: its prefill is no longer queued."""
        replica = self._replicas.get(replica_id)
        if replica is not None:
            replica.load.release(request_id)
            self._refresh(replica)

    def check_integrity(self, now: float) -> None:
        """The index's invariants and every replica's load bookkeeping."""
        self.index.check_integrity(now)
        assert set(self._replicas) == set(self.index.replica_ids), "replica registries differ"
        for replica in self._replicas.values():
            replica.load.check_integrity()
            replica.footprint.check_integrity()
            cost, load = self.config.cost, replica.load
            assert replica.admitted == cost.admits(load), "stale admission"
            assert replica.queue_s == cost.queue_s(load, replica.prefill_rate), "stale queue"
            assert replica.free_blocks == cost.free_blocks(load, self.config.block_size)
            assert replica.capacity == load.report.num_blocks, "stale capacity"
