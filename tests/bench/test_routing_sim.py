"""The closed-loop fleet of bench.routing: every session runs to its end on the engine's own
scheduler and block pool, and cache pressure separates the systems."""

from __future__ import annotations

from bench.routing_policies import Kvfleet, Oracle, RoundRobin
from bench.routing_sim import PREFILL_BOUND, FleetShape, simulate
from bench.routing_workloads import conversations, generated_shared_prefix

# 8 groups of 160-token prefixes (10 blocks); each replica holds 2 groups plus slack.
SHAPE = FleetShape(replicas=4, blocks_per_replica=2 * 10 + 24, clients=8)


def test_every_request_completes_and_every_block_returns() -> None:
    workload = generated_shared_prefix(8, 6, prefix=160, question=20, seed=0)
    result = simulate(workload, PREFILL_BOUND, SHAPE, lambda fleet: RoundRobin(len(fleet)))
    assert result.completed == 48 and len(result.ttfts) == 48 - SHAPE.clients  # past the cold start
    assert sum(result.served) == 48  # simulate() itself checks every pool's integrity


def test_knowing_the_caches_beats_round_robin_under_pressure() -> None:
    workload = generated_shared_prefix(8, 6, prefix=160, question=20, seed=1)
    hits = {
        name: simulate(workload, PREFILL_BOUND, SHAPE, make).figures()["hit_rate"]
        for name, make in {
            "round_robin": lambda fleet: RoundRobin(len(fleet)),
            "oracle": Oracle,
            "kvfleet": lambda fleet: Kvfleet(len(fleet)),
        }.items()
    }
    assert hits["oracle"] > 1.5 * hits["round_robin"]
    assert hits["kvfleet"] > 1.5 * hits["round_robin"]


def test_conversation_turns_carry_the_conversation_so_far() -> None:
    workload = conversations(2, turns=3, first=40, message=10, think_s=0.5, seed=2)
    seen: list[list[int]] = []

    class Recorder(RoundRobin):
        def route(self, request_id: str, tokens: list[int], now: float) -> int:
            seen.append(tokens)
            return super().route(request_id, tokens, now)

    simulate(workload, PREFILL_BOUND, SHAPE, lambda fleet: Recorder(len(fleet)))
    by_conversation: dict[tuple[int, ...], list[list[int]]] = {}
    for prompt in seen:
        by_conversation.setdefault(tuple(prompt[:40]), []).append(prompt)
    assert sorted(len(turns) for turns in by_conversation.values()) == [3, 3]
    for first, second, third in by_conversation.values():
        assert len(first) == 40
        for earlier, later in ((first, second), (second, third)):
            assert later[: len(earlier)] == earlier  # the whole conversation so far ...
            assert len(later) >= len(earlier) + PREFILL_BOUND.output_tokens + 8  # ... and more
