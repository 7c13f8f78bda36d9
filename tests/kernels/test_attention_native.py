"""The native CPU attention computes what the per-sequence reference does, and the library
builds, caches and fails the way kernels/native.py says."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from kernels import kv_quant, native, ops
from kernels.attention_native import paged_attention_native, supports
from kernels.attention_ref import paged_attention_ref
from tests.kernels.test_attention_cpu import BLOCK, _batch, _metadata

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
QUANT_DTYPES = [pytest.param(torch.int8, id="int8"), pytest.param(torch.float8_e4m3fn, id="fp8")]


def _inputs(
    rows: list[tuple[int, int, list[int]]], kv_heads: int, heads: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    num_tokens = sum(query_len for query_len, _, _ in rows)
    kv_cache = torch.randn(2, 200, BLOCK, kv_heads, 16, generator=generator).to(dtype)
    query = torch.randn(num_tokens, heads, 16, generator=generator).to(dtype)
    return query, kv_cache


@pytest.mark.parametrize("kv_heads, heads", [(4, 4), (2, 4), (1, 4)])
@pytest.mark.parametrize("shared_groups", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_equals_reference(
    kv_heads: int, heads: int, shared_groups: int, dtype: torch.dtype
) -> None:
    rows = _batch(seed=kv_heads * 10 + shared_groups, shared_groups=shared_groups)
    meta = _metadata(rows)
    query, kv_cache = _inputs(rows, kv_heads, heads, dtype)
    assert supports(query, kv_cache)
    expected = paged_attention_ref(query, kv_cache, meta, scale=0.25)
    got = paged_attention_native(query, kv_cache, meta, scale=0.25)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def _quantized_batch(block_size: int) -> list[tuple[int, int, list[int]]]:
    """Decode rows (one key, within a block, across blocks) and prefill chunks (from the start,
    longer than a tile, over a cached prefix that ends inside a block), on shuffled blocks."""
    shapes = [(1, 1), (1, 7), (1, 3 * block_size + 5), (20, 20), (37, 2 * block_size + 40), (3, 9)]
    free = torch.randperm(200, generator=torch.Generator().manual_seed(block_size)).tolist()
    return [(q, n, [free.pop() for _ in range(-(-n // block_size))]) for q, n in shapes]


@pytest.mark.parametrize("cache_dtype", QUANT_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads, heads", [(4, 4), (1, 4)])
@pytest.mark.parametrize("block_size", [4, 16, 64])
def test_native_over_a_quantized_cache_equals_reference_over_its_dequantization(
    cache_dtype: torch.dtype, dtype: torch.dtype, kv_heads: int, heads: int, block_size: int
) -> None:
    rows = _quantized_batch(block_size)
    meta = _metadata(rows, block_size)
    generator = torch.Generator().manual_seed(block_size + kv_heads)
    # Keys and values with rows of very different ranges, so that their scales differ.
    ranges = torch.logspace(-0.5, 0.5, kv_heads * block_size).view(block_size, kv_heads, 1)
    cache = torch.randn(2, 200, block_size, kv_heads, 32, generator=generator) * ranges
    quantized = kv_quant.quantize(cache, cache_dtype)
    query = torch.randn(sum(q for q, _, _ in rows), heads, 32, generator=generator).to(dtype)
    assert supports(query, quantized)
    dequantized = kv_quant.dequantize(quantized, torch.float32)
    expected = paged_attention_ref(query.float(), dequantized, meta, scale=32**-0.5)
    got = paged_attention_native(query, quantized, meta, scale=32**-0.5)
    assert got.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("cache_dtype", QUANT_DTYPES)
def test_every_quantized_byte_reads_as_torch_converts_it(cache_dtype: torch.dtype) -> None:
    # Sixteen one-token sequences: each output row is its value row times the value scale,
    # exactly (one key: weight 1). Together the value rows hold all 256 bytes, NaNs included.
    values = torch.arange(256, dtype=torch.uint8).view(cache_dtype).view(16, 1, 16)
    value_scale = torch.full((16, 1, 1), 0.125)
    kv_cache = torch.zeros(2, 16, BLOCK, 1, 16 + kv_quant.SCALE_BYTES, dtype=cache_dtype)
    kv_cache.view(torch.uint8)[0, :, 0, :, 16:] = torch.ones(16, 1, 1).view(torch.uint8)
    kv_cache[1, :, 0, :, :16] = values
    kv_cache.view(torch.uint8)[1, :, 0, :, 16:] = value_scale.view(torch.uint8)
    meta = _metadata([(1, 1, [i]) for i in range(16)])
    got = paged_attention_native(torch.zeros(16, 1, 16), kv_cache, meta, scale=1.0)
    expected = values.float() * value_scale
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_long_prefill_chunks_over_a_cached_prefix() -> None:
    # Chunks longer than one tile of query rows, starting inside a block, over a prefix of
    # several blocks, beside decode rows.
    rows = [(37, 45, list(range(0, 12))), (1, 30, list(range(20, 28))), (16, 16, [40, 41, 42, 43])]
    meta = _metadata(rows)
    query, kv_cache = _inputs(rows, kv_heads=2, heads=4, dtype=torch.float32)
    expected = paged_attention_ref(query, kv_cache, meta, scale=0.25)
    got = paged_attention_native(query, kv_cache, meta, scale=0.25)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dispatch_runs_native_on_cpu() -> None:
    rows = _batch(seed=3, shared_groups=1)
    meta = _metadata(rows)
    query, kv_cache = _inputs(rows, kv_heads=2, heads=4, dtype=torch.float32)
    expected = paged_attention_native(query, kv_cache, meta, scale=0.25)
    assert torch.equal(ops.paged_attention(query, kv_cache, meta, 0.25), expected)


def test_shapes_it_cannot_run_stay_on_the_torch_path() -> None:
    kv_cache = torch.zeros(2, 4, BLOCK, 2, 16)
    assert not supports(torch.zeros(1, 4, 12), torch.zeros(2, 4, BLOCK, 2, 12))  # head_dim
    assert not supports(torch.zeros(1, 4, 16, dtype=torch.float16), kv_cache.half())
    assert not supports(torch.zeros(1, 4, 16), torch.zeros(2, 4, 128, 2, 16))  # block size
    assert not supports(torch.zeros(1, 4, 16), kv_cache.transpose(3, 4))
    # A quantized cache needs rows of head_dim values and a scale, and a float32 or bf16 query.
    quantized = torch.zeros(2, 4, BLOCK, 2, 16 + kv_quant.SCALE_BYTES, dtype=torch.int8)
    assert supports(torch.zeros(1, 4, 16, dtype=torch.bfloat16), quantized)
    assert not supports(torch.zeros(1, 4, 16, dtype=torch.float16), quantized)
    assert not supports(torch.zeros(1, 4, 16), kv_cache.to(torch.int8))  # no scales


def test_built_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVFLEET_CACHE_DIR", str(tmp_path))
    first = native.load.__wrapped__("paged_attention_cpu")
    assert first is not None
    (built,) = (tmp_path / "native").glob("paged_attention_cpu-*.so")
    stamp = built.stat().st_mtime_ns
    assert native.load.__wrapped__("paged_attention_cpu") is not None
    assert built.stat().st_mtime_ns == stamp


def test_no_compiler_means_no_library_and_a_logged_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KVFLEET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with caplog.at_level(logging.WARNING, logger="kernels.native"):
        assert native.load.__wrapped__("paged_attention_cpu") is None
    assert "paged_attention_cpu unavailable" in caplog.text
    assert "false failed" in caplog.text
    assert not list((tmp_path / "native").glob("*.so"))


def test_bf16_is_the_fp32_computation_rounded_to_nearest() -> None:
    # Loads widen exactly and accumulation is fp32 in both, so only the output rounding differs:
    # it must be torch's round-to-nearest-even.
    rows = _batch(seed=5, shared_groups=2)
    meta = _metadata(rows)
    query, kv_cache = _inputs(rows, kv_heads=2, heads=4, dtype=torch.bfloat16)
    wide = paged_attention_native(query.float(), kv_cache.float(), meta, scale=0.25)
    assert torch.equal(paged_attention_native(query, kv_cache, meta, 0.25), wide.bfloat16())


def test_nan_stays_in_its_row_and_far_scores_weigh_nothing() -> None:
    # One decode row whose query is NaN: NaN out, as the reference gives, and nowhere else.
    # Another whose scores differ by hundreds: the far keys underflow to exactly no weight.
    rows = [(1, 9, [1, 2, 3]), (1, 7, [4, 5]), (1, 5, [6, 7])]
    meta = _metadata(rows)
    query, kv_cache = _inputs(rows, kv_heads=2, heads=4, dtype=torch.float32)
    query[0] = float("nan")
    query[1] *= 400.0
    expected = paged_attention_ref(query, kv_cache, meta, scale=0.25)
    got = paged_attention_native(query, kv_cache, meta, scale=0.25)
    assert got[0].isnan().all() and not got[1:].isnan().any()
    torch.testing.assert_close(got[1:], expected[1:], atol=1e-5, rtol=1e-5)
