"""Speculative decoding: how many tokens a request may draft, and which drafts the target
accepts.

A step that verifies ``k`` drafts computes the request's last token and the drafts in one
forward pass and samples every one of the ``k + 1`` positions, each with the noise that
position would have drawn without speculation (ModelRunner seeds a row by its position):

    input      x    d1   d2   d3   d4          (x: the last token, d: drafts)
    sampled    t0   t1   t2   t3   t4          (t_i: the target's token after d1..d_i)
    accepted   d1 = t0, d2 = t1, d3 != t2  ->  new tokens t0 t1 t2

A draft is accepted while it equals the target's own sample; the first sample that differs (or,
all drafts accepted, the one after them) is kept too. Every new token is therefore the token the
target samples at that position given the tokens before it: greedy and seeded output equal
decoding without speculation, and unseeded output has the target's distribution exactly. This is
rejection sampling for a drafter that proposes one token with certainty (prompt lookup, and the
draft model, which drafts greedily): the draft is accepted with probability p(d), and on
rejection the token is drawn from p without d, renormalized (Leviathan et al., 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

# The input of a draft position the runner's draft model fills in (worker/draft_model.py).
DRAFTED_BY_MODEL = -1


def num_accepted(drafts: Sequence[int], sampled: Sequence[int]) -> int:
    """How many of ``drafts`` the target accepts, given its samples at their positions
    (``len(drafts) + 1`` of them); the new tokens are ``sampled[:accepted + 1]``."""
    accepted = 0
    for draft, token in zip(drafts, sampled, strict=False):
        if draft != token:
            break
        accepted += 1
    return accepted


def draft_budget(
    num_tokens: int, num_output_tokens: int, max_tokens: int, max_model_len: int, k: int
) -> int:
    """How many drafts a request may verify next: at most ``k``, and never so many that the
    tokens the step could produce (the drafts and one more) pass ``max_tokens`` or the context
    (so a draft's KV never lands outside the blocks the request may hold)."""
    return max(0, min(k, max_tokens - num_output_tokens - 1, max_model_len - num_tokens - 1))
