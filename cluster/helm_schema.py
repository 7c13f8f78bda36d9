"""The Helm chart's values.schema.json: its `cluster` part is the cluster config's own JSON Schema
(cluster/cluster_config.py), so a key is described once; the rest is the chart's Kubernetes
settings. `python -m cluster.helm_schema` rewrites the file; a test checks it is current."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cluster.cluster_config import json_schema

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "kvfleet"
SCHEMA_FILE = CHART / "values.schema.json"


def _object(properties: dict[str, Any], required: tuple[str, ...] | None = None) -> dict[str, Any]:
    """An object of exactly these properties, all required unless ``required`` says which:
    values.yaml sets every one, so only a key set to null (which Helm deletes) is missing,
    and the templates read them all."""
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    schema["required"] = list(properties if required is None else required)
    return schema


_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_MAP = {"type": "object"}  # Kubernetes fields given as they are (nodeSelector, affinity...)
_OBJECTS = {"type": "array", "items": {"type": "object"}}  # Kubernetes objects, given as-is
_QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[mun])?$"}
_POSITIVE = {"type": "integer", "minimum": 1}

_PLACEMENT = {"nodeSelector": _MAP, "tolerations": _OBJECTS, "affinity": _MAP}

_POOL = _object(
    {
        "gpuResource": {**_STR, "minLength": 1},
        "cpusPerGpu": _POSITIVE,
        "memoryPerGpu": {"type": "string", "pattern": r"^[1-9][0-9]*Gi$"},
        **_PLACEMENT,
    },
    required=("gpuResource", "cpusPerGpu", "memoryPerGpu"),
)


def values_schema() -> dict[str, Any]:
    cluster = json_schema()
    defs = cluster.pop("$defs")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kvfleet Helm values",
        **_object(
            {
                "image": _object(
                    {
                        "repository": {**_STR, "minLength": 1},
                        "tag": _STR,
                        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                        "pullSecrets": {"type": "array", "items": _STR},
                    }
                ),
                "cluster": cluster,
                "ray": _object(
                    {
                        "mode": {"enum": ["kuberay", "standalone"]},
                        "upgradeStrategy": {"enum": ["NewCluster", "None"]},
                        "gcsFaultTolerance": _BOOL,
                        "head": _object({"resources": _MAP, **_PLACEMENT}),
                    }
                ),
                "pools": _object({"colocated": _POOL, "prefill": _POOL, "decode": _POOL}),
                "router": _object(
                    {
                        "replicas": _POSITIVE,
                        "resources": _MAP,
                        **_PLACEMENT,
                        "service": _object(
                            {
                                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                                "annotations": _MAP,
                            }
                        ),
                        "podDisruptionBudget": _object(
                            {"enabled": _BOOL, "minAvailable": {"type": ["integer", "string"]}}
                        ),
                        "autoscaling": _object(
                            {
                                "enabled": _BOOL,
                                "minReplicas": _POSITIVE,
                                "maxReplicas": _POSITIVE,
                                "targetCPUUtilizationPercentage": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": 100,
                                },
                            }
                        ),
                    }
                ),
                "redis": _object(
                    {
                        "enabled": _BOOL,
                        "image": _object({"repository": _STR, "tag": _STR}),
                        "resources": _MAP,
                        "externalUrl": {"type": "string", "pattern": r"^(rediss?://[^@]*)?$"},
                        "existingSecret": _STR,
                        "passwordKey": {**_STR, "minLength": 1},
                        "tls": _object({"existingSecret": _STR, "clientCertificate": _BOOL}),
                    }
                ),
                "modelCache": _object(
                    {
                        "enabled": _BOOL,
                        "existingClaim": _STR,
                        "size": _QUANTITY,
                        "storageClass": _STR,
                        "accessModes": {"type": "array", "items": _STR, "minItems": 1},
                        "mountPath": {"type": "string", "pattern": "^/"},
                    }
                ),
                "hfToken": _object({"existingSecret": _STR, "key": {**_STR, "minLength": 1}}),
                "shm": _object({"sizeLimit": _QUANTITY}),
                "metrics": _object(
                    {"serviceMonitor": _object({"enabled": _BOOL, "interval": _STR})}
                ),
                "networkPolicy": _object(
                    {
                        "enabled": _BOOL,
                        "rayIngressFrom": {"type": "array", "items": _MAP},
                        "routerIngressFrom": {"type": "array", "items": _MAP},
                    }
                ),
                "extraEnv": _OBJECTS,
                "extraVolumes": _OBJECTS,
                "extraVolumeMounts": _OBJECTS,
                "extraObjects": _OBJECTS,
            },
        ),
        "$defs": defs,
    }


def render_schema() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(render_schema())
    print(SCHEMA_FILE)
    sys.exit(0)
