"""`kvfleet bench`: open-loop load at one or more request rates against a running front door,
with a progress bar; the figures as a table, as JSON, and a plot of latency against load."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cluster.run_state import FleetError
from router.bench_summary import LatencyTargets, Summary, summarize
from router.client import GenerationClient
from router.load_test import Workload, run_load


@dataclass(frozen=True)
class LoadPlan:
    target: str
    rates: list[float]  # requests per second, one run each
    poisson: bool
    concurrency: int
    workload: Workload
    targets: LatencyTargets
    usd_per_gpu_hour: float | None
    gpus: float
    seed: int = 0
    token: str | None = None  # a bearer token, when the front door requires one

    def __post_init__(self) -> None:
        if not self.rates or any(not r > 0 for r in self.rates):
            raise ValueError(f"--rate must be positive numbers, got {self.rates}")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {self.concurrency}")
        w = self.workload
        if min(w.input_len, w.output_len, w.groups, w.prompts_per_group) < 1 or w.prefix_len < 0:
            raise ValueError(
                "--input-len, --output-len, --groups and --prompts-per-group must be at least 1, "
                "--prefix-len at least 0"
            )
        if self.usd_per_gpu_hour is not None and not self.usd_per_gpu_hour >= 0:
            raise ValueError(f"--usd-per-gpu-hour must be >= 0, got {self.usd_per_gpu_hour}")
        if not self.gpus > 0:
            raise ValueError(f"--gpus must be positive, got {self.gpus}")


def run(plan: LoadPlan, json_path: Path | None, plot_path: Path | None) -> list[Summary]:
    """Each rate in turn, on the same prompts; prints a table and writes the files asked for."""
    try:
        with GenerationClient(plan.target, token=plan.token) as client:
            models = client.list_models()
    except grpc.RpcError as exc:
        raise FleetError(f"{plan.target}: {exc.code().name}: {exc.details()}") from None
    if not models:
        raise FleetError(f"{plan.target} serves no model")
    prompts = plan.workload.prompts(models[0].vocab_size, plan.seed)
    summaries = []
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        for rate in plan.rates:
            task = progress.add_task(f"{rate:g} requests/s", total=len(prompts))

            def advance(done: int, task: TaskID = task) -> None:
                progress.update(task, completed=done)

            timings, duration = run_load(
                plan.target, prompts, plan.workload.output_len, rate, plan.concurrency,
                plan.poisson, advance, plan.seed, plan.token,
            )  # fmt: skip
            summaries.append(
                summarize(timings, duration, rate, plan.targets, plan.usd_per_gpu_hour, plan.gpus)
            )
    # Piped (to a file, a test), rich would wrap the table at 80 columns.
    costed = plan.usd_per_gpu_hour is not None
    Console(width=None if sys.stdout.isatty() else 200).print(table(summaries, costed))
    if json_path is not None:
        runs = [dataclasses.asdict(s) for s in summaries]
        settings = dataclasses.asdict(plan) | {"token": "(set)" if plan.token else None}
        figures = _json_safe({"plan": settings, "runs": runs})
        json_path.write_text(json.dumps(figures, indent=2, allow_nan=False))
    if plot_path is not None:
        plot(summaries, plot_path)
    return summaries


def table(summaries: list[Summary], costed: bool) -> Table:
    headers = ["rate/s", "done/s", "out tok/s", "TTFT p50/p90/p99 ms", "ITL p50/p90/p99 ms",
               "E2E p50/p90/p99 ms", "goodput/s", "failed"]  # fmt: skip
    if costed:
        headers += ["$/M in", "$/M out"]
    result = Table(*headers)
    for s in summaries:
        row = [f"{s.rate:g}", f"{s.requests_per_s:.2f}", f"{s.output_tokens_per_s:.0f}",
               _triple(s.ttft_ms), _triple(s.itl_ms), _triple(s.e2e_ms),
               f"{s.goodput_per_s:.2f}", str(s.failed)]  # fmt: skip
        if costed:  # None: no token of that kind came back
            row += [_usd(s.usd_per_m_input_tokens), _usd(s.usd_per_m_output_tokens)]
        result.add_row(*row)
    return result


def plot(summaries: list[Summary], path: Path) -> None:
    """Latency percentiles against the achieved request rate."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    load = [s.requests_per_s for s in summaries]
    figure, (ttft, e2e) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, name, key in (
        (ttft, "time to first token", "ttft_ms"),
        (e2e, "end to end", "e2e_ms"),
    ):
        for p in ("p50", "p90", "p99"):
            axes.plot(load, [getattr(s, key)[p] for s in summaries], marker="o", label=p)
        axes.set(xlabel="completed requests/s", ylabel="ms", title=name)
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _triple(ms: dict[str, float]) -> str:
    return "/".join(f"{ms[p]:.0f}" for p in ("p50", "p90", "p99"))


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _json_safe(value: object) -> object:
    """NaN (a percentile of nothing) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
