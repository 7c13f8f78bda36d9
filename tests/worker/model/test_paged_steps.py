"""Chunked prefill and mixed batches give the same logits as one prefill of each sequence."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.worker.model.checkpoints import hf_greedy, make_hf_model, random_tokens, save_checkpoint
from tests.worker.model.paging import PagedSequence, new_kv_caches, run_step, shuffled_block_ids
from worker.model import ModelConfig, load_model

NUM_BLOCKS = 12


def test_prefill_in_chunks_over_cached_prefix_matches_transformers(tmp_path: Path) -> None:
    hf = make_hf_model("llama")
    config = ModelConfig.from_dir(save_checkpoint(hf, tmp_path))
    model = load_model(tmp_path, config)
    prompt = random_tokens(40)
    _, hf_logits = hf_greedy(hf, prompt, 0)

    # Chunk boundaries fall inside blocks, so later chunks write into half-filled blocks.
    seq = PagedSequence(shuffled_block_ids(NUM_BLOCKS)[:3])
    kv_caches = new_kv_caches(config, NUM_BLOCKS)
    chunks = [prompt[:13], prompt[13:29], prompt[29:]]
    logits = torch.cat([run_step(model, kv_caches, [(seq, chunk)])[0] for chunk in chunks])

    assert (logits - hf_logits).abs().max().item() < 1e-4
    assert torch.equal(logits.argmax(-1), hf_logits.argmax(-1))


def test_batch_of_prefill_chunk_and_decode_matches_running_each_alone(tmp_path: Path) -> None:
    config = ModelConfig.from_dir(save_checkpoint(make_hf_model("llama"), tmp_path))
    model = load_model(tmp_path, config)
    prompt_a, prompt_b = random_tokens(21, seed=2), random_tokens(30, seed=3)
    blocks = shuffled_block_ids(NUM_BLOCKS)

    def sequences() -> tuple[PagedSequence, PagedSequence]:
        return PagedSequence(blocks[:2]), PagedSequence(blocks[2:4])

    # Alone: a is prefilled then decodes one token; b prefills 10 tokens, then a chunk of 20.
    kv_caches = new_kv_caches(config, NUM_BLOCKS)
    a, b = sequences()
    run_step(model, kv_caches, [(a, prompt_a[:-1])])
    run_step(model, kv_caches, [(b, prompt_b[:10])])
    (alone_a,) = run_step(model, kv_caches, [(a, prompt_a[-1:])])
    (alone_b,) = run_step(model, kv_caches, [(b, prompt_b[10:])])

    # Together: the same history, then b's chunk and a's decode in one step.
    kv_caches = new_kv_caches(config, NUM_BLOCKS)
    a, b = sequences()
    run_step(model, kv_caches, [(a, prompt_a[:-1]), (b, prompt_b[:10])])
    batch_b, batch_a = run_step(model, kv_caches, [(b, prompt_b[10:]), (a, prompt_a[-1:])])

    torch.testing.assert_close(batch_a, alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch_b, alone_b, atol=1e-5, rtol=0)
