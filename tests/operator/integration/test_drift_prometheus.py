"""Drift and accuracy end to end: real Prometheus, real runtime processes, the real operator.

The example training job registers a model in a real MLflow server (alias champion); the operator runs
against the Kubernetes API emulator with MEDSERVE_PROMETHEUS_URL set; the sandbox's KServe stand-in
runs the InferenceService as a real medserve-runtime process and lists it in the targets file that a
real Prometheus (Debian's binary, scraping every second) reads. Traffic drawn from the training job's
own generator then goes through the runtime's /batch_predict: reference-like traffic leaves
DriftDetected False, shifted traffic turns it True (without touching Ready), wrong feedback degrades
the deployment, and Prometheus going away makes DriftDetected Unknown while the operator keeps going.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit import OperatorProcess, get_json, wait_for
from medserve_operator.clients.prometheus import PrometheusClient, PrometheusQueryError, PrometheusUnavailable
from medserve_operator.kit import conditions
from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from medserve_sandbox.prometheus_server import PrometheusServer
from runtime_kit import clinical_records

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="the prometheus binary is not installed (apt-get install prometheus)")

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "examples" / "training" / "train.py"
MODEL = "drift-triage-model"
NAME = "drift-triage"
WAIT = 120.0


@pytest.fixture(scope="module")
def registered(mlflow_server: MlflowServer) -> dict[str, Any]:
    """Version 1 of MODEL, trained by the example job, alias champion."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "MEDSERVE_MODEL_NAME": MODEL}
    result = subprocess.run([sys.executable, str(TRAIN), "--alias", "champion", "--epochs", "20", "--json"],
                            env=env, capture_output=True, text=True, timeout=300, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    model: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drift")


@pytest.fixture(scope="module")
def prometheus(workdir: Path) -> Iterator[PrometheusServer]:
    # The stand-in keeps <its workdir>/prometheus/targets.json: the file this server reads.
    with PrometheusServer(workdir / "prometheus") as server:
        yield server


@pytest.fixture(scope="module")
def standin(cluster: EmulatorProcess, mlflow_server: MlflowServer, workdir: Path) -> Iterator[None]:
    log = workdir / "kserve-standin.log"
    proc = procs.spawn([sys.executable, "-m", "medserve_sandbox.kserve_standin",
                        "--kubeconfig", str(cluster.kubeconfig), "--workdir", str(workdir),
                        "--mlflow-uri", mlflow_server.url], log_path=log)
    try:
        procs.wait_until(lambda: "KServe stand-in watching" in log.read_text(errors="replace"), proc=proc,
                         log_path=log, what="KServe stand-in", timeout=60)
        yield
    finally:
        procs.stop(proc, timeout=30)


@pytest.fixture(scope="module")
def monitored_operator(cluster: EmulatorProcess, mlflow_server: MlflowServer, prometheus: PrometheusServer,
                       workdir: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, mlflow_server.url, workdir / "operator.log",
                         prometheus_url=prometheus.url)
    op.start()
    yield op
    op.stop()


def manifest() -> str:
    return textwrap.dedent(f"""\
        apiVersion: medserve.io/v1alpha1
        kind: ModelDeployment
        metadata:
          name: {NAME}
          namespace: default
        spec:
          model:
            name: {MODEL}
            alias: champion
          scaling:
            minReplicas: 1
            maxReplicas: 1
          monitoring:
            interval: 2s
            drift:
              enabled: true
              statistic: psi
              window: 30s
              minSamples: 100
            alerts:
              minAccuracy: 0.8
          security:
            rateLimitPerMinute: 100000
            auditLog: false
        """)


def md(cluster: EmulatorProcess) -> dict[str, Any]:
    return get_json(cluster, "modeldeployment", NAME, "-n", "default") or {}


def condition(cluster: EmulatorProcess, type_: str) -> tuple[str, str] | None:
    found = conditions.find((md(cluster).get("status") or {}).get("conditions"), type_)
    return (str(found["status"]), str(found["reason"])) if found else None


def wait_condition(cluster: EmulatorProcess, type_: str, want: tuple[str, str], op: OperatorProcess) -> None:
    def reached() -> bool:
        assert op.alive(), f"the operator exited:\n{op.log()[-3000:]}"
        return condition(cluster, type_) == want
    try:
        wait_for(reached, timeout=WAIT, what=f"{type_}={want}")
    except AssertionError:
        print(json.dumps(md(cluster).get("status"), indent=2))
        print(op.log()[-4000:])
        raise


def predict(url: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send `records` through /batch_predict in batches; the predictions."""
    out: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(records), 250):
            body = {"requests": [{"patient_id": f"p-{start + i}", "clinical_data": r}
                                 for i, r in enumerate(records[start:start + 250])]}
            response = client.post("/batch_predict", json=body)
            assert response.status_code == 200, response.text
            out.extend(response.json()["predictions"])
    return out


def feedback(url: str, predictions: list[dict[str, Any]], *, correct: bool, labels: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for p in predictions:
            predicted = p["prediction"]["primary_diagnosis"]
            outcome = predicted if correct else next(label for label in labels if label != predicted)
            response = client.post("/feedback", json={"prediction_id": p["prediction_id"], "outcome": outcome})
            assert response.status_code == 200, response.text


def scraped(prometheus: PrometheusServer) -> bool:
    """Prometheus holds the runtime's feature histograms for NAME (its target is up and was scraped)."""
    query = f'count(medserve_feature_value_bucket{{model="{NAME}"}})'
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": query}, timeout=5)
    return bool(response.json()["data"]["result"])


@pytest.mark.timeout(900)
def test_shifted_traffic_flips_drift_and_prometheus_down_is_unknown(
        cluster: EmulatorProcess, registered: dict[str, Any], prometheus: PrometheusServer, standin: None,
        monitored_operator: OperatorProcess) -> None:
    op = monitored_operator
    cluster.kubectl("apply", "-f", "-", input=manifest())
    wait_for(lambda: (md(cluster).get("status") or {}).get("phase") == "Ready", timeout=240,
             what=f"{NAME} Ready")
    url = md(cluster)["status"]["url"]
    # No traffic yet: the profile was fetched from MLflow, but nothing to judge.
    wait_condition(cluster, "DriftDetected", ("Unknown", "InsufficientData"), op)
    wait_for(lambda: scraped(prometheus), timeout=WAIT, what="Prometheus scraping the runtime")
    targets = json.loads((prometheus.targets_file).read_text())
    assert targets[0]["labels"] == {"namespace": "default", "inferenceservice": NAME,
                                    "pod": f"{NAME}-predictor-00001-deployment"}  # Knative's revision pod

    # Reference-like traffic (the training population, another seed): no drift.
    labels = ["upper_respiratory_infection", "pneumonia", "sepsis", "acute_coronary_syndrome"]
    reference = predict(url, clinical_records(400, seed=101))
    wait_condition(cluster, "DriftDetected", ("False", "NoDrift"), op)
    status = md(cluster)["status"]
    assert status["drift"]["statistic"] == "psi" and status["drift"]["window"] == "30s"
    assert status["drift"]["driftedFeatures"] == [] and status["drift"]["samples"] >= 100
    feedback(url, reference[:40], correct=True, labels=labels)
    wait_condition(cluster, "Degraded", ("False", "AccuracyOK"), op)

    # A shifted population (older, sicker): drift, which does not hold Ready back.
    predict(url, clinical_records(1000, seed=202, shift=1.5))
    wait_condition(cluster, "DriftDetected", ("True", "DriftDetected"), op)
    status = md(cluster)["status"]
    assert "age" in status["drift"]["driftedFeatures"]
    assert status["drift"]["score"] > 0.05 and status["drift"]["pValue"] <= 0.001
    assert conditions.is_true(status["conditions"], "Ready") and status["phase"] == "Ready"
    events = json.loads(cluster.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
    assert any(e.get("reason") == "DriftDetected" and e.get("type") == "Warning" for e in events)

    # Wrong answers: accuracy 40/100 < 0.8 → Degraded, and that does hold Ready back.
    feedback(url, reference[40:100], correct=False, labels=labels)
    wait_condition(cluster, "Degraded", ("True", "LowAccuracy"), op)
    wait_condition(cluster, "Ready", ("False", "LowAccuracy"), op)

    # Prometheus goes away: Unknown, the last figures kept, the operator alive; back again: evaluated.
    prometheus.stop()
    wait_condition(cluster, "DriftDetected", ("Unknown", "PrometheusUnavailable"), op)
    status = md(cluster)["status"]
    assert "unreachable" in str(conditions.find(status["conditions"], "DriftDetected"))
    assert status["drift"]["statistic"] == "psi" and "evaluatedAt" in status["drift"]  # the last figures stay
    assert op.alive()
    prometheus.start()
    wait_for(lambda: (condition(cluster, "DriftDetected") or ("", ""))[1] != "PrometheusUnavailable",
             timeout=WAIT, what="drift evaluated again after Prometheus came back")
    assert op.alive()


async def test_client_errors_name_the_problem(prometheus: PrometheusServer) -> None:
    prometheus.start()  # running already, unless the test above stopped it and failed before restarting it
    client = PrometheusClient(prometheus.url)
    try:
        assert [(s.labels, s.value) for s in await client.query("vector(1)")] == [({}, 1.0)]
        samples = await client.query('label_replace(vector(2), "x", "y", "", "")')
        assert [(s.labels, s.value) for s in samples] == [({"x": "y"}, 2.0)]
        with pytest.raises(PrometheusQueryError, match="bad_data"):
            await client.query("sum(")
        with pytest.raises(PrometheusQueryError, match="not a vector"):
            await client.query("1")
    finally:
        await client.aclose()
    nobody = PrometheusClient(f"http://127.0.0.1:{procs.free_port()}", timeout=2)
    try:
        with pytest.raises(PrometheusUnavailable, match="unreachable"):
            await nobody.query("up")
    finally:
        await nobody.aclose()
