"""The ABTest reconciler for real: the kopf operator process against the emulated API (which validates every
InferenceGraph against KServe's schema), a real MLflow server, a real Prometheus, and the sandbox's
InferenceGraph stand-in (the weighted splitter) reporting each graph Ready.

Stand-ins, said where they are used: no model runtime runs here, so a small exporter in the test serves
the runtime's feedback counters (`medserve_feedback_total{model,version,outcome}`) for each arm, growing
at a set accuracy, and Prometheus scrapes it as it would scrape the runtimes; and the InferenceServices'
`status.url` and `status.address` (which KServe's controller writes; the graph controller resolves steps from
the address) are patched in by the test, so the splitter can resolve them.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kit import OperatorProcess, get_json, wait_for
from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from medserve_sandbox.prometheus_server import TARGETS_FILE, PrometheusServer, write_targets
from mlflow import MlflowClient

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="the prometheus binary is not installed (apt-get install prometheus)")

CONCLUDE = 90.0
"""Seconds to wait for a test to conclude (about 200 samples per arm arrive within 10 s)."""


class FeedbackExporter:
    """Serves `medserve_feedback_total` for the arms it is given, each growing by 5 outcomes every 0.2 s."""

    def __init__(self) -> None:
        self.rates: dict[tuple[str, str], float] = {}
        self.latencies: dict[tuple[str, str], float] = {}
        self.counts: dict[tuple[str, str, str], int] = {}
        self.lock = threading.Lock()
        self.rng = random.Random(11)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                        threading.Thread(target=self.grow, daemon=True)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def arm(self, model: str, version: str, accuracy: float) -> None:
        with self.lock:
            self.rates[(model, version)] = accuracy
            for outcome in ("correct", "incorrect"):
                self.counts.setdefault((model, version, outcome), 0)

    def latency(self, model: str, version: str, seconds: float) -> None:
        """Also serve a gauge `arm_latency_seconds` for the arm: `seconds`, give or take 10%."""
        with self.lock:
            self.latencies[(model, version)] = seconds

    def grow(self) -> None:
        while not self.stop.wait(0.2):
            with self.lock:
                for (model, version), accuracy in self.rates.items():
                    for _ in range(5):
                        outcome = "correct" if self.rng.random() < accuracy else "incorrect"
                        self.counts[(model, version, outcome)] += 1

    def exposition(self) -> str:
        with self.lock:
            lines = ["# TYPE medserve_feedback_total counter"]
            lines += [f'medserve_feedback_total{{model="{m}",version="{v}",outcome="{o}"}} {n}'
                      for (m, v, o), n in sorted(self.counts.items())]
            lines.append("# TYPE arm_latency_seconds gauge")
            lines += [f'arm_latency_seconds{{model="{m}",version="{v}"}} {s * self.rng.uniform(0.9, 1.1):.6f}'
                      for (m, v), s in sorted(self.latencies.items())]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> FeedbackExporter:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def exporter() -> Iterator[FeedbackExporter]:
    with FeedbackExporter() as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, exporter: FeedbackExporter) -> Iterator[PrometheusServer]:
    workdir = tmp_path_factory.mktemp("ab-prometheus")
    write_targets(workdir / TARGETS_FILE, [(exporter.address, {"namespace": "default", "pod": "exporter"})])
    with PrometheusServer(workdir) as server:
        yield server


@pytest.fixture(scope="module")
def graph_standin(cluster: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("graph-standin") / "graph-standin.log"
    proc = procs.spawn([sys.executable, "-m", "medserve_sandbox.graph_standin", "--kubeconfig",
                        str(cluster.kubeconfig)], log_path=log)
    procs.wait_until(lambda: "InferenceGraph stand-in watching" in log.read_text(errors="replace"), proc=proc,
                     log_path=log, what="InferenceGraph stand-in", timeout=60)
    yield
    procs.stop(proc)


@pytest.fixture(scope="module")
def ab_operator(cluster: EmulatorProcess, mlflow_server: MlflowServer, prometheus: PrometheusServer,
                graph_standin: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, mlflow_server.url, tmp_path_factory.mktemp("ab-op") / "operator.log",
                         prometheus_url=prometheus.url)
    op.start()
    yield op
    op.stop()


def register(mlflow_url: str, name: str, versions: int = 2) -> MlflowClient:
    """A registered model with artifact-less versions 1..n and the alias champion on version 1."""
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    client.create_registered_model(name)
    run = client.create_run(experiment_id="0")
    for _ in range(versions):
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    return client


def apply(cluster: EmulatorProcess, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def apply_md(cluster: EmulatorProcess, name: str, model: dict[str, str]) -> None:
    apply(cluster, {"apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"model": model, "monitoring": {"interval": "1s", "drift": {"enabled": False}}}})


def serve(cluster: EmulatorProcess, name: str) -> None:
    """Wait for the operator's InferenceService, then report it served, as KServe's controller would."""
    wait_for(lambda: get_json(cluster, "inferenceservice", name), what=f"InferenceService {name}")
    cluster.kubectl("patch", "inferenceservice", name, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"url": f"http://127.0.0.1:9/{name}", "address": {"url": f"http://127.0.0.1:9/{name}"},
                    "conditions": [{"type": "Ready", "status": "True"}]}}))


def two_arms(cluster: EmulatorProcess, mlflow_url: str, name: str, control: dict[str, str]) -> MlflowClient:
    """Model `name` (versions 1 and 2), ModelDeployment `name` on `control` and `name`-v2 on version 2, both
    served."""
    client = register(mlflow_url, name)
    apply_md(cluster, name, {"name": name, **control})
    apply_md(cluster, f"{name}-v2", {"name": name, "version": "2"})
    for deployment in (name, f"{name}-v2"):
        serve(cluster, deployment)
    return client


def apply_abtest(cluster: EmulatorProcess, name: str, control: str, treatment: str, **spec: Any) -> None:
    apply(cluster, {"apiVersion": "medserve.io/v1alpha1", "kind": "ABTest",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"control": {"modelDeployment": control}, "treatment": {"modelDeployment": treatment},
                             "trafficSplit": {"treatmentPercent": 40},
                             "statistics": {"interval": "1s", "minimumDetectableEffect": 0.05,
                                            "minSamplesPerArm": 50},
                             "onConclusion": {"promote": True}, **spec}})


def get(cluster: EmulatorProcess, kind: str, name: str) -> dict[str, Any]:
    return get_json(cluster, kind, name) or {}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((dict(c) for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def event_reasons(cluster: EmulatorProcess, name: str) -> set[str]:
    events = cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
    return {e["reason"] for e in json.loads(events.stdout)["items"]}


def concluded(cluster: EmulatorProcess, name: str) -> dict[str, Any]:
    test: dict[str, Any] = wait_for(lambda: (t := get(cluster, "abtest", name)).get("status", {}).get("phase")
                                    == "Concluded" and t, timeout=CONCLUDE, what=f"ABTest {name} to conclude")
    return test


def test_better_treatment_wins_and_the_alias_moves(cluster: EmulatorProcess, ab_operator: OperatorProcess,
                                                    mlflow_server: MlflowServer, exporter: FeedbackExporter) -> None:
    client = two_arms(cluster, mlflow_server.url, "ab-win", {"alias": "champion"})
    exporter.arm("ab-win", "1", 0.80)
    exporter.arm("ab-win-v2", "2", 0.95)
    apply_abtest(cluster, "ab-win", "ab-win", "ab-win-v2")

    # The graph: rendered, admitted against KServe's schema by the emulator, owned by the ABTest, served.
    graph = wait_for(lambda: get_json(cluster, "inferencegraph", "ab-win"), what="the InferenceGraph")
    steps = graph["spec"]["nodes"]["root"]["steps"]
    assert [(s["serviceName"], s["weight"]) for s in steps] == [("ab-win", 60), ("ab-win-v2", 40)]
    running = wait_for(lambda: (t := get(cluster, "abtest", "ab-win")).get("status", {}).get("phase") == "Running"
                       and t, what="the ABTest running")
    assert graph["metadata"]["ownerReferences"][0]["uid"] == running["metadata"]["uid"]
    assert running["status"]["url"].startswith("http://127.0.0.1:")
    assert running["status"]["modelVersions"] == {"control": "1", "treatment": "2"}

    test = concluded(cluster, "ab-win")
    status = test["status"]
    assert status["decision"] == "TreatmentBetter"
    low, high = status["estimates"]["confidenceSequence"]
    assert 0 < low <= status["estimates"]["difference"] <= high
    assert 0.05 < status["estimates"]["difference"] < 0.25  # the exporter's 0.95 vs 0.80, give or take
    assert status["alwaysValidPValue"] <= 0.05
    assert min(status["samples"].values()) >= 50
    assert condition(test, "Concluded")["reason"] == "TreatmentBetter"
    promoted = wait_for(lambda: condition(get(cluster, "abtest", "ab-win"), "Promoted"), what="Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "AliasMoved")
    for part in ("alias champion", "version 2", "data from "):
        assert part in promoted["message"]
    assert client.get_model_version_by_alias("ab-win", "champion").version == "2"
    # The control follows the alias to version 2; the graph now sends it everything.
    wait_for(lambda: get(cluster, "modeldeployment", "ab-win").get("status", {}).get("model", {}).get("version")
             == "2", what="the control on version 2")
    steps = get(cluster, "inferencegraph", "ab-win")["spec"]["nodes"]["root"]["steps"]
    assert [(s["serviceName"], s["weight"]) for s in steps] == [("ab-win", 100)]
    assert {"ABTestStarted", "ABTestConcluded", "Promoted"} <= event_reasons(cluster, "ab-win")

    # Concluded is final: more data changes nothing.
    time.sleep(3)
    assert get(cluster, "abtest", "ab-win")["status"]["samples"] == status["samples"]


def test_worse_treatment_loses_and_a_pinned_control_stays(
        cluster: EmulatorProcess, ab_operator: OperatorProcess, mlflow_server: MlflowServer,
        exporter: FeedbackExporter) -> None:
    two_arms(cluster, mlflow_server.url, "ab-lose", {"version": "1"})
    exporter.arm("ab-lose", "1", 0.95)
    exporter.arm("ab-lose-v2", "2", 0.75)
    apply_abtest(cluster, "ab-lose", "ab-lose", "ab-lose-v2")
    test = concluded(cluster, "ab-lose")
    assert test["status"]["decision"] == "ControlBetter"
    assert test["status"]["estimates"]["confidenceSequence"][1] < 0
    promoted = wait_for(lambda: condition(get(cluster, "abtest", "ab-lose"), "Promoted"), what="Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "ControlKept")
    assert get(cluster, "modeldeployment", "ab-lose")["spec"]["model"] == {"name": "ab-lose", "version": "1"}
    assert "NotPromoted" in event_reasons(cluster, "ab-lose")


def test_missing_and_identical_arms_are_conditions(
        cluster: EmulatorProcess, ab_operator: OperatorProcess, mlflow_server: MlflowServer) -> None:
    register(mlflow_server.url, "ab-arms")
    apply_md(cluster, "ab-arms", {"name": "ab-arms", "version": "1"})
    apply_abtest(cluster, "ab-missing", "ab-arms", "ab-arms-nowhere")
    test = wait_for(lambda: (t := get(cluster, "abtest", "ab-missing")) and
                    condition(t, "ArmsReady").get("reason") == "ModelDeploymentNotFound" and t,
                    what="ArmsReady=False ModelDeploymentNotFound")
    assert "ab-arms-nowhere" in condition(test, "ArmsReady")["message"]
    assert condition(test, "Ready")["status"] == "False"
    assert test["status"]["phase"] == "Pending"
    assert get_json(cluster, "inferencegraph", "ab-missing") is None

    apply_md(cluster, "ab-arms-same", {"name": "ab-arms", "alias": "champion"})  # version 1 as well
    apply_abtest(cluster, "ab-same", "ab-arms", "ab-arms-same")
    wait_for(lambda: condition(get(cluster, "abtest", "ab-same"), "ArmsReady").get("reason") == "IdenticalArms",
             what="ArmsReady=False IdenticalArms")

    # A metric the feedback cannot give is named as such once the test runs.
    apply_md(cluster, "ab-arms-v2", {"name": "ab-arms", "version": "2"})
    for name in ("ab-arms", "ab-arms-v2"):
        serve(cluster, name)
    apply_abtest(cluster, "ab-mean", "ab-arms", "ab-arms-v2",
                 metric={"name": "latency", "source": "feedback", "kind": "mean", "higherIsBetter": False})
    metrics = wait_for(lambda: condition(get(cluster, "abtest", "ab-mean"), "MetricsAvailable"),
                       what="MetricsAvailable")
    assert (metrics["status"], metrics["reason"]) == ("False", "InvalidMetric")
    assert "source feedback gives accuracy" in metrics["message"]
    assert ab_operator.alive()


def test_retrain_policy_abtest_strategy_keeps_the_champion_when_the_challenger_loses(
        cluster: EmulatorProcess, ab_operator: OperatorProcess, mlflow_server: MlflowServer,
        exporter: FeedbackExporter, tmp_path: Path) -> None:
    """The closed loop's losing branch; the winning branch runs in the sandbox test with real runtimes.

    The Job stand-in is not needed: the test registers version 2 tagged with a Job's name and writes that
    Job's Complete condition through the status subresource, as the Job controller would.
    """
    client = register(mlflow_server.url, "ab-loop", versions=1)
    apply_md(cluster, "ab-loop", {"name": "ab-loop", "alias": "champion"})
    serve(cluster, "ab-loop")
    apply(cluster, {"apiVersion": "medserve.io/v1alpha1", "kind": "RetrainPolicy",
                    "metadata": {"name": "ab-loop", "namespace": "default"},
                    "spec": {"modelDeployment": "ab-loop", "schedule": "0 3 * * 0",
                             "job": {"image": "x", "command": ["python", "-c", "pass"]},
                             "promotion": {"strategy": "abtest", "abTest": {
                                 "statistics": {"interval": "1s", "minimumDetectableEffect": 0.05,
                                                "minSamplesPerArm": 50}}}}})
    policy = wait_for(lambda: get_json(cluster, "retrainpolicy", "ab-loop"), what="the policy")
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "ab-loop-manual", "namespace": "default",
                        "labels": {"app.kubernetes.io/managed-by": "medserve", "medserve.io/retrain-policy": "ab-loop"},
                        "annotations": {"medserve.io/model-name": "ab-loop"},
                        "ownerReferences": [{"apiVersion": "medserve.io/v1alpha1", "kind": "RetrainPolicy",
                                             "name": "ab-loop", "uid": policy["metadata"]["uid"]}]},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "train", "image": "x"}]}}}}
    apply(cluster, job)
    run = client.create_run(experiment_id="0")
    client.create_model_version("ab-loop", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                tags={"medserve.io/job-name": "ab-loop-manual"})
    exporter.arm("ab-loop", "1", 0.95)
    exporter.arm("ab-loop-v2", "2", 0.70)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cluster.kubectl("patch", "job", "ab-loop-manual", "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"succeeded": 1, "startTime": now, "completionTime": now,
                    "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                                   {"type": "Complete", "status": "True", "lastTransitionTime": now}]}}))

    record = wait_for(lambda: get(cluster, "retrainpolicy", "ab-loop").get("status", {}).get("abTest"),
                      what="the policy's ABTest")
    assert record == {"name": "ab-loop-v2", "challenger": "ab-loop-v2", "modelVersion": "2"}
    challenger = get(cluster, "modeldeployment", "ab-loop-v2")
    assert challenger["spec"]["model"] == {"name": "ab-loop", "version": "2"}
    assert challenger["metadata"]["ownerReferences"][0]["kind"] == "RetrainPolicy"
    assert condition(get(cluster, "retrainpolicy", "ab-loop"), "Promoted")["reason"] == "ABTestRunning"
    serve(cluster, "ab-loop-v2")

    test = concluded(cluster, "ab-loop-v2")
    assert test["status"]["decision"] == "ControlBetter"
    policy = wait_for(lambda: (p := get(cluster, "retrainpolicy", "ab-loop")).get("status", {}).get("abTest", {})
                      .get("promoted") is False and p, what="the policy to record the loss")
    promoted = condition(policy, "Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "ABTestLost")
    assert "ControlBetter" in promoted["message"]
    assert policy["status"]["abTest"]["decision"] == "ControlBetter"
    wait_for(lambda: get_json(cluster, "modeldeployment", "ab-loop-v2") is None, what="the challenger removed")
    assert client.get_model_version_by_alias("ab-loop", "champion").version == "1"
    assert {"ABTestStarted", "NotPromoted", "ChallengerRemoved"} <= event_reasons(cluster, "ab-loop")


def test_a_promql_mean_metric_decides_lower_is_better(
        cluster: EmulatorProcess, ab_operator: OperatorProcess, mlflow_server: MlflowServer,
        exporter: FeedbackExporter) -> None:
    two_arms(cluster, mlflow_server.url, "ab-lat", {"version": "1"})
    exporter.latency("ab-lat", "1", 0.200)
    exporter.latency("ab-lat-v2", "2", 0.120)
    apply_abtest(cluster, "ab-lat", "ab-lat", "ab-lat-v2",
                 metric={"name": "latency", "source": "promql", "kind": "mean", "higherIsBetter": False,
                         "promql": 'max(arm_latency_seconds{model="{arm_model}",version="{arm_version}"})'},
                 statistics={"interval": "1s", "minimumDetectableEffect": 0.02, "minSamplesPerArm": 8})
    test = concluded(cluster, "ab-lat")
    status = test["status"]
    assert status["decision"] == "TreatmentBetter"  # lower latency is better
    assert 0.1 < status["estimates"]["control"] < 0.3 and status["estimates"]["difference"] < 0
    assert status["estimates"]["confidenceSequence"][1] < 0  # reported in the metric's own direction
    assert min(status["samples"].values()) >= 8  # looks, one per interval


def test_prometheus_down_is_a_condition_and_the_test_resumes(
        cluster: EmulatorProcess, ab_operator: OperatorProcess, mlflow_server: MlflowServer,
        exporter: FeedbackExporter, prometheus: PrometheusServer) -> None:
    two_arms(cluster, mlflow_server.url, "ab-outage", {"version": "1"})
    exporter.arm("ab-outage", "1", 0.9)
    exporter.arm("ab-outage-v2", "2", 0.9)
    apply_abtest(cluster, "ab-outage", "ab-outage", "ab-outage-v2",
                 statistics={"interval": "1s", "minSamplesPerArm": 50, "maxSamplesPerArm": 100000})
    wait_for(lambda: condition(get(cluster, "abtest", "ab-outage"), "MetricsAvailable").get("status") == "True",
             what="the first evaluation")
    prometheus.stop()
    try:
        down = wait_for(lambda: (c := condition(get(cluster, "abtest", "ab-outage"), "MetricsAvailable"))
                        .get("status") == "False" and c, what="MetricsAvailable=False")
        assert down["reason"] == "PrometheusUnavailable" and "unreachable" in down["message"]
        test = get(cluster, "abtest", "ab-outage")
        assert test["status"]["phase"] == "Running" and condition(test, "Ready")["status"] == "False"
        assert ab_operator.alive()
    finally:
        prometheus.start()
    wait_for(lambda: condition(get(cluster, "abtest", "ab-outage"), "MetricsAvailable").get("status") == "True",
             timeout=60, what="MetricsAvailable=True again")
    assert "PrometheusUnavailable" in event_reasons(cluster, "ab-outage")
