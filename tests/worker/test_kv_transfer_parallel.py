"""KV transfer between multi-rank replicas: each rank of the decode replica pulls its own shard
(its heads with tensor parallelism, its layers with pipeline parallelism) from the same rank of
the prefill replica, over the control channel's commands; the output is the single-rank
colocated engine's."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from tests.worker.engine_helpers import make_engine, run_all, tokens_of
from tests.worker.test_kv_transfer import (
    GREEDY,
    PROMPTS,
    TRANSPORTS,
    _collect,
    _decode_request,
    _pool_state,
    _prefill,
    _release,
    _tokens,
)
from worker.async_engine import AsyncEngine
from worker.config import EngineConfig
from worker.engine import Engine
from worker.kv_transfer.transport import nixl_available

pytestmark = pytest.mark.slow
POOL_RESOURCE = "kvfleet_pool_test"  # as the Helm chart gives each pool's pods


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        num_cpus=8,
        resources={POOL_RESOURCE: 4},
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.mark.parametrize(
    ("transport", "tp", "pp"), [(t, 2, 1) for t in TRANSPORTS] + [("nixl", 1, 2)]
)
def test_parallel_replicas_exchange_each_ranks_shard(
    local_ray: None, demo_model_dir: Path, transport: str, tp: int, pp: int
) -> None:
    if transport == "nixl" and not nixl_available():
        pytest.skip("NIXL is not installed (the nixl extra)")
    prompt = PROMPTS["long"]
    expected = tokens_of(run_all(make_engine(demo_model_dir), {"c": prompt}, GREEDY)["c"])
    config = EngineConfig(
        model=demo_model_dir,
        dtype="float32",
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        kv_transport=transport,
    )
    prefill, decode = AsyncEngine(Engine(config)), AsyncEngine(Engine(config))

    async def run() -> tuple[list[int], int, int]:
        handle = await _prefill(prefill, "p", prompt)
        outputs = await _collect(decode, _decode_request(decode, "d", prompt, handle))
        released = await prefill.call(functools.partial(_release, handle.request_id))
        assert released == handle.leased  # the packed transport holds nothing to release
        for engine in (prefill, decode):
            free, total, leased = await engine.call(_pool_state)
            assert (free, leased) == (total, 0)
        return _tokens(outputs), outputs[-1].num_transferred_tokens, len(handle.sources)

    try:
        got, transferred, ranks = asyncio.run(run())
    finally:
        prefill.shutdown()
        decode.shutdown()
    assert ranks == 2
    assert transferred == len(decode.requests.tokenizer.encode(prompt)) - 1
    assert got == expected


def test_ranks_ask_for_their_pools_custom_resource(local_ray: None, demo_model_dir: Path) -> None:
    config = EngineConfig(
        model=demo_model_dir,
        dtype="float32",
        tensor_parallel_size=2,
        ray_resources=((POOL_RESOURCE, 1.0),),
    )
    engine = Engine(config)
    try:
        assert ray.available_resources().get(POOL_RESOURCE) == 2  # one per rank, of 4
    finally:
        engine.shutdown()
