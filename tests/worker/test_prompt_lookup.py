"""Prompt-lookup drafting: which earlier occurrence of the latest n-gram it drafts from."""

from __future__ import annotations

import pytest

from worker.prompt_lookup import PromptLookup


def test_the_longest_ngram_with_an_earlier_occurrence_wins() -> None:
    # "2 3" occurred twice, "1 2 3" once: the 3-gram's continuation is drafted.
    tokens = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3]
    assert PromptLookup(1, 3).propose(tokens, 2) == [4, 5]
    assert PromptLookup(1, 2).propose(tokens, 2) == [7, 8]  # the most recent "2 3"


def test_the_most_recent_occurrence_followed_by_a_full_set_of_drafts() -> None:
    # A loop of period 2: the latest "5 6" ends two tokens before the end, so only "5 6"
    # follows it; an earlier one is followed by four tokens.
    tokens = [9, 5, 6, 5, 6, 5, 6, 5, 6]
    assert PromptLookup(2, 2).propose(tokens, 4) == [5, 6, 5, 6]
    # With no occurrence followed by enough, the most recent one's tokens.
    assert PromptLookup(1, 1).propose([4, 1, 4], 3) == [1, 4]


def test_token_ids_above_a_byte_match_whole_tokens_only() -> None:
    # 256 packs as bytes 00 01 00 00: "1, 0" must not match inside 256's bytes.
    assert PromptLookup(2, 2).propose([256, 7, 1, 0, 3, 1, 0], 1) == [3]
    assert PromptLookup(2, 2).propose([256, 0, 0, 5, 1, 0], 2) == []


def test_nothing_to_draft() -> None:
    lookup = PromptLookup(2, 4)
    assert lookup.propose([1, 2, 3, 4, 5], 4) == []  # no repeated n-gram
    assert lookup.propose([1, 2, 1, 2], 0) == []
    assert lookup.propose([7], 4) == []


@pytest.mark.parametrize(("min_n", "max_n"), [(0, 3), (4, 3)])
def test_bad_ngram_sizes_are_refused(min_n: int, max_n: int) -> None:
    with pytest.raises(ValueError, match="min_n"):
        PromptLookup(min_n, max_n)
