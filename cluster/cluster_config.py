"""The cluster config: one typed schema (pydantic) for everything `kvfleet up` deploys, read from
YAML and command-line flags by the same code, and the single source of every default. The engine
and router sections take their defaults from the dataclasses they become (EngineConfig,
RouterConfig), so a default lives in one place. ``json_schema()`` is what the Helm chart's
values.schema.json reuses.

    model: /models/llama             # required: a model directory
    pools:
      colocated:                     # one pool that prefills and decodes
        replicas: 2                  # fixed count, or the initial one when autoscaling
        parallelism: {tensor: 1, pipeline: 1}
        engine: {dtype: auto, kv_cache_mb: 256}
        autoscaling: {min_replicas: 1, max_replicas: 4}
    router: {policy: kvfleet, grpc_port: 50051, http_port: 8000}
    redis: {url: null}               # null: `kvfleet up` starts a redis-server on loopback

Disaggregated serving replaces the colocated pool with two, and says how prompts move:

    pools:
      prefill: {replicas: 1}
      decode: {replicas: 2}
    disaggregation: {kv_transport: auto, local_prefill_tokens: 256}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from redis.connection import parse_url

from router.auth import TokenAuth
from router.policy import RouterConfig
from router.tls import TLSConfig
from worker.config import EngineConfig
from worker.errors import KVFleetError


class ConfigError(KVFleetError):
    """A cluster config that does not validate; the message names each bad key."""


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default: the one place it is written."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].default


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Parallelism(_Section):
    """How one replica shards the model: tensor x pipeline ranks."""

    tensor: PositiveInt = _default(EngineConfig, "tensor_parallel_size")
    pipeline: PositiveInt = _default(EngineConfig, "pipeline_parallel_size")
    layer_split: tuple[PositiveInt, ...] | None = Field(
        default=None, description="layers per pipeline stage (default: an even split)"
    )
    placement: Literal["pack", "spread"] = _default(EngineConfig, "placement")


class EngineSettings(_Section):
    """Each replica's engine (worker/config.py EngineConfig says what each key does)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _default(EngineConfig, "dtype")
    load_format: Literal["safetensors", "dummy"] = _default(EngineConfig, "load_format")
    block_size: PositiveInt = _default(EngineConfig, "block_size")
    kv_cache_mb: PositiveInt = Field(
        default=_default(EngineConfig, "kv_cache_bytes") >> 20,
        description="KV cache per rank, in MiB (ignored when num_kv_blocks is set)",
    )
    num_kv_blocks: PositiveInt | None = _default(EngineConfig, "num_kv_blocks")
    max_num_seqs: PositiveInt = _default(EngineConfig, "max_num_seqs")
    max_num_batched_tokens: PositiveInt = _default(EngineConfig, "max_num_batched_tokens")
    max_model_len: PositiveInt | None = _default(EngineConfig, "max_model_len")
    enable_prefix_caching: bool = _default(EngineConfig, "enable_prefix_caching")
    max_n: PositiveInt = _default(EngineConfig, "max_n")
    max_beam_width: PositiveInt = _default(EngineConfig, "max_beam_width")
    seed: int = _default(EngineConfig, "seed")
    step_timeout_s: PositiveFloat = _default(EngineConfig, "step_timeout_s")
    max_queue_wait_s: PositiveFloat | None = _default(EngineConfig, "max_queue_wait_s")
    enforce_eager: bool = _default(EngineConfig, "enforce_eager")
    torch_compile: bool | None = _default(EngineConfig, "torch_compile")
    async_scheduling: bool | None = _default(EngineConfig, "async_scheduling")
    quantization: Literal["int8", "fp8"] | None = _default(EngineConfig, "quantization")
    kv_cache_dtype: Literal["auto", "int8", "fp8"] = _default(EngineConfig, "kv_cache_dtype")
    speculative_method: Literal["prompt_lookup", "draft_model"] | None = _default(
        EngineConfig, "speculative_method"
    )
    num_speculative_tokens: PositiveInt = _default(EngineConfig, "num_speculative_tokens")
    prompt_lookup_min: PositiveInt = _default(EngineConfig, "prompt_lookup_min")
    prompt_lookup_max: PositiveInt = _default(EngineConfig, "prompt_lookup_max")
    draft_model: Path | None = Field(
        default=_default(EngineConfig, "draft_model"),
        description="the draft model's directory on every node, as the model's "
        "(speculative_method draft_model)",
    )
    torch_threads: PositiveInt | None = Field(
        default=1,
        description="intra-op threads per replica (null: torch's default, all cores; "
        "replicas sharing a node's cores would oversubscribe them)",
    )


class AutoscalingSettings(_Section):
    """Queue-depth autoscaling of one pool (cluster/autoscaling_policy.py). A pool scales up when
    its replicas' waiting requests, or waiting prefill tokens, exceed their per-replica targets,
    or (when ``ttft_p90_target_s`` is set) when the p90 time to first token does; it scales
    down only while all of them are at most half their targets and the requests in flight fit
    in fewer replicas at ``target_running_per_replica`` each."""

    min_replicas: PositiveInt = 1
    max_replicas: PositiveInt = 4
    target_waiting_per_replica: PositiveFloat = 2.0
    target_prefill_tokens_per_replica: PositiveInt = 4096
    target_running_per_replica: PositiveFloat = 32.0
    ttft_p90_target_s: PositiveFloat | None = None
    ttft_window_s: PositiveFloat = Field(
        default=30.0, description="the window each replica measures its p90 TTFT over"
    )
    upscale_delay_s: NonNegativeFloat = 10.0
    downscale_delay_s: NonNegativeFloat = 300.0
    look_back_period_s: PositiveFloat = Field(
        default=10.0, description="Serve averages each replica's reports over this window"
    )
    metrics_interval_s: PositiveFloat = Field(
        default=2.0, description="how often each replica reports its queue to Serve"
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> AutoscalingSettings:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s}) must be greater than "
                f"metrics_interval_s ({self.metrics_interval_s})"
            )
        return self


class Pool(_Section):
    """A set of identical replicas."""

    replicas: PositiveInt = Field(
        default=2, description="the replica count, or the initial one when autoscaling"
    )
    parallelism: Parallelism = Parallelism()
    engine: EngineSettings = EngineSettings()
    autoscaling: AutoscalingSettings | None = None
    accelerator: Literal["auto", "cpu", "gpu"] = Field(
        default=_default(EngineConfig, "accelerator"),
        description="gpu: each rank takes one GPU from Ray (a single-rank replica's own actor "
        "too); auto: a GPU where the replica sees one",
    )
    ray_resources: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="custom Ray resources each replica and each of its ranks asks for: the "
        "Helm chart gives each pool's pods one, so replicas land on their own pool's pods",
    )
    cpus_per_replica: NonNegativeFloat = Field(
        default=0.0,
        description="CPUs Ray reserves per replica (0: replicas share the cores; "
        "engine.torch_threads bounds each)",
    )
    max_ongoing_requests: PositiveInt = Field(
        default=256, description="requests Serve sends one replica at a time"
    )
    metrics_port: int | None = Field(
        default=0,
        ge=0,
        le=65535,
        description="each replica serves its engine's metrics (vLLM's names) at /metrics on "
        "this port (0: any free one, shown by `kvfleet status`; null: none). A fixed port "
        "needs one replica per node (a Kubernetes pod per replica)",
    )
    metrics_host: str = Field(
        default="127.0.0.1", min_length=1, description="the replicas' metrics address"
    )
    drain_grace_s: PositiveFloat = Field(
        default=60.0,
        description="a replica being stopped takes no new requests and gets this long to "
        "finish those in flight",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Pool:
        split = self.parallelism.layer_split
        if split is not None and len(split) != self.parallelism.pipeline:
            raise ValueError(
                f"parallelism.layer_split has {len(split)} stages, parallelism.pipeline is "
                f"{self.parallelism.pipeline}"
            )
        scaling = self.autoscaling
        if scaling is not None:
            if not scaling.min_replicas <= self.replicas <= scaling.max_replicas:
                raise ValueError(
                    f"replicas ({self.replicas}) must be within autoscaling.min_replicas.."
                    f"autoscaling.max_replicas ({scaling.min_replicas}..{scaling.max_replicas})"
                )
            if scaling.target_running_per_replica > self.engine.max_num_seqs:
                raise ValueError(
                    "autoscaling.target_running_per_replica "
                    f"({scaling.target_running_per_replica:g}) must be <= engine.max_num_seqs "
                    f"({self.engine.max_num_seqs}): replicas would queue at that load"
                )
        try:  # what only the engine's own checks know (block_size a power of two, say)
            self.engine_config(Path("."))
        except ValueError as exc:
            raise ValueError(f"engine: {exc}") from None
        return self

    def describe_scale(self) -> str:
        """The pool's scale, as the commands print it."""
        scaling = self.autoscaling
        if scaling is None:
            return f"{self.replicas} replicas"
        return f"autoscaling {scaling.min_replicas}..{scaling.max_replicas} replicas"

    def engine_config(self, model: Path, **transfer: Any) -> EngineConfig:
        """``transfer``: the KV-transfer settings of a disaggregated pool's engines."""
        engine = self.engine.model_dump(exclude={"kv_cache_mb", "torch_threads"})
        return EngineConfig(
            model=model,
            kv_cache_bytes=self.engine.kv_cache_mb << 20,
            tensor_parallel_size=self.parallelism.tensor,
            pipeline_parallel_size=self.parallelism.pipeline,
            layer_split=self.parallelism.layer_split,
            placement=self.parallelism.placement,
            accelerator=self.accelerator,
            ray_resources=tuple(sorted(self.ray_resources.items())),
            **engine,
            **transfer,
        )


# Engine settings that decide the bytes of a KV block: a prefill and a decode pool must agree.
_LAYOUT_KEYS = ("dtype", "block_size", "load_format", "seed", "quantization", "kv_cache_dtype")


class Pools(_Section):
    """Either one colocated pool (the default), or a prefill and a decode pool."""

    colocated: Pool = Pool()
    prefill: Pool | None = None
    decode: Pool | None = None

    @model_validator(mode="after")
    def _mode(self) -> Pools:
        if (self.prefill is None) != (self.decode is None):
            given = "prefill" if self.prefill is not None else "decode"
            raise ValueError(f"{given} is set without the other: set both or neither")
        if self.prefill is None or self.decode is None:
            return self
        if "colocated" in self.model_fields_set:
            raise ValueError("colocated cannot be set with prefill and decode")
        # Rank i of a decode replica reads rank i of a prefill replica: same shards on both.
        for key in ("tensor", "pipeline", "layer_split"):
            ours = getattr(self.prefill.parallelism, key)
            theirs = getattr(self.decode.parallelism, key)
            if ours != theirs:
                raise ValueError(
                    f"prefill.parallelism.{key} ({ours}) and decode.parallelism.{key} "
                    f"({theirs}) differ: resharding KV between pools is not built"
                )
        for key in _LAYOUT_KEYS:
            ours, theirs = getattr(self.prefill.engine, key), getattr(self.decode.engine, key)
            if ours != theirs:
                raise ValueError(
                    f"prefill.engine.{key} ({ours}) and decode.engine.{key} "
                    f"({theirs}) differ: KV blocks would not be exchangeable"
                )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without the (unused) colocated pool when prefill and decode replace it, so that a
        dumped config loads again."""
        data: dict[str, Any] = handler(self)
        if self.prefill is not None and self.decode is not None:
            data.pop("colocated", None)
        return data

    def active(self) -> dict[str, Pool]:
        """The pools that run, by name."""
        if self.prefill is not None and self.decode is not None:
            return {"prefill": self.prefill, "decode": self.decode}
        return {"colocated": self.colocated}


class DisaggregationSettings(_Section):
    """How a disaggregated fleet moves a prompt from its prefill pool to its decode pool."""

    kv_transport: Literal["auto", "nixl", "packed"] = Field(
        default="auto", description="auto: NIXL where it is installed, else packed"
    )
    kv_lease_s: PositiveFloat = Field(
        default=30.0,
        description="how long a prefill replica holds a prompt's blocks for the decode side "
        "when nobody releases them",
    )
    transfer_timeout_s: PositiveFloat = Field(
        default=_default(EngineConfig, "kv_transfer_timeout_s"),
        description="a pull not done by then is abandoned: the decode replica prefills",
    )
    local_prefill_tokens: NonNegativeInt = Field(
        default=256,
        description="a prompt with at most this many tokens not cached on the decode pool "
        "is prefilled there, not sent to the prefill pool",
    )


class TLSSettings(_Section):
    """TLS on both front doors; with ``client_ca_file``, mutual TLS."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _files(self) -> TLSSettings:
        self.tls_config()  # ValueError names a missing file
        return self

    def tls_config(self) -> TLSConfig:
        return TLSConfig(self.cert_file, self.key_file, self.client_ca_file)


class RouterSettings(_Section):
    """The front doors (gRPC and the OpenAI HTTP API) and the routing policy."""

    policy: Literal["kvfleet", "round_robin"] = "kvfleet"
    host: str = Field(default="127.0.0.1", min_length=1)
    grpc_port: int = Field(default=50051, ge=1, le=65535)
    http_port: int = Field(default=8000, ge=0, le=65535, description="0: no HTTP front door")
    chat_template: Path | None = None
    request_timeout_s: PositiveFloat | None = None
    max_queued_requests: PositiveInt = 1024
    stats_period_s: PositiveFloat = Field(
        default=0.2, description="how often each replica reports its load to the routers"
    )
    max_index_mb: PositiveInt = _default(RouterConfig, "max_index_bytes") >> 20
    tls: TLSSettings | None = None
    auth_tokens_file: Path | None = Field(
        default=None,
        description="bearer tokens, one per line: set, every call but health needs one",
    )

    @model_validator(mode="after")
    def _ports(self) -> RouterSettings:
        if self.http_port == self.grpc_port:
            raise ValueError(f"http_port and grpc_port are both {self.grpc_port}")
        return self

    @field_validator("auth_tokens_file")
    @classmethod
    def _tokens_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            TokenAuth.from_file(path)  # ValueError says what is wrong
        return path

    @field_validator("chat_template")
    @classmethod
    def _template_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
        return path

    def router_config(self, block_size: int) -> RouterConfig:
        return RouterConfig(block_size=block_size, max_index_bytes=self.max_index_mb << 20)


class RedisSettings(_Section):
    url: str | None = Field(
        default=None, description="null: `kvfleet up` starts a redis-server on loopback"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None:
            parse_url(url)  # its ValueError says what is wrong
        return url


class RaySettings(_Section):
    address: str | None = Field(default=None, description="null: start a local Ray")
    num_cpus: PositiveInt | None = Field(default=None, description="for a local Ray")


class ClusterConfig(_Section):
    """Everything `kvfleet up` deploys."""

    model: Path
    app_name: str = Field(default="kvfleet", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    pools: Pools = Pools()
    disaggregation: DisaggregationSettings = DisaggregationSettings()
    router: RouterSettings = RouterSettings()
    redis: RedisSettings = RedisSettings()
    ray: RaySettings = RaySettings()

    @property
    def disaggregated(self) -> bool:
        return self.pools.prefill is not None

    @property
    def pool(self) -> Pool:
        """The colocated pool."""
        return self.pools.colocated

    def engine_config(self, pool: str = "colocated") -> EngineConfig:
        """The engines of pool ``pool`` (a name of ``pools.active()``)."""
        if pool == "colocated":
            return self.pool.engine_config(self.model)
        transfer = self.disaggregation
        return self.pools.active()[pool].engine_config(
            self.model,
            kv_transport=transfer.kv_transport,
            kv_transfer_timeout_s=transfer.transfer_timeout_s,
        )


def load(data: dict[str, Any]) -> ClusterConfig:
    """Validate a config; ConfigError names every bad key and what it allows."""
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def load_file(path: Path, overrides: dict[str, Any] | None = None) -> ClusterConfig:
    """A YAML file, with ``overrides`` (dotted keys, as ``--set`` gives them) on top."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return load(merge(data, overrides or {}))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def merge(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each dotted key of ``overrides`` set (a copy; sections made as needed)."""
    merged = _copy(data)
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for i, key in enumerate(parents):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"{dotted}: {where} is {child!r}, not a section")
            node = child
        node[leaf] = value
    return merged


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--set``), each value read as YAML (``3``, ``true``, ``null``)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(text) if text else ""
    return overrides


def json_schema() -> dict[str, Any]:
    """The cluster config's JSON Schema."""
    return ClusterConfig.model_json_schema()


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_fields_at(error["loc"][:-1])))
            problems.append(f"{key}: unknown key (allowed here: {allowed})")
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {message}")
    return "; ".join(problems)


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at ``loc`` allows."""
    model: type[BaseModel] = ClusterConfig
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
        model = cast(type[BaseModel], inner[0])
    return list(model.model_fields)
