"""The ABTest reconciler's orchestration, in process: `reconcile` against FakeKube, FakeRegistry, FakePrometheus.

The fakes (tests/support/fakes.py) stand in for the API server, MLflow and Prometheus, which run only in
the integration tier. Each test sets up the two arms' ModelDeployments as their reconciler reports them,
plays KServe by writing the InferenceGraph's status, gives Prometheus feedback counts that decide the
sequential test (or do not), and drives the public `reconcile`; it asserts on the graph, the status,
the promotion written to MLflow or to the control ModelDeployment, and the Events kopf was given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any, cast

import pytest
from fakes import Clock, Events, FakeKube, FakePrometheus, FakeRegistry
from medserve_operator.clients.kube import ApiError
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.abtest import Runtime, reconcile

if TYPE_CHECKING:  # only to type the fakes as the clients they stand in for
    from medserve_operator.clients.kube import KubeClient
    from medserve_operator.clients.mlflow import MlflowRegistry
    from medserve_operator.clients.prometheus import PrometheusClient

API = "medserve.io/v1alpha1"
IG_API, IG = "serving.kserve.io/v1alpha1", "inferencegraphs"
NS = "icu"
MODEL = "triage-classifier"
LOG = logging.getLogger("test.abtest")


class World:
    def __init__(self, *, prometheus: bool = True) -> None:
        self.kube = FakeKube()
        self.registry = FakeRegistry()
        self.prometheus = FakePrometheus()
        for _ in range(2):
            self.registry.add_version(MODEL)
        self.registry.move_alias(MODEL, "champion", "1")
        self.rt = Runtime(config=OperatorConfig(mlflow_uri="http://mlflow.fake", runtime_mlflow_uri="http://mlflow"),
                          kube=cast("KubeClient", self.kube), registry=cast("MlflowRegistry", self.registry),
                          prometheus=cast("PrometheusClient", self.prometheus) if prometheus else None)

    def arm(self, name: str, *, version: str | None, model: dict[str, Any] | None = None,
            service: bool = True) -> None:
        """A ModelDeployment as its own reconciler reports it."""
        status: dict[str, Any] = {}
        if version is not None:
            status["model"] = {"name": MODEL, "version": version}
        if service:
            status["inferenceService"] = name
        self.kube.put({"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS},
                       "spec": {"model": model or {"name": MODEL, "version": version or "1"}}, "status": status})

    def abtest(self, **spec: Any) -> None:
        self.kube.put({"apiVersion": API, "kind": "ABTest", "metadata": {"name": "ab", "namespace": NS},
                       "spec": {"control": {"modelDeployment": "triage"},
                                "treatment": {"modelDeployment": "triage-v2"},
                                "trafficSplit": {"treatmentPercent": 30},
                                "statistics": {"interval": "1m", "minSamplesPerArm": 100},
                                "onConclusion": {"promote": True}, **spec}})

    def status(self) -> dict[str, Any]:
        return dict(self.kube.obj(API, "abtests", NS, "ab").get("status") or {})

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status().get("conditions", []) if c["type"] == type_)

    def graph_steps(self) -> list[tuple[str, int]]:
        steps = self.kube.obj(IG_API, IG, NS, "ab")["spec"]["nodes"]["root"]["steps"]
        return [(s["serviceName"], s["weight"]) for s in steps]

    def kserve_reports_graph(self) -> None:
        self.kube.set_status(IG_API, IG, NS, "ab", {"url": "http://ab.icu.example.com",
                                                    "conditions": [{"type": "Ready", "status": "True"}]})

    async def reconcile(self) -> None:
        await reconcile(self.rt, self.kube.obj(API, "abtests", NS, "ab"), LOG)

    def feedback(self, control: tuple[int, int], treatment: tuple[int, int]) -> None:
        """(correct, incorrect) feedback per arm, counted on the versions under test."""
        self.prometheus.feedback(deployment="triage", version="1", correct=control[0], incorrect=control[1])
        self.prometheus.feedback(deployment="triage-v2", version="2", correct=treatment[0], incorrect=treatment[1])


TREATMENT_WINS = ((600, 400), (900, 100))
CONTROL_WINS = ((900, 100), (600, 400))


async def running(world: World, events: Events, *, control_model: dict[str, Any] | None = None,
                  **spec: Any) -> None:
    """Both arms serving versions 1 and 2, the graph created and reported Ready by KServe."""
    world.arm("triage", version="1", model=control_model)
    world.arm("triage-v2", version="2")
    world.abtest(**spec)
    await world.reconcile()
    world.kserve_reports_graph()


@pytest.mark.parametrize(("arms", "reason"), [
    ({}, "ModelDeploymentNotFound"),
    ({"triage": "1"}, "ModelDeploymentNotFound"),
    ({"triage": "1", "triage-v2": None}, "ArmNotReady"),
    ({"triage": "1", "triage-v2": "1"}, "IdenticalArms"),
])
async def test_arms_not_ready_make_no_graph(world: World, events: Events, arms: dict[str, str | None],
                                            reason: str) -> None:
    for name, version in arms.items():
        world.arm(name, version=version, service=version is not None)
    world.abtest()
    await world.reconcile()
    arms_ready = world.condition("ArmsReady")
    assert (arms_ready["status"], arms_ready["reason"]) == ("False", reason)
    assert world.status()["phase"] == "Pending"
    assert world.kube.named(IG) == []
    assert world.kube.writes == {"patch/status": 1}
    assert world.prometheus.queries == []


@pytest.fixture
def world() -> World:
    return World()


async def test_graph_splits_traffic_and_the_test_starts_when_it_is_ready(world: World, events: Events) -> None:
    await running(world, events)
    graph = world.kube.obj(IG_API, IG, NS, "ab")
    assert graph["metadata"]["ownerReferences"][0]["uid"] == world.kube.obj(API, "abtests", NS, "ab")["metadata"]["uid"]
    assert world.graph_steps() == [("triage", 70), ("triage-v2", 30)]
    assert world.condition("GraphReady")["reason"] == "InferenceGraphPending"
    assert "startedAt" not in world.status()
    assert events.reasons().count("InferenceGraphCreated") == 1

    world.feedback((40, 10), (45, 5))  # too few samples to decide
    await world.reconcile()
    status = world.status()
    assert status["modelVersions"] == {"control": "1", "treatment": "2"}
    assert status["phase"] == "Running" and status["url"] == "http://ab.icu.example.com"
    assert status["samples"] == {"control": 50, "treatment": 50}
    assert world.condition("MetricsAvailable")["status"] == "True"
    assert "ABTestStarted" in events.reasons()
    assert world.kube.writes["create"] == 1 and world.kube.writes["replace"] == 0


async def test_no_evaluation_inside_the_statistics_interval(world: World, events: Events, clock: Clock) -> None:
    await running(world, events)
    world.feedback((40, 10), (45, 5))
    await world.reconcile()
    asked, writes = len(world.prometheus.queries), world.kube.total_writes
    clock.advance(30)
    await world.reconcile()
    assert len(world.prometheus.queries) == asked
    assert world.kube.total_writes == writes  # nothing new: nothing written
    clock.advance(31)
    world.feedback((80, 20), (90, 10))
    await world.reconcile()
    assert len(world.prometheus.queries) == asked + 2
    assert world.status()["samples"] == {"control": 100, "treatment": 100}


async def test_winner_following_an_alias_moves_the_alias(world: World, events: Events) -> None:
    await running(world, events, control_model={"name": MODEL, "alias": "champion"})
    world.feedback(*TREATMENT_WINS)
    await world.reconcile()
    status = world.status()
    assert status["phase"] == "Concluded" and status["decision"] == "TreatmentBetter"
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "AliasMoved")
    assert world.registry.aliases[(MODEL, "champion")] == "2"
    assert world.graph_steps() == [("triage", 100)]  # all traffic back to the control
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == \
        {"name": MODEL, "alias": "champion"}
    assert deployment_writes(world) == []  # the alias moved; the Git-owned spec is not touched
    assert "recommendation" not in world.status()
    reasons = events.reasons()
    assert "ABTestConcluded" in reasons and "Promoted" in reasons

    # A concluded test is final: no more queries, no more promotion, no writes.
    asked, writes, moves = len(world.prometheus.queries), world.kube.total_writes, world.registry.calls["set_alias"]
    await world.reconcile()
    assert (len(world.prometheus.queries), world.kube.total_writes, world.registry.calls["set_alias"]) == \
        (asked, writes, moves)


def deployment_writes(world: World) -> list[tuple[str, str, str]]:
    return [w for w in world.kube.log if w[1] == "modeldeployments"]


async def test_winner_against_a_pinned_control_is_recommended_not_written(world: World, events: Events) -> None:
    """By default a pinned control is Git's to change: status and an Event say what to set, no spec write."""
    await running(world, events)
    world.feedback(*TREATMENT_WINS)
    await world.reconcile()
    assert world.status()["decision"] == "TreatmentBetter"
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "PromotionRecommended")
    assert 'version "2"' in promoted["message"] and "onConclusion.pinVersion" in promoted["message"]
    recommendation = world.status()["recommendation"]
    assert {k: v for k, v in recommendation.items() if k != "reason"} == \
        {"modelDeployment": "triage", "model": MODEL, "version": "2"}
    assert "TreatmentBetter" in recommendation["reason"] and "ABTest ab" in recommendation["reason"]
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == {"name": MODEL, "version": "1"}
    assert deployment_writes(world) == []
    assert world.registry.calls["set_alias"] == 0
    recommended = [e for e in events.drain() if e.reason == "PromotionRecommended"]
    assert len(recommended) == 1 and recommended[0].message == promoted["message"]

    # Recorded once: a resync neither writes nor posts it again.
    await world.reconcile()
    assert deployment_writes(world) == []
    assert "PromotionRecommended" not in events.reasons()

    # Opting in afterwards lets the operator make the change it recommended.
    stored = world.kube.objects[(API, "abtests", NS, "ab")]
    stored["spec"]["onConclusion"] = {"promote": True, "pinVersion": True}
    await world.reconcile()
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "VersionPinned")
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == {"name": MODEL, "version": "2"}
    assert "recommendation" not in world.status()


async def test_winner_against_a_pinned_control_pins_it_on_opt_in(world: World, events: Events) -> None:
    await running(world, events, onConclusion={"promote": True, "pinVersion": True})
    world.feedback(*TREATMENT_WINS)
    await world.reconcile()
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "VersionPinned")
    assert world.kube.obj(API, "modeldeployments", NS, "triage")["spec"]["model"] == {"name": MODEL, "version": "2"}
    assert world.registry.calls["set_alias"] == 0


async def test_control_better_keeps_the_control(world: World, events: Events) -> None:
    await running(world, events, control_model={"name": MODEL, "alias": "champion"})
    world.feedback(*CONTROL_WINS)
    await world.reconcile()
    assert world.status()["decision"] == "ControlBetter"
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "ControlKept")
    assert world.registry.aliases[(MODEL, "champion")] == "1"
    assert world.registry.calls["set_alias"] == 0
    assert "NotPromoted" in events.reasons()


async def test_promotion_disabled(world: World, events: Events) -> None:
    await running(world, events, control_model={"name": MODEL, "alias": "champion"},
                  onConclusion={"promote": False})
    world.feedback(*TREATMENT_WINS)
    await world.reconcile()
    assert world.status()["decision"] == "TreatmentBetter"
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "PromotionDisabled")
    assert world.registry.aliases[(MODEL, "champion")] == "1"


async def test_failed_promotion_is_retried(world: World, events: Events) -> None:
    await running(world, events, control_model={"name": MODEL, "alias": "champion"})
    world.feedback(*TREATMENT_WINS)
    world.registry.down = True
    await world.reconcile()
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "PromotionFailed")
    assert world.status()["phase"] == "Concluded"
    reasons = events.reasons()
    assert "Promoted" not in reasons and "NotPromoted" not in reasons

    await world.reconcile()  # still down: tried again, still failed
    assert world.registry.calls["set_alias"] == 2
    world.registry.down = False
    await world.reconcile()
    promoted = world.condition("Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "AliasMoved")
    assert world.registry.aliases[(MODEL, "champion")] == "2"
    assert "Promoted" in events.reasons()


async def test_prometheus_down_waits(world: World, events: Events) -> None:
    await running(world, events)
    world.prometheus.down = True
    await world.reconcile()
    metrics = world.condition("MetricsAvailable")
    assert (metrics["status"], metrics["reason"]) == ("False", "PrometheusUnavailable")
    assert world.status()["phase"] == "Running"
    assert "decision" not in world.status()


async def test_without_prometheus_the_test_cannot_be_evaluated(events: Events) -> None:
    world = World(prometheus=False)
    await running(world, events)
    await world.reconcile()
    metrics = world.condition("MetricsAvailable")
    assert (metrics["status"], metrics["reason"]) == ("False", "PrometheusNotConfigured")


async def test_invalid_spec_fails_without_child_writes(world: World, events: Events) -> None:
    world.kube.put({"apiVersion": API, "kind": "ABTest", "metadata": {"name": "ab", "namespace": NS},
                    "spec": {"control": {"modelDeployment": "triage"}, "treatment": {"modelDeployment": "triage"}}})
    await world.reconcile()
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert world.status()["phase"] == "Failed"
    assert world.kube.writes == {"patch/status": 1}


async def test_an_arm_changing_version_pauses_the_test(world: World, events: Events, clock: Clock) -> None:
    await running(world, events)
    world.feedback((40, 10), (45, 5))
    await world.reconcile()
    world.arm("triage-v2", version="3")  # its ModelDeployment moved on to another version
    clock.advance(61)
    asked = len(world.prometheus.queries)
    await world.reconcile()
    arms = world.condition("ArmsReady")
    assert (arms["status"], arms["reason"]) == ("False", "VersionChanged")
    assert len(world.prometheus.queries) == asked
    assert world.status()["modelVersions"] == {"control": "1", "treatment": "2"}
    assert world.condition("Ready")["status"] == "False"


async def test_max_duration_ends_the_test_with_a_final_look(world: World, events: Events) -> None:
    """The reconciler reads the wall clock for the test's age: the test's start is seeded two hours back and
    the operator restarted (it then reads the status from the object)."""
    await running(world, events, maxDuration="1h")
    world.feedback((40, 10), (45, 5))
    await world.reconcile()
    status = world.status()
    world.kube.set_status(API, "abtests", NS, "ab", {**status, "startedAt": "2000-01-01T00:00:00Z"})
    world.rt = Runtime(config=world.rt.config, kube=world.rt.kube, registry=world.rt.registry,
                       prometheus=world.rt.prometheus)
    await world.reconcile()
    status = world.status()
    assert status["phase"] == "Concluded"
    assert "maxDuration ran out" in world.condition("Concluded")["message"]
    assert world.graph_steps() == [("triage", 100)]
    assert status["decision"] == "Inconclusive"  # 50 samples per arm, below minSamplesPerArm
    assert world.condition("Promoted")["reason"] == "ControlKept"


async def test_a_graph_write_that_fails_is_reported_and_retried(world: World, events: Events) -> None:
    world.arm("triage", version="1")
    world.arm("triage-v2", version="2")
    world.abtest()

    def refuse(verb: str, plural: str, name: str) -> None:
        if (verb, plural) == ("create", IG):
            raise ApiError(403, "Forbidden", 'inferencegraphs.serving.kserve.io is forbidden: User "operator" '
                                            "cannot create resource")

    world.kube.before_write = refuse
    await world.reconcile()
    graph = world.condition("GraphReady")
    assert (graph["status"], graph["reason"]) == ("False", "InferenceGraphFailed")
    assert "Forbidden" in graph["message"]
    world.kube.before_write = None
    await world.reconcile()
    assert world.graph_steps() == [("triage", 70), ("triage-v2", 30)]


def kserve_rolls_out_router(world: World, *, old_pods: int = 0) -> None:
    """Play KServe's graph controller and the Deployment controller: the router Deployment named after the
    graph (kserve raw_ig.go createInferenceGraphPodSpec) runs the graph's current spec as --graph-json."""
    graph = world.kube.obj(IG_API, IG, NS, "ab")
    world.kube.put({"apiVersion": "apps/v1", "kind": "Deployment", "plural": "deployments",
                    "metadata": {"name": "ab", "namespace": NS, "generation": 3},
                    "spec": {"replicas": 1, "template": {"spec": {"containers": [
                        {"name": "ab", "args": ["--graph-json", json.dumps(graph["spec"])]}]}}},
                    "status": {"observedGeneration": 3, "replicas": 1 + old_pods, "updatedReplicas": 1,
                               "availableReplicas": 1}})


async def test_the_treatment_is_released_only_once_every_router_pod_routes_away(world: World,
                                                                                 events: Events) -> None:
    await running(world, events, control_model={"name": MODEL, "alias": "champion"})
    world.feedback(*TREATMENT_WINS)
    await world.reconcile()
    assert world.graph_steps() == [("triage", 100)]
    # The graph says control-only, but no router pod runs that graph yet.
    assert world.condition("TreatmentReleased")["reason"] == "RouterSwitching"
    kserve_rolls_out_router(world, old_pods=1)
    await world.reconcile()
    routed = world.condition("TreatmentRoutedAway")
    assert (routed["status"], routed["reason"]) == ("False", "RouterSwitching")
    assert "1 old" in routed["message"]
    kserve_rolls_out_router(world)
    await world.reconcile()
    assert world.condition("TreatmentRoutedAway")["status"] == "True"
    released = world.condition("TreatmentReleased")
    assert (released["status"], released["reason"]) == ("False", "Draining")  # the router's 30 s drain
    world.rt.config = dataclasses.replace(world.rt.config, graph_drain_seconds=0)
    await world.reconcile()
    released = world.condition("TreatmentReleased")
    assert (released["status"], released["reason"]) == ("True", "Released")


@pytest.mark.parametrize(("propagate", "status", "reason"), [
    (None, "False", "KeyNotForwarded"),
    (("Authorization",), "True", "KeyForwarded"),
])
async def test_arms_requiring_keys_the_router_does_not_forward_are_reported(
        world: World, events: Events, propagate: tuple[str, ...] | None, status: str, reason: str) -> None:
    world.rt.config = dataclasses.replace(world.rt.config, router_headers_propagate=propagate)
    await running(world, events)
    for arm in ("triage", "triage-v2"):
        stored = world.kube.obj(API, "modeldeployments", NS, arm)
        stored["spec"]["security"] = {"apiKeySecretRef": {"name": "api-keys"}}
        world.kube.put(stored)
    await world.reconcile()
    condition = world.condition("HeadersPropagated")
    assert (condition["status"], condition["reason"]) == (status, reason)
