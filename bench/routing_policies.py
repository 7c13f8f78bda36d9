"""The systems bench.routing compares, each a routing_sim.Policy: kvfleet's policy, the
baselines, and an oracle that sees every replica's real cache."""

from __future__ import annotations

import random

from bench.routing_sim import BLOCK, Policy, SimReplica
from router import PrefixAwarePolicy, RouterConfig
from worker.errors import OverloadedError
from worker.kv_events import KVEvent
from worker.load_report import LoadReport
from worker.request import Request
from worker.sampling_params import SamplingParams


class Kvfleet(Policy):
    """``routers`` independent PrefixAwarePolicy instances taking requests in turn, each told
    every replica's events and reports, and the first token of the requests it routed."""

    def __init__(self, replicas: int, routers: int = 1, seed: int = 0) -> None:
        self.routers = [PrefixAwarePolicy(RouterConfig(seed=seed + i)) for i in range(routers)]
        for router in self.routers:
            for r in range(replicas):
                router.add_replica(str(r))
        self.owner: dict[str, PrefixAwarePolicy] = {}
        self.turn = 0

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        router = self.routers[self.turn % len(self.routers)]
        self.turn += 1
        self.owner[request_id] = router
        try:
            return int(router.route(request_id, tokens, now=now).replica_id)
        except OverloadedError:  # as the Serve adapter does: queue on the least loaded
            return min(
                range(len(router.replica_ids)), key=lambda r: router.load(str(r)).queued_tokens
            )

    def on_events(self, replica: int, events: list[KVEvent], now: float) -> None:
        for router in self.routers:
            router.on_kv_events(str(replica), events, now)

    def on_report(self, replica: int, report: LoadReport, taken: float) -> None:
        for router in self.routers:
            router.on_load_report(str(replica), report, taken)

    def on_first_token(self, replica: int, request_id: str, now: float) -> None:
        self.owner.pop(request_id).release(str(replica), request_id)


class RoundRobin(Policy):
    def __init__(self, replicas: int) -> None:
        self.replicas, self.count = replicas, 0

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        self.count += 1
        return self.count % self.replicas


class LeastLoaded(Policy):
    """Fewest requests in flight from this router; ties at random."""

    def __init__(self, replicas: int, seed: int = 0) -> None:
        self.in_flight = [0] * replicas
        self.rng = random.Random(seed)

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        least = min(self.in_flight)
        pick = self.rng.choice([i for i, n in enumerate(self.in_flight) if n == least])
        self.in_flight[pick] += 1
        return pick

    def on_finished(self, replica: int, request_id: str, now: float) -> None:
        self.in_flight[replica] -= 1


class Oracle(Policy):
    """Sees every replica's real prefix cache and the prompts queued or running there, at
    decision time (no lag): the replica that holds, or is about to hold, the longest prefix of
    the prompt; ties to the fewest requests in flight. A reference for what knowing the caches
    buys, not a load balancer."""

    def __init__(self, replicas: list[SimReplica]) -> None:
        self.replicas = replicas
        self.in_flight = [0] * len(replicas)

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        probe = Request("probe", tokens, SamplingParams(), BLOCK)
        held = [self._held_blocks(replica, probe) for replica in self.replicas]
        pick = max(range(len(held)), key=lambda r: (held[r], -self.in_flight[r]))
        self.in_flight[pick] += 1
        return pick

    @staticmethod
    def _held_blocks(replica: SimReplica, probe: Request) -> int:
        best = len(replica.kv.get_computed_blocks(probe))
        scheduler = replica.scheduler
        for other in [*scheduler.waiting, *scheduler.running]:
            shared = 0
            for mine, theirs in zip(probe.block_hashes, other.block_hashes, strict=False):
                if mine != theirs:
                    break
                shared += 1
            best = max(best, shared)
        return best

    def on_finished(self, replica: int, request_id: str, now: float) -> None:
        self.in_flight[replica] -= 1
