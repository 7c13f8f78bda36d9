"""What a KV block holds, field by field: two engines may exchange blocks only if they agree."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from worker.errors import KVFleetError
from worker.model_config import kv_slot_bytes


class KVLayoutMismatchError(KVFleetError):
    """Two engines' KV blocks are laid out differently; the message names each difference."""


@dataclass(frozen=True, slots=True)
class KVLayout:
    """Everything that decides a KV block's bytes. ``model`` is a digest of the checkpoint's
    config.json and name (blocks computed by other weights are garbage however they are
    shaped); ``weights`` how its linear layers are held ("int8", "fp8", or "full": the same
    checkpoint quantized as it loads computes other keys and values); ``kv_dtype`` is
    ``dtype`` or a quantized format ("int8", "fp8"); ``kv_heads_per_rank`` is what each
    tensor-parallel rank holds."""

    model: str
    weights: str
    dtype: str
    kv_dtype: str
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    kv_heads_per_rank: int

    @property
    def compat_hash(self) -> str:
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()[:16]

    @property
    def block_bytes(self) -> int:
        """One block's keys or values in one layer of one rank (a quantized block's scales
        included: they sit inside its bytes, kernels/kv_quant.py)."""
        kv_cache_dtype = "auto" if self.kv_dtype == self.dtype else self.kv_dtype
        per_slot = kv_slot_bytes(self.head_dim, self.dtype, kv_cache_dtype)
        return self.block_size * self.kv_heads_per_rank * per_slot

    def differences(self, other: KVLayout) -> list[str]:
        """Each field that differs, as "name: ours vs theirs"."""
        ours, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{k}: {ours[k]} vs {theirs[k]}" for k in ours if ours[k] != theirs[k]]

    def check_compatible(self, source: KVLayout) -> None:
        """Raise KVLayoutMismatchError naming every difference from ``source``'s layout."""
        differences = self.differences(source)
        if differences:
            raise KVLayoutMismatchError(
                "the prefill replica's KV layout differs from this one's: " + "; ".join(differences)
            )


def model_digest(name: str, config_json: bytes) -> str:
    return f"{name}@{hashlib.sha256(config_json).hexdigest()[:12]}"
