"""The shape of the RayService fields the chart renders (KubeRay's ray.io/v1 API, by its
documented field names), for offline checks: KubeRay's own CRD schema cannot be kept in this
repository. The pod templates inside are checked against the Kubernetes schemas instead, as
v1 PodTemplates."""

from __future__ import annotations

from typing import Any

_UPSCALING_MODES = ["Default", "Aggressive", "Conservative"]
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object", "required": ["spec"]}

_WORKER_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "groupName",
        "replicas",
        "minReplicas",
        "maxReplicas",
        "rayStartParams",
        "template",
    ],
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "rayStartParams": _STRING_MAP,
        "template": _TEMPLATE,
    },
}

RAYSERVICE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "upgradeStrategy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]}
                    },
                },
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "upscalingMode": {"enum": _UPSCALING_MODES},
                                "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                            },
                        },
                        "gcsFaultToleranceOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["redisAddress"],
                            "properties": {"redisAddress": {"type": "string"}},
                        },
                        "headGroupSpec": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["rayStartParams", "template"],
                            "properties": {"rayStartParams": _STRING_MAP, "template": _TEMPLATE},
                        },
                        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
                    },
                },
            },
        },
    },
}


def pod_templates(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The head's and every worker group's pod template, each as a v1 PodTemplate object."""
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster.get("workerGroupSpecs", [])]
    return [
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{service['metadata']['name']}-{i}"},
            "template": template,
        }
        for i, template in enumerate(templates)
    ]
