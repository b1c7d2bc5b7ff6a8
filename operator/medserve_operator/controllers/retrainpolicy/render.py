"""Pure builders of a RetrainPolicy's children: the batch/v1 CronJob and Jobs that retrain, and the challenger
ModelDeployment and ABTest of promotion strategy abtest.

A parsed spec in, a manifest (a plain dict) out; nothing here talks to a cluster.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from medserve_operator.api import abtest as ab
from medserve_operator.api import modeldeployment as md
from medserve_operator.api import retrainpolicy as rp
from medserve_operator.api.common import API_VERSION, MAX_NAME_LENGTH
from medserve_operator.api.retrainpolicy import RetrainPolicySpec
from medserve_operator.kit.apply import ChildKind
from medserve_operator.kit.manifest import (
    MANAGED_BY,
    MODEL_DEPLOYMENT_LABEL,
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    RETRAIN_POLICY_LABEL,
    app_labels,
    label_value,
    owner_reference,
)

JOBS: Final = ChildKind("batch/v1", "jobs")
CRONJOBS: Final = ChildKind("batch/v1", "cronjobs")
CHALLENGER_OF_LABEL: Final = "medserve.io/challenger-of"
TRIGGER_REASON_LABEL = "medserve.io/trigger-reason"
MODEL_NAME_ANNOTATION = "medserve.io/model-name"
TEMPLATE_HASH_ANNOTATION = "medserve.io/template-hash"
JOB_NAME_POD_LABEL = "batch.kubernetes.io/job-name"
SCHEDULE_REASON: Final = rp.SCHEDULE
TRAINING_CONTAINER = "train"
RESERVED_JOB_ENV = ("MLFLOW_TRACKING_URI", "MEDSERVE_MODEL_NAME", "MEDSERVE_TRIGGER_REASON", "MEDSERVE_JOB_NAME")
"""The variables every retraining container gets from the operator; the spec's `job.env` cannot override them
(they are the contract by which the operator finds the version a Job registered)."""
CRONJOB_STARTING_DEADLINE_SECONDS = 300
"""A scheduled run missed by more than this (the CronJob was suspended while a triggered Job ran) is skipped
rather than started late, right after the Job that made it wait."""


def retrain_labels(policy: str, deployment: str, reason: str) -> dict[str, str]:
    return app_labels("medserve-retrain", policy, **{
        RETRAIN_POLICY_LABEL: policy,
        MODEL_DEPLOYMENT_LABEL: deployment,
        TRIGGER_REASON_LABEL: label_value(reason),
    })


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
        "apiVersion": CRONJOBS.api_version,
        "kind": "CronJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": retrain_labels(name, spec.model_deployment, SCHEDULE_REASON),
            "annotations": {MODEL_NAME_ANNOTATION: model_name, TEMPLATE_HASH_ANNOTATION: _spec_hash(cron_spec)},
            "ownerReferences": [owner_reference(kind=rp.KIND, name=name, uid=uid)],
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
        "apiVersion": JOBS.api_version,
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [owner_reference(kind=rp.KIND, name=policy, uid=uid)],
        },
        "spec": template["spec"],
    }


def _spec_hash(spec: dict[str, Any]) -> str:
    # `suspend` flips with every triggered Job; it is not part of what the user wrote.
    owned = {k: v for k, v in spec.items() if k != "suspend"}
    return hashlib.sha256(json.dumps(owned, sort_keys=True).encode()).hexdigest()[:16]


def derived_name(base: str, suffix: str, limit: int) -> str:
    """`base` + `suffix`, `base` cut so the whole fits in `limit` characters (pure)."""
    return f"{base[:limit - len(suffix)].rstrip('-')}{suffix}"


def render_challenger(*, policy: str, uid: str, deployment: dict[str, Any], model_name: str,
                      version: str) -> dict[str, Any]:
    """The challenger ModelDeployment: the champion's spec, pinned to the retrained `version` (pure)."""
    champion = deployment["metadata"]["name"]
    spec = dict(deployment.get("spec") or {})
    spec["model"] = {"name": model_name, "version": version}
    return {
        "apiVersion": API_VERSION, "kind": md.KIND,
        "metadata": {
            "name": derived_name(champion, f"-v{version}", MAX_NAME_LENGTH[md.KIND]),
            "namespace": deployment["metadata"]["namespace"],
            "labels": {**MANAGED_BY, RETRAIN_POLICY_LABEL: policy, CHALLENGER_OF_LABEL: champion},
            "ownerReferences": [owner_reference(kind=rp.KIND, name=policy, uid=uid)],
        },
        "spec": spec,
    }


def render_abtest(*, policy: str, uid: str, namespace: str, spec: RetrainPolicySpec, challenger: str,
                  version: str) -> dict[str, Any]:
    """The ABTest champion vs challenger from `promotion.abTest`, promoting a winner; it pins a champion that
    pins a version only when `promotion.pinVersion` says so (pure)."""
    template = spec.promotion.ab_test.model_dump(by_alias=True, exclude_none=True)
    return {
        "apiVersion": API_VERSION, "kind": ab.KIND,
        "metadata": {
            "name": derived_name(policy, f"-v{version}", MAX_NAME_LENGTH[ab.KIND]),
            "namespace": namespace,
            "labels": {**MANAGED_BY, RETRAIN_POLICY_LABEL: policy},
            "ownerReferences": [owner_reference(kind=rp.KIND, name=policy, uid=uid)],
        },
        "spec": {"control": {"modelDeployment": spec.model_deployment}, "treatment": {"modelDeployment": challenger},
                 **template,
                 "onConclusion": {"promote": True, "pinVersion": spec.promotion.pin_version}},
    }
