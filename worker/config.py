"""The engine's configuration, validated when it is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.model_config import DTYPE_BYTES, LOAD_FORMATS, WEIGHT_QUANTIZATIONS
from worker.parallel_config import ParallelConfig

TRANSPORTS = ("auto", "nixl", "packed")

_DTYPES = ("auto", *DTYPE_BYTES)
KV_CACHE_DTYPES = ("auto", "int8", "fp8")
_PLACEMENTS = ("pack", "spread")
_ACCELERATORS = ("auto", "cpu", "gpu")
SPECULATIVE_METHODS = ("prompt_lookup", "draft_model")
MAX_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class EngineConfig:
    """How one engine serves one model directory.

    ``dtype`` "auto" is the checkpoint's own dtype on a GPU; on a CPU it is bfloat16 where the
    processor computes it natively (AVX-512 BF16 or AMX) and float32 elsewhere (see
    worker/dtype_choice.py); the engine's ``config`` holds the resolved name.
    ``quantization`` stores the linear layers' weights in 8 bits (worker/model/quantization.py;
    the embedding and LM head stay in ``dtype``): "int8" with a float32 scale per output
    channel, or "fp8" (float8 e4m3, same scales), which a GPU needs compute capability 8.9 for
    and a CPU runs dequantized by torch, slowly; None keeps full precision, unless the
    checkpoint is stored quantized (``python -m worker.model.quantize_checkpoint``), which
    loads as stored and refuses a different value here.
    The KV cache gets ``num_kv_blocks`` blocks if set, else as many as fit in
    ``kv_cache_bytes`` on each rank. ``kv_cache_dtype`` "auto" keeps keys and values in the model's
    dtype; "int8" or "fp8" (float8 e4m3) stores them in 8 bits with a float32 scale per token and
    KV head (kernels/kv_quant.py), about twice the tokens in the same bytes.
    ``max_model_len`` defaults to the model's own context; a text prompt longer than
    ``max_prompt_chars`` characters (default: 16 per token of context) is refused before it is
    tokenized.
    A replica spans tensor_parallel_size x pipeline_parallel_size ranks; ``layer_split`` sets how
    many layers each pipeline stage holds (even split if unset); ``placement`` "pack" keeps all
    ranks on one node, "spread" only each stage's TP ranks. A single-rank replica on a GPU
    captures CUDA graphs of decode steps of up to ``cuda_graph_max_batch`` sequences at start-up
    (worker/cuda_graphs.py) unless ``enforce_eager``. ``torch_compile`` compiles the forward of
    decode steps with torch.compile at start-up (single-rank replicas, worker/compiled_decode.py;
    the CUDA graphs then record the compiled forward); None means on a GPU and not on a CPU,
    where it measured no faster on the demo model (bench.engine ``compiled_over_eager_*``) and
    costs seconds at start-up. ``enforce_eager`` turns compilation and CUDA graphs off; a
    compilation that fails is logged and the steps run eagerly.
    ``load_format`` "dummy" builds the
    model from config.json alone with random weights (seeded by ``seed``), for benchmarks
    without a checkpoint. ``async_scheduling`` (single-rank replicas) runs each step on a
    thread of its own while the engine schedules the next and processes the previous one's
    outputs (worker/executor/local.py, OverlappingExecutor); by default on a GPU, whose
    kernels run while Python prepares the next step, and not on a CPU, where the forward pass
    is the Python thread's own work and the overlap measured 0.86x the throughput (64 prompts,
    tiny demo model, one torch thread).
    ``accelerator`` says what each rank takes from Ray: "gpu" one GPU, "cpu" one CPU, "auto"
    a GPU when the driver sees one (it may not: a Serve replica asks for no GPU of its own when
    its ranks are actors). ``ray_resources`` are custom Ray resources each rank also asks for
    (a Kubernetes deployment names each pool's pods that way).
    A request runs at most ``max_n`` sequences sampled from one prompt, or a beam search of at
    most ``max_beam_width`` beams (each also capped by ``max_num_seqs``).
    A request is refused (OverloadedError) when the prompt tokens queued ahead of it, at the
    measured prefill rate, would keep it waiting more than ``max_queue_wait_s`` (None: never),
    or past its own deadline.
    ``kv_transport`` opens KV transfer with other replicas (disaggregated prefill and decode,
    worker/kv_transfer): "nixl", "packed" (the blocks travel inside the handle) or "auto"
    (NIXL where it is installed); None, the default, opens none. A pull that has not finished
    within ``kv_transfer_timeout_s`` is abandoned and the prompt computed locally.
    ``speculative_method`` turns on speculative decoding (worker/spec_decode.py): each step
    verifies up to ``num_speculative_tokens`` drafts per request, proposed by "prompt_lookup"
    (the tokens that followed the latest n-gram of ``prompt_lookup_max`` down to
    ``prompt_lookup_min`` tokens earlier in the sequence) or "draft_model" (the model in
    ``draft_model``, run greedily beside the target on single-rank replicas; same vocabulary,
    in ``dtype`` with neither weights nor KV quantized, its KV cache taking its share of
    ``kv_cache_bytes``). Steps then wait for the previous one's
    tokens, so ``async_scheduling`` is off; groups (n > 1, beam search) and requests that set
    ``speculate`` false decode one token per step.
    """

    model: Path
    dtype: str = "auto"
    quantization: str | None = None
    load_format: str = "safetensors"
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_bytes: int = 256 * 2**20
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    max_model_len: int | None = None
    max_prompt_chars: int | None = None
    enable_prefix_caching: bool = True
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256
    max_logprobs: int = 20
    max_n: int = 16
    max_beam_width: int = 16
    seed: int = 0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    layer_split: tuple[int, ...] | None = None
    placement: str = "pack"
    step_timeout_s: float = 60.0
    max_queue_wait_s: float | None = 60.0
    enforce_eager: bool = False
    torch_compile: bool | None = None
    cuda_graph_max_batch: int = 128
    async_scheduling: bool | None = None
    kv_transport: str | None = None
    kv_transfer_timeout_s: float = 5.0
    accelerator: str = "auto"
    ray_resources: tuple[tuple[str, float], ...] = ()
    speculative_method: str | None = None
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    draft_model: Path | None = None

    @property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(
            self.tensor_parallel_size, self.pipeline_parallel_size, self.layer_split
        )

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def compiles_steps(self, device_type: str) -> bool:
        """Whether decode steps are compiled on this device type (see ``torch_compile``)."""
        if self.world_size != 1 or self.enforce_eager:
            return False
        return device_type == "cuda" if self.torch_compile is None else self.torch_compile

    def __post_init__(self) -> None:
        checks = {
            "block_size": self.block_size,
            "kv_cache_bytes": self.kv_cache_bytes,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_num_seqs": self.max_num_seqs,
            "max_stop_strings": self.max_stop_strings,
            "max_stop_string_chars": self.max_stop_string_chars,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "cuda_graph_max_batch": self.cuda_graph_max_batch,
            "max_n": self.max_n,
            "max_beam_width": self.max_beam_width,
        }
        if self.num_kv_blocks is not None:
            checks["num_kv_blocks"] = self.num_kv_blocks
        if self.max_model_len is not None:
            checks["max_model_len"] = self.max_model_len
        if self.max_prompt_chars is not None:
            checks["max_prompt_chars"] = self.max_prompt_chars
        for name, value in checks.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.quantization is not None and self.quantization not in WEIGHT_QUANTIZATIONS:
            raise ValueError(
                f"quantization must be None or one of {', '.join(WEIGHT_QUANTIZATIONS)}, "
                f"got {self.quantization!r}"
            )
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                f"got {self.kv_cache_dtype!r}"
            )
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(
                f"load_format must be one of {', '.join(LOAD_FORMATS)}, got {self.load_format!r}"
            )
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
        if self.placement not in _PLACEMENTS:
            raise ValueError(
                f"placement must be one of {', '.join(_PLACEMENTS)}, got {self.placement!r}"
            )
        if not self.step_timeout_s > 0:
            raise ValueError(f"step_timeout_s must be > 0, got {self.step_timeout_s}")
        if self.max_queue_wait_s is not None and not self.max_queue_wait_s > 0:
            raise ValueError(f"max_queue_wait_s must be > 0, got {self.max_queue_wait_s}")
        if self.kv_transport is not None and self.kv_transport not in TRANSPORTS:
            raise ValueError(
                f"kv_transport must be one of {', '.join(TRANSPORTS)}, got {self.kv_transport!r}"
            )
        if self.accelerator not in _ACCELERATORS:
            raise ValueError(
                f"accelerator must be one of {', '.join(_ACCELERATORS)}, got {self.accelerator!r}"
            )
        if self.torch_compile and self.enforce_eager:
            raise ValueError("torch_compile and enforce_eager are both set: choose one")
        if self.torch_compile and self.world_size > 1:
            raise ValueError(
                "torch_compile needs a single-rank replica "
                "(tensor_parallel_size and pipeline_parallel_size 1)"
            )
        self._check_speculation()
        if not self.kv_transfer_timeout_s > 0:
            raise ValueError(f"kv_transfer_timeout_s must be > 0, got {self.kv_transfer_timeout_s}")

    def _check_speculation(self) -> None:
        method = self.speculative_method
        if method is not None and method not in SPECULATIVE_METHODS:
            raise ValueError(
                f"speculative_method must be one of {', '.join(SPECULATIVE_METHODS)}, "
                f"got {method!r}"
            )
        if not 1 <= self.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(
                f"num_speculative_tokens must be in [1, {MAX_SPECULATIVE_TOKENS}], "
                f"got {self.num_speculative_tokens}"
            )
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(
                "prompt_lookup_min and prompt_lookup_max need 1 <= min <= max, got "
                f"{self.prompt_lookup_min} and {self.prompt_lookup_max}"
            )
        if (method == "draft_model") != (self.draft_model is not None):
            raise ValueError(
                "draft_model is the model of speculative_method 'draft_model', and only of it"
            )
        if method == "draft_model" and self.world_size > 1:
            raise ValueError(
                "speculative_method 'draft_model' needs a single-rank replica "
                "(tensor_parallel_size and pipeline_parallel_size 1)"
            )
        if method is not None and self.async_scheduling:
            raise ValueError(
                "speculative decoding and async_scheduling are both set: a step's drafts "
                "depend on the previous step's tokens"
            )
