"""deploy/kubernetes, checked offline: every manifest against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), the KServe resources against a schema of
KServe's API types, and the rendered set against the app it runs (settings, ports, probe
paths, user, shutdown timing, selectors)."""

from __future__ import annotations

import importlib.resources
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from referencing import Registry, Resource

from app.config import Settings
from app.main import create_app
from tests.deploy.kserve_schema import CONTAINER_FIELDS, INFERENCE_SERVICE, K8S, SERVING_RUNTIME

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes we support (autoscaling/v2 and policy/v1 are GA well before it) and
# the newest kubernetes-validate knows.
VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build` for what our kustomizations use: `resources` (files, and folders
    with their own kustomization.yaml) and `images` (name -> newName:newTag)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(k) <= {"apiVersion", "kind", "resources", "images"}, f"unhandled: {set(k)}"
    docs: list[dict[str, Any]] = []
    for entry in k["resources"]:
        path = directory / entry
        docs += render(path) if path.is_dir() else _load(path)
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in k.get("images", [])}
    for doc in docs:
        for c in _containers(doc):
            c["image"] = images.get(c["image"], c["image"])
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec)
    return list(pod.get("containers", []))


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


BASE = by_kind(render(DEPLOY))
KSERVE = by_kind(render(DEPLOY / "kserve"))


def _k8s_definitions() -> Resource:
    latest = kubernetes_validate.latest_version()
    path = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{latest}-local-strict/_definitions.json"
    )
    return Resource.from_contents(json.loads(path.read_text()))


REGISTRY = _k8s_definitions() @ Registry()


def test_base_has_what_a_deployment_needs() -> None:
    assert set(BASE) == {
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    assert set(KSERVE) == {"ConfigMap", "ServingRuntime", "InferenceService"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                                  "PodDisruptionBudget"])  # fmt: skip
def test_manifest_validates_against_kubernetes(kind: str, version: str) -> None:
    kubernetes_validate.validate(BASE[kind], version, strict=True)


def test_a_misspelt_field_fails_validation() -> None:
    """The check can fail: strict schemas refuse unknown fields."""
    bad = yaml.safe_load(yaml.safe_dump(BASE["Deployment"]))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(KSERVE["InferenceService"]))
    bad["spec"]["predictor"]["model"]["protocol"] = "v2"
    with pytest.raises(jsonschema.ValidationError):
        _kserve_validate(bad, INFERENCE_SERVICE)


def _kserve_validate(doc: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(doc)


def test_kserve_resources_validate_against_kserves_api() -> None:
    _kserve_validate(KSERVE["ServingRuntime"], SERVING_RUNTIME)
    _kserve_validate(KSERVE["InferenceService"], INFERENCE_SERVICE)
    kubernetes_validate.validate(KSERVE["ConfigMap"], VERSIONS[-1], strict=True)
    # ModelSpec inlines a Container: those fields are checked by Kubernetes' own schema.
    model = KSERVE["InferenceService"]["spec"]["predictor"]["model"]
    inline = {k: v for k, v in model.items() if k in CONTAINER_FIELDS}
    container = {"$ref": K8S + "io.k8s.api.core.v1.Container"}
    _kserve_validate({"name": "kserve-container", **inline}, container)


def test_rendering_agrees_with_kubectl_kustomize() -> None:
    """Our renderer is what the other tests read; kubectl's kustomize, where it is
    installed, must produce the same objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # said, not passed off: the schema tests above still ran
        pytest.skip("kubectl is not installed: kustomize rendering not compared")
    for directory, ours in ((DEPLOY, BASE), (DEPLOY / "kserve", KSERVE)):
        assert ours, directory
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert by_kind(_docs(out.stdout)) == ours


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _env() -> dict[str, str]:
    return dict(BASE["ConfigMap"]["data"])


def test_the_configmap_sets_only_real_settings_and_they_are_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fields = {f"PEEPHOLE_{name.upper()}" for name in Settings.model_fields}
    env = _env()
    assert set(env) <= fields, set(env) - fields
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings(_env_file=None)  # every value parses and passes the validators
    assert s.session_store == "redis" and s.host == "0.0.0.0"


def test_the_deployment_matches_the_app_and_the_image() -> None:
    env = _env()
    dep = BASE["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(env["PEEPHOLE_PORT"])}
    assert {e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e} == {
        BASE["ConfigMap"]["metadata"]["name"]
    }
    # Probes: liveness and start-up on /health/live, readiness on /health/ready.
    assert c["startupProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert {
        c[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
    } == {"http"}
    # Non-root as the image's user, nothing writable but the mounted /tmp.
    uid = int(_dockerfile_uid())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    assert {"name": "TMPDIR", "value": "/tmp"} in c["env"]
    # Graceful termination: the preStop pause, then uvicorn's shutdown grace, fit the period.
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(env["PEEPHOLE_GRACEFUL_SHUTDOWN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= pause + grace + 5
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    # Rollouts never drop below the wanted ready pods; Service, HPA and PDB find the pods.
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    svc = BASE["Service"]["spec"]
    assert svc["selector"] == labels and svc["ports"][0]["targetPort"] in ports
    assert "sessionAffinity" not in svc
    assert BASE["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert dep["spec"]["selector"]["matchLabels"] == labels
    target = BASE["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])


def _dockerfile_uid() -> str:
    text = (ROOT / "Dockerfile").read_text()
    return text.split("--uid", 1)[1].split()[0]


def test_the_kserve_runtime_serves_what_the_inference_service_asks_for() -> None:
    rt, isvc = KSERVE["ServingRuntime"], KSERVE["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"] in [
        {k: f[k] for k in ("name", "version") if k in f}
        for f in rt["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in rt["spec"]["protocolVersions"] == ["v2"]
    (c,) = rt["spec"]["containers"]
    assert c["name"] == "kserve-container"  # the name KServe looks for
    env = {e["name"]: e["value"] for e in c["env"]}
    assert [p["containerPort"] for p in c["ports"]] == [int(env["PEEPHOLE_PORT"])] == [8080]
    assert env["PEEPHOLE_MODEL_REPOSITORY"] == "/mnt/models"  # where storageUri lands
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"PEEPHOLE_PORT", "PEEPHOLE_MODEL_REPOSITORY"} <= {
        f"PEEPHOLE_{n.upper()}" for n in Settings.model_fields
    }


def test_every_probe_path_answers_on_the_app(tmp_path: Path) -> None:
    """The paths the manifests probe are the app's (on a real app with a shipped model)."""
    shutil.copytree(ROOT / "models" / "mackey-glass", tmp_path / "mackey-glass")
    c = BASE["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    (rt,) = KSERVE["ServingRuntime"]["spec"]["containers"]
    paths = {
        *(c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")),
        *(rt[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")),
        BASE["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
    }
    # gRPC off: the default port 8001 may be taken on this machine (another server, a test)
    settings = Settings(model_repository=tmp_path, provider="cpu", grpc_port=0, _env_file=None)
    with TestClient(create_app(settings)) as client:
        for path in sorted(paths):
            assert client.get(path).status_code == 200, path
