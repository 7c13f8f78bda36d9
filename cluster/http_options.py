"""The HTTP front door's options, shared by `kvfleet serve`, `kvfleet up` and `kvfleet router`."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from cluster.cluster_config import RouterSettings
from router.http_api import ChatTemplate, HTTPConfig


@dataclass(frozen=True)
class HTTPOptions:
    port: int  # 0: no HTTP front door
    chat_template: Path | None
    request_timeout_s: float | None

    @property
    def http_port(self) -> int | None:
        """As router.front_doors takes it: None for no HTTP front door."""
        return self.port or None

    @property
    def config(self) -> HTTPConfig:
        return HTTPConfig(request_timeout_s=self.request_timeout_s)

    def chat_template_for(self, model_dir: Path) -> ChatTemplate | None:
        """The --chat-template file's, else the model's own (ModelLoadError if unreadable)."""
        return ChatTemplate.from_model_dir(model_dir, self.chat_template)


def add_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument(
        "--http-port",
        type=int,
        default=default_port,
        help=f"the OpenAI-compatible HTTP API's port (default {default_port}; 0: none)",
    )
    parser.add_argument(
        "--chat-template", type=Path, default=None, help="a Jinja chat template file "
        "(default: the model's chat_template.jinja or tokenizer_config.json template)"
    )  # fmt: skip
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=None,
        help="HTTP requests unfinished after this many seconds are aborted (504)",
    )


def from_args(args: argparse.Namespace) -> HTTPOptions:
    """ValueError naming the bad option."""
    if not 0 <= args.http_port < 65536:
        raise ValueError(f"--http-port must be in 0..65535 (0: none), got {args.http_port}")
    if args.http_port and args.http_port == getattr(args, "port", None):
        raise ValueError(f"--http-port and --port are both {args.port}")
    if args.chat_template is not None and not args.chat_template.is_file():
        raise ValueError(f"--chat-template {args.chat_template}: no such file")
    timeout = args.request_timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"--request-timeout-s must be a positive number, got {timeout}")
    return HTTPOptions(args.http_port, args.chat_template, timeout)


def from_config(router: RouterSettings) -> HTTPOptions:
    """The cluster config's router section (validated there)."""
    return HTTPOptions(router.http_port, router.chat_template, router.request_timeout_s)
