"""The chart's optional objects: every one renders, is valid against its schema, and says what the sources say.

Core objects (NetworkPolicy, ConfigMap, Service, Deployment) are validated with kubernetes-validate, as
test_chart.py does. PodMonitor, ServiceMonitor and PrometheusRule are applied with the real `kubectl` to
the API emulator with the Prometheus Operator's own CRDs installed (`../shared/upstream/prometheus-operator/`,
unmodified upstream manifests), which validates every write against their `openAPIV3Schema` as an API
server with the Prometheus Operator installed would; skipped with the reason when that folder is absent.
Needs the real `helm` (skipped without it).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from medserve_operator.tools import monitoring
from medserve_sandbox.emulator import EmulatorProcess, KubectlError
from test_chart import KUBERNETES_VERSION, by_kind, render

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS_OPERATOR = REPO.parent / "shared" / "upstream" / "prometheus-operator"
HELM = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
EVERYTHING = ("monitoring.podMonitor.enabled=true", "monitoring.serviceMonitor.enabled=true",
              "monitoring.prometheusRule.enabled=true", "monitoring.dashboards.enabled=true",
              "networkPolicy.enabled=true", "networkPolicy.namespaces={clinical,research}",
              "prometheus.url=http://prometheus-operated.monitoring:9090",
              "image.digest=sha256:" + "a" * 64, "runtime.image.tag=9.9.9",
              "monitoring.prometheusRule.labels.release=kube-prometheus-stack")
MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary on PATH or in .venv/bin (run `make helm`)")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render(*EVERYTHING)


def test_defaults_render_no_optional_object() -> None:
    kinds = {o["kind"] for o in render()}
    assert not kinds & {*MONITORING_KINDS, "NetworkPolicy", "ConfigMap"}
    assert "Service" in kinds  # the operator's metrics Service is on by default


def test_core_objects_are_valid_kubernetes(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] in MONITORING_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.path}: {exc.message}")


def test_images_settings_and_metrics_reach_the_operator(objects: list[dict[str, Any]]) -> None:
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/medserve/operator@sha256:" + "a" * 64
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MEDSERVE_RUNTIME_IMAGE"] == "ghcr.io/medserve/model-runtime:9.9.9"
    assert env["MEDSERVE_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring:9090"
    assert env["MEDSERVE_METRICS_ADDRESS"] == ":8081"
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    (default,) = by_kind(render(), "Deployment")
    env = {e["name"]: e.get("value") for e in default["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MEDSERVE_RUNTIME_IMAGE"] == "ghcr.io/medserve/model-runtime:0.1.0"
    assert "MEDSERVE_PROMETHEUS_URL" not in env


def test_prometheus_rule_is_the_generated_one(objects: list[dict[str, Any]]) -> None:
    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["spec"] == monitoring.rule_groups()
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_are_configmaps_for_the_grafana_sidecar(objects: list[dict[str, Any]]) -> None:
    maps = by_kind(objects, "ConfigMap")
    assert len(maps) == len(monitoring.DASHBOARDS)
    titles = set()
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "medserve"}
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((monitoring.CHART / monitoring.DASHBOARD_DIR / key).read_text())
        titles.add(json.loads(text)["title"])
    assert titles == {d.title for d in monitoring.DASHBOARDS}


def test_network_policy_per_runtime_namespace(objects: list[dict[str, Any]]) -> None:
    policies = by_kind(objects, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["clinical", "research"]
    policy = policies[0]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "medserve-model"
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (5000, "TCP")}


@pytest.fixture(scope="module")
def monitoring_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not PROMETHEUS_OPERATOR.is_dir():
        pytest.skip(f"{PROMETHEUS_OPERATOR} is absent: the Prometheus Operator's CRD schemas are test data kept "
                    "in shared/upstream/, not in this repository")
    crds = sorted(PROMETHEUS_OPERATOR.glob("monitoring.coreos.com_*.yaml"))
    workdir = tmp_path_factory.mktemp("monitoring-emulator")
    with EmulatorProcess(workdir, crd_paths=crds, log_path=workdir / "emulator.log") as cluster:
        cluster.kubectl("create", "namespace", "medserve-system")
        yield cluster


def test_monitoring_objects_are_valid_against_the_prometheus_operator_schemas(
        objects: list[dict[str, Any]], monitoring_cluster: EmulatorProcess) -> None:
    wanted = [o for o in objects if o["kind"] in MONITORING_KINDS]
    assert sorted(o["kind"] for o in wanted) == sorted(MONITORING_KINDS)
    for obj in wanted:
        result = monitoring_cluster.kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(obj),
                                            check=False)
        assert result.returncode == 0, f"{obj['kind']}: {result.stderr}"
    got = json.loads(monitoring_cluster.kubectl("get", "prometheusrules", "-n", "medserve-system", "-o",
                                                "json").stdout)
    assert got["items"][0]["spec"] == monitoring.rule_groups()


def test_the_schemas_do_reject(objects: list[dict[str, Any]], monitoring_cluster: EmulatorProcess) -> None:
    """The check above can fail: a rule whose `for` is no duration and a PodMonitor with an unknown field."""
    (rule,) = by_kind(objects, "PrometheusRule")
    bad = json.loads(json.dumps(rule))
    bad["metadata"]["name"] = "bad-rule"
    bad["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(KubectlError) as caught:
        monitoring_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad))
    assert "for" in caught.value.stderr
    (pod_monitor,) = by_kind(objects, "PodMonitor")
    bad = json.loads(json.dumps(pod_monitor))
    bad["metadata"]["name"] = "bad-podmonitor"
    bad["spec"]["podMetricsEndpoints"][0]["scrapeEvery"] = "1s"
    result = monitoring_cluster.kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(bad),
                                        check=False)
    assert result.returncode != 0 and "scrapeEvery" in result.stderr
