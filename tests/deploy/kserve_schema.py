"""Structural JSON Schemas of the two KServe resources we ship, written from KServe's API
types (pkg/apis/serving: v1alpha1 ServingRuntimeSpec, v1beta1 PredictorSpec, ModelSpec and
ComponentExtensionSpec). Every object we describe refuses unknown fields, so a misspelt
field fails; embedded Kubernetes types (Container, Volume, ...) are checked against the
Kubernetes schemas that kubernetes-validate ships."""

from __future__ import annotations

from typing import Any

K8S = "https://kubernetes.io/api/_definitions.json#/$defs/"


def k8s(name: str) -> dict[str, str]:
    return {"$ref": K8S + name}


def _strings() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _array(item: dict[str, Any], min_items: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": min_items}


PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
_META = k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")

# ServingRuntimePodSpec (inlined in ServingRuntimeSpec).
_POD = {
    "containers": _array(k8s("io.k8s.api.core.v1.Container"), 1),
    "volumes": _array(k8s("io.k8s.api.core.v1.Volume")),
    "nodeSelector": _strings(),
    "affinity": k8s("io.k8s.api.core.v1.Affinity"),
    "tolerations": _array(k8s("io.k8s.api.core.v1.Toleration")),
    "labels": _strings(),
    "annotations": _strings(),
    "imagePullSecrets": _array(k8s("io.k8s.api.core.v1.LocalObjectReference")),
    "hostIPC": {"type": "boolean"},
}


def _resource(api_version: str, kinds: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes object of these kinds: apiVersion, kind, metadata and this spec only."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"enum": kinds},
            "metadata": _META,
            "spec": spec,
        },
    }


SERVING_RUNTIME = _resource(
    "serving.kserve.io/v1alpha1",
    ["ServingRuntime", "ClusterServingRuntime"],
    {
        "type": "object",
        "required": ["containers"],
        "additionalProperties": False,
        "properties": {
            "supportedModelFormats": _array(
                {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "version": {"type": "string"},
                        "autoSelect": {"type": "boolean"},
                        "priority": {"type": "integer", "minimum": 1},
                    },
                }
            ),
            "multiModel": {"type": "boolean"},
            "disabled": {"type": "boolean"},
            "protocolVersions": _array(PROTOCOLS),
            "grpcEndpoint": {"type": "string"},
            "grpcDataEndpoint": {"type": "string"},
            "httpDataEndpoint": {"type": "string"},
            "replicas": {"type": "integer", "minimum": 0, "maximum": 65535},
            "storageHelper": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"disabled": {"type": "boolean"}},
            },
            **_POD,
        },
    },
)

# ComponentExtensionSpec (inlined in PredictorSpec).
_EXTENSION = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleMetricType": {"enum": ["Utilization", "AverageValue", "Value"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 0},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "labels": _strings(),
    "annotations": _strings(),
    "deploymentStrategy": k8s("io.k8s.api.apps.v1.DeploymentStrategy"),
}

# ModelSpec: modelFormat, runtime, PredictorExtensionSpec (storageUri, runtimeVersion,
# protocolVersion, storage) and an inlined Container's fields.
CONTAINER_FIELDS = [
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "ports",
    "envFrom",
    "env",
    "resources",
    "volumeMounts",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "imagePullPolicy",
    "securityContext",
]  # fmt: skip  (the test checks these against Kubernetes' Container schema)

MODEL: dict[str, Any] = {
    "type": "object",
    "required": ["modelFormat"],
    "additionalProperties": False,
    "properties": {
        "modelFormat": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "version": {"type": "string"},
            },
        },
        "runtime": {"type": "string", "minLength": 1},
        "storageUri": {"type": "string", "pattern": "^[a-z0-9+.-]+://"},
        "runtimeVersion": {"type": "string"},
        "protocolVersion": PROTOCOLS,
        "storage": {"type": "object"},
        **{f: {} for f in CONTAINER_FIELDS},
    },
}


# PredictorSpec: a ModelSpec, the PodSpec fields we may set, ComponentExtensionSpec.
_PREDICTOR_POD = ("containers", "volumes", "nodeSelector", "tolerations", "affinity")

INFERENCE_SERVICE = _resource(
    "serving.kserve.io/v1beta1",
    ["InferenceService"],
    {
        "type": "object",
        "required": ["predictor"],
        "additionalProperties": False,
        "properties": {
            "predictor": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "model": MODEL,
                    "serviceAccountName": {"type": "string"},
                    **{k: _POD[k] for k in _PREDICTOR_POD},
                    **_EXTENSION,
                },
            },
            "transformer": {"type": "object"},
            "explainer": {"type": "object"},
        },
    },
)
