"""The ABTest's evaluation: each arm's data from Prometheus → the sequential test's typed `Evaluation`.

- `metric.source: feedback`: the runtime's feedback counters (`medserve_contract.metrics.FEEDBACK_TOTAL`),
  `increase()`d over the test's window; the metric is accuracy (a proportion);
- `metric.source: promql`: the query, with `{arm_model}` and `{arm_version}` filled in per arm, gives one
  number per arm; it is sampled every `statistics.interval` over the window (a Prometheus subquery) and
  each sample is one observation. Use it for figures that are already aggregates (a per-minute error
  rate, a p95 latency): `samples` then counts looks, not requests.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING

from medserve_contract import metrics
from medserve_contract.promql import string_literal

from medserve_operator.api import abtest as ab
from medserve_operator.api.abtest import ABTestSpec
from medserve_operator.api.common import PROMETHEUS_NOT_CONFIGURED, parse_duration
from medserve_operator.clients.prometheus import PrometheusClient, PrometheusError
from medserve_operator.controllers.abtest.status import Outcome, running_state
from medserve_operator.kit import conditions, promql
from medserve_operator.kit.reconciler import Context

if TYPE_CHECKING:  # numpy comes with the statistics: loaded at the first evaluation, not at start-up
    from medserve_operator.stats import sequential


async def evaluate(prometheus: PrometheusClient | None, ctx: Context, spec: ABTestSpec, started_at: str,
                   versions: Mapping[str, str], outcome: Outcome) -> None:
    """One look: both arms' data since `started_at`, the sequential test, and the conclusion if it decides."""
    if prometheus is None:
        outcome.metrics = ("False", PROMETHEUS_NOT_CONFIGURED,
                           "the test cannot be evaluated: the operator has no Prometheus (set MEDSERVE_PROMETHEUS_URL)")
        return
    from medserve_operator.stats import sequential

    started = conditions.parse_time(started_at) or outcome.now
    window = max(1, int((outcome.now - started).total_seconds()))
    final = window >= parse_duration(spec.max_duration)
    try:
        control = await arm_data(prometheus, spec, namespace=ctx.namespace, role="control",
                                 deployment=spec.control.model_deployment, version=versions["control"], window=window)
        treatment = await arm_data(prometheus, spec, namespace=ctx.namespace, role="treatment",
                                   deployment=spec.treatment.model_deployment, version=versions["treatment"],
                                   window=window)
        result = sequential.evaluate(sequential.Design.from_spec(spec), control, treatment,
                                     previous=running_state(ctx.status), final=final)
    except PrometheusError as exc:
        ctx.logger.warning("ABTest metrics unavailable: %s", exc)
        outcome.metrics = ("False", exc.reason, f"the test is not evaluated: {exc}")
        return
    except ValueError as exc:
        outcome.metrics = ("False", ab.INVALID_METRIC, f"spec.metric: {exc}")
        return
    outcome.metrics = ("True", ab.METRICS_AVAILABLE, f"{result.samples_control} control and "
                                                     f"{result.samples_treatment} treatment samples since {started_at}")
    outcome.evaluation = result
    if result.concluded:
        at_max = max(result.samples_control, result.samples_treatment) >= spec.statistics.max_samples_per_arm
        why = "maxDuration ran out" if final else "maxSamplesPerArm was reached" if at_max else \
            "the sequential boundary was crossed"
        outcome.concluded = f"{result.decision} ({why}): {summary(spec, result, started_at, outcome.now)}"
        outcome.event(ab.CONCLUDED_EVENT, outcome.concluded)


def summary(spec: ABTestSpec, result: sequential.Evaluation, started_at: str, now: datetime.datetime) -> str:
    """The statistics and the data window of an evaluation, in one line (pure)."""
    low, high = result.confidence_sequence
    return (f"{spec.metric.name} treatment {result.treatment:.4f} vs control {result.control:.4f}, difference "
            f"{result.difference:+.4f}, always-valid {1 - spec.statistics.alpha:.0%} interval [{low:+.4f}, "
            f"{high:+.4f}], p = {result.always_valid_p_value:.3g}; {result.samples_control} control and "
            f"{result.samples_treatment} treatment samples from {started_at} to {conditions.rfc3339(now)}")


async def arm_data(prometheus: PrometheusClient, spec: ABTestSpec, *, namespace: str, role: str, deployment: str,
                   version: str, window: int) -> sequential.ArmData:
    """One arm's sufficient statistics over the last `window` seconds, from Prometheus."""
    from medserve_operator.stats import sequential

    metric = spec.metric
    if metric.source == "feedback":
        if metric.kind != "proportion" or metric.name != "accuracy":
            raise ValueError("source feedback gives accuracy, a proportion: set name accuracy and kind proportion, "
                             "or use source promql")
        query = promql.feedback_by_outcome(deployment=deployment, namespace=namespace, version=version,
                                           seconds=window)
        counts = {s.labels.get(metrics.OUTCOME_LABEL, ""): s.value for s in await prometheus.query(query)}
        trials = round(sum(counts.values()))
        return sequential.ArmData.proportion(min(round(counts.get(metrics.OUTCOME_CORRECT, 0.0)), trials), trials,
                                             arm=role)
    count, total, total_sq = [await prometheus.value(q) or 0.0
                              for q in promql_queries(str(metric.promql), deployment, version, window,
                                                      parse_duration(spec.statistics.interval))]
    if metric.kind == "proportion":
        return sequential.ArmData.proportion(total, count, arm=f"{role} (values must lie in [0, 1])")
    return sequential.ArmData.mean(count, total, total_sq, arm=role)


def promql_queries(template: str, deployment: str, version: str, window: int, step: float) -> tuple[str, str, str]:
    """(count, sum, sum of squares) of the arm's metric sampled every `step` s over `window` s (pure).

    The template's `{arm_model}` and `{arm_version}` stand inside its own quotes; the values filled in are
    escaped as the contents of a PromQL string literal.
    """
    query = template.replace("{arm_model}", _in_quotes(deployment)).replace("{arm_version}", _in_quotes(version))
    span = f"[{window}s:{max(1, round(step))}s]"
    return (f"count_over_time(({query}){span})", f"sum_over_time(({query}){span})",
            f"sum_over_time((({query}) ^ 2){span})")


def _in_quotes(value: str) -> str:
    return string_literal(value)[1:-1]
