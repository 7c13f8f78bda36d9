"""Turns a step's logits into next tokens, one row per sampling request."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.messages import TokenLogprobs
from worker.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class SampledToken:
    token_id: int
    logprobs: TokenLogprobs | None


# What a step samples for one sampling row: a token, or with drafts to verify the accepted
# drafts and one more (worker/spec_decode.py).
RowTokens = list[SampledToken]


class Sampler:
    """Greedy rows take the argmax; the others are filtered (temperature, top-k, top-p, min-p)
    and sampled by the exponential race ``argmax(p / q), q ~ Exp(1)``. A seeded request draws its
    noise from its own generator, one draw per step, so its tokens do not depend on the batch."""

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> list[SampledToken]:
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if random_rows:
            rows = torch.tensor(random_rows)
            probs = self._filtered_probs(logits[rows], [params[i] for i in random_rows])
            noise = torch.empty_like(probs)
            for j, i in enumerate(random_rows):
                noise[j].exponential_(generator=generators[i])
            tokens[rows] = (probs / noise).argmax(dim=-1)
        token_ids = tokens.tolist()
        logprobs = self._logprobs(logits, token_ids, params)
        return [SampledToken(t, lp) for t, lp in zip(token_ids, logprobs, strict=True)]

    @staticmethod
    def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype)
        logits = logits / temperature[:, None]
        top_k = [p.top_k for p in params]
        if any(k > 0 for k in top_k):
            vocab = logits.shape[-1]
            k = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_k])
            kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
            logits = logits.masked_fill(logits < kth, float("-inf"))
        top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype)
        if bool((top_p < 1.0).any()):
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(dim=-1)
            # Drop a token when the mass strictly before it already reaches top_p.
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            drop = before >= top_p[:, None]
            logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(dim=-1)
        min_p = torch.tensor([p.min_p for p in params], dtype=probs.dtype)
        if bool((min_p > 0.0).any()):
            floor = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < floor, 0.0)
        return probs

    @staticmethod
    def _logprobs(
        logits: torch.Tensor, token_ids: list[int], params: list[SamplingParams]
    ) -> list[TokenLogprobs | None]:
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        result: list[TokenLogprobs | None] = [None] * len(params)
        if not wanted:
            return result
        logprobs = torch.log_softmax(logits[wanted].to(torch.float32), dim=-1)
        max_n = max(params[i].logprobs or 0 for i in wanted)
        top_values, top_ids = logprobs.topk(max_n, dim=-1) if max_n else (None, None)
        for j, i in enumerate(wanted):
            n = params[i].logprobs or 0
            top: tuple[tuple[int, float], ...] = ()
            if n and top_values is not None and top_ids is not None:
                top = tuple(zip(top_ids[j, :n].tolist(), top_values[j, :n].tolist(), strict=True))
            result[i] = TokenLogprobs(float(logprobs[j, token_ids[i]]), top)
        return result
