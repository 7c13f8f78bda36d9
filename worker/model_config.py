"""The model's shape and numerics, parsed from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ModelLoadError
from worker.parallel_config import ParallelConfig

LOAD_FORMATS = ("safetensors", "dummy")  # "dummy": random weights from config.json alone

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)

# Bytes per element of each supported dtype; the names are torch's (``getattr(torch, name)``).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
KV_SCALE_BYTES = 4  # a quantized KV slot's float32 scale (kernels/kv_quant.py)

# Weight quantizations of the linear layers (worker/model/quantization.py), and the
# config.json ``quantization_config.quant_method`` of a checkpoint stored in one of them.
WEIGHT_QUANTIZATIONS = ("int8", "fp8")
QUANT_METHOD = "kvfleet"


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1 frequency scaling: long wavelengths slowed by ``factor``, short ones kept,
    the band between interpolated smoothly."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a Llama-family model and size its KV cache.

    One class covers Llama 2/3, Mistral, Qwen2 and Qwen3; they differ only in the flags
    ``qkv_bias``/``o_proj_bias`` (Qwen2 has q/k/v biases), ``qk_norm`` (Qwen3 normalises each
    head of q and k) and ``sliding_window`` (Mistral).

    ``max_model_len`` is the longest context this engine serves. Attention here is always full
    causal attention, which equals sliding-window attention as long as a context fits in the
    window, so a sliding window smaller than ``max_position_embeddings`` caps ``max_model_len``:
    results stay exact instead of silently diverging past the window.

    ``checkpoint_quantization`` is how the checkpoint stores its linear layers' weights (a
    name of WEIGHT_QUANTIZATIONS, from config.json's ``quantization_config``), None for full
    precision; whatever it is, ``dtype`` is the dtype of activations and unquantized weights.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Llama3RopeScaling | None
    max_position_embeddings: int
    max_model_len: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_proj_bias: bool
    qk_norm: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    dtype: str  # a key of DTYPE_BYTES
    checkpoint_quantization: str | None

    @classmethod
    def from_dir(cls, path: Path, dtype: str = "auto") -> ModelConfig:
        """Parse ``path/config.json``. ``dtype`` is "auto" (the checkpoint's own dtype, float32 if
        it names none) or one of "float32", "bfloat16", "float16"."""
        config_path = Path(path) / "config.json"
        try:
            raw = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"{config_path}: not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{config_path}: cannot read JSON: {e}") from e
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{config_path}: expected a JSON object")
        return _parse(raw, config_path, dtype)

    def kv_bytes_per_block(
        self, parallel: ParallelConfig, block_size: int, kv_cache_dtype: str = "auto"
    ) -> int:
        """KV bytes one block takes on the rank holding the most (the KV budget is per rank);
        a quantized cache (``kv_cache_dtype`` "int8"/"fp8") takes head_dim + 4 bytes a token and
        head (kernels/kv_quant.py)."""
        kv_heads = parallel.local_kv_heads(self.num_key_value_heads)
        layers = max(
            len(parallel.stage_layers(p, self.num_hidden_layers))
            for p in range(parallel.pipeline_parallel_size)
        )
        per_slot = kv_slot_bytes(self.head_dim, self.dtype, kv_cache_dtype)
        return 2 * block_size * kv_heads * per_slot * layers


def kv_slot_bytes(head_dim: int, dtype: str, kv_cache_dtype: str) -> int:
    """Bytes one token's keys (or values) of one KV head take in the cache: ``head_dim`` values
    of ``dtype``, or quantized ("int8"/"fp8") one byte each plus a float32 scale
    (kernels/kv_quant.py; this module stays free of torch)."""
    if kv_cache_dtype == "auto":
        return head_dim * DTYPE_BYTES[dtype]
    return head_dim + KV_SCALE_BYTES


def _parse(raw: dict[str, Any], path: Path, dtype: str) -> ModelConfig:
    fields = _Fields(raw, path)
    architecture = _architecture(raw, path)
    if raw.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (silu)")
    if raw.get("mlp_bias", False):
        raise ModelLoadError(f"{path}: mlp_bias=true is not supported")

    hidden_size = fields.positive_int("hidden_size")
    num_heads = fields.positive_int("num_attention_heads")
    num_kv_heads = fields.positive_int("num_key_value_heads", default=num_heads)
    head_dim = fields.positive_int("head_dim", default=hidden_size // num_heads)
    if num_heads % num_kv_heads != 0:
        raise ModelLoadError(
            f"{path}: num_attention_heads {num_heads} is not a multiple of "
            f"num_key_value_heads {num_kv_heads}"
        )
    if head_dim % 2 != 0:
        raise ModelLoadError(f"{path}: head_dim {head_dim} must be even for rotary embedding")

    rope_theta, rope_scaling = _rope(raw, path)
    max_positions = fields.positive_int("max_position_embeddings")
    sliding_window = _sliding_window(raw, architecture)
    attention_bias = bool(raw.get("attention_bias", False))
    is_qwen2 = architecture == "Qwen2ForCausalLM"
    has_bias = attention_bias and architecture != "MistralForCausalLM"
    return ModelConfig(
        architecture=architecture,
        vocab_size=fields.positive_int("vocab_size"),
        hidden_size=hidden_size,
        intermediate_size=fields.positive_int("intermediate_size"),
        num_hidden_layers=fields.positive_int("num_hidden_layers"),
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=fields.number("rms_norm_eps", default=1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=max_positions,
        max_model_len=min(max_positions, sliding_window or max_positions),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases and never an o_proj bias, whatever attention_bias says.
        qkv_bias=is_qwen2 or has_bias,
        o_proj_bias=has_bias and not is_qwen2,
        qk_norm=architecture == "Qwen3ForCausalLM",
        sliding_window=sliding_window,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_token_ids(raw, path),
        dtype=_dtype(raw, path, dtype),
        checkpoint_quantization=_checkpoint_quantization(raw, path),
    )


class _Fields:
    """Typed access to config.json keys; every problem names the file and the key."""

    def __init__(self, raw: dict[str, Any], path: Path) -> None:
        self.raw = raw
        self.path = path

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelLoadError(f"{self.path}: {key} must be a positive integer, got {value!r}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelLoadError(f"{self.path}: {key} must be a number, got {value!r}")
        return float(value)

    def _get(self, key: str, default: Any) -> Any:
        value = self.raw.get(key)
        if value is None:
            if default is None:
                raise ModelLoadError(f"{self.path}: missing required key {key!r}")
            return default
        return value


def _architecture(raw: dict[str, Any], path: Path) -> str:
    architectures = raw.get("architectures")
    if not architectures or not isinstance(architectures, list):
        raise ModelLoadError(f"{path}: missing required key 'architectures'")
    architecture = architectures[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {architecture!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return str(architecture)


def _rope(raw: dict[str, Any], path: Path) -> tuple[float, Llama3RopeScaling | None]:
    # transformers 4 writes rope_theta at top level plus an optional rope_scaling dict;
    # transformers 5 writes one rope_parameters dict holding both.
    params: dict[str, Any] = {"rope_theta": raw.get("rope_theta", 10000.0)}
    params.update(raw.get("rope_scaling") or {})
    params.update(raw.get("rope_parameters") or {})
    fields = _Fields(params, path)
    theta = fields.number("rope_theta")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ModelLoadError(f"{path}: partial_rotary_factor is not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ModelLoadError(
            f"{path}: rope type {rope_type!r} is not supported; supported: default, llama3"
        )
    return theta, Llama3RopeScaling(
        factor=fields.number("factor"),
        low_freq_factor=fields.number("low_freq_factor"),
        high_freq_factor=fields.number("high_freq_factor"),
        original_max_position_embeddings=fields.positive_int("original_max_position_embeddings"),
    )


def _sliding_window(raw: dict[str, Any], architecture: str) -> int | None:
    window = raw.get("sliding_window")
    if architecture == "MistralForCausalLM":
        return int(window) if window else None
    if architecture in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and raw.get("use_sliding_window"):
        # Qwen slides only in the layers its layer_types marks (or from max_window_layers on).
        num_layers = int(raw.get("num_hidden_layers", 0))
        layer_types = raw.get("layer_types") or [
            "sliding_attention" if i >= raw.get("max_window_layers", 28) else "full_attention"
            for i in range(num_layers)
        ]
        if window and "sliding_attention" in layer_types:
            return int(window)
    return None


def _eos_token_ids(raw: dict[str, Any], path: Path) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelLoadError(f"{path}: eos_token_id must be an integer or a list, got {eos!r}")
    return tuple(ids)


def _checkpoint_quantization(raw: dict[str, Any], path: Path) -> str | None:
    config = raw.get("quantization_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: quantization_config must be an object, got {config!r}")
    method = config.get("quant_method")
    if method != QUANT_METHOD:
        raise ModelLoadError(
            f"{path}: quantization_config.quant_method {method!r} is not supported; supported: "
            f"{QUANT_METHOD!r} (python -m worker.model.quantize_checkpoint writes it)"
        )
    weights = config.get("weights")
    if weights not in WEIGHT_QUANTIZATIONS:
        raise ModelLoadError(
            f"{path}: quantization_config.weights must be one of "
            f"{', '.join(WEIGHT_QUANTIZATIONS)}, got {weights!r}"
        )
    return str(weights)


def _dtype(raw: dict[str, Any], path: Path, requested: str) -> str:
    name = requested
    if requested == "auto":
        # transformers 5 writes "dtype", older versions "torch_dtype".
        name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    if name not in DTYPE_BYTES:
        source = "requested dtype" if requested != "auto" else f"{path}: dtype"
        supported = ", ".join(DTYPE_BYTES)
        raise ModelLoadError(f"{source} {name!r} is not supported; supported: {supported}")
    return str(name)
