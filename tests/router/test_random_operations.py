"""The router's invariants hold after any sequence of events, routes, losses and membership
changes, with a memory cap small enough that eviction runs all the time."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from router.policy import PrefixAwarePolicy, RouterConfig
from tests.router.replica_sim import CacheReplica
from worker.errors import OverloadedError
from worker.kv_events import SnapshotBuilder
from worker.load_report import LoadReport

CAP = 12 << 10
STEMS = [[s * 1000 + i for i in range(16 * (1 + s % 4))] for s in range(6)]


class RouterOperations(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.router = PrefixAwarePolicy(
            RouterConfig(seed=0, max_index_bytes=CAP, predicted_ttl_s=5.0)
        )
        self.replicas: dict[str, tuple[CacheReplica, SnapshotBuilder]] = {}
        self.rng = random.Random(0)
        self.now = 0.0
        self.added = 0
        self.requests = 0

    def prompt(self, stem: int, tail: int) -> list[int]:
        return STEMS[stem] + [self.rng.randrange(10_000) for _ in range(tail)]

    @precondition(lambda self: len(self.replicas) < 6)
    @rule()
    def add_replica(self) -> None:
        name = f"r{self.added}"
        self.added += 1
        self.replicas[name] = (CacheReplica(num_blocks=30), SnapshotBuilder())
        self.router.add_replica(name)

    @precondition(lambda self: self.replicas)
    @rule(pick=st.integers(0, 5))
    def remove_replica(self, pick: int) -> None:
        name = sorted(self.replicas)[pick % len(self.replicas)]
        del self.replicas[name]
        self.router.remove_replica(name)

    @precondition(lambda self: self.replicas)
    @rule(
        pick=st.integers(0, 5),
        stem=st.integers(0, 5),
        tail=st.integers(0, 70),
        salt=st.sampled_from([None, "a", "b"]),
        lose_events=st.booleans(),
    )
    def replica_computes_a_prompt(
        self, pick: int, stem: int, tail: int, salt: str | None, lose_events: bool
    ) -> None:
        name = sorted(self.replicas)[pick % len(self.replicas)]
        cache, builder = self.replicas[name]
        cache.run(self.prompt(stem, tail), cache_salt=salt)
        events = cache.drain()
        builder.apply(events)
        if not lose_events:
            self.router.on_kv_events(name, events, now=self.now)

    @precondition(lambda self: self.replicas)
    @rule(stem=st.integers(0, 5), tail=st.integers(0, 70), salt=st.sampled_from([None, "a"]))
    def route_a_prompt(self, stem: int, tail: int, salt: str | None) -> None:
        self.requests += 1
        try:
            decision = self.router.route(
                f"q{self.requests}", self.prompt(stem, tail), salt, now=self.now
            )
        except OverloadedError:
            model, need = self.router.config.cost, -(-(len(STEMS[stem]) + tail) // 16)
            for name in self.replicas:
                load = self.router.load(name)
                assert not model.admits(load) or model.free_blocks(load, 16) < need
            return
        assert decision.replica_id in self.replicas
        assert 0 <= decision.cached_tokens <= len(decision.prompt.token_ids) - 1

    @rule()
    def resync_from_snapshots(self) -> None:
        for name in self.router.needs_resync():
            self.router.on_snapshot(name, self.replicas[name][1].snapshot(), now=self.now)
        assert not self.router.needs_resync()

    @precondition(lambda self: self.replicas)
    @rule(
        pick=st.integers(0, 5),
        waiting=st.integers(0, 5000),
        kv=st.floats(0.0, 1.0),
        free=st.integers(0, 20),
    )
    def load_report(self, pick: int, waiting: int, kv: float, free: int) -> None:
        name = sorted(self.replicas)[pick % len(self.replicas)]
        report = LoadReport(waiting // 500, waiting, 2, kv, free, 0, 0)
        self.router.on_load_report(name, report, now=self.now)

    @rule(seconds=st.floats(0.0, 8.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def consistent(self) -> None:
        self.router.check_integrity(now=self.now)
        assert self.router.index.memory_bytes() <= CAP


RouterOperations.TestCase.settings = settings(
    max_examples=40, stateful_step_count=60, deadline=None
)
test_router_invariants_hold_after_random_operations = RouterOperations.TestCase


def test_invariants_hold_through_a_long_random_run_that_evicts() -> None:
    # The same operations as above, many more of them, so that the cap evicts a lot.
    rng = random.Random(7)
    machine = RouterOperations()
    for _ in range(3):
        machine.add_replica()
    for step in range(600):
        roll = rng.random()
        if roll < 0.03 and len(machine.replicas) > 1:
            machine.remove_replica(rng.randrange(6))
        elif roll < 0.06 and len(machine.replicas) < 6:
            machine.add_replica()
        elif roll < 0.45:
            salt = rng.choice([None, "a", "b"])
            lose = rng.random() < 0.05
            machine.replica_computes_a_prompt(rng.randrange(6), rng.randrange(6), 60, salt, lose)
        elif roll < 0.85:
            machine.route_a_prompt(rng.randrange(6), rng.randrange(100), rng.choice([None, "a"]))
        elif roll < 0.9:
            machine.resync_from_snapshots()
        elif roll < 0.95:
            machine.load_report(rng.randrange(6), rng.randrange(5000), rng.random(), 20)
        else:
            machine.time_passes(rng.random() * 3)
        if step % 20 == 0:
            machine.consistent()
    machine.consistent()
    index = machine.router.index
    assert index.blocks.evicted > 0
