"""A bounded soak: a fixed request rate through both front doors of a real fleet (local Ray,
Serve, two CPU replicas of the demo model, redis-server), while faults strike on a schedule:

    a replica is killed  ->  Redis restarts  ->  the router restarts (drains, comes back)

With ``--disaggregated`` the fleet is a prefill pool (one replica) and a decode pool (two), every
prompt long enough to be prefilled remotely, and a prefill replica is killed first.

Every request is greedy with ``ignore_eos``, so each that succeeds must stream exactly
``max_tokens`` tokens; half go over gRPC (kvfleet's client), half over HTTP (the openai SDK),
each retried by no one.

Last line, one JSON object: ``requests_sent``, ``requests_ok``, ``requests_failed_by_cause``
(the gRPC status or HTTP error class), ``tokens_lost`` (tokens streamed to clients of requests
that then failed, plus tokens missing from requests reported complete: must be 0),
``leaked_blocks`` (KV blocks held once the fleet is idle: must be 0), time to first token p99
in each phase (before the first fault, then after each fault until the next), and
``peak_rss_mb`` of the router process and of the replicas with their growth over the run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import openai
import ray
from ray import serve

from cluster import cluster_config
from cluster.app import DEPLOYMENT, DEPLOYMENTS, deploy
from cluster.demo_model import write_demo_model
from cluster.fleet_status import kv_states
from cluster.front_door import FrontDoorThread
from cluster.http_options import HTTPOptions
from cluster.redis_server import RedisServer
from cluster.replica import replica_ids
from router.client import GenerationClient

APP = "kvfleet-soak"
ROUTER_DRAIN_S = 5.0  # what `kvfleet router` drains on SIGTERM (FrontDoor.stop's default)
MAX_TOKENS = 48  # long enough that streams are in flight when a fault strikes


@dataclass
class Outcome:
    sent_at: float
    door: str
    ttft_s: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class Soak:
    """The fleet under test and what the load saw."""

    grpc_port: int
    http_port: int
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def prompt(index: int) -> str:
    """About 330 tokens of the demo tokenizer: past the disaggregated fleet's 256-token local
    prefill threshold, so the prefill pool computes it."""
    return f"Soak request {index} asks for the state of the fleet. " * 30


def grpc_request(soak: Soak, index: int, sent_at: float) -> None:
    outcome = Outcome(sent_at, "grpc")
    try:
        with GenerationClient(f"127.0.0.1:{soak.grpc_port}") as client:
            for response in client.generate(
                prompt(index),
                max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, timeout=60,
            ):  # fmt: skip
                if response.token_ids and outcome.ttft_s is None:
                    outcome.ttft_s = time.monotonic() - sent_at
                outcome.tokens += len(response.token_ids)
    except grpc.RpcError as err:
        outcome.error = f"grpc:{err.code().name}"
    soak.record(outcome)


def http_request(soak: Soak, index: int, sent_at: float) -> None:
    outcome = Outcome(sent_at, "http")
    try:
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{soak.http_port}/v1", api_key="none", max_retries=0,
            timeout=60,
        ) as client:  # fmt: skip
            stream = client.completions.create(
                model="demo-tiny", prompt=prompt(index),
                max_tokens=MAX_TOKENS, temperature=0.0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )  # fmt: skip
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text and outcome.ttft_s is None:
                    outcome.ttft_s = time.monotonic() - sent_at
                if chunk.usage is not None:
                    outcome.tokens = chunk.usage.completion_tokens
    except openai.APIError as err:
        outcome.error = f"http:{type(err).__name__}"
    soak.record(outcome)


def rss_mb(pids: list[int]) -> float:
    """Resident memory of the processes, from /proc (Linux)."""
    total_kb = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
        total_kb += int(line.split()[1])
    return total_kb / 1024


def replica_pids() -> list[int]:
    """The Serve replica processes of the soak's application (Ray names them in argv)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "ServeReplica" in cmdline and APP in cmdline:
            pids.append(int(entry.name))
    return pids


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    return round(statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a shorter run, about a minute")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--disaggregated", action="store_true", help="prefill and decode pools")
    args = parser.parse_args()
    phase_s = 8.0 if args.quick else 40.0
    faults = ["replica_killed", "redis_restarted", "router_restarted"]
    decode = DEPLOYMENT  # the deployment whose replica "replica_killed" kills
    engine = {"dtype": "float32"}
    pools: dict[str, object] = {"colocated": {"replicas": 2, "engine": engine}}
    if args.disaggregated:
        faults = ["prefill_replica_killed", *faults]
        decode = DEPLOYMENTS["decode"]
        pools = {
            "prefill": {"replicas": 1, "engine": engine},
            "decode": {"replicas": 2, "engine": engine},
        }
    duration = phase_s * (len(faults) + 1)

    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    redis = RedisServer()
    redis.start()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "demo-tiny"
        write_demo_model(model, preset="tiny", seed=0)
        config = cluster_config.load(
            {
                "model": str(model), "app_name": APP, "redis": {"url": redis.url},
                "pools": pools,
            }
        )  # fmt: skip
        deploy(config)
        grpc_port, http_port = _free_port(), _free_port()
        http = HTTPOptions(port=http_port, chat_template=None, request_timeout_s=60)
        doors = [FrontDoorThread(APP, port=grpc_port, http=http)]  # the one serving, last
        soak = Soak(grpc_port, http_port)
        striking: threading.Thread | None = None
        router = os.getpid()  # the front doors run on a thread of this process
        rss: dict[str, list[float]] = {"router": [], "replicas": []}
        fault_times: dict[str, float] = {}
        fault_lengths: dict[str, float] = {}  # how long each took to strike (and recover)
        start = time.monotonic()
        pool = ThreadPoolExecutor(128)
        index = 0
        try:
            while (now := time.monotonic()) < start + duration:
                due = start + index / args.rate
                if now < due:
                    time.sleep(min(due - now, 0.05))
                    continue
                send = grpc_request if index % 2 == 0 else http_request
                pool.submit(send, soak, index, time.monotonic())
                index += 1
                phase = int((now - start) // phase_s)
                if 1 <= phase <= len(faults) and faults[phase - 1] not in fault_times:
                    fault = faults[phase - 1]
                    fault_times[fault] = time.monotonic() - start
                    # On a thread of its own: the load keeps arriving while the fault lasts.
                    striking = threading.Thread(
                        target=_strike,
                        args=(fault, config.app_name, redis, doors, http, fault_lengths, decode),
                    )
                    striking.start()
                if index % 8 == 0:
                    rss["router"].append(rss_mb([router]))
                    rss["replicas"].append(rss_mb(replica_pids()))
            pool.shutdown(wait=True)
            if striking is not None:
                striking.join()
            leaked = sum(_leaked_blocks(config.app_name, DEPLOYMENTS[p]) for p in pools)
        finally:
            doors[-1].stop()
            serve.shutdown()
            ray.shutdown()
            redis.stop()

    figures = _figures(soak, index, fault_times, start, faults, leaked, rss)
    figures["fault_lengths_s"] = fault_lengths
    mode = "disaggregated" if args.disaggregated else "colocated"
    print(json.dumps({**figures, "rate": args.rate, "duration_s": duration, "mode": mode}))


def _strike(
    fault: str,
    app_name: str,
    redis: RedisServer,
    doors: list[FrontDoorThread],
    http: HTTPOptions,
    lengths: dict[str, float],
    decode: str,
) -> None:
    began = time.monotonic()
    if fault.endswith("replica_killed"):
        # The other replica kill strikes the pool that decodes: colocated, or decode.
        deployment = DEPLOYMENTS["prefill"] if fault.startswith("prefill") else decode
        victim = replica_ids(app_name, deployment)[0]
        actor = ray.get_actor(f"SERVE_REPLICA::{app_name}#{deployment}#{victim}", namespace="serve")
        ray.kill(actor, no_restart=True)
    elif fault == "redis_restarted":
        redis.restart()
    else:  # the router restarting as on SIGTERM: it drains for up to 5 s, then comes back
        door = doors[-1]
        port = int(door.target.rsplit(":", 1)[1])
        door.stop(grace_s=ROUTER_DRAIN_S)
        doors.append(FrontDoorThread(app_name, port=port, http=http))
    lengths[fault] = round(time.monotonic() - began, 2)


def _leaked_blocks(app_name: str, deployment: str, timeout_s: float = 30.0) -> int:
    """Blocks still held once every replica of the deployment is idle (waits for that; a
    prefill replica's leases expire or are released)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = kv_states(app_name, deployment)
        held = sum(s.num_blocks - s.num_free_blocks for s in states.values())
        idle = all(s.num_unfinished == 0 for s in states.values())
        if (idle and held == 0) or time.monotonic() > deadline:
            return held


def _figures(
    soak: Soak,
    sent: int,
    fault_times: dict[str, float],
    start: float,
    faults: list[str],
    leaked: int,
    rss: dict[str, list[float]],
) -> dict[str, object]:
    outcomes = soak.outcomes
    ok = [o for o in outcomes if o.error is None]
    lost = sum(o.tokens for o in outcomes if o.error is not None)
    lost += sum(MAX_TOKENS - o.tokens for o in ok)
    edges = [0.0] + [fault_times[f] for f in faults if f in fault_times] + [float("inf")]
    names = ["before_faults", *(f"after_{f}" for f in faults if f in fault_times)]
    ttft, failed = {}, {}
    for name, low, high in zip(names, edges, edges[1:], strict=False):
        window = [o.ttft_s for o in ok if o.ttft_s is not None and low <= o.sent_at - start < high]
        ttft[name] = p99(window)
        failed[name] = sum(1 for o in outcomes if o.error and low <= o.sent_at - start < high)
    return {
        "requests_sent": sent,
        "requests_ok": len(ok),
        "requests_failed_by_cause": dict(Counter(o.error for o in outcomes if o.error)),
        "tokens_lost": lost,
        "leaked_blocks": leaked,
        "ttft_p99_s": ttft,
        "requests_failed_by_phase": failed,
        "fault_times_s": {f: round(t, 1) for f, t in fault_times.items()},
        "peak_rss_mb": {k: round(max(v), 1) if v else None for k, v in rss.items()},
        "rss_growth_mb": {k: round(v[-1] - v[0], 1) if v else None for k, v in rss.items()},
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
