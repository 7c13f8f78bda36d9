"""The SGLang cache_aware reference bench.routing compares against: its radix tree matches what
was sent, and its rule follows the published one."""

from __future__ import annotations

from bench.sglang_cache_aware import ApproxRadixTree, SGLangCacheAware


def test_the_tree_matches_the_longest_sent_prefix_and_its_latest_worker() -> None:
    tree = ApproxRadixTree()
    tree.insert([1, 2, 3, 4, 5], worker=0)
    tree.insert([1, 2, 3, 9], worker=1)  # splits the edge after [1, 2, 3]
    assert tree.match([1, 2, 3, 4, 5, 6]) == (5, 0)
    assert tree.match([1, 2, 3, 9, 9]) == (4, 1)
    assert tree.match([1, 2, 3, 7]) == (3, 1)  # [1, 2, 3] was used last by worker 1
    assert tree.match([1, 2]) == (2, 1)
    assert tree.match([8]) == (0, None)
    tree.insert([1, 2, 3, 4, 5], worker=2)
    assert tree.match([1, 2, 3]) == (3, 2)


def test_a_match_of_half_the_prompt_sticks_and_less_goes_to_the_least_loaded() -> None:
    policy = SGLangCacheAware(replicas=3)
    prefix = list(range(100))
    assert policy.route("a", [*prefix, 1000], now=0.0) == 0  # all idle: the lowest index
    assert policy.route("b", [*prefix, 1001], now=0.0) == 0  # matches 100 of 101
    # 100 of 201 tokens is under half: the least-loaded worker instead.
    assert policy.route("c", [*prefix, *range(5000, 5101)], now=0.0) == 1
    policy.on_finished(0, "a", now=1.0)
    policy.on_finished(0, "b", now=1.0)
    assert policy.in_flight == [0, 1, 0]


def test_an_imbalance_past_both_thresholds_goes_to_the_least_loaded() -> None:
    policy = SGLangCacheAware(replicas=2, balance_abs_threshold=2)
    prefix = list(range(64))
    picks = [policy.route(f"q{i}", [*prefix, i], now=0.0) for i in range(5)]
    # Affinity keeps worker 0 until it leads by more than 2 in flight; then the least loaded,
    # which becomes the prefix's most recent user, so affinity follows it there.
    assert picks == [0, 0, 0, 1, 1]
