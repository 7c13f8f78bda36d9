"""The front door process a fleet's supervisor runs and restarts: `kvfleet router` against the
fleet's Ray cluster, so the router can die and come back without touching a replica."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from cluster.cluster_config import ClusterConfig
from cluster.run_state import FleetError

SERVING_LINE = b"kvfleet router: serving"  # what `kvfleet router` prints once it serves


class RouterChild:
    """One `kvfleet router` child; its output goes to ``log``."""

    def __init__(self, config: ClusterConfig, ray_address: str, log: Path) -> None:
        router = config.router
        self.target = f"{router.host}:{router.grpc_port}"
        self.command = [
            sys.executable, "-m", "cluster.cli", "router",
            "--ray-address", ray_address, "--app-name", config.app_name,
            "--host", router.host, "--port", str(router.grpc_port),
            "--http-port", str(router.http_port),
        ]  # fmt: skip
        if router.chat_template is not None:
            self.command += ["--chat-template", str(router.chat_template)]
        if router.request_timeout_s is not None:
            self.command += ["--request-timeout-s", str(router.request_timeout_s)]
        if router.tls is not None:
            self.command += ["--tls-cert", str(router.tls.cert_file)]
            self.command += ["--tls-key", str(router.tls.key_file)]
            if router.tls.client_ca_file is not None:
                self.command += ["--tls-client-ca", str(router.tls.client_ca_file)]
        if router.auth_tokens_file is not None:
            self.command += ["--auth-tokens-file", str(router.auth_tokens_file)]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = -1  # the first start is not a restart

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start it and wait until it says it serves (a line in its log: its health check may
        need credentials this process does not hold, with mutual TLS)."""
        with self.log.open("ab") as output:
            logged = output.tell()
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        self.restarts += 1
        deadline = time.monotonic() + timeout_s
        while SERVING_LINE not in self.log.read_bytes()[logged:]:
            if self.exited() or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise FleetError(f"the router did not come up: {' '.join(tail)}")
            time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
