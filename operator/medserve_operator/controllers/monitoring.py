"""Monitoring of one served model version: data drift and accuracy, from Prometheus and MLflow.

The runtime exports, for the version it serves, a histogram per numeric feature whose `le` edges are
the reference profile's bin edges (`medserve_feature_value_bucket{model,version,feature,le}`), a
counter per category of each categorical feature (`medserve_feature_category_total{...,category}`)
and the ground-truth feedback it was given (`medserve_feedback_total{model,version,outcome}`); the
`model` label is the ModelDeployment's name. Every `monitoring.interval` the reconciler asks `Monitor`
to evaluate the deployment:

1. the reference profile (`model/reference_profile.json` beside the version in MLflow) is fetched over
   MLflow's REST artifact endpoints and cached per model version (versions are immutable);
2. the increase of every bucket and category counter over `monitoring.drift.window`, summed over the
   runtime's replicas, is queried from Prometheus, turned back into per-bin counts
   (`drift.counts_from_cumulative`, `drift.category_counts`) and judged by `drift.evaluate`;
3. accuracy is the share of `correct` feedback over the same window (the spec has no separate alert
   window), judged against `monitoring.alerts.minAccuracy` once at least `MIN_FEEDBACK` outcomes came in.

Series are selected by `model` and `version`, and by `namespace` where the scrape adds that label
(`namespace=~"<ns>|"` also matches series without it, as a scrape of bare targets gives).
Nothing here writes status: `Evaluation` is what the reconciler's pure `compute_status` turns into
`status.drift` and the `DriftDetected` and `Degraded` conditions. Failures never raise out of
`Monitor.evaluate`; they become a `Problem` with the condition reason to report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import pydantic

from medserve_operator.api import MonitoringSpec, parse_duration
from medserve_operator.clients.mlflow import ResolvedModel
from medserve_operator.clients.prometheus import PrometheusClient, PrometheusError, VectorSample, label_matcher

if TYPE_CHECKING:
    # numpy, scipy and the profile format load when drift is first evaluated, not with the operator: an
    # operator that is never asked to evaluate drift stays small.
    from medserve_contract.modelspec import CategoricalProfile, NumericProfile, ReferenceProfile

    from medserve_operator.stats import drift

    FeatureProfile = NumericProfile | CategoricalProfile

logger = logging.getLogger(__name__)

BUCKET_METRIC = "medserve_feature_value_bucket"
CATEGORY_METRIC = "medserve_feature_category_total"
FEEDBACK_METRIC = "medserve_feedback_total"
MIN_FEEDBACK = 20
"""Fewest feedback outcomes in the window before accuracy is judged: below that, one wrong answer among a
handful would flip the deployment to Degraded on noise."""
ARTIFACT_FOLDER = "model"
"""Where the training job logs a version's files inside its run (examples/training: ARTIFACT_PATH)."""



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


class ProfileError(Exception):
    """The reference profile could not be fetched; `reason` is the condition reason."""

    reason = "ReferenceProfileUnavailable"


class InvalidProfile(ProfileError):
    """The stored reference profile is not a valid `reference_profile.json`."""

    reason = "InvalidReferenceProfile"


class ProfileStore:
    """Reference profiles from the MLflow server's artifact endpoints, cached per model version.

    Talks to MLflow with httpx (as `registry.MlflowRegistry` does) rather than importing mlflow. The
    version's `source` says where its files are: `mlflow-artifacts:/...` (artifacts proxied by the
    server) is read through `/api/2.0/mlflow-artifacts/artifacts/`, anything else through the run's
    `/get-artifact` endpoint.
    """

    def __init__(self, mlflow_uri: str, *, timeout: float = 5.0, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = mlflow_uri.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._profiles: dict[tuple[str, str], ReferenceProfile] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, model: ResolvedModel) -> ReferenceProfile:
        key = (model.name, model.version)
        cached = self._profiles.get(key)
        if cached is not None:
            return cached
        from medserve_contract import modelspec

        what = f"the reference profile of {model.name} version {model.version}"
        for url, params in artifact_locations(self.base_url, model):
            try:
                response = await self._client.get(url, params=params)
            except httpx.HTTPError as exc:
                raise ProfileError(f"MLflow at {self.base_url} is unreachable while fetching {what}: "
                                   f"{type(exc).__name__}") from exc
            if response.status_code == 404 or (response.status_code == 400 and "get-artifact" in url):
                continue  # not at this place: try the next candidate
            if response.status_code >= 400:
                raise ProfileError(f"MLflow answered {response.status_code} while fetching {what}")
            try:
                profile = modelspec.ReferenceProfile.model_validate_json(response.content)
            except pydantic.ValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
                where = ".".join(str(p) for p in first["loc"]) or "(root)"
                raise InvalidProfile(f"{what} is not a valid {modelspec.REFERENCE_PROFILE_FILE}: {where}: "
                                     f"{first['msg']}") \
                    from exc
            self._profiles[key] = profile
            return profile
        raise ProfileError(f"{what} was not found in MLflow ({modelspec.REFERENCE_PROFILE_FILE} beside source "
                           f"{model.source or '(none)'}, run {model.run_id or '(none)'})")


def artifact_locations(base_url: str, model: ResolvedModel) -> list[tuple[str, dict[str, str]]]:
    """The (url, query params) pairs to try, in order, for a version's reference profile."""
    from medserve_contract.modelspec import REFERENCE_PROFILE_FILE as file

    base_url = base_url.rstrip("/")
    found: list[tuple[str, dict[str, str]]] = []
    source = model.source or ""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "mlflow-artifacts":
        folder = parsed.path.strip("/")
        for path in (f"{folder}/{file}", f"{folder}/{ARTIFACT_FOLDER}/{file}"):
            found.append((f"{base_url}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}", {}))
    elif parsed.scheme == "runs":
        run_id, _, folder = parsed.path.strip("/").partition("/")
        for path in (f"{folder}/{file}".lstrip("/"), f"{folder}/{ARTIFACT_FOLDER}/{file}".lstrip("/")):
            found.append((f"{base_url}/get-artifact", {"run_uuid": run_id, "path": path}))
    if model.run_id:
        found.append((f"{base_url}/get-artifact", {"run_uuid": model.run_id, "path": f"{ARTIFACT_FOLDER}/{file}"}))
    return found


# ---------------------------------------------------------------------------------------------------
# PromQL and what comes back (pure)


def promql_window(window: str) -> str:
    """A spec duration ("1h30m", "250ms") as a PromQL range in milliseconds."""
    return f"{max(1, round(parse_duration(window) * 1000))}ms"


def series_selector(metric: str, *, deployment: str, namespace: str, version: str) -> str:
    return (f"{metric}{{model={label_matcher(deployment)},version={label_matcher(version)},"
            f"namespace=~{label_matcher(_regex_escape(namespace) + '|')}}}")


def bucket_query(*, deployment: str, namespace: str, version: str, window: str) -> str:
    """Per feature and `le`: the increase of the histogram buckets over the window, summed over replicas."""
    selector = series_selector(BUCKET_METRIC, deployment=deployment, namespace=namespace, version=version)
    return f"sum by (feature, le) (increase({selector}[{promql_window(window)}]))"


def category_query(*, deployment: str, namespace: str, version: str, window: str) -> str:
    selector = series_selector(CATEGORY_METRIC, deployment=deployment, namespace=namespace, version=version)
    return f"sum by (feature, category) (increase({selector}[{promql_window(window)}]))"


def feedback_query(*, deployment: str, namespace: str, version: str, window: str) -> str:
    selector = series_selector(FEEDBACK_METRIC, deployment=deployment, namespace=namespace, version=version)
    return f"sum by (outcome) (increase({selector}[{promql_window(window)}]))"


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
        feature, le = sample.labels.get("feature"), sample.labels.get("le")
        if feature is not None and le is not None:
            cumulative.setdefault(feature, {})[le] = sample.value
    increases: dict[str, dict[str, float]] = {}
    for sample in categories:
        feature, category = sample.labels.get("feature"), sample.labels.get("category")
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
    by_outcome = {s.labels.get("outcome"): max(0.0, s.value) for s in samples}
    return Accuracy(correct=by_outcome.get("correct", 0.0), incorrect=by_outcome.get("incorrect", 0.0))


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
    problem = Problem("PrometheusNotConfigured",
                      "the operator has no Prometheus to query (set MEDSERVE_PROMETHEUS_URL)")
    return Evaluation(window=spec.drift.window, evaluated_at=evaluated_at,
                      drift_problem=problem if spec.drift.enabled else None,
                      accuracy_problem=problem if spec.alerts.min_accuracy is not None else None)


# ---------------------------------------------------------------------------------------------------
# The monitor (I/O)


class Monitor:
    """Evaluates drift and accuracy of served model versions; built at start-up, closed at cleanup."""

    def __init__(self, prometheus: PrometheusClient, profiles: ProfileStore) -> None:
        self.prometheus = prometheus
        self.profiles = profiles

    async def aclose(self) -> None:
        await self.prometheus.aclose()
        await self.profiles.aclose()

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
            profile = await self.profiles.get(model)
        except ProfileError as exc:
            logger.warning("drift of %s version %s not evaluated: %s", model.name, model.version, exc)
            return {"drift_problem": _problem(exc)}
        try:
            return {"drift": judge_window(profile, spec, buckets, categories)}
        except ValueError as exc:  # drift.DriftDataError among them
            return {"drift_problem": Problem("InvalidDriftData", str(exc))}


def _problem(exc: PrometheusError | ProfileError) -> Problem:
    return Problem(exc.reason, str(exc))


def _regex_escape(value: str) -> str:
    """`value` as a literal inside a PromQL (RE2) regular expression."""
    out = []
    for ch in value:
        out.append("\\" + ch if ch in r"\.+*?()|[]{}^$" else ch)
    return "".join(out)


def finite(value: float | None) -> float | None:
    """A float fit for JSON status (NaN and infinities become None)."""
    return float(value) if value is not None and math.isfinite(value) else None
