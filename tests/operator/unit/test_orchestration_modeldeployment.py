"""The ModelDeployment reconciler's orchestration, in process: `reconcile` against FakeKube and FakeRegistry.

The fakes (tests/support/fakes.py) stand in for the API server and MLflow, which run only in the
integration tier; each test drives the public `reconcile` as kopf would (bodies read back from the
fake API), plays KServe by writing the InferenceService's status, and asserts on the objects, the
status written, the write counts and the Events posted through kopf.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import pytest
from fakes import Clock, Events, FakeKube, FakePrometheus, FakeRegistry
from medserve_operator.clients.kube import ApiError
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.modeldeployment import Runtime, reconcile

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
        """KServe's report on the InferenceService's current generation."""
        isvc = self.isvc(name)
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        if not ready:
            condition.update(reason="RevisionFailed", message="container exited")
        self.kube.set_status(ISVC_API, ISVC, NS, name, {
            "observedGeneration": isvc["metadata"]["generation"], "url": f"http://{name}.{NS}.example.com",
            "conditions": [condition]})


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
    # KServe has not yet reported the new generation: not Ready, still a canary.
    assert world.condition("InferenceServiceReady")["reason"] == "InferenceServiceUpdating"
    assert "RolloutStarted" in events.reasons()

    await world.reconcile(periodic=True)  # still the old generation's report: the canary stays
    assert world.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert "previousModel" in world.status()

    world.kserve_reports()
    await world.reconcile(periodic=True)
    assert "canaryTrafficPercent" not in world.isvc()["spec"]["predictor"]
    assert "previousModel" not in world.status()
    assert "RolloutComplete" in events.reasons()


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
