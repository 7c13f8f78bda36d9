"""Chat templates render exactly as Hugging Face's apply_chat_template renders them: the demo
model's own, and Llama-3, Qwen and Zephyr style templates shipped as test data (the last
written with plain block tags, where trim_blocks and lstrip_blocks matter)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from router.http_api import ChatTemplate
from worker.errors import InvalidRequestError, ModelLoadError

TEMPLATES = Path(__file__).parent / "templates"
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "  Be brief, café owner.  "},
        {"role": "user", "content": "Which blocks stay cached?"},
        {"role": "assistant", "content": "The shared prefix."},
        {"role": "user", "content": "Why?\nExplain."},
    ],
]


def _hugging_face(model_dir: Path, template: str) -> PreTrainedTokenizerFast:
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    return PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        bos_token=config["bos_token"],
        eos_token=config["eos_token"],
        chat_template=template,
    )


@pytest.mark.parametrize("name", ["demo", "llama3.jinja", "qwen2.jinja", "zephyr.jinja"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_equals_hugging_face(
    demo_model_dir: Path, tmp_path: Path, name: str, add_generation_prompt: bool
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(demo_model_dir, model_dir)
    if name != "demo":  # shipped beside the model, as chat_template.jinja
        shutil.copy(TEMPLATES / name, model_dir / "chat_template.jinja")
    template = ChatTemplate.from_model_dir(model_dir)
    assert template is not None
    reference = _hugging_face(model_dir, template.source)
    for messages in CONVERSATIONS:
        expected = reference.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert template.render(messages, add_generation_prompt) == expected


def test_an_override_file_wins_over_the_models_template(demo_model_dir: Path) -> None:
    override = ChatTemplate.from_model_dir(demo_model_dir, TEMPLATES / "qwen2.jinja")
    assert override is not None
    assert override.source == (TEMPLATES / "qwen2.jinja").read_text()


def test_a_model_without_a_template_has_none(demo_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(demo_model_dir, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTemplate.from_model_dir(model_dir) is None


def test_a_template_that_raises_refuses_the_messages_by_name(demo_model_dir: Path) -> None:
    template = ChatTemplate.from_model_dir(demo_model_dir, TEMPLATES / "llama3.jinja")
    assert template is not None
    with pytest.raises(InvalidRequestError, match="roles must be user or assistant") as info:
        template.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    assert info.value.field == "messages"


def test_a_broken_or_missing_template_file_is_a_model_load_error(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(ModelLoadError, match="chat template"):
        ChatTemplate.from_model_dir(demo_model_dir, broken)
    with pytest.raises(ModelLoadError, match=r"missing\.jinja"):
        ChatTemplate.from_model_dir(demo_model_dir, tmp_path / "missing.jinja")


def test_the_sandbox_refuses_to_reach_python_internals(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    escape = tmp_path / "escape.jinja"
    escape.write_text("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    template = ChatTemplate.from_model_dir(demo_model_dir, escape)
    assert template is not None
    with pytest.raises(InvalidRequestError, match="messages"):
        template.render(CONVERSATIONS[0])
