"""The operator's own series (`state_metrics`): built from an object alone, exposed in Prometheus' text format."""

from __future__ import annotations

import pytest
from medserve_contract import metrics as m
from medserve_operator import state_metrics
from prometheus_client import CollectorRegistry, generate_latest


def md(status: dict[str, object] | None = None, alerts: dict[str, object] | None = None) -> dict[str, object]:
    body: dict[str, object] = {"spec": {"model": {"name": "triage", "alias": "champion"},
                                        "monitoring": {"alerts": alerts or {}}}}
    if status is not None:
        body["status"] = status
    return body


def test_deployment_thresholds_and_verdicts() -> None:
    body = md({"drift": {"score": 0.31}, "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "DriftDetected", "status": "True"}]},
        {"latencyP95Ms": 250, "minAccuracy": 0.8})
    series = state_metrics.deployment_series("clinical", "triage", body)
    labels = {"namespace": "clinical", "model": "triage"}
    assert series == {
        m.DEPLOYMENT_LATENCY_P95_THRESHOLD: [(labels, 0.25)],
        m.DEPLOYMENT_MIN_ACCURACY: [(labels, 0.8)],
        m.DEPLOYMENT_READY: [(labels, 1.0)],
        m.DEPLOYMENT_DRIFT_DETECTED: [(labels, 1.0)],
        m.DEPLOYMENT_DRIFT_SCORE: [(labels, 0.31)],
    }


def test_unset_thresholds_and_unknown_drift_export_nothing() -> None:
    series = state_metrics.deployment_series("ns", "d", md({"conditions": [
        {"type": "DriftDetected", "status": "Unknown"}]}))
    assert set(series) == {m.DEPLOYMENT_READY}
    assert series[m.DEPLOYMENT_READY][0][1] == 0.0


def test_abtest_series() -> None:
    body = {"spec": {"control": {"modelDeployment": "a"}, "treatment": {"modelDeployment": "b"}},
            "status": {"phase": "Running", "samples": {"control": 10, "treatment": 4},
                       "estimates": {"control": 0.8, "treatment": 0.9, "difference": 0.1},
                       "alwaysValidPValue": 0.2}}
    series = state_metrics.abtest_series("ns", "t", body)
    assert series[m.ABTEST_OPEN] == [({"namespace": "ns", "abtest": "t", "control": "a", "treatment": "b"}, 1.0)]
    assert [(lab["arm"], v) for lab, v in series[m.ABTEST_SAMPLES]] == [("control", 10.0), ("treatment", 4.0)]
    assert [v for _, v in series[m.ABTEST_ESTIMATE]] == [0.8, 0.9, 0.1]
    assert series[m.ABTEST_P_VALUE][0][1] == 0.2
    concluded = state_metrics.abtest_series("ns", "t", {**body, "status": {"phase": "Concluded"}})
    assert concluded[m.ABTEST_OPEN][0][1] == 0.0
    # Before the first evaluation: open, zero samples (what the stalled alert looks at).
    pending = state_metrics.abtest_series("ns", "t", {"spec": body["spec"]})
    assert pending[m.ABTEST_OPEN][0][1] == 1.0 and [v for _, v in pending[m.ABTEST_SAMPLES]] == [0.0, 0.0]


@pytest.mark.parametrize(("status", "failed", "active"), [
    ({}, None, 0.0),
    ({"lastJob": {"name": "j", "result": "Failed"}}, 1.0, 0.0),
    ({"lastJob": {"name": "j", "result": "Succeeded"}, "activeJob": {"name": "k"}}, 0.0, 1.0),
])
def test_retrainpolicy_series(status: dict[str, object], failed: float | None, active: float) -> None:
    series = state_metrics.retrainpolicy_series("ns", "p", {"spec": {"modelDeployment": "d"}, "status": status})
    assert series[m.RETRAIN_JOB_ACTIVE] == [({"namespace": "ns", "policy": "p", "model": "d"}, active)]
    assert (series[m.RETRAIN_LAST_JOB_FAILED][0][1] if failed is not None else None) == failed
    assert (m.RETRAIN_LAST_JOB_FAILED in series) == (failed is not None)


def test_collector_exposes_and_forgets() -> None:
    collector = state_metrics.StateCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    collector.update("modeldeployments", ("ns", "a"), state_metrics.deployment_series("ns", "a", md(
        alerts={"latencyP95Ms": 100})))
    collector.update("modeldeployments", ("ns", "b"), state_metrics.deployment_series("ns", "b", md()))
    text = generate_latest(registry).decode()
    assert f'{m.DEPLOYMENT_LATENCY_P95_THRESHOLD}{{model="a",namespace="ns"}} 0.1' in text
    assert f'{m.DEPLOYMENT_READY}{{model="b",namespace="ns"}} 0.0' in text
    collector.update("modeldeployments", ("ns", "a"), None)
    text = generate_latest(registry).decode()
    assert 'model="a"' not in text and 'model="b"' in text


@pytest.mark.parametrize("address", ["9464", "host:", "host:0", "host:99999", "host:x"])
def test_a_bad_address_is_named(address: str) -> None:
    with pytest.raises(ValueError, match="MEDSERVE_METRICS_ADDRESS"):
        state_metrics.parse_address(address)


def test_addresses() -> None:
    assert state_metrics.parse_address(":8081") == ("0.0.0.0", 8081)
    assert state_metrics.parse_address("127.0.0.1:9") == ("127.0.0.1", 9)
