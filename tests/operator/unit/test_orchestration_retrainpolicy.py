"""The RetrainPolicy reconciler's orchestration, in process: `reconcile` against FakeKube, FakeRegistry and
FakePrometheus's `query_value`.

The fakes (tests/support/fakes.py) stand in for the API server, MLflow and Prometheus, which run only in
the integration tier. Each test plays the other parties — the ModelDeployment's drift verdict, the Job
controller finishing a Job, the training program registering a version tagged with the Job's name, the
ABTest reconciler concluding — and drives the public `reconcile`, asserting on the Jobs, the CronJob,
the challenger and the ABTest, the status written and the Events kopf was given.

The reconciler reads the wall clock itself (`datetime.now`) for cooldowns; instead of moving it, a test
that needs a cooldown over seeds `status.lastTriggered` hours back and restarts the Runtime, which then
reads the status from the object as the operator does after a restart.
"""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Any, cast

import pytest
from fakes import Events, FakeKube, FakePrometheus, FakeRegistry
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.retrainpolicy import Runtime, reconcile

if TYPE_CHECKING:  # only to type the fakes as the clients they stand in for
    from medserve_operator.clients.kube import KubeClient
    from medserve_operator.clients.mlflow import MlflowRegistry

API = "medserve.io/v1alpha1"
BATCH = "batch/v1"
NS = "icu"
MODEL = "triage-classifier"
POLICY = "triage-on-drift"
POLICY_LABEL = "medserve.io/retrain-policy"
JOB_NAME_TAG = "medserve.io/job-name"
LOG = logging.getLogger("test.retrainpolicy")


def rfc3339(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def hours_ago(hours: float) -> str:
    return rfc3339(datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=hours))


class World:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.registry = FakeRegistry()
        self.prometheus = FakePrometheus()
        self.registry.add_version(MODEL)
        self.registry.move_alias(MODEL, "champion", "1")
        self.rt = self.restart()

    def restart(self, *, prometheus: bool = True) -> Runtime:
        """A fresh Runtime: the operator after a restart (it reads the status from the object)."""
        self.rt = Runtime(config=OperatorConfig(mlflow_uri="http://mlflow.fake", runtime_mlflow_uri="http://mlflow"),
                          kube=cast("KubeClient", self.kube), registry=cast("MlflowRegistry", self.registry),
                          query_value=self.prometheus.query_value if prometheus else None)
        return self.rt

    def deployment(self, *, drifted: bool = True, model: dict[str, Any] | None = None) -> None:
        """The champion ModelDeployment as its reconciler reports it, with its drift verdict; it follows the
        alias champion unless `model` says otherwise."""
        drift = {"type": "DriftDetected", "status": "True" if drifted else "False",
                 "reason": "DriftDetected" if drifted else "NoDrift", "message": "psi 0.31 on age"}
        self.kube.put({"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": "triage", "namespace": NS},
                       "spec": {"model": model or {"name": MODEL, "alias": "champion"}},
                       "status": {"model": {"name": MODEL, "version": "1"}, "inferenceService": "triage",
                                  "conditions": [drift]}})

    def policy(self, *, strategy: str = "manual", status: dict[str, Any] | None = None, **spec: Any) -> None:
        spec = {"modelDeployment": "triage", "triggers": {"drift": {"enabled": True}}, "cooldown": "1h",
                "job": {"image": "ghcr.io/medserve/training:0.1.0", "command": ["python", "train.py"]},
                "promotion": {"strategy": strategy, "abTest": {"statistics": {"interval": "1m"}}}, **spec}
        body: dict[str, Any] = {"apiVersion": API, "kind": "RetrainPolicy",
                                "metadata": {"name": POLICY, "namespace": NS}, "spec": spec}
        if status is not None:
            body["status"] = status
        self.kube.put(body)

    def edit_policy(self, **spec: Any) -> None:
        stored = self.kube.objects[(API, "retrainpolicies", NS, POLICY)]
        stored["spec"] = {**stored["spec"], **spec}
        stored["spec"] = {k: v for k, v in stored["spec"].items() if v is not None}
        stored["metadata"]["generation"] += 1

    def job(self, name: str, *, created: str, reason: str = "Schedule") -> None:
        """A Job of the policy created by someone else (the CronJob, or the operator before a restart)."""
        self.kube.put({"apiVersion": BATCH, "kind": "Job", "metadata": {
            "name": name, "namespace": NS, "creationTimestamp": created,
            "labels": {"app.kubernetes.io/managed-by": "medserve", POLICY_LABEL: POLICY},
            "annotations": {"medserve.io/trigger-reason": reason, "medserve.io/model-name": MODEL}},
            "spec": {"template": {}}})

    def jobs(self) -> list[str]:
        return self.kube.named("jobs")

    def finish(self, name: str, *, succeeded: bool) -> None:
        """The Job controller's report on a finished Job."""
        condition = {"type": "Complete", "status": "True"} if succeeded else \
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}
        self.kube.set_status(BATCH, "jobs", NS, name, {"completionTime": rfc3339(datetime.datetime.now(datetime.UTC)),
                                                       "conditions": [condition]})

    def status(self) -> dict[str, Any]:
        return dict(self.kube.obj(API, "retrainpolicies", NS, POLICY).get("status") or {})

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status().get("conditions", []) if c["type"] == type_)

    async def reconcile(self) -> None:
        await reconcile(self.rt, self.kube.obj(API, "retrainpolicies", NS, POLICY), LOG)

    async def retrained(self, events: Events, *, model: dict[str, Any] | None = None) -> str:
        """Drift starts a Job, which succeeds and registers version 2 tagged with its name; returns the Job."""
        self.deployment(model=model)
        await self.reconcile()
        [job] = self.jobs()
        self.registry.add_version(MODEL, tags={JOB_NAME_TAG: job})
        self.finish(job, succeeded=True)
        events.drain()
        await self.reconcile()
        return job


@pytest.fixture
def world() -> World:
    return World()


async def test_drift_starts_exactly_one_job(world: World, events: Events) -> None:
    world.deployment()
    world.policy()
    await world.reconcile()
    [job] = world.jobs()
    assert job.startswith(f"{POLICY}-drift-")
    manifest = world.kube.obj(BATCH, "jobs", NS, job)
    assert manifest["metadata"]["labels"][POLICY_LABEL] == POLICY
    assert manifest["metadata"]["ownerReferences"][0]["kind"] == "RetrainPolicy"
    status = world.status()
    assert status["activeJob"]["name"] == job
    assert status["lastTriggered"]["reason"] == "Drift"
    assert world.condition("Retraining")["reason"] == "JobRunning"
    assert world.condition("CoolingDown")["status"] == "True"
    assert "RetrainingTriggered" in events.reasons()

    writes = world.kube.total_writes
    await world.reconcile()  # the drift persists: a level, not an edge
    assert world.jobs() == [job]
    assert world.kube.total_writes == writes


async def test_no_second_job_while_one_runs_even_after_the_cooldown(world: World, events: Events) -> None:
    world.deployment()
    world.job(f"{POLICY}-12345", created=hours_ago(3))  # the CronJob's run, cooldown long over
    world.policy(schedule="0 3 * * 0", status={"lastTriggered": {"time": hours_ago(3), "reason": "Schedule"}})
    await world.reconcile()
    assert world.jobs() == [f"{POLICY}-12345"]
    assert world.status()["activeJob"]["name"] == f"{POLICY}-12345"
    assert world.kube.obj(BATCH, "cronjobs", NS, POLICY)["spec"]["suspend"] is True


async def test_failed_job_is_recorded_and_the_cooldown_blocks_a_new_one(world: World, events: Events) -> None:
    world.deployment()
    world.policy()
    await world.reconcile()
    [job] = world.jobs()
    world.finish(job, succeeded=False)
    events.drain()
    await world.reconcile()
    status = world.status()
    assert status["lastJob"]["name"] == job and status["lastJob"]["result"] == "Failed"
    assert "BackoffLimitExceeded" in status["lastJob"]["reason"]
    assert "activeJob" not in status
    assert world.condition("Retraining")["reason"] == "JobFailed"
    assert world.condition("CoolingDown")["status"] == "True"
    assert world.jobs() == [job]  # drift persists, the cooldown holds
    assert [e.type for e in events.drain() if e.reason == "RetrainingFailed"] == ["Warning"]


async def test_cooldown_over_a_persisting_trigger_starts_the_next_job(world: World, events: Events) -> None:
    world.deployment()
    old = f"{POLICY}-drift-1000"
    world.job(old, created=hours_ago(2), reason="Drift")
    world.finish(old, succeeded=False)
    recent = {"lastTriggered": {"time": hours_ago(0.5), "reason": "Drift"},
              "lastJob": {"name": old, "result": "Failed", "finishedAt": hours_ago(0.4)}}
    world.policy(status=recent)
    await world.reconcile()
    assert world.jobs() == [old]
    assert world.condition("CoolingDown")["status"] == "True"

    world.kube.set_status(API, "retrainpolicies", NS, POLICY,
                          {**recent, "lastTriggered": {"time": hours_ago(2), "reason": "Drift"}})
    world.restart()
    await world.reconcile()
    assert len(world.jobs()) == 2
    assert world.condition("CoolingDown")["status"] == "True"


async def test_no_drift_no_job(world: World, events: Events) -> None:
    world.deployment(drifted=False)
    world.policy()
    await world.reconcile()
    assert world.jobs() == []
    assert world.condition("TriggersReady")["reason"] == "Evaluated"
    assert world.condition("Retraining")["reason"] == "Idle"


async def test_performance_trigger_from_prometheus(world: World, events: Events) -> None:
    world.deployment(drifted=False)
    world.prometheus.answer(('sum(increase(medserve_feedback_total{model="triage",namespace=~', "[21600000ms]"), 500.0)
    world.prometheus.answer(("outcome=\"correct\"",), 0.62)
    world.policy(triggers={"performance": {"metric": "accuracy", "below": 0.8, "window": "6h", "minSamples": 200}})
    await world.reconcile()
    [job] = world.jobs()
    assert job.startswith(f"{POLICY}-performance-")
    assert world.status()["lastTriggered"]["reason"] == "Performance"


async def test_prometheus_down_is_reported_and_starts_nothing(world: World, events: Events) -> None:
    world.deployment(drifted=False)
    world.prometheus.down = True
    world.policy(triggers={"query": {"promql": "vector(1)", "above": 0.5}})
    await world.reconcile()
    triggers = world.condition("TriggersReady")
    assert (triggers["status"], triggers["reason"]) == ("False", "PrometheusUnavailable")
    assert world.jobs() == []


async def test_without_prometheus_the_query_trigger_is_not_evaluated(world: World, events: Events) -> None:
    world.restart(prometheus=False)
    world.deployment(drifted=False)
    world.policy(triggers={"query": {"promql": "vector(1)", "above": 0.5}})
    await world.reconcile()
    assert world.condition("TriggersReady")["reason"] == "PrometheusNotConfigured"


async def test_schedule_makes_a_cronjob_and_removing_it_deletes_the_cronjob(world: World, events: Events) -> None:
    world.deployment(drifted=False)
    world.policy(schedule="0 3 * * 0", timeZone="Europe/Berlin")
    await world.reconcile()
    cronjob = world.kube.obj(BATCH, "cronjobs", NS, POLICY)
    assert (cronjob["spec"]["schedule"], cronjob["spec"]["timeZone"]) == ("0 3 * * 0", "Europe/Berlin")
    assert cronjob["spec"]["suspend"] is False
    assert cronjob["metadata"]["ownerReferences"][0]["kind"] == "RetrainPolicy"
    assert world.condition("Scheduled")["reason"] == "CronJobReady"
    assert world.status()["nextScheduleTime"].endswith("Z")
    assert "CronJobCreated" in events.reasons()

    writes = world.kube.total_writes
    await world.reconcile()
    assert world.kube.total_writes == writes

    world.edit_policy(schedule=None, timeZone=None)
    await world.reconcile()
    assert not world.kube.has(BATCH, "cronjobs", NS, POLICY)
    assert world.condition("Scheduled")["reason"] == "NoSchedule"
    assert "CronJobDeleted" in events.reasons()
    deletes = world.kube.writes["delete"]
    await world.reconcile()
    assert world.kube.writes["delete"] == deletes  # no DELETE per resync once there is no schedule


async def test_manual_promotion_only_records_the_version(world: World, events: Events) -> None:
    world.policy(strategy="manual")
    job = await world.retrained(events)
    status = world.status()
    assert status["lastJob"] == {**status["lastJob"], "name": job, "result": "Succeeded", "modelVersion": "2"}
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "ManualPromotion")
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == \
        {"name": MODEL, "alias": "champion"}
    assert {"RetrainingSucceeded", "NewVersionAvailable"} <= set(events.reasons())


PINNED = {"name": MODEL, "version": "1"}


def deployment_writes(world: World) -> list[tuple[str, str, str]]:
    return [w for w in world.kube.log if w[1] == "modeldeployments"]


async def test_direct_promotion_moves_the_alias_the_deployment_follows(world: World, events: Events) -> None:
    world.policy(strategy="direct")
    await world.retrained(events)
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "AliasMoved")
    assert world.registry.aliases[(MODEL, "champion")] == "2"
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == \
        {"name": MODEL, "alias": "champion"}
    assert deployment_writes(world) == []  # the Git-owned spec is not touched
    assert "recommendation" not in world.status()
    assert "Promoted" in events.reasons()
    moves = world.registry.calls["set_alias"]
    await world.reconcile()  # recorded once
    assert world.registry.calls["set_alias"] == moves


async def test_direct_promotion_of_a_pinned_deployment_is_recommended(world: World, events: Events) -> None:
    """By default a pinned ModelDeployment is Git's to change: status and an Event say what to set."""
    world.policy(strategy="direct")
    job = await world.retrained(events, model=PINNED)
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "PromotionRecommended")
    assert 'version "2"' in promoted["message"] and "promotion.pinVersion" in promoted["message"]
    recommendation = world.status()["recommendation"]
    assert {k: v for k, v in recommendation.items() if k != "reason"} == \
        {"modelDeployment": "triage", "model": MODEL, "version": "2"}
    assert job in recommendation["reason"]
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == PINNED
    assert deployment_writes(world) == []
    assert world.registry.calls["set_alias"] == 0
    recommended = [e for e in events.drain() if e.reason == "PromotionRecommended"]
    assert len(recommended) == 1 and recommended[0].message == promoted["message"]
    await world.reconcile()  # recorded once
    assert "PromotionRecommended" not in events.reasons()
    assert deployment_writes(world) == []


async def test_direct_promotion_pins_the_deployment_on_opt_in(world: World, events: Events) -> None:
    world.policy(strategy="direct", promotion={"strategy": "direct", "pinVersion": True})
    await world.retrained(events, model=PINNED)
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "DirectPromotion")
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == {"name": MODEL, "version": "2"}
    assert "recommendation" not in world.status()
    assert "Promoted" in events.reasons()
    patches = world.kube.writes["patch"]
    await world.reconcile()  # recorded once
    assert world.kube.writes["patch"] == patches


async def test_version_lookup_waits_for_the_registry(world: World, events: Events) -> None:
    world.policy(strategy="direct")
    world.deployment()
    await world.reconcile()
    [job] = world.jobs()
    world.registry.add_version(MODEL, tags={JOB_NAME_TAG: job})
    world.finish(job, succeeded=True)
    world.registry.down = True
    await world.reconcile()
    assert world.condition("Retraining")["reason"] == "JobError"
    assert "lastJob" not in world.status()
    world.registry.down = False
    await world.reconcile()
    assert world.status()["lastJob"]["modelVersion"] == "2"
    assert world.condition("Promoted")["reason"] == "AliasMoved"


async def abtest_started(world: World, events: Events) -> tuple[str, str]:
    world.policy(strategy="abtest")
    await world.retrained(events)
    record = world.status()["abTest"]
    return str(record["name"]), str(record["challenger"])


async def test_abtest_promotion_creates_challenger_and_abtest(world: World, events: Events) -> None:
    test, challenger = await abtest_started(world, events)
    assert world.status()["abTest"] == {"name": test, "challenger": challenger, "modelVersion": "2"}
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "ABTestRunning")
    md = world.kube.obj(API, "modeldeployments", NS, challenger)
    assert md["spec"]["model"] == {"name": MODEL, "version": "2"}
    assert md["metadata"]["ownerReferences"][0]["kind"] == "RetrainPolicy"
    ab = world.kube.obj(API, "abtests", NS, test)
    assert ab["spec"]["control"] == {"modelDeployment": "triage"}
    assert ab["spec"]["treatment"] == {"modelDeployment": challenger}
    assert ab["spec"]["onConclusion"] == {"promote": True, "pinVersion": False}
    assert "ABTestStarted" in events.reasons()

    # While the ABTest runs no trigger starts a Job, even with the cooldown over.
    world.kube.set_status(API, "retrainpolicies", NS, POLICY,
                          {**world.status(), "lastTriggered": {"time": hours_ago(2), "reason": "Drift"}})
    world.restart()
    creates = world.kube.writes["create"]
    await world.reconcile()
    assert world.kube.writes["create"] == creates  # not even tried
    assert len(world.jobs()) == 1
    assert "activeJob" not in world.status()


@pytest.mark.parametrize(("decision", "acted", "won", "reason"), [
    ("TreatmentBetter", {"type": "Promoted", "status": "True", "reason": "AliasMoved",
                         "message": "alias champion now points at version 2"}, True, "ABTestWon"),
    ("ControlBetter", {"type": "Promoted", "status": "False", "reason": "ControlKept",
                       "message": "triage keeps version 1"}, False, "ABTestLost"),
    ("Inconclusive", {"type": "Promoted", "status": "False", "reason": "ControlKept",
                      "message": "triage keeps version 1"}, False, "ABTestInconclusive"),
])
async def test_abtest_outcome_is_recorded_and_the_challenger_removed(
        world: World, events: Events, decision: str, acted: dict[str, Any], won: bool, reason: str) -> None:
    test, challenger = await abtest_started(world, events)
    concluded = {"phase": "Concluded", "decision": decision,
                 "conditions": [{"type": "Concluded", "status": "True", "reason": decision,
                                 "message": f"{decision} (...)"}, acted,
                                {"type": "TreatmentReleased", "status": "False", "reason": "Draining"}]}
    world.kube.set_status(API, "abtests", NS, test, concluded)
    await world.reconcile()
    # KServe's router may still send requests to the challenger: it stays, and nothing is recorded yet.
    assert world.kube.has(API, "modeldeployments", NS, challenger)
    assert world.status()["abTest"].get("promoted") is None
    concluded["conditions"][-1] = {"type": "TreatmentReleased", "status": "True", "reason": "Released"}
    world.kube.set_status(API, "abtests", NS, test, concluded)
    events.drain()
    await world.reconcile()
    status = world.status()
    assert status["abTest"]["promoted"] is won
    assert status["abTest"]["decision"] == decision
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True" if won else "False", reason)
    assert not world.kube.has(API, "modeldeployments", NS, challenger)
    assert world.kube.has(API, "abtests", NS, test)  # the record stays
    assert "ChallengerRemoved" in events.reasons()
    deletes = world.kube.writes["delete"]
    await world.reconcile()
    assert world.kube.writes["delete"] == deletes


@pytest.mark.parametrize("pin", [False, True])
async def test_the_policys_abtest_follows_its_pin_version_opt_in(world: World, events: Events, pin: bool) -> None:
    world.policy(promotion={"strategy": "abtest", "pinVersion": pin, "abTest": {"statistics": {"interval": "1m"}}})
    await world.retrained(events, model=PINNED)
    test = world.kube.obj(API, "abtests", NS, str(world.status()["abTest"]["name"]))
    assert test["spec"]["onConclusion"] == {"promote": True, "pinVersion": pin}
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == PINNED


async def test_a_recommendation_of_the_policys_abtest_is_recorded(world: World, events: Events) -> None:
    """The champion pins a version and the policy did not opt in: the ABTest's recommendation becomes the
    policy's, the champion's spec is left to Git, and the challenger goes."""
    world.policy(strategy="abtest")
    await world.retrained(events, model=PINNED)
    record = world.status()["abTest"]
    recommendation = {"modelDeployment": "triage", "model": MODEL, "version": "2",
                      "reason": f"decision TreatmentBetter of ABTest {record['name']} (data from ...)"}
    world.kube.set_status(API, "abtests", NS, record["name"], {
        "phase": "Concluded", "decision": "TreatmentBetter", "recommendation": recommendation,
        "conditions": [{"type": "Concluded", "status": "True", "reason": "TreatmentBetter", "message": "(...)"},
                       {"type": "Promoted", "status": "False", "reason": "PromotionRecommended",
                        "message": 'promote triage to version 2 by setting its spec.model to ... "2" in Git'},
                       {"type": "TreatmentReleased", "status": "True", "reason": "Released"}]})
    events.drain()
    await world.reconcile()
    status = world.status()
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "PromotionRecommended")
    assert "in Git" in promoted["message"]
    assert status["recommendation"] == recommendation
    assert status["abTest"]["promoted"] is False and status["abTest"]["decision"] == "TreatmentBetter"
    assert not world.kube.has(API, "modeldeployments", NS, str(record["challenger"]))
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == PINNED
    assert {"PromotionRecommended", "ChallengerRemoved"} <= set(events.reasons())


async def test_invalid_spec_fails_without_child_writes(world: World, events: Events) -> None:
    world.deployment()
    world.policy(cooldown="soon")
    await world.reconcile()
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert world.kube.writes == {"patch/status": 1}
    assert world.jobs() == []


async def test_a_job_that_registered_no_version_is_recorded(world: World, events: Events) -> None:
    world.policy(strategy="direct")
    world.deployment()
    await world.reconcile()
    [job] = world.jobs()
    world.finish(job, succeeded=True)
    events.drain()
    await world.reconcile()
    record = world.status()["lastJob"]
    assert record["result"] == "Succeeded" and "modelVersion" not in record
    assert JOB_NAME_TAG in record["reason"]
    assert "Promoted" not in {c["type"] for c in world.status()["conditions"]}
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == \
        {"name": MODEL, "alias": "champion"}
    assert [e.type for e in events.drain() if e.reason == "NoVersionRegistered"] == ["Warning"]
