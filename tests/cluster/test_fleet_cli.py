"""`kvfleet up`, `generate` and `down` as a user runs them: real processes end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from cluster.cli import RAY_AUTH_MODE, main
from cluster.fleet_processes import session_members
from cluster.run_state import Launch, RunState, process_alive
from router.client import GenerationClient
from tests.certificates import make_certificates
from tests.net import free_port

KVFLEET = [sys.executable, "-m", "cluster.cli"]


@pytest.fixture(autouse=True)
def _ray_auth_mode_stays_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sets Ray's token authentication in the environment (cluster/cli.py); run in
    this process, it must not leak into the tests that start a Ray of their own."""
    monkeypatch.setenv(*RAY_AUTH_MODE)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "/no/such/model"], "no config.json"),
        (["--replicas", "0"], "pools.colocated.replicas: Input should be greater than 0"),
        (["--port", "0"], "router.grpc_port: Input should be greater than or equal to 1"),
        (["--http-port", "70000"], "router.http_port: Input should be less than or equal to"),
        (["--port", "9100", "--http-port", "9100"], "http_port and grpc_port are both 9100"),
        (["--chat-template", "/no/such.jinja"], "router.chat_template: /no/such.jinja: no such"),
        (["--request-timeout-s", "-1"], "router.request_timeout_s: Input should be greater"),
        (["--kv-cache-mb", "0"], "pools.colocated.engine.kv_cache_mb: Input should be greater"),
        (["--torch-threads", "0"], "pools.colocated.engine.torch_threads: Input should be"),
        (["--redis-url", "localhost:6379"], "redis.url: Redis URL must specify"),
        (["--pp", "2", "--set", "pools.colocated.parallelism.layer_split=[1]"], "layer_split"),
        (["--set", "pools.colocated.replica=3"], "pools.colocated.replica: unknown key"),
        (["--set", "router.policy=fastest"], "router.policy: Input should be 'kvfleet' or"),
        (["--min-replicas", "3", "--max-replicas", "2"], "max_replicas (2) must be >="),
        (["--set", "novalue"], "--set 'novalue': expected KEY=VALUE"),
        (["--config", "/no/such.yaml"], "/no/such.yaml: No such file"),
        (["--ray-address", "10.0.0.1:6379"], "--ray-address joins a cluster whose replicas"),
    ],
)
def test_bad_up_options_fail_before_anything_starts(
    flags: list[str],
    message: str,
    demo_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["up", "--model", str(demo_model_dir), "--run-dir", str(tmp_path), *flags]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no process was started, nothing was written


def test_up_on_a_busy_port_fails_before_anything_starts(
    demo_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["up", "--model", str(demo_model_dir), "--run-dir", str(tmp_path)]
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--port", str(port)])
    assert exit_.value.code == 2
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("address", "message"),
    [("nowhere", "--ray-address must be HOST:PORT"), ("127.0.0.1:1", "no Ray cluster answers")],
)
def test_router_without_a_cluster_says_so_at_once(
    address: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["router", "--ray-address", address])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["status"], ["status", "-o", "json"], ["scale", "colocated", "--replicas", "2"]],
)
def test_commands_on_a_fleet_that_is_not_up_say_so_in_one_line(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--run-dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"kvfleet {command[0]}: error: nothing is running from {tmp_path}; " \
        "`kvfleet up` first\n"  # fmt: skip


def test_health_of_nothing_listening_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exit_:
        main(["health", "--target", target])
    assert exit_.value.code == 1
    assert capsys.readouterr().out == f"kvfleet health: {target} UNREACHABLE (UNAVAILABLE)\n"


def test_config_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "ClusterConfig" and "pools" in schema["properties"]


def test_down_with_nothing_running_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["down", "--run-dir", str(tmp_path)]) == 0
    assert "nothing is running" in capsys.readouterr().out


@pytest.mark.slow
def test_up_generate_down(demo_model_dir: Path, tmp_path: Path) -> None:
    port, http_port, run_dir = free_port(), free_port(), tmp_path / "run"
    up = [*KVFLEET, "up", "--model", str(demo_model_dir), "--replicas", "2"]
    up += ["--port", str(port), "--run-dir", str(run_dir), "--kv-cache-mb", "16"]
    subprocess.run([*up, "--http-port", str(http_port)], check=True, timeout=300)
    state, launch = RunState.read(run_dir), Launch.read(run_dir)
    assert state is not None and state.target == f"127.0.0.1:{port}"
    assert launch is not None and launch.pid == state.pid
    assert state.http_target == f"127.0.0.1:{http_port}"
    try:
        _chat_once(f"http://{state.http_target}/v1")
        again = subprocess.run(up, capture_output=True, text=True, timeout=60)
        assert again.returncode == 2 and "already up" in again.stderr
        generate = [*KVFLEET, "generate", "--target", state.target, "--max-tokens", "8"]
        done = subprocess.run(
            [*generate, "--ignore-eos", "Hello fleet"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Hello fleet")
        assert "[length on replica" in done.stderr and "8 generated" in done.stderr
        bad = subprocess.run([*generate, "--top-p", "0", "x"], capture_output=True, text=True)
        assert bad.returncode == 1 and "INVALID_ARGUMENT: sampling.top_p" in bad.stderr
        status = [*KVFLEET, "status", "-o", "json", "--run-dir", str(run_dir)]
        shown = subprocess.run(status, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        [pool] = json.loads(shown.stdout)["pools"]
        assert pool["pool"] == "colocated"
        assert pool["counts"] == {"running": 2, "starting": 0, "stopping": 0, "desired": 2}
        replicas = {r["replica_id"] for r in pool["replicas"]}
        assert len(replicas) == 2
        assert all(r["metrics"].startswith("127.0.0.1:") for r in pool["replicas"])
        scale = [*KVFLEET, "scale", "colocated", "--run-dir", str(run_dir)]
        scaled = subprocess.run([*scale, "--replicas", "1"], capture_output=True, text=True)
        assert scaled.returncode == 0, scaled.stderr
        assert "pool colocated: 1 replicas" in scaled.stdout
        [pool] = json.loads(subprocess.run(status, capture_output=True, text=True).stdout)["pools"]
        assert pool["counts"]["desired"] == 1
        assert {r["replica_id"] for r in pool["replicas"]} < replicas  # one kept, not restarted
        wrong = subprocess.run([*scale, "--replicas", "1", "--max", "3"], capture_output=True)
        assert wrong.returncode == 2 and b"either --replicas N, or --min N" in wrong.stderr
        health = subprocess.run([*KVFLEET, "health", "--target", state.target], capture_output=True)
        assert health.returncode == 0 and b"SERVING" in health.stdout
        # The router is a process of its own: killed, it comes back; the replicas stay.
        os.kill(state.router_pid, signal.SIGKILL)
        _wait_for_router_restart(run_dir, state.router_pid)
        _chat_once(f"http://{state.http_target}/v1")
        [pool] = json.loads(subprocess.run(status, capture_output=True, text=True).stdout)["pools"]
        assert {r["replica_id"] for r in pool["replicas"]} < replicas
    finally:
        subprocess.run([*KVFLEET, "down", "--run-dir", str(run_dir)], check=True, timeout=120)
    assert RunState.read(run_dir) is None
    assert not process_alive(state.pid)
    assert session_members(state.pid) == []  # Redis, Ray, the router: all stopped
    assert not Path(launch.temp_dir).exists()
    gone = subprocess.run([*KVFLEET, "health", "--target", state.target], capture_output=True)
    assert gone.returncode == 1 and b"UNREACHABLE" in gone.stdout


def test_serve_answers_generate_in_process_and_stops_on_sigterm(demo_model_dir: Path) -> None:
    port, http_port = free_port(), free_port()
    serve = [*KVFLEET, "serve", "--model", str(demo_model_dir), "--port", str(port)]
    serve += ["--http-port", str(http_port)]
    process = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"gRPC on 127.0.0.1:{port}, HTTP on 127.0.0.1:{http_port}" in line
        with GenerationClient(f"127.0.0.1:{port}") as client:
            responses = list(client.generate("Hello", max_tokens=4, ignore_eos=True))
        assert responses[-1].finished.usage.completion_tokens == 4
        _chat_once(f"http://127.0.0.1:{http_port}/v1")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_serve_with_a_bad_model_directory_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", str(tmp_path)])
    assert exit_.value.code == 2
    assert "config.json: not found" in capsys.readouterr().err


def _wait_for_router_restart(run_dir: Path, old_pid: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        state = RunState.read(run_dir)
        if state is not None and state.router_pid != old_pid:
            assert state.router_restarts == 1
            return
        assert time.monotonic() < deadline, "the router did not come back"
        time.sleep(0.2)


@pytest.mark.slow
def test_down_after_the_supervisor_was_killed_leaves_nothing_behind(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    run_dir, certificates, port = tmp_path / "run", make_certificates(tmp_path), free_port()
    up = [*KVFLEET, "up", "--model", str(demo_model_dir), "--replicas", "1", "--http-port", "0"]
    up += ["--set", f"router.tls.cert_file={certificates.server_cert}"]  # its router on TLS
    up += ["--set", f"router.tls.key_file={certificates.server_key}"]
    subprocess.run([*up, "--port", str(port), "--run-dir", str(run_dir)], check=True)
    health = [*KVFLEET, "health", "--target", f"127.0.0.1:{port}"]
    served = subprocess.run([*health, "--tls-ca", str(certificates.ca)], capture_output=True)
    assert served.returncode == 0 and b"SERVING" in served.stdout
    assert subprocess.run(health, capture_output=True).returncode == 1  # no plain text
    launch = Launch.read(run_dir)
    assert launch is not None
    os.kill(launch.pid, signal.SIGKILL)
    assert session_members(launch.pid)  # Redis, Ray and the router outlive it
    status = subprocess.run([*KVFLEET, "status", "--run-dir", str(run_dir)], capture_output=True)
    assert status.returncode == 2 and b"nothing is running" in status.stderr
    down = subprocess.run(
        [*KVFLEET, "down", "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert down.returncode == 0, down.stderr
    assert f"the supervisor (pid {launch.pid}) had exited; stopped the" in down.stdout
    assert session_members(launch.pid) == []
    assert not Path(launch.temp_dir).exists()
    assert Launch.read(run_dir) is None and RunState.read(run_dir) is None
    again = subprocess.run([*KVFLEET, "down", "--run-dir", str(run_dir)], capture_output=True)
    assert b"nothing is running" in again.stdout


def _chat_once(base_url: str) -> None:
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        answer = client.chat.completions.create(
            model="demo-tiny",
            messages=[{"role": "user", "content": "Hello fleet"}],
            max_tokens=4,
            extra_body={"ignore_eos": True},
        )
    assert answer.usage is not None and answer.usage.completion_tokens == 4


def test_serve_on_a_busy_http_port_says_so(
    demo_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        http_port = busy.getsockname()[1]
        args = ["serve", "--model", str(demo_model_dir), "--port", str(free_port())]
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--http-port", str(http_port)])
    assert exit_.value.code == 2
    assert f"cannot serve HTTP on 127.0.0.1:{http_port}" in capsys.readouterr().err
