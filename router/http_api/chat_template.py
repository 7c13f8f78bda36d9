"""Chat templates: the model's own Jinja template turns messages into one prompt string.

Rendered the way Hugging Face's ``apply_chat_template`` renders them, so a model answers as it
was trained to: an immutable sandboxed Jinja environment with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that keeps non-ASCII,
``raise_exception`` and ``strftime_now`` as globals, and the tokenizer's special tokens
(``bos_token``, ``eos_token``, ...) beside ``messages`` and ``add_generation_prompt``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from worker.errors import InvalidRequestError, ModelLoadError

TEMPLATE_FILE = "chat_template.jinja"
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")


class TemplateRaised(Exception):
    """What a template's ``raise_exception`` raises: the template refused the messages."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(
    value: object, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(
        value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _token_text(value: object) -> str | None:
    """tokenizer_config.json writes a special token as a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTemplate:
    """A compiled template and the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: dict[str, str]) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelLoadError(f"chat template line {exc.lineno}: {exc.message}") from None
        self.source = source
        self.special_tokens = dict(special_tokens)

    @classmethod
    def from_model_dir(cls, model_dir: Path, override: Path | None = None) -> ChatTemplate | None:
        """The template of ``override`` (a Jinja file), else of the model directory:
        ``chat_template.jinja``, else ``chat_template`` in tokenizer_config.json. None if the
        model has none."""
        config: dict[str, Any] = {}
        config_file = model_dir / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"{config_file}: {exc}") from None
            if not isinstance(config, dict):
                raise ModelLoadError(f"{config_file}: not a JSON object")
        special = {k: t for k in _SPECIAL_TOKENS if (t := _token_text(config.get(k))) is not None}
        for path in (override, model_dir / TEMPLATE_FILE):
            if path is None:
                continue
            if path is override or path.is_file():
                try:
                    return cls(path.read_text(), special)
                except OSError as exc:
                    raise ModelLoadError(f"chat template {path}: {exc.strerror}") from None
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: the default one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if source is None:
            return None
        if not isinstance(source, str):
            raise ModelLoadError(f"{config_file}: chat_template is not a string")
        return cls(source, special)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt for ``messages``; InvalidRequestError("messages") if the template
        refuses them (its ``raise_exception``) or fails on them."""
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except TemplateRaised as exc:
            raise InvalidRequestError(
                "messages", f"the chat template refused them: {exc}"
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
            raise InvalidRequestError(
                "messages", f"the chat template failed on them: {exc}"
            ) from None
