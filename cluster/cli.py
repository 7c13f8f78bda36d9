"""The `kvfleet` command line (typer). Every command that fails says why in one line on stderr
and exits non-zero: 2 for a bad option, config or state, 1 for a request that failed."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer

from worker.errors import KVFleetError

if TYPE_CHECKING:
    import grpc


# A local Ray cluster (`kvfleet up`) turns token authentication on by default, and a process
# joining it (`kvfleet router`, `kvfleet status`) sends the token only in this mode, which Ray
# reads once, when it is first imported: so Ray is imported only inside the commands.
RAY_AUTH_MODE = ("RAY_AUTH_MODE", "token")
RUN_DIR = Path(".kvfleet/run")

app = typer.Typer(
    name="kvfleet",
    help="Prefix-cache-aware LLM serving on Ray: start, watch, scale and query a fleet.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
RunDir = Annotated[Path, typer.Option(help="where `kvfleet up` keeps the fleet's state")]
Target = Annotated[str, typer.Option(help="a front door's gRPC host:port")]
HTTPPort = Annotated[int, typer.Option(help="the OpenAI HTTP API's port (0: none)")]
ChatTemplate = Annotated[
    Path | None, typer.Option(help="a Jinja chat template (default: the model's own)")
]
RequestTimeout = Annotated[
    float | None, typer.Option(help="abort HTTP requests unfinished after this many seconds")
]
ClientCA = Annotated[Path | None, typer.Option(help="TLS: the CA to trust (PEM)")]
ClientCert = Annotated[Path | None, typer.Option(help="mutual TLS: this client's certificate")]
ClientKey = Annotated[Path | None, typer.Option(help="mutual TLS: this client's key")]
TLSCert = Annotated[Path | None, typer.Option(help="TLS on both ports: certificate (PEM)")]
TLSKey = Annotated[Path | None, typer.Option(help="TLS: its private key (PEM)")]
TLSClientCA = Annotated[Path | None, typer.Option(help="mutual TLS: the clients' CA (PEM)")]
AuthTokens = Annotated[
    Path | None, typer.Option(help="bearer tokens, one per line: every call but health needs one")
]
Token = Annotated[str | None, typer.Option(help="the bearer token to send")]


def _one_line_errors(command: F) -> F:
    """kvfleet's own errors, bad values and OS errors as `kvfleet CMD: error: ...`, exit 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (KVFleetError, ValueError, OSError) as exc:
            name = command.__name__.rstrip("_").replace("_", "-")
            print(f"kvfleet {name}: error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None

    return run  # type: ignore[return-value]


@app.command("demo-model")
@_one_line_errors
def demo_model(
    directory: Annotated[Path, typer.Argument(help="output directory (created if missing)")],
    preset: Annotated[str, typer.Option(help="tiny or small")] = "tiny",
    seed: int = 0,
) -> None:
    """Write a random-weight Llama checkpoint with a locally trained tokenizer."""
    from cluster.demo_model import PRESETS, write_demo_model

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    write_demo_model(directory, preset=preset, seed=seed)
    print(f"wrote the {preset} demo model to {directory}")


@app.command()
@_one_line_errors
def up(
    config: Annotated[Path | None, typer.Option(help="a cluster config (YAML)")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE for any key of the cluster config (repeatable)"),
    ] = None,
    model: Annotated[Path | None, typer.Option(help="model directory (model)")] = None,
    replicas: Annotated[int | None, typer.Option(help="replicas, initial when autoscaling")] = None,
    tp: Annotated[int | None, typer.Option(help="tensor-parallel ranks per replica")] = None,
    pp: Annotated[int | None, typer.Option(help="pipeline stages per replica")] = None,
    min_replicas: Annotated[int | None, typer.Option(help="autoscale down to this")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="autoscale up to this")] = None,
    kv_cache_mb: Annotated[int | None, typer.Option(help="KV cache per rank, MiB")] = None,
    torch_threads: Annotated[int | None, typer.Option(help="threads per replica")] = None,
    host: Annotated[str | None, typer.Option(help="the front doors' address")] = None,
    port: Annotated[int | None, typer.Option(help="the gRPC front door's port")] = None,
    http_port: Annotated[int | None, typer.Option(help="the HTTP API's port (0: none)")] = None,
    chat_template: ChatTemplate = None,
    request_timeout_s: RequestTimeout = None,
    policy: Annotated[str | None, typer.Option(help="kvfleet or round_robin")] = None,
    redis_url: Annotated[str | None, typer.Option(help="default: start one")] = None,
    app_name: Annotated[str | None, typer.Option(help="the Serve application's name")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray")] = None,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster")] = None,
    timeout_s: Annotated[float, typer.Option(help="give up if not serving by then")] = 300.0,
    run_dir: RunDir = RUN_DIR,
) -> None:
    """Start Redis, Ray, the replicas and the front doors in the background; wait until they
    serve. The config file, then --set, then the flags (each a key of the config)."""
    from cluster import up as fleet

    flags = {k: v for k, v in locals().items() if k in fleet.FLAG_KEYS}
    fleet.up(fleet.config_from(config, set_ or [], flags), run_dir, timeout_s)


@app.command()
@_one_line_errors
def down(run_dir: RunDir = RUN_DIR) -> None:
    """Stop what `kvfleet up` started."""
    from cluster import up as fleet

    fleet.down(run_dir)


@app.command()
@_one_line_errors
def status(
    output: Annotated[Literal["table", "json"], typer.Option("-o", "--output")] = "table",
    watch: Annotated[float | None, typer.Option(help="refresh every this many seconds")] = None,
    run_dir: RunDir = RUN_DIR,
) -> None:
    """The pool (replicas ready and desired, queue, KV cache, prefix hits) and each replica."""
    from cluster import fleet_status

    if watch is not None and not watch > 0:
        raise ValueError(f"--watch must be a positive number of seconds, got {watch}")
    fleet_status.run(run_dir, output, watch)


@app.command()
@_one_line_errors
def scale(
    pool: Annotated[str, typer.Argument(help="the pool: colocated")],
    replicas: Annotated[int | None, typer.Option(help="a fixed replica count")] = None,
    min_: Annotated[int | None, typer.Option("--min", help="autoscale down to this")] = None,
    max_: Annotated[int | None, typer.Option("--max", help="autoscale up to this")] = None,
    run_dir: RunDir = RUN_DIR,
) -> None:
    """Set a pool's replica count, or its autoscaling bounds, while it serves."""
    from cluster import scale as scaling

    print(f"kvfleet scale: {scaling.run(run_dir, pool, replicas, min_, max_)}")


@app.command()
@_one_line_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="the prompt text")],
    target: Target = "127.0.0.1:50051",
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Annotated[list[str] | None, typer.Option(help="a stop string (repeatable)")] = None,
    ignore_eos: bool = False,
    cache_salt: str = "",
    timeout: Annotated[float, typer.Option(help="the call's deadline, s")] = 120.0,
    tls_ca: ClientCA = None,
    tls_cert: ClientCert = None,
    tls_key: ClientKey = None,
    token: Token = None,
) -> None:
    """Stream one completion from a running front door."""
    from cluster import generate as streaming
    from router.client import Sampling

    sampling = Sampling(
        max_tokens=max_tokens, temperature=temperature, stop=stop or [], ignore_eos=ignore_eos
    )
    if top_p is not None:
        sampling["top_p"] = top_p
    if top_k is not None:
        sampling["top_k"] = top_k
    if seed is not None:
        sampling["seed"] = seed
    credentials = _client_credentials(tls_ca, tls_cert, tls_key)
    code = streaming.run(target, prompt, sampling, cache_salt, timeout, credentials, token)
    raise typer.Exit(code)


@app.command()
@_one_line_errors
def health(
    target: Target = "127.0.0.1:50051",
    tls_ca: ClientCA = None,
    tls_cert: ClientCert = None,
    tls_key: ClientKey = None,
) -> None:
    """Whether the front door serves (grpc.health.v1); exits 1 when it does not."""
    from cluster.health import check

    answer = check(target, credentials=_client_credentials(tls_ca, tls_cert, tls_key))
    print(f"kvfleet health: {target} {answer}")
    raise typer.Exit(0 if answer == "SERVING" else 1)


@app.command()
@_one_line_errors
def serve(
    model: Annotated[Path, typer.Option(help="model directory")],
    name: Annotated[str, typer.Option(help="served model name (default: the directory's)")] = "",
    host: str = "127.0.0.1",
    port: int = 50051,
    max_queued_requests: int = 1024,
    http_port: HTTPPort = 8000,
    chat_template: ChatTemplate = None,
    request_timeout_s: RequestTimeout = None,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    tls_client_ca: TLSClientCA = None,
    auth_tokens_file: AuthTokens = None,
) -> None:
    """Serve one model in this process, gRPC and HTTP, in the foreground (no Ray)."""
    from cluster import http_options, local_server

    http = http_options.make(http_port, chat_template, request_timeout_s, port)
    tls = (tls_cert, tls_key, tls_client_ca)
    doors = http_options.door_options(host, port, http, tls, auth_tokens_file)
    local_server.run(model, name, max_queued_requests, doors)


@app.command()
@_one_line_errors
def router(
    ray_address: Annotated[str, typer.Option(help="the fleet's Ray GCS address")],
    app_name: str = "kvfleet",
    host: str = "127.0.0.1",
    port: int = 50052,
    http_port: HTTPPort = 8001,
    chat_template: ChatTemplate = None,
    request_timeout_s: RequestTimeout = None,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
    tls_client_ca: TLSClientCA = None,
    auth_tokens_file: AuthTokens = None,
) -> None:
    """Run one more front door for a running fleet, in the foreground."""
    from cluster import http_options, router_process

    http = http_options.make(http_port, chat_template, request_timeout_s, port)
    tls = (tls_cert, tls_key, tls_client_ca)
    doors = http_options.door_options(host, port, http, tls, auth_tokens_file)
    router_process.run(ray_address, app_name, doors)


@app.command()
@_one_line_errors
def bench(
    target: Target = "127.0.0.1:50051",
    rate: Annotated[str, typer.Option(help="requests/s, one run each: 1,2,4")] = "1,2,4",
    arrivals: Annotated[Literal["poisson", "fixed"], typer.Option()] = "poisson",
    concurrency: Annotated[int, typer.Option(help="requests in flight at most")] = 64,
    workload: Annotated[Literal["random", "shared-prefix"], typer.Option()] = "random",
    num_prompts: Annotated[int, typer.Option(help="random: prompts per run")] = 64,
    input_len: Annotated[int, typer.Option(help="tokens of each prompt's own")] = 256,
    output_len: Annotated[int, typer.Option(help="tokens generated per request")] = 64,
    prefix_len: Annotated[int, typer.Option(help="shared-prefix: tokens shared")] = 512,
    groups: Annotated[int, typer.Option(help="shared-prefix: prefixes")] = 4,
    prompts_per_group: Annotated[int, typer.Option(help="shared-prefix: prompts each")] = 16,
    slo_ttft_ms: Annotated[float | None, typer.Option(help="goodput: TTFT at most")] = None,
    slo_itl_ms: Annotated[float | None, typer.Option(help="goodput: mean ITL at most")] = None,
    slo_e2e_ms: Annotated[float | None, typer.Option(help="goodput: latency at most")] = None,
    usd_per_gpu_hour: Annotated[float | None, typer.Option(help="for $/M tokens")] = None,
    gpus: Annotated[float, typer.Option(help="GPUs the fleet holds, for the cost")] = 1.0,
    output_json: Annotated[Path | None, typer.Option(help="write the figures here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write latency vs load here (PNG)")] = None,
    seed: int = 0,
    token: Token = None,
) -> None:
    """Load a running front door at each rate; latency percentiles, throughput, goodput, cost."""
    from cluster import load_bench
    from router.bench_summary import LatencyTargets
    from router.load_test import Workload

    try:
        rates = [float(r) for r in rate.split(",")]
    except ValueError:
        raise ValueError(f"--rate must be numbers separated by commas, got {rate!r}") from None
    if workload == "random":
        shape = Workload(input_len, output_len, 0, 1, num_prompts)
    else:
        shape = Workload(input_len, output_len, prefix_len, groups, prompts_per_group)
    targets = LatencyTargets(*(None if ms is None else ms / 1000 for ms in
                               (slo_ttft_ms, slo_itl_ms, slo_e2e_ms)))  # fmt: skip
    plan = load_bench.LoadPlan(
        target, rates, arrivals == "poisson", concurrency, shape, targets, usd_per_gpu_hour, gpus,
        seed, token,
    )  # fmt: skip
    load_bench.run(plan, output_json, plot)


@app.command()
@_one_line_errors
def render(
    config: Annotated[Path, typer.Option(help="a cluster config (YAML)")],
    values: Annotated[
        list[Path] | None, typer.Option("-f", "--values", help="more chart values (repeatable)")
    ] = None,
    release: str = "kvfleet",
    namespace: Annotated[str, typer.Option("-n", "--namespace")] = "default",
    kube_version: str = "1.33.0",
) -> None:
    """Render the Helm chart offline from a cluster config, validate it, print the manifests
    (and what they create, on stderr)."""
    from cluster import render as chart

    manifests, objects = chart.render(config, values or [], release, namespace, kube_version)
    print(manifests, end="")
    print(f"kvfleet render: {chart.summary(objects)}", file=sys.stderr)


@app.command("config-schema")
def config_schema() -> None:
    """Print the cluster config's JSON Schema."""
    import json

    from cluster.cluster_config import json_schema

    print(json.dumps(json_schema(), indent=2))


def _client_credentials(
    ca: Path | None, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials | None:
    """None: plain text."""
    import grpc

    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        ca.read_bytes() if ca else None,
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(*RAY_AUTH_MODE)
    try:
        app(args=argv, prog_name="kvfleet")
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
