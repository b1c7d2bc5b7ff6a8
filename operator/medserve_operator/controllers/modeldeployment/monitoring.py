"""Monitoring of one served model version: data drift and accuracy, from Prometheus and MLflow.

The runtime exports, for the version it serves, a histogram per numeric feature whose `le` edges are
the reference profile's bin edges (`medserve_feature_value_bucket{model,version,feature,le}`), a
counter per category of each categorical feature (`medserve_feature_category_total{...,category}`)
and the ground-truth feedback it was given (`medserve_feedback_total{model,version,outcome}`); the
`model` label is the ModelDeployment's name. Every `monitoring.interval` the reconciler asks `Monitor`
to evaluate the deployment:

1. the reference profile (`model/reference_profile.json` beside the version in MLflow) is fetched by the
   MLflow client (`clients.mlflow.MlflowRegistry.reference_profile`), cached per model version;
2. the increase of every bucket and category counter over `monitoring.drift.window`, summed over the
   runtime's replicas, is queried from Prometheus, turned back into per-bin counts
   (`drift.counts_from_cumulative`, `drift.category_counts`) and judged by `drift.evaluate`;
3. accuracy is the share of `correct` feedback over the same window (the spec has no separate alert
   window), judged against `monitoring.alerts.minAccuracy` once at least `MIN_FEEDBACK` outcomes came in.

Series are selected with the contract's one selector builder (`medserve_contract.promql.selector`): by
`model` and `version`, and by `namespace` where the scrape adds that label (`namespace=~"<ns>|"` also
matches series without it, as a scrape of bare targets gives).
Nothing here writes status: `Evaluation` is what the reconciler's pure `compute_status` turns into
`status.drift` and the `DriftDetected` and `Degraded` conditions. Failures never raise out of
`Monitor.evaluate`; they become a `Problem` with the condition reason to report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from medserve_contract import metrics
from medserve_contract.promql import range_ms, selector

from medserve_operator.api import modeldeployment as md
from medserve_operator.api.common import PROMETHEUS_NOT_CONFIGURED, parse_duration
from medserve_operator.api.modeldeployment import MonitoringSpec
from medserve_operator.clients.mlflow import MlflowRegistry, ProfileError, ResolvedModel
from medserve_operator.clients.prometheus import PrometheusClient, PrometheusError, VectorSample
from medserve_operator.kit import promql

if TYPE_CHECKING:
    # numpy, scipy and the profile format load when drift is first evaluated, not with the operator: an
    # operator that is never asked to evaluate drift stays small.
    from medserve_contract.modelspec import CategoricalProfile, NumericProfile, ReferenceProfile

    from medserve_operator.stats import drift

    FeatureProfile = NumericProfile | CategoricalProfile

logger = logging.getLogger(__name__)

MIN_FEEDBACK = 20
"""Fewest feedback outcomes in the window before accuracy is judged: below that, one wrong answer among a
handful would flip the deployment to Degraded on noise."""



@dataclasses.dataclass(frozen=True)
class Problem:
    """Why something could not be evaluated: the condition reason and a message for people."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Feedback outcomes over a window."""

    correct: float
    incorrect: float

    @property
    def total(self) -> float:
        return self.correct + self.incorrect

    @property
    def value(self) -> float | None:
        return self.correct / self.total if self.total > 0 else None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What one monitoring pass found. A None result with a None problem means "not asked for"."""

    window: str
    evaluated_at: str
    drift: drift.DriftResult | None = None
    drift_problem: Problem | None = None
    accuracy: Accuracy | None = None
    accuracy_problem: Problem | None = None


# ---------------------------------------------------------------------------------------------------
# PromQL and what comes back (pure)


def promql_window(window: str) -> str:
    """A spec duration ("1h30m", "250ms") as a PromQL range in milliseconds."""
    return range_ms(parse_duration(window))


def series_selector(metric: str, *, deployment: str, namespace: str, version: str) -> str:
    return selector(metric, deployment=deployment, namespace=namespace, version=version)


def bucket_query(*, deployment: str, namespace: str, version: str, window: str) -> str:
    """Per feature and `le`: the increase of the histogram buckets over the window, summed over replicas."""
    series = series_selector(metrics.FEATURE_VALUE_BUCKET, deployment=deployment, namespace=namespace,
                             version=version)
    return promql.increase_sum(series, parse_duration(window), by=(metrics.FEATURE_LABEL, "le"))


def category_query(*, deployment: str, namespace: str, version: str, window: str) -> str:
    series = series_selector(metrics.FEATURE_CATEGORY_TOTAL, deployment=deployment, namespace=namespace,
                             version=version)
    return promql.increase_sum(series, parse_duration(window), by=(metrics.FEATURE_LABEL, metrics.CATEGORY_LABEL))


def feedback_query(*, deployment: str, namespace: str, version: str, window: str) -> str:
    return promql.feedback_by_outcome(deployment=deployment, namespace=namespace, version=version,
                                      seconds=parse_duration(window))


def select_features(profile: ReferenceProfile, names: Sequence[str]) -> list[FeatureProfile]:
    """The profile features to judge: all when `names` is empty, else those named (each must exist)."""
    from medserve_operator.stats import drift

    if not names:
        return list(profile.features)
    known = {f.name: f for f in profile.features}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise drift.DriftDataError(f"monitoring.drift.features: {', '.join(unknown)} not in the model's reference "
                                   f"profile (it has {', '.join(known)})")
    return [known[n] for n in dict.fromkeys(names)]


def window_counts(features: Sequence[FeatureProfile], buckets: Sequence[VectorSample],
                  categories: Sequence[VectorSample]) -> dict[str, drift.FloatArray]:
    """Per-bin counts per feature from the two queries' results; a feature with no series counts zero.

    Raises DriftDataError (naming the feature) when the buckets do not fit the profile, e.g. a histogram
    exported with another version's edges.
    """
    from medserve_contract.modelspec import NumericProfile

    from medserve_operator.stats import drift

    cumulative: dict[str, dict[str, float]] = {}
    for sample in buckets:
        feature, le = sample.labels.get(metrics.FEATURE_LABEL), sample.labels.get("le")
        if feature is not None and le is not None:
            cumulative.setdefault(feature, {})[le] = sample.value
    increases: dict[str, dict[str, float]] = {}
    for sample in categories:
        feature, category = sample.labels.get(metrics.FEATURE_LABEL), sample.labels.get(metrics.CATEGORY_LABEL)
        if feature is not None and category is not None:
            increases.setdefault(feature, {})[category] = sample.value
    counts: dict[str, drift.FloatArray] = {}
    for f in features:
        try:
            if isinstance(f, NumericProfile):
                counts[f.name] = drift.counts_from_cumulative(f.bin_edges, cumulative.get(f.name, {}))
            else:
                counts[f.name] = drift.category_counts(f.categories, increases.get(f.name, {}))
        except drift.DriftDataError as exc:
            raise drift.DriftDataError(f"feature {f.name}: {exc}") from None
    return counts


def accuracy_from(samples: Sequence[VectorSample]) -> Accuracy:
    by_outcome = {s.labels.get(metrics.OUTCOME_LABEL): max(0.0, s.value) for s in samples}
    return Accuracy(correct=by_outcome.get(metrics.OUTCOME_CORRECT, 0.0),
                    incorrect=by_outcome.get(metrics.OUTCOME_INCORRECT, 0.0))


def judge_window(profile: ReferenceProfile, spec: MonitoringSpec, buckets: Sequence[VectorSample],
                 categories: Sequence[VectorSample]) -> drift.DriftResult:
    """The drift decision for one window's query results against `profile` (pure)."""
    from medserve_operator.stats import drift

    d = spec.drift
    features = select_features(profile, d.features)
    counts = window_counts(features, buckets, categories)
    return drift.evaluate(features, counts, statistic=d.statistic, threshold=d.threshold, alpha=d.alpha,
                          min_samples=d.min_samples, reference_samples=profile.samples)


def not_configured(spec: MonitoringSpec, *, evaluated_at: str) -> Evaluation:
    """The evaluation when the operator has no Prometheus to ask."""
    problem = Problem(PROMETHEUS_NOT_CONFIGURED,
                      "the operator has no Prometheus to query (set MEDSERVE_PROMETHEUS_URL)")
    return Evaluation(window=spec.drift.window, evaluated_at=evaluated_at,
                      drift_problem=problem if spec.drift.enabled else None,
                      accuracy_problem=problem if spec.alerts.min_accuracy is not None else None)


# ---------------------------------------------------------------------------------------------------
# The monitor (I/O)


class Monitor:
    """Evaluates drift and accuracy of served model versions over the clients main.py builds (and closes)."""

    def __init__(self, prometheus: PrometheusClient, registry: MlflowRegistry) -> None:
        self.prometheus = prometheus
        self.registry = registry

    async def evaluate(self, *, namespace: str, deployment: str, model: ResolvedModel, spec: MonitoringSpec,
                       evaluated_at: str) -> Evaluation:
        """Drift (if enabled) and accuracy (if a minimum is set) of `model` as served by `deployment`.

        Never raises for an outage or bad data: those come back as the evaluation's problems.
        """
        window = spec.drift.window
        where = {"deployment": deployment, "namespace": namespace, "version": model.version, "window": window}
        want_drift, want_accuracy = spec.drift.enabled, spec.alerts.min_accuracy is not None
        queries: dict[str, str] = {}
        if want_drift:
            queries["buckets"] = bucket_query(**where)
            queries["categories"] = category_query(**where)
        if want_accuracy:
            queries["feedback"] = feedback_query(**where)
        results = await asyncio.gather(*(self.prometheus.query(q) for q in queries.values()),
                                       return_exceptions=True)
        answers: dict[str, list[VectorSample] | BaseException] = dict(zip(queries, results, strict=True))
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, PrometheusError):
                raise result  # a bug or a cancellation, not an outage
        evaluation = Evaluation(window=window, evaluated_at=evaluated_at)
        if want_drift:
            evaluation = dataclasses.replace(evaluation, **await self._drift(model, spec, answers))
        if want_accuracy:
            feedback = answers["feedback"]
            if isinstance(feedback, PrometheusError):
                evaluation = dataclasses.replace(evaluation, accuracy_problem=_problem(feedback))
            else:
                assert isinstance(feedback, list)
                evaluation = dataclasses.replace(evaluation, accuracy=accuracy_from(feedback))
        return evaluation

    async def _drift(self, model: ResolvedModel, spec: MonitoringSpec,
                     answers: Mapping[str, list[VectorSample] | BaseException]) -> dict[str, Any]:
        buckets, categories = answers["buckets"], answers["categories"]
        for answer in (buckets, categories):
            if isinstance(answer, PrometheusError):
                return {"drift_problem": _problem(answer)}
        assert isinstance(buckets, list) and isinstance(categories, list)
        try:
            profile = await self.registry.reference_profile(model)
        except ProfileError as exc:
            logger.warning("drift of %s version %s not evaluated: %s", model.name, model.version, exc)
            return {"drift_problem": _problem(exc)}
        try:
            return {"drift": judge_window(profile, spec, buckets, categories)}
        except ValueError as exc:  # drift.DriftDataError among them
            return {"drift_problem": Problem(md.INVALID_DRIFT_DATA, str(exc))}


def _problem(exc: PrometheusError | ProfileError) -> Problem:
    return Problem(exc.reason, str(exc))


def finite(value: float | None) -> float | None:
    """A float fit for JSON status (NaN and infinities become None)."""
    return float(value) if value is not None and math.isfinite(value) else None
