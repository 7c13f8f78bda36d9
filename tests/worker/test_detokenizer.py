"""Incremental detokenization equals decoding the whole sequence, for both tokenizer families."""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from worker.detokenizer import Detokenizer
from worker.tokenizer import Tokenizer

TEXT = "Naïve café visitors paid 12.50 € at 東京 station; the router said «ok» twice.\n"


def _metaspace_tokenizer() -> Tokenizer:
    """A SentencePiece-style BPE (▁ for spaces, byte fallback), like Llama 2 and Mistral."""
    inner = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    inner.normalizer = normalizers.Replace(" ", "▁")
    inner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    inner.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "</s>", *byte_tokens])
    inner.train_from_iterator([TEXT * 3, "the router and the scheduler " * 20], trainer)
    return Tokenizer(inner)


def _stream(tokenizer: Tokenizer, prompt: list[int], ids: list[int]) -> str:
    detok = Detokenizer(tokenizer, prompt)
    text = "".join(detok.push(t) for t in ids)
    return text + detok.flush()


@pytest.fixture(scope="module")
def byte_level(demo_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(demo_model_dir)


def test_byte_level_stream_equals_full_decode(byte_level: Tokenizer) -> None:
    assert byte_level.token_bytes is not None  # the fast path is the one under test
    ids = byte_level.encode(TEXT)
    assert _stream(byte_level, [], ids) == byte_level.decode(ids) == TEXT


def test_byte_level_never_emits_half_a_character(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("東京")
    detok = Detokenizer(byte_level, [])
    deltas = [detok.push(t) for t in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == "東京"


def test_metaspace_stream_equals_full_decode() -> None:
    tokenizer = _metaspace_tokenizer()
    assert tokenizer.token_bytes is None
    prompt = tokenizer.encode("the router")
    ids = tokenizer.encode(TEXT)
    streamed = _stream(tokenizer, prompt, ids)
    assert streamed == tokenizer.decode(prompt + ids)[len(tokenizer.decode(prompt)) :]


def test_special_tokens_produce_no_text(byte_level: Tokenizer) -> None:
    detok = Detokenizer(byte_level, [])
    assert all(detok.push(t) == "" for t in sorted(byte_level.special_ids))
