"""Router keys follow the engine's block boundaries and salt semantics, and are stable."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from router.hashing import PromptBlocks, chain_key, root_seed
from worker.block_hash import extend_block_hashes, extra_keys_for
from worker.request import Request
from worker.sampling_params import SamplingParams

BLOCK = 16


def engine_hashes(tokens: list[int], salt: str | None) -> list[bytes]:
    hashes: list[bytes] = []
    extend_block_hashes(hashes, tokens, BLOCK, extra_keys_for(salt))
    return hashes


def router_keys(tokens: list[int], salt: str | None) -> list[int]:
    return PromptBlocks(tokens, BLOCK, salt).keys().tolist()


# Prompts built from a few shared stems so that equal prefixes are common, and from a tiny
# vocabulary so that equal blocks at different positions are too.
prompt_parts = st.lists(st.sampled_from([0, 1, 2]), min_size=0, max_size=4)
salts = st.sampled_from([None, "", "tenant-a", "tenant-b"])


def build(parts: list[int], tail: list[int]) -> list[int]:
    stems = [[1] * 16, [2] * 16, list(range(16))]
    return [t for p in parts for t in stems[p]] + tail


@settings(max_examples=200, deadline=None)
@given(
    prompts=st.lists(
        st.tuples(prompt_parts, st.lists(st.integers(0, 3), max_size=40), salts),
        min_size=2,
        max_size=5,
    )
)
def test_router_keys_are_equal_exactly_when_engine_hashes_are(
    prompts: list[tuple[list[int], list[int], str | None]],
) -> None:
    engine: list[bytes] = []
    router: list[int] = []
    for parts, tail, salt in prompts:
        tokens = build(parts, tail)
        hashes, keys = engine_hashes(tokens, salt), router_keys(tokens, salt)
        assert len(hashes) == len(keys) == len(tokens) // BLOCK  # same block boundaries
        engine += hashes
        router += keys
    for i in range(len(engine)):
        for j in range(len(engine)):
            assert (engine[i] == engine[j]) == (router[i] == router[j])


def test_router_blocks_match_the_engine_requests_blocks() -> None:
    tokens = list(range(100, 171))  # 4 full blocks and a partial one
    request = Request("r", tokens, SamplingParams(), BLOCK, cache_salt="s")
    prompt = PromptBlocks(tokens, BLOCK, "s")
    assert prompt.num_blocks == len(request.block_hashes) == 4
    assert prompt.max_match_blocks == 4  # the last token is never a hit; it is in block 5
    assert PromptBlocks(tokens[:64], BLOCK).max_match_blocks == 3  # ... here in block 4


def test_a_different_salt_shares_no_key_and_an_empty_salt_is_no_salt() -> None:
    tokens = list(range(64))
    plain, salted, other = (router_keys(tokens, s) for s in (None, "a", "b"))
    assert router_keys(tokens, "") == plain
    assert not set(plain) & set(salted)
    assert not set(salted) & set(other)


def test_prompt_keys_are_the_chain_of_chain_key_the_events_use() -> None:
    for salt in (None, "salt"):
        tokens = list(range(1000, 1100))
        prompt = PromptBlocks(tokens, BLOCK, salt)
        expected, parent = [], root_seed(salt)
        for i in range(len(tokens) // BLOCK):
            parent = chain_key(parent, tokens[i * BLOCK : (i + 1) * BLOCK])
            expected.append(parent)
        assert prompt.first_key() == expected[0]
        assert prompt.keys().tolist() == expected


def test_long_prompts_extend_the_power_tables() -> None:
    tokens = [7] * (16 * 3000)
    keys = PromptBlocks(tokens, BLOCK).keys()
    parent = root_seed(None)
    for _ in range(3000):
        parent = chain_key(parent, [7] * 16)
    assert int(keys[-1]) == parent
    assert len(set(keys.tolist())) == 3000  # equal blocks, different positions


KEY_SCRIPT = (
    "from router.hashing import PromptBlocks\n"
    "print(PromptBlocks(list(range(40)), 16, 'tenant').keys().tolist())\n"
)


def test_keys_are_the_same_in_every_process_whatever_the_hash_seed() -> None:
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout.strip())
    assert outputs == {str(PromptBlocks(list(range(40)), 16, "tenant").keys().tolist())}


def test_key_values_are_pinned() -> None:
    # Routers of one fleet must agree on keys; this fails if CPython ever changes its int or
    # tuple hash (stable since 3.8), or if someone changes the router's key scheme.
    assert root_seed(None) == -6444284191252994458
    assert chain_key(root_seed(None), range(16)) == -3815651087656337220
