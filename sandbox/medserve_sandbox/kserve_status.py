"""The InferenceService status KServe 0.20 writes, per deployment mode, from what its children report (pure).

KServe never derives an InferenceService's status from the InferenceService itself: it copies it from the
child it created, a Deployment in Standard mode, a Knative Service in Knative ("Serverless") mode. So does
this module, from plain views of those children (`DeploymentView`, `KnativeServiceView`) that the KServe
stand-in (kserve_standin.py) keeps for the processes it runs. Each function cites the KServe function
it follows (kserve/kserve at aaac4e29, 0.20.0):

- conditions: knative.dev/pkg apis `NewLivingConditionSet` as used by pkg/apis/serving/v1beta1/
  inference_service_status.go `conditionSet` (Ready from PredictorReady and IngressReady; the other types
  carry severity Info; sorted by type; lastTransitionTime moves only when the condition changes);
- Standard: inference_service_status.go `PropagateRawStatus` (PredictorReady from the Deployment's Available,
  Progressing and ReplicaFailure conditions; `observedGeneration` = the Deployment's
  `status.observedGeneration`), reconcilers/ingress/kube_ingress_reconciler.go `Reconcile` and
  `createRawIngress` (IngressReady False "Predictor ingress not created" until the predictor is ready, then
  url, address and IngressReady True), components/predictor.go `reconcileCanaryDeployments`
  (`canaryStatuses`, CanaryPredictorReady);
- Knative: inference_service_status.go `PropagateStatus` (PredictorReady, PredictorRouteReady and
  PredictorConfigurationReady copied from the Knative Service's Ready, RoutesReady, ConfigurationsReady;
  latestCreated/latestReady/latestRolledout/previousRolledout revisions; traffic; `observedGeneration` = the
  Knative Service's), `PropagateCrossComponentStatus` (RoutesReady, LatestDeploymentReady),
  `PropagateRawStatusWithMessages` (PredictorReady False "ReconcileFailed" when the Knative Service could not
  be created), reconcilers/ingress/ingress_reconciler.go (IngressReady True once the predictor has a URL);
  the Knative Service's own conditions per knative/serving pkg/apis/serving/v1/service_lifecycle.go;
- the traffic KServe asks of Knative: reconcilers/knative/ksvc_reconciler.go (`canaryTrafficPercent` to the
  latest revision, the rest to `latestRolledoutRevision` tagged `prev`), resolved as Knative's route does
  (a `latestRevision: true` target serves the latest *ready* revision).

`modelStatus` follows `PropagateModelStatus` coarsely (Pending with no pod, Loading while none is ready,
Loaded once one is); the storage-initializer and container-state details are not emulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

READY, PREDICTOR_READY, INGRESS_READY = "Ready", "PredictorReady", "IngressReady"
LIVING = (PREDICTOR_READY, INGRESS_READY)
STANDARD, KNATIVE = "Standard", "Knative"


class Conditions:
    """knative.dev/pkg's ConditionManager over a LivingConditionSet: `Ready` follows the dependents."""

    def __init__(self, old: list[dict[str, Any]] | None, now: str, dependents: tuple[str, ...] = LIVING, *,
                 severity: bool = True) -> None:
        # severity=False: conditions assigned as plain apis.Condition values (the graph controller's), not
        # through a ConditionManager, carry no severity.
        self.now, self.dependents, self.severity = now, dependents, severity
        self.items: dict[str, dict[str, Any]] = {c["type"]: dict(c) for c in old or [] if isinstance(c, dict)
                                                 and "type" in c}

    def initialize(self) -> None:
        """`InitializeConditions`: Ready and each dependent Unknown, where not set yet."""
        for type_ in (READY, *self.dependents):
            if type_ not in self.items:
                self._put(type_, "Unknown", "", "")

    def mark(self, type_: str, status: str, reason: str = "", message: str = "") -> None:
        self._put(type_, status, reason, message)
        if type_ in self.dependents:
            self._recompute_ready()

    def clear(self, type_: str) -> None:
        self.items.pop(type_, None)

    def _put(self, type_: str, status: str, reason: str, message: str) -> None:
        condition: dict[str, Any] = {"type": type_, "status": status}
        if self.severity and type_ != READY and type_ not in self.dependents:
            condition["severity"] = "Info"
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        before = self.items.get(type_)
        unchanged = before is not None and {k: v for k, v in before.items() if k != "lastTransitionTime"} == condition
        condition["lastTransitionTime"] = before["lastTransitionTime"] if unchanged and before else self.now
        self.items[type_] = condition

    def _recompute_ready(self) -> None:
        states = [self.items.get(t) for t in self.dependents]
        for state in states:
            if state is not None and state["status"] == "False":
                self._put(READY, "False", state.get("reason", ""), state.get("message", ""))
                return
        for state in states:
            if state is None or state["status"] == "Unknown":
                self._put(READY, "Unknown", (state or {}).get("reason", ""), (state or {}).get("message", ""))
                return
        self._put(READY, "True", "", "")

    def get(self, type_: str) -> dict[str, Any] | None:
        return self.items.get(type_)

    def is_true(self, type_: str) -> bool:
        return (self.items.get(type_) or {}).get("status") == "True"

    def as_list(self) -> list[dict[str, Any]]:
        return [self.items[t] for t in sorted(self.items)]


# --- Standard (RawDeployment) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentView:
    """What a Deployment's status says, as the Deployment controller would write it."""

    name: str
    generation: int  # the Deployment's metadata.generation, observed at once (status.observedGeneration)
    replica_set: str  # the newest ReplicaSet's name
    ready_pods: int  # pods Ready, old and new ReplicaSets together
    new_ready: bool  # the newest ReplicaSet's pods are Ready (the rollout is complete)
    url: str  # its Service

    def conditions(self) -> dict[str, tuple[str, str, str]]:
        """Available and Progressing, with the reasons and messages of k8s pkg/controller/deployment/util."""
        available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") if self.ready_pods \
            else ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        replica_set = f'ReplicaSet "{self.replica_set}"'
        progressing = ("True", "NewReplicaSetAvailable", f"{replica_set} has successfully progressed.") \
            if self.new_ready else ("True", "ReplicaSetUpdated", f"{replica_set} is progressing.")
        return {"Available": available, "Progressing": progressing}


def predictor_ready_from_deployment(deployment: DeploymentView) -> tuple[str, str, str]:
    """inference_service_status.go `PropagateRawStatus` for one Deployment: (status, reason, message)."""
    conditions = deployment.conditions()
    available, progressing = conditions["Available"], conditions["Progressing"]
    result = ("False", "", "")
    if available[0] == "True":
        result = available
    if progressing[0] == "True":
        if progressing[1] == "NewReplicaSetAvailable":
            result = progressing
        elif available[0] != "True":
            result = ("Unknown", progressing[1], progressing[2])
    if available[0] == "False":
        result = available
    return result


def model_status(ready_pods: int, running_pods: int) -> dict[str, Any]:
    """inference_service_status.go `PropagateModelStatus`, coarsely (see the module docstring)."""
    if running_pods == 0:
        state, transition = "Pending", "InProgress"
    elif ready_pods == 0:
        state, transition = "Loading", "InProgress"
    else:
        state, transition = "Loaded", "UpToDate"
    states = {"activeModelState": "Loaded" if state == "Loaded" else "", "targetModelState": state}
    return {"transitionStatus": transition, "states": states, "copies": {"failedCopies": 0, "totalCopies": ready_pods}}


@dataclass(frozen=True)
class CanaryView:
    name: str  # spec.canary[].predictor.name
    traffic_percent: int
    deployment: DeploymentView


def standard_status(old: dict[str, Any], *, stable: DeploymentView, canaries: list[CanaryView], ingress_url: str,
                    running_pods: int, now: str) -> dict[str, Any]:
    """The status KServe writes in Standard mode (see the module docstring for the functions followed)."""
    conditions = Conditions(old.get("conditions"), now)
    conditions.initialize()
    status: dict[str, Any] = {"deploymentMode": STANDARD}
    if canaries:
        statuses = [{"name": c.name, "ready": c.deployment.ready_pods > 0, "trafficPercent": c.traffic_percent}
                    for c in canaries]
        status["canaryStatuses"] = statuses
        all_ready = all(s["ready"] for s in statuses)
        conditions.mark("CanaryPredictorReady", "True" if all_ready else "False",
                        "AllCanariesReady" if all_ready else "CanariesNotReady")
    else:
        conditions.clear("CanaryPredictorReady")
    ready = predictor_ready_from_deployment(stable)
    conditions.mark(PREDICTOR_READY, *ready)
    predictor: dict[str, Any] = dict((old.get("components") or {}).get("predictor") or {})
    if ready[0] == "True":
        predictor["url"] = stable.url
    status["components"] = {"predictor": predictor}
    status["observedGeneration"] = stable.generation
    for key in ("url", "address"):
        if key in old:
            status[key] = old[key]
    if not conditions.is_true(PREDICTOR_READY):
        conditions.mark(INGRESS_READY, "False", "Predictor ingress not created")
    else:
        status["url"] = ingress_url
        status["address"] = {"url": stable.url}
        conditions.mark(INGRESS_READY, "True")
    status["modelStatus"] = model_status(stable.ready_pods, running_pods)
    status["conditions"] = conditions.as_list()
    return status


def canary_backends(stable: DeploymentView, canaries: list[CanaryView]) -> list[tuple[str, str, int]]:
    """httproute_reconciler.go `applyCanaryWeights`: ready canaries get their percent, stable the rest."""
    ready = [c for c in canaries if c.deployment.ready_pods > 0]
    stable_weight = 100 - sum(c.traffic_percent for c in ready)
    return [(stable.name, stable.url, stable_weight),
            *((c.deployment.name, c.deployment.url, c.traffic_percent) for c in ready)]


# --- Knative (Serverless) ---------------------------------------------------------------------------------


def desired_traffic(canary_percent: int | None, latest_rolledout: str) -> list[dict[str, Any]]:
    """ksvc_reconciler.go: the traffic block KServe writes into the Knative Service."""
    if canary_percent is not None and latest_rolledout:
        targets: list[dict[str, Any]] = [{"latestRevision": True, "percent": canary_percent}]
        if canary_percent < 100:
            targets.append({"revisionName": latest_rolledout, "latestRevision": False,
                            "percent": 100 - canary_percent, "tag": "prev"})
        return targets
    return [{"latestRevision": True, "percent": 100}]


def resolve_traffic(desired: list[dict[str, Any]], latest_ready: str | None) -> list[dict[str, Any]] | None:
    """Knative's route: a `latestRevision: true` target names the latest ready revision; None if none is."""
    resolved: list[dict[str, Any]] = []
    for target in desired:
        name = latest_ready if target.get("latestRevision") else target.get("revisionName")
        if not name:
            return None
        entry = {"revisionName": name, "latestRevision": bool(target.get("latestRevision")),
                 "percent": target["percent"]}
        if target.get("tag"):
            entry["tag"] = target["tag"]
        resolved.append(entry)
    return resolved


@dataclass
class KnativeServiceView:
    """What the Knative Service `<name>-predictor` reports (None fields: not created, or nothing yet)."""

    generation: int = 0
    denial: str | None = None  # Knative's webhook refused the create: the error KServe got
    latest_created: str | None = None
    latest_ready: str | None = None
    failed: str | None = None  # the latest created revision failed: Knative's message
    traffic: list[dict[str, Any]] | None = None  # the route's resolved traffic, None until it is ready
    url: str = ""
    conditions: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def compute_conditions(self) -> None:
        """knative/serving service_lifecycle.go: ConfigurationsReady, RoutesReady and Ready."""
        if self.failed:
            configuration = ("False", "RevisionFailed", self.failed)
        elif self.latest_created and self.latest_created == self.latest_ready:
            configuration = ("True", "", "")
        else:
            configuration = ("Unknown", "OutOfDate",
                             "The Configuration is still working to reflect the latest desired specification.")
        if self.traffic is None:
            route = ("Unknown", "OutOfDate", "The Route is still working to reflect the latest desired specification.")
        elif self.latest_created != self.latest_ready:
            route = ("Unknown", "TrafficNotMigrated", "Traffic is not yet migrated to the latest revision.")
        else:
            route = ("True", "", "")
        ready = next((c for c in (configuration, route) if c[0] == "False"), None) \
            or next((c for c in (configuration, route) if c[0] == "Unknown"), ("True", "", ""))
        self.conditions = {"ConfigurationsReady": configuration, "RoutesReady": route, "Ready": ready}


def serverless_status(old: dict[str, Any], ksvc: KnativeServiceView, *, running_pods: int, ready_pods: int,
                      now: str) -> dict[str, Any]:
    """The status KServe writes in Knative mode (see the module docstring for the functions followed)."""
    conditions = Conditions(old.get("conditions"), now)
    conditions.initialize()
    status: dict[str, Any] = {"deploymentMode": KNATIVE}
    for key in ("url", "address", "observedGeneration"):
        if key in old:
            status[key] = old[key]
    predictor: dict[str, Any] = dict((old.get("components") or {}).get("predictor") or {})
    if ksvc.denial is not None:
        conditions.mark(PREDICTOR_READY, "False", "ReconcileFailed", ksvc.denial)
        status["components"] = {"predictor": predictor}
        status["conditions"] = conditions.as_list()
        return status
    ksvc.compute_conditions()
    if ksvc.latest_created:
        predictor["latestCreatedRevision"] = ksvc.latest_created
    for target in ksvc.traffic or []:
        if target["revisionName"] == ksvc.latest_ready and target.get("latestRevision"):
            if predictor.get("latestRolledoutRevision") != ksvc.latest_ready:
                if target["percent"] == 100:
                    predictor["previousRolledoutRevision"] = predictor.get("latestRolledoutRevision", "")
                    predictor["latestRolledoutRevision"] = ksvc.latest_ready
            elif ksvc.latest_ready == ksvc.latest_created and target["percent"] < 100:
                total = sum(t["percent"] for t in ksvc.traffic or [] if t["revisionName"] == target["revisionName"])
                if total == 100 and predictor.get("previousRolledoutRevision"):
                    predictor["latestRolledoutRevision"] = predictor["previousRolledoutRevision"]
    if ksvc.latest_ready:
        predictor["latestReadyRevision"] = ksvc.latest_ready
    ready = ksvc.conditions["Ready"]
    if ready[0] == "True":
        predictor["url"] = ksvc.url
        predictor["address"] = {"url": ksvc.url}
    if ksvc.traffic is not None:
        predictor["traffic"] = ksvc.traffic
    predictor = {k: v for k, v in predictor.items() if v not in ("", None)}
    conditions.mark(PREDICTOR_READY, *ready)
    conditions.mark("PredictorRouteReady", *ksvc.conditions["RoutesReady"])
    conditions.mark("PredictorConfigurationReady", *ksvc.conditions["ConfigurationsReady"])
    status["components"] = {"predictor": predictor}
    status["observedGeneration"] = ksvc.generation
    for cross, component in (("RoutesReady", "PredictorRouteReady"),
                             ("LatestDeploymentReady", "PredictorConfigurationReady")):
        state = (conditions.get(component) or {}).get("status", "Unknown")
        conditions.mark(cross, state, "" if state == "True" else f"{component} not ready")
    if predictor.get("url"):
        # ingress_reconciler.go: the top-level host exists once the predictor has one.
        status["url"] = ksvc.url
        status["address"] = {"url": ksvc.url}
        conditions.mark(INGRESS_READY, "True")
    status["modelStatus"] = model_status(ready_pods, running_pods)
    status["conditions"] = conditions.as_list()
    return status
