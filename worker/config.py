"""The engine's configuration, validated when it is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EngineConfig:
    """How one engine serves one model directory.

    The KV cache gets ``num_kv_blocks`` blocks if set, else as many as fit in
    ``kv_cache_bytes``. ``max_model_len`` defaults to the model's own context.
    """

    model: Path
    dtype: str = "auto"
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_bytes: int = 256 * 2**20
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256
    max_logprobs: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "block_size": self.block_size,
            "kv_cache_bytes": self.kv_cache_bytes,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_num_seqs": self.max_num_seqs,
            "max_stop_strings": self.max_stop_strings,
            "max_stop_string_chars": self.max_stop_string_chars,
        }
        if self.num_kv_blocks is not None:
            checks["num_kv_blocks"] = self.num_kv_blocks
        if self.max_model_len is not None:
            checks["max_model_len"] = self.max_model_len
        for name, value in checks.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
