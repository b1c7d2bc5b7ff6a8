"""The runtime exports exactly the series the contract (medserve_contract.metrics) names, with its labels:
the real RuntimeMetrics, rendered and parsed with prometheus_client's own text parser."""

from __future__ import annotations

from medserve_contract import metrics as names
from medserve_contract.modelspec import CategoricalProfile, NumericProfile, ReferenceProfile
from medserve_runtime.metrics import RuntimeMetrics
from prometheus_client.parser import text_string_to_metric_families


def test_every_series_is_a_contract_name() -> None:
    profile = ReferenceProfile(samples=10, features=[
        NumericProfile(name="age", bin_edges=[30.0, 60.0], proportions=[0.3, 0.4, 0.3]),
        CategoricalProfile(type="categorical", name="sex", categories=["female", "male"], proportions=[0.5, 0.5]),
    ])
    m = RuntimeMetrics("triage", min_cohort=1)
    m.register_version("3", profile, ["flu", "sepsis"])
    m.serving("3", source="models:/triage/3", device="cpu", optimization="none")
    m.observe_request("3", "/predict", 200, 0.001)
    m.observe_predictions("3", ["flu"], [0.9], [{"age": 40.0, "sex": "female"}])
    m.observe_batch("3", 1)
    m.observe_feedback("3", correct=True)
    m.watch(audit_writable=lambda: True, rate_limit_degraded=lambda: False)
    m.observe_cache(True)
    # prometheus_client adds a `<family>_created` gauge per counter and histogram; not ours to name.
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())
                if not f.name.endswith("_created")}
    assert set(families) == {names.REQUEST_DURATION, names.PREDICTIONS, names.PREDICTION_CONFIDENCE,
                             names.FEEDBACK, names.BATCH_SIZE, names.FEATURE_VALUE, names.FEATURE_CATEGORY,
                             names.MODEL_INFO, names.AUDIT_WRITABLE, names.RATE_LIMIT_DEGRADED,
                             names.PREDICTION_CACHE_LOOKUPS}
    base = {names.MODEL_LABEL, names.VERSION_LABEL}
    expected_labels = {
        names.REQUEST_DURATION: base | {names.ENDPOINT_LABEL, names.CODE_LABEL},
        names.PREDICTIONS: base | {names.CLASS_LABEL},
        names.FEEDBACK: base | {names.OUTCOME_LABEL},
        names.FEATURE_VALUE: base | {names.FEATURE_LABEL},
        names.FEATURE_CATEGORY: base | {names.FEATURE_LABEL, names.CATEGORY_LABEL},
        names.MODEL_INFO: base | {names.SOURCE_LABEL, names.DEVICE_LABEL, names.OPTIMIZATION_LABEL},
        names.AUDIT_WRITABLE: {names.MODEL_LABEL},
        names.RATE_LIMIT_DEGRADED: {names.MODEL_LABEL},
        names.PREDICTION_CACHE_LOOKUPS: {names.MODEL_LABEL, names.RESULT_LABEL},
    }
    for family, labels in expected_labels.items():
        sample = families[family].samples[0]
        assert set(sample.labels) - {"le"} == labels, family
    samples = {s.name for f in families.values() for s in f.samples}
    assert {names.PREDICTIONS_TOTAL, names.FEEDBACK_TOTAL, names.FEATURE_VALUE_BUCKET,
            names.FEATURE_CATEGORY_TOTAL} <= samples
    feedback = {s.labels[names.OUTCOME_LABEL]: s.value for s in families[names.FEEDBACK].samples
                if s.name == names.FEEDBACK_TOTAL}
    assert feedback == {names.OUTCOME_CORRECT: 1.0, names.OUTCOME_INCORRECT: 0.0}


def _scrape(m: RuntimeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples
            if not s.name.endswith("_created")}


def test_a_differential_scrape_reveals_no_one() -> None:
    """One patient between two scrapes changes nothing per-record; a cohort of min_cohort does, and
    then never with a feature `_sum` that would be the patient's value."""
    profile = ReferenceProfile(samples=10, features=[
        NumericProfile(name="age", bin_edges=[30.0, 60.0], proportions=[0.3, 0.4, 0.3]),
        CategoricalProfile(type="categorical", name="sex", categories=["female", "male"], proportions=[0.5, 0.5]),
    ])
    m = RuntimeMetrics("triage", min_cohort=3)
    m.register_version("3", profile, ["flu", "sepsis"])
    before = _scrape(m)
    m.observe_predictions("3", ["sepsis"], [0.97], [{"age": 87.0, "sex": "male"}])
    assert _scrape(m) == before
    m.observe_predictions("3", ["flu", "flu"], [0.6, 0.7], [{"age": 20.0, "sex": "female"}] * 2)
    after = _scrape(m)
    changed = {name for (name, _), value in after.items() if before.get((name, _)) != value}
    assert {names.FEATURE_VALUE_BUCKET, names.FEATURE_CATEGORY_TOTAL, names.PREDICTIONS_TOTAL} <= changed
    assert not [name for name, _ in after if name == names.FEATURE_VALUE + "_sum"]
    counts = [v for (name, _), v in after.items() if name == names.FEATURE_VALUE + "_count"]
    assert counts == [3.0]  # drift's denominator stays
    assert 87.0 not in {v for (name, _), v in after.items() if name.startswith(names.FEATURE_VALUE)}


def test_feedback_and_latency_are_released_in_cohorts_too() -> None:
    """Whether one prediction was right, and one request's latency, endpoint and status, never show as a
    scrape difference: both are held per version until min_cohort of them, then published together."""
    m = RuntimeMetrics("triage", min_cohort=3)
    m.register_version("3", ReferenceProfile(samples=1, features=[
        NumericProfile(name="age", bin_edges=[30.0], proportions=[0.5, 0.5])]), ["flu"])
    before = _scrape(m)
    m.observe_feedback("3", correct=False)
    m.observe_request("3", "/feedback", 200, 0.004)
    m.observe_feedback("3", correct=True)
    m.observe_request("3", "/predict", 422, 0.002)
    assert _scrape(m) == before
    m.observe_feedback("3", correct=True)
    m.observe_request("3", "/predict", 200, 0.001)
    after = _scrape(m)
    feedback = {dict(labels)[names.OUTCOME_LABEL]: v for (name, labels), v in after.items()
                if name == names.FEEDBACK_TOTAL}
    assert feedback == {names.OUTCOME_CORRECT: 2.0, names.OUTCOME_INCORRECT: 1.0}
    counts = {(dict(labels)[names.ENDPOINT_LABEL], dict(labels)[names.CODE_LABEL]): v
              for (name, labels), v in after.items() if name == names.REQUEST_DURATION + "_count"}
    assert counts == {("/feedback", "200"): 1.0, ("/predict", "422"): 1.0, ("/predict", "200"): 1.0}
    m.observe_request("3", "/predict", 200, 0.001)  # the next cohort starts empty
    assert _scrape(m) == after
