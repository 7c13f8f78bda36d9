"""KV transfer between engines in processes of their own, over each transport: the received
blocks are the source blocks byte for byte, disaggregated output is colocated output, and every
way a transfer can end (released, expired, aborted, refused, the prefill side killed) leaves
both block pools whole."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.engine_helpers import make_engine, run_all, tokens_of
from worker.async_engine import AsyncEngine
from worker.block_hash import extend_block_hashes, extra_keys_for
from worker.config import EngineConfig
from worker.engine import Engine
from worker.errors import EngineDeadError, InvalidRequestError
from worker.kv_transfer import KVHandle
from worker.kv_transfer.layout import KVLayoutMismatchError
from worker.kv_transfer.transport import KVTransferError, nixl_available
from worker.messages import GenerationRequest, RequestOutput
from worker.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = {
    "long": "the router sends each request where its prompt is cached " * 9,
    "short": "hello",
    "mid": "prefill is compute bound and decode is memory bound, so " * 3,
}
TRANSPORTS = ["nixl", "packed"]

Factory = Callable[..., AsyncEngine]


@pytest.fixture
def new_engine(demo_model_dir: Path) -> Iterator[Factory]:
    """Engines in processes of their own over the demo model; shut down after the test."""
    made: list[AsyncEngine] = []

    def make(**overrides: Any) -> AsyncEngine:
        if overrides.get("kv_transport") == "nixl" and not nixl_available():
            pytest.skip("NIXL is not installed (the nixl extra)")
        config = EngineConfig(model=demo_model_dir, dtype="float32", **overrides)
        engine = AsyncEngine.spawn(config, 1)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.shutdown()


# Run inside an engine (by reference, so that its process can unpickle them).


def _full_prompt_blocks(engine: Engine, prompt: list[int], count: int) -> list[bytes]:
    """The bytes of the first ``count`` full blocks of ``prompt``, every layer, keys and values,
    found in the engine's prefix cache by their hashes."""
    hashes: list[Any] = []
    extend_block_hashes(hashes, prompt, engine.kv.block_size, extra_keys_for(None))
    runner = engine.executor.runner  # type: ignore[attr-defined]
    found = []
    for block_hash in hashes[:count]:
        block = engine.kv.pool.lookup(block_hash)
        assert block is not None, "a prompt block is not cached"
        data = [cache[:, block.block_id].contiguous() for cache in runner.kv_caches]
        found.append(b"".join(t.view(torch.uint8).numpy().tobytes() for t in data))
    return found


def _pool_state(engine: Engine) -> tuple[int, int, int]:
    """(free blocks, all blocks, leased blocks), after checking every invariant."""
    engine.check_integrity()
    return engine.kv.pool.num_free, engine.num_blocks, engine.kv.num_leased_blocks


def _release(request_id: str, engine: Engine) -> bool:
    return engine.release_kv(request_id)


async def _collect(engine: AsyncEngine, request: GenerationRequest) -> list[RequestOutput]:
    return [output async for output in engine.generate(request)]


def _tokens(outputs: list[RequestOutput]) -> list[int]:
    return [t for output in outputs for t in output.token_ids]


async def _prefill(
    engine: AsyncEngine, request_id: str, prompt: str, lease_s: float = 30.0
) -> KVHandle:
    once = dataclasses.replace(GREEDY, max_tokens=1)
    request = engine.requests.build(request_id, prompt, once, None)
    outputs = await _collect(engine, dataclasses.replace(request, kv_lease_s=lease_s))
    handle = outputs[-1].kv_handle
    assert handle is not None
    return handle


def _decode_request(engine: AsyncEngine, request_id: str, prompt: str, handle: KVHandle) -> Any:
    request = engine.requests.build(request_id, prompt, GREEDY, None)
    return dataclasses.replace(request, kv_source=handle)


async def _assert_whole(*engines: AsyncEngine) -> None:
    for engine in engines:
        free, total, leased = await engine.call(_pool_state)
        assert (free, leased) == (total, 0), f"{total - free} blocks held, {leased} leased"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_received_blocks_are_the_source_blocks_byte_for_byte(
    new_engine: Factory, transport: str
) -> None:
    prefill, decode = new_engine(kv_transport=transport), new_engine(kv_transport=transport)
    prompt = PROMPTS["long"]

    async def run() -> tuple[list[bytes], list[bytes], int]:
        handle = await _prefill(prefill, "p", prompt)
        outputs = await _collect(decode, _decode_request(decode, "d", prompt, handle))
        ids = prefill.requests.tokenizer.encode(prompt)
        # Blocks wholly before the last prompt token, which the decode side recomputes.
        count = (len(ids) - 1) // prefill.config.block_size
        read = functools.partial(_full_prompt_blocks, prompt=ids, count=count)
        source = await prefill.call(read)  # still leased: the blocks are untouched
        received = await decode.call(read)
        await prefill.call(functools.partial(_release, handle.request_id))
        return source, received, outputs[-1].num_transferred_tokens

    source, received, transferred = asyncio.run(run())
    assert len(source) >= 4
    assert received == source
    assert transferred == len(prefill.requests.tokenizer.encode(prompt)) - 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disaggregated_greedy_output_equals_colocated(new_engine: Factory, transport: str) -> None:
    colocated = new_engine()
    prefill, decode = new_engine(kv_transport=transport), new_engine(kv_transport=transport)

    async def run() -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        expected, got = {}, {}
        for name, prompt in PROMPTS.items():
            reference = colocated.requests.build(name, prompt, GREEDY, None)
            expected[name] = _tokens(await _collect(colocated, reference))

        async def disaggregated(name: str) -> list[int]:
            handle = await _prefill(prefill, name, PROMPTS[name])
            outputs = await _collect(decode, _decode_request(decode, name, PROMPTS[name], handle))
            await prefill.call(functools.partial(_release, handle.request_id))
            return _tokens(outputs)

        # All at once: pulls and decodes interleave with each other's steps.
        results = await asyncio.gather(*(disaggregated(name) for name in PROMPTS))
        got = dict(zip(PROMPTS, results, strict=True))
        await _assert_whole(prefill, decode)
        return expected, got

    expected, got = asyncio.run(run())
    assert got == expected


def test_beams_and_samples_pulled_from_a_prefill_equal_colocated(new_engine: Factory) -> None:
    colocated = new_engine()
    prefill, decode = new_engine(kv_transport="packed"), new_engine(kv_transport="packed")
    prompt = PROMPTS["mid"]
    groups = {
        "beams": SamplingParams(max_tokens=8, temperature=0.0, beam_width=3, n=3, ignore_eos=True),
        "samples": SamplingParams(max_tokens=8, temperature=0.8, seed=9, n=3, ignore_eos=True),
    }

    def by_index(outputs: list[RequestOutput]) -> dict[int, list[int]]:
        tokens: dict[int, list[int]] = {}
        for output in outputs:
            tokens.setdefault(output.index, []).extend(output.token_ids)
        return tokens

    async def run() -> None:
        for name, params in groups.items():
            reference = colocated.requests.build(name, prompt, params, None)
            expected = by_index(await _collect(colocated, reference))
            handle = await _prefill(prefill, name, prompt)
            request = dataclasses.replace(
                decode.requests.build(name, prompt, params, None), kv_source=handle
            )
            outputs = await _collect(decode, request)
            await prefill.call(functools.partial(_release, handle.request_id))
            assert by_index(outputs) == expected, name
            assert outputs[-1].finished and sorted(by_index(outputs)) == [0, 1, 2]
        await _assert_whole(prefill, decode)

    asyncio.run(run())


def test_a_prompt_cached_on_the_decode_side_pulls_only_the_rest(new_engine: Factory) -> None:
    prefill, decode = new_engine(kv_transport="nixl"), new_engine(kv_transport="nixl")
    shared = PROMPTS["long"]
    prompt = shared + "and then a tail that only this request has"

    async def run() -> RequestOutput:
        await _collect(decode, decode.requests.build("warm", shared, GREEDY, None))
        handle = await _prefill(prefill, "p", prompt)
        outputs = await _collect(decode, _decode_request(decode, "d", prompt, handle))
        await prefill.call(functools.partial(_release, handle.request_id))
        return outputs[-1]

    final = asyncio.run(run())
    assert final.num_cached_tokens > 0
    num_prompt = len(prefill.requests.tokenizer.encode(prompt))
    assert final.num_transferred_tokens == num_prompt - 1 - final.num_cached_tokens


def test_an_unreleased_lease_expires_and_frees_the_blocks(new_engine: Factory) -> None:
    prefill = new_engine(kv_transport="nixl")

    async def run() -> tuple[int, int, int]:
        await _prefill(prefill, "p", PROMPTS["long"], lease_s=0.5)
        held = await prefill.call(_pool_state)
        assert held[2] > 0, "the exported blocks are not leased"
        await asyncio.sleep(1.0)  # the engine is idle: its loop must still wake to expire
        return held

    asyncio.run(run())
    asyncio.run(_assert_whole(prefill))


def test_release_frees_the_blocks_at_once_and_only_once(new_engine: Factory) -> None:
    prefill = new_engine(kv_transport="nixl")

    async def run() -> list[bool]:
        handle = await _prefill(prefill, "p", PROMPTS["long"])
        release = functools.partial(_release, handle.request_id)
        return [await prefill.call(release), await prefill.call(release)]

    assert asyncio.run(run()) == [True, False]
    asyncio.run(_assert_whole(prefill))


def test_the_packed_transport_holds_nothing_after_export(new_engine: Factory) -> None:
    prefill = new_engine(kv_transport="packed")
    asyncio.run(_prefill(prefill, "p", PROMPTS["long"]))
    asyncio.run(_assert_whole(prefill))


def test_an_aborted_prefill_leases_nothing(new_engine: Factory) -> None:
    prefill = new_engine(kv_transport="nixl")
    long = dataclasses.replace(GREEDY, max_tokens=200)

    async def run() -> None:
        request = prefill.requests.build("p", PROMPTS["long"], long, None)
        stream = prefill.generate(dataclasses.replace(request, kv_lease_s=30.0))
        await anext(stream)
        await stream.aclose()  # the client went away: the engine aborts the request

    asyncio.run(run())
    asyncio.run(_assert_whole(prefill))


def test_a_layout_mismatch_is_refused_naming_what_differs(new_engine: Factory) -> None:
    prefill = new_engine(kv_transport="nixl")
    decode = new_engine(kv_transport="nixl", block_size=32)

    async def run() -> None:
        handle = await _prefill(prefill, "p", PROMPTS["long"])
        await _collect(decode, _decode_request(decode, "d", PROMPTS["long"], handle))

    # Refused as what it is, not as a failed engine (which the decode engine is not).
    with pytest.raises(KVLayoutMismatchError, match=r"block_size: 32 vs 16"):
        asyncio.run(run())
    asyncio.run(_assert_whole(decode))


def test_a_handle_for_another_prompt_is_refused(new_engine: Factory) -> None:
    prefill, decode = new_engine(kv_transport="packed"), new_engine(kv_transport="packed")

    async def run() -> None:
        handle = await _prefill(prefill, "p", PROMPTS["long"])
        await _collect(decode, _decode_request(decode, "d", PROMPTS["mid"], handle))

    with pytest.raises(InvalidRequestError, match="made for another prompt"):
        asyncio.run(run())


def test_a_killed_prefill_engine_costs_a_recompute_not_a_hang(new_engine: Factory) -> None:
    colocated = new_engine()
    prefill = new_engine(kv_transport="nixl")
    decode = new_engine(kv_transport="nixl", kv_transfer_timeout_s=2.0)
    prompt = PROMPTS["long"] + "with a tail the decode side has not seen"

    async def run() -> tuple[list[int], RequestOutput, list[int]]:
        reference = colocated.requests.build("c", prompt, GREEDY, None)
        expected = _tokens(await _collect(colocated, reference))
        # The decode side holds part of the prompt: the fallback starts from those blocks.
        await _collect(decode, decode.requests.build("warm", PROMPTS["long"], GREEDY, None))
        handle = await _prefill(prefill, "p", prompt)
        os.kill(prefill.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        stream = decode.generate(_decode_request(decode, "d", prompt, handle))
        outputs = [await asyncio.wait_for(anext(stream), timeout=30)]
        await decode.call(_pool_state)  # the fallback holds each block once
        outputs += [output async for output in stream]
        await _assert_whole(decode)
        return expected, outputs[-1], _tokens(outputs)

    expected, final, got = asyncio.run(run())
    assert got == expected
    assert final.num_transferred_tokens == 0  # recomputed
    assert final.num_cached_tokens > 0


def test_a_killed_decode_engine_leaves_the_prefill_side_to_expire_its_lease(
    new_engine: Factory,
) -> None:
    prefill = new_engine(kv_transport="nixl")
    decode = new_engine(kv_transport="nixl")
    long = dataclasses.replace(GREEDY, max_tokens=400)

    async def run() -> None:
        handle = await _prefill(prefill, "p", PROMPTS["long"], lease_s=1.0)
        request = _decode_request(decode, "d", PROMPTS["long"], handle)
        stream = decode.generate(dataclasses.replace(request, params=long))
        await anext(stream)  # pulled, decoding
        os.kill(decode.pid, signal.SIGKILL)  # nobody will release the prefill side's blocks
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        await asyncio.sleep(1.5)

    asyncio.run(run())
    asyncio.run(_assert_whole(prefill))


def test_a_client_cancel_while_its_pull_waits_frees_everything(new_engine: Factory) -> None:
    prefill = new_engine(kv_transport="nixl")
    decode = new_engine(kv_transport="nixl", max_num_seqs=1)  # one running request at a time
    busy = dataclasses.replace(GREEDY, max_tokens=400)

    async def run() -> None:
        handle = await _prefill(prefill, "p", PROMPTS["long"])
        running = decode.generate(decode.requests.build("busy", PROMPTS["mid"], busy, None))
        await anext(running)
        pull = decode.generate(_decode_request(decode, "d", PROMPTS["long"], handle))
        task = asyncio.ensure_future(anext(pull))
        await asyncio.sleep(0.3)  # waiting for a sequence slot, its pull not started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pull.aclose()
        await running.aclose()
        await _assert_whole(decode)

    asyncio.run(run())


def test_a_failed_export_ends_the_prefill_without_a_handle_and_holds_nothing(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport that cannot export (a rank refusing, say) costs the reader a local prefill;
    the engine keeps serving and keeps no block."""
    engine = make_engine(demo_model_dir, kv_transport="packed")

    def refuse(block_ids: Any, key: str) -> Any:
        raise KVTransferError("the staging arena of rank 1 is full")

    monkeypatch.setattr(engine.executor, "export_kv", refuse)
    once = dataclasses.replace(GREEDY, max_tokens=1)
    request = engine.make_request("p", PROMPTS["long"], once)
    engine.add_request(dataclasses.replace(request, kv_lease_s=30.0))
    outputs = run_all(engine, {"after": PROMPTS["short"]}, GREEDY)
    final = [o for o in outputs["p"] if o.finished]
    assert final and final[0].kv_handle is None and final[0].finish_reason == "length"
    assert tokens_of(outputs["after"])  # still serving
    engine.check_integrity()
    assert engine.kv.num_leased_blocks == 0
    assert engine.kv.pool.num_free == engine.num_blocks


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kv_cache_dtype", ["int8", "fp8"])
def test_quantized_blocks_travel_with_their_scales(
    new_engine: Factory, transport: str, kv_cache_dtype: str
) -> None:
    """A quantized cache's scales sit inside its blocks' bytes (kernels/kv_quant.py): received
    blocks equal the source's byte for byte, and the decode side's output equals a colocated
    quantized engine's."""
    colocated = new_engine(kv_cache_dtype=kv_cache_dtype)
    prefill = new_engine(kv_transport=transport, kv_cache_dtype=kv_cache_dtype)
    decode = new_engine(kv_transport=transport, kv_cache_dtype=kv_cache_dtype)
    prompt = PROMPTS["long"]

    async def run() -> tuple[list[int], list[int], list[bytes], list[bytes]]:
        reference = colocated.requests.build("c", prompt, GREEDY, None)
        expected = _tokens(await _collect(colocated, reference))
        handle = await _prefill(prefill, "p", prompt)
        assert handle.layout.kv_dtype == kv_cache_dtype
        outputs = await _collect(decode, _decode_request(decode, "d", prompt, handle))
        ids = prefill.requests.tokenizer.encode(prompt)
        count = (len(ids) - 1) // prefill.config.block_size
        read = functools.partial(_full_prompt_blocks, prompt=ids, count=count)
        source, received = await prefill.call(read), await decode.call(read)
        await prefill.call(functools.partial(_release, handle.request_id))
        await _assert_whole(prefill, decode)
        return expected, _tokens(outputs), source, received

    expected, got, source, received = asyncio.run(run())
    assert len(source) >= 4 and received == source
    assert got == expected


@pytest.mark.parametrize(
    ("prefill_settings", "message"),
    [
        ({"kv_cache_dtype": "int8"}, r"kv_dtype: float32 vs int8"),
        ({"quantization": "int8"}, r"weights: full vs int8"),  # other keys and values
    ],
    ids=["int8_kv", "int8_weights"],
)
def test_a_quantized_prefill_is_refused_by_an_unquantized_decode_naming_the_difference(
    new_engine: Factory, prefill_settings: dict[str, str], message: str
) -> None:
    prefill = new_engine(kv_transport="packed", **prefill_settings)
    decode = new_engine(kv_transport="packed")

    async def run() -> None:
        handle = await _prefill(prefill, "p", PROMPTS["long"])
        await _collect(decode, _decode_request(decode, "d", PROMPTS["long"], handle))

    with pytest.raises(KVLayoutMismatchError, match=message):
        asyncio.run(run())
    asyncio.run(_assert_whole(decode))
