"""The simulated fleet behind bench.routing: replicas built on the engine's own prefix cache,
the baseline policies, the event loop that drives them, and the single-cache oracle."""

from __future__ import annotations

import random
import statistics
from collections import deque

from router import PrefixAwarePolicy, RouterConfig
from worker.errors import OverloadedError
from worker.kv_cache_manager import KVCacheManager
from worker.kv_events import KVEvent
from worker.load_report import LoadReport
from worker.request import Request
from worker.sampling_params import SamplingParams

BLOCK, SYSTEM, QUESTION, OUTPUT = 16, 2048, 128, 64
PREFILL_RATE, STEP_S, DECODE_S = 8000, 0.01, OUTPUT * 0.025
EVENT_LAG_S, REPORT_EVERY, REPORT_LAG_S = 0.05, 10, 0.02
LOAD = 0.8  # x the requests/s the cluster could prefill with no cache: the workload's rate
HOT_LOAD = 0.5  # x the requests/s it could prefill if every prefix hit: an extra, busy run
KV_ROOM = 1.5  # replica KV capacity over the blocks of the quarter of the groups it starts with
VOCAB = 150_000
PARAMS = SamplingParams(max_tokens=OUTPUT)


class SimReplica:
    """The engine's prefix cache and a FCFS service model: one prefill at a time at
    PREFILL_RATE, chunked per step, then DECODE_S of decoding holding the request's blocks."""

    def __init__(self, num_blocks: int) -> None:
        self.kv = KVCacheManager(num_blocks, BLOCK)
        self.waiting: deque[Request] = deque()
        self.prefilling: Request | None = None
        self.decoding: deque[tuple[float, Request]] = deque()
        self.served = self.hit_tokens = self.prompt_tokens = 0

    def prefill_at_once(self, request: Request) -> int:
        """Admit, compute, cache and free a whole prompt at once; its cache-hit tokens."""
        assert self.kv.admit(request, request.num_tokens) is not None
        hit_tokens = request.num_computed_tokens
        request.num_computed_tokens = request.num_tokens
        self.kv.cache_blocks(request)
        self.kv.free(request)
        return hit_tokens

    def submit(self, request: Request) -> None:
        self.waiting.append(request)
        self.served += 1

    def step(self, now: float) -> tuple[list[str], list[str]]:
        """Advance one step; return (requests whose prefill finished, requests finished)."""
        first_tokens, finished = [], []
        budget = int(PREFILL_RATE * STEP_S)
        while budget > 0 and (self.prefilling is not None or self._admit()):
            request = self.prefilling
            assert request is not None
            take = min(budget, request.num_tokens - request.num_computed_tokens)
            request.num_computed_tokens += take
            budget -= take
            self.kv.cache_blocks(request)
            if request.num_computed_tokens == request.num_tokens:
                self.decoding.append((now + DECODE_S, request))
                first_tokens.append(request.request_id)
                self.prefilling = None
        while self.decoding and self.decoding[0][0] <= now:
            request = self.decoding.popleft()[1]
            self.kv.free(request)
            finished.append(request.request_id)
        return first_tokens, finished

    def _admit(self) -> bool:
        if not self.waiting:
            return False
        request = self.waiting[0]
        # The whole prompt and the output's blocks at once: this model prefills one request at
        # a time, then decodes it without growing.
        if self.kv.admit(request, request.num_tokens, lookahead_tokens=OUTPUT) is None:
            return False  # wait for decodes to free blocks
        self.waiting.popleft()
        self.hit_tokens += request.num_computed_tokens
        self.prompt_tokens += request.num_tokens
        self.prefilling = request
        return True

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    def report(self) -> LoadReport:
        running = len(self.decoding) + (self.prefilling is not None)
        return self.kv.load_report(self.waiting, running)


class Policy:
    """Where each request goes; told what a router would be told."""

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        raise NotImplementedError

    def on_events(self, replica: int, events: list[KVEvent], now: float) -> None:
        pass

    def on_report(self, replica: int, report: LoadReport, now: float) -> None:
        pass

    def on_first_token(self, replica: int, request_id: str) -> None:
        pass

    def on_finished(self, replica: int, request_id: str) -> None:
        pass


class Kvfleet(Policy):
    """``routers`` independent PrefixAwareRouters taking requests in turn, each told every
    replica's events and reports, and the first token of the requests it routed."""

    def __init__(self, replicas: int, routers: int, seed: int) -> None:
        # The fleet's report lag is known here; an operator configures it the same way.
        self.routers = [
            PrefixAwarePolicy(RouterConfig(seed=seed + i, report_lag_s=REPORT_LAG_S + STEP_S))
            for i in range(routers)
        ]
        for router in self.routers:
            for r in range(replicas):
                router.add_replica(str(r), prefill_tokens_per_s=PREFILL_RATE)
        self.owner: dict[str, PrefixAwarePolicy] = {}
        self.count = 0

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        router = self.routers[self.count % len(self.routers)]  # a quarter each, in turn
        replica = int(router.route(request_id, tokens, now=now).replica_id)
        self.count += 1
        self.owner[request_id] = router
        return replica

    def on_events(self, replica: int, events: list[KVEvent], now: float) -> None:
        for router in self.routers:
            router.on_kv_events(str(replica), events, now)

    def on_report(self, replica: int, report: LoadReport, now: float) -> None:
        for router in self.routers:
            router.on_load_report(str(replica), report, now)

    def on_first_token(self, replica: int, request_id: str) -> None:
        self.owner.pop(request_id).release(str(replica), request_id)


class RoundRobin(Policy):
    def __init__(self, replicas: int) -> None:
        self.replicas, self.count = replicas, 0

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        self.count += 1
        return self.count % self.replicas


class LeastLoaded(Policy):
    def __init__(self, replicas: int, seed: int) -> None:
        self.outstanding = [0] * replicas
        self.rng = random.Random(seed)

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        least = min(self.outstanding)
        pick = self.rng.choice([i for i, n in enumerate(self.outstanding) if n == least])
        self.outstanding[pick] += 1
        return pick

    def on_finished(self, replica: int, request_id: str) -> None:
        self.outstanding[replica] -= 1


def replica_blocks(groups: int) -> int:
    """KV capacity of a replica: the system prompts of a quarter of the groups, plus half."""
    return int(KV_ROOM * (groups // 4) * SYSTEM // BLOCK)


def holds(group: int, replica: int, replicas: int) -> bool:
    return (group - replica) % replicas < replicas // 4


def simulate(
    policy: Policy,
    prompts: list[list[int]],
    systems: list[list[int]],
    replicas: int,
    seed: int,
    rate: float,
) -> dict[str, float]:
    fleet = [SimReplica(replica_blocks(len(systems))) for _ in range(replicas)]
    for r, replica in enumerate(fleet):
        for g, system in enumerate(systems):
            if holds(g, r, replicas):
                replica.prefill_at_once(Request("warm", system, PARAMS, BLOCK))
        policy.on_events(r, replica.kv.pool.events.drain(), 0.0)
    rng = random.Random(seed)
    arrivals: deque[tuple[float, int]] = deque()
    clock = 0.0
    for i in range(len(prompts)):
        clock += rng.expovariate(rate)
        arrivals.append((clock, i))
    events: deque[tuple[float, int, list[KVEvent]]] = deque()
    reports: deque[tuple[float, int, LoadReport]] = deque()
    arrived: dict[str, float] = {}
    ttfts = []
    step = 0
    backlog: deque[int] = deque()
    while arrivals or backlog or any(r.busy for r in fleet):
        now = step * STEP_S
        while events and events[0][0] <= now:
            policy.on_events(events[0][1], events[0][2], now)
            events.popleft()
        while reports and reports[0][0] <= now:
            policy.on_report(reports[0][1], reports[0][2], now)
            reports.popleft()
        while arrivals and arrivals[0][0] <= now:
            i = arrivals.popleft()[1]
            arrived[f"q{i}"] = now
            backlog.append(i)
        while backlog:  # requests no replica can take now wait at the router, in order
            i = backlog[0]
            try:
                target = policy.route(f"q{i}", prompts[i], now)
            except OverloadedError:
                break
            backlog.popleft()
            fleet[target].submit(Request(f"q{i}", prompts[i], PARAMS, BLOCK))
        for r, replica in enumerate(fleet):
            first_tokens, finished = replica.step(now)
            for request_id in first_tokens:
                ttfts.append(now + STEP_S - arrived[request_id])
                policy.on_first_token(r, request_id)
            for request_id in finished:
                policy.on_finished(r, request_id)
            if new := replica.kv.pool.events.drain():
                events.append((now + EVENT_LAG_S, r, new))
            if step % REPORT_EVERY == 0:
                reports.append((now + REPORT_LAG_S, r, replica.report()))
        step += 1
    served = [r.served for r in fleet]
    return {
        "hit_rate": sum(r.hit_tokens for r in fleet) / sum(r.prompt_tokens for r in fleet),
        "load_max_over_mean": max(served) / statistics.mean(served),
        "ttft_p50_s": statistics.median(ttfts),
    }


def oracle_hit_rate(prompts: list[list[int]], systems: list[list[int]], replicas: int) -> float:
    """One LRU prefix cache as big as the whole cluster, warmed with every group."""
    cache = SimReplica(replicas * replica_blocks(len(systems)))
    for system in systems:
        cache.prefill_at_once(Request("warm", system, PARAMS, BLOCK))
    hits = sum(
        cache.prefill_at_once(Request(f"o{i}", p, PARAMS, BLOCK)) for i, p in enumerate(prompts)
    )
    return hits / sum(len(p) for p in prompts)
