"""Pure builders of the ModelDeployment's children: the KServe v1beta1 InferenceService running the model
runtime, and the PersistentVolumeClaim its replicas share as the audit spool.

A parsed spec in, a manifest (a plain dict) out; nothing here talks to a cluster. Tests assert on the dicts
and validate them against KServe's real schemas and Knative's field masks. `render_inference_service` puts
together one helper per concern: the runtime container, the pod-level pass-through fields, the volumes,
the scaling fields per mode, the canary per mode and the metadata.

What KServe 0.20 does with what is rendered here (kserve/kserve, read at v0.20.0-rc0-104):
- `serving.kserve.io/deploymentMode`: `pkg/constants/constants.go` names the modes `Knative` (the legacy
  `Serverless`) and `Standard` (the legacy `RawDeployment`); the defaulting webhook
  (`pkg/apis/serving/v1beta1/inference_service_defaults.go`, `DefaultInferenceService`) rewrites the legacy
  names, so the current names are rendered (anything else would be rewritten on every write and look like
  drift); `validateDeploymentMode` (`inference_service_validation.go`) refuses a change of mode once the
  InferenceService's status names one.
- Serverless canary: `spec.predictor.canaryTrafficPercent`; `reconcilers/knative/ksvc_reconciler.go`
  (`createKnativeService`) splits the Knative Service's traffic between the latest revision (that share) and
  `status.components.predictor.latestRolledoutRevision` (the rest); dropping it sends 100% to the latest.
- Standard canary: `spec.canary[]` (`inference_service.go`, `CanarySpec`: a named predictor and a
  `trafficPercent`); `components/predictor.go` (`reconcileCanaryDeployments`, `buildCanaryPredictor`) runs
  each as its own Deployment `{isvc}-{name}-predictor` with fixed replicas (the stable predictor merged
  with the canary's); promotion "without restart" is retargeting: `spec.predictor.name` set to the
  canary's name and the canary entry removed (the Deployment that was the canary becomes the stable one,
  the old one is deleted as an orphan). `validateCanarySpecs` requires mode `Standard` written literally,
  a stable predictor with a storage URI (for a custom container: `predictor_custom.go`, `GetStorageUri`,
  the `STORAGE_URI` env of kserve-container), a predictor.name per canary, and no maxReplicas, scaleTarget
  or scaleMetric on a canary; `validatePredictorNameChange` requires the storage URI to change with the name.
- `PROTOCOL` env of the custom container: `predictor_custom.go` (`GetProtocol`, `validateCustomProtocol`);
  the InferenceGraph router builds each step's URL from it (v1 `/v1/models/NAME:predict` without it).
- The mutating webhook round-trips the object through Go types, so resource quantities come back in
  canonical form (`0.5` → `500m`, `1` → `"1"`) and KServe adds defaults (resources, automountServiceAccount-
  Token: false): `inference_service_differs` compares what the operator owns, quantities by value.

Knative Serving (knative/serving 1.23, `pkg/apis/serving/fieldmask.go`, `PodSpecMask` and
`PodSecurityContextMask`, with the defaults of `pkg/apis/config/features.go`) drops a pod-level
securityContext unless `kubernetes.podspec-securitycontext` is enabled (and then only seccompProfile with
`secure-pod-defaults`), so the restricted settings are on the container (`SecurityContextMask` allows
runAsUser, runAsGroup, runAsNonRoot, allowPrivilegeEscalation, capabilities.drop, readOnlyRootFilesystem
and seccompProfile). nodeSelector and tolerations are masked too unless `kubernetes.podspec-nodeselector`
and `kubernetes.podspec-tolerations` are enabled; they are rendered when the spec asks for them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final

from medserve_operator.api.modeldeployment import KIND, AuditSpec, DeploymentMode, ModelDeploymentSpec, SecuritySpec
from medserve_operator.config import AuditDefaults, SecretKey
from medserve_operator.kit.apply import ChildKind
from medserve_operator.kit.manifest import (
    MODEL_DEPLOYMENT_LABEL,
    RESTRICTED_CONTAINER_SECURITY,
    app_labels,
    label_value,
    owned_differs,
    owner_reference,
)

INFERENCE_SERVICE: Final = ChildKind("serving.kserve.io/v1beta1", "inferenceservices")
PERSISTENT_VOLUME_CLAIM: Final = ChildKind("v1", "persistentvolumeclaims")
RUNTIME_PORT = 8080
RUNTIME_UID = 1000
API_KEYS_DIR = "/etc/medserve/api-keys"
AUDIT_DIR = "/var/log/medserve"
AUDIT_DB_DIR = "/var/run/medserve/audit-db"
AUDIT_KEY_DIR = "/var/run/medserve/audit-key"
AUDIT_SPOOL_DIR = "/var/lib/medserve/audit"
MODEL_VERSION_LABEL: Final = "medserve.io/model-version"
CONTAINER_NAME: Final = "kserve-container"
"""`constants.InferenceServiceContainerName`: the container KServe reads the storage URI and protocol from."""
DEPLOYMENT_MODE_ANNOTATION: Final = "serving.kserve.io/deploymentMode"
KSERVE_MODE: Final[dict[str, str]] = {"Serverless": "Knative", "Standard": "Standard"}
"""The spec's mode → the annotation value KServe 0.20 keeps (`constants.Knative`, `constants.Standard`)."""
MODE_OF_ANNOTATION: Final[dict[str, DeploymentMode]] = {
    "Knative": "Serverless", "Serverless": "Serverless", "Standard": "Standard", "RawDeployment": "Standard"}
"""An InferenceService's annotation (current or legacy name, `constants.ParseDeploymentMode`) → its mode."""
MODEL_MOUNT_DIR: Final = "/mnt/models"
"""`constants.DefaultModelLocalMountPath`, and the storage initializer's `MODEL_MOUNT_DIRS`
(`python/storage/kserve_storage/kserve_storage.py`, `Storage.download`): a URI under it downloads nothing."""
HPA_METRICS: Final = ("cpu", "memory")
"""`constants.AutoscalerAllowedHPAMetricsList`: what Standard mode's HPA scales on (`hpa_reconciler.go` makes
the scale metric a resource name)."""
DEFAULT_SCALE_METRIC: Final[dict[DeploymentMode, str]] = {"Serverless": "concurrency", "Standard": "cpu"}
"""spec.scaling.metric unset: Knative's autoscaler scales on concurrency; KServe's HPA reconciler on cpu
(`hpa_reconciler.go` `getResourceName`), at `constants.DefaultCPUUtilization` (80%) without a scaleTarget
(`getTargetUtilization`)."""
DEFAULT_CONCURRENCY_TARGET: Final = 8
"""In-flight requests per replica when scaling on concurrency without spec.scaling.target: the API's default
before the target became optional (so an upgrade re-renders nothing). Knative's own default
(`container-concurrency-target-default`, 100) queues far deeper than a CPU-bound model server stays fast at."""
CANARY_FIXED_FIELDS: Final = ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget")
"""Left off a Standard canary: `validateCanarySpecs` refuses maxReplicas, scaleTarget, scaleMetric; KServe
sizes it (`canaryReplicaCount`: ceil(stable minReplicas * trafficPercent / 100))."""
RUNTIME_CONTAINER_SECURITY: Final = {**RESTRICTED_CONTAINER_SECURITY, "runAsUser": RUNTIME_UID,
                                     "runAsGroup": RUNTIME_UID}
"""The restricted Pod Security settings, all on the container (Knative masks the pod-level ones)."""
SECRET_FILE_MODE: Final = 0o444
"""Readable by the runtime's user: without a pod-level fsGroup (masked by Knative) a secret's files belong to
root, so 0440 would lock the runtime out. The volume is the pod's own tmpfs."""


class RenderError(ValueError):
    """The spec asks for something the InferenceService cannot be in its deployment mode."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered model version, as a predictor serves it."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        """MLflow's model URI: models:/NAME/VERSION, or models:/NAME@ALIAS for a version given as "@ALIAS"
        (an unresolved alias in a `medserve render` preview)."""
        if self.version.startswith("@"):
            return f"models:/{self.name}{self.version}"
        return f"models:/{self.name}/{self.version}"


def model_deployment_labels(name: str, model_name: str, model_version: str) -> dict[str, str]:
    return app_labels("medserve-model", name, **{
        MODEL_DEPLOYMENT_LABEL: name,
        "medserve.io/model-name": label_value(model_name),
        MODEL_VERSION_LABEL: label_value(model_version),
    })


def predictor_name(version: str) -> str:
    """The Standard-mode predictor name of a model version (KServe's pattern ^[a-z]([-a-z0-9]*[a-z0-9])?$)."""
    return "v" + re.sub(r"[^a-z0-9-]", "-", version.lower()).strip("-")


def storage_uri(model: ModelVersion) -> str:
    """The `STORAGE_URI` of a Standard-mode predictor: one per model version, under MODEL_MOUNT_DIR.

    KServe needs it for a canary and for retargeting (see the module docstring); the runtime loads the model
    from MLflow itself, so the storage initializer KServe adds for it must download nothing, which a path
    under MODEL_MOUNT_DIR achieves (`ValidateStorageURI` takes it as a local path).
    """
    return f"{MODEL_MOUNT_DIR}/{label_value(model.name)}/{model.version}"


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


def runtime_resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The container's resources as the spec gives them, with one GPU on a gpu device unless it names some."""
    resources: dict[str, Any] = {k: dict(v) for k, v in spec.runtime.resources.model_dump(by_alias=True).items()
                                 if v}
    if spec.runtime.device == "gpu":
        resources.setdefault("limits", {}).setdefault("nvidia.com/gpu", "1")
    return resources


def runtime_volumes(spec: ModelDeploymentSpec, wiring: Wiring) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the container's mounts: scratch space, the audit trail's, the API keys."""
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, *wiring.volumes]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, *wiring.mounts]
    if spec.security.api_key_secret_ref is not None:
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.security.api_key_secret_ref.name,
                                                        "defaultMode": SECRET_FILE_MODE}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    return volumes, mounts


def runtime_container(*, name: str, spec: ModelDeploymentSpec, model: ModelVersion, image: str, mlflow_uri: str,
                      mode: DeploymentMode, mounts: list[dict[str, Any]], wiring: Wiring,
                      peer_url_template: str | None = None) -> dict[str, Any]:
    """The kserve-container running the model runtime for `model`.

    `peer_url_template` (with `{arm}`) is where this runtime, as an A/B test's arm, forwards feedback for
    another arm's predictions (model-runtime arms.py): the same for every ModelDeployment, so no ABTest
    writes into an arm.
    """
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri},
        {"name": "MEDSERVE_MODEL_DEPLOYMENT", "value": name},
        {"name": "MEDSERVE_MODEL_VERSION", "value": model.version},
        {"name": "PROTOCOL", "value": spec.runtime.protocol},
        *wiring.env,
    ]
    if peer_url_template:
        env.append({"name": "MEDSERVE_PEER_URL_TEMPLATE", "value": peer_url_template})
    if mode == "Standard":
        env.append({"name": "STORAGE_URI", "value": storage_uri(model)})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "args": [*runtime_args(name, spec, model.uri), *wiring.args],
        "env": env,
        "ports": [{"containerPort": RUNTIME_PORT, "name": "http1", "protocol": "TCP"}],
        "securityContext": dict(RUNTIME_CONTAINER_SECURITY),
        "volumeMounts": mounts,
    }
    resources = runtime_resources(spec)
    if resources:
        container["resources"] = resources
    return container


def pod_fields(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """The pass-through pod fields: service account, image pull secrets, node selector, tolerations."""
    runtime = spec.runtime
    fields: dict[str, Any] = {}
    if runtime.service_account_name:
        fields["serviceAccountName"] = runtime.service_account_name
    if runtime.image_pull_secrets:
        fields["imagePullSecrets"] = [{"name": ref.name} for ref in runtime.image_pull_secrets]
    if runtime.node_selector:
        fields["nodeSelector"] = dict(runtime.node_selector)
    if runtime.tolerations:
        fields["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in runtime.tolerations]
    return fields


def scaling_fields(spec: ModelDeploymentSpec, mode: DeploymentMode) -> dict[str, Any]:
    """minReplicas, maxReplicas and the autoscaler's metric; RenderError for a metric the mode cannot use."""
    scaling = spec.scaling
    metric = scaling.metric or DEFAULT_SCALE_METRIC[mode]
    if mode == "Standard" and metric not in HPA_METRICS:
        raise RenderError("spec.scaling.metric",
                          f"{metric!r} needs Knative's autoscaler (deploymentMode Serverless); Standard "
                          f"mode's HPA scales on {' or '.join(HPA_METRICS)}")
    fields: dict[str, Any] = {"minReplicas": scaling.min_replicas, "maxReplicas": scaling.max_replicas,
                              "scaleMetric": metric}
    target = scaling.target or (DEFAULT_CONCURRENCY_TARGET if metric == "concurrency" else None)
    if target is not None:
        fields["scaleTarget"] = target
    return fields


def render_predictor(*, name: str, spec: ModelDeploymentSpec, model: ModelVersion, image: str, mlflow_uri: str,
                     mode: DeploymentMode, peer_url_template: str | None = None,
                     audit: AuditPlan | None = None) -> dict[str, Any]:
    """The predictor serving `model`: scaling, the pod fields, the runtime container and its volumes."""
    wiring = audit_and_limits(name, spec, audit)
    volumes, mounts = runtime_volumes(spec, wiring)
    predictor: dict[str, Any] = {
        **scaling_fields(spec, mode),
        **pod_fields(spec),
        "containers": [runtime_container(name=name, spec=spec, model=model, image=image, mlflow_uri=mlflow_uri,
                                         mode=mode, mounts=mounts, wiring=wiring,
                                         peer_url_template=peer_url_template)],
        "volumes": volumes,
    }
    if mode == "Standard":
        predictor = {"name": predictor_name(model.version), **predictor}
    return predictor


def canary_spec(*, stable: dict[str, Any], canary: dict[str, Any], mode: DeploymentMode,
                percent: int) -> dict[str, Any]:
    """The InferenceService spec rolling `canary` out beside `stable` with `percent` of the traffic.

    Serverless: the canary's predictor with canaryTrafficPercent (Knative keeps the revision serving the rest).
    Standard: the stable predictor, and the canary as `spec.canary[0]` without the autoscaling fields.
    """
    if mode == "Serverless":
        return {"predictor": {**canary, "canaryTrafficPercent": percent}}
    fixed = {k: v for k, v in canary.items() if k not in CANARY_FIXED_FIELDS}
    return {"predictor": stable, "canary": [{"predictor": fixed, "trafficPercent": percent}]}


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
    mode: DeploymentMode = "Serverless",
    canary_from: ModelVersion | None = None,
    peer_url_template: str | None = None,
    audit: AuditPlan | None = None,
) -> dict[str, Any]:
    """A KServe v1beta1 InferenceService in deployment `mode` whose predictor runs the medserve model runtime.

    `canary_from` (the version serving now) rolls `model_version` out as a canary taking
    `rollout.canaryTrafficPercent` of the traffic; without it the new version serves everything (in
    Standard mode by retargeting the predictor to the canary's name). Raises RenderError for a spec the mode
    cannot run. `audit`: where the audit records and shared rate limits go (`audit_plan`; None:
    `spec.security` without the operator's defaults).
    """
    model = ModelVersion(model_name, model_version)
    predictor = render_predictor(name=name, spec=spec, model=model, image=image, mlflow_uri=mlflow_uri, mode=mode,
                                 peer_url_template=peer_url_template, audit=audit)
    isvc_spec: dict[str, Any] = {"predictor": predictor}
    percent = spec.rollout.canary_traffic_percent
    if canary_from is not None and percent > 0 and canary_from != model:
        stable = render_predictor(name=name, spec=spec, model=canary_from, image=image, mlflow_uri=mlflow_uri,
                                  mode=mode, peer_url_template=peer_url_template, audit=audit) \
            if mode == "Standard" \
            else predictor
        isvc_spec = canary_spec(stable=stable, canary=predictor, mode=mode, percent=percent)
    return {
        "apiVersion": INFERENCE_SERVICE.api_version,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": model_deployment_labels(name, model_name, model_version),
            "annotations": {
                DEPLOYMENT_MODE_ANNOTATION: KSERVE_MODE[mode],
                "medserve.io/model-uri": model.uri,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(RUNTIME_PORT),
                "prometheus.io/path": "/metrics",
            },
            "ownerReferences": [owner_reference(kind=KIND, name=name, uid=uid)],
        },
        "spec": isvc_spec,
    }


def mode_of(isvc: dict[str, Any] | None) -> DeploymentMode | None:
    """The deployment mode an existing InferenceService runs in: KServe's status, else its annotation."""
    if not isvc:
        return None
    named = (isvc.get("status") or {}).get("deploymentMode") or \
        ((isvc.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    return MODE_OF_ANNOTATION.get(str(named)) if named else None


_REMOVABLE_PREDICTOR_FIELDS: Final = ("canaryTrafficPercent", "name", "serviceAccountName", "imagePullSecrets",
                                      "nodeSelector", "tolerations")
"""Predictor fields the operator sets only sometimes: one left on the object must be seen as a difference
(a subset comparison cannot see a removal)."""


def inference_service_differs(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """`owned_differs`, and a field the operator set before and no longer renders (a canary, a pod field)."""
    have = actual.get("spec") or {}
    want = desired["spec"]
    if "canary" in have and "canary" not in want:
        return True
    have_predictor, want_predictor = have.get("predictor") or {}, want["predictor"]
    if any(k in have_predictor and k not in want_predictor for k in _REMOVABLE_PREDICTOR_FIELDS):
        return True
    return owned_differs(desired, actual)
