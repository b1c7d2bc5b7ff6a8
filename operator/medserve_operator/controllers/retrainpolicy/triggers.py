"""The RetrainPolicy's triggers and their gating: when a retraining Job may start, and which trigger names it.

- never while one of the policy's Jobs is active (its own or the CronJob's: they share the
  `medserve.io/retrain-policy` label, which is what is checked), nor while its ABTest runs;
- never inside `cooldown` after `status.lastTriggered` (a scheduled run counts as a trigger too);
- a trigger that persists is a level, not an edge: it starts one Job, then nothing until that Job has
  finished and the cooldown has passed. A failed Job therefore does not loop either.
Triggers are evaluated in the order drift, performance, query; the first that fires names the Job.

Drift is read from the ModelDeployment's `DriftDetected` condition (the drift evaluator's verdict).
Performance and query triggers go through `query_value(promql)`, which the operator builds when
Prometheus is configured; without it those triggers are reported as not evaluated, not silently ignored.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from medserve_contract import metrics
from medserve_contract.promql import selector

from medserve_operator.api import modeldeployment as md
from medserve_operator.api import retrainpolicy as rp
from medserve_operator.api.common import (
    MODEL_DEPLOYMENT_NOT_FOUND,
    PROMETHEUS_NOT_CONFIGURED,
    PROMETHEUS_UNAVAILABLE,
    parse_duration,
)
from medserve_operator.api.retrainpolicy import RetrainPolicySpec
from medserve_operator.clients.prometheus import PrometheusError
from medserve_operator.kit import conditions, promql
from medserve_operator.kit.conditions import Check

QueryValue = Callable[[str], Awaitable[float | None]]
"""Evaluates a PromQL instant query to one number (None: no data); raises PrometheusError when it cannot."""


@dataclasses.dataclass(frozen=True)
class Fired:
    """A trigger that fired: the reason that names the Job (Drift, Performance, Query) and why, for people."""

    reason: str
    detail: str


@dataclasses.dataclass(frozen=True)
class TriggerResult:
    """What evaluating the triggers found: the TriggersReady condition (None: not evaluated, e.g. cooldown)
    and the trigger that fired, if any."""

    condition: Check | None = None
    fired: Fired | None = None


def feedback_queries(deployment: str, namespace: str, window: str) -> tuple[str, str]:
    """PromQL for (feedback samples, accuracy) of a ModelDeployment's runtime over `window` (pure)."""
    seconds = parse_duration(window)
    total = promql.increase_sum(selector(metrics.FEEDBACK_TOTAL, deployment=deployment, namespace=namespace),
                                seconds)
    correct = promql.increase_sum(selector(metrics.FEEDBACK_TOTAL, deployment=deployment, namespace=namespace,
                                           **{metrics.OUTCOME_LABEL: metrics.OUTCOME_CORRECT}), seconds)
    return total, f"{correct} / {total}"


def in_cooldown(last_triggered: Mapping[str, Any] | None, cooldown: str, now: datetime.datetime) -> bool:
    """Whether `now` is within `cooldown` of the last trigger (pure)."""
    until = cooldown_until(last_triggered, cooldown)
    return until is not None and now < until


def cooldown_until(last_triggered: Mapping[str, Any] | None, cooldown: str) -> datetime.datetime | None:
    when = conditions.parse_time(str((last_triggered or {}).get("time") or ""))
    return None if when is None else when + datetime.timedelta(seconds=parse_duration(cooldown))


def configured(spec: RetrainPolicySpec) -> list[str]:
    """The event triggers the spec sets, in the order they are evaluated."""
    triggers = spec.triggers
    return [kind for kind, on in (("drift", triggers.drift.enabled), ("performance", triggers.performance),
                                  ("query", triggers.query)) if on]


async def evaluate_triggers(spec: RetrainPolicySpec, deployment: Mapping[str, Any] | None, namespace: str,
                            last_triggered: Mapping[str, Any] | None, now: datetime.datetime,
                            query_value: QueryValue | None) -> TriggerResult:
    """Gate and evaluate the triggers (the caller has checked that no Job and no ABTest runs)."""
    kinds = configured(spec)
    if not kinds:
        return TriggerResult(("True", rp.NO_TRIGGERS, "only the schedule starts retraining jobs"))
    if deployment is None:
        return TriggerResult(("False", MODEL_DEPLOYMENT_NOT_FOUND,
                              f"ModelDeployment {spec.model_deployment} does not exist: no trigger is evaluated"))
    if in_cooldown(last_triggered, spec.cooldown, now):
        return TriggerResult()
    fired: Fired | None = None
    problems: list[tuple[str, str]] = []
    if spec.triggers.drift.enabled:
        drift = conditions.find(((deployment.get("status") or {}).get("conditions")), md.DRIFT_DETECTED)
        if drift is not None and drift.get("status") == "True":
            fired = Fired(rp.DRIFT, f"ModelDeployment {spec.model_deployment} reports drift: "
                                    f"{drift.get('message', '')}")
    for kind in ("performance", "query"):
        if fired is not None or kind not in kinds:
            continue
        if query_value is None:
            problems.append((PROMETHEUS_NOT_CONFIGURED,
                             f"the {kind} trigger is not evaluated: the operator has no Prometheus "
                             "(set MEDSERVE_PROMETHEUS_URL)"))
            continue
        try:
            fired = await (_performance(query_value, spec, namespace) if kind == "performance"
                           else _query(query_value, spec))
        except PrometheusError as exc:
            problems.append((PROMETHEUS_UNAVAILABLE, f"the {kind} trigger is not evaluated: {exc}"))
        except ValueError as exc:
            problems.append((rp.UNSUPPORTED_METRIC, f"spec.triggers.performance.metric: {exc}"))
    condition: Check = (("False", problems[0][0], "; ".join(message for _, message in problems)) if problems
                        else ("True", rp.EVALUATED, f"evaluated: {', '.join(kinds)}"))
    return TriggerResult(condition, fired)


async def _performance(query_value: QueryValue, spec: RetrainPolicySpec, namespace: str) -> Fired | None:
    trigger = spec.triggers.performance
    if trigger is None:
        return None
    if trigger.metric != "accuracy":
        raise ValueError(f"{trigger.metric!r} is not a metric the runtime reports from feedback; use accuracy")
    total_query, accuracy_query = feedback_queries(spec.model_deployment, namespace, trigger.window)
    samples = await query_value(total_query)
    if samples is None or samples < trigger.min_samples:
        return None
    accuracy = await query_value(accuracy_query)
    if accuracy is None or accuracy >= trigger.below:
        return None
    return Fired(rp.PERFORMANCE, f"accuracy {accuracy:.3f} over {trigger.window} ({samples:.0f} feedback samples) "
                                 f"is below {trigger.below}")


async def _query(query_value: QueryValue, spec: RetrainPolicySpec) -> Fired | None:
    trigger = spec.triggers.query
    if trigger is None:
        return None
    value = await query_value(trigger.promql)
    if value is None or value <= trigger.above:
        return None
    return Fired(rp.QUERY, f"the query returned {value:g}, above {trigger.above:g}")
