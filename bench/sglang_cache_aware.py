"""A reference implementation of the SGLang router's published ``cache_aware`` policy, written
from its documentation (sgl-project/sglang router docs; lightseekorg/smg docs/concepts/routing/
cache-aware.md), for bench.routing to compare against. Not imported from either project.

The rule, per request:
  - load is the router's own count of requests in flight on each worker;
  - the load is imbalanced when max - min > ``balance_abs_threshold`` and
    max > ``balance_rel_threshold`` x min: then the least-loaded worker;
  - otherwise the longest prefix match in an approximate radix tree of every prompt the router
    has sent (each insert tagged with the worker it went to): if the match covers at least
    ``cache_threshold`` of the prompt, the worker that most recently used the deepest matched
    node; else the least-loaded worker;
  - the prompt is then inserted under the chosen worker, whichever branch chose it.

Defaults are the SGLang router's (cache_threshold 0.5, balance_abs_threshold 32,
balance_rel_threshold 1.0001). Its background eviction (per-worker LRU above 2^24 tokens)
never triggers at this benchmark's sizes, so it is left out. Ties in load go to the lower index.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from bench.routing_sim import Policy


@dataclass
class _Node:
    """A radix-tree node: the token run on the edge into it, its children by first token, and
    for each worker that sent a prompt through it, when it last did."""

    edge: tuple[int, ...] = ()
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: dict[int, int] = field(default_factory=dict)


class ApproxRadixTree:
    """Token-level radix tree over the prompts the router sent, tagged by worker."""

    def __init__(self) -> None:
        self.root = _Node()
        self._clock = itertools.count(1)

    def insert(self, tokens: list[int], worker: int) -> None:
        tick = next(self._clock)
        node, i = self.root, 0
        node.last_used[worker] = tick
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                node.children[tokens[i]] = _Node(tuple(tokens[i:]), {}, {worker: tick})
                return
            common = _common_length(child.edge, tokens, i)
            if common < len(child.edge):  # split the edge where the prompt leaves it
                lower = _Node(child.edge[common:], child.children, dict(child.last_used))
                child.edge, child.children = child.edge[:common], {lower.edge[0]: lower}
            child.last_used[worker] = tick
            node, i = child, i + common

    def match(self, tokens: list[int]) -> tuple[int, int | None]:
        """(matched tokens, the worker that most recently used the deepest matched node)."""
        node, i, worker = self.root, 0, None
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            common = _common_length(child.edge, tokens, i)
            i += common
            worker = max(child.last_used, key=child.last_used.__getitem__)
            if common < len(child.edge):
                break
            node = child
        return i, worker


def _common_length(edge: tuple[int, ...], tokens: list[int], start: int) -> int:
    n = min(len(edge), len(tokens) - start)
    for k in range(n):
        if edge[k] != tokens[start + k]:
            return k
    return n


class SGLangCacheAware(Policy):
    def __init__(
        self,
        replicas: int,
        cache_threshold: float = 0.5,
        balance_abs_threshold: int = 32,
        balance_rel_threshold: float = 1.0001,
    ) -> None:
        self.tree = ApproxRadixTree()
        self.in_flight = [0] * replicas
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        loads = self.in_flight
        least = min(range(len(loads)), key=loads.__getitem__)
        high, low = max(loads), min(loads)
        imbalanced = (
            high - low > self.balance_abs_threshold and high > self.balance_rel_threshold * low
        )
        pick = least
        if not imbalanced:
            matched, worker = self.tree.match(tokens)
            if worker is not None and matched >= self.cache_threshold * len(tokens):
                pick = worker
        self.tree.insert(tokens, pick)
        loads[pick] += 1
        return pick

    def on_finished(self, replica: int, request_id: str, now: float) -> None:
        self.in_flight[replica] -= 1
