"""The routing policy plugged into Ray Serve: ``ray.serve.request_router.RequestRouter``.

Serve builds one of these per deployment in every process that holds a handle to it (here, each
gRPC router process) and calls it on that process's router event loop, the only thread that
touches the policy. The prompt travels as the request's first argument, already tokenized
(router/server/serve_backend.py), so the policy hashes exactly the blocks the engine will.

    update_replicas        -> policy membership, KV-event subscription per replica
    choose_replicas        -> fold fresh load reports in; policy.choose; rank the pick first,
    choose_replicas        -> ... and policy.record it at once
    on_request_routed      -> if Serve used another replica, move the record there
    on_request_completed   -> policy.release: its prefill no longer counts as queued
    replica_failed         -> (from the front door, any thread) a request's replica died:
                              out of the policy and of every choice at once, until Serve's
                              own replica list drops it too
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from cluster import live_routers
from cluster.replica import Pinned, load_report
from router.kv_bus import StreamKeys
from router.kv_subscriber import KVEventSubscriber
from router.policy import PrefixAwarePolicy, RouterConfig, RoutingDecision
from worker.errors import NoReplicaError, OverloadedError
from worker.messages import GenerationRequest

_MAX_UNROUTED = 10_000  # decisions awaiting on_request_routed; older ones were abandoned
DEAD_TTL_S = 30.0  # longer than Serve takes to drop a replica that really died


@dataclass(slots=True)
class RoutingCounts:
    """What one process's request router decided, for its metrics (cumulative)."""

    prefix: int = 0  # sent where part of the prompt is cached
    load: int = 0  # no replica caches any of it: sent by load alone
    overloaded: int = 0  # every replica past its cap: queued on the least loaded
    rerouted: int = 0  # Serve sent it elsewhere than the policy's pick
    replicas_lost: int = 0  # replicas dropped because a request's call on them failed
    predicted_cached_tokens: int = 0


class PrefixAwareRequestRouter(RequestRouter):
    """kvfleet's policy as a Serve request router (see the module docstring)."""

    def initialize_state(self, **kwargs: Any) -> None:
        """``kwargs`` as cluster/app.py builds them: ``config`` (a RouterConfig as JSON),
        ``redis_url`` (None: predicted entries alone), ``namespace`` (the KV-event keys', the
        application's name) and ``deployment`` (the pool's)."""
        self.policy = PrefixAwarePolicy(RouterConfig.from_json(kwargs["config"]))
        redis_url: str | None = kwargs["redis_url"]
        self.subscriber: KVEventSubscriber | None = None
        if redis_url is not None:
            keys = StreamKeys(kwargs["namespace"])
            self.subscriber = KVEventSubscriber(redis_url, keys, self.policy)
        self._unrouted: OrderedDict[str, RoutingDecision] = OrderedDict()
        self._replica_of: OrderedDict[str, str] = OrderedDict()  # request id: replica id
        # Died by the front door's word (replica id: when), until Serve's list drops them or,
        # should the call have failed for another reason, DEAD_TTL_S passes.
        self._dead: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_seen: dict[str, int] = {}
        self.counts = RoutingCounts()
        live_routers.LIVE[live_routers.key(kwargs["namespace"], kwargs["deployment"])] = self

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        current = {r.replica_id.unique_id for r in replicas}
        self._dead = {r: t for r, t in self._dead.items() if r in current}  # Serve dropped the rest
        current -= set(self._dead)
        known = set(self.policy.replica_ids)
        for replica_id in current - known:
            self.policy.add_replica(replica_id)
            if self.subscriber is not None:
                self.subscriber.watch(replica_id)
        for replica_id in known - current:
            if self.subscriber is not None:
                self.subscriber.unwatch(replica_id)
            self.policy.remove_replica(replica_id)
            self._stats_seen.pop(replica_id, None)
        if self.subscriber is not None:
            self.subscriber.start()  # needs the router's event loop, which runs by now

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        self._loop = asyncio.get_running_loop()
        if self._dead:
            self._revive_expired(candidate_replicas)
            alive = [r for r in candidate_replicas if r.replica_id.unique_id not in self._dead]
            candidate_replicas = alive or candidate_replicas
        now = time.monotonic()
        self._fold_load_reports(candidate_replicas, now)
        if pending_request is None or not pending_request.args:
            return [candidate_replicas]
        request = pending_request.args[0]
        if isinstance(request, Pinned):
            return _pinned(candidate_replicas, request)
        if not isinstance(request, GenerationRequest):
            return [candidate_replicas]  # a call without a prompt, e.g. engine_config
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        try:
            decision = self.policy.choose(request.prompt_token_ids, request.cache_salt, now=now)
        except NoReplicaError:
            # Every replica Serve offers was dropped after a failed call: let Serve try them
            # (the call fails fast if they are dead, and the front door's failover takes it).
            return [candidate_replicas]
        except OverloadedError:
            # Every replica is past its cap: queue on the least loaded rather than fail here;
            # the gRPC layer bounds how many requests wait.
            ranked = sorted(by_id, key=lambda r: self.policy.load(r).queued_tokens)
            self.counts.overloaded += 1
            return [[by_id[r] for r in ranked]]
        if decision.cached_tokens:
            self.counts.prefix += 1
        else:
            self.counts.load += 1
        self.counts.predicted_cached_tokens += decision.cached_tokens
        # Recorded now, not when Serve reports the request routed: Serve decides several
        # pending requests before the first is confirmed, and each must see the ones before.
        request_id = pending_request.metadata.internal_request_id
        self.policy.record(decision, request_id, now=now)
        self._unrouted[request_id] = decision
        self._note_replica(request.request_id, decision.replica_id)
        while len(self._unrouted) > _MAX_UNROUTED:
            self._unrouted.popitem(last=False)
        first = by_id.get(decision.replica_id)
        rest = [r for r in candidate_replicas if r is not first]
        return [[first], rest] if first is not None else [rest]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        request_id = pending_request.metadata.internal_request_id
        decision = self._unrouted.pop(request_id, None)
        actual = replica_id.unique_id
        request = pending_request.args[0] if pending_request.args else None
        if isinstance(request, GenerationRequest):
            self._note_replica(request.request_id, actual)
        if decision is None or actual == decision.replica_id:
            return
        # Serve fell back to a lower rank: move the dispatch to where it went.
        self.counts.rerouted += 1
        self.policy.release(decision.replica_id, request_id)
        if actual in self.policy.replica_ids:
            cached = {s.replica_id: s.cached_tokens for s in decision.sampled}.get(actual, 0)
            moved = dataclasses.replace(decision, replica_id=actual, cached_tokens=cached)
            self.policy.record(moved, request_id, now=time.monotonic())

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.policy.release(replica_id.unique_id, internal_request_id)

    def replica_failed(self, request_id: str) -> None:
        """The replica serving ``request_id`` died (its call failed): stop routing to it now
        rather than when Serve's health checks notice. Safe from any thread; call it before
        the request is sent again (which records its new replica)."""
        replica_id = self._replica_of.get(request_id)  # read now, before a retry replaces it
        loop = self._loop
        if replica_id is not None and loop is not None:
            loop.call_soon_threadsafe(self._drop_replica, replica_id)

    def _drop_replica(self, replica_id: str) -> None:
        if replica_id in self._dead:
            return
        self._dead[replica_id] = time.monotonic()
        self.counts.replicas_lost += 1
        if replica_id in self.policy.replica_ids:
            if self.subscriber is not None:
                self.subscriber.unwatch(replica_id)
            self.policy.remove_replica(replica_id)
            self._stats_seen.pop(replica_id, None)

    def _revive_expired(self, candidates: list[RunningReplica]) -> None:
        """A replica marked dead that Serve still offers after DEAD_TTL_S is alive after all
        (its call failed for another reason): route to it again."""
        now = time.monotonic()
        offered = {r.replica_id.unique_id for r in candidates}
        for replica_id, marked in list(self._dead.items()):
            if now - marked < DEAD_TTL_S or replica_id not in offered:
                continue
            del self._dead[replica_id]
            self.policy.add_replica(replica_id)
            if self.subscriber is not None:
                self.subscriber.watch(replica_id)

    def _note_replica(self, request_id: str, replica_id: str) -> None:
        self._replica_of[request_id] = replica_id
        self._replica_of.move_to_end(request_id)
        while len(self._replica_of) > _MAX_UNROUTED:
            self._replica_of.popitem(last=False)

    def _fold_load_reports(self, replicas: list[RunningReplica], now: float) -> None:
        for replica in replicas:
            stats = replica.routing_stats
            replica_id = replica.replica_id.unique_id
            if not stats or self._stats_seen.get(replica_id) == stats["seq"]:
                continue
            if replica_id not in self.policy.replica_ids:
                continue
            self._stats_seen[replica_id] = stats["seq"]
            # The report reflects the replica when it was taken, not when it reached us.
            age = max(0.0, time.time() - stats["time"])
            self.policy.on_load_report(replica_id, load_report(stats), now - age)


class RoundRobinRequestRouter(RequestRouter):
    """The baseline the benchmark compares against: each request to the next replica."""

    def initialize_state(self, **_: Any) -> None:
        self._turn = itertools.count()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        first = pending_request.args[0] if pending_request and pending_request.args else None
        if isinstance(first, Pinned):
            return _pinned(candidate_replicas, first)
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        if not ordered:
            return []
        return [[ordered[next(self._turn) % len(ordered)]]]


def _pinned(candidates: list[RunningReplica], pinned: Pinned) -> list[list[RunningReplica]]:
    """Only the named replica; none (Serve waits, the caller's timeout ends it) if it is gone."""
    return [[r for r in candidates if r.replica_id.unique_id == pinned.replica_id]]
