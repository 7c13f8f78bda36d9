"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over a paged KV cache, one
pipeline stage and one tensor-parallel shard of it."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from kernels import ops
from kernels.attention_metadata import AttentionMetadata
from worker.model.attention import Attention
from worker.model.embedding import ParallelLMHead, VocabParallelEmbedding
from worker.model.linear import ColumnParallelLinear, RowParallelLinear
from worker.model.norm import RMSNorm
from worker.model.quantization import WeightQuantization
from worker.model.rotary import RotaryEmbedding
from worker.model_config import ModelConfig
from worker.parallel.state import ParallelState

Intermediate = tuple[torch.Tensor, torch.Tensor]


class PPMissingLayer(nn.Module):
    """Stands in for a module another pipeline stage owns, so that parameter names keep their
    global layer indices (``model.layers.7...`` on every stage) and map to checkpoint names
    directly. It has no parameters and is never run."""

    def forward(self, *args: object) -> None:
        raise RuntimeError("this module belongs to another pipeline stage")


class LlamaMLP(nn.Module):
    """Gated MLP: ``down(silu(gate(x)) * up(x))``, with gate and up in one matmul."""

    def __init__(
        self,
        config: ModelConfig,
        parallel: ParallelState,
        quantization: WeightQuantization | None = None,
    ) -> None:
        super().__init__()
        size, hidden = config.intermediate_size, config.hidden_size
        self.gate_up_proj = ColumnParallelLinear(
            hidden, [size, size], bias=False, parallel=parallel, quantization=quantization
        )
        self.down_proj = RowParallelLinear(
            size, hidden, bias=False, parallel=parallel, quantization=quantization
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks. The residual stream is passed along separately so each
    residual add fuses with the norm that follows it."""

    def __init__(
        self,
        config: ModelConfig,
        rotary_emb: RotaryEmbedding,
        parallel: ParallelState,
        quantization: WeightQuantization | None = None,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, rotary_emb, parallel, quantization)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config, parallel, quantization)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(mlp output, residual)``; their sum is this layer's output."""
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embedding (first stage), this stage's decoder layers, final norm (last stage)."""

    def __init__(
        self,
        config: ModelConfig,
        parallel: ParallelState,
        quantization: WeightQuantization | None = None,
    ) -> None:
        super().__init__()
        self.parallel = parallel
        self.layer_range = parallel.config.stage_layers(parallel.pp_rank, config.num_hidden_layers)
        rotary_emb = RotaryEmbedding(
            config.head_dim, config.max_model_len, config.rope_theta, config.rope_scaling
        )
        self.embed_tokens: VocabParallelEmbedding | PPMissingLayer = PPMissingLayer()
        if parallel.is_first_stage:
            self.embed_tokens = VocabParallelEmbedding(
                config.vocab_size, config.hidden_size, parallel
            )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary_emb, parallel, quantization)
            if i in self.layer_range
            else PPMissingLayer()
            for i in range(config.num_hidden_layers)
        )
        self.norm: RMSNorm | PPMissingLayer = PPMissingLayer()
        if parallel.is_last_stage:
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        intermediate: Intermediate | None,
    ) -> torch.Tensor | Intermediate:
        residual: torch.Tensor | None = None
        if self.parallel.is_first_stage:
            hidden = self.embed_tokens(input_ids)
        elif intermediate is None:
            raise ValueError(
                f"pipeline stage {self.parallel.pp_rank} needs the previous stage's "
                f"(hidden, residual)"
            )
        else:
            hidden, residual = intermediate
        for index, kv_cache in zip(self.layer_range, kv_caches, strict=True):
            hidden, residual = self.layers[index](positions, hidden, residual, kv_cache, meta)
        if not self.parallel.is_last_stage:
            # Every stage has at least one layer (ParallelConfig checks), so this is set.
            assert residual is not None
            return hidden, residual
        assert isinstance(self.norm, RMSNorm)  # the last stage has it
        if residual is None:  # a model with no layers
            out: torch.Tensor = self.norm(hidden)
            return out
        hidden, _ = self.norm.add_and_norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """A Llama-family causal LM over one step's flattened, mixed batch: this rank's pipeline
    stage and tensor-parallel shard of it (the whole model when tp = pp = 1).

    ``forward`` returns, on the last stage, the final hidden state of every token; the caller
    picks the rows it samples from (the last query of each sequence) and passes only those to
    ``compute_logits``. Other stages return the ``(hidden, residual)`` to send to the next.
    With ``quantization`` the decoder's linear layers hold int8 or fp8 weights; the embedding
    and the LM head stay in ``config.dtype``.
    """

    # Checkpoint module name -> (our module name, shard id) for tensors we pack together.
    packed_modules_mapping: ClassVar[dict[str, tuple[str, int | str]]] = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(
        self,
        config: ModelConfig,
        parallel: ParallelState | None = None,
        quantization: WeightQuantization | None = None,
    ) -> None:
        super().__init__()
        parallel = parallel or ParallelState.single()
        parallel.config.validate(config)
        self.config = config
        self.parallel = parallel
        self.quantization = quantization
        self.model = LlamaModel(config, parallel, quantization)
        self.lm_head: ParallelLMHead | PPMissingLayer = PPMissingLayer()
        if parallel.is_last_stage:
            head = ParallelLMHead(config.vocab_size, config.hidden_size, parallel)
            embedding = self.model.embed_tokens
            if config.tie_word_embeddings and isinstance(embedding, VocabParallelEmbedding):
                head.weight = embedding.weight
            # Tied on a last stage that is not the first: the head has its own copy, which the
            # loader fills from the checkpoint's embedding table.
            self.lm_head = head

    @property
    def is_first_stage(self) -> bool:
        return self.parallel.is_first_stage

    @property
    def is_last_stage(self) -> bool:
        return self.parallel.is_last_stage

    @property
    def layer_range(self) -> range:
        """Global indices of this stage's layers; ``kv_caches[i]`` is layer ``start + i``'s."""
        return self.model.layer_range

    @property
    def num_local_layers(self) -> int:
        return len(self.model.layer_range)

    @property
    def local_kv_heads(self) -> int:
        """KV heads per layer on this rank: a KV cache here is, per local layer,
        [2, num_blocks, block_size, local_kv_heads, head_dim]."""
        return self.parallel.config.local_kv_heads(self.config.num_key_value_heads)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        intermediate: Intermediate | None = None,
    ) -> torch.Tensor | Intermediate:
        """``input_ids`` and ``positions`` [T] long; one KV cache per local layer. Returns the
        hidden states [T, hidden_size] on the last stage, else ``(hidden, residual)``. Stages
        after the first ignore ``input_ids`` and take ``intermediate`` from the previous one."""
        out: torch.Tensor | Intermediate = self.model(
            input_ids, positions, kv_caches, meta, intermediate
        )
        return out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [N, hidden_size] → float32 logits [N, vocab_size], the whole vocabulary
        on every TP rank of the last stage."""
        if not isinstance(self.lm_head, ParallelLMHead):
            raise RuntimeError("only the last pipeline stage computes logits")
        return self.lm_head.logits(hidden)
