"""Pure renderers: a parsed spec in, a Kubernetes manifest (a plain dict) out.

Nothing here talks to a cluster or a server; the reconcilers call these and apply the result. Tests
assert on the dicts directly and validate them against the real schemas.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from medserve_operator import API_VERSION
from medserve_operator.api import ModelDeploymentSpec, RetrainPolicySpec

RUNTIME_PORT = 8080
API_KEYS_DIR = "/etc/medserve/api-keys"
AUDIT_DIR = "/var/log/medserve"
MANAGED_BY = {"app.kubernetes.io/managed-by": "medserve", "app.kubernetes.io/part-of": "medserve"}

RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def owner_reference(*, kind: str, name: str, uid: str, api_version: str = API_VERSION) -> dict[str, Any]:
    """The controller owner reference that makes the API server garbage-collect a child with its parent."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def label_value(value: str) -> str:
    """A string made safe as a label value: at most 63 characters of [A-Za-z0-9._-], alphanumeric ends."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)[:63]
    return cleaned.strip("._-")


def model_deployment_labels(name: str, model_name: str, model_version: str) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "medserve-model",
        "app.kubernetes.io/instance": name,
        "medserve.io/model-deployment": name,
        "medserve.io/model-name": label_value(model_name),
        "medserve.io/model-version": label_value(model_version),
    }


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
    if security.audit_log:
        args.append(f"--audit_log={AUDIT_DIR}/audit.jsonl")
    return args


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
) -> dict[str, Any]:
    """A KServe v1beta1 InferenceService whose predictor runs the medserve model runtime.

    `canary` keeps the previous revision serving and sends `rollout.canaryTrafficPercent` of the
    traffic to this one, which is how KServe rolls out a new model version.
    """
    model_uri = f"models:/{model_name}/{model_version}"
    scaling, runtime = spec.scaling, spec.runtime
    resources: dict[str, Any] = {k: dict(v) for k, v in runtime.resources.model_dump(by_alias=True).items() if v}
    if runtime.device == "gpu":
        limits = resources.setdefault("limits", {})
        limits.setdefault("nvidia.com/gpu", 1)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.security.audit_log:
        volumes.append({"name": "audit", "emptyDir": {}})
        mounts.append({"name": "audit", "mountPath": AUDIT_DIR})
    if spec.security.api_key_secret_ref is not None:
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.security.api_key_secret_ref.name,
                                                        "defaultMode": 0o440}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": image,
        "args": runtime_args(name, spec, model_uri),
        "env": [
            {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri},
            {"name": "MEDSERVE_MODEL_DEPLOYMENT", "value": name},
            {"name": "MEDSERVE_MODEL_VERSION", "value": model_version},
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
        "apiVersion": "serving.kserve.io/v1beta1",
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
            "ownerReferences": [owner_reference(kind="ModelDeployment", name=name, uid=uid)],
        },
        "spec": {"predictor": predictor},
    }


def owned_differs(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Whether applying `desired` (a child the operator renders) would change `actual`.

    Compares only what the operator owns: our labels and annotations, the owner reference, and the spec as a
    subset (the API server adds defaults, which are ignored; a hand edit is put back). A field the spec no
    longer has is caught where it matters: a CronJob carries its template hash as an annotation, and an
    InferenceService's left-over canary setting is checked by `inference_service_differs`.
    """
    meta = actual.get("metadata", {})
    for field in ("labels", "annotations"):
        have = meta.get(field) or {}
        if any(have.get(k) != v for k, v in desired["metadata"][field].items()):
            return True
    if desired["metadata"]["ownerReferences"] != meta.get("ownerReferences"):
        return True
    return not _contains(actual.get("spec") or {}, desired["spec"])


def inference_service_differs(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """`owned_differs`, and a canary setting that should be gone (a subset check cannot see a removal)."""
    canary_left = "canaryTrafficPercent" in ((actual.get("spec") or {}).get("predictor") or {}) and \
        "canaryTrafficPercent" not in desired["spec"]["predictor"]
    return canary_left or owned_differs(desired, actual)


def updated(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """`current` with what the operator owns replaced by `desired`'s: labels and annotations merged over the
    ones others set, the owner reference and the spec replaced (what a PUT sends)."""
    meta, want = current["metadata"], desired["metadata"]
    return {**current,
            "metadata": {**meta, "labels": {**(meta.get("labels") or {}), **want["labels"]},
                         "annotations": {**(meta.get("annotations") or {}), **want["annotations"]},
                         "ownerReferences": want["ownerReferences"]},
            "spec": desired["spec"]}


def _contains(actual: Any, desired: Any) -> bool:
    """Whether every value set in `desired` is present and equal in `actual` (recursively)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(actual) == len(desired) and all(
            _contains(a, d) for a, d in zip(actual, desired, strict=True))
    return bool(actual == desired)


# --- A/B tests: KServe v1alpha1 InferenceGraph ------------------------------------------------------------

ABTEST_LABEL = "medserve.io/abtest"


def render_inference_graph(*, name: str, namespace: str, uid: str, control_service: str,
                           treatment_service: str | None, treatment_percent: int) -> dict[str, Any]:
    """A KServe InferenceGraph whose root Splitter sends `treatment_percent` of the requests to the
    treatment's InferenceService and the rest to the control's, owned by the ABTest `name`.

    `treatment_service=None` routes everything to the control (a concluded test keeps its endpoint).
    """
    steps: list[dict[str, Any]] = [{"name": "control", "serviceName": control_service,
                                    "weight": 100 if treatment_service is None else 100 - treatment_percent}]
    if treatment_service is not None:
        steps.append({"name": "treatment", "serviceName": treatment_service, "weight": treatment_percent})
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, "app.kubernetes.io/name": "medserve-abtest", "app.kubernetes.io/instance": name,
                       ABTEST_LABEL: name},
            "annotations": {},
            "ownerReferences": [owner_reference(kind="ABTest", name=name, uid=uid)],
        },
        "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": steps}}},
    }


# --- retraining: batch/v1 CronJob and Job ------------------------------------------------------------

RETRAIN_POLICY_LABEL = "medserve.io/retrain-policy"
TRIGGER_REASON_LABEL = "medserve.io/trigger-reason"
MODEL_NAME_ANNOTATION = "medserve.io/model-name"
TEMPLATE_HASH_ANNOTATION = "medserve.io/template-hash"
JOB_NAME_POD_LABEL = "batch.kubernetes.io/job-name"
SCHEDULE_REASON = "Schedule"
TRAINING_CONTAINER = "train"
RESERVED_JOB_ENV = ("MLFLOW_TRACKING_URI", "MEDSERVE_MODEL_NAME", "MEDSERVE_TRIGGER_REASON", "MEDSERVE_JOB_NAME")
"""The variables every retraining container gets from the operator; the spec's `job.env` cannot override them
(they are the contract by which the operator finds the version a Job registered)."""
CRONJOB_STARTING_DEADLINE_SECONDS = 300
"""A scheduled run missed by more than this (the CronJob was suspended while a triggered Job ran) is skipped
rather than started late, right after the Job that made it wait."""


def retrain_labels(policy: str, deployment: str, reason: str) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "medserve-retrain",
        "app.kubernetes.io/instance": policy,
        RETRAIN_POLICY_LABEL: policy,
        "medserve.io/model-deployment": deployment,
        TRIGGER_REASON_LABEL: label_value(reason),
    }


def render_job_template(*, policy: str, spec: RetrainPolicySpec, model_name: str, mlflow_uri: str,
                        reason: str = SCHEDULE_REASON) -> dict[str, Any]:
    """The `jobTemplate` of a RetrainPolicy: the Job metadata and spec its CronJob and its triggers share.

    The Job's own name reaches the container through the downward API (the pod label the Job controller
    sets), so that one template serves the CronJob, whose Job names only the CronJob controller knows.
    """
    job = spec.job
    labels = retrain_labels(policy, spec.model_deployment, reason)
    annotations = {RETRAIN_POLICY_LABEL: policy, TRIGGER_REASON_LABEL: reason, MODEL_NAME_ANNOTATION: model_name}
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri},
        {"name": "MEDSERVE_MODEL_NAME", "value": model_name},
        {"name": "MEDSERVE_TRIGGER_REASON", "value": reason},
        {"name": "MEDSERVE_JOB_NAME",
         "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_POD_LABEL}']"}}},
    ]
    env.extend({"name": e.name, "value": e.value} for e in job.env if e.name not in RESERVED_JOB_ENV)
    container: dict[str, Any] = {
        "name": TRAINING_CONTAINER,
        "image": job.image,
        "env": env,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if job.command:
        container["command"] = list(job.command)
    if job.args:
        container["args"] = list(job.args)
    resources: dict[str, Any] = {k: dict(v) for k, v in job.resources.model_dump(by_alias=True).items() if v}
    if resources:
        container["resources"] = resources
    return {
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": job.active_deadline_seconds,
            "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                "spec": {
                    # A failed pod counts against backoffLimit; the Job, not the kubelet, decides on retries.
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": RESTRICTED_POD_SECURITY,
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def render_cronjob(*, name: str, namespace: str, uid: str, spec: RetrainPolicySpec, model_name: str,
                   mlflow_uri: str, suspend: bool = False) -> dict[str, Any]:
    """The `batch/v1` CronJob of a RetrainPolicy with a schedule (named like the policy, owned by it).

    `concurrencyPolicy: Forbid` keeps the CronJob from overlapping itself; `suspend` is set while a
    triggered Job runs, so that a scheduled run cannot overlap that one either.
    """
    if spec.schedule is None:
        raise ValueError("spec.schedule: a CronJob needs a schedule")
    template = render_job_template(policy=name, spec=spec, model_name=model_name, mlflow_uri=mlflow_uri)
    cron_spec: dict[str, Any] = {
        "schedule": spec.schedule,
        "concurrencyPolicy": "Forbid",
        "suspend": suspend,
        "startingDeadlineSeconds": CRONJOB_STARTING_DEADLINE_SECONDS,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": template,
    }
    if spec.time_zone:
        cron_spec["timeZone"] = spec.time_zone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": retrain_labels(name, spec.model_deployment, SCHEDULE_REASON),
            "annotations": {MODEL_NAME_ANNOTATION: model_name, TEMPLATE_HASH_ANNOTATION: _spec_hash(cron_spec)},
            "ownerReferences": [owner_reference(kind="RetrainPolicy", name=name, uid=uid)],
        },
        "spec": cron_spec,
    }


def render_job(*, name: str, policy: str, namespace: str, uid: str, spec: RetrainPolicySpec, model_name: str,
               mlflow_uri: str, reason: str) -> dict[str, Any]:
    """A `batch/v1` Job from the policy's job template, as `kubectl create job --from=cronjob/...` makes one,
    but owned by the RetrainPolicy (it exists without a schedule) and carrying the trigger `reason`."""
    template = render_job_template(policy=policy, spec=spec, model_name=model_name, mlflow_uri=mlflow_uri,
                                   reason=reason)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [owner_reference(kind="RetrainPolicy", name=policy, uid=uid)],
        },
        "spec": template["spec"],
    }


def _spec_hash(spec: dict[str, Any]) -> str:
    # `suspend` flips with every triggered Job; it is not part of what the user wrote.
    owned = {k: v for k, v in spec.items() if k != "suspend"}
    return hashlib.sha256(json.dumps(owned, sort_keys=True).encode()).hexdigest()[:16]
