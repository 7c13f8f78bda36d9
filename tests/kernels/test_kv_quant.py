"""The quantized KV cache (kernels/kv_quant.py): the round trip's error bounds, the store, and
attention over quantized blocks on the CPU paths against the unquantized cache."""

from __future__ import annotations

import pytest
import torch

from kernels import eight_bit, kv_quant, ops
from kernels.attention_cpu import paged_attention_cpu
from kernels.attention_ref import paged_attention_ref
from tests.kernels.helpers import paged_step
from tests.worker.model.paging import BLOCK_SIZE

QUANT_DTYPES = [pytest.param(torch.int8, id="int8"), pytest.param(torch.float8_e4m3fn, id="fp8")]
HEAD_DIM = 32
MIXED = [(21, 70), (36, 1), (0, 19), (9, 1), (40, 1)]
# Worst absolute error of the attention output (values ~N(0, 1), scale D^-0.5) with a quantized
# cache against the unquantized one, measured 0.013 (int8) and 0.078 (fp8): int8 keeps
# 1/254 of each row's range, fp8 e4m3 3 mantissa bits (relative error up to 1/16).
ATTENTION_ERROR = {torch.int8: 0.03, torch.float8_e4m3fn: 0.15}


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_round_trip_error_is_within_the_format_bound(dtype: torch.dtype) -> None:
    # Rows of very different ranges: each gets its own scale.
    x = _randn((64, 4, HEAD_DIM), seed=0) * torch.logspace(-3, 3, 64)[:, None, None]
    packed = kv_quant.quantize(x, dtype)
    assert packed.shape == (64, 4, HEAD_DIM + 4) and packed.dtype == dtype
    error = (kv_quant.dequantize(packed, torch.float32) - x).abs()
    amax = x.abs().amax(dim=-1, keepdim=True)
    if dtype == torch.int8:
        # Round to nearest on a grid of amax / 127.
        bound = amax / 254 * (1 + 1e-5)
    else:
        # 3 mantissa bits: relative 2^-4 for normals; subnormals below 2^-6 have step 2^-9.
        bound = x.abs() / 16 + amax / 448 * 2**-10
    assert bool((error <= bound).all()), float((error - bound).max())


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_scale_is_amax_over_the_formats_largest_value_stored_after_the_values(
    dtype: torch.dtype,
) -> None:
    x = _randn((5, 3, HEAD_DIM), seed=1)
    packed = kv_quant.quantize(x, dtype)
    expected = x.abs().amax(dim=-1) / eight_bit.qmax(dtype)
    torch.testing.assert_close(kv_quant.scales(packed), expected)
    tail = packed.view(torch.uint8)[..., HEAD_DIM:].contiguous().view(torch.float32)[..., 0]
    assert torch.equal(tail, kv_quant.scales(packed))
    # The largest magnitude of each row quantizes to the format's largest value exactly.
    assert torch.equal(
        packed[..., :HEAD_DIM].float().abs().amax(dim=-1), torch.full((5, 3), eight_bit.qmax(dtype))
    )


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_an_all_zero_row_round_trips_to_zeros_not_nan(dtype: torch.dtype) -> None:
    packed = kv_quant.quantize(torch.zeros(2, HEAD_DIM), dtype)
    assert torch.equal(kv_quant.scales(packed), torch.ones(2))
    assert torch.equal(kv_quant.dequantize(packed, torch.float32), torch.zeros(2, HEAD_DIM))


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_store_quantizes_each_slot_and_skips_minus_one(dtype: torch.dtype) -> None:
    slots = torch.tensor([37, -1, 3, 79, 15])
    key, value = _randn((5, 2, HEAD_DIM), seed=2), _randn((5, 2, HEAD_DIM), seed=3)
    cache = torch.zeros((2, 5, BLOCK_SIZE, 2, HEAD_DIM + 4), dtype=dtype)
    ops.store_kv(key, value, cache, slots)
    flat = cache.view(2, -1, 2, HEAD_DIM + 4)
    kept = slots >= 0
    for kind, x in ((0, key), (1, value)):
        stored = flat[kind, slots[kept]]
        assert torch.equal(
            stored.view(torch.uint8), kv_quant.quantize(x[kept], dtype).view(torch.uint8)
        )
    untouched = torch.ones(5 * BLOCK_SIZE, dtype=torch.bool)
    untouched[slots[kept]] = False
    assert not bool(flat.view(torch.uint8)[:, untouched].any())


def quantized_inputs(
    work: list[tuple[int, int]], dtype: torch.dtype, heads: int = 4, kv_heads: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, object]:
    """(query, unquantized cache, the same cache quantized, metadata)."""
    num_blocks, meta = paged_step(work)
    num_tokens = sum(q for _, q in work)
    query = _randn((num_tokens, heads, HEAD_DIM), seed=4)
    cache = _randn((2, num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM), seed=5)
    return query, cache, kv_quant.quantize(cache, dtype), meta


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
@pytest.mark.parametrize(
    "attention", [paged_attention_ref, paged_attention_cpu, ops.paged_attention]
)
def test_attention_over_a_quantized_cache_stays_near_the_unquantized_result(
    dtype: torch.dtype, attention: object
) -> None:
    query, cache, quantized, meta = quantized_inputs(MIXED, dtype)
    scale = HEAD_DIM**-0.5
    exact = paged_attention_ref(query, cache, meta, scale)
    out = attention(query, quantized, meta, scale)  # type: ignore[operator]
    # What it computes is attention over the dequantized cache...
    dequantized = kv_quant.dequantize(quantized, torch.float32)
    torch.testing.assert_close(out, paged_attention_ref(query, dequantized, meta, scale))
    # ...whose distance from the unquantized result is the format's.
    error = float((out - exact).abs().max())
    assert 0 < error < ATTENTION_ERROR[dtype], error


def test_fp8_is_refused_by_name_on_a_gpu_older_than_compute_capability_8_9(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A100")
    with pytest.raises(ValueError, match=r"kv_cache_dtype 'fp8' needs .* 8\.9 .* has 8\.0"):
        kv_quant.check_device_supports("fp8", torch.device("cuda", 0))
    kv_quant.check_device_supports("int8", torch.device("cuda", 0))
    kv_quant.check_device_supports("fp8", torch.device("cpu"))
