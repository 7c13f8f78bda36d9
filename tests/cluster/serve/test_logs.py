"""No prompt text and no generated text reaches a log: not the front door's (this process, at
DEBUG), not any Ray or Serve process's log files (the replicas', the controller's, access
logs)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import ray

from router.client import GenerationClient
from tests.cluster.serve.conftest import Fleet


def _ray_log_files() -> list[Path]:
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return [p for p in (session / "logs").rglob("*") if p.is_file()]


def test_prompts_and_outputs_stay_out_of_every_log(
    client: GenerationClient, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"confidential-{uuid.uuid4().hex}"
    with caplog.at_level(logging.DEBUG):
        responses = list(
            client.generate(f"Summarize the {secret} report", max_tokens=24, stop=[secret])
        )
    generated = "".join(r.text for r in responses).strip()
    fleet.wait_until_idle()
    assert secret not in caplog.text
    for path in _ray_log_files():
        text = path.read_text(errors="replace")
        assert secret not in text, path
        if len(generated) >= 12:  # long enough not to occur by chance
            assert generated not in text, path
