"""The model's tokenizer (a Hugging Face tokenizer.json), as the engine uses it."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers

from worker.errors import ModelLoadError


def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in byte-level BPE uses for each byte (GPT-2's table), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = 0
    mapping: dict[str, int] = {}
    for byte in range(256):
        if byte in printable:
            mapping[chr(byte)] = byte
        else:
            mapping[chr(256 + extra)] = byte
            extra += 1
    return mapping


class Tokenizer:
    """Encodes prompts and decodes outputs; special tokens never appear in decoded text."""

    def __init__(self, inner: tokenizers.Tokenizer) -> None:
        self.inner = inner
        added = inner.get_added_tokens_decoder()
        self.special_ids = {i for i, t in added.items() if t.special}
        self.vocab_size = inner.get_vocab_size(with_added_tokens=True)
        self.token_bytes = self._token_bytes()

    @classmethod
    def from_dir(cls, model_dir: Path) -> Tokenizer:
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{path}: missing (kvfleet needs a fast tokenizer.json)")
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as exc:  # the tokenizers library raises bare Exceptions
            raise ModelLoadError(f"{path}: cannot be read as a tokenizer: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, special tokens added. The batch call releases the GIL while
        it works (the single-text one does not), so a long prompt tokenized on a thread does
        not stall the event loop; the fast variant skips the character offsets nobody reads."""
        ids: list[int] = self.inner.encode_batch_fast([text], add_special_tokens=True)[0].ids
        return ids

    def decode(self, token_ids: list[int]) -> str:
        text: str = self.inner.decode(token_ids, skip_special_tokens=True)
        return text

    def _token_bytes(self) -> list[bytes | None] | None:
        """Each token's bytes, for byte-level BPE tokenizers (None for special tokens); None for
        other tokenizers, whose text is only defined by decoding whole sequences."""
        decoder = json.loads(self.inner.to_str()).get("decoder") or {}
        if decoder.get("type") != "ByteLevel":
            return None
        alphabet = _byte_level_alphabet()
        table: list[bytes | None] = []
        for token_id in range(self.vocab_size):
            piece = self.inner.id_to_token(token_id)
            if piece is None or token_id in self.special_ids:
                table.append(None)
            elif all(ch in alphabet for ch in piece):
                table.append(bytes(alphabet[ch] for ch in piece))
            else:  # an added, non-special token written as plain text
                table.append(piece.encode())
        return table
