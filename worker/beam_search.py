"""One beam search's decisions, step by step, as transformers' ``generate(num_beams=...)`` makes
them; no tensors and no KV blocks (worker/sequence_groups.py applies the decisions).

At each step every live beam offers its top K = ``max(2, 1 + stop tokens) x width`` next
tokens by log-probability:

    candidates = top K of  { beam.score + logprob(token | beam) }  over live beams x tokens
    live       = the best W candidates that do not stop (EOS, a stop token, the length limit)
    finished  += the candidates among the best W that do stop, scored
                 cumulative log-probability / generated_length ** length_penalty,
                 keeping the best W finished ever

The search ends when every candidate stops, when ``early_stopping`` is set and W beams have
finished, or when W have finished and no live beam could still beat the worst of them (the
live beam's score at its current length, transformers' heuristic).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Beam:
    """A live beam: the sequence it runs as, its generated tokens, and their log-probability."""

    sequence: str
    tokens: tuple[int, ...]
    score: float


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """A finished beam: its tokens (the stopping one included) and its length-penalized score."""

    tokens: tuple[int, ...]
    score: float
    cumulative_logprob: float
    finish_reason: str  # "stop" or "length"


@dataclass(frozen=True, slots=True)
class Continuation:
    """A live beam of the next step: ``parent``'s tokens plus ``token``."""

    parent: str
    token: int
    score: float


@dataclass(frozen=True, slots=True)
class StepDecision:
    """What one step decided: the next live beams (empty when the search is done) and whether
    it is done."""

    continuations: list[Continuation]
    done: bool


class BeamSearch:
    """Keeps the finished hypotheses and decides each step from the live beams' top tokens."""

    def __init__(
        self,
        width: int,
        max_tokens: int,
        stop_token_ids: frozenset[int],
        length_penalty: float = 1.0,
        early_stopping: bool = False,
    ) -> None:
        self.width = width
        self.max_tokens = max_tokens
        self.stop_token_ids = stop_token_ids
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.finished: list[Hypothesis] = []
        self._improvable = True

    @property
    def num_candidates(self) -> int:
        """How many top tokens each live beam offers: enough that ``width`` beams live on
        even if every stop token is among the best (transformers keeps as many)."""
        return max(2, 1 + len(self.stop_token_ids)) * self.width

    def step(self, beams: list[Beam], top: dict[str, list[tuple[int, float]]]) -> StepDecision:
        """``top[beam.sequence]``: the beam's best next tokens and their log-probabilities."""
        candidates = sorted(
            (
                (beam.score + logprob, beam, token)
                for beam in beams
                for token, logprob in top[beam.sequence][: self.num_candidates]
            ),
            key=lambda c: c[0],
            reverse=True,
        )[: self.num_candidates]
        length = len(beams[0].tokens) + 1  # every live beam has generated as many tokens
        stops = [self._stops(token, length) for _, _, token in candidates]
        continuations = [
            Continuation(beam.sequence, token, score)
            for (score, beam, token), stop in zip(candidates, stops, strict=True)
            if not stop
        ][: self.width]
        self._add_finished(candidates[: self.width], stops[: self.width], length)
        if continuations:
            best = continuations[0].score / length**self.length_penalty
            full = len(self.finished) == self.width
            self._improvable &= not full or best > self.finished[-1].score
        done = (
            all(stops)
            or not self._improvable
            or (self.early_stopping and len(self.finished) == self.width)
        )
        return StepDecision([] if done else continuations, done)

    def best(self, n: int) -> list[Hypothesis]:
        """The ``n`` best finished hypotheses, best first."""
        return self.finished[:n]

    def _stops(self, token: int, length: int) -> bool:
        return token in self.stop_token_ids or length >= self.max_tokens

    def _add_finished(
        self, candidates: list[tuple[float, Beam, int]], stops: list[bool], length: int
    ) -> None:
        # (transformers also skips this once the search cannot improve, or early_stopping has
        # W finished: here such a step has ended the search already.)
        for (score, beam, token), stop in zip(candidates, stops, strict=True):
            if stop:
                reason = "stop" if token in self.stop_token_ids else "length"
                penalized = score / length**self.length_penalty
                self.finished.append(Hypothesis((*beam.tokens, token), penalized, score, reason))
        self.finished.sort(key=lambda h: h.score, reverse=True)
        del self.finished[self.width :]
