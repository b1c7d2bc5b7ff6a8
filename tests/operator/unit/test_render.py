"""The InferenceService renderer: plain dict assertions, and validation against KServe's real schema."""

from __future__ import annotations

from typing import Any

import pytest
from medserve_operator.api import ModelDeploymentSpec, parse_spec
from medserve_operator.config import AuditDefaults, OperatorConfig, SecretKey
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


AUDITED = {"auditLog": True, "redisSecretRef": {"name": "redis"},
           "audit": {"dsnSecretRef": {"name": "audit-db"}, "keySecretRef": {"name": "audit-hmac", "key": "hmac"},
                     "spool": {"storageClassName": "nfs-rwx", "size": "2Gi"}}}


def container_of(isvc: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = isvc["spec"]["predictor"]["containers"][0]
    return container


def test_default_audit_is_a_file_in_the_pod_and_the_limit_is_shared_by_max_replicas() -> None:
    isvc = rendered(spec(scaling={"maxReplicas": 4}))
    container = container_of(isvc)
    assert "--audit_log=/var/log/medserve/audit.jsonl" in container["args"]
    assert "--rate_limit_replicas=4" in container["args"]
    assert {"name": "audit", "emptyDir": {}} in isvc["spec"]["predictor"]["volumes"]
    assert not any(a.startswith(("--audit_dsn", "--audit_spool", "--audit_key")) for a in container["args"])


def test_postgres_audit_redis_and_spool_come_from_secrets_and_a_claim_never_values() -> None:
    s = spec(security=AUDITED)
    plan = render.audit_plan(s.security)
    isvc = rendered(s, audit=plan)
    container, predictor = container_of(isvc), isvc["spec"]["predictor"]
    args = container["args"]
    assert "--audit_dsn_file=/var/run/medserve/audit-db/dsn" in args
    assert "--audit_key_file=/var/run/medserve/audit-key/hmac" in args
    assert "--audit_spool=/var/lib/medserve/audit/$(POD_NAME).jsonl" in args
    assert not any(a.startswith("--audit_log") for a in args)
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"] == {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert env["MEDSERVE_REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert all("value" not in e for e in (env["POD_NAME"], env["MEDSERVE_REDIS_URL"]))
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["audit-db"]["secret"] == {"secretName": "audit-db", "defaultMode": 0o440,
                                             "items": [{"key": "dsn", "path": "dsn"}]}
    assert volumes["audit-key"]["secret"]["items"] == [{"key": "hmac", "path": "hmac"}]
    assert volumes["audit-spool"] == {"name": "audit-spool",
                                      "persistentVolumeClaim": {"claimName": "sepsis-audit-spool"}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["audit-db"]["readOnly"] and mounts["audit-key"]["readOnly"]
    assert mounts["audit-spool"] == {"name": "audit-spool", "mountPath": "/var/lib/medserve/audit"}

    assert plan.spool is not None
    claim = render.render_spool_claim(name="sepsis", namespace="icu", uid="uid-1", claim=plan.spool)
    assert claim["metadata"]["name"] == "sepsis-audit-spool"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs-rwx",
                             "resources": {"requests": {"storage": "2Gi"}}}


def test_without_a_spool_the_database_audit_spools_to_an_empty_dir() -> None:
    s = spec(security={"audit": {"dsnSecretRef": {"name": "audit-db", "key": "url"}}})
    plan = render.audit_plan(s.security)
    assert plan.spool is None and plan.key is None
    isvc = rendered(s, audit=plan)
    assert {"name": "audit-spool", "emptyDir": {}} in isvc["spec"]["predictor"]["volumes"]
    assert "--audit_dsn_file=/var/run/medserve/audit-db/url" in container_of(isvc)["args"]


def test_the_operators_defaults_fill_what_the_spec_leaves_unset() -> None:
    defaults = AuditDefaults(dsn_secret=SecretKey(name="pg", key="dsn"), key_secret=SecretKey(name="k", key="key"),
                             redis_secret=SecretKey(name="r", key="url"), spool_persistent=True,
                             spool_storage_class="efs", spool_size="5Gi")
    plan = render.audit_plan(spec().security, defaults)
    assert plan == render.AuditPlan(enabled=True, dsn=defaults.dsn_secret, key=defaults.key_secret,
                                    redis=defaults.redis_secret,
                                    spool=render.SpoolClaim(storage_class="efs", size="5Gi"))
    mine = render.audit_plan(spec(security={"audit": {"dsnSecretRef": {"name": "mine"}, "spool": {}}}).security,
                             defaults)
    assert mine.dsn == SecretKey(name="mine", key="dsn") and mine.spool == render.SpoolClaim(storage_class="efs",
                                                                                              size="5Gi")
    off = render.audit_plan(spec(security={"auditLog": False}).security, defaults)
    assert off == render.AuditPlan(enabled=False, redis=defaults.redis_secret)
    assert not any(a.startswith("--audit") for a in container_of(rendered(spec(security={"auditLog": False}),
                                                                          audit=off))["args"])


def test_audit_settings_with_audit_log_off_are_refused() -> None:
    with pytest.raises(Exception, match="audit settings need auditLog: true"):
        spec(security={"auditLog": False, "audit": {"dsnSecretRef": {"name": "pg"}}})


def test_audit_wiring_valid_against_kserve_and_kubernetes_schemas() -> None:
    schemas = pytest.importorskip("medserve_sandbox.schemas")
    directory = schemas.find_kserve_crds_dir()
    if directory is None:
        pytest.skip("KServe CRD schemas not found (../shared/upstream/kserve); cannot validate the render")
    registry = schemas.SchemaRegistry()
    registry.add_kserve_crds(directory)
    s = spec(security=AUDITED)
    plan = render.audit_plan(s.security)
    for audit in (plan, render.audit_plan(spec(security={"audit": {"dsnSecretRef": {"name": "db"}}}).security)):
        registry.admit(rendered(s, audit=audit), old=None, field_validation="Strict")
    assert registry.has_schema("v1", "PersistentVolumeClaim")
    assert plan.spool is not None
    registry.admit(render.render_spool_claim(name="sepsis", namespace="icu", uid="uid-1", claim=plan.spool),
                   old=None, field_validation="Strict")


def test_operator_audit_defaults_from_env() -> None:
    config = OperatorConfig.from_env({"MEDSERVE_AUDIT_DSN_SECRET": "audit-db", "MEDSERVE_AUDIT_KEY_SECRET": "k",
                                      "MEDSERVE_AUDIT_KEY_SECRET_KEY": "hmac", "MEDSERVE_REDIS_SECRET": "r",
                                      "MEDSERVE_AUDIT_SPOOL_PERSISTENT": "true",
                                      "MEDSERVE_AUDIT_SPOOL_STORAGE_CLASS": "efs", "MEDSERVE_AUDIT_SPOOL_SIZE": "3Gi"})
    assert config.audit == AuditDefaults(dsn_secret=SecretKey(name="audit-db", key="dsn"),
                                         key_secret=SecretKey(name="k", key="hmac"),
                                         redis_secret=SecretKey(name="r", key="url"), spool_persistent=True,
                                         spool_storage_class="efs", spool_size="3Gi")
    assert OperatorConfig.from_env({}).audit == AuditDefaults()
