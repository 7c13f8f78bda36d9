"""Running requests of several sequences (n > 1, beam search) and reading their outputs."""

from __future__ import annotations

from worker.engine import Engine
from worker.messages import RequestOutput
from worker.sampling_params import SamplingParams


def run_requests(
    engine: Engine, requests: dict[str, tuple[list[int] | str, SamplingParams]]
) -> list[RequestOutput]:
    """Submit every request at once, step until all finish, checking the cache's integrity at
    every step; every output, in order."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(engine.make_request(rid, prompt, params))
    outputs: list[RequestOutput] = []
    while engine.has_unfinished():
        outputs += engine.step()
        engine.check_integrity()
    return outputs


def sequences_of(outputs: list[RequestOutput], request_id: str) -> list[RequestOutput]:
    """One request's sequences, by index: each one's outputs merged into one (its tokens and
    text joined; the finish reason, stop reason and score of its last output)."""
    merged: dict[int, RequestOutput] = {}
    for out in outputs:
        if out.request_id != request_id:
            continue
        before = merged.get(out.index)
        if before is not None:
            tokens, text = before.token_ids + out.token_ids, before.text + out.text
            out = RequestOutput(
                out.request_id, tokens, text, None, out.finished, out.finish_reason,
                out.stop_reason, index=out.index, score=out.score,
            )  # fmt: skip
        merged[out.index] = out
    return [merged[i] for i in sorted(merged)]
