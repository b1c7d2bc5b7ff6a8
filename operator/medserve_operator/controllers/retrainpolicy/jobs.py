"""The RetrainPolicy's Jobs and CronJob: reading a Job's end, recording a finished one (and the model version
it registered, found in MLflow by the `medserve.io/job-name` tag), starting a triggered one, and applying the
CronJob of a schedule (suspended while a triggered Job runs, so a scheduled run cannot overlap it).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from medserve_operator.api import retrainpolicy as rp
from medserve_operator.api.retrainpolicy import RetrainPolicySpec
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry, RegistryError
from medserve_operator.controllers.retrainpolicy import render
from medserve_operator.controllers.retrainpolicy.status import Outcome
from medserve_operator.controllers.retrainpolicy.triggers import Fired
from medserve_operator.kit import conditions
from medserve_operator.kit.apply import apply_child, get_child
from medserve_operator.kit.manifest import RETRAIN_POLICY_LABEL
from medserve_operator.kit.reconciler import Context

JOB_NAME_TAG = "medserve.io/job-name"
"""The MLflow model version tag by which a retraining Job's registered version is found."""


def job_name(policy: str, reason: str, now: datetime.datetime) -> str:
    """`<policy>-<reason>-<unix seconds>`: at most 40 + 12 + 11 = 63 characters, the limit of a Job name."""
    return f"{policy}-{reason.lower()}-{int(now.timestamp())}"


def job_finish(job: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(result, reason, finishedAt) of a finished Job, from its Complete/Failed condition; None while active."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        when = str(status.get("completionTime") or condition.get("lastTransitionTime") or "")
        if condition.get("type") == "Complete":
            return rp.SUCCEEDED, "", when
        if condition.get("type") == "Failed":
            reason = str(condition.get("reason") or "Failed")
            message = condition.get("message")
            return rp.FAILED, f"{reason}: {message}" if message else reason, when
    return None


async def list_jobs(kube: KubeClient, ctx: Context) -> list[dict[str, Any]]:
    """The policy's Jobs (its own and its CronJob's), those being deleted left out."""
    return [j for j in await kube.list(render.JOBS.api_version, render.JOBS.plural, ctx.namespace,
                                       label_selector=f"{RETRAIN_POLICY_LABEL}={ctx.name}")
            if not j["metadata"].get("deletionTimestamp")]


async def record_finished(registry: MlflowRegistry, ctx: Context, jobs: list[dict[str, Any]],
                          outcome: Outcome) -> tuple[str, str, str] | None:
    """Record the newest finished Job once: its result and the version it registered.

    Returns (model name, version, job) of a newly registered version, for promotion.
    """
    finished = [(job, found) for job in jobs if (found := job_finish(job)) is not None]
    if not finished:
        return None
    job, (result, reason, finished_at) = max(finished, key=lambda pair: pair[1][2])
    last = ctx.status.get("lastJob") or {}
    if last.get("name") == job["metadata"]["name"] or (last.get("finishedAt") or "") > finished_at:
        return None
    name = job["metadata"]["name"]
    record: dict[str, Any] = {"name": name, "result": result}
    if finished_at:
        record["finishedAt"] = finished_at
    if result == rp.FAILED:
        record["reason"] = reason
        outcome.event(rp.RETRAINING_FAILED, f"Job {name} failed: {reason}", type_="Warning")
        outcome.last_job = record
        return None
    model_name = (job["metadata"].get("annotations") or {}).get(render.MODEL_NAME_ANNOTATION, "")
    try:
        versions = await registry.find_versions_by_tag(model_name, JOB_NAME_TAG, name) if model_name else []
    except RegistryError as exc:
        # Recorded on a later evaluation, once MLflow answers: the version must not be lost.
        ctx.logger.warning("Job %s succeeded but its model version cannot be looked up yet: %s", name, exc)
        outcome.job_error = f"Job {name} succeeded; looking up its model version failed: {exc}"
        return None
    if not versions:
        record["reason"] = f"no version of model {model_name!r} is tagged {JOB_NAME_TAG}={name}"
        outcome.event(rp.NO_VERSION_REGISTERED, f"Job {name} succeeded but {record['reason']}", type_="Warning")
        outcome.last_job = record
        return None
    version = versions[0].version
    record.update(modelVersion=version, reason=f"registered version {version} of model {model_name}")
    outcome.last_job = record
    outcome.event(rp.RETRAINING_SUCCEEDED, f"Job {name} registered version {version} of model {model_name}")
    return model_name, version, name


def note_active(jobs: list[dict[str, Any]], ctx: Context, outcome: Outcome) -> bool:
    """Record the newest active Job, if one runs (then no trigger may start another); True when one does."""
    active = [j for j in jobs if job_finish(j) is None]
    if not active:
        return False
    job = max(active, key=lambda j: str(j["metadata"].get("creationTimestamp", "")))
    meta = job["metadata"]
    started = (job.get("status") or {}).get("startTime")
    outcome.active_job = {"name": meta["name"], **({"startedAt": started} if started else {})}
    reason = (meta.get("annotations") or {}).get(render.TRIGGER_REASON_LABEL) or render.SCHEDULE_REASON
    outcome.active_reason = reason
    created = str(meta.get("creationTimestamp") or "")
    last = ctx.status.get("lastTriggered") or {}
    if created and created > str(last.get("time") or ""):
        # A Job the CronJob started (or one created before a restart lost the status write).
        outcome.last_triggered = {"time": created, "reason": reason}
    return True


async def start_job(kube: KubeClient, ctx: Context, spec: RetrainPolicySpec, model_name: str, mlflow_uri: str,
                    fired: Fired, outcome: Outcome) -> None:
    name = job_name(ctx.name, fired.reason, outcome.now)
    desired = render.render_job(name=name, policy=ctx.name, namespace=ctx.namespace, uid=ctx.uid, spec=spec,
                                model_name=model_name, mlflow_uri=mlflow_uri, reason=fired.reason)
    try:
        created = await kube.create(render.JOBS.api_version, render.JOBS.plural, ctx.namespace, desired)
    except ApiError as exc:
        ctx.logger.warning("Cannot create Job %s: %s", name, exc)
        outcome.job_error = f"cannot create Job {name}: {exc}"
        return
    started = str(created["metadata"].get("creationTimestamp") or conditions.rfc3339(outcome.now))
    outcome.last_triggered = {"time": started, "reason": fired.reason}
    outcome.active_job = {"name": name}
    outcome.active_reason = fired.reason
    outcome.event(rp.RETRAINING_TRIGGERED, f"{fired.detail}; created Job {name}")


async def apply_cronjob(kube: KubeClient, ctx: Context, spec: RetrainPolicySpec, model_name: str, mlflow_uri: str,
                        *, suspend: bool, outcome: Outcome) -> None:
    desired = render.render_cronjob(name=ctx.name, namespace=ctx.namespace, uid=ctx.uid, spec=spec,
                                    model_name=model_name, mlflow_uri=mlflow_uri, suspend=suspend)
    try:
        current = await get_child(kube, render.CRONJOBS, ctx.namespace, ctx.name)
        applied = await apply_child(kube, render.CRONJOBS, desired, current)
    except ApiError as exc:
        outcome.cronjob_error = f"CronJob {ctx.name} could not be applied: {exc}"
        return
    if applied.created:
        outcome.event(rp.CRONJOB_CREATED, f"CronJob {ctx.name} created: {spec.schedule!r}")


async def delete_cronjob(kube: KubeClient, ctx: Context, outcome: Outcome) -> None:
    if await kube.delete(render.CRONJOBS.api_version, render.CRONJOBS.plural, ctx.namespace, ctx.name):
        outcome.event(rp.CRONJOB_DELETED, f"CronJob {ctx.name} deleted: the schedule was removed")
