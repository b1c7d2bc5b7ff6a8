"""The ModelDeployment reconciler's orchestration, in process: `reconcile` against FakeKube and FakeRegistry.

The fakes (tests/support/fakes.py) stand in for the API server and MLflow, which run only in the
integration tier; each test drives the public `reconcile` as kopf would (bodies read back from the
fake API), plays KServe by writing the InferenceService's status, and asserts on the objects, the
status written, the write counts and the Events posted through kopf.

`World.kserve_reports` writes the status KServe 0.20 writes for the stored spec, per deployment mode
(kserve/kserve `pkg/apis/serving/v1beta1/inference_service_status.go`: `PropagateStatus` for Knative,
`PropagateRawStatus` and `components/predictor.go` `reconcileCanaryDeployments` for Standard;
`reconcilers/knative/ksvc_reconciler.go` `createKnativeService` for the traffic split): a new Knative
revision per change of the predictor's pod template, traffic split between the latest ready revision and
latestRolledoutRevision, canaryStatuses per canary, and an observedGeneration that is the child's, never
the InferenceService's. `World.kserve_defaults` rewrites the stored spec as KServe's mutating webhook does
(quantities canonical, defaults added).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
from typing import TYPE_CHECKING, Any, cast

import pytest
from fakes import Clock, Events, FakeKube, FakePrometheus, FakeRegistry
from medserve_operator.api import ModelDeploymentSpec, parse_spec
from medserve_operator.clients.kube import ApiError
from medserve_operator.clients.mlflow import ResolvedModel
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.modeldeployment import Runtime, decide_rollout, reconcile

if TYPE_CHECKING:  # only to type the fakes as the clients they stand in for
    from medserve_operator.clients.kube import KubeClient
    from medserve_operator.clients.mlflow import MlflowRegistry
    from medserve_operator.clients.prometheus import PrometheusClient

MD_API, MD = "medserve.io/v1alpha1", "modeldeployments"
ISVC_API, ISVC = "serving.kserve.io/v1beta1", "inferenceservices"
NS = "icu"
MODEL = "triage-classifier"
LOG = logging.getLogger("test.modeldeployment")


class World:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.registry = FakeRegistry()
        self.revisions: dict[str, list[tuple[str, str]]] = {}
        self.rt = self.restart()

    def restart(self) -> Runtime:
        """A fresh Runtime: the operator after a restart (no memory of what it wrote)."""
        self.rt = Runtime(config=OperatorConfig(mlflow_uri="http://mlflow.fake", runtime_mlflow_uri="http://mlflow:5000"),
                          kube=cast("KubeClient", self.kube), registry=cast("MlflowRegistry", self.registry))
        return self.rt

    def apply(self, name: str = "triage", **spec: Any) -> None:
        model = spec.pop("model", {"name": MODEL, "alias": "champion"})
        body = {"apiVersion": MD_API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS},
                "spec": {"model": model, "monitoring": {"interval": "1m", "drift": {"enabled": False}}, **spec}}
        if self.kube.has(MD_API, MD, NS, name):
            self.kube.objects[(MD_API, MD, NS, name)]["spec"] = body["spec"]
            self.kube.objects[(MD_API, MD, NS, name)]["metadata"]["generation"] += 1
        else:
            self.kube.put(body)

    def md(self, name: str = "triage") -> dict[str, Any]:
        return self.kube.obj(MD_API, MD, NS, name)

    def status(self, name: str = "triage") -> dict[str, Any]:
        return dict(self.md(name).get("status") or {})

    def condition(self, type_: str, name: str = "triage") -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == type_)

    def isvc(self, name: str = "triage") -> dict[str, Any]:
        return self.kube.obj(ISVC_API, ISVC, NS, name)

    async def reconcile(self, name: str = "triage", *, periodic: bool = False) -> None:
        await reconcile(self.rt, self.md(name), LOG, periodic=periodic)

    def kserve_reports(self, *, ready: bool = True, name: str = "triage") -> None:
        """KServe's report on the InferenceService as stored now, in its deployment mode."""
        isvc = self.isvc(name)
        mode = isvc["metadata"]["annotations"].get("serving.kserve.io/deploymentMode")
        status = copy.deepcopy(isvc.get("status") or {})
        spec = isvc["spec"]
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        if not ready:
            condition.update(reason="RevisionFailed", message="container exited")
        conditions = [condition, {**condition, "type": "PredictorReady"}, {"type": "IngressReady", "status": "True"}]
        if mode == "Knative":
            predictor = dict(status.get("components", {}).get("predictor") or {})
            template = json.dumps({k: v for k, v in spec["predictor"].items() if k != "canaryTrafficPercent"},
                                  sort_keys=True)
            revisions = self.revisions.setdefault(name, [])
            if not revisions or revisions[-1][1] != template:
                revisions.append((f"{name}-predictor-{len(revisions) + 1:05d}", template))
            predictor["latestCreatedRevision"] = revisions[-1][0]
            if ready:
                predictor["latestReadyRevision"] = revisions[-1][0]
            latest = predictor.get("latestReadyRevision")
            canary, rolled_out = spec["predictor"].get("canaryTrafficPercent"), predictor.get("latestRolledoutRevision")
            if canary is not None and rolled_out:
                traffic = [{"revisionName": latest, "latestRevision": True, "percent": canary}]
                if canary < 100:
                    traffic.append({"revisionName": rolled_out, "latestRevision": False, "percent": 100 - canary,
                                    "tag": "prev"})
            else:
                traffic = [{"revisionName": latest, "latestRevision": True, "percent": 100}]
                predictor["latestRolledoutRevision"] = latest
            predictor["traffic"] = traffic
            conditions.append({**condition, "type": "LatestDeploymentReady"})
            status["components"] = {"predictor": predictor}
            status["observedGeneration"] = len(revisions)  # the Knative Service's, not ours
        else:
            canaries = spec.get("canary") or []
            status["canaryStatuses"] = [{"name": c["predictor"]["name"], "ready": ready,
                                         "trafficPercent": c["trafficPercent"]} for c in canaries]
            if not canaries:
                status.pop("canaryStatuses")
            else:
                conditions.append({"type": "CanaryPredictorReady", "status": "True" if ready else "False"})
            status["observedGeneration"] = 1  # the Deployment's, not ours
        status.update(url=f"http://{name}.{NS}.example.com", conditions=conditions,
                      deploymentMode="Knative" if mode == "Knative" else "Standard")
        self.kube.set_status(ISVC_API, ISVC, NS, name, status)

    def kserve_defaults(self, name: str = "triage") -> None:
        """Rewrite the stored spec as KServe's mutating webhook does when it round-trips it through Go types
        (`inference_service_defaults.go`: `setResourceRequirementDefaults`, `disableAutomountServiceAccount-
        Token`; resource.Quantity marshals in canonical form). Not counted as the operator's write."""
        key = (ISVC_API, ISVC, NS, name)
        predictor = self.kube.objects[key]["spec"]["predictor"]
        predictor.setdefault("automountServiceAccountToken", False)
        resources = predictor["containers"][0].setdefault("resources", {})
        canonical = {"0.5": "500m", "1000m": "1", "1024Mi": "1Gi", 1: "1", 2: "2"}
        for kind in ("limits", "requests"):
            values = resources.setdefault(kind, {})
            for resource, value in values.items():
                values[resource] = canonical.get(value, value)
            values.setdefault("cpu", "1")
            values.setdefault("memory", "2Gi")


@pytest.fixture
def world() -> World:
    return World()


async def serving(world: World, events: Events, version_alias: str = "1") -> None:
    """A ModelDeployment on alias champion → `version_alias`, rolled out and Ready."""
    world.registry.add_version(MODEL)
    world.registry.move_alias(MODEL, "champion", version_alias)
    world.apply()
    await world.reconcile()
    world.kserve_reports()
    await world.reconcile(periodic=True)
    events.drain()


async def test_create_renders_an_owned_inference_service_and_reports_ready(world: World, events: Events) -> None:
    world.registry.add_version(MODEL)
    world.registry.move_alias(MODEL, "champion", "1")
    world.apply()
    await world.reconcile()

    isvc = world.isvc()
    md = world.md()
    assert isvc["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert isvc["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert isvc["metadata"]["labels"]["medserve.io/model-version"] == "1"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    status = world.status()
    assert status["model"]["version"] == "1" and status["model"]["alias"] == "champion"
    assert status["model"]["uri"] == f"models:/{MODEL}/1"
    assert status["phase"] == "Deploying"
    assert world.condition("ModelResolved")["status"] == "True"
    assert world.condition("InferenceServiceReady")["reason"] == "InferenceServicePending"
    assert world.kube.writes == {"create": 1, "patch/status": 1}
    assert "InferenceServiceCreated" in events.reasons()

    world.kserve_reports()
    await world.reconcile(periodic=True)
    assert world.status()["phase"] == "Ready"
    assert world.status()["url"] == "http://triage.icu.example.com"
    assert world.condition("Ready")["status"] == "True"


async def test_a_resync_that_finds_nothing_new_writes_nothing(world: World, events: Events, clock: Clock) -> None:
    await serving(world, events)
    before, resolves = world.kube.total_writes, world.registry.calls["resolve"]
    await world.reconcile(periodic=True)
    assert world.kube.total_writes == before
    clock.advance(61)  # the alias is asked again, and still names version 1
    await world.reconcile(periodic=True)
    assert world.registry.calls["resolve"] == resolves + 1
    assert world.kube.total_writes == before
    assert events.drain() == []


async def test_version_change_rolls_out_as_canary_and_completes_when_kserve_reports_it(
        world: World, events: Events) -> None:
    """Serverless: canaryTrafficPercent, promoted once KServe reports the new revision at that share,
    complete once it reports the new revision serving all traffic."""
    await serving(world, events)
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "2"}, rollout={"canaryTrafficPercent": 25})
    await world.reconcile()

    isvc = world.isvc()
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert isvc["metadata"]["labels"]["medserve.io/model-version"] == "2"
    status = world.status()
    assert status["model"]["version"] == "2"
    assert status["previousModel"]["version"] == "1"
    assert status["rollout"] == {"stage": "Canary"}
    assert "RolloutStarted" in events.reasons()

    await world.reconcile(periodic=True)  # still the old report: the canary stays
    assert world.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 25

    world.kserve_reports(ready=False)  # the new revision exists but is not ready: not promoted
    await world.reconcile(periodic=True)
    assert world.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert world.status()["rollout"]["stage"] == "Canary"

    world.kserve_reports()  # revision 2 ready, at 25%: promoted
    traffic = world.isvc()["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic] == [("triage-predictor-00002", 25),
                                                                    ("triage-predictor-00001", 75)]
    await world.reconcile(periodic=True)
    assert "canaryTrafficPercent" not in world.isvc()["spec"]["predictor"]
    assert world.status()["rollout"]["stage"] == "Promoting"
    assert world.status()["previousModel"]["version"] == "1"  # KServe still reports the split
    assert "RolloutPromoted" in events.reasons() and "RolloutComplete" not in events.reasons()

    world.kserve_reports()  # all traffic on revision 2
    await world.reconcile(periodic=True)
    assert "previousModel" not in world.status() and "rollout" not in world.status()
    assert "RolloutComplete" in events.reasons()
    assert world.condition("InferenceServiceReady")["status"] == "True"


async def test_standard_mode_canary_is_spec_canary_and_promotion_retargets(world: World, events: Events) -> None:
    """Standard: spec.canary beside the stable predictor, promotion by retargeting predictor.name, complete
    once KServe's canaryStatuses are gone."""
    runtime, scaling = {"deploymentMode": "Standard"}, {"metric": "cpu", "target": 70}
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "1"}, runtime=runtime, scaling=scaling)
    await world.reconcile()
    isvc = world.isvc()
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["spec"]["predictor"]["name"] == "v1"
    world.kserve_reports()
    await world.reconcile(periodic=True)
    assert world.status()["phase"] == "Ready" and world.status()["deploymentMode"] == "Standard"
    events.drain()

    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "2"}, runtime=runtime, scaling=scaling,
                rollout={"canaryTrafficPercent": 20})
    await world.reconcile()
    spec = world.isvc()["spec"]
    assert spec["predictor"]["name"] == "v1"
    assert [(c["predictor"]["name"], c["trafficPercent"]) for c in spec["canary"]] == [("v2", 20)]
    canary = spec["canary"][0]["predictor"]
    assert not {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"} & set(canary)
    env = {e["name"]: e["value"] for e in canary["containers"][0]["env"]}
    assert env["MEDSERVE_MODEL_VERSION"] == "2" and env["STORAGE_URI"].endswith("/2")

    world.kserve_reports()  # canaryStatuses: v2 ready at 20%
    await world.reconcile(periodic=True)
    spec = world.isvc()["spec"]
    assert "canary" not in spec and spec["predictor"]["name"] == "v2"
    assert world.status()["rollout"]["stage"] == "Promoting"
    assert "RolloutComplete" not in events.reasons()

    await world.reconcile(periodic=True)  # KServe has not reconciled the retarget: canaryStatuses remain
    assert "previousModel" in world.status()
    world.kserve_reports()
    await world.reconcile(periodic=True)
    assert "previousModel" not in world.status()
    assert "RolloutComplete" in events.reasons()


async def test_resyncs_during_a_canary_write_nothing(world: World, events: Events, clock: Clock) -> None:
    """A canary waiting for KServe (or for rollout.canaryDuration) is looked at again without any write."""
    runtime, scaling = {"deploymentMode": "Standard"}, {"metric": "cpu"}
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "1"}, runtime=runtime, scaling=scaling)
    await world.reconcile()
    world.kserve_reports()
    await world.reconcile(periodic=True)
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "2"}, runtime=runtime, scaling=scaling,
                rollout={"canaryTrafficPercent": 10, "canaryDuration": "1h"})
    await world.reconcile()
    await world.reconcile(periodic=True)  # not yet reported: waits
    world.kserve_reports()
    await world.reconcile(periodic=True)  # serving: canaryServingSince recorded, held for the hour
    assert world.status()["rollout"]["stage"] == "Canary" and "canaryServingSince" in world.status()["rollout"]
    before = dict(world.kube.writes)
    for _ in range(3):
        clock.advance(61)
        await world.reconcile(periodic=True)
    assert dict(world.kube.writes) == before
    assert world.isvc()["spec"]["canary"][0]["trafficPercent"] == 10


async def test_standard_scaling_change_is_not_stuck_deploying(world: World, events: Events) -> None:
    """A change KServe's child Deployment does not see (replicas go to the HPA) leaves observedGeneration
    where it was; readiness is read from the conditions, so the deployment stays Ready."""
    runtime = {"deploymentMode": "Standard"}
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "1"}, runtime=runtime, scaling={"metric": "cpu"})
    await world.reconcile()
    world.kserve_reports()
    await world.reconcile(periodic=True)
    world.apply(model={"name": MODEL, "version": "1"}, runtime=runtime, scaling={"metric": "cpu", "maxReplicas": 9})
    await world.reconcile()
    assert world.isvc()["spec"]["predictor"]["maxReplicas"] == 9
    assert world.isvc()["metadata"]["generation"] == 2 and world.isvc()["status"]["observedGeneration"] == 1
    assert world.status()["phase"] == "Ready"


async def test_standard_mode_refuses_a_knative_scaling_metric(world: World, events: Events) -> None:
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "1"}, runtime={"deploymentMode": "Standard"},
                scaling={"metric": "rps"})
    await world.reconcile()
    ready = world.condition("InferenceServiceReady")
    assert (ready["status"], ready["reason"]) == ("False", "UnsupportedInMode")
    assert "spec.scaling.metric" in ready["message"]
    assert world.kube.named(ISVC) == []


async def test_a_change_of_deployment_mode_is_refused_without_a_write(world: World, events: Events) -> None:
    """KServe's validateDeploymentMode refuses it; the operator says so instead of retrying a PUT."""
    await serving(world, events)
    before = world.kube.total_writes
    world.apply(runtime={"deploymentMode": "Standard"}, scaling={"metric": "cpu"})
    await world.reconcile()
    ready = world.condition("InferenceServiceReady")
    assert (ready["status"], ready["reason"]) == ("False", "UnsupportedInMode")
    assert "validateDeploymentMode" in ready["message"]
    assert world.isvc()["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert world.kube.writes["replace"] == 0 and world.kube.total_writes == before + 1  # the status only


async def test_resyncs_write_nothing_after_kserve_canonicalises_the_spec(world: World, events: Events,
                                                                          clock: Clock) -> None:
    """KServe's webhook stores "0.5" as "500m" and adds defaults; a resync must not PUT the spec back."""
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "1"}, runtime={
        "device": "gpu", "resources": {"limits": {"cpu": "0.5", "memory": "1024Mi"}, "requests": {"cpu": "1000m"}}})
    await world.reconcile()
    world.kserve_defaults()
    world.kserve_reports()
    await world.reconcile(periodic=True)
    before = dict(world.kube.writes)
    for _ in range(3):
        clock.advance(61)
        await world.reconcile(periodic=True)
    assert dict(world.kube.writes) == before  # zero API writes per resync
    limits = world.isvc()["spec"]["predictor"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}


def test_canary_duration_holds_the_canary_before_promotion() -> None:
    """decide_rollout (pure): a canary serving its share is promoted only after rollout.canaryDuration."""
    spec = parse_spec(ModelDeploymentSpec, {"model": {"name": MODEL, "version": "2"},
                                             "rollout": {"canaryTrafficPercent": 10, "canaryDuration": "10m"}})
    assert isinstance(spec, ModelDeploymentSpec)
    new = ResolvedModel(name=MODEL, version="2", source="", run_id="")
    isvc = {"metadata": {"labels": {"medserve.io/model-version": "2"},
                         "annotations": {"serving.kserve.io/deploymentMode": "Knative"}},
            "spec": {"predictor": {"canaryTrafficPercent": 10}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "components": {"predictor": {
                           "latestCreatedRevision": "r2", "latestReadyRevision": "r2", "latestRolledoutRevision": "r1",
                           "traffic": [{"revisionName": "r2", "latestRevision": True, "percent": 10},
                                       {"revisionName": "r1", "latestRevision": False, "percent": 90}]}}}}
    status = {"model": {"name": MODEL, "version": "2"}, "previousModel": {"name": MODEL, "version": "1"},
              "rollout": {"stage": "Canary"}}
    start = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    first = decide_rollout(isvc, status, new, spec.rollout, "Serverless", now=start)
    assert first.canary and first.stage == {"stage": "Canary", "canaryServingSince": "2026-01-01T12:00:00Z"}
    later = decide_rollout(isvc, {**status, "rollout": first.stage}, new, spec.rollout, "Serverless",
                           now=start + datetime.timedelta(minutes=9))
    assert later.canary and later.stage == first.stage
    done = decide_rollout(isvc, {**status, "rollout": first.stage}, new, spec.rollout, "Serverless",
                          now=start + datetime.timedelta(minutes=10))
    assert not done.canary and done.stage is not None and done.stage["stage"] == "Promoting"
    assert [e[1] for e in done.events] == ["RolloutPromoted"]


async def test_canary_percent_zero_switches_at_once(world: World, events: Events) -> None:
    await serving(world, events)
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "2"}, rollout={"canaryTrafficPercent": 0})
    await world.reconcile()
    isvc = world.isvc()
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert isvc["metadata"]["labels"]["medserve.io/model-version"] == "2"
    assert "previousModel" not in world.status()
    assert "RolloutStarted" not in events.reasons()


async def test_alias_moved_is_seen_after_the_monitoring_interval(world: World, events: Events, clock: Clock) -> None:
    await serving(world, events)
    world.registry.add_version(MODEL)
    world.registry.move_alias(MODEL, "champion", "2")
    resolves = world.registry.calls["resolve"]

    clock.advance(30)
    await world.reconcile(periodic=True)
    assert world.registry.calls["resolve"] == resolves  # inside monitoring.interval: not asked
    assert world.isvc()["metadata"]["labels"]["medserve.io/model-version"] == "1"

    clock.advance(31)
    await world.reconcile(periodic=True)
    assert world.registry.calls["resolve"] == resolves + 1
    assert world.isvc()["metadata"]["labels"]["medserve.io/model-version"] == "2"
    assert world.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 10  # the default canary
    assert world.status()["model"] == {**world.status()["model"], "version": "2", "alias": "champion"}
    assert world.status()["previousModel"]["version"] == "1"


async def test_registry_down_then_recovery(world: World, events: Events, clock: Clock) -> None:
    world.registry.add_version(MODEL)
    world.registry.move_alias(MODEL, "champion", "1")
    world.registry.down = True
    world.apply()
    await world.reconcile()
    resolved = world.condition("ModelResolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "RegistryUnavailable")
    assert world.status()["phase"] == "Resolving"
    assert not world.kube.has(ISVC_API, ISVC, NS, "triage")
    assert world.kube.writes == {"patch/status": 1}

    world.registry.down = False
    await world.reconcile()  # kopf's retry of the failed create handler
    assert world.isvc()["metadata"]["labels"]["medserve.io/model-version"] == "1"
    world.kserve_reports()
    await world.reconcile(periodic=True)
    assert world.status()["phase"] == "Ready"

    # Down again at the next alias check: the pinned version keeps serving, nothing else is touched.
    world.registry.down = True
    isvc_before = world.isvc()
    clock.advance(61)
    await world.reconcile(periodic=True)
    resolved = world.condition("ModelResolved")
    assert resolved["status"] == "True" and "re-check failed" in resolved["message"]
    assert world.status()["model"]["version"] == "1"
    assert world.isvc() == isvc_before
    assert world.status()["phase"] == "Ready"

    world.registry.down = False
    clock.advance(61)
    await world.reconcile(periodic=True)
    assert "re-check failed" not in world.condition("ModelResolved")["message"]


async def test_unknown_model_fails_without_an_inference_service(world: World, events: Events) -> None:
    world.apply(model={"name": "no-such-model", "version": "3"})
    await world.reconcile()
    resolved = world.condition("ModelResolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "ModelNotFound")
    assert world.status()["phase"] == "Failed"
    assert world.kube.writes == {"patch/status": 1}


async def test_invalid_spec_fails_without_child_writes(world: World, events: Events) -> None:
    world.apply(model={"name": MODEL, "version": "1", "alias": "champion"})  # exactly one of the two
    await world.reconcile()
    status = world.status()
    assert status["phase"] == "Failed"
    ready = world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert world.kube.writes == {"patch/status": 1}
    assert world.registry.calls["resolve"] == 0
    assert world.kube.named(ISVC) == []


async def test_restart_keeps_the_pinned_version_without_asking_the_registry(world: World, events: Events) -> None:
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "1"})
    await world.reconcile()
    world.kserve_reports()
    await world.reconcile(periodic=True)
    world.restart()
    world.registry.down = True
    before = world.kube.total_writes
    await world.reconcile()  # kopf's resume handler
    assert world.status()["phase"] == "Ready"
    assert world.kube.total_writes == before
    assert world.registry.calls["resolve"] == 1


async def test_isvc_failure_is_reported_not_ready(world: World, events: Events) -> None:
    await serving(world, events)
    world.kserve_reports(ready=False)
    await world.reconcile(periodic=True)
    ready = world.condition("InferenceServiceReady")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "RevisionFailed", "container exited")
    assert world.status()["phase"] == "Deploying"


async def test_a_status_report_racing_the_update_is_not_lost(world: World, events: Events) -> None:
    """KServe writes the InferenceService's status between the operator's read and its PUT: the PUT is a 409
    (kopf retries the handler), and the retry applies the change on the new resourceVersion."""
    await serving(world, events)
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "2"})

    def kserve_writes_first(verb: str, plural: str, name: str) -> None:
        if (verb, plural) == ("replace", ISVC):
            world.kube.before_write = None
            world.kserve_reports()

    world.kube.before_write = kserve_writes_first
    with pytest.raises(ApiError) as caught:
        await world.reconcile()
    assert caught.value.status == 409
    assert world.isvc()["metadata"]["labels"]["medserve.io/model-version"] == "1"
    await world.reconcile()
    assert world.isvc()["metadata"]["labels"]["medserve.io/model-version"] == "2"
    assert world.status()["previousModel"]["version"] == "1"


async def test_low_accuracy_from_prometheus_degrades_the_deployment(world: World, events: Events,
                                                                    clock: Clock) -> None:
    """The real Monitor over FakePrometheus (accuracy only: no reference profile is fetched)."""
    from medserve_operator.controllers.modeldeployment.monitoring import Monitor

    prometheus = FakePrometheus()
    world.rt.monitor = Monitor(cast("PrometheusClient", prometheus), world.rt.registry)
    world.registry.add_version(MODEL)
    world.apply(model={"name": MODEL, "version": "1"},
                monitoring={"interval": "1m", "drift": {"enabled": False}, "alerts": {"minAccuracy": 0.8}})
    await world.reconcile()
    world.kserve_reports()
    prometheus.feedback(deployment="triage", version="1", correct=60, incorrect=40)
    await world.reconcile(periodic=True)
    degraded = world.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "LowAccuracy")
    assert world.status()["phase"] == "Degraded"
    assert world.condition("Ready")["status"] == "False"

    prometheus.down = True
    clock.advance(61)
    await world.reconcile(periodic=True)
    degraded = world.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("Unknown", "PrometheusUnavailable")

    prometheus.down = False
    prometheus.feedback(deployment="triage", version="1", correct=95, incorrect=5)
    clock.advance(61)
    await world.reconcile(periodic=True)
    assert world.condition("Degraded")["reason"] == "AccuracyOK"
    assert world.status()["phase"] == "Ready"


PVC = "persistentvolumeclaims"
AUDIT_SPEC = {"audit": {"dsnSecretRef": {"name": "audit-db"}, "keySecretRef": {"name": "audit-key"},
                        "spool": {"storageClassName": "nfs-rwx"}}}


async def test_a_persistent_spool_is_an_owned_claim_and_audit_durable_says_so(world: World, events: Events) -> None:
    world.registry.add_version(MODEL)
    world.registry.move_alias(MODEL, "champion", "1")
    world.apply(security=AUDIT_SPEC)
    await world.reconcile()
    claim = world.kube.obj("v1", PVC, NS, "triage-audit-spool")
    assert claim["metadata"]["ownerReferences"][0]["uid"] == world.md()["metadata"]["uid"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs-rwx"
    volumes = {v["name"]: v for v in world.isvc()["spec"]["predictor"]["volumes"]}
    assert volumes["audit-spool"]["persistentVolumeClaim"] == {"claimName": "triage-audit-spool"}
    durable = world.condition("AuditDurable")
    assert (durable["status"], durable["reason"]) == ("True", "PersistentSpool")
    assert "audit-db" in durable["message"] and "triage-audit-spool" in durable["message"]
    # The claim is left alone afterwards (its spec is immutable), even when the spec asks for another size.
    world.apply(security={"audit": {**AUDIT_SPEC["audit"], "spool": {"storageClassName": "nfs-rwx", "size": "9Gi"}}})
    writes = world.kube.writes["replace"]
    await world.reconcile()
    assert world.kube.obj("v1", PVC, NS, "triage-audit-spool")["spec"] == claim["spec"]
    assert world.kube.writes["replace"] == writes  # the size is the claim's only, and the claim stays


async def test_a_refused_claim_falls_back_to_an_empty_dir_and_says_so(world: World, events: Events) -> None:
    world.registry.add_version(MODEL)
    world.registry.move_alias(MODEL, "champion", "1")

    def refuse(verb: str, plural: str, name: str) -> None:
        if plural == PVC:
            raise ApiError(403, "Forbidden", 'persistentvolumeclaims is forbidden: User "medserve" cannot create')
    world.kube.before_write = refuse
    world.apply(security=AUDIT_SPEC)
    await world.reconcile()
    volumes = {v["name"]: v for v in world.isvc()["spec"]["predictor"]["volumes"]}
    assert volumes["audit-spool"] == {"name": "audit-spool", "emptyDir": {}}
    durable = world.condition("AuditDurable")
    assert (durable["status"], durable["reason"]) == ("False", "SpoolClaimFailed")
    assert "forbidden" in durable["message"] and "emptyDir" in durable["message"]
    assert "SpoolClaimFailed" in events.reasons()


async def test_audit_in_the_pod_is_reported_not_held_against_ready(world: World, events: Events) -> None:
    await serving(world, events)
    durable = world.condition("AuditDurable")
    assert (durable["status"], durable["reason"]) == ("False", "AuditLogInPod")
    assert "UNKEYED" in durable["message"]
    assert world.condition("Ready")["status"] == "True"
