"""What a continuation on another replica must send first: the text of tokens already streamed
that the lost replica held back."""

from __future__ import annotations

from pathlib import Path

from router.failover import _unsent_text
from worker.tokenizer import Tokenizer


def test_held_back_text_is_the_sent_tokens_text_beyond_what_was_streamed(
    demo_model_dir: Path,
) -> None:
    tokenizer = Tokenizer.from_dir(demo_model_dir)
    prompt = tokenizer.encode("The replica said")
    sent = tokenizer.encode(" hello, world and more")
    whole = tokenizer.decode(prompt + sent)[len(tokenizer.decode(prompt)) :]
    assert _unsent_text(tokenizer, prompt, sent, whole[:5]) == whole[5:]
    assert _unsent_text(tokenizer, prompt, sent, whole) == ""
    assert _unsent_text(tokenizer, prompt, [], "") == ""
