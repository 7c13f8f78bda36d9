"""The Triton kernels on a quantized KV cache (kernels/kv_quant.py): the store writes what the
torch reference writes, and both attention kernels dequantize in place to the reference's
result over the dequantized cache."""

from __future__ import annotations

import pytest
import torch

from kernels import kv_quant
from kernels.attention_decode_triton import paged_decode_attention_triton
from kernels.attention_ref import paged_attention_ref
from kernels.attention_triton import paged_attention_triton, varlen_attention_triton
from kernels.block_copy_triton import gather_blocks_triton, scatter_blocks_triton
from kernels.kv_store_ref import store_kv_ref
from kernels.kv_store_triton import store_kv_triton
from tests.kernels.helpers import DEVICE, DTYPES, assert_close_to, paged_step, randn, reference
from tests.worker.model.paging import BLOCK_SIZE

QUANT_DTYPES = [pytest.param(torch.int8, id="int8"), pytest.param(torch.float8_e4m3fn, id="fp8")]
HEAD_DIM = 32
DECODES = [(36, 1), (16, 1), (4, 1)]
MIXED = [(21, 40), (36, 1), (0, 19)]


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_quantized_store_writes_what_the_reference_writes(dtype: torch.dtype) -> None:
    slots = torch.tensor([37, -1, 3, 79, 15, 16], device=DEVICE)
    key = randn((6, 3, HEAD_DIM), torch.float32, seed=3)
    value = randn((6, 3, HEAD_DIM), torch.float32, seed=4)
    key[4] = 0.0  # an all-zero row: scale 1, not a division by zero
    cache = torch.zeros((2, 5, BLOCK_SIZE, 3, HEAD_DIM + 4), dtype=dtype, device=DEVICE)
    expected = cache.clone()

    store_kv_triton(key, value, cache, slots)
    store_kv_ref(key, value, expected, slots)

    # Same scales, same rounding (ties aside, which random values do not hit): same bytes.
    assert torch.equal(cache.view(torch.uint8), expected.view(torch.uint8))


def _inputs(
    work: list[tuple[int, int]], dtype: torch.dtype, query_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, object]:
    num_blocks, meta = paged_step(work)
    num_tokens = sum(q for _, q in work)
    query = randn((num_tokens, 4, HEAD_DIM), query_dtype, seed=1)
    cache = randn((2, num_blocks, BLOCK_SIZE, 2, HEAD_DIM), torch.float32, seed=2)
    return query, kv_quant.quantize(cache, dtype), meta


def _expected(query: torch.Tensor, quantized: torch.Tensor, meta: object) -> torch.Tensor:
    dequantized = kv_quant.dequantize(quantized, torch.float32)
    return reference(paged_attention_ref, query, dequantized, meta, HEAD_DIM**-0.5)


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
@pytest.mark.parametrize("query_dtype", DTYPES)
def test_decode_kernel_dequantizes_in_place(dtype: torch.dtype, query_dtype: torch.dtype) -> None:
    query, quantized, meta = _inputs(DECODES, dtype, query_dtype)
    out = paged_decode_attention_triton(query, quantized, meta, HEAD_DIM**-0.5, num_splits=2)
    assert_close_to(out, _expected(query, quantized, meta), query_dtype)


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_varlen_kernel_dequantizes_in_place(dtype: torch.dtype) -> None:
    query, quantized, meta = _inputs(MIXED, dtype, torch.float32)
    out = varlen_attention_triton(query, quantized, meta, HEAD_DIM**-0.5)
    assert_close_to(out, _expected(query, quantized, meta), torch.float32)
    out = paged_attention_triton(query, quantized, meta, HEAD_DIM**-0.5)
    assert_close_to(out, _expected(query, quantized, meta), torch.float32)


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_block_copies_move_quantized_blocks_with_their_scales(dtype: torch.dtype) -> None:
    values = randn((2, 6, BLOCK_SIZE, 2, HEAD_DIM), torch.float32, seed=5)
    cache = kv_quant.quantize(values, dtype)
    expected = cache.clone()
    sources = torch.tensor([4, 1], device=DEVICE)
    destinations = torch.tensor([0, 5], device=DEVICE)
    scatter_blocks_triton(gather_blocks_triton(cache, sources), cache, destinations)
    expected[:, destinations] = expected[:, sources]
    assert torch.equal(cache.view(torch.uint8), expected.view(torch.uint8))
