"""KV events from replicas to routers through a real redis-server: the routers' indexes converge
to what the replicas hold, late joiners catch up from snapshots, and a Redis restart costs
nothing but time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio

from cluster.kv_publisher import KVEventPublisher
from cluster.redis_server import RedisServer, RedisServerError
from router.hashing import PromptBlocks
from router.kv_bus import StreamKeys
from router.kv_subscriber import KVEventSubscriber
from router.policy import PrefixAwarePolicy, RouterConfig
from tests.router.replica_sim import CacheReplica
from tests.router.test_index import make_index
from tests.worker.engine_helpers import make_engine, run_all
from worker.errors import UnknownReplicaError
from worker.kv_events import KVEvent, KVEventLog
from worker.sampling_params import SamplingParams

BLOCK = 16
FAST = {"period_s": 0.01, "snapshot_period_s": 0.2}  # keeps the tests short, not the defaults


@pytest.fixture
def keys() -> StreamKeys:
    return StreamKeys(f"test{uuid.uuid4().hex[:12]}")  # tests share the session's Redis


def router_for(*replica_ids: str) -> PrefixAwarePolicy:
    policy = PrefixAwarePolicy(RouterConfig(block_size=BLOCK))
    for replica_id in replica_ids:
        policy.add_replica(replica_id)
    return policy


def drain_of(replica: CacheReplica) -> Callable[[], Awaitable[list[KVEvent]]]:
    async def drain() -> list[KVEvent]:
        return replica.drain()

    return drain


def make_prompts(seed: int, count: int) -> list[list[int]]:
    """Prompts sharing a few stems, so that they hit, extend and evict each other's blocks."""
    rng = random.Random(seed)
    stems = [[rng.randrange(50_000) for _ in range(BLOCK * rng.randrange(1, 5))] for _ in range(6)]
    return [
        rng.choice(stems) + [rng.randrange(50_000) for _ in range(rng.randrange(1, 40))]
        for _ in range(count)
    ]


async def serve(replica: CacheReplica, prompts: list[list[int]], pause_s: float = 0.003) -> None:
    for tokens in prompts:
        replica.run(tokens)
        await asyncio.sleep(pause_s)  # lets the publisher drain between prompts


def matches_truth(
    policy: PrefixAwarePolicy,
    publisher: KVEventPublisher,
    log: KVEventLog,
    prompts: list[list[int]],
) -> bool:
    """The publisher drained every event the replica logged, the policy has them all, and it
    matches every prompt as an index built from the replica's own snapshot does."""
    replica_id, truth = publisher.replica_id, publisher.snapshot()
    feed = policy.index.feed(replica_id)
    if not log.next_seq == truth.next_seq == feed.next_seq or feed.needs_resync:
        return False
    reference = make_index()
    reference.add_replica(replica_id)
    reference.apply_snapshot(replica_id, truth, now=0.0)
    now = time.monotonic()
    for tokens in prompts:
        prompt = PromptBlocks(tokens, BLOCK)
        expected = reference.longest_match(prompt, now=0.0).get(replica_id, 0)
        if policy.index.longest_match(prompt, now).get(replica_id, 0) != expected:
            return False
    return True


def matches(policy: PrefixAwarePolicy, prompts: list[list[int]]) -> list[dict[str, int]]:
    now = time.monotonic()
    return [policy.index.longest_match(PromptBlocks(tokens, BLOCK), now) for tokens in prompts]


async def eventually(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not reached before the deadline"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(*parts: KVEventPublisher | KVEventSubscriber) -> AsyncIterator[None]:
    """Start the parts, and close them at the end: close re-raises whatever stopped a task."""
    for part in parts:
        part.start()
    try:
        yield
    finally:
        for part in parts:
            await part.close()


async def test_router_index_converges_to_the_replica_cache(
    redis_server: RedisServer, keys: StreamKeys
) -> None:
    replica, prompts = CacheReplica(num_blocks=48), make_prompts(0, 80)
    log = replica.kv.pool.events
    publisher = KVEventPublisher(redis_server.url, keys, "r0", drain_of(replica), **FAST)
    policy = router_for("r0")
    subscriber = KVEventSubscriber(redis_server.url, keys, policy)
    subscriber.watch("r0")
    async with running(publisher, subscriber):
        await serve(replica, prompts)
        await eventually(lambda: matches_truth(policy, publisher, log, prompts))
    now = time.monotonic()
    for tokens in prompts:  # and the truth is the engine's cache itself
        cached = policy.index.longest_match(PromptBlocks(tokens, BLOCK), now).get("r0", 0)
        assert cached * BLOCK == replica.cached_prefix_tokens(tokens)
    policy.check_integrity(now)
    assert publisher.stats.published_batches > 10
    assert subscriber.stats.bad_entries == 0


async def test_engine_kv_events_reach_the_router_index(
    redis_server: RedisServer, keys: StreamKeys, demo_model_dir: Path
) -> None:
    engine = make_engine(demo_model_dir, block_size=BLOCK, num_kv_blocks=64)
    log = engine.kv.pool.events

    async def drain() -> list[KVEvent]:
        return engine.drain_kv_events()

    publisher = KVEventPublisher(redis_server.url, keys, "engine", drain, **FAST)
    policy = router_for("engine")
    subscriber = KVEventSubscriber(redis_server.url, keys, policy)
    subscriber.watch("engine")
    stem = list(range(100, 148))
    prompts = [stem + list(range(200 + 10 * i, 221 + 10 * i)) for i in range(4)]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    try:
        async with running(publisher, subscriber):
            for i, tokens in enumerate(prompts):
                run_all(engine, {f"req-{i}": tokens}, params)
                await asyncio.sleep(0.02)
            await eventually(lambda: matches_truth(policy, publisher, log, prompts))
    finally:
        engine.shutdown()
    now = time.monotonic()
    assert policy.index.longest_match(PromptBlocks(prompts[0], BLOCK), now) == {"engine": 4}
    policy.check_integrity(now)


async def test_late_subscriber_catches_up_through_the_snapshot_after_trimming(
    redis_server: RedisServer, keys: StreamKeys
) -> None:
    replica, prompts = CacheReplica(num_blocks=48), make_prompts(1, 250)
    log = replica.kv.pool.events
    drain = drain_of(replica)
    fast = {"period_s": 0.002, "snapshot_period_s": 0.2}
    publisher = KVEventPublisher(redis_server.url, keys, "r0", drain, max_stream_len=10, **fast)
    async with running(publisher):
        await serve(replica, prompts, pause_s=0.004)
        client = redis.asyncio.Redis.from_url(redis_server.url)
        stream_length = await client.xlen(keys.events("r0"))
        await client.aclose()
        assert stream_length < publisher.stats.published_batches  # the stream lost its start
        policy = router_for("r0")
        subscriber = KVEventSubscriber(redis_server.url, keys, policy)
        subscriber.watch("r0")
        async with running(subscriber):
            await eventually(lambda: matches_truth(policy, publisher, log, prompts))
    assert subscriber.stats.resyncs >= 1
    policy.check_integrity(time.monotonic())


async def test_two_routers_see_the_same_replicas(
    redis_server: RedisServer, keys: StreamKeys
) -> None:
    replicas = {name: CacheReplica(num_blocks=48) for name in ("a", "b")}
    publishers = [
        KVEventPublisher(redis_server.url, keys, name, drain_of(replica), **FAST)
        for name, replica in replicas.items()
    ]
    policies = [router_for("a", "b") for _ in range(2)]
    subscribers = [KVEventSubscriber(redis_server.url, keys, policy) for policy in policies]
    for subscriber in subscribers:
        subscriber.watch("a")
        subscriber.watch("b")
    prompts = make_prompts(2, 60)
    async with running(*publishers, *subscribers):
        await asyncio.gather(serve(replicas["a"], prompts[:40]), serve(replicas["b"], prompts[20:]))
        await eventually(
            lambda: all(
                matches_truth(policy, publisher, replicas[name].kv.pool.events, prompts)
                for policy in policies
                for name, publisher in zip(replicas, publishers, strict=True)
            )
        )
    first, second = (matches(policy, prompts) for policy in policies)
    assert first == second
    assert any(len(match) == 2 for match in first)  # some prompts are cached on both replicas


async def test_redis_restart_loses_nothing_but_time(keys: StreamKeys) -> None:
    replica, prompts = CacheReplica(num_blocks=48), make_prompts(3, 90)
    log = replica.kv.pool.events
    with RedisServer() as server:
        publisher = KVEventPublisher(server.url, keys, "r0", drain_of(replica), **FAST)
        policy = router_for("r0")
        subscriber = KVEventSubscriber(server.url, keys, policy)
        subscriber.watch("r0")
        async with running(publisher, subscriber):
            await serve(replica, prompts[:30])
            await eventually(lambda: matches_truth(policy, publisher, log, prompts))
            before, resyncs = matches(policy, prompts), subscriber.stats.resyncs

            await asyncio.to_thread(server.stop)
            await serve(replica, prompts[30:60])
            await eventually(lambda: not publisher.stats.connected)
            await eventually(lambda: not subscriber.stats.connected)
            # The replica's events are still drained, and the router still routes as it knew.
            await eventually(lambda: publisher.snapshot().next_seq == log.next_seq)
            assert matches(policy, prompts) == before

            await asyncio.to_thread(server.start)
            await serve(replica, prompts[60:])
            await eventually(lambda: matches_truth(policy, publisher, log, prompts))
    assert publisher.stats.reconnects >= 1
    assert publisher.stats.dropped_batches >= 1
    assert subscriber.stats.reconnects >= 1
    # The batches Redis never got come back through the snapshot the publisher rewrote.
    assert subscriber.stats.resyncs > resyncs
    policy.check_integrity(time.monotonic())


async def test_unwatched_replica_is_no_longer_read(
    redis_server: RedisServer, keys: StreamKeys
) -> None:
    replica, prompts = CacheReplica(num_blocks=48), make_prompts(4, 40)
    log = replica.kv.pool.events
    publisher = KVEventPublisher(redis_server.url, keys, "r0", drain_of(replica), **FAST)
    policy = router_for("r0")
    subscriber = KVEventSubscriber(redis_server.url, keys, policy)
    subscriber.watch("r0")
    async with running(publisher, subscriber):
        await serve(replica, prompts[:20])
        await eventually(lambda: matches_truth(policy, publisher, log, prompts))
        subscriber.unwatch("r0")
        read_up_to = policy.index.feed("r0").next_seq
        batches = publisher.stats.published_batches
        await serve(replica, prompts[20:])
        await eventually(lambda: publisher.stats.published_batches > batches)
        rounds = subscriber.stats.rounds
        await eventually(lambda: subscriber.stats.rounds >= rounds + 3)  # after the batch
    assert subscriber.watched == []
    assert policy.index.feed("r0").next_seq == read_up_to < publisher.snapshot().next_seq


async def test_undecodable_entries_are_counted_and_skipped(
    redis_server: RedisServer, keys: StreamKeys
) -> None:
    replica, prompts = CacheReplica(num_blocks=48), make_prompts(5, 40)
    log = replica.kv.pool.events
    publisher = KVEventPublisher(redis_server.url, keys, "r0", drain_of(replica), **FAST)
    policy = router_for("r0")
    subscriber = KVEventSubscriber(redis_server.url, keys, policy)
    subscriber.watch("r0")
    client = redis.asyncio.Redis.from_url(redis_server.url)
    async with running(publisher, subscriber):
        await serve(replica, prompts[:20])
        await client.xadd(keys.events("r0"), {b"events": b"\x80not json"})
        await client.xadd(keys.events("r0"), {b"other": b"[]"})
        await serve(replica, prompts[20:])
        await eventually(lambda: matches_truth(policy, publisher, log, prompts))
    await client.aclose()
    assert subscriber.stats.bad_entries == 2


async def test_watching_a_replica_the_policy_does_not_know_is_refused(
    redis_server: RedisServer, keys: StreamKeys
) -> None:
    subscriber = KVEventSubscriber(redis_server.url, keys, router_for("r0"))
    with pytest.raises(UnknownReplicaError):
        subscriber.watch("r1")
    await subscriber.close()


def test_missing_redis_binary_is_a_clear_error() -> None:
    with pytest.raises(RedisServerError, match="apt-get install redis-server"):
        RedisServer(binary="kvfleet-no-such-redis-server").start()
