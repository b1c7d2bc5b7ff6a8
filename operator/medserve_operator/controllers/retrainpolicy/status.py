"""The RetrainPolicy's status, serialised in one place: from what a reconciliation found (`Outcome`) to
`status` (pure).
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from collections.abc import Mapping
from typing import Any

from croniter import croniter

from medserve_operator.api import retrainpolicy as rp
from medserve_operator.api.common import MODEL_DEPLOYMENT_NOT_FOUND
from medserve_operator.api.retrainpolicy import RetrainPolicySpec
from medserve_operator.controllers.retrainpolicy.triggers import cooldown_until
from medserve_operator.kit import conditions, reconciler
from medserve_operator.kit import status as kit_status
from medserve_operator.kit.conditions import Check, Conditions


@dataclasses.dataclass(kw_only=True)
class Outcome(reconciler.Outcome):
    """What one reconciliation found and did, before it becomes status."""

    now: datetime.datetime
    spec: RetrainPolicySpec | None = None
    deployment_found: bool = True
    cronjob_error: str | None = None
    active_job: dict[str, Any] | None = None
    active_reason: str | None = None
    last_job: dict[str, Any] | None = None
    """A newly finished Job to record in status.lastJob."""
    last_triggered: dict[str, str] | None = None
    triggers: Check | None = None
    """The TriggersReady condition, when this reconciliation knows it."""
    job_error: str | None = None
    promoted: Check | None = None
    ab_test: dict[str, Any] | None = None
    """status.abTest, when this reconciliation started an ABTest or recorded its outcome."""
    recommendation: dict[str, Any] | None = None
    """status.recommendation, set with a Promoted=False reason=PromotionRecommended."""


def next_schedule_time(schedule: str, time_zone: str | None, now: datetime.datetime) -> str:
    """When the CronJob next runs, as RFC 3339 UTC (pure); the schedule is read in `time_zone` (UTC if None)."""
    zone: datetime.tzinfo = zoneinfo.ZoneInfo(time_zone) if time_zone else datetime.UTC
    following = croniter(schedule, now.astimezone(zone)).get_next(datetime.datetime)
    return conditions.rfc3339(following)


def had_schedule(status: Mapping[str, Any]) -> bool:
    """Whether a CronJob may exist: not once status says there is no schedule (saves a DELETE per resync)."""
    scheduled = conditions.find(status.get("conditions"), rp.SCHEDULED)
    return scheduled is None or scheduled.get("reason") != rp.NO_SCHEDULE


def compute_status(current: dict[str, Any], outcome: Outcome, *, generation: int) -> dict[str, Any]:
    """The new status from the current one and what this reconciliation found (pure)."""
    now = conditions.rfc3339(outcome.now)
    spec = outcome.spec
    if outcome.spec_error is not None or spec is None:
        return kit_status.invalid_spec(current, outcome.spec_error or ValueError("no spec"), generation=generation,
                                       now=now)
    status = dict(current)
    status["observedGeneration"] = generation
    conds = Conditions(status.get("conditions"), generation=generation, now=now)

    if spec.schedule is None:
        status.pop("nextScheduleTime", None)
        conds.put(rp.SCHEDULED, "False", rp.NO_SCHEDULE, "no schedule: only triggers start retraining jobs")
    else:
        status["nextScheduleTime"] = next_schedule_time(spec.schedule, spec.time_zone, outcome.now)
        if not outcome.deployment_found:
            conds.put(rp.SCHEDULED, "False", MODEL_DEPLOYMENT_NOT_FOUND,
                      f"ModelDeployment {spec.model_deployment} does not exist: no CronJob without its model")
        elif outcome.cronjob_error is not None:
            conds.put(rp.SCHEDULED, "False", rp.CRONJOB_FAILED, outcome.cronjob_error)
        else:
            zone = spec.time_zone or "UTC"
            conds.put(rp.SCHEDULED, "True", rp.CRONJOB_READY, f"CronJob runs {spec.schedule!r} ({zone})")

    if outcome.triggers is not None:
        conds.put(rp.TRIGGERS_READY, *outcome.triggers)
    elif not outcome.deployment_found:
        conds.put(rp.TRIGGERS_READY, "False", MODEL_DEPLOYMENT_NOT_FOUND,
                  f"ModelDeployment {spec.model_deployment} does not exist: no trigger is evaluated")
    elif conds.find(rp.TRIGGERS_READY) is None:
        conds.put(rp.TRIGGERS_READY, "Unknown", rp.NOT_EVALUATED,
                  "triggers are evaluated when no job runs and no cooldown")

    if outcome.last_triggered is not None:
        status["lastTriggered"] = outcome.last_triggered
    if outcome.last_job is not None:
        status["lastJob"] = outcome.last_job
    if outcome.active_job is not None:
        status["activeJob"] = outcome.active_job
        conds.put(rp.RETRAINING, "True", rp.JOB_RUNNING,
                  f"Job {outcome.active_job['name']} ({outcome.active_reason}) is running")
    else:
        status.pop("activeJob", None)
        last = status.get("lastJob")
        if outcome.job_error is not None:
            conds.put(rp.RETRAINING, "False", rp.JOB_ERROR, outcome.job_error)
        elif last:
            succeeded = last.get("result") == rp.SUCCEEDED
            conds.put(rp.RETRAINING, "False", rp.JOB_SUCCEEDED if succeeded else rp.JOB_FAILED,
                      f"Job {last['name']} {'succeeded' if succeeded else 'failed'}"
                      f"{': ' + str(last['reason']) if last.get('reason') else ''}")
        else:
            conds.put(rp.RETRAINING, "False", rp.IDLE, "no retraining job has run yet")

    until = cooldown_until(status.get("lastTriggered"), spec.cooldown)
    if until is not None and outcome.now < until:
        conds.put(rp.COOLING_DOWN, "True", rp.COOLDOWN, f"no trigger starts a job before {conditions.rfc3339(until)}")
    else:
        conds.put(rp.COOLING_DOWN, "False", rp.COOLDOWN_OVER if until is not None else rp.NEVER_TRIGGERED,
                  "a trigger may start a job")
    if outcome.promoted is not None:
        conds.put(rp.PROMOTED, *outcome.promoted)
        if outcome.recommendation is not None:
            status["recommendation"] = outcome.recommendation
        else:
            status.pop("recommendation", None)
    if outcome.ab_test is not None:
        status["abTest"] = outcome.ab_test

    required: tuple[str, ...] = rp.CONDITIONS.required if spec.schedule is not None else (rp.TRIGGERS_READY,)
    if spec.schedule is not None and outcome.triggers is not None and outcome.triggers[1] == rp.NO_TRIGGERS:
        required = (rp.SCHEDULED,)
    status["conditions"] = conds.ready(required)
    return status
