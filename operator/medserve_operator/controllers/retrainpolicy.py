"""The RetrainPolicy reconciler: schedule → CronJob, triggers → Job, finished Job → new model version.

The kopf handlers are thin: they hand the policy to `reconcile`, which parses the spec, reads the
ModelDeployment and the policy's Jobs, records a finished Job (finding the model version it registered
in MLflow by the `medserve.io/job-name` tag, and promoting it as `spec.promotion` says), evaluates the
triggers, applies the CronJob, and writes the status. A spec change, the operator's restart, the
periodic resync and every event on one of the policy's Jobs run the same idempotent function.

When a trigger fires:
- never while one of the policy's Jobs is active (its own or the CronJob's: they share the
  `medserve.io/retrain-policy` label, which is what is checked), and the CronJob is suspended while a
  Job runs, so that a scheduled run cannot overlap a triggered one;
- never inside `cooldown` after `status.lastTriggered` (a scheduled run counts as a trigger too);
- a trigger that persists is a level, not an edge: it starts one Job, then nothing until that Job has
  finished and the cooldown has passed. A failed Job therefore does not loop either.
Triggers are evaluated in the order drift, performance, query; the first that fires names the Job.

Drift is read from the ModelDeployment's `DriftDetected` condition (the drift evaluator's verdict).
Performance and query triggers go through `query_value(promql)`, which the operator builds when
Prometheus is configured; without it those triggers are reported as not evaluated, not silently ignored.

Promotion of a new version: `direct` pins the ModelDeployment's `spec.model` to it (the ModelDeployment
reconciler then rolls it out as a canary); `manual` only records it (Event `NewVersionAvailable`);
`abtest` closes the loop through an A/B test: it creates a challenger ModelDeployment on the new version
(the champion's spec, pinned to it) and an ABTest champion vs challenger from `promotion.abTest` with
`onConclusion.promote`, both owned by the policy, and records them in `status.abTest`
(`Promoted=False reason=ABTestRunning`). When the ABTest has concluded and acted, the policy records the
outcome — `Promoted=True reason=ABTestWon` (the ABTest moved the champion to the new version), or
`Promoted=False reason=ABTestLost`/`ABTestInconclusive` with the ABTest's statistics — and removes the
challenger. The concluded ABTest stays as the record (its graph sends all traffic to the champion). While
an ABTest runs, no trigger starts another Job.
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import kopf
from croniter import croniter

from medserve_operator import GROUP, VERSION
from medserve_operator.api import (
    MAX_NAME_LENGTH,
    RETRY_PROMOTION,
    RetrainPolicySpec,
    SpecError,
    parse_duration,
    parse_spec,
)
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry, RegistryError
from medserve_operator.clients.prometheus import PrometheusError
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers import render
from medserve_operator.kit import conditions
from medserve_operator.kit.memory import Logger, ObjectMemory

MEDSERVE_API = f"{GROUP}/{VERSION}"
RTP_PLURAL = "retrainpolicies"
MD_PLURAL = "modeldeployments"
AB_PLURAL = "abtests"
BATCH_API = "batch/v1"
JOB_NAME_TAG = "medserve.io/job-name"
CHALLENGER_OF_LABEL = "medserve.io/challenger-of"
TRIGGER_CONDITIONS = ("Scheduled", "TriggersReady", "Ready")
"""Conditions whose transitions become Events; Retraining, CoolingDown and Promoted get Events of their own
that say more (which Job, which version)."""

QueryValue = Callable[[str], Awaitable[float | None]]
"""Evaluates a PromQL instant query to one number (None: no data); raises PrometheusError when it cannot."""



def feedback_queries(deployment: str, window: str) -> tuple[str, str]:
    """PromQL for (feedback samples, accuracy) of a ModelDeployment's runtime over `window` (pure)."""
    selector = f'medserve_feedback_total{{model="{deployment}"}}'
    correct = f'medserve_feedback_total{{model="{deployment}",outcome="correct"}}'
    total = f"sum(increase({selector}[{window}]))"
    return total, f"sum(increase({correct}[{window}])) / {total}"


def next_schedule_time(schedule: str, time_zone: str | None, now: datetime.datetime) -> str:
    """When the CronJob next runs, as RFC 3339 UTC (pure); the schedule is read in `time_zone` (UTC if None)."""
    zone: datetime.tzinfo = zoneinfo.ZoneInfo(time_zone) if time_zone else datetime.UTC
    following = croniter(schedule, now.astimezone(zone)).get_next(datetime.datetime)
    return conditions.rfc3339(following)


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
            return "Succeeded", "", when
        if condition.get("type") == "Failed":
            reason = str(condition.get("reason") or "Failed")
            message = condition.get("message")
            return "Failed", f"{reason}: {message}" if message else reason, when
    return None


@dataclasses.dataclass
class Runtime:
    """What the handlers share: configuration, API/registry/Prometheus clients, per-object bookkeeping."""

    config: OperatorConfig
    kube: KubeClient
    registry: MlflowRegistry
    query_value: QueryValue | None
    """None when no Prometheus is configured: the performance and query triggers cannot be evaluated."""
    memory: ObjectMemory = dataclasses.field(default_factory=ObjectMemory)


@dataclasses.dataclass
class Outcome:
    """What one reconciliation found and did, before it becomes status."""

    now: datetime.datetime
    spec: RetrainPolicySpec | None = None
    spec_error: SpecError | None = None
    deployment_found: bool = True
    cronjob_error: str | None = None
    active_job: dict[str, Any] | None = None
    active_reason: str | None = None
    last_job: dict[str, Any] | None = None
    """A newly finished Job to record in status.lastJob."""
    last_triggered: dict[str, str] | None = None
    triggers: tuple[conditions.ConditionStatus, str, str] | None = None
    """The TriggersReady condition (status, reason, message), when this reconciliation knows it."""
    job_error: str | None = None
    promoted: tuple[conditions.ConditionStatus, str, str] | None = None
    ab_test: dict[str, Any] | None = None
    """status.abTest, when this reconciliation started an ABTest or recorded its outcome."""
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


async def reconcile(rt: Runtime, body: kopf.Body | dict[str, Any], logger: Logger) -> Outcome:
    """Bring the CronJob, the Jobs and the status in line with the RetrainPolicy `body`."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    outcome = Outcome(now=datetime.datetime.now(datetime.UTC).replace(microsecond=0))
    async with rt.memory.lock(uid):
        status = rt.memory.status(uid, body)
        try:
            spec = parse_spec(RetrainPolicySpec, dict(body.get("spec") or {}))
        except SpecError as exc:
            outcome.spec_error = exc
            await _write_status(rt, body, status, outcome)
            return outcome
        outcome.spec = spec
        deployment = await rt.kube.get(MEDSERVE_API, MD_PLURAL, namespace, spec.model_deployment)
        outcome.deployment_found = deployment is not None
        model_name = str(((deployment or {}).get("spec") or {}).get("model", {}).get("name") or "")

        jobs = [j for j in await rt.kube.list(BATCH_API, "jobs", namespace,
                                              label_selector=f"{render.RETRAIN_POLICY_LABEL}={name}")
                if not j["metadata"].get("deletionTimestamp")]
        active = [j for j in jobs if job_finish(j) is None]
        await _record_finished(rt, body, spec, deployment, jobs, status, outcome, logger)
        ab_running = await _follow_abtest(rt, namespace, outcome.ab_test or status.get("abTest"), outcome)
        if active:
            newest = max(active, key=lambda j: str(j["metadata"].get("creationTimestamp", "")))
            _note_active(newest, status, outcome)
        elif not ab_running:
            await _evaluate_triggers(rt, body, spec, deployment, model_name, status, outcome, logger)

        if spec.schedule is not None and deployment is not None:
            await _apply_cronjob(rt, body, spec, model_name, suspend=outcome.active_job is not None,
                                 outcome=outcome)
        elif spec.schedule is None and _had_schedule(status) and \
                await rt.kube.delete(BATCH_API, "cronjobs", namespace, name):
            outcome.events.append(("Normal", "CronJobDeleted", f"CronJob {name} deleted: the schedule was removed"))
        await _write_status(rt, body, status, outcome)
    for type_, reason, message in outcome.events:
        kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)
    return outcome


def _had_schedule(status: Mapping[str, Any]) -> bool:
    """Whether a CronJob may exist: not once status says there is no schedule (saves a DELETE per resync)."""
    scheduled = conditions.find(status.get("conditions"), "Scheduled")
    return scheduled is None or scheduled.get("reason") != "NoSchedule"


async def _record_finished(rt: Runtime, body: kopf.Body | dict[str, Any], spec: RetrainPolicySpec,
                           deployment: dict[str, Any] | None,
                           jobs: list[dict[str, Any]], status: dict[str, Any], outcome: Outcome,
                           logger: Logger) -> None:
    """Record the newest finished Job once: its result, the version it registered, and its promotion."""
    finished = [(job, found) for job in jobs if (found := job_finish(job)) is not None]
    if not finished:
        return
    job, (result, reason, finished_at) = max(finished, key=lambda pair: pair[1][2])
    last = status.get("lastJob") or {}
    if last.get("name") == job["metadata"]["name"] or (last.get("finishedAt") or "") > finished_at:
        return
    name = job["metadata"]["name"]
    record: dict[str, Any] = {"name": name, "result": result}
    if finished_at:
        record["finishedAt"] = finished_at
    if result == "Failed":
        record["reason"] = reason
        outcome.events.append(("Warning", "RetrainingFailed", f"Job {name} failed: {reason}"))
        outcome.last_job = record
        return
    model_name = (job["metadata"].get("annotations") or {}).get(render.MODEL_NAME_ANNOTATION, "")
    try:
        versions = await rt.registry.find_versions_by_tag(model_name, JOB_NAME_TAG, name) if model_name else []
    except RegistryError as exc:
        # Recorded on a later evaluation, once MLflow answers: the version must not be lost.
        logger.warning("Job %s succeeded but its model version cannot be looked up yet: %s", name, exc)
        outcome.job_error = f"Job {name} succeeded; looking up its model version failed: {exc}"
        return
    if not versions:
        record["reason"] = f"no version of model {model_name!r} is tagged {JOB_NAME_TAG}={name}"
        outcome.events.append(("Warning", "NoVersionRegistered", f"Job {name} succeeded but {record['reason']}"))
        outcome.last_job = record
        return
    version = versions[0].version
    record.update(modelVersion=version, reason=f"registered version {version} of model {model_name}")
    outcome.last_job = record
    outcome.events.append(("Normal", "RetrainingSucceeded",
                           f"Job {name} registered version {version} of model {model_name}"))
    await _promote(rt, body, spec, deployment, model_name, version, name, outcome)


async def _promote(rt: Runtime, body: kopf.Body | dict[str, Any], spec: RetrainPolicySpec,
                   deployment: dict[str, Any] | None, model_name: str, version: str, job: str,
                   outcome: Outcome) -> None:
    strategy, target = spec.promotion.strategy, spec.model_deployment
    if strategy == "manual":
        outcome.promoted = ("False", "ManualPromotion",
                            f"version {version} of {model_name} awaits promotion by hand: set spec.model.version "
                            f'to "{version}" on ModelDeployment {target}')
        outcome.events.append(("Normal", "NewVersionAvailable",
                               f"Job {job} registered version {version} of {model_name}; promotion is manual"))
        return
    if deployment is None:
        outcome.promoted = ("False", "ModelDeploymentNotFound",
                            f"version {version} cannot be deployed: ModelDeployment {target} does not exist")
        return
    if strategy == "abtest":
        await _start_abtest(rt, body, spec, deployment, model_name, version, outcome)
        return
    current = (deployment.get("spec") or {}).get("model") or {}
    if current.get("name") != model_name or current.get("version") != version or current.get("alias"):
        # A merge patch replaces the version and removes an alias in one write.
        await rt.kube.patch(MEDSERVE_API, MD_PLURAL, deployment["metadata"]["namespace"], target,
                            {"spec": {"model": {"name": model_name, "version": version, "alias": None}}})
    outcome.promoted = ("True", "DirectPromotion",
                        f"ModelDeployment {target} pinned to version {version} of {model_name} (rolled out as a "
                        "canary)")
    outcome.events.append(("Normal", "Promoted", f"ModelDeployment {target} now deploys version {version} of "
                                                  f"{model_name} (from Job {job})"))


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
        "apiVersion": MEDSERVE_API, "kind": "ModelDeployment",
        "metadata": {
            "name": derived_name(champion, f"-v{version}", MAX_NAME_LENGTH["ModelDeployment"]),
            "namespace": deployment["metadata"]["namespace"],
            "labels": {**render.MANAGED_BY, render.RETRAIN_POLICY_LABEL: policy, CHALLENGER_OF_LABEL: champion},
            "ownerReferences": [render.owner_reference(kind="RetrainPolicy", name=policy, uid=uid)],
        },
        "spec": spec,
    }


def render_abtest(*, policy: str, uid: str, namespace: str, spec: RetrainPolicySpec, challenger: str,
                  version: str) -> dict[str, Any]:
    """The ABTest champion vs challenger from `promotion.abTest`, promoting a winner (pure)."""
    template = spec.promotion.ab_test.model_dump(by_alias=True, exclude_none=True)
    return {
        "apiVersion": MEDSERVE_API, "kind": "ABTest",
        "metadata": {
            "name": derived_name(policy, f"-v{version}", MAX_NAME_LENGTH["ABTest"]),
            "namespace": namespace,
            "labels": {**render.MANAGED_BY, render.RETRAIN_POLICY_LABEL: policy},
            "ownerReferences": [render.owner_reference(kind="RetrainPolicy", name=policy, uid=uid)],
        },
        "spec": {"control": {"modelDeployment": spec.model_deployment}, "treatment": {"modelDeployment": challenger},
                 **template, "onConclusion": {"promote": True}},
    }


async def _start_abtest(rt: Runtime, body: kopf.Body | dict[str, Any], spec: RetrainPolicySpec,
                        deployment: dict[str, Any], model_name: str, version: str, outcome: Outcome) -> None:
    meta = body["metadata"]
    challenger = render_challenger(policy=meta["name"], uid=meta["uid"], deployment=deployment,
                                   model_name=model_name, version=version)
    name = challenger["metadata"]["name"]
    test = render_abtest(policy=meta["name"], uid=meta["uid"], namespace=meta["namespace"], spec=spec,
                         challenger=name, version=version)
    try:
        for plural, manifest in ((MD_PLURAL, challenger), (AB_PLURAL, test)):
            try:
                await rt.kube.create(MEDSERVE_API, plural, meta["namespace"], manifest)
            except ApiError as exc:
                if exc.status != 409:  # already there: an earlier reconciliation created it
                    raise
    except ApiError as exc:
        outcome.promoted = ("False", "ABTestFailed", f"version {version} cannot be A/B tested: {exc}")
        return
    outcome.ab_test = {"name": test["metadata"]["name"], "challenger": name, "modelVersion": version}
    outcome.promoted = ("False", "ABTestRunning",
                        f"ABTest {test['metadata']['name']} compares version {version} of {model_name} "
                        f"(ModelDeployment {name}) with {spec.model_deployment}")
    outcome.events.append(("Normal", "ABTestStarted",
                           f"created ModelDeployment {name} on version {version} and ABTest "
                           f"{test['metadata']['name']} ({spec.model_deployment} vs {name})"))


async def _follow_abtest(rt: Runtime, namespace: str, record: Mapping[str, Any] | None, outcome: Outcome) -> bool:
    """Record the outcome of the policy's ABTest once it has concluded and acted; True while it runs."""
    if not record or record.get("promoted") is not None:
        return False
    test = await rt.kube.get(MEDSERVE_API, AB_PLURAL, namespace, str(record["name"]))
    test_status = (test or {}).get("status") or {}
    acted = conditions.find(test_status.get("conditions"), "Promoted")
    if test is not None and (acted is None or acted.get("reason") in RETRY_PROMOTION):
        return True
    version, decision = record.get("modelVersion"), test_status.get("decision")
    if test is None:
        won, reason, message = False, "ABTestDeleted", f"ABTest {record['name']} was deleted before it decided"
    elif acted is not None and acted.get("status") == "True":
        won, reason, message = True, "ABTestWon", f"version {version} won ABTest {record['name']}: {acted['message']}"
    else:
        concluded = conditions.find(test_status.get("conditions"), "Concluded") or {}
        won, reason = False, "ABTestLost" if decision == "ControlBetter" else "ABTestInconclusive"
        message = f"version {version} is not promoted: ABTest {record['name']} decided {concluded.get('message')}"
    outcome.promoted = ("True" if won else "False", reason, message)
    outcome.ab_test = {**record, "promoted": won, **({"decision": decision} if decision else {})}
    outcome.events.append(("Normal", "Promoted" if won else "NotPromoted", message))
    if await rt.kube.delete(MEDSERVE_API, MD_PLURAL, namespace, str(record["challenger"])):
        outcome.events.append(("Normal", "ChallengerRemoved", f"ModelDeployment {record['challenger']} deleted"))
    return False


def _note_active(job: dict[str, Any], status: dict[str, Any], outcome: Outcome) -> None:
    meta = job["metadata"]
    started = (job.get("status") or {}).get("startTime")
    outcome.active_job = {"name": meta["name"], **({"startedAt": started} if started else {})}
    reason = (meta.get("annotations") or {}).get(render.TRIGGER_REASON_LABEL) or render.SCHEDULE_REASON
    outcome.active_reason = reason
    created = str(meta.get("creationTimestamp") or "")
    last = status.get("lastTriggered") or {}
    if created and created > str(last.get("time") or ""):
        # A Job the CronJob started (or one created before a restart lost the status write).
        outcome.last_triggered = {"time": created, "reason": reason}


async def _evaluate_triggers(rt: Runtime, body: kopf.Body | dict[str, Any], spec: RetrainPolicySpec,
                             deployment: dict[str, Any] | None, model_name: str, status: dict[str, Any],
                             outcome: Outcome, logger: Logger) -> None:
    triggers = spec.triggers
    configured = [kind for kind, on in (("drift", triggers.drift.enabled), ("performance", triggers.performance),
                                        ("query", triggers.query)) if on]
    if not configured:
        outcome.triggers = ("True", "NoTriggers", "only the schedule starts retraining jobs")
        return
    if deployment is None:
        outcome.triggers = ("False", "ModelDeploymentNotFound",
                            f"ModelDeployment {spec.model_deployment} does not exist: no trigger is evaluated")
        return
    if in_cooldown(status.get("lastTriggered"), spec.cooldown, outcome.now):
        return
    fired: tuple[str, str] | None = None
    problems: list[tuple[str, str]] = []
    if triggers.drift.enabled:
        drift = conditions.find(((deployment.get("status") or {}).get("conditions")), "DriftDetected")
        if drift is not None and drift.get("status") == "True":
            fired = ("Drift", f"ModelDeployment {spec.model_deployment} reports drift: {drift.get('message', '')}")
    for kind in ("performance", "query"):
        if fired is not None or kind not in configured:
            continue
        if rt.query_value is None:
            problems.append(("PrometheusNotConfigured",
                             f"the {kind} trigger is not evaluated: the operator has no Prometheus "
                             "(set MEDSERVE_PROMETHEUS_URL)"))
            continue
        try:
            fired = await (_performance(rt.query_value, spec) if kind == "performance"
                           else _query(rt.query_value, spec))
        except PrometheusError as exc:
            problems.append(("PrometheusUnavailable", f"the {kind} trigger is not evaluated: {exc}"))
        except ValueError as exc:
            problems.append(("UnsupportedMetric", f"spec.triggers.performance.metric: {exc}"))
    outcome.triggers = (("False", problems[0][0], "; ".join(message for _, message in problems)) if problems
                        else ("True", "Evaluated", f"evaluated: {', '.join(configured)}"))
    if fired is not None and model_name:
        await _start_job(rt, body, spec, model_name, fired, outcome, logger)
    elif fired is not None:
        outcome.job_error = f"ModelDeployment {spec.model_deployment} names no model: cannot retrain it"


async def _performance(query_value: QueryValue, spec: RetrainPolicySpec) -> tuple[str, str] | None:
    trigger = spec.triggers.performance
    assert trigger is not None
    if trigger.metric != "accuracy":
        raise ValueError(f"{trigger.metric!r} is not a metric the runtime reports from feedback; use accuracy")
    total_query, accuracy_query = feedback_queries(spec.model_deployment, trigger.window)
    samples = await query_value(total_query)
    if samples is None or samples < trigger.min_samples:
        return None
    accuracy = await query_value(accuracy_query)
    if accuracy is None or accuracy >= trigger.below:
        return None
    return "Performance", (f"accuracy {accuracy:.3f} over {trigger.window} ({samples:.0f} feedback samples) is "
                           f"below {trigger.below}")


async def _query(query_value: QueryValue, spec: RetrainPolicySpec) -> tuple[str, str] | None:
    trigger = spec.triggers.query
    assert trigger is not None
    value = await query_value(trigger.promql)
    if value is None or value <= trigger.above:
        return None
    return "Query", f"the query returned {value:g}, above {trigger.above:g}"


def in_cooldown(last_triggered: Mapping[str, Any] | None, cooldown: str, now: datetime.datetime) -> bool:
    """Whether `now` is within `cooldown` of the last trigger (pure)."""
    until = cooldown_until(last_triggered, cooldown)
    return until is not None and now < until


def cooldown_until(last_triggered: Mapping[str, Any] | None, cooldown: str) -> datetime.datetime | None:
    when = conditions.parse_time(str((last_triggered or {}).get("time") or ""))
    return None if when is None else when + datetime.timedelta(seconds=parse_duration(cooldown))


async def _start_job(rt: Runtime, body: kopf.Body | dict[str, Any], spec: RetrainPolicySpec, model_name: str,
                     fired: tuple[str, str], outcome: Outcome, logger: Logger) -> None:
    meta = body["metadata"]
    reason, detail = fired
    name = job_name(meta["name"], reason, outcome.now)
    desired = render.render_job(name=name, policy=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                                spec=spec, model_name=model_name, mlflow_uri=rt.config.runtime_mlflow_uri,
                                reason=reason)
    try:
        created = await rt.kube.create(BATCH_API, "jobs", meta["namespace"], desired)
    except ApiError as exc:
        logger.warning("Cannot create Job %s: %s", name, exc)
        outcome.job_error = f"cannot create Job {name}: {exc}"
        return
    started = str(created["metadata"].get("creationTimestamp") or conditions.rfc3339(outcome.now))
    outcome.last_triggered = {"time": started, "reason": reason}
    outcome.active_job = {"name": name}
    outcome.active_reason = reason
    outcome.events.append(("Normal", "RetrainingTriggered", f"{detail}; created Job {name}"))


async def _apply_cronjob(rt: Runtime, body: kopf.Body | dict[str, Any], spec: RetrainPolicySpec, model_name: str,
                         *, suspend: bool, outcome: Outcome) -> None:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    desired = render.render_cronjob(name=name, namespace=namespace, uid=meta["uid"], spec=spec,
                                    model_name=model_name, mlflow_uri=rt.config.runtime_mlflow_uri, suspend=suspend)
    try:
        current = await rt.kube.get(BATCH_API, "cronjobs", namespace, name)
        if current is None:
            await rt.kube.create(BATCH_API, "cronjobs", namespace, desired)
            outcome.events.append(("Normal", "CronJobCreated", f"CronJob {name} created: {spec.schedule!r}"))
        elif render.owned_differs(desired, current):
            await rt.kube.replace(BATCH_API, "cronjobs", namespace, render.updated(current, desired))
    except ApiError as exc:
        outcome.cronjob_error = f"CronJob {name} could not be applied: {exc}"


def compute_status(current: dict[str, Any], outcome: Outcome, *, generation: int) -> dict[str, Any]:
    """The new status from the current one and what this reconciliation found (pure)."""
    now = conditions.rfc3339(outcome.now)
    status = dict(current)
    status["observedGeneration"] = generation
    conds: list[dict[str, Any]] = list(status.get("conditions") or [])

    def put(type_: str, state: conditions.ConditionStatus, reason: str, message: str) -> None:
        nonlocal conds
        conds = conditions.set_condition(conds, type_, state, reason, message, generation=generation, now=now)

    spec = outcome.spec
    if outcome.spec_error is not None or spec is None:
        put("Ready", "False", "InvalidSpec", str(outcome.spec_error))
        status["conditions"] = conds
        return status

    if spec.schedule is None:
        status.pop("nextScheduleTime", None)
        put("Scheduled", "False", "NoSchedule", "no schedule: only triggers start retraining jobs")
    else:
        status["nextScheduleTime"] = next_schedule_time(spec.schedule, spec.time_zone, outcome.now)
        if not outcome.deployment_found:
            put("Scheduled", "False", "ModelDeploymentNotFound",
                f"ModelDeployment {spec.model_deployment} does not exist: no CronJob without its model")
        elif outcome.cronjob_error is not None:
            put("Scheduled", "False", "CronJobFailed", outcome.cronjob_error)
        else:
            zone = spec.time_zone or "UTC"
            put("Scheduled", "True", "CronJobReady", f"CronJob runs {spec.schedule!r} ({zone})")

    if outcome.triggers is not None:
        put("TriggersReady", *outcome.triggers)
    elif not outcome.deployment_found:
        put("TriggersReady", "False", "ModelDeploymentNotFound",
            f"ModelDeployment {spec.model_deployment} does not exist: no trigger is evaluated")
    elif conditions.find(conds, "TriggersReady") is None:
        put("TriggersReady", "Unknown", "NotEvaluated", "triggers are evaluated when no job runs and no cooldown")

    if outcome.last_triggered is not None:
        status["lastTriggered"] = outcome.last_triggered
    if outcome.last_job is not None:
        status["lastJob"] = outcome.last_job
    if outcome.active_job is not None:
        status["activeJob"] = outcome.active_job
        put("Retraining", "True", "JobRunning",
            f"Job {outcome.active_job['name']} ({outcome.active_reason}) is running")
    else:
        status.pop("activeJob", None)
        last = status.get("lastJob")
        if outcome.job_error is not None:
            put("Retraining", "False", "JobError", outcome.job_error)
        elif last:
            succeeded = last.get("result") == "Succeeded"
            put("Retraining", "False", "JobSucceeded" if succeeded else "JobFailed",
                f"Job {last['name']} {'succeeded' if succeeded else 'failed'}"
                f"{': ' + str(last['reason']) if last.get('reason') else ''}")
        else:
            put("Retraining", "False", "Idle", "no retraining job has run yet")

    until = cooldown_until(status.get("lastTriggered"), spec.cooldown)
    if until is not None and outcome.now < until:
        put("CoolingDown", "True", "Cooldown", f"no trigger starts a job before {conditions.rfc3339(until)}")
    else:
        put("CoolingDown", "False", "CooldownOver" if until is not None else "NeverTriggered",
            "a trigger may start a job")
    if outcome.promoted is not None:
        put("Promoted", *outcome.promoted)
    if outcome.ab_test is not None:
        status["abTest"] = outcome.ab_test

    required = ("Scheduled", "TriggersReady") if spec.schedule is not None else ("TriggersReady",)
    if spec.schedule is not None and outcome.triggers is not None and outcome.triggers[1] == "NoTriggers":
        required = ("Scheduled",)
    status["conditions"] = conditions.derive_ready(conds, required, generation=generation, now=now)
    return status


async def _write_status(rt: Runtime, body: kopf.Body | dict[str, Any], current: dict[str, Any],
                        outcome: Outcome) -> None:
    new = compute_status(current, outcome, generation=int(body["metadata"].get("generation", 1)))
    await rt.memory.write_status(rt.kube, MEDSERVE_API, RTP_PLURAL, body, current, new, events=outcome.events,
                                 announce=TRIGGER_CONDITIONS)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the RetrainPolicy handlers into `registry` (nothing is registered at import time)."""
    resource = (GROUP, VERSION, RTP_PLURAL)

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, field="spec", registry=registry)
    async def rtp_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        outcome = await reconcile(memo.retrain, body, logger)
        if outcome.spec_error is not None:
            raise kopf.PermanentError(f"invalid spec: {outcome.spec_error}")

    @kopf.timer(*resource, interval=config.resync_seconds, initial_delay=config.resync_seconds,
                registry=registry)
    async def rtp_resync(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        await reconcile(memo.retrain, body, logger)

    @kopf.on.delete(*resource, optional=True, registry=registry)
    async def rtp_deleted(uid: str, memo: kopf.Memo, **_: Any) -> None:
        memo.retrain.memory.forget(uid)

    @kopf.on.event("batch", "v1", "jobs", registry=registry,
                   labels={"app.kubernetes.io/managed-by": "medserve", render.RETRAIN_POLICY_LABEL: kopf.PRESENT})
    @kopf.on.event(GROUP, VERSION, AB_PLURAL, registry=registry,
                   labels={"app.kubernetes.io/managed-by": "medserve", render.RETRAIN_POLICY_LABEL: kopf.PRESENT})
    async def child_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        # The label, not the owner: a Job the CronJob started is owned by the CronJob.
        rt: Runtime = memo.retrain
        policy = body.metadata.labels.get(render.RETRAIN_POLICY_LABEL)
        parent = await rt.kube.get(MEDSERVE_API, RTP_PLURAL, body.metadata.namespace, str(policy))
        if parent is not None and not parent["metadata"].get("deletionTimestamp"):
            await reconcile(rt, parent, logger)
