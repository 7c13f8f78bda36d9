"""Drive a synchronous Engine to completion in tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.config import EngineConfig
from worker.engine import Engine
from worker.messages import RequestOutput
from worker.sampling_params import SamplingParams


def make_engine(model: Path, **overrides: Any) -> Engine:
    """float32 unless asked otherwise: "auto" would be bf16 on some machines and not others."""
    overrides.setdefault("dtype", "float32")
    return Engine(EngineConfig(model=model, **overrides))


def run_all(
    engine: Engine,
    prompts: dict[str, list[int] | str],
    params: SamplingParams,
    salts: dict[str, str] | None = None,
) -> dict[str, list[RequestOutput]]:
    """Submit every prompt at once and step until all finish; outputs per request id."""
    for rid, prompt in prompts.items():
        engine.add_request(engine.make_request(rid, prompt, params, (salts or {}).get(rid)))
    outputs: dict[str, list[RequestOutput]] = {rid: [] for rid in prompts}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        engine.check_integrity()
    return outputs


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    return [t for out in outputs for t in out.token_ids]


def text_of(outputs: list[RequestOutput]) -> str:
    return "".join(out.text for out in outputs)


GREEDY_32 = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
