"""Every alert expression and every dashboard query of the chart returns data from a real Prometheus.

The set-up of test_drift_prometheus.py, plus what the rules look at: the example training job registers
versions 1 (alias champion) and 2 of a model in a real MLflow; the real operator runs against the API
emulator with MEDSERVE_PROMETHEUS_URL and its own /metrics (MEDSERVE_METRICS_ADDRESS) on; the sandbox's
KServe stand-in runs each InferenceService as a real medserve-runtime process, the InferenceGraph stand-in
serves the A/B split and the Job stand-in runs retraining Jobs as local processes. A real Prometheus
(Debian's binary) scrapes the runtimes as job `medserve-runtime` (what the chart's PodMonitor relabels
to) and the operator with honor_labels (what the chart's ServiceMonitor sets), as the sandbox's does,
plus one runtime target whose port nobody listens on: a runtime that is down.

Each alert is driven into the state it fires on — a latencyP95Ms of 1 ms, wrong ground truth under a
minAccuracy of 0.99, shifted traffic, a retraining Job that exits 3, an ABTest whose treatment does not
exist, the dead target — and the alert's `expr` (the `for` is Prometheus' rule evaluation, not the
expression) and each panel's PromQL (Grafana's variables set to match all) must return at least one
series at some point of the run. Then `medserve_sandbox.dashboards` draws every dashboard over the run
as a PNG from the same Prometheus, and every panel must have drawn a line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kit import OperatorProcess, get_json, wait_for
from medserve_operator.kit import conditions
from medserve_operator.tools import monitoring
from medserve_sandbox import dashboards, procs
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from medserve_sandbox.prometheus_server import JOB_NAME, PrometheusServer, render_config
from runtime_kit import clinical_records

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="the prometheus binary is not installed (apt-get install prometheus)")

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "examples" / "training" / "train.py"
MODEL = "alerts-triage-model"
CONTROL, TREATMENT = "alerts-triage", "alerts-triage-b"
RUNNING_AB, STALLED_AB, POLICY = "alerts-ab", "alerts-stalled", "alerts-retrain"
LABELS = ["upper_respiratory_infection", "pneumonia", "sepsis", "acute_coronary_syndrome"]
WAIT = 180.0
METRICS_PORT = procs.free_port()
DEAD_PORT = procs.free_port()


class AlertsPrometheus(PrometheusServer):
    """The sandbox's Prometheus (runtimes and the operator), plus one runtime target that is down."""

    operator_target = f"127.0.0.1:{METRICS_PORT}"

    def prepare(self) -> None:
        super().prepare()
        config: dict[str, Any] = render_config(self.targets_file, operator_target=self.operator_target)
        runtime = config["scrape_configs"][0]
        assert runtime["job_name"] == JOB_NAME == monitoring.RUNTIME_JOB
        runtime["static_configs"] = [{"targets": [f"127.0.0.1:{DEAD_PORT}"], "labels": {
            "namespace": "default", "inferenceservice": "gone", "pod": "gone-predictor-00001"}}]
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))


def train(mlflow_url: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, "MEDSERVE_MODEL_NAME": MODEL}
    result = subprocess.run([sys.executable, str(TRAIN), *args, "--json"], env=env, capture_output=True, text=True,
                            timeout=300, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture(scope="module")
def registered(mlflow_server: MlflowServer) -> None:
    train(mlflow_server.url, "--alias", "champion", "--epochs", "10")
    train(mlflow_server.url, "--epochs", "3", "--samples", "1000")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alerts")


@pytest.fixture(scope="module")
def prometheus(workdir: Path) -> Iterator[PrometheusServer]:
    with AlertsPrometheus(workdir / "prometheus") as server:
        yield server


def standin(module: str, banner: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = procs.spawn([sys.executable, "-m", module, *args], log_path=log)
    procs.wait_until(lambda: banner in log.read_text(errors="replace"), proc=proc, log_path=log, what=module,
                     timeout=60)
    return proc


@pytest.fixture(scope="module")
def standins(cluster: EmulatorProcess, mlflow_server: MlflowServer, workdir: Path) -> Iterator[None]:
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    started = [
        standin("medserve_sandbox.kserve_standin", "KServe stand-in watching", workdir / "kserve-standin.log",
                *kube, "--workdir", str(workdir), "--mlflow-uri", mlflow_server.url),
        standin("medserve_sandbox.graph_standin", "InferenceGraph stand-in watching", workdir / "graph-standin.log",
                *kube),
        standin("medserve_sandbox.job_standin", "Job stand-in watching", workdir / "job-standin.log", *kube,
                "--workdir", str(workdir / "jobs"), "--cwd", str(REPO), "--mlflow-uri", mlflow_server.url,
                "--backoff-seconds", "1"),
    ]
    try:
        yield
    finally:
        for proc in started:
            procs.stop(proc, timeout=30)


@pytest.fixture(scope="module")
def monitored_operator(cluster: EmulatorProcess, mlflow_server: MlflowServer, prometheus: PrometheusServer,
                       workdir: Path) -> Iterator[OperatorProcess]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSERVE_METRICS_ADDRESS", f"127.0.0.1:{METRICS_PORT}")
        op = OperatorProcess(cluster.kubeconfig, mlflow_server.url, workdir / "operator.log",
                             prometheus_url=prometheus.url)
        op.start()
    yield op
    op.stop()


def apply(cluster: EmulatorProcess, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def deployment(name: str, model: dict[str, str], **monitoring_spec: Any) -> dict[str, Any]:
    return {"apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": model, "scaling": {"minReplicas": 1, "maxReplicas": 1},
                     "rollout": {"canaryTrafficPercent": 0},
                     "monitoring": {"interval": "2s", **monitoring_spec},
                     "security": {"rateLimitPerMinute": 100000, "auditLog": False}}}


def abtest(name: str, treatment: str) -> dict[str, Any]:
    return {"apiVersion": "medserve.io/v1alpha1", "kind": "ABTest", "metadata": {"name": name, "namespace": "default"},
            "spec": {"control": {"modelDeployment": CONTROL}, "treatment": {"modelDeployment": treatment},
                     "trafficSplit": {"treatmentPercent": 50},
                     # Far more samples than the test sends: the test stays open (Running) throughout.
                     "statistics": {"interval": "1s", "minSamplesPerArm": 5000, "maxSamplesPerArm": 20000}}}


def get(cluster: EmulatorProcess, kind: str, name: str) -> dict[str, Any]:
    return get_json(cluster, kind, name, "-n", "default") or {}


def status_of(cluster: EmulatorProcess, kind: str, name: str) -> dict[str, Any]:
    return get(cluster, kind, name).get("status") or {}


def predict(url: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(records), 250):
            body = {"requests": [{"patient_id": f"p-{start + i}", "clinical_data": r}
                                 for i, r in enumerate(records[start:start + 250])]}
            response = client.post("/batch_predict", json=body)
            assert response.status_code == 200, response.text
            out.extend(response.json()["predictions"])
    return out


def scraped_after(prometheus: PrometheusServer, name: str, since: float) -> bool:
    """Whether Prometheus' latest scrape of the runtime of InferenceService `name` is later than `since`."""
    query = f'timestamp(up{{inferenceservice="{name}"}} == 1)'
    body = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": query}, timeout=10).json()
    return any(float(r["value"][1]) > since for r in body["data"]["result"])


@contextlib.contextmanager
def shifted_traffic(url: str) -> Iterator[None]:
    """A shifted population sent to `url` in batches of 250, every second, while the block runs."""
    stop = threading.Event()
    errors: list[Exception] = []

    def send() -> None:
        seed = 202
        while not stop.is_set():
            try:
                predict(url, clinical_records(250, seed=seed, shift=1.5))
            except Exception as exc:  # reported when the block ends
                errors.append(exc)
                return
            seed += 1
            stop.wait(1.0)

    sender = threading.Thread(target=send, name="shifted-traffic", daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(timeout=120)
    assert not errors, f"the shifted traffic failed: {errors[0]!r}"


def feedback(url: str, predictions: list[dict[str, Any]], *, correct: bool) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for p in predictions:
            predicted = p["prediction"]["primary_diagnosis"]
            outcome = predicted if correct else next(label for label in LABELS if label != predicted)
            response = client.post("/feedback", json={"prediction_id": p["prediction_id"], "outcome": outcome})
            assert response.status_code == 200, response.text


class Queries:
    """Every alert expression and panel query; `poll()` records those that return data now."""

    def __init__(self, prometheus: PrometheusServer) -> None:
        self.url = prometheus.url
        self.pending: dict[str, str] = {f"alert {a.name}": a.expr for a in monitoring.ALERTS}
        for board, panel, expr in monitoring.dashboard_queries():
            self.pending[f"{board} / {panel}: {expr}"] = monitoring.concrete(expr)
        self.total = len(self.pending)

    def poll(self) -> bool:
        for what, expr in list(self.pending.items()):
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
            body = response.json()
            assert body["status"] == "success", f"{what}: {body}"
            if body["data"]["result"]:
                del self.pending[what]
        return not self.pending


@pytest.mark.timeout(1200)
def test_every_alert_and_panel_returns_data(
        cluster: EmulatorProcess, registered: None, prometheus: PrometheusServer, standins: None,
        monitored_operator: OperatorProcess, tmp_path: Path) -> None:
    op = monitored_operator
    started = time.time()
    queries = Queries(prometheus)
    by_alert = {a.name: a.expr for a in monitoring.ALERTS}

    def series(expr: str) -> list[dict[str, str]]:
        body = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        return [r["metric"] for r in body["data"]["result"]]

    assert queries.total == len(monitoring.ALERTS) + len(monitoring.dashboard_queries())
    apply(cluster, deployment(CONTROL, {"name": MODEL, "alias": "champion"},
                              drift={"enabled": True, "statistic": "psi", "window": "30s", "minSamples": 100},
                              alerts={"latencyP95Ms": 1, "minAccuracy": 0.99}))
    apply(cluster, deployment(TREATMENT, {"name": MODEL, "version": "2"}, drift={"enabled": False}))
    for name in (CONTROL, TREATMENT):
        wait_for(lambda name=name: status_of(cluster, "modeldeployment", name).get("phase") == "Ready",
                 timeout=240, what=f"{name} Ready")
    urls = {name: status_of(cluster, "modeldeployment", name)["url"] for name in (CONTROL, TREATMENT)}

    apply(cluster, abtest(RUNNING_AB, TREATMENT))
    apply(cluster, abtest(STALLED_AB, "alerts-no-such-arm"))
    apply(cluster, {"apiVersion": "medserve.io/v1alpha1", "kind": "RetrainPolicy",
                    "metadata": {"name": POLICY, "namespace": "default"},
                    "spec": {"modelDeployment": CONTROL, "triggers": {"drift": {"enabled": True}}, "cooldown": "1h",
                             "job": {"image": "ghcr.io/medserve/training:0.1.0",
                                     "command": ["python", "-c", "raise SystemExit(3)"], "backoffLimit": 0}}})
    started_at = wait_for(lambda: status_of(cluster, "abtest", RUNNING_AB).get("startedAt"), timeout=WAIT,
                          what=f"{RUNNING_AB} started")
    # The test counts increase() since startedAt, which starts from the first sample inside that window:
    # feedback given before Prometheus has scraped an arm again would not count (a loaded machine scrapes late).
    since = conditions.parse_time(started_at)
    assert since is not None
    for name in (CONTROL, TREATMENT):
        wait_for(lambda name=name: scraped_after(prometheus, name, since.timestamp()), timeout=WAIT,
                 what=f"a scrape of {name} after {started_at}")

    # Traffic from the reference population with correct ground truth on both arms (the A/B samples), a
    # request the runtime refuses (4xx), then a shifted population: drift, and the failing retraining Job.
    for name, seed in ((CONTROL, 101), (TREATMENT, 102)):
        feedback(urls[name], predict(urls[name], clinical_records(300, seed=seed))[:60], correct=True)
    refused = httpx.post(f"{urls[CONTROL]}/predict", json={"clinical_data": "not an object"}, timeout=10)
    assert 400 <= refused.status_code < 500
    # The shift is sustained, as drift in a hospital is, until the drift alert's series is seen: one burst
    # leaves the 30 s window before a slow machine's operator and Prometheus have both seen it.
    with shifted_traffic(urls[CONTROL]):
        try:
            wait_for(lambda: conditions.is_true(status_of(cluster, "modeldeployment", CONTROL).get("conditions"),
                                                "DriftDetected"), timeout=WAIT, what="DriftDetected=True")
        except AssertionError as exc:
            status = status_of(cluster, "modeldeployment", CONTROL)
            raise AssertionError(f"{exc}\nDriftDetected: {conditions.find(status.get('conditions'), 'DriftDetected')}"
                                 f"\nstatus.drift: {status.get('drift')}\noperator log:\n{op.log()[-3000:]}") from None
        wait_for(lambda: {s["model"] for s in series(by_alert["MedserveDriftDetected"])} == {CONTROL},
                 timeout=WAIT, what="MedserveDriftDetected for the control")
        queries.poll()
    wait_for(lambda: (status_of(cluster, "retrainpolicy", POLICY).get("lastJob") or {}).get("result") == "Failed",
             timeout=WAIT, what="the retraining Job failed")
    try:
        wait_for(lambda: (status_of(cluster, "abtest", RUNNING_AB).get("samples") or {}).get("treatment", 0) > 0,
                 timeout=WAIT, what=f"{RUNNING_AB} samples")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nDEBUG status: {status_of(cluster, 'abtest', RUNNING_AB)}") from None
    wait_for(lambda: status_of(cluster, "abtest", RUNNING_AB).get("alwaysValidPValue") is not None,
             timeout=WAIT, what=f"{RUNNING_AB} p-value")
    # The A/B panels while the test runs (the control stops being Ready below).
    wait_for(lambda: queries.poll() or not any("A/B Test Results" in what for what in queries.pending),
             timeout=WAIT, what="the A/B panels")

    # Wrong ground truth: accuracy below minAccuracy (and the deployment no longer Ready).
    feedback(urls[CONTROL], predict(urls[CONTROL], clinical_records(60, seed=303)), correct=False)
    try:
        wait_for(queries.poll, timeout=WAIT, what="every alert and panel query to return data")
    except AssertionError:
        print(op.log()[-3000:])
        raise AssertionError(f"{len(queries.pending)} of {queries.total} queries never returned data:\n"
                             + "\n".join(queries.pending)) from None
    assert op.alive()
    # The alert expressions fire on what they should: for the right deployment, test and policy.
    assert {s["model"] for s in series(by_alert["MedserveLatencyP95High"])} == {CONTROL}
    assert {s["abtest"] for s in series(by_alert["MedserveABTestStalled"])} >= {STALLED_AB}
    assert {s["policy"] for s in series(by_alert["MedserveRetrainingJobFailed"])} == {POLICY}
    assert {s["pod"] for s in series(by_alert["MedserveRuntimeDown"])} == {"gone-predictor-00001"}
    assert {s["model"] for s in series(by_alert["MedserveAccuracyBelowMinimum"])} == {CONTROL}

    # The same panels drawn as PNGs over the run (what `make demo` writes): every panel drew a series.
    drawn = dashboards.draw(prometheus.url, tmp_path, start=started, end=time.time())
    assert {d.title for d in drawn} == {d.title for d in monitoring.DASHBOARDS}
    for d in drawn:
        assert d.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert all(d.series.values()), f"{d.title}: panels without data: {d.series}"
