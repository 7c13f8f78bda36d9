"""The routing policy: prefix affinity while load allows, spill when it does not, even spread of
unique prompts, and no herding between routers that share one view."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.cost import CostModel
from router.hashing import PromptBlocks
from router.load import ReplicaLoad
from router.policy import PrefixAwarePolicy, RouterConfig
from tests.router.replica_sim import CacheReplica
from worker.errors import NoReplicaError, OverloadedError
from worker.load_report import LoadReport

RATE = 8000.0  # the cost model's default prefill tokens per second


def report(
    waiting_tokens: int = 0, waiting: int = 0, running: int = 0, kv: float = 0.1, free: int = 1000
) -> LoadReport:
    return LoadReport(waiting, waiting_tokens, running, kv, free, 0, 0)


def make_router(replicas: int, seed: int = 0, **config: object) -> PrefixAwarePolicy:
    router = PrefixAwarePolicy(RouterConfig(seed=seed, **config))  # type: ignore[arg-type]
    for i in range(replicas):
        router.add_replica(f"r{i}")
    return router


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(50_000) for _ in range(n)]


def test_requests_sharing_a_long_prefix_land_on_one_replica_while_its_load_allows() -> None:
    rng = random.Random(0)
    router = make_router(4)
    prefix = tokens(rng, 2048)
    chosen = []
    for i in range(12):
        decision = router.route(f"q{i}", prefix + tokens(rng, 128), now=i * 0.1)
        chosen.append(decision.replica_id)
        for replica in router.replica_ids:  # each prefill is done by the next report
            router.on_load_report(replica, report(), now=i * 0.1 + 0.5)
    assert len(set(chosen)) == 1
    home = chosen[0]
    # The home replica's queue grows past what recomputing the prefix elsewhere costs: spill.
    router.on_load_report(home, report(waiting_tokens=6000, waiting=4), now=5.0)
    spill = router.route("spill", prefix + tokens(rng, 128), now=5.0)
    assert spill.replica_id != home
    assert spill.cached_tokens == 0
    router.on_load_report(spill.replica_id, report(), now=5.5)
    # The spill replica now holds the prefix too (predicted), so it takes the next ones.
    follow = router.route("follow", prefix + tokens(rng, 128), now=5.6)
    assert follow.replica_id == spill.replica_id
    assert follow.cached_tokens == 2048
    router.check_integrity(now=6.0)


@pytest.mark.parametrize(("queued", "stays"), [(4000, True), (4200, False)])
def test_affinity_holds_exactly_while_the_queue_costs_less_than_moving_the_prefix(
    queued: int, stays: bool
) -> None:
    rng = random.Random(1)
    router = make_router(2, margin_rel=0.0)
    prompt = tokens(rng, 2176)
    cache = CacheReplica(num_blocks=200)
    cache.run(prompt[:2048])
    router.on_kv_events("r0", cache.drain(), now=0.0)
    router.on_load_report("r0", report(waiting_tokens=queued, waiting=1), now=0.0)
    decision = router.choose(prompt, now=0.0)
    # r0 costs (queued + 128) / rate. r1 costs 2176 / rate to prefill, plus affinity (1) times
    # the 2048 cached tokens it would copy: the cheaper one wins, at queued = 4096.
    assert (decision.replica_id == "r0") is stays
    assert decision.ttft_s == pytest.approx((queued + 128) / RATE if stays else 2176 / RATE)


class QueueFleet:
    """Replicas that prefill their queue of requests at RATE, FCFS, and report it."""

    def __init__(self, routers: list[PrefixAwarePolicy], replicas: list[str]) -> None:
        self.routers = routers
        self.queues: dict[str, list[float]] = {r: [] for r in replicas}
        self.served: Counter[str] = Counter()

    def send(self, replica: str, tokens: int) -> None:
        self.queues[replica].append(float(tokens))
        self.served[replica] += 1

    def advance(self, dt: float, now: float) -> None:
        for replica, queue in self.queues.items():
            budget = RATE * dt
            while queue and budget > 0:
                done = min(budget, queue[0])
                queue[0] -= done
                budget -= done
                if queue[0] <= 0:
                    queue.pop(0)
            load = report(waiting_tokens=int(sum(queue)), waiting=len(queue))
            for router in self.routers:
                router.on_load_report(replica, load, now=now)


def test_unique_prompts_spread_evenly() -> None:
    rng = random.Random(2)
    router = make_router(4)
    fleet = QueueFleet([router], router.replica_ids)
    for i in range(400):
        now = i * 0.05
        decision = router.route(f"u{i}", tokens(rng, 300), now=now)
        fleet.send(decision.replica_id, decision.uncached_tokens)
        if i % 5 == 4:
            fleet.advance(0.25, now)
    counts = fleet.served.values()
    assert max(counts) / (sum(counts) / 4) <= 1.1


def test_routers_fed_the_same_events_send_a_prefix_to_the_same_replica() -> None:
    rng = random.Random(3)
    routers = [make_router(8, seed=seed) for seed in range(4)]
    prefixes = [tokens(rng, 1024) for _ in range(8)]
    for i, prefix in enumerate(prefixes):  # group i is cached on replica i
        cache = CacheReplica(num_blocks=100)
        cache.run(prefix)
        events = cache.drain()
        for router in routers:
            router.on_kv_events(f"r{i}", events, now=0.0)
    for n in range(200):
        group = rng.randrange(8)
        router = routers[n % 4]
        decision = router.route(f"q{n}", prefixes[group] + tokens(rng, 64), now=0.01 * n)
        assert decision.replica_id == f"r{group}"
        router.release(decision.replica_id, f"q{n}")  # served at once: no queue builds up


def test_routers_sharing_one_view_do_not_herd_unique_traffic() -> None:
    rng = random.Random(4)
    routers = [make_router(8, seed=seed) for seed in range(4)]
    herded, picks = 0, Counter[str]()
    for round_ in range(60):
        now = float(round_)
        # One shared, slightly uneven view: an argmin would send all four to the same replica.
        queues = {f"r{i}": rng.randrange(30) for i in range(8)}
        for router in routers:
            for replica, queued in queues.items():
                router.on_load_report(replica, report(waiting_tokens=queued), now=now)
        chosen = []
        for router in routers:  # the same instant: no router sees the others' dispatches
            chosen.append(router.route(f"q{round_}", tokens(rng, 512), now=now).replica_id)
        herded += len(set(chosen)) == 1
        picks.update(chosen)
    assert herded <= 2
    assert max(picks.values()) <= 2 * (sum(picks.values()) / 8)


def test_a_replica_at_its_queue_cap_takes_nothing() -> None:
    router = make_router(3, cost=CostModel(max_waiting=8))
    router.on_load_report("r1", report(waiting=8), now=0.0)
    picks = set()
    for i in range(20):
        decision = router.route(f"q{i}", list(range(100 * i, 100 * i + 100)), now=0.0)
        picks.add(decision.replica_id)
        router.release(decision.replica_id, f"q{i}")
    assert picks == {"r0", "r2"}
    for replica in ("r0", "r2"):
        router.on_load_report(replica, report(waiting=8), now=0.1)
    with pytest.raises(OverloadedError):
        router.choose(list(range(100)), now=0.1)
    with pytest.raises(NoReplicaError):
        PrefixAwarePolicy().choose(list(range(100)), now=0.0)


def test_a_replica_short_of_free_blocks_costs_the_wait_for_memory() -> None:
    model = CostModel()
    assert model.kv_wait_s(needed_blocks=7, free_blocks=7) == 0.0
    assert model.kv_wait_s(needed_blocks=7, free_blocks=3) == pytest.approx(
        model.kv_penalty_s * 4 / 7
    )
    assert model.kv_wait_s(needed_blocks=7, free_blocks=-5) == model.kv_penalty_s
    router = make_router(2, margin_rel=0.0)
    router.on_load_report("r0", report(free=3), now=0.0)  # 100 tokens need 7 blocks
    router.on_load_report("r1", report(waiting_tokens=400, waiting=1), now=0.0)
    decision = router.choose(list(range(100)), now=0.0)
    # r0: 100 / rate + 0.25 * 4/7 = 0.155 s; r1: 500 / rate = 0.0625 s.
    assert decision.replica_id == "r1"


def test_a_nearly_full_replica_still_takes_a_prompt_that_needs_few_new_blocks() -> None:
    router = make_router(2)
    prompt = list(range(1000, 1000 + 16 * 160 + 5))
    cache = CacheReplica(num_blocks=200)
    cache.run(prompt[: 16 * 160])
    router.on_kv_events("r0", cache.drain(), now=0.0)
    router.on_load_report("r0", report(kv=0.97, free=3), now=0.0)
    decision = router.route("q", prompt, now=0.0)  # needs 1 new block on r0, 161 on r1
    assert decision.replica_id == "r0"
    assert router.choose(list(range(16 * 160)), now=0.0).replica_id == "r1"  # 160 do not fit


def test_dispatches_use_up_the_free_blocks_until_the_next_report() -> None:
    router = make_router(1)
    router.on_load_report("r0", report(free=20), now=0.0)
    for i in range(3):  # 300 tokens dispatched: 19 of the 20 free blocks will be taken
        router.route(f"q{i}", [i] * 100, now=0.0)
    assert router.choose([3] * 100, now=0.0).ttft_s == pytest.approx(
        400 / RATE + CostModel().kv_wait_s(7, 1)
    )


def test_dispatch_deltas_are_reconciled_by_the_next_report_or_the_first_token() -> None:
    load = ReplicaLoad(dispatch_lag_s=0.25)
    load.dispatched("a", 1000, now=0.0)
    load.dispatched("b", 500, now=1.0)
    load.dispatched("c", 200, now=1.0)
    assert load.queued_tokens == 1700 and load.num_waiting == 3
    load.on_report(report(waiting_tokens=900, waiting=1), now=1.1)  # reflects "a", not b, c
    assert load.queued_tokens == 900 + 700
    load.release("b")
    assert load.queued_tokens == 900 + 200
    load.on_report(report(), now=2.0)
    assert load.queued_tokens == 0 and load.num_pending == 0
    load.check_integrity()


def test_decode_pressure_and_kv_usage_raise_the_estimated_ttft() -> None:
    model = CostModel()
    base, busy, full = ReplicaLoad(0.0), ReplicaLoad(0.0), ReplicaLoad(0.0)
    busy.on_report(report(running=40), now=0.0)
    full.on_report(report(kv=0.9), now=0.0)
    assert model.queue_s(base, RATE) == 0.0
    assert model.queue_s(busy, RATE) == pytest.approx(40 * 16 / RATE)
    assert model.queue_s(full, RATE) == pytest.approx(model.kv_penalty_s / 2)


def test_an_eviction_clears_the_prediction_that_the_replica_holds_the_block() -> None:
    rng = random.Random(5)
    router = make_router(2, predicted_ttl_s=60.0)
    prompt = tokens(rng, 640)
    cache = CacheReplica(num_blocks=48)
    cache.run(prompt)  # r0 stores the prompt's blocks
    router.on_kv_events("r0", cache.drain(), now=0.0)
    router.route("again", prompt, now=1.0)  # a hit: recorded as a prediction on r0 too
    cache.run(tokens(rng, 48 * 16))  # r0 evicts every block of it
    router.on_kv_events("r0", cache.drain(), now=2.0)
    assert cache.cached_prefix_tokens(prompt) == 0
    # Well within the prediction's TTL, the index believes the eviction, not the prediction.
    assert router.index.longest_match(PromptBlocks(prompt, 16), now=3.0) == {}
    router.check_integrity(now=3.0)


def test_a_report_taken_after_a_dispatch_replaces_it_instead_of_adding_to_it() -> None:
    router = make_router(1, dispatch_lag_s=0.05)
    router.route("q", list(range(1600)), now=0.0)
    assert router.load("r0").queued_tokens == 1600
    # Taken at 0.2 s, the report counts the request in the replica's queue: once.
    router.on_load_report("r0", report(waiting_tokens=1600, waiting=1), now=0.2)
    assert router.load("r0").queued_tokens == 1600
    assert router.load("r0").num_requests == 1


def test_the_prefill_rate_replicas_measure_replaces_the_prior_for_the_pool() -> None:
    router = make_router(2, margin_rel=0.0)
    measured = LoadReport(0, 0, 0, 0.1, 1000, 0, 0, prefill_tokens_per_s=2000.0)
    router.on_load_report("r0", measured, now=0.0)
    router.on_load_report("r1", report(waiting_tokens=2000, waiting=1), now=0.0)
    decision = router.choose(list(range(800)), now=0.0)
    # Both at the measured 2000/s (the prior, 8000/s, would price r0 at 0.1 s): r0 0.4 s,
    # r1 (2000 + 800) / 2000 = 1.4 s.
    assert decision.replica_id == "r0"
    assert decision.ttft_s == pytest.approx(800 / 2000.0)


def test_a_hit_beats_a_miss_however_fast_prefill_is() -> None:
    # A fixed margin in seconds once made every replica "near-best" when prefill was fast.
    rng = random.Random(6)
    router = make_router(4)
    prefix = tokens(rng, 1024)
    cache = CacheReplica(num_blocks=100)
    cache.run(prefix)
    router.on_kv_events("r2", cache.drain(), now=0.0)
    fast = LoadReport(0, 0, 0, 0.1, 1000, 0, 0, prefill_tokens_per_s=1e7)
    for replica in router.replica_ids:
        router.on_load_report(replica, fast, now=0.0)
    picks = {router.choose(prefix + tokens(rng, 32), now=0.0).replica_id for _ in range(50)}
    assert picks == {"r2"}


@pytest.mark.parametrize("other_rate", [0.0, 5_000.0])
def test_unique_prompts_split_evenly_whatever_each_replica_measured(other_rate: float) -> None:
    """One replica measured a fast prefill (long prompts), the other a slow one (short
    prompts pay a step's fixed cost) or none yet: priced at their own figures, or at the
    prior, the second would look several times slower and draw almost nothing."""
    router = make_router(2)
    fast = LoadReport(0, 0, 0, 0.1, 1000, 0, 0, prefill_tokens_per_s=40_000.0)
    router.on_load_report("r0", fast, now=0.0)
    other = LoadReport(0, 0, 0, 0.1, 1000, 0, 0, prefill_tokens_per_s=other_rate)
    router.on_load_report("r1", other, now=0.0)
    pool_rate = 40_000.0 if not other_rate else (40_000.0 + other_rate) / 2
    # Both idle: a 4,000-token miss costs its prefill at the measured rate on either.
    decision = router.choose(list(range(4000)), now=0.0)
    assert decision.ttft_s == pytest.approx(4000 / pool_rate)
    rng = random.Random(1)
    picks = Counter(
        router.route(f"q{i}", tokens(rng, 256), now=0.01 * i).replica_id for i in range(16)
    )
    assert min(picks.values()) >= 6, picks
    router.add_replica("r2")  # a new one starts at the pool's rate too
    router.check_integrity(now=0.2)
