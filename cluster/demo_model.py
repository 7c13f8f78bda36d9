"""The demo model: a random-weight Llama checkpoint in Hugging Face format, written locally."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from cluster.demo_tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    IM_END_TOKEN,
    train_tokenizer,
    write_json,
    write_tokenizer,
)


@dataclass(frozen=True)
class DemoPreset:
    """The shape numbers of one demo model size."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS: dict[str, DemoPreset] = {
    "tiny": DemoPreset(
        num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=688
    ),
    "small": DemoPreset(
        num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=4, intermediate_size=1376
    ),
}

TARGET_VOCAB_SIZE = 8192
MAX_POSITIONS = 2048
INIT_STD = 0.02
# torch.Generator.manual_seed takes any 64-bit unsigned value.
MAX_SEED = 2**64 - 1
DEMO_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
)
# config.json key that marks a directory as ours, so rewriting it cannot clobber a real model.
DEMO_MARKER = "kvfleet_demo"


def write_demo_model(out_dir: Path, preset: str = "tiny", seed: int = 0) -> None:
    """Write the demo checkpoint for `preset` into out_dir (created if missing).

    Same preset and seed give byte-identical files; the seed only changes the weights. Raises
    ValueError for an unknown preset, a seed outside [0, 2**64), an out_dir that is a file, or a
    non-empty out_dir that does not already hold a demo model.
    """
    shape = _preset(preset)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and 2**64 - 1, got {seed}")
    _prepare_dir(out_dir)

    tokenizer = train_tokenizer(TARGET_VOCAB_SIZE)
    vocab_size = tokenizer.get_vocab_size()
    bos_id, eos_id, im_end_id = (
        _token_id(tokenizer.token_to_id(token), token)
        for token in (BOS_TOKEN, EOS_TOKEN, IM_END_TOKEN)
    )
    # config.json first: if a run dies half way, the directory is still recognised as ours.
    config = llama_config(shape, vocab_size, bos_id, eos_id)
    config[DEMO_MARKER] = {"preset": preset, "seed": seed}
    write_json(out_dir / "config.json", config)
    write_json(
        out_dir / "generation_config.json",
        # Chat replies end with <|im_end|>, plain text with <|end_of_text|>.
        {"bos_token_id": bos_id, "do_sample": False, "eos_token_id": [eos_id, im_end_id]},
    )
    write_tokenizer(tokenizer, out_dir, MAX_POSITIONS)
    save_file(
        random_weights(shape, vocab_size, seed),
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )


def llama_config(shape: DemoPreset, vocab_size: int, bos_id: int, eos_id: int) -> dict[str, object]:
    """The config.json of a LlamaForCausalLM with the given shape and vocabulary."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "initializer_range": INIT_STD,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": MAX_POSITIONS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def weight_shapes(shape: DemoPreset, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, named as in HF LlamaForCausalLM, in generation order."""
    hidden, inter = shape.hidden_size, shape.intermediate_size
    q_dim = shape.num_heads * shape.head_dim
    kv_dim = shape.num_kv_heads * shape.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, hidden)}
    for i in range(shape.num_layers):
        layer = f"model.layers.{i}"
        shapes[f"{layer}.input_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.self_attn.q_proj.weight"] = (q_dim, hidden)
        shapes[f"{layer}.self_attn.k_proj.weight"] = (kv_dim, hidden)
        shapes[f"{layer}.self_attn.v_proj.weight"] = (kv_dim, hidden)
        shapes[f"{layer}.self_attn.o_proj.weight"] = (hidden, q_dim)
        shapes[f"{layer}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{layer}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{layer}.mlp.down_proj.weight"] = (hidden, inter)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab_size, hidden)
    return shapes


def random_weights(shape: DemoPreset, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Normal(0, INIT_STD) matrices and all-ones norms, drawn from one generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, size in weight_shapes(shape, vocab_size).items():
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(size, dtype=torch.float32)
        else:
            weights[name] = torch.empty(size, dtype=torch.float32).normal_(
                mean=0.0, std=INIT_STD, generator=generator
            )
    return weights


def is_demo_model(path: Path) -> bool:
    """Whether path is a directory this module wrote (holding nothing but demo model files)."""
    if not path.is_dir():
        return False
    if any(entry.name not in DEMO_FILES for entry in path.iterdir()):
        return False
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and DEMO_MARKER in config


def _preset(name: str) -> DemoPreset:
    try:
        return PRESETS[name]
    except KeyError:
        choices = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown preset {name!r}; choose one of: {choices}") from None


def _prepare_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_demo_model(out_dir):
        raise ValueError(
            f"output directory {out_dir} is not empty and does not hold a demo model; "
            "refusing to overwrite it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def _token_id(token_id: int | None, token: str) -> int:
    if token_id is None:
        raise RuntimeError(f"trained tokenizer lacks the special token {token}")
    return token_id
