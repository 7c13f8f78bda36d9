"""A reference of vLLM's n-gram drafter ("ngram" speculative method), written from its
documentation: for n from ``prompt_lookup_max`` down to ``prompt_lookup_min``, find the
last n tokens earlier in the context, and propose up to k tokens that followed the match. vLLM
scans with KMP from the start, so the match it uses is the first (earliest) occurrence;
kvfleet's worker/prompt_lookup.py uses the most recent one. Same interface as PromptLookup, so
bench.quant_spec can put it in an engine in its place."""

from __future__ import annotations


class FirstMatchNgram:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, token_ids: list[int], max_drafts: int) -> list[int]:
        if max_drafts <= 0:
            return []
        length = len(token_ids)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            suffix = token_ids[-n:]
            for start in range(length - n):  # matches that leave at least one token after
                if token_ids[start : start + n] == suffix:
                    return token_ids[start + n : start + n + max_drafts]
        return []
