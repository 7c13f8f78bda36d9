"""The demo model's tokenizer: a byte-level BPE trained from the text in cluster/corpus/."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
# The trainer gives special tokens the first ids, in this order: bos 0, eos 1, im_start 2, im_end 3.
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

# ChatML turns, opened with the bos token because the tokenizer itself never adds one.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus_texts() -> list[str]:
    """The training documents shipped with the package, in file-name order."""
    corpus = resources.files("cluster").joinpath("corpus")
    files = sorted(
        (entry for entry in corpus.iterdir() if entry.name.endswith(".txt")),
        key=lambda entry: entry.name,
    )
    if not files:
        raise FileNotFoundError(f"no *.txt training text under {corpus}")
    return [entry.read_text(encoding="utf-8") for entry in files]


@functools.cache
def _trained_json(vocab_size: int) -> str:
    # Training takes a fraction of a second but the demo model is written by many tests in one
    # process; keeping the serialized result (not a mutable Tokenizer) makes repeats free.
    tokenizer = Tokenizer(models.BPE())
    # No prefix space, so decode(encode(text)) gives back exactly the text.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(), trainer=trainer)
    serialized: str = tokenizer.to_str(pretty=True)
    return serialized


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """Train (or reuse this process's earlier training of) the byte-level BPE.

    The result is deterministic: same corpus and vocab_size, same tokenizer.json bytes. Its
    vocabulary is at most vocab_size, smaller if the corpus runs out of merges.
    """
    return Tokenizer.from_str(_trained_json(vocab_size))


def tokenizer_config(model_max_length: int) -> dict[str, object]:
    """The tokenizer_config.json that lets transformers' AutoTokenizer load the directory."""
    return {
        "bos_token": BOS_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        # Cleanup would turn "a ." into "a." and break the exact round trip.
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def write_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json and tokenizer_config.json into out_dir."""
    (out_dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(model_max_length))


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write data with sorted keys and fixed formatting, so equal data gives equal bytes."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
