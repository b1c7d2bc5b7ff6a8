"""The operator's own /metrics: what each medserve object asks for and what the operator found.

The chart's alert rules and dashboards join these with the runtimes' series. A ModelDeployment's
`monitoring.alerts.latencyP95Ms` and `minAccuracy` can reach PromQL no other way (a label cannot be
compared with a sample value), and drift, A/B samples and retraining Jobs are the operator's findings,
which only its status knows. The operator exports them rather than the runtime (which knows neither the
alert thresholds nor the verdicts) or kube-state-metrics' custom-resource-state (a second component every
cluster would have to configure the same way).

The series are rebuilt from each watch event (kopf's `on.event` hands over the object as it is now) and
dropped when the object is deleted; a scrape reads memory and queries nothing. Names and labels are in
`medserve_contract.metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import kopf
from medserve_contract import metrics as m
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from medserve_operator.api import GROUP, VERSION

Key = tuple[str, str]  # (namespace, name)
Series = dict[str, list[tuple[dict[str, str], float]]]  # metric name -> [(labels, value)]

_HELP = {
    m.DEPLOYMENT_LATENCY_P95_THRESHOLD: "spec.monitoring.alerts.latencyP95Ms, in seconds.",
    m.DEPLOYMENT_MIN_ACCURACY: "spec.monitoring.alerts.minAccuracy.",
    m.DEPLOYMENT_READY: "1 when the ModelDeployment is Ready.",
    m.DEPLOYMENT_DRIFT_DETECTED: "1 when DriftDetected is True, 0 when False; absent while Unknown.",
    m.DEPLOYMENT_DRIFT_SCORE: "The largest per-feature drift score of the last window.",
    m.ABTEST_OPEN: "1 while the ABTest is Pending or Running.",
    m.ABTEST_SAMPLES: "Samples per arm.",
    m.ABTEST_ESTIMATE: "The metric's estimate per arm, and their difference.",
    m.ABTEST_P_VALUE: "The always-valid p-value.",
    m.RETRAIN_JOB_ACTIVE: "1 while a retraining Job runs.",
    m.RETRAIN_LAST_JOB_FAILED: "1 when the last finished retraining Job failed.",
}


def _condition(status: Mapping[str, Any], type_: str) -> str | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return str(condition.get("status"))
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def deployment_series(namespace: str, name: str, body: Mapping[str, Any]) -> Series:
    """The series of one ModelDeployment (a pure function of the object, for the tests)."""
    labels = {m.NAMESPACE_LABEL: namespace, m.MODEL_LABEL: name}
    spec, status = body.get("spec") or {}, body.get("status") or {}
    alerts = (spec.get("monitoring") or {}).get("alerts") or {}
    out: Series = {}
    if (latency := _number(alerts.get("latencyP95Ms"))) is not None:
        out[m.DEPLOYMENT_LATENCY_P95_THRESHOLD] = [(labels, latency / 1000.0)]
    if (accuracy := _number(alerts.get("minAccuracy"))) is not None:
        out[m.DEPLOYMENT_MIN_ACCURACY] = [(labels, accuracy)]
    out[m.DEPLOYMENT_READY] = [(labels, 1.0 if _condition(status, "Ready") == "True" else 0.0)]
    drift = _condition(status, "DriftDetected")
    if drift in ("True", "False"):
        out[m.DEPLOYMENT_DRIFT_DETECTED] = [(labels, 1.0 if drift == "True" else 0.0)]
    if (score := _number((status.get("drift") or {}).get("score"))) is not None:
        out[m.DEPLOYMENT_DRIFT_SCORE] = [(labels, score)]
    return out


def abtest_series(namespace: str, name: str, body: Mapping[str, Any]) -> Series:
    """The series of one ABTest."""
    labels = {m.NAMESPACE_LABEL: namespace, m.ABTEST_LABEL: name}
    spec, status = body.get("spec") or {}, body.get("status") or {}
    arms = {"control": str((spec.get("control") or {}).get("modelDeployment") or ""),
            "treatment": str((spec.get("treatment") or {}).get("modelDeployment") or "")}
    phase = status.get("phase") or "Pending"
    out: Series = {m.ABTEST_OPEN: [({**labels, **arms}, 1.0 if phase in ("Pending", "Running") else 0.0)]}
    samples = status.get("samples") or {}
    out[m.ABTEST_SAMPLES] = [({**labels, m.ARM_LABEL: arm}, _number(samples.get(arm)) or 0.0) for arm in arms]
    estimates = status.get("estimates") or {}
    out[m.ABTEST_ESTIMATE] = [({**labels, m.ARM_LABEL: arm}, value) for arm in ("control", "treatment", "difference")
                              if (value := _number(estimates.get(arm))) is not None]
    if (p := _number(status.get("alwaysValidPValue"))) is not None:
        out[m.ABTEST_P_VALUE] = [(labels, p)]
    return out


def retrainpolicy_series(namespace: str, name: str, body: Mapping[str, Any]) -> Series:
    """The series of one RetrainPolicy."""
    labels = {m.NAMESPACE_LABEL: namespace, m.POLICY_LABEL: name,
              m.MODEL_LABEL: str((body.get("spec") or {}).get("modelDeployment") or "")}
    status = body.get("status") or {}
    out: Series = {m.RETRAIN_JOB_ACTIVE: [(labels, 1.0 if status.get("activeJob") else 0.0)]}
    result = (status.get("lastJob") or {}).get("result")
    if result in ("Succeeded", "Failed"):
        out[m.RETRAIN_LAST_JOB_FAILED] = [(labels, 1.0 if result == "Failed" else 0.0)]
    return out


class StateCollector(Collector):
    """The latest series of every watched object, yielded at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # written on the operator's event loop, read by the HTTP thread
        self._objects: dict[tuple[str, Key], Series] = {}

    def update(self, plural: str, key: Key, series: Series | None) -> None:
        with self._lock:
            if series is None:
                self._objects.pop((plural, key), None)
            else:
                self._objects[(plural, key)] = series

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            objects = list(self._objects.values())
        families: dict[str, GaugeMetricFamily] = {}
        for series in objects:
            for name, samples in series.items():
                for labels, value in samples:
                    family = families.get(name)
                    if family is None:
                        family = families[name] = GaugeMetricFamily(name, _HELP[name], labels=list(labels))
                    family.add_metric(list(labels.values()), value)
        yield from families.values()


Builder = Callable[[str, str, Mapping[str, Any]], Series]
BUILDERS: dict[str, Builder] = {"modeldeployments": deployment_series, "abtests": abtest_series,
            "retrainpolicies": retrainpolicy_series}


def register(registry: kopf.OperatorRegistry, collector: StateCollector) -> None:
    """Keep `collector` up to date from the watch streams of the three kinds."""
    for plural, build in BUILDERS.items():
        _watch(registry, collector, plural, build)


def _watch(registry: kopf.OperatorRegistry, collector: StateCollector, plural: str, build: Builder) -> None:
    @kopf.on.event(GROUP, VERSION, plural, registry=registry)
    async def observed(body: kopf.Body, type: str | None, **_: Any) -> None:
        key = (str(body.metadata.namespace), str(body.metadata.name))
        collector.update(plural, key, None if type == "DELETED" else build(key[0], key[1], body))


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, all interfaces) of MEDSERVE_METRICS_ADDRESS; ValueError naming it otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"MEDSERVE_METRICS_ADDRESS must be HOST:PORT or :PORT, got {address!r}")
    return host or "0.0.0.0", int(port)  # in a pod, the Service and the NetworkPolicy limit who scrapes


def serve(collector: StateCollector, address: str) -> None:
    """Serve `collector` on http://ADDRESS/metrics from a daemon thread."""
    host, port = parse_address(address)
    scrape_registry = CollectorRegistry()
    scrape_registry.register(collector)
    start_http_server(port, addr=host, registry=scrape_registry)
