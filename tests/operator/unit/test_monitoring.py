"""ModelDeployment monitoring (controllers.modeldeployment.monitoring) and how its evaluation becomes status.

The window counts are rebuilt from what the real runtime metrics (medserve_runtime.metrics) export,
scraped twice as Prometheus text (the increase over a window is the difference of the two scrapes, as
`increase()` gives without extrapolation) and compared with modelspec's counts of the raw values. The
status mapping runs the reconciler's pure `compute_status`. No network: the Prometheus and MLflow
clients are exercised against real servers in tests/integration/test_drift_prometheus.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from medserve_contract.modelspec import CategoricalProfile, NumericProfile, ReferenceProfile
from medserve_contract.promql import string_literal as label_matcher
from medserve_operator.api import MonitoringSpec
from medserve_operator.api.modeldeployment import CONDITIONS as MD_CONDITIONS
from medserve_operator.clients.mlflow import ResolvedModel, artifact_locations
from medserve_operator.clients.prometheus import VectorSample
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.modeldeployment import Outcome, compute_status, monitoring
from medserve_operator.controllers.modeldeployment.monitoring import Accuracy, Evaluation, Problem
from medserve_operator.kit import conditions
from medserve_operator.stats import drift
from medserve_runtime.metrics import RuntimeMetrics
from prometheus_client.parser import text_string_to_metric_families

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
AGE_EDGES = [30.0, 45.0, 60.0, 75.0]
PROFILE = ReferenceProfile(samples=5000, features=[
    NumericProfile(name="age", bin_edges=AGE_EDGES, proportions=[0.2, 0.2, 0.2, 0.2, 0.2]),
    CategoricalProfile(type="categorical", name="sex", categories=["female", "male"], proportions=[0.5, 0.5]),
    CategoricalProfile(type="multi_hot", name="symptoms", categories=["fever", "cough", "chest_pain"],
                       proportions=[0.4, 0.4, 0.2]),
])
MODEL = ResolvedModel(name="triage-classifier", version="3", source="mlflow-artifacts:/1/abc/artifacts/model",
                      run_id="abc")


def spec(**drift_spec: Any) -> MonitoringSpec:
    alerts = drift_spec.pop("alerts", {})
    return MonitoringSpec.model_validate({"interval": "2s", "drift": {"window": "30s", "minSamples": 100,
                                                                      **drift_spec}, "alerts": alerts})


# --- PromQL -------------------------------------------------------------------------------------------


def test_queries_select_the_deployment_version_and_window() -> None:
    where = {"deployment": "triage", "namespace": "clinic-a", "version": "3", "window": "1h30m"}
    assert monitoring.bucket_query(**where) == (
        'sum by (feature, le) (increase(medserve_feature_value_bucket{model="triage",version="3",'
        'namespace=~"clinic-a|"}[5400000ms]))')
    assert monitoring.category_query(**where).startswith(
        "sum by (feature, category) (increase(medserve_feature_category_total{")
    assert monitoring.feedback_query(**where).startswith("sum by (outcome) (increase(medserve_feedback_total{")
    assert monitoring.promql_window("250ms") == "250ms"
    # Label values are PromQL string literals; namespace is a regex literal (dots would match anything).
    assert label_matcher('a"b\\c') == '"a\\"b\\\\c"'
    assert 'namespace=~"a\\\\.b|"' in monitoring.series_selector("m", deployment="d", namespace="a.b", version="1")


# --- counts from the runtime's own metrics ------------------------------------------------------------


def _scrape(metrics: RuntimeMetrics) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """(feature, le) -> cumulative bucket and (feature, category) -> counter, from /metrics text."""
    buckets: dict[tuple[str, str], float] = {}
    cats: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == "medserve_feature_value_bucket":
                buckets[(s.labels["feature"], s.labels["le"])] = s.value
            elif s.name == "medserve_feature_category_total":
                cats[(s.labels["feature"], s.labels["category"])] = s.value
    return buckets, cats


def _increase(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float],
              label: str) -> list[VectorSample]:
    return [VectorSample({"feature": feature, label: key}, value - before.get((feature, key), 0.0))
            for (feature, key), value in after.items()]


def _records(rng: np.random.Generator, n: int, *, age_shift: float = 0.0) -> list[dict[str, Any]]:
    symptoms = ["fever", "cough", "chest_pain"]
    return [{"age": float(np.clip(rng.normal(52 + age_shift, 18), 0, 110)),
             "sex": str(rng.choice(["female", "male"])),
             "symptoms": [str(s) for s in rng.choice(symptoms, size=int(rng.integers(0, 3)), replace=False)]}
            for _ in range(n)]


def test_window_counts_equal_the_counts_of_the_raw_values_in_the_window() -> None:
    metrics = RuntimeMetrics("triage")
    metrics.register_version("3", PROFILE, ["a", "b"])
    rng = np.random.default_rng(5)
    before_window = _records(rng, 120)
    metrics.observe_predictions("3", [], [], before_window)
    start = _scrape(metrics)
    in_window = _records(rng, 300, age_shift=10)
    metrics.observe_predictions("3", [], [], in_window)
    end = _scrape(metrics)

    counts = monitoring.window_counts(PROFILE.features, _increase(start[0], end[0], "le"),
                                      _increase(start[1], end[1], "category"))

    age = PROFILE.feature("age")
    assert isinstance(age, NumericProfile)
    np.testing.assert_array_equal(counts["age"], age.counts(r["age"] for r in in_window))
    np.testing.assert_array_equal(counts["sex"], PROFILE.feature("sex").counts(r["sex"] for r in in_window))
    mentions = [s for r in in_window for s in r["symptoms"]]
    np.testing.assert_array_equal(counts["symptoms"], PROFILE.feature("symptoms").counts(mentions))


def test_missing_series_count_zero_and_foreign_buckets_name_the_feature() -> None:
    counts = monitoring.window_counts(PROFILE.features, [], [])
    assert {k: v.tolist() for k, v in counts.items()} == {
        "age": [0.0] * 5, "sex": [0.0, 0.0], "symptoms": [0.0, 0.0, 0.0]}
    # Another version's histogram has other edges: refused, naming the feature and the bucket.
    foreign = [VectorSample({"feature": "age", "le": le}, 1.0) for le in ("31.5", "+Inf")]
    with pytest.raises(drift.DriftDataError, match=r"feature age: bucket le=31.5"):
        monitoring.window_counts(PROFILE.features, foreign, [])
    unknown = [VectorSample({"feature": "sex", "category": "other"}, 3.0)]
    with pytest.raises(drift.DriftDataError, match=r"feature sex: categories \['other'\]"):
        monitoring.window_counts(PROFILE.features, [], unknown)


def _vectors(counts: dict[str, list[float]]) -> tuple[list[VectorSample], list[VectorSample]]:
    """Query results for given per-bin counts: cumulative buckets for age, counters for the others."""
    cumulative = np.cumsum(counts["age"])
    les = [repr(e) for e in AGE_EDGES] + ["+Inf"]
    buckets = [VectorSample({"feature": "age", "le": le}, float(c)) for le, c in zip(les, cumulative, strict=True)]
    cats = [VectorSample({"feature": name, "category": c}, float(v))
            for name in ("sex", "symptoms")
            for c, v in zip(PROFILE.feature(name).categories, counts[name], strict=True)]  # type: ignore[union-attr]
    return buckets, cats


def test_judge_window_decides_from_the_query_results() -> None:
    like_reference = {"age": [100.0] * 5, "sex": [250.0, 250.0], "symptoms": [200.0, 200.0, 100.0]}
    result = monitoring.judge_window(PROFILE, spec(), *_vectors(like_reference))
    assert (result.state, result.drifted_features, result.samples) == ("NoDrift", [], 500)

    older = {**like_reference, "age": [20.0, 40.0, 80.0, 160.0, 200.0]}
    result = monitoring.judge_window(PROFILE, spec(statistic="ks"), *_vectors(older))
    assert result.state == "Drifted" and result.drifted_features == ["age"] and result.statistic == "ks"

    few = {"age": [10.0] * 5, "sex": [25.0, 25.0], "symptoms": [20.0, 20.0, 10.0]}
    assert monitoring.judge_window(PROFILE, spec(), *_vectors(few)).state == "InsufficientData"

    # `features` narrows what is judged; a name the profile lacks is refused with the field path.
    only_sex = monitoring.judge_window(PROFILE, spec(features=["sex"]), *_vectors(older))
    assert only_sex.state == "NoDrift" and [f.name for f in only_sex.features] == ["sex"]
    with pytest.raises(drift.DriftDataError, match=r"monitoring\.drift\.features: heart_rate not in"):
        monitoring.judge_window(PROFILE, spec(features=["heart_rate"]), *_vectors(older))


def test_accuracy_from_feedback_counters() -> None:
    acc = monitoring.accuracy_from([VectorSample({"outcome": "correct"}, 30.0),
                                    VectorSample({"outcome": "incorrect"}, 10.0)])
    assert (acc.total, acc.value) == (40.0, 0.75)
    assert monitoring.accuracy_from([]).value is None


def test_artifact_locations_follow_the_version_source() -> None:
    base = "http://mlflow:5000/"
    assert artifact_locations(base, MODEL) == [
        ("http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model/reference_profile.json", {}),
        ("http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model/model/reference_profile.json",
         {}),
        ("http://mlflow:5000/get-artifact", {"run_uuid": "abc", "path": "model/reference_profile.json"}),
    ]
    runs = ResolvedModel(name="m", version="1", source="runs:/r1/model", run_id="r1")
    assert artifact_locations(base, runs)[0] == (
        "http://mlflow:5000/get-artifact", {"run_uuid": "r1", "path": "model/reference_profile.json"})
    s3 = ResolvedModel(name="m", version="1", source="s3://bucket/x", run_id="r2")
    assert artifact_locations(base, s3) == [
        ("http://mlflow:5000/get-artifact", {"run_uuid": "r2", "path": "model/reference_profile.json"})]


def test_prometheus_url_comes_from_the_environment() -> None:
    env = {"MEDSERVE_MLFLOW_URI": "http://mlflow:5000"}
    assert OperatorConfig.from_env(env).prometheus_url is None
    assert OperatorConfig.from_env({**env, "MEDSERVE_PROMETHEUS_URL": "http://prom:9090"}).prometheus_url == \
        "http://prom:9090"


# --- evaluation → status ------------------------------------------------------------------------------


def _outcome(evaluation: Evaluation | None, *, drift_enabled: bool = True,
             min_accuracy: float | None = 0.8) -> Outcome:
    isvc = {"metadata": {"generation": 1, "labels": {"medserve.io/model-version": "3"}},
            "status": {"observedGeneration": 1, "url": "http://triage.default",
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    return Outcome(resolved=MODEL, inference_service=isvc, drift_enabled=drift_enabled, min_accuracy=min_accuracy,
                   evaluation=evaluation)


def _status(current: dict[str, Any], evaluation: Evaluation | None, **kwargs: Any) -> dict[str, Any]:
    return compute_status(current, _outcome(evaluation, **kwargs), name="triage", generation=1, now=NOW)


def _drift(counts: dict[str, list[float]]) -> drift.DriftResult:
    return monitoring.judge_window(PROFILE, spec(), *_vectors(counts))


def _cond(status: dict[str, Any], type_: str) -> tuple[str, str]:
    c = conditions.find(status["conditions"], type_)
    assert c is not None, f"no {type_} condition in {status['conditions']}"
    return str(c["status"]), str(c["reason"])


REFERENCE_LIKE = {"age": [100.0] * 5, "sex": [250.0, 250.0], "symptoms": [200.0, 200.0, 100.0]}
SHIFTED = {**REFERENCE_LIKE, "age": [20.0, 40.0, 80.0, 160.0, 200.0]}


def test_drift_goes_to_status_and_the_condition_without_blocking_ready() -> None:
    ok = _status({}, Evaluation(window="30s", evaluated_at=NOW, drift=_drift(REFERENCE_LIKE)))
    assert _cond(ok, "DriftDetected") == ("False", "NoDrift")
    assert ok["drift"]["statistic"] == "psi" and ok["drift"]["driftedFeatures"] == []
    assert (ok["drift"]["window"], ok["drift"]["evaluatedAt"], ok["drift"]["samples"]) == ("30s", NOW, 500)
    assert 0 < ok["drift"]["pValue"] <= 1 and ok["drift"]["score"] >= 0

    drifted = compute_status(ok, _outcome(Evaluation(window="30s", evaluated_at=LATER, drift=_drift(SHIFTED))),
                             name="triage", generation=1, now=LATER)
    assert _cond(drifted, "DriftDetected") == ("True", "DriftDetected")
    assert drifted["drift"]["driftedFeatures"] == ["age"] and drifted["drift"]["score"] > 0.2
    assert _cond(drifted, "Ready") == ("True", "Ready") and drifted["phase"] == "Ready"
    events = conditions.transitions(ok["conditions"], drifted["conditions"], negative=MD_CONDITIONS.negative)
    assert [(t, r) for t, r, _ in events] == [("Warning", "DriftDetected")]
    assert "age" in events[0][2]

    back = compute_status(drifted, _outcome(Evaluation(window="30s", evaluated_at=LATER,
                                                       drift=_drift(REFERENCE_LIKE))),
                          name="triage", generation=1, now=LATER)
    back_events = conditions.transitions(drifted["conditions"], back["conditions"], negative=MD_CONDITIONS.negative)
    assert [(t, r) for t, r, _ in back_events] == [("Normal", "NoDrift")]


def test_too_few_samples_is_unknown_without_figures() -> None:
    few = {"age": [10.0] * 5, "sex": [25.0, 25.0], "symptoms": [20.0, 20.0, 10.0]}
    status = _status({}, Evaluation(window="30s", evaluated_at=NOW, drift=_drift(few)))
    assert _cond(status, "DriftDetected") == ("Unknown", "InsufficientData")
    assert "fewer than 100 samples" in str(conditions.find(status["conditions"], "DriftDetected"))
    assert "score" not in status["drift"] and "pValue" not in status["drift"]
    assert status["drift"]["samples"] == 50


@pytest.mark.parametrize("reason", ["PrometheusUnavailable", "PrometheusQueryFailed",
                                    "ReferenceProfileUnavailable", "InvalidDriftData"])
def test_an_outage_is_unknown_and_keeps_the_last_figures(reason: str) -> None:
    before = _status({}, Evaluation(window="30s", evaluated_at=NOW, drift=_drift(SHIFTED)))
    problem = Problem(reason, "Prometheus at http://127.0.0.1:9 is unreachable: ConnectError")
    after = compute_status(before, _outcome(Evaluation(window="30s", evaluated_at=LATER, drift_problem=problem,
                                                       accuracy_problem=problem)),
                           name="triage", generation=1, now=LATER)
    assert _cond(after, "DriftDetected") == ("Unknown", reason)
    assert _cond(after, "Degraded") == ("Unknown", reason)
    assert after["drift"] == before["drift"]  # evaluatedAt says how old the figures are
    assert _cond(after, "Ready") == ("True", "Ready")


def test_without_prometheus_the_reason_says_so() -> None:
    status = _status({}, monitoring.not_configured(spec(alerts={"minAccuracy": 0.8}), evaluated_at=NOW))
    assert _cond(status, "DriftDetected") == ("Unknown", "PrometheusNotConfigured")
    assert _cond(status, "Degraded") == ("Unknown", "PrometheusNotConfigured")
    assert "MEDSERVE_PROMETHEUS_URL" in str(conditions.find(status["conditions"], "DriftDetected"))
    assert "drift" not in status


def test_low_accuracy_degrades_and_holds_ready_back() -> None:
    low = _status({}, Evaluation(window="30s", evaluated_at=NOW, accuracy=Accuracy(correct=30, incorrect=20)))
    assert _cond(low, "Degraded") == ("True", "LowAccuracy")
    assert _cond(low, "Ready") == ("False", "LowAccuracy") and low["phase"] == "Degraded"
    assert "accuracy 0.600 from 50 feedback outcomes" in str(conditions.find(low["conditions"], "Degraded"))

    fine = compute_status(low, _outcome(Evaluation(window="30s", evaluated_at=LATER,
                                                   accuracy=Accuracy(correct=45, incorrect=5))),
                          name="triage", generation=1, now=LATER)
    assert _cond(fine, "Degraded") == ("False", "AccuracyOK") and _cond(fine, "Ready") == ("True", "Ready")

    # A handful of answers is not judged: one wrong answer among three would be noise.
    few = _status({}, Evaluation(window="30s", evaluated_at=NOW, accuracy=Accuracy(correct=1, incorrect=2)))
    assert _cond(few, "Degraded") == ("False", "InsufficientFeedback")


def test_no_evaluation_changes_nothing_and_a_spec_that_stops_asking_drops_the_conditions() -> None:
    status = _status({}, Evaluation(window="30s", evaluated_at=NOW, drift=_drift(SHIFTED),
                                    accuracy=Accuracy(correct=40, incorrect=0)))
    assert _status(status, None) == status
    off = _status(status, None, drift_enabled=False, min_accuracy=None)
    assert conditions.find(off["conditions"], "DriftDetected") is None
    assert conditions.find(off["conditions"], "Degraded") is None
    assert "drift" not in off


def test_not_configured_only_reports_what_the_spec_asks_for() -> None:
    evaluation = monitoring.not_configured(spec(enabled=False), evaluated_at=NOW)
    assert evaluation.drift_problem is None and evaluation.accuracy_problem is None
    assert monitoring.finite(float("nan")) is None and monitoring.finite(0.5) == 0.5
