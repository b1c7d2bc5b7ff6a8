"""The InferenceService renderer: plain dict assertions, and validation against KServe's real schema."""

from __future__ import annotations

from typing import Any

import pytest
from medserve_operator.api import ModelDeploymentSpec, parse_spec
from medserve_operator.controllers.modeldeployment import render
from medserve_operator.kit import manifest


def spec(**overrides: Any) -> ModelDeploymentSpec:
    raw: dict[str, Any] = {"model": {"name": "sepsis-risk", "version": "3"}, **overrides}
    parsed = parse_spec(ModelDeploymentSpec, raw)
    assert isinstance(parsed, ModelDeploymentSpec)
    return parsed


def rendered(s: ModelDeploymentSpec | None = None, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"name": "sepsis", "namespace": "icu", "uid": "uid-1", "spec": s or spec(),
                            "model_name": "sepsis-risk", "model_version": "3", "image": "img:1",
                            "mlflow_uri": "http://mlflow:5000", **kwargs}
    return render.render_inference_service(**args)


def test_identity_owner_and_labels() -> None:
    isvc = rendered()
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    meta = isvc["metadata"]
    assert (meta["name"], meta["namespace"]) == ("sepsis", "icu")
    assert meta["ownerReferences"] == [{"apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
                                        "name": "sepsis", "uid": "uid-1", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["labels"]["medserve.io/model-version"] == "3"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "medserve"
    assert meta["annotations"]["medserve.io/model-uri"] == "models:/sepsis-risk/3"


def test_restricted_pod_security() -> None:
    predictor = rendered()["spec"]["predictor"]
    pod, container = predictor["securityContext"], predictor["containers"][0]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in predictor["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts  # a writable scratch dir, since the root filesystem is read-only


def test_settings_are_carried_to_the_runtime() -> None:
    s = spec(runtime={"protocol": "v1", "optimization": "dynamic-int8",
                      "batching": {"maxBatchSize": 32, "maxLatencyMs": 7},
                      "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}},
             scaling={"minReplicas": 2, "maxReplicas": 6, "metric": "rps", "target": 50},
             security={"apiKeySecretRef": {"name": "keys"}, "rateLimitPerMinute": 600, "auditLog": True})
    predictor = rendered(s)["spec"]["predictor"]
    container = predictor["containers"][0]
    for arg in ("--protocol=v1", "--optimization=dynamic-int8", "--max_batch_size=32", "--max_latency_ms=7",
                "--rate_limit_per_minute=600", "--model_uri=models:/sepsis-risk/3",
                "--api_keys_file=/etc/medserve/api-keys/keys.json", "--audit_log=/var/log/medserve/audit.jsonl"):
        assert arg in container["args"]
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "1Gi"}}
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("rps", 50)
    assert {"name": "api-keys", "secret": {"secretName": "keys", "defaultMode": 0o440}} in predictor["volumes"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_gpu_requests_a_device_and_no_keys_means_no_key_volume() -> None:
    s = spec(runtime={"device": "gpu"}, security={"auditLog": False})
    predictor = rendered(s)["spec"]["predictor"]
    container = predictor["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not any(a.startswith("--api_keys_file") or a.startswith("--audit_log") for a in container["args"])
    assert {v["name"] for v in predictor["volumes"]} == {"tmp"}


def test_canary_only_when_asked() -> None:
    assert "canaryTrafficPercent" not in rendered()["spec"]["predictor"]
    assert rendered(canary=True)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    no_canary = spec(rollout={"canaryTrafficPercent": 0})
    assert "canaryTrafficPercent" not in rendered(no_canary, canary=True)["spec"]["predictor"]


def test_differs_ignores_server_defaults_but_sees_changes() -> None:
    desired = rendered()
    actual = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "9",
                                      "labels": {**desired["metadata"]["labels"], "extra": "kept"}},
              "spec": {"predictor": {**desired["spec"]["predictor"], "timeout": 60}}}
    assert not render.inference_service_differs(desired, actual)
    assert render.inference_service_differs(rendered(model_version="4"), actual)
    canary_left = {**actual, "spec": {"predictor": {**actual["spec"]["predictor"], "canaryTrafficPercent": 10}}}
    assert render.inference_service_differs(desired, canary_left)


def test_label_value_is_made_safe() -> None:
    assert manifest.label_value("My Model/v2!") == "My-Model-v2"
    assert len(manifest.label_value("x" * 100)) == 63


def test_valid_against_kserve_schema() -> None:
    schemas = pytest.importorskip("medserve_sandbox.schemas")
    directory = schemas.find_kserve_crds_dir()
    if directory is None:
        pytest.skip("KServe CRD schemas not found (../shared/upstream/kserve); cannot validate the render")
    registry = schemas.SchemaRegistry()
    registry.add_kserve_crds(directory)
    s = spec(runtime={"resources": {"limits": {"cpu": "1"}}}, security={"apiKeySecretRef": {"name": "keys"}})
    for canary in (False, True):
        registry.admit(rendered(s, canary=canary), old=None, field_validation="Strict")
