"""The cluster config: one schema, its defaults taken from the engine's and router's own, and
errors that name the key and what it allows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cluster import cluster_config
from cluster.cluster_config import ConfigError
from router.policy import RouterConfig
from worker.config import EngineConfig


def test_an_empty_pool_serves_with_the_engines_own_defaults() -> None:
    config = cluster_config.load({"model": "/models/m"})
    engine = config.engine_config()
    defaults = EngineConfig(model=Path("/models/m"))
    assert engine == defaults
    assert config.router.router_config(engine.block_size) == RouterConfig(block_size=16)


def test_pool_settings_reach_the_engine_config() -> None:
    pool = {
        "parallelism": {"tensor": 2, "pipeline": 2, "layer_split": [3, 5], "placement": "spread"},
        "engine": {
            "dtype": "float32",
            "kv_cache_mb": 64,
            "max_num_seqs": 8,
            "block_size": 32,
            "quantization": "int8",
            "kv_cache_dtype": "fp8",
            "speculative_method": "prompt_lookup",
            "num_speculative_tokens": 3,
            "prompt_lookup_max": 5,
        },
    }
    engine = cluster_config.load({"model": "/m", "pools": {"colocated": pool}}).engine_config()
    expected = EngineConfig(
        model=Path("/m"),
        dtype="float32",
        kv_cache_bytes=64 << 20,
        max_num_seqs=8,
        block_size=32,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        layer_split=(3, 5),
        placement="spread",
        quantization="int8",
        kv_cache_dtype="fp8",
        speculative_method="prompt_lookup",
        num_speculative_tokens=3,
        prompt_lookup_max=5,
    )
    assert engine == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "model: Field required"),
        ({"model": "/m", "modle": 1}, "modle: unknown key (allowed here: app_name, disagg"),
        ({"model": "/m", "pools": {"prefill": {}}}, "pools: prefill is set without the other"),
        (
            {"model": "/m", "pools": {"colocated": {}, "prefill": {}, "decode": {}}},
            "pools: colocated cannot be set with prefill and decode",
        ),
        (
            {"model": "/m", "pools": {"prefill": {}, "decode": {"engine": {"block_size": 32}}}},
            "pools: prefill.engine.block_size (16) and decode.engine.block_size (32) differ",
        ),
        (
            {"model": "/m", "pools": {"prefill": {"parallelism": {"tensor": 2}}, "decode": {}}},
            "pools: prefill.parallelism.tensor (2) and decode.parallelism.tensor (1) differ",
        ),
        (
            {"model": "/m", "disaggregation": {"kv_transport": "tcp"}},
            "disaggregation.kv_transport: Input should be 'auto', 'nixl' or 'packed'",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"engine": {"max_num_seq": 4}}}},
            "pools.colocated.engine.max_num_seq: unknown key (allowed here: async_scheduling,",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"engine": {"dtype": "fp8"}}}},
            "pools.colocated.engine.dtype: Input should be 'auto', 'float32', 'bfloat16' or",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"engine": {"block_size": 12}}}},
            "pools.colocated: engine: block_size must be a power of two, got 12",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"engine": {"kv_cache_dtype": "int4"}}}},
            "pools.colocated.engine.kv_cache_dtype: Input should be 'auto', 'int8' or 'fp8'",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"engine": {"quantization": "int4"}}}},
            "pools.colocated.engine.quantization: Input should be 'int8' or 'fp8'",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"engine": {"draft_model": "/d"}}}},
            "pools.colocated: engine: draft_model is the model of speculative_method "
            "'draft_model', and only of it",
        ),
        (
            {
                "model": "/m",
                "pools": {"prefill": {}, "decode": {"engine": {"kv_cache_dtype": "fp8"}}},
            },
            "pools: prefill.engine.kv_cache_dtype (auto) and decode.engine.kv_cache_dtype (fp8)",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"parallelism": {"placement": "x"}}}},
            "pools.colocated.parallelism.placement: Input should be 'pack' or 'spread'",
        ),
        ({"model": "/m", "router": {"grpc_port": 0}}, "router.grpc_port: Input should be"),
        (
            {"model": "/m", "pools": {"colocated": {"metrics_port": 70000}}},
            "pools.colocated.metrics_port: Input should be less than or equal to 65535",
        ),
        ({"model": "/m", "app_name": "a b"}, "app_name: String should match pattern"),
        (
            {"model": "/m", "router": {"tls": {"cert_file": "/no/cert.pem", "key_file": "/k"}}},
            "router.tls: tls cert_file /no/cert.pem: no such file",
        ),
        ({"model": "/m", "router": {"tls": {"cert_file": "/c"}}}, "router.tls.key_file: Field"),
        (
            {"model": "/m", "router": {"auth_tokens_file": "/no/tokens"}},
            "router.auth_tokens_file: auth tokens file /no/tokens: No such file",
        ),
        ({"model": "/m", "redis": {"url": "nowhere"}}, "redis.url: Redis URL must specify"),
        (
            {"model": "/m", "pools": {"colocated": {"engine": {"step_timeout_s": "inf"}}}},
            "pools.colocated.engine.step_timeout_s: Input should be a finite number",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"autoscaling": {"max_replicas": 1}}}},
            "pools.colocated: replicas (2) must be within autoscaling.min_replicas..",
        ),
        (
            {
                "model": "/m",
                "pools": {"colocated": {"autoscaling": {"target_running_per_replica": 200}}},
            },
            "target_running_per_replica (200) must be <= engine.max_num_seqs (128)",
        ),
        (
            {"model": "/m", "pools": {"colocated": {"autoscaling": {"look_back_period_s": 1}}}},
            "look_back_period_s (1.0) must be greater than metrics_interval_s (2.0)",
        ),
    ],
)
def test_a_bad_config_names_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        cluster_config.load(data)
    assert message in str(error.value)


def test_every_problem_is_reported_at_once() -> None:
    data = {"model": "/m", "router": {"policy": "fast", "http_port": -1}}
    with pytest.raises(ConfigError) as error:
        cluster_config.load(data)
    assert "router.policy: Input should be 'kvfleet' or 'round_robin'" in str(error.value)
    assert "router.http_port: Input should be greater than or equal to 0" in str(error.value)


def test_a_yaml_file_with_overrides_on_top(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "model: /m\npools:\n  colocated:\n    replicas: 3\n    engine: {max_num_seqs: 32}\n"
    )
    overrides = cluster_config.parse_set(
        ["pools.colocated.replicas=4", "router.http_port=0", "redis.url=null"]
    )
    config = cluster_config.load_file(path, overrides)
    assert config.pool.replicas == 4 and config.pool.engine.max_num_seqs == 32
    assert config.router.http_port == 0 and config.redis.url is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: [unclosed", "not valid YAML"),
        ("- a list", "the top level must be a mapping, got list"),
        ("model: /m\npools: {colocated: {replicas: two}}", "pools.colocated.replicas: Input"),
    ],
)
def test_a_bad_file_says_which_file_and_why(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        cluster_config.load_file(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_set_into_a_value_that_is_not_a_section_says_so() -> None:
    with pytest.raises(ConfigError, match=r"pools\.colocated\.replicas\.x: pools\.colocated"):
        cluster_config.merge(
            {"pools": {"colocated": {"replicas": 2}}}, {"pools.colocated.replicas.x": 1}
        )


def test_merge_leaves_the_original_alone() -> None:
    data = {"pools": {"colocated": {"replicas": 2}}}
    merged = cluster_config.merge(data, {"pools.colocated.replicas": 5})
    assert data == {"pools": {"colocated": {"replicas": 2}}}
    assert merged == {"pools": {"colocated": {"replicas": 5}}}


def test_the_json_schema_covers_every_key_with_its_default() -> None:
    schema = cluster_config.json_schema()
    assert schema["required"] == ["model"]
    assert schema["additionalProperties"] is False
    engine = schema["$defs"]["EngineSettings"]["properties"]
    assert engine["max_num_seqs"]["default"] == EngineConfig.max_num_seqs
    assert set(schema["$defs"]["AutoscalingSettings"]["properties"]) >= {
        "min_replicas",
        "max_replicas",
        "target_waiting_per_replica",
        "ttft_p90_target_s",
        "upscale_delay_s",
        "downscale_delay_s",
    }
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    assert set(engine) - {"kv_cache_mb", "torch_threads"} <= fields


def test_disaggregated_pools_get_engines_with_the_transfer_settings() -> None:
    config = cluster_config.load(
        {
            "model": "/m",
            "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 3}},
            "disaggregation": {"kv_transport": "packed", "transfer_timeout_s": 2.5},
        }
    )
    assert config.disaggregated
    assert {name: pool.replicas for name, pool in config.pools.active().items()} == {
        "prefill": 1,
        "decode": 3,
    }
    for pool in ("prefill", "decode"):
        engine = config.engine_config(pool)
        assert (engine.kv_transport, engine.kv_transfer_timeout_s) == ("packed", 2.5)
    assert config.engine_config("colocated").kv_transport is None


def test_a_disaggregated_config_dumps_to_what_loads_again() -> None:
    config = cluster_config.load({"model": "/m", "pools": {"prefill": {}, "decode": {}}})
    assert cluster_config.load(json.loads(config.model_dump_json())) == config
    assert "colocated" not in config.model_dump()["pools"]
