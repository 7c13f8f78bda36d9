"""Incremental detokenization: text deltas as tokens arrive, never a broken character."""

from __future__ import annotations

import codecs

from worker.tokenizer import Tokenizer


class Detokenizer:
    """Per-request text state. Byte-level tokenizers decode token bytes through an incremental
    UTF-8 decoder (O(1) per token); others re-decode a short window of recent tokens and emit
    the new suffix once it no longer ends in a partial character."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids = list(prompt_ids[-6:])  # context for tokenizers that strip leading spaces
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        table = self._tokenizer.token_bytes
        if table is not None:
            piece = table[token_id] if token_id < len(table) else None
            return self._utf8.decode(piece) if piece else ""
        self._ids.append(token_id)
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._tokenizer.decode(self._ids[self._prefix_offset :])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return text[len(prefix) :]

    def flush(self) -> str:
        """What is still held back (an incomplete character), at the end of the request."""
        if self._tokenizer.token_bytes is not None:
            return self._utf8.decode(b"", final=True)
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._tokenizer.decode(self._ids[self._prefix_offset :])
        return text[len(prefix) :] if len(text) > len(prefix) else ""
