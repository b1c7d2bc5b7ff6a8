"""The RetrainPolicy reconciler for real: the kopf operator process, the emulated API (which validates every
CronJob and Job against Kubernetes 1.32's batch/v1 schema), a real MLflow server, and the Job stand-in
running each Job as a local process — the real examples/training/train.py where a test needs a new version.

Stand-ins, said where they are used: there is no drift evaluator and no Prometheus here, so a test sets the
ModelDeployment's `DriftDetected=True` condition itself through the status subresource, exactly as the drift
evaluator would; the ModelDeployments run with `monitoring.drift.enabled: false` so that nothing else writes
that condition.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import OperatorProcess, get_json, wait_for
from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[3]
TRAIN = {"command": ["python", "examples/training/train.py"], "args": ["--samples", "300", "--epochs", "3"]}
EVALUATIONS = 3.5
"""Seconds to let pass so that the operator (resync every second) evaluates a policy several more times."""


@pytest.fixture(scope="module")
def job_standin(cluster: EmulatorProcess, mlflow_server: MlflowServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("job-standin")
    log = workdir / "job-standin.log"
    proc = procs.spawn([sys.executable, "-m", "medserve_sandbox.job_standin", "--kubeconfig",
                        str(cluster.kubeconfig), "--workdir", str(workdir), "--cwd", str(REPO),
                        "--mlflow-uri", mlflow_server.url, "--backoff-seconds", "1"], log_path=log)
    procs.wait_until(lambda: "Job stand-in watching" in log.read_text(errors="replace"), proc=proc, log_path=log,
                     what="Job stand-in", timeout=60)
    yield workdir
    procs.stop(proc, timeout=30)


def register(mlflow_url: str, name: str) -> MlflowClient:
    """A registered model with one (artifact-less) version, for the ModelDeployment to resolve."""
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    client.create_registered_model(name)
    run = client.create_run(experiment_id="0")
    client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return client


def apply(cluster: EmulatorProcess, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def apply_md(cluster: EmulatorProcess, name: str, model: str) -> None:
    apply(cluster, {"apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"model": {"name": model, "version": "1"},
                             "monitoring": {"drift": {"enabled": False}}}})


def apply_rtp(cluster: EmulatorProcess, name: str, **spec: Any) -> None:
    apply(cluster, {"apiVersion": "medserve.io/v1alpha1", "kind": "RetrainPolicy",
                    "metadata": {"name": name, "namespace": "default"}, "spec": spec})


def rtp(cluster: EmulatorProcess, name: str) -> dict[str, Any]:
    return get_json(cluster, "retrainpolicy", name) or {}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((dict(c) for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def jobs(cluster: EmulatorProcess, policy: str) -> list[dict[str, Any]]:
    found = get_json(cluster, "jobs", "-l", f"medserve.io/retrain-policy={policy}") or {}
    return sorted(found.get("items", []), key=lambda j: j["metadata"]["creationTimestamp"])


def event_reasons(cluster: EmulatorProcess, name: str) -> set[str]:
    events = cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
    return {e["reason"] for e in json.loads(events.stdout)["items"]}


def set_drift(cluster: EmulatorProcess, md_name: str) -> None:
    """Write `DriftDetected=True` into the ModelDeployment's status (standing in for the drift evaluator)."""
    md = get_json(cluster, "modeldeployment", md_name) or {}
    conds = [c for c in (md.get("status") or {}).get("conditions", []) if c["type"] != "DriftDetected"]
    conds.append({"type": "DriftDetected", "status": "True", "reason": "DriftDetected",
                  "message": "age and heart_rate drifted (psi 0.31, p < 1e-6)",
                  "lastTransitionTime": "2026-01-01T00:00:00Z"})
    cluster.kubectl("patch", "modeldeployment", md_name, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"conditions": conds}}))


def drift_is_set(cluster: EmulatorProcess, md_name: str) -> bool:
    return condition(get_json(cluster, "modeldeployment", md_name) or {}, "DriftDetected").get("status") == "True"


def test_schedule_renders_a_valid_cronjob_and_removing_it_deletes_it(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer) -> None:
    register(mlflow_server.url, "rt-sched")
    apply_md(cluster, "rt-sched", "rt-sched")
    apply_rtp(cluster, "rt-sched", modelDeployment="rt-sched", schedule="*/5 * * * *",
              job={"image": "ghcr.io/medserve/training:0.1.0", **TRAIN})
    # The emulator admitted it against batch/v1's schema, or it would not be there.
    cronjob = wait_for(lambda: get_json(cluster, "cronjob", "rt-sched"), what="the CronJob")
    policy = wait_for(lambda: (p := rtp(cluster, "rt-sched")) and condition(p, "Ready").get("status") == "True"
                      and p, what="the policy Ready")
    assert cronjob["spec"]["schedule"] == "*/5 * * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["metadata"]["ownerReferences"][0]["uid"] == policy["metadata"]["uid"]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["MEDSERVE_MODEL_NAME"], env["MEDSERVE_TRIGGER_REASON"]) == ("rt-sched", "Schedule")
    assert env["MLFLOW_TRACKING_URI"] == mlflow_server.url
    assert condition(policy, "Scheduled")["reason"] == "CronJobReady"
    next_run = policy["status"]["nextScheduleTime"]
    assert next_run.endswith("Z") and int(next_run[14:16]) % 5 == 0
    assert policy["status"]["observedGeneration"] == policy["metadata"]["generation"]
    assert "CronJobCreated" in event_reasons(cluster, "rt-sched")

    cluster.kubectl("patch", "retrainpolicy", "rt-sched", "--type=json", "-p", json.dumps([
        {"op": "remove", "path": "/spec/schedule"},
        {"op": "add", "path": "/spec/triggers", "value": {"drift": {"enabled": True}}}]))
    wait_for(lambda: get_json(cluster, "cronjob", "rt-sched") is None, what="the CronJob deleted")
    policy = wait_for(lambda: (p := rtp(cluster, "rt-sched")) and
                      condition(p, "Scheduled").get("reason") == "NoSchedule" and p, what="Scheduled=False")
    assert "nextScheduleTime" not in policy["status"]
    assert jobs(cluster, "rt-sched") == []


def test_missing_deployment_and_missing_prometheus_are_conditions(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer) -> None:
    apply_rtp(cluster, "rt-orphan", modelDeployment="rt-orphan", triggers={
        "drift": {"enabled": True}, "query": {"promql": "sum(up)", "above": 0.5}},
        job={"image": "x", "command": ["python", "-c", "pass"]})
    policy = wait_for(lambda: (p := rtp(cluster, "rt-orphan")) and
                      condition(p, "TriggersReady").get("reason") == "ModelDeploymentNotFound" and p,
                      what="TriggersReady=False ModelDeploymentNotFound")
    assert condition(policy, "Ready")["status"] == "False"

    register(mlflow_server.url, "rt-orphan")
    apply_md(cluster, "rt-orphan", "rt-orphan")
    policy = wait_for(lambda: (p := rtp(cluster, "rt-orphan")) and
                      condition(p, "TriggersReady").get("reason") == "PrometheusNotConfigured" and p,
                      what="TriggersReady=False PrometheusNotConfigured")
    assert "MEDSERVE_PROMETHEUS_URL" in condition(policy, "TriggersReady")["message"]
    assert jobs(cluster, "rt-orphan") == []
    assert operator.alive()


def test_drift_retrains_once_registers_and_promotes_directly(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer, job_standin: Path) -> None:
    client = register(mlflow_server.url, "rt-direct")
    apply_md(cluster, "rt-direct", "rt-direct")
    apply_rtp(cluster, "rt-direct", modelDeployment="rt-direct", triggers={"drift": {"enabled": True}},
              cooldown="1h", promotion={"strategy": "direct", "pinVersion": True},
              job={"image": "ghcr.io/medserve/training:0.1.0", "backoffLimit": 0, **TRAIN})
    wait_for(lambda: condition(rtp(cluster, "rt-direct"), "TriggersReady").get("reason") == "Evaluated",
             what="the triggers evaluated")
    assert jobs(cluster, "rt-direct") == []  # no drift, no job

    set_drift(cluster, "rt-direct")
    job = wait_for(lambda: jobs(cluster, "rt-direct"), what="the retraining Job")[0]
    job_name = job["metadata"]["name"]
    assert job["metadata"]["labels"]["medserve.io/trigger-reason"] == "Drift"
    policy = wait_for(lambda: (p := rtp(cluster, "rt-direct")).get("status", {}).get("lastJob") and p,
                      timeout=240, what="the Job to finish and be recorded")
    assert len(jobs(cluster, "rt-direct")) == 1
    last = policy["status"]["lastJob"]
    assert (last["name"], last["result"], last["modelVersion"]) == (job_name, "Succeeded", "2"), last
    assert policy["status"]["lastTriggered"]["reason"] == "Drift"
    assert condition(policy, "CoolingDown")["status"] == "True"
    assert condition(policy, "Promoted")["reason"] == "DirectPromotion"
    version = client.get_model_version("rt-direct", "2")
    assert version.tags["medserve.io/job-name"] == job_name
    assert version.tags["medserve.io/trigger-reason"] == "Drift"
    finished = get_json(cluster, "job", job_name) or {}
    assert finished["status"]["succeeded"] == 1 and finished["status"]["completionTime"]
    # The real Job controller's order (job_controller.go syncJob, then enactJobFinished).
    assert [c["type"] for c in finished["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert not finished["status"].get("active")

    md = get_json(cluster, "modeldeployment", "rt-direct") or {}
    assert md["spec"]["model"] == {"name": "rt-direct", "version": "2"}
    wait_for(lambda: (get_json(cluster, "modeldeployment", "rt-direct") or {}).get("status", {}).get("model", {})
             .get("version") == "2", what="the ModelDeployment on version 2")
    assert {"RetrainingTriggered", "RetrainingSucceeded", "Promoted"} <= event_reasons(cluster, "rt-direct")

    # Drift persists; the operator keeps evaluating; inside the cooldown nothing new starts.
    set_drift(cluster, "rt-direct")
    time.sleep(EVALUATIONS)
    assert drift_is_set(cluster, "rt-direct")
    assert [j["metadata"]["name"] for j in jobs(cluster, "rt-direct")] == [job_name]


def test_failing_job_is_recorded_and_does_not_loop(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer, job_standin: Path) -> None:
    register(mlflow_server.url, "rt-fail")
    apply_md(cluster, "rt-fail", "rt-fail")
    apply_rtp(cluster, "rt-fail", modelDeployment="rt-fail", triggers={"drift": {"enabled": True}}, cooldown="1h",
              job={"image": "x", "command": ["python", "-c", "import sys; sys.exit(3)"], "backoffLimit": 1})
    set_drift(cluster, "rt-fail")
    policy = wait_for(lambda: (p := rtp(cluster, "rt-fail")).get("status", {}).get("lastJob") and p,
                      timeout=60, what="the failed Job recorded")
    last = policy["status"]["lastJob"]
    assert last["result"] == "Failed"
    assert last["reason"].startswith("BackoffLimitExceeded"), last
    assert "modelVersion" not in last
    failed = get_json(cluster, "job", last["name"]) or {}
    assert failed["status"]["failed"] == 2  # the first attempt and one retry (backoffLimit 1)
    assert condition(policy, "Retraining")["reason"] == "JobFailed"
    assert "RetrainingFailed" in event_reasons(cluster, "rt-fail")

    time.sleep(EVALUATIONS)
    assert drift_is_set(cluster, "rt-fail")
    assert [j["metadata"]["name"] for j in jobs(cluster, "rt-fail")] == [last["name"]]


def test_a_running_job_blocks_the_next_even_without_cooldown(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer, job_standin: Path,
        tmp_path: Path) -> None:
    release = tmp_path / "release"
    wait_for_release = f"import pathlib, time\nwhile not pathlib.Path({str(release)!r}).exists(): time.sleep(0.1)"
    register(mlflow_server.url, "rt-busy")
    apply_md(cluster, "rt-busy", "rt-busy")
    apply_rtp(cluster, "rt-busy", modelDeployment="rt-busy", triggers={"drift": {"enabled": True}}, cooldown="0s",
              job={"image": "x", "command": ["python", "-c", wait_for_release]})
    set_drift(cluster, "rt-busy")
    policy = wait_for(lambda: (p := rtp(cluster, "rt-busy")).get("status", {}).get("activeJob", {}).get("startedAt")
                      and p, what="the Job running")
    first = policy["status"]["activeJob"]["name"]
    assert condition(policy, "Retraining")["status"] == "True"

    time.sleep(EVALUATIONS)
    assert drift_is_set(cluster, "rt-busy")
    assert [j["metadata"]["name"] for j in jobs(cluster, "rt-busy")] == [first]

    release.touch()
    # With no cooldown the persisting drift starts the next Job, but only once the first has finished.
    found = wait_for(lambda: len(j := jobs(cluster, "rt-busy")) >= 2 and j, what="the next Job")
    done = get_json(cluster, "job", first) or {}
    assert found[1]["metadata"]["creationTimestamp"] >= done["status"]["completionTime"]
    last = wait_for(lambda: rtp(cluster, "rt-busy")["status"].get("lastJob"), what="lastJob")
    assert last["result"] == "Succeeded" and "no version" in last["reason"]
    cluster.kubectl("delete", "retrainpolicy", "rt-busy")
    wait_for(lambda: not jobs(cluster, "rt-busy"), what="the Jobs garbage-collected with the policy")


def test_a_job_made_with_kubectl_create_job_from_the_cronjob_is_recorded(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer, job_standin: Path) -> None:
    """`kubectl create job --from=cronjob/...` (the README's "retrain now"): kubectl builds the Job from the
    CronJob's jobTemplate on the client side, owned by the CronJob, with the instantiate annotation; the
    operator finds it by the template's label and records it like a scheduled run."""
    register(mlflow_server.url, "rt-manual")
    apply_md(cluster, "rt-manual", "rt-manual")
    apply_rtp(cluster, "rt-manual", modelDeployment="rt-manual", schedule="0 3 * * 0",
              job={"image": "x", "command": ["python", "-c", "pass"]})
    cronjob = wait_for(lambda: get_json(cluster, "cronjob", "rt-manual"), what="the CronJob")
    cluster.kubectl("create", "job", "rt-manual-now", "--from=cronjob/rt-manual")

    job = get_json(cluster, "job", "rt-manual-now") or {}
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job["metadata"]["ownerReferences"][0]["uid"] == cronjob["metadata"]["uid"]
    assert job["metadata"]["labels"]["medserve.io/retrain-policy"] == "rt-manual"
    # kubectl sent the CronJob's template as protobuf; the emulator decoded all of it.
    template = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["spec"]["template"]["spec"] == template["template"]["spec"]
    assert job["spec"]["backoffLimit"] == template["backoffLimit"]
    assert [j["metadata"]["name"] for j in jobs(cluster, "rt-manual")] == ["rt-manual-now"]
    last = wait_for(lambda: rtp(cluster, "rt-manual").get("status", {}).get("lastJob"), timeout=120,
                    what="the manual Job recorded")
    assert (last["name"], last["result"]) == ("rt-manual-now", "Succeeded"), last
    assert condition(rtp(cluster, "rt-manual"), "Scheduled")["reason"] == "CronJobReady"
