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


def _object(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """An object with these properties only (unknown fields fail)."""
    return {
        "type": "object",
        "required": list(required),
        "additionalProperties": False,
        "properties": properties,
    }


def _strings() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _array(item: dict[str, Any], min_items: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": min_items}


def _resource(api_version: str, kinds: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes object of these kinds: apiVersion, kind, metadata and this spec only."""
    return _object(
        {
            "apiVersion": {"const": api_version},
            "kind": {"enum": kinds},
            "metadata": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": spec,
        },
        "apiVersion", "kind", "metadata", "spec",
    )  # fmt: skip


PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
_NAME = {"type": "string", "minLength": 1}
_STRING = {"type": "string"}
_BOOL = {"type": "boolean"}

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
    "hostIPC": _BOOL,
}

SERVING_RUNTIME = _resource(
    "serving.kserve.io/v1alpha1",
    ["ServingRuntime", "ClusterServingRuntime"],
    _object(
        {
            "supportedModelFormats": _array(
                _object(
                    {
                        "name": _NAME,
                        "version": _STRING,
                        "autoSelect": _BOOL,
                        "priority": {"type": "integer", "minimum": 1},
                    },
                    "name",
                )
            ),
            "multiModel": _BOOL,
            "disabled": _BOOL,
            "protocolVersions": _array(PROTOCOLS),
            "grpcEndpoint": _STRING,
            "grpcDataEndpoint": _STRING,
            "httpDataEndpoint": _STRING,
            "replicas": {"type": "integer", "minimum": 0, "maximum": 65535},
            "storageHelper": _object({"disabled": _BOOL}),
            **_POD,
        },
        "containers",
    ),
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

MODEL = _object(
    {
        "modelFormat": _object({"name": _NAME, "version": _STRING}, "name"),
        "runtime": _NAME,
        "storageUri": {"type": "string", "pattern": "^[a-z0-9+.-]+://"},
        "runtimeVersion": _STRING,
        "protocolVersion": PROTOCOLS,
        "storage": {"type": "object"},
        **{f: {} for f in CONTAINER_FIELDS},
    },
    "modelFormat",
)

# PredictorSpec: a ModelSpec, the PodSpec fields we may set, ComponentExtensionSpec.
_PREDICTOR_POD = ("containers", "volumes", "nodeSelector", "tolerations", "affinity")

INFERENCE_SERVICE = _resource(
    "serving.kserve.io/v1beta1",
    ["InferenceService"],
    _object(
        {
            "predictor": _object(
                {
                    "model": MODEL,
                    "serviceAccountName": _STRING,
                    **{k: _POD[k] for k in _PREDICTOR_POD},
                    **_EXTENSION,
                }
            ),
            "transformer": {"type": "object"},
            "explainer": {"type": "object"},
        },
        "predictor",
    ),
)
