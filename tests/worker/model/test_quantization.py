"""int8 and fp8 weights: how the rows are quantized, how closely the quantized demo model follows
the full-precision one, what the weights weigh, and the settings that are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.engine_helpers import make_engine, run_all, tokens_of
from tests.worker.model.paging import PagedSequence, new_kv_caches, run_step
from worker.config import EngineConfig
from worker.model import LlamaForCausalLM, ModelConfig, load_model
from worker.model.dummy import INIT_STD
from worker.model.linear import QuantizableLinear
from worker.model.quantization import check_device_supports, quantize_rows, weight_bytes
from worker.sampling_params import SamplingParams

GREEDY_16 = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
DECODE_STEPS = 32
# Max |logit error| of the quantized demo model over DECODE_STEPS teacher-forced positions, as a
# fraction of the largest |logit|. A weight's rounding error is at most 1/254 of its row's
# largest magnitude in int8, and up to 2^-4 of the weight itself in e4m3 (3 mantissa bits), so
# fp8 errs about 3x more; measured 2.5% (int8) and 7.9% (fp8) at worst over the prompts below.
LOGIT_ERROR_BOUND = {"int8": 0.04, "fp8": 0.12}


def _generate(model: LlamaForCausalLM, prompt: list[int]) -> list[int]:
    """``prompt`` then DECODE_STEPS greedy tokens, one prefill each (no KV reuse needed)."""
    tokens = list(prompt)
    for _ in range(DECODE_STEPS):
        tokens.append(int(_logits(model, tokens)[-1].argmax()))
    return tokens


def _logits(model: LlamaForCausalLM, tokens: list[int]) -> torch.Tensor:
    """float32 logits [len(tokens), vocab] of one prefill of ``tokens``."""
    kv_caches = new_kv_caches(model.config, num_blocks=4)
    return run_step(model, kv_caches, [(PagedSequence([0, 1, 2, 3]), tokens)])[0]


def _linear_bytes(model: LlamaForCausalLM) -> int:
    return sum(weight_bytes(m) for m in model.modules() if isinstance(m, QuantizableLinear))


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_rows_quantize_to_the_full_range_within_half_a_step(weights: str) -> None:
    weight = torch.randn(6, 50, generator=torch.Generator().manual_seed(3)) * 0.05
    weight[2] = 0.0
    qweight, scale = quantize_rows(weight.to(torch.bfloat16), weights)
    assert qweight.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[weights]
    assert scale.dtype == torch.float32 and scale.shape == (6,)
    full_range = {"int8": 127.0, "fp8": 448.0}[weights]
    values = qweight.float()
    nonzero = [0, 1, 3, 4, 5]
    assert torch.equal(values[nonzero].abs().amax(dim=1), torch.full((5,), full_range))
    assert torch.equal(values[2], torch.zeros(50)) and scale[2] == 1.0  # a zero row stays zero
    error = (values * scale[:, None] - weight.to(torch.bfloat16).float()).abs()
    if weights == "int8":  # round to nearest: at most half a step
        assert (error <= scale[:, None] / 2 * (1 + 1e-6)).all()
    else:  # e4m3 keeps 3 mantissa bits: half an ulp is 2^-4 of the value (subnormals aside)
        assert (
            error <= weight.abs().to(torch.bfloat16).float() * 2**-4 + scale[:, None] * 2**-9
        ).all()


def test_int8_demo_model_decodes_the_same_greedy_tokens_for_16_steps(demo_model_dir: Path) -> None:
    prompts: dict[str, list[int] | str] = {
        "text": "The router sends each request to the replica that already holds its prefix",
        "ids": list(range(100, 140)),
    }
    expected = run_all(make_engine(demo_model_dir), prompts, GREEDY_16)
    engine = make_engine(demo_model_dir, quantization="int8")
    assert engine.executor.runner.model.model.layers[0].mlp.down_proj.weight.dtype == torch.int8
    quantized = run_all(engine, prompts, GREEDY_16)
    for rid in prompts:
        assert tokens_of(quantized[rid]) == tokens_of(expected[rid]), rid
        assert len(tokens_of(expected[rid])) == 16


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_quantized_demo_model_logits_stay_within_the_bound(
    demo_model_dir: Path, weights: str
) -> None:
    # The demo model's random weights make near-ties common (logits span about +-1.5), so
    # greedy paths part at a tie; compare logits on the full-precision model's own tokens, and
    # wherever its top choice leads by more than twice the bound, the quantized model's agrees.
    config = ModelConfig.from_dir(demo_model_dir, "float32")
    full = load_model(demo_model_dir, config)
    quantized = load_model(demo_model_dir, config, quantization=weights)
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, config.vocab_size, (20,), generator=generator).tolist()
        tokens = _generate(full, prompt)
        positions = slice(len(prompt) - 1, -1)  # the positions that chose each new token
        expected = _logits(full, tokens)[positions]
        logits = _logits(quantized, tokens)[positions]
        bound = LOGIT_ERROR_BOUND[weights] * expected.abs().max().item()
        assert 0 < (logits - expected).abs().max().item() <= bound, f"prompt {seed}"
        top2 = expected.topk(2, dim=-1).values
        clear = top2[:, 0] - top2[:, 1] > 2 * bound
        assert torch.equal(logits.argmax(-1)[clear], expected.argmax(-1)[clear])


def test_int8_linear_layers_weigh_about_half_of_bfloat16(demo_model_dir: Path) -> None:
    config = ModelConfig.from_dir(demo_model_dir, "bfloat16")
    bf16 = load_model(demo_model_dir, config)
    int8 = load_model(demo_model_dir, config, quantization="int8")
    # One byte a weight plus a 4-byte scale a row (inputs of 256 and 688): 0.503 to 0.508.
    assert _linear_bytes(int8) / _linear_bytes(bf16) <= 0.51
    # The embedding and the LM head (4.2M of the tiny model's 7.1M weights) stay in bfloat16.
    assert weight_bytes(int8) / weight_bytes(bf16) <= 0.80


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_dummy_weights_can_be_quantized(demo_model_dir: Path, weights: str) -> None:
    config = ModelConfig.from_dir(demo_model_dir, "float32")
    model = load_model(demo_model_dir, config, load_format="dummy", quantization=weights)
    down = model.model.layers[0].mlp.down_proj
    assert down.weight_scale is not None
    drawn = down.weight.float() * down.weight_scale[:, None]
    assert abs(drawn.std().item() - INIT_STD) < 0.1 * INIT_STD
    assert torch.isfinite(_logits(model, [1, 2, 3])).all()


def test_unknown_quantization_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"quantization must be None or one of int8, fp8.*'int4'"):
        EngineConfig(model=tmp_path, quantization="int4")


def test_unknown_quantization_is_refused_by_load_model(demo_model_dir: Path) -> None:
    config = ModelConfig.from_dir(demo_model_dir, "float32")
    with pytest.raises(ValueError, match="quantization must be None or one of int8, fp8"):
        load_model(demo_model_dir, config, quantization="nf4")


def test_fp8_is_refused_on_a_gpu_older_than_ada(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    cuda = torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"'fp8' needs .* 8\.9 .*cuda:0 \(NVIDIA A100\) has 8\.0"):
        check_device_supports("fp8", cuda)
    check_device_supports("int8", cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_device_supports("fp8", cuda)
    check_device_supports("fp8", torch.device("cpu"))  # dequantized by torch
