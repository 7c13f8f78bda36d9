"""The reference of vLLM's n-gram drafter drafts from the first occurrence, as vLLM's
documentation says (kvfleet's drafter prefers a recent one: tests/worker/test_prompt_lookup.py)."""

from __future__ import annotations

from bench.vllm_ngram import FirstMatchNgram


def test_the_vllm_reference_drafts_from_the_first_occurrence() -> None:
    # vLLM's documented example: [1, 2, 3, 4, 2, 3], n in [2, 3], k = 4 drafts [4, 2, 3].
    assert FirstMatchNgram(2, 3).propose([1, 2, 3, 4, 2, 3], 4) == [4, 2, 3]
    assert FirstMatchNgram(1, 1).propose([5, 6, 5, 7, 5], 1) == [6]
    assert FirstMatchNgram(2, 2).propose([1, 2, 3], 2) == []
