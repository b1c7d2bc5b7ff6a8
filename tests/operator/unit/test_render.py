"""The InferenceService renderer: plain dict assertions, validation against KServe's real schema (both
modes) and against Knative's podspec field masks (Serverless; tests/support/knative_masks.py)."""

from __future__ import annotations

from typing import Any

import knative_masks
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


def test_restricted_security_is_on_the_container_only() -> None:
    """Knative masks a pod-level securityContext by default (fieldmask.go PodSecurityContextMask)."""
    predictor = rendered()["spec"]["predictor"]
    assert "securityContext" not in predictor
    container = predictor["containers"][0]["securityContext"]
    assert container["runAsNonRoot"] is True and container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert (container["runAsUser"], container["runAsGroup"]) == (1000, 1000)
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in predictor["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts  # a writable scratch dir, since the root filesystem is read-only


def test_protocol_env_and_deployment_mode_annotation() -> None:
    for mode, annotation in (("Serverless", "Knative"), ("Standard", "Standard")):
        isvc = rendered(spec(scaling={"metric": "cpu"}), mode=mode)
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == annotation
        env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
        assert env["PROTOCOL"] == "v2"
        assert ("STORAGE_URI" in env) is (mode == "Standard")
    assert "--protocol=v2" in rendered()["spec"]["predictor"]["containers"][0]["args"]


def test_pass_through_pod_fields() -> None:
    s = spec(runtime={"serviceAccountName": "triage-runtime", "imagePullSecrets": [{"name": "regcred"}],
                      "nodeSelector": {"nvidia.com/gpu.present": "true"},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    predictor = rendered(s)["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "triage-runtime"
    assert predictor["imagePullSecrets"] == [{"name": "regcred"}]
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert predictor["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for field in ("serviceAccountName", "imagePullSecrets", "nodeSelector", "tolerations"):
        assert field not in rendered()["spec"]["predictor"]


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
    assert {"name": "api-keys", "secret": {"secretName": "keys", "defaultMode": 0o444}} in predictor["volumes"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_gpu_requests_a_device_and_no_keys_means_no_key_volume() -> None:
    s = spec(runtime={"device": "gpu"}, security={"auditLog": False})
    predictor = rendered(s)["spec"]["predictor"]
    container = predictor["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert not any(a.startswith("--api_keys_file") or a.startswith("--audit_log") for a in container["args"])
    assert {v["name"] for v in predictor["volumes"]} == {"tmp"}


def test_canary_only_when_asked() -> None:
    before = render.ModelVersion("sepsis-risk", "2")
    assert "canaryTrafficPercent" not in rendered()["spec"]["predictor"]
    assert rendered(canary_from=before)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    no_canary = spec(rollout={"canaryTrafficPercent": 0})
    assert "canaryTrafficPercent" not in rendered(no_canary, canary_from=before)["spec"]["predictor"]


def test_standard_canary_beside_the_stable_predictor_and_retargeting() -> None:
    s = spec(scaling={"metric": "cpu", "target": 70}, rollout={"canaryTrafficPercent": 30})
    isvc_spec = rendered(s, mode="Standard", canary_from=render.ModelVersion("sepsis-risk", "2"))["spec"]
    stable, canaries = isvc_spec["predictor"], isvc_spec["canary"]
    assert stable["name"] == "v2" and "--model_uri=models:/sepsis-risk/2" in stable["containers"][0]["args"]
    assert [(c["predictor"]["name"], c["trafficPercent"]) for c in canaries] == [("v3", 30)]
    assert not set(render.CANARY_FIXED_FIELDS) & set(canaries[0]["predictor"])
    promoted = rendered(s, mode="Standard")["spec"]
    assert "canary" not in promoted and promoted["predictor"]["name"] == "v3"


def test_standard_mode_refuses_knative_metrics() -> None:
    with pytest.raises(render.RenderError) as caught:
        rendered(spec(scaling={"metric": "concurrency"}), mode="Standard")
    assert caught.value.field == "spec.scaling.metric"


def test_differs_ignores_server_defaults_but_sees_changes() -> None:
    desired = rendered()
    actual = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "9",
                                      "labels": {**desired["metadata"]["labels"], "extra": "kept"}},
              "spec": {"predictor": {**desired["spec"]["predictor"], "timeout": 60}}}
    assert not render.inference_service_differs(desired, actual)
    assert render.inference_service_differs(rendered(model_version="4"), actual)
    canary_left = {**actual, "spec": {"predictor": {**actual["spec"]["predictor"], "canaryTrafficPercent": 10}}}
    assert render.inference_service_differs(desired, canary_left)
    pod_field_left = {**actual, "spec": {"predictor": {**actual["spec"]["predictor"], "nodeSelector": {"a": "b"}}}}
    assert render.inference_service_differs(desired, pod_field_left)
    standard = rendered(spec(scaling={"metric": "cpu"}), mode="Standard", canary_from=render.ModelVersion("m", "1"))
    promoted = rendered(spec(scaling={"metric": "cpu"}), mode="Standard")
    assert render.inference_service_differs(promoted, standard)  # the canary entry must go


def test_quantities_compare_by_value() -> None:
    """KServe's webhook stores quantities in canonical form: not a difference."""
    s = spec(runtime={"resources": {"limits": {"cpu": "0.5", "memory": "1024Mi"}, "requests": {"cpu": 1}}})
    desired = rendered(s)
    actual = rendered(s)
    container = actual["spec"]["predictor"]["containers"][0]
    container["resources"] = {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "2Gi"}}
    assert not render.inference_service_differs(desired, actual)
    container["resources"]["limits"]["cpu"] = "600m"
    assert render.inference_service_differs(desired, actual)
    assert manifest.quantity_value("1.5Gi") == 1536 * 1024 ** 2
    assert manifest.quantity_value("2e3") == 2000 and manifest.quantity_value("two") is None


def test_serverless_render_passes_knatives_default_field_masks() -> None:
    s = spec(runtime={"resources": {"limits": {"cpu": "1"}}, "serviceAccountName": "sa",
                      "imagePullSecrets": [{"name": "regcred"}]}, security={"apiKeySecretRef": {"name": "keys"}})
    for canary in (None, render.ModelVersion("sepsis-risk", "2")):
        assert knative_masks.disallowed(rendered(s, canary_from=canary)["spec"]["predictor"]) == []


def test_knative_masks_name_what_a_cluster_must_enable() -> None:
    s = spec(runtime={"nodeSelector": {"gpu": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]})
    predictor = rendered(s)["spec"]["predictor"]
    assert sorted(knative_masks.disallowed(predictor)) == ["nodeSelector", "tolerations"]
    enabled = {"kubernetes.podspec-nodeselector": "enabled", "kubernetes.podspec-tolerations": "enabled"}
    assert knative_masks.disallowed(predictor, enabled) == []
    # What the renderer used to write: a pod-level securityContext is masked by default.
    assert knative_masks.disallowed({**predictor, "securityContext": manifest.RESTRICTED_POD_SECURITY},
                                    enabled) == [f"securityContext.{k}" for k in manifest.RESTRICTED_POD_SECURITY]


def test_label_value_is_made_safe() -> None:
    assert manifest.label_value("My Model/v2!") == "My-Model-v2"
    assert len(manifest.label_value("x" * 100)) == 63


def kserve_schemas() -> Any:
    schemas = pytest.importorskip("medserve_sandbox.schemas")
    directory = schemas.find_kserve_crds_dir()
    if directory is None:
        pytest.skip("KServe CRD schemas not found (../shared/upstream/kserve); cannot validate the render")
    registry = schemas.SchemaRegistry()
    registry.add_kserve_crds(directory)
    return registry


def test_valid_against_kserve_schema_in_both_modes() -> None:
    registry = kserve_schemas()
    s = spec(runtime={"resources": {"limits": {"cpu": "1"}}, "serviceAccountName": "sa",
                      "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
             scaling={"metric": "cpu"}, security={"apiKeySecretRef": {"name": "keys"}})
    for mode in ("Serverless", "Standard"):
        for canary in (None, render.ModelVersion("sepsis-risk", "2")):
            registry.admit(rendered(s, mode=mode, canary_from=canary), old=None, field_validation="Strict")



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
    assert volumes["audit-db"]["secret"] == {"secretName": "audit-db", "defaultMode": 0o444,
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
    registry = kserve_schemas()
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
