"""The retraining renderers (CronJob, Job) and the RetrainPolicy reconciler's pure helpers.

Plain dict assertions, and validation against Kubernetes 1.32's batch/v1 schemas (kubernetes-validate,
through the emulator's admission, which is what the API emulator runs on every write).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest
from medserve_operator.api import RetrainPolicySpec, parse_spec
from medserve_operator.clients.prometheus import PrometheusError, instant_value
from medserve_operator.controllers import retrainpolicy
from medserve_operator.controllers.retrainpolicy import render
from medserve_operator.kit.manifest import owned_differs
from medserve_sandbox.schemas import DecodeError, InvalidObject, SchemaRegistry


def spec(**overrides: Any) -> RetrainPolicySpec:
    raw: dict[str, Any] = {
        "modelDeployment": "triage",
        "schedule": "0 3 * * 0",
        "timeZone": "Europe/Berlin",
        "job": {"image": "ghcr.io/medserve/training:0.1.0", "command": ["python", "examples/training/train.py"],
                "args": ["--samples", "800"], "env": [{"name": "PYTHONUNBUFFERED", "value": "1"},
                                                       {"name": "MEDSERVE_MODEL_NAME", "value": "sneaky"}],
                "resources": {"limits": {"cpu": "2", "memory": "4Gi"}}, "backoffLimit": 1,
                "activeDeadlineSeconds": 600},
        **overrides,
    }
    parsed = parse_spec(RetrainPolicySpec, raw)
    assert isinstance(parsed, RetrainPolicySpec)
    return parsed


def cronjob(s: RetrainPolicySpec | None = None, **kwargs: Any) -> dict[str, Any]:
    return render.render_cronjob(name="triage-retrain", namespace="icu", uid="uid-7", spec=s or spec(),
                                 model_name="triage-classifier", mlflow_uri="http://mlflow:5000", **kwargs)


def job(s: RetrainPolicySpec | None = None, reason: str = "Drift") -> dict[str, Any]:
    return render.render_job(name="triage-retrain-drift-1780000000", policy="triage-retrain", namespace="icu",
                             uid="uid-7", spec=s or spec(), model_name="triage-classifier",
                             mlflow_uri="http://mlflow:5000", reason=reason)


def env_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec_ = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    container = spec_["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_cronjob_schedule_owner_and_concurrency() -> None:
    cj = cronjob()
    assert (cj["apiVersion"], cj["kind"]) == ("batch/v1", "CronJob")
    assert (cj["metadata"]["name"], cj["metadata"]["namespace"]) == ("triage-retrain", "icu")
    assert cj["metadata"]["ownerReferences"] == [{"apiVersion": "medserve.io/v1alpha1", "kind": "RetrainPolicy",
                                                  "name": "triage-retrain", "uid": "uid-7", "controller": True,
                                                  "blockOwnerDeletion": True}]
    assert cj["spec"]["schedule"] == "0 3 * * 0"
    assert cj["spec"]["timeZone"] == "Europe/Berlin"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    assert cj["spec"]["suspend"] is False
    assert cronjob(suspend=True)["spec"]["suspend"] is True
    job_spec = cj["spec"]["jobTemplate"]["spec"]
    assert (job_spec["backoffLimit"], job_spec["activeDeadlineSeconds"]) == (1, 600)
    labels = cj["spec"]["jobTemplate"]["metadata"]["labels"]
    assert labels["medserve.io/retrain-policy"] == "triage-retrain"
    assert labels["medserve.io/trigger-reason"] == "Schedule"


def test_job_comes_from_the_same_template_with_its_reason() -> None:
    j, cj = job(), cronjob()
    assert (j["apiVersion"], j["kind"]) == ("batch/v1", "Job")
    assert j["metadata"]["ownerReferences"][0]["kind"] == "RetrainPolicy"
    assert j["metadata"]["labels"]["medserve.io/trigger-reason"] == "Drift"
    assert j["metadata"]["annotations"]["medserve.io/trigger-reason"] == "Drift"
    assert j["metadata"]["annotations"]["medserve.io/retrain-policy"] == "triage-retrain"
    template = cj["spec"]["jobTemplate"]["spec"]
    # The same pod, container and limits; only the reason differs.
    assert j["spec"]["template"]["spec"]["containers"][0]["command"] == template["template"]["spec"]["containers"][0][
        "command"]
    assert {k: v for k, v in env_of(j).items() if k != "MEDSERVE_TRIGGER_REASON"} == \
        {k: v for k, v in env_of(cj).items() if k != "MEDSERVE_TRIGGER_REASON"}
    assert env_of(j)["MEDSERVE_TRIGGER_REASON"] == "Drift"
    assert env_of(cj)["MEDSERVE_TRIGGER_REASON"] == "Schedule"


def test_job_env_contract() -> None:
    env = env_of(job())
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MEDSERVE_MODEL_NAME"] == "triage-classifier"  # the spec's own value cannot override it
    assert env["MEDSERVE_JOB_NAME"] == {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}
    assert env["PYTHONUNBUFFERED"] == "1"


def test_restricted_pod_security() -> None:
    pod = job()["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}


def test_valid_against_batch_v1_schema() -> None:
    registry = SchemaRegistry()
    assert registry.has_schema("batch/v1", "CronJob") and registry.has_schema("batch/v1", "Job")
    registry.admit(cronjob(), old=None, field_validation="Strict")
    registry.admit(job(), old=None, field_validation="Strict")
    registry.admit(cronjob(spec(timeZone=None, schedule="@daily", job={"image": "x", "command": ["train"]})),
                   old=None, field_validation="Strict")
    broken = job()
    broken["spec"]["backoffLimit"] = "two"
    with pytest.raises(DecodeError, match=r"JobSpec\.spec\.backoffLimit of type int32"):
        registry.admit(broken, old=None, field_validation="Strict")
    del broken["spec"]["template"]["spec"]["containers"][0]["image"]
    broken["spec"]["backoffLimit"] = 2
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(InvalidObject):
        registry.admit(broken, old=None, field_validation="Strict")


def test_longest_names_fit() -> None:
    policy = "p" * 40  # the longest RetrainPolicy name the CRD allows
    name = retrainpolicy.job_name(policy, "Performance", datetime.datetime(2286, 11, 20, tzinfo=datetime.UTC))
    assert len(name) <= 63
    registry = SchemaRegistry()
    registry.admit(render.render_cronjob(name=policy, namespace="icu", uid="u", spec=spec(), model_name="m",
                                         mlflow_uri="http://m"), old=None, field_validation="Strict")


def test_cronjob_owned_differs() -> None:
    desired = cronjob()
    actual = {**desired, "spec": {**desired["spec"], "successfulJobsHistoryLimit": 3, "extraDefault": 1}}
    assert not owned_differs(desired, actual)
    assert owned_differs(cronjob(suspend=True), desired)
    without_zone = cronjob(spec(timeZone=None))
    assert owned_differs(without_zone, desired)  # a removed field shows in the template hash
    edited = {**desired, "spec": {**desired["spec"], "schedule": "* * * * *"}}
    assert owned_differs(desired, edited)  # a hand edit is put back


def test_render_cronjob_needs_a_schedule() -> None:
    with pytest.raises(ValueError, match=r"spec\.schedule"):
        cronjob(spec(schedule=None, timeZone=None, triggers={"drift": {"enabled": True}}))


def test_next_schedule_time_in_time_zone() -> None:
    now = datetime.datetime(2026, 7, 1, 12, 0, tzinfo=datetime.UTC)  # a Wednesday, CEST (UTC+2)
    assert retrainpolicy.next_schedule_time("0 3 * * 0", "Europe/Berlin", now) == "2026-07-05T01:00:00Z"
    assert retrainpolicy.next_schedule_time("@hourly", None, now) == "2026-07-01T13:00:00Z"


def test_cooldown() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    last = {"time": "2026-01-01T09:00:00Z", "reason": "Drift"}
    assert retrainpolicy.in_cooldown(last, "6h", now)
    assert not retrainpolicy.in_cooldown(last, "3h", now)
    assert not retrainpolicy.in_cooldown(None, "6h", now)


def test_job_finish() -> None:
    assert retrainpolicy.job_finish({"status": {"active": 1}}) is None
    done = {"status": {"completionTime": "2026-01-01T10:00:00Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}}
    assert retrainpolicy.job_finish(done) == ("Succeeded", "", "2026-01-01T10:00:00Z")
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                         "message": "Job has reached the specified backoff limit",
                                         "lastTransitionTime": "2026-01-01T11:00:00Z"}]}}
    assert retrainpolicy.job_finish(failed) == (
        "Failed", "BackoffLimitExceeded: Job has reached the specified backoff limit", "2026-01-01T11:00:00Z")


def test_instant_value() -> None:
    assert instant_value({"resultType": "vector", "result": []}, "q") is None
    assert instant_value({"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.7"]}]},
                                       "q") == 0.7
    assert instant_value({"resultType": "scalar", "result": [1, "NaN"]}, "q") is None
    with pytest.raises(PrometheusError, match="2 series"):
        instant_value({"resultType": "vector", "result": [{"value": [1, "1"]}] * 2}, "q")
    total, accuracy = retrainpolicy.feedback_queries("triage", "icu", "6h")
    assert total == 'sum(increase(medserve_feedback_total{model="triage",namespace=~"icu|"}[21600000ms]))'
    assert accuracy.endswith(f"/ {total}")


def test_compute_status_while_a_job_runs_and_after() -> None:
    now = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
    s = spec(cooldown="6h", triggers={"drift": {"enabled": True}})
    running = retrainpolicy.Outcome(now=now, spec=s, triggers=("True", "Evaluated", "evaluated: drift"),
                                    active_job={"name": "j1"}, active_reason="Drift",
                                    last_triggered={"time": "2026-03-01T12:00:00Z", "reason": "Drift"})
    status = retrainpolicy.compute_status({}, running, generation=3)
    by_type = {c["type"]: c for c in status["conditions"]}
    assert status["activeJob"] == {"name": "j1"} and status["observedGeneration"] == 3
    assert status["nextScheduleTime"] == "2026-03-08T02:00:00Z"  # Sunday 03:00 CET
    assert (by_type["Retraining"]["status"], by_type["Retraining"]["reason"]) == ("True", "JobRunning")
    assert by_type["CoolingDown"]["status"] == "True" and "2026-03-01T18:00:00Z" in by_type["CoolingDown"]["message"]
    assert by_type["Ready"]["status"] == "True"  # scheduled and triggers evaluated
    # Looking again and finding nothing new changes nothing.
    assert retrainpolicy.compute_status(status, dataclasses.replace(running, last_triggered=None),
                                        generation=3) == status

    finished = retrainpolicy.Outcome(now=now + datetime.timedelta(hours=7), spec=s,
                                     last_job={"name": "j1", "result": "Succeeded", "modelVersion": "4"},
                                     promoted=("False", "ABTestRunning", "ABTest p-v4 compares version 4"),
                                     ab_test={"name": "p-v4", "challenger": "m-v4", "modelVersion": "4"})
    after = retrainpolicy.compute_status(status, finished, generation=3)
    by_type = {c["type"]: c for c in after["conditions"]}
    assert "activeJob" not in after and after["lastJob"]["modelVersion"] == "4"
    assert by_type["Retraining"]["reason"] == "JobSucceeded"
    assert by_type["CoolingDown"]["status"] == "False"
    assert (by_type["Promoted"]["status"], by_type["Promoted"]["reason"]) == ("False", "ABTestRunning")
    assert after["abTest"] == {"name": "p-v4", "challenger": "m-v4", "modelVersion": "4"}


def test_compute_status_invalid_and_orphaned() -> None:
    now = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
    orphan = retrainpolicy.Outcome(now=now, spec=spec(), deployment_found=False)
    by_type = {c["type"]: c for c in retrainpolicy.compute_status({}, orphan, generation=1)["conditions"]}
    assert by_type["Scheduled"]["reason"] == by_type["TriggersReady"]["reason"] == "ModelDeploymentNotFound"
    assert by_type["Ready"]["status"] == "False"
