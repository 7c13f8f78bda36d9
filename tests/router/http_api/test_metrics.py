"""/metrics speaks vLLM's metric names, and their values move with what both front doors serve."""

from __future__ import annotations

import openai

from router.client import GenerationClient
from tests.prometheus import scrape
from tests.router.http_api.conftest import MODEL_NAME
from tests.router.serving import RunningServer

ENGINE_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:cache_config_info",
)


def _scrape(server: RunningServer) -> dict[str, float]:
    return scrape(f"{server.base_url}/metrics")


def _get(samples: dict[str, float], name: str, **labels: str) -> float:
    key = ",".join(f"{k}={v}" for k, v in sorted({"model_name": MODEL_NAME, **labels}.items()))
    return samples.get(f"{name}{{{key}}}", 0.0)


def test_both_doors_move_the_request_metrics(
    server: RunningServer, openai_client: openai.OpenAI, grpc_client: GenerationClient
) -> None:
    before = _scrape(server)
    completion = openai_client.completions.create(
        model=MODEL_NAME, prompt="metrics over HTTP", max_tokens=7, temperature=0.0
    )
    outputs = list(grpc_client.generate("metrics over gRPC", max_tokens=5, temperature=0.0))
    after = _scrape(server)

    def moved(name: str, **labels: str) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert completion.usage is not None
    prompt_tokens = completion.usage.prompt_tokens + outputs[-1].finished.usage.prompt_tokens
    assert moved("vllm:prompt_tokens_total") == prompt_tokens
    assert moved("vllm:generation_tokens_total") == 7 + 5
    assert moved("vllm:request_success_total", finished_reason="length") == 2
    assert moved("vllm:time_to_first_token_seconds_count") == 2
    assert moved("vllm:e2e_request_latency_seconds_count") == 2
    assert moved("vllm:inter_token_latency_seconds_count") == (7 - 1) + (5 - 1)
    assert moved("vllm:e2e_request_latency_seconds_sum") > 0


def test_engine_gauges_come_from_its_load_report(
    server: RunningServer, openai_client: openai.OpenAI
) -> None:
    openai_client.completions.create(
        model=MODEL_NAME, prompt="fill the prefix cache " * 8, max_tokens=2, temperature=0.0
    )
    samples = _scrape(server)
    names = {key.split("{")[0] for key in samples}
    for name in ENGINE_METRICS:
        assert name in names or f"{name}_total" in names, name
    report = server.engine.load_report()
    assert _get(samples, "vllm:prefix_cache_queries_total", engine="0") == report.prefix_queries
    assert _get(samples, "vllm:num_requests_running", engine="0") == report.num_running
    blocks = str(server.engine.num_blocks)
    assert _get(samples, "vllm:cache_config_info", engine="0", num_gpu_blocks=blocks) == 1
