"""Pure builders of the ModelDeployment's children: the KServe v1beta1 InferenceService running the model
runtime, and the PersistentVolumeClaim its replicas share as the audit spool.

A parsed spec in, a manifest (a plain dict) out; nothing here talks to a cluster. Tests assert on the dicts
and validate them against KServe's real schemas.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from medserve_operator.api.modeldeployment import KIND, AuditSpec, ModelDeploymentSpec, SecuritySpec
from medserve_operator.config import AuditDefaults, SecretKey
from medserve_operator.kit.apply import ChildKind
from medserve_operator.kit.manifest import (
    MODEL_DEPLOYMENT_LABEL,
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    app_labels,
    label_value,
    owned_differs,
    owner_reference,
)

INFERENCE_SERVICE: Final = ChildKind("serving.kserve.io/v1beta1", "inferenceservices")
PERSISTENT_VOLUME_CLAIM: Final = ChildKind("v1", "persistentvolumeclaims")
RUNTIME_PORT = 8080
API_KEYS_DIR = "/etc/medserve/api-keys"
AUDIT_DIR = "/var/log/medserve"
AUDIT_DB_DIR = "/var/run/medserve/audit-db"
AUDIT_KEY_DIR = "/var/run/medserve/audit-key"
AUDIT_SPOOL_DIR = "/var/lib/medserve/audit"
SECRET_FILE_MODE = 0o440
MODEL_VERSION_LABEL: Final = "medserve.io/model-version"


def model_deployment_labels(name: str, model_name: str, model_version: str) -> dict[str, str]:
    return app_labels("medserve-model", name, **{
        MODEL_DEPLOYMENT_LABEL: name,
        "medserve.io/model-name": label_value(model_name),
        MODEL_VERSION_LABEL: label_value(model_version),
    })


def runtime_args(name: str, spec: ModelDeploymentSpec, model_uri: str) -> list[str]:
    """The model-runtime command line carrying the ModelDeployment's runtime and security settings."""
    runtime, security = spec.runtime, spec.security
    args = [
        f"--model_name={name}",
        f"--model_uri={model_uri}",
        f"--http_port={RUNTIME_PORT}",
        f"--protocol={runtime.protocol}",
        f"--device={runtime.device}",
        f"--optimization={runtime.optimization}",
        f"--max_batch_size={runtime.batching.max_batch_size}",
        f"--max_latency_ms={runtime.batching.max_latency_ms}",
        f"--rate_limit_per_minute={security.rate_limit_per_minute}",
        f"--max_request_bytes={security.max_request_bytes}",
    ]
    if security.api_key_secret_ref is not None:
        args.append(f"--api_keys_file={API_KEYS_DIR}/keys.json")
    return args


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpoolClaim:
    """The audit spool's PersistentVolumeClaim, as the spec and the operator's defaults ask for it."""

    storage_class: str | None
    size: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditPlan:
    """Where a ModelDeployment's audit records and shared rate limits go: `spec.security`, else the
    operator's defaults (`audit_plan`). `spool` None with a database: the spool is an emptyDir."""

    enabled: bool
    dsn: SecretKey | None = None
    key: SecretKey | None = None
    redis: SecretKey | None = None
    spool: SpoolClaim | None = None


def audit_plan(security: SecuritySpec, defaults: AuditDefaults | None = None) -> AuditPlan:
    """Resolve `security`'s audit and Redis settings against the operator's `defaults` (pure)."""
    defaults = defaults or AuditDefaults()
    audit = security.audit or AuditSpec()

    def ref(spec_ref: Any, default: SecretKey | None) -> SecretKey | None:
        return SecretKey(name=spec_ref.name, key=spec_ref.key) if spec_ref is not None else default

    redis = ref(security.redis_secret_ref, defaults.redis_secret)
    if not security.audit_log:
        return AuditPlan(enabled=False, redis=redis)
    dsn = ref(audit.dsn_secret_ref, defaults.dsn_secret)
    spool = None
    if dsn is not None and (audit.spool is not None or defaults.spool_persistent):
        asked = audit.spool
        spool = SpoolClaim(storage_class=(asked.storage_class_name if asked else None) or defaults.spool_storage_class,
                           size=str(asked.size if asked and asked.size is not None else defaults.spool_size))
    return AuditPlan(enabled=True, dsn=dsn, key=ref(audit.key_secret_ref, defaults.key_secret), redis=redis,
                     spool=spool)


def spool_claim_name(name: str) -> str:
    return f"{name}-audit-spool"


def render_spool_claim(*, name: str, namespace: str, uid: str, claim: SpoolClaim) -> dict[str, Any]:
    """The ReadWriteMany PersistentVolumeClaim every replica's spool file lives on (one file per pod)."""
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": claim.size}}}
    if claim.storage_class:
        spec["storageClassName"] = claim.storage_class
    return {
        "apiVersion": PERSISTENT_VOLUME_CLAIM.api_version,
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": spool_claim_name(name), "namespace": namespace,
                     "labels": app_labels("medserve-audit-spool", name, **{MODEL_DEPLOYMENT_LABEL: name}),
                     "annotations": {}, "ownerReferences": [owner_reference(kind=KIND, name=name, uid=uid)]},
        "spec": spec,
    }


@dataclasses.dataclass(frozen=True)
class Wiring:
    """What `audit_and_limits` adds to the runtime container and its pod."""

    args: list[str]
    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]


def _secret_volume(volume: str, secret: SecretKey, mount_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    # Only the one key, under its own name: a Secret without that key fails the mount with the kubelet's
    # own message (in the pod's events and KServe's status), rather than a runtime that starts without it.
    return ({"name": volume, "secret": {"secretName": secret.name, "defaultMode": SECRET_FILE_MODE,
                                        "items": [{"key": secret.key, "path": secret.key}]}},
            {"name": volume, "mountPath": mount_path, "readOnly": True})


def audit_and_limits(name: str, spec: ModelDeploymentSpec, plan: AuditPlan | None = None) -> Wiring:
    """The runtime's audit trail and shared rate limits: args, env, volumes and mounts (no secret value:
    the DSN and the HMAC key are files from Secret volumes, the Redis URL an env var from a Secret).
    `plan` None: `spec.security` alone, without the operator's defaults."""
    plan = plan or audit_plan(spec.security)
    args = [f"--rate_limit_replicas={spec.scaling.max_replicas}"]
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if plan.enabled and plan.dsn is not None:
        env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        volume, mount = _secret_volume("audit-db", plan.dsn, AUDIT_DB_DIR)
        volumes.append(volume)
        mounts.append(mount)
        args.append(f"--audit_dsn_file={AUDIT_DB_DIR}/{plan.dsn.key}")
        args.append(f"--audit_spool={AUDIT_SPOOL_DIR}/$(POD_NAME).jsonl")  # the kubelet expands $(POD_NAME)
        volumes.append({"name": "audit-spool", **(
            {"persistentVolumeClaim": {"claimName": spool_claim_name(name)}}
            if plan.spool is not None else {"emptyDir": {}})})
        mounts.append({"name": "audit-spool", "mountPath": AUDIT_SPOOL_DIR})
    elif plan.enabled:
        volumes.append({"name": "audit", "emptyDir": {}})
        mounts.append({"name": "audit", "mountPath": AUDIT_DIR})
        args.append(f"--audit_log={AUDIT_DIR}/audit.jsonl")
    if plan.enabled and plan.key is not None:
        volume, mount = _secret_volume("audit-key", plan.key, AUDIT_KEY_DIR)
        volumes.append(volume)
        mounts.append(mount)
        args.append(f"--audit_key_file={AUDIT_KEY_DIR}/{plan.key.key}")
    if plan.redis is not None:
        env.append({"name": "MEDSERVE_REDIS_URL",
                    "valueFrom": {"secretKeyRef": {"name": plan.redis.name, "key": plan.redis.key}}})
    return Wiring(args, env, volumes, mounts)


def render_inference_service(
    *,
    name: str,
    namespace: str,
    uid: str,
    spec: ModelDeploymentSpec,
    model_name: str,
    model_version: str,
    image: str,
    mlflow_uri: str,
    canary: bool = False,
    audit: AuditPlan | None = None,
) -> dict[str, Any]:
    """A KServe v1beta1 InferenceService whose predictor runs the medserve model runtime.

    `canary` keeps the previous revision serving and sends `rollout.canaryTrafficPercent` of the
    traffic to this one, which is how KServe rolls out a new model version. `audit`: where the audit
    records and shared rate limits go (`audit_plan`; None: `spec.security` without operator defaults).
    """
    model_uri = f"models:/{model_name}/{model_version}"
    scaling, runtime = spec.scaling, spec.runtime
    resources: dict[str, Any] = {k: dict(v) for k, v in runtime.resources.model_dump(by_alias=True).items() if v}
    if runtime.device == "gpu":
        limits = resources.setdefault("limits", {})
        limits.setdefault("nvidia.com/gpu", 1)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    wiring = audit_and_limits(name, spec, audit)
    volumes.extend(wiring.volumes)
    mounts.extend(wiring.mounts)
    if spec.security.api_key_secret_ref is not None:
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.security.api_key_secret_ref.name,
                                                        "defaultMode": 0o440}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": image,
        "args": [*runtime_args(name, spec, model_uri), *wiring.args],
        "env": [
            {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri},
            {"name": "MEDSERVE_MODEL_DEPLOYMENT", "value": name},
            {"name": "MEDSERVE_MODEL_VERSION", "value": model_version},
            *wiring.env,
        ],
        "ports": [{"containerPort": RUNTIME_PORT, "name": "http1", "protocol": "TCP"}],
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "volumeMounts": mounts,
    }
    if resources:
        container["resources"] = resources
    predictor: dict[str, Any] = {
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "scaleMetric": scaling.metric,
        "scaleTarget": scaling.target,
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }
    if canary and spec.rollout.canary_traffic_percent > 0:
        predictor["canaryTrafficPercent"] = spec.rollout.canary_traffic_percent
    return {
        "apiVersion": INFERENCE_SERVICE.api_version,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": model_deployment_labels(name, model_name, model_version),
            "annotations": {
                "medserve.io/model-uri": model_uri,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(RUNTIME_PORT),
                "prometheus.io/path": "/metrics",
            },
            "ownerReferences": [owner_reference(kind=KIND, name=name, uid=uid)],
        },
        "spec": {"predictor": predictor},
    }


def inference_service_differs(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """`owned_differs`, and a canary setting that should be gone (a subset check cannot see a removal)."""
    canary_left = "canaryTrafficPercent" in ((actual.get("spec") or {}).get("predictor") or {}) and \
        "canaryTrafficPercent" not in desired["spec"]["predictor"]
    return canary_left or owned_differs(desired, actual)
