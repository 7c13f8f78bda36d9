"""Prompts with controlled prefixes, and sending many at once through one router."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient

SHORT = {"max_tokens": 4, "temperature": 0.0, "ignore_eos": True}


def token_prompt(seed: int, length: int) -> list[int]:
    """Token ids no other seed shares a block with (ids from the middle of the vocabulary)."""
    rng = random.Random(seed)
    return [rng.randrange(300, 8000) for _ in range(length)]


def finish(client: GenerationClient, prompt: list[int]) -> pb.Finished:
    return list(client.generate(prompt, **SHORT))[-1].finished


def finish_all(client: GenerationClient, prompts: list[list[int]]) -> list[pb.Finished]:
    """Send every prompt at once (one thread each) and wait for all."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: finish(client, p), prompts))
