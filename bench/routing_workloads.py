"""The workloads of bench.routing's closed-loop simulation, as sessions of turns.

A session is what one client sends in order, each turn after the previous one's answer: one
turn for the single-shot workloads, several for a conversation, whose every prompt is the whole
conversation so far plus a new user message. Token ids are random, so prefixes are shared only
where a workload shares them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

VOCAB = 150_000


@dataclass(frozen=True)
class Turn:
    """A new user message; ``history`` says whether the prompt starts with the session's
    conversation so far (every earlier prompt and answer); ``think_s`` is how long the user
    takes to write it once the previous answer is complete."""

    message: tuple[int, ...]
    history: bool
    think_s: float = 0.0


Session = list[Turn]


@dataclass(frozen=True)
class Workload:
    name: str
    sessions: list[Session]
    num_groups: int  # shared prefixes (groups or conversations): what the caches must hold
    prefix_tokens: int  # tokens of one shared prefix, at its longest


def _tokens(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.randrange(VOCAB) for _ in range(n))


def _question(rng: random.Random, mean: int) -> tuple[int, ...]:
    return _tokens(rng, rng.randrange(mean * 4 // 5, mean * 6 // 5 + 1))


def generated_shared_prefix(
    groups: int, per_group: int, prefix: int, question: int, seed: int
) -> Workload:
    """SGLang's generated-shared-prefix shape: ``groups`` system prompts of ``prefix`` tokens,
    ``per_group`` questions of about ``question`` tokens each, shuffled."""
    rng = random.Random(seed)
    systems = [_tokens(rng, prefix) for _ in range(groups)]
    sessions = [
        [Turn(s + _question(rng, question), False)] for s in systems for _ in range(per_group)
    ]
    rng.shuffle(sessions)
    return Workload("shared_prefix", sessions, groups, prefix)


def zipf_shared_prefix(
    groups: int, requests: int, prefix: int, question: int, seed: int, s: float = 1.1
) -> Workload:
    """The same prompts, but each request's group drawn with Zipf(s) popularity: a few groups
    are hot, most are cold."""
    rng = random.Random(seed)
    systems = [_tokens(rng, prefix) for _ in range(groups)]
    weights = [1 / (rank + 1) ** s for rank in range(groups)]
    picks = rng.choices(range(groups), weights, k=requests)
    sessions = [[Turn(systems[g] + _question(rng, question), False)] for g in picks]
    return Workload("zipf_prefix", sessions, groups, prefix)


def conversations(
    count: int, turns: int, first: int, message: int, think_s: float, seed: int
) -> Workload:
    """``count`` conversations of ``turns`` turns: a first message of ``first`` tokens, then
    messages of about ``message`` tokens, each prompt the whole conversation so far, each after
    an exponentially distributed think time of mean ``think_s`` (without it, a closed loop would
    send a conversation's next turn the instant its replica frees a slot, and even a
    least-loaded rule would keep it there)."""
    rng = random.Random(seed)
    sessions = [
        [Turn(_tokens(rng, first), False)]
        + [
            Turn(_question(rng, message), True, rng.expovariate(1 / think_s))
            for _ in range(turns - 1)
        ]
        for _ in range(count)
    ]
    return Workload("multi_turn", sessions, count, first + turns * message)


def unique_prompts(requests: int, length: int, seed: int) -> Workload:
    """No sharing at all: the control, where only load balance matters."""
    rng = random.Random(seed)
    sessions = [[Turn(_tokens(rng, length), False)] for _ in range(requests)]
    return Workload("no_sharing", sessions, 0, 0)
