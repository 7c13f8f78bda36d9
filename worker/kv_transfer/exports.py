"""The prefill side of a transfer: an engine's KV layout, and the handle to a request's
blocks."""

from __future__ import annotations

import time
from collections.abc import Sequence

from worker.config import EngineConfig
from worker.kv_transfer.handle import KVHandle, KVSource, prompt_digest
from worker.kv_transfer.layout import KVLayout, model_digest
from worker.model_config import ModelConfig
from worker.request import Request


def kv_layout_of(config: EngineConfig, model: ModelConfig) -> KVLayout:
    tp = config.tensor_parallel_size
    return KVLayout(
        model=model_digest(config.model.name, (config.model / "config.json").read_bytes()),
        dtype=model.dtype,
        kv_dtype=model.dtype,
        block_size=config.block_size,
        num_layers=model.num_hidden_layers,
        num_kv_heads=model.num_key_value_heads,
        head_dim=model.head_dim,
        tensor_parallel_size=tp,
        pipeline_parallel_size=config.pipeline_parallel_size,
        # Below one head per rank, heads are replicated (worker/parallel).
        kv_heads_per_rank=max(1, model.num_key_value_heads // tp),
    )


def make_handle(
    engine_id: str,
    request: Request,
    block_ids: Sequence[int],
    layout: KVLayout,
    sources: Sequence[KVSource],
    lease_s: float,
) -> KVHandle:
    return KVHandle(
        engine_id=engine_id,
        request_id=request.request_id,
        num_tokens=request.num_prompt_tokens,
        prompt_digest=prompt_digest(request.prompt_token_ids),
        block_ids=tuple(block_ids),
        layout=layout,
        compat_hash=layout.compat_hash,
        sources=tuple(sources),
        lease_expires_at=time.time() + lease_s,
    )
