"""The prefill side of a transfer: an engine's KV layout, and the handles to the blocks of the
requests it exports, leased until their reader releases them or the lease runs out."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

from worker.config import EngineConfig
from worker.executor import Executor
from worker.kv_cache_manager import KVCacheManager
from worker.kv_transfer.handle import KVHandle, KVSource, prompt_digest
from worker.kv_transfer.layout import KVLayout, model_digest
from worker.kv_transfer.transport import KVTransferError
from worker.model_config import ModelConfig
from worker.request import Request

_log = logging.getLogger(__name__)


class KVExports:
    """Requests whose KV another replica will pull (``add``), until they end (``finish``: the
    handle, and the blocks leased if the transport reads them in place), and the leases until
    ``release`` or ``expire``. ``leased`` is what the executor said when its transport
    opened."""

    def __init__(
        self,
        kv: KVCacheManager,
        executor: Executor,
        engine_id: str,
        layout: KVLayout,
        leased: bool,
    ) -> None:
        self.kv = kv
        self.executor = executor
        self.engine_id = engine_id
        self.layout = layout
        self.leased = leased
        self._lease_s: dict[str, float] = {}  # request id -> lease seconds, until it ends

    def add(self, request_id: str, lease_s: float) -> None:
        self._lease_s[request_id] = lease_s

    def discard(self, request_id: str) -> None:
        """An aborted request exports nothing."""
        self._lease_s.pop(request_id, None)

    def finish(self, request: Request) -> KVHandle | None:
        """Call before the request's blocks are freed. None if it is not exported, or if the
        export failed (logged; the reader then computes the prompt itself)."""
        lease_s = self._lease_s.pop(request.request_id, None)
        if lease_s is None:
            return None
        num_blocks = -(-request.num_prompt_tokens // self.kv.block_size)
        block_ids = self.kv.block_ids(request.request_id)[:num_blocks]
        try:
            sources = self.executor.export_kv(block_ids, request.request_id)
        except KVTransferError as exc:
            _log.warning("could not export %s: %s", request.request_id, exc)
            with contextlib.suppress(KVTransferError):  # what some ranks may have staged
                self.executor.release_export(request.request_id)
            return None
        if self.leased:
            self.kv.lease(request, time.monotonic() + lease_s)
        return make_handle(self.engine_id, request, block_ids, self.layout, sources, lease_s)

    def release(self, request_id: str) -> bool:
        """The reader is done: free the blocks. False if none are held."""
        if not self.kv.release(request_id):
            return False
        self.executor.release_export(request_id)
        return True

    def expire(self, now: float) -> list[str]:
        """End the leases that ran out by ``now`` (monotonic); their request ids."""
        expired = self.kv.expire(now)
        for request_id in expired:
            self.executor.release_export(request_id)
        return expired


def kv_layout_of(config: EngineConfig, model: ModelConfig) -> KVLayout:
    tp = config.tensor_parallel_size
    return KVLayout(
        model=model_digest(config.model.name, (config.model / "config.json").read_bytes()),
        weights=config.quantization or model.checkpoint_quantization or "full",
        dtype=model.dtype,
        kv_dtype=model.dtype if config.kv_cache_dtype == "auto" else config.kv_cache_dtype,
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
