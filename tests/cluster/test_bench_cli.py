"""`kvfleet bench` against a real gRPC front door: the runs it reports, its JSON and its plot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.local_backend import LocalBackend
from tests.net import free_port
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine


@pytest.fixture(scope="module")
def server(demo_model_dir: Path) -> Iterator[RunningServer]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    running = RunningServer(LocalBackend(engine, "demo-tiny", max_queued_requests=64))
    yield running
    running.close()


def test_bench_reports_each_rate_and_writes_json_and_a_plot(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures, plot = tmp_path / "bench.json", tmp_path / "latency.png"
    args = ["bench", "--target", f"127.0.0.1:{server.port}", "--rate", "20,40"]
    args += ["--workload", "shared-prefix", "--groups", "2", "--prompts-per-group", "4"]
    args += ["--prefix-len", "48", "--input-len", "8", "--output-len", "6", "--concurrency", "4"]
    args += ["--slo-ttft-ms", "60000", "--usd-per-gpu-hour", "2.5", "--gpus", "2"]
    args += ["--output-json", str(figures), "--plot", str(plot)]
    assert main(args) == 0
    assert "TTFT p50/p90/p99 ms" in capsys.readouterr().out
    runs = json.loads(figures.read_text())["runs"]
    assert [run["rate"] for run in runs] == [20.0, 40.0]
    for run in runs:
        assert run["requests"] == 8 and run["failed"] == 0
        assert run["output_tokens"] == 8 * 6 and run["input_tokens"] == 8 * 56
        assert run["goodput_per_s"] == pytest.approx(run["requests_per_s"])  # a lenient target
        cost = 2.5 * 2 * run["duration_s"] / 3600
        assert run["usd_per_m_output_tokens"] == pytest.approx(cost / 48 * 1e6, rel=1e-3)
        assert run["ttft_ms"]["p50"] <= run["ttft_ms"]["p99"] <= run["e2e_ms"]["p99"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    server.wait_until_idle()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate", "0"], "--rate must be positive numbers"),
        (["--rate", "fast"], "--rate must be numbers separated by commas"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--output-len", "0"], "--output-len"),
    ],
)
def test_bad_bench_options_say_which(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--target", f"127.0.0.1:{free_port()}", *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_against_nothing_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--target", target, "--rate", "1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"kvfleet bench: error: {target}: UNAVAILABLE")
