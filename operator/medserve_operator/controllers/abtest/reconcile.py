"""The ABTest reconciler: two ModelDeployments → a KServe InferenceGraph → an always-valid decision → promotion.

`reconcile` runs, under the kit's locked prologue and epilogue (`kit.reconciler.reconcile_object`), the
named steps: read both arms (`observe_arms`, `check_arms` pure), apply the InferenceGraph (a Splitter
sending `trafficSplit.treatmentPercent` of the requests to the treatment), start the test once both arms
serve different versions and the graph is Ready, evaluate it every `statistics.interval` (evaluate.py:
Prometheus → the sequential test's typed `Evaluation`), and promote a winner (promote.py). A spec change,
the operator's restart, the periodic resync and a status change of the graph run the same idempotent
function.

From the start on (`status.startedAt`, `status.modelVersions`) only data of those versions since
`startedAt` counts. It concludes when the sequential test decides, at `maxSamplesPerArm`, or at
`maxDuration` (a final look). Then the graph sends everything to the control. A concluded test is never
evaluated again; delete and re-create it to run another.

Nothing here holds up the operator: a missing or identical arm, an unreachable Prometheus or MLflow, a
query that does not give one number — each becomes a condition naming what is wrong, and the next
resync tries again.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Mapping
from typing import Any

from medserve_operator.api import abtest as ab
from medserve_operator.api import modeldeployment as md
from medserve_operator.api.abtest import ABTestSpec
from medserve_operator.api.common import MODEL_DEPLOYMENT_NOT_FOUND, READY, parse_duration
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry
from medserve_operator.clients.prometheus import PrometheusClient
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.abtest import render
from medserve_operator.controllers.abtest import status as status_mod
from medserve_operator.controllers.abtest.evaluate import evaluate
from medserve_operator.controllers.abtest.promote import Arm, promote
from medserve_operator.controllers.abtest.router import router_rolled_out, router_workloads
from medserve_operator.controllers.abtest.status import (
    Outcome,
    compute_status,
    concluded_decision,
    promotion_pending,
)
from medserve_operator.kit import Logger, conditions
from medserve_operator.kit.apply import ChildKind, apply_child, get_child
from medserve_operator.kit.conditions import Check
from medserve_operator.kit.reconciler import Context, Kind, reconcile_object
from medserve_operator.kit.status import ObjectMemory, Resource

KIND = Kind(Resource(ab.PLURAL, ab.CONDITIONS), ABTestSpec)
MODEL_DEPLOYMENTS = ChildKind(KIND.resource.api_version, md.PLURAL)


@dataclasses.dataclass
class Runtime:
    """What the handlers share: configuration, API/registry/Prometheus clients, per-object bookkeeping."""

    config: OperatorConfig
    kube: KubeClient
    registry: MlflowRegistry
    prometheus: PrometheusClient | None
    """None when no Prometheus is configured: the test cannot be evaluated (a condition says so)."""
    memory: ObjectMemory = dataclasses.field(default_factory=ObjectMemory)
    last_evaluation: dict[str, float] = dataclasses.field(default_factory=dict)

    def forget(self, uid: str) -> None:
        self.memory.forget(uid)
        self.last_evaluation.pop(uid, None)


async def reconcile(rt: Runtime, body: Mapping[str, Any], logger: Logger) -> Outcome:
    """Bring the InferenceGraph, the evaluation and the status in line with the ABTest `body`."""

    async def steps(ctx: Context, spec: ABTestSpec, outcome: Outcome) -> None:
        outcome.spec = spec
        status = ctx.status
        concluded = bool(status.get("concludedAt"))
        control, treatment = await observe_arms(rt, ctx, spec)
        if not concluded:
            outcome.arms = check_arms(control, treatment, status.get("modelVersions"))
        arms_ready = outcome.arms is not None and outcome.arms[0] == "True"
        if control.service and (concluded or arms_ready):
            await apply_graph(rt, ctx, spec, control.service, None if concluded else treatment.service, outcome)
        else:
            outcome.graph = await get_child(rt.kube, render.INFERENCE_GRAPH, ctx.namespace, ctx.name)
        graph_ready = conditions.is_true(((outcome.graph or {}).get("status") or {}).get("conditions"), READY)
        outcome.headers = status_mod.headers_check(rt.config.router_headers_propagate, keyed_arms(control, treatment))

        if not concluded and arms_ready and graph_ready:
            started_at = status.get("startedAt") or start(spec, control, treatment, outcome)
            versions = (outcome.started or status).get("modelVersions") or {}
            if _evaluation_due(rt, ctx.uid, spec):
                rt.last_evaluation[ctx.uid] = time.monotonic()
                await evaluate(rt.prometheus, ctx, spec, started_at, versions, outcome)
                if outcome.concluded is not None:
                    concluded = True
                    await apply_graph(rt, ctx, spec, str(control.service), None, outcome)
        released = conditions.is_true(status.get("conditions"), ab.TREATMENT_RELEASED)
        if concluded and outcome.graph is not None and not released:
            outcome.drain_seconds = rt.config.graph_drain_seconds
            outcome.router = await observe_router(rt, ctx, outcome.graph, treatment.service or treatment.deployment)
        if concluded and promotion_pending(status, outcome):
            decision = outcome.evaluation.decision if outcome.concluded is not None and outcome.evaluation \
                else concluded_decision(status)
            versions = (outcome.started or status).get("modelVersions") or {}
            window = f"data from {(outcome.started or status).get('startedAt')} to " \
                     f"{status.get('concludedAt') or conditions.rfc3339(outcome.now)}"
            promotion = await promote(rt.kube, rt.registry, ctx, spec, control, treatment, decision, versions,
                                      window)
            outcome.promoted, outcome.recommendation = promotion.condition, promotion.recommendation
            if outcome.promoted[0] == "True":
                outcome.event(ab.PROMOTED_EVENT, outcome.promoted[2])
            elif outcome.promoted[1] == ab.PROMOTION_RECOMMENDED:
                outcome.event(ab.PROMOTION_RECOMMENDED, outcome.promoted[2])
            elif outcome.promoted[1] != ab.PROMOTION_FAILED:
                outcome.event(ab.NOT_PROMOTED_EVENT, outcome.promoted[2])

    return await reconcile_object(
        rt, KIND, body, logger, Outcome(now=datetime.datetime.now(datetime.UTC).replace(microsecond=0)),
        steps=steps,
        status=lambda ctx, outcome: compute_status(ctx.status, outcome, name=ctx.name, generation=ctx.generation))


async def observe_arms(rt: Runtime, ctx: Context, spec: ABTestSpec) -> tuple[Arm, Arm]:
    """Both arms as their ModelDeployments report them (a missing one has no body)."""
    arms = []
    for role, deployment in (("control", spec.control.model_deployment),
                             ("treatment", spec.treatment.model_deployment)):
        arms.append(Arm(role, deployment, await get_child(rt.kube, MODEL_DEPLOYMENTS, ctx.namespace, deployment)))
    return arms[0], arms[1]


def check_arms(control: Arm, treatment: Arm, versions: Mapping[str, Any] | None) -> Check:
    """The ArmsReady condition (pure): both ModelDeployments exist, serve, and serve different versions —
    the versions recorded when the test started, once it has."""
    for arm in (control, treatment):
        if arm.body is None:
            return ("False", MODEL_DEPLOYMENT_NOT_FOUND,
                    f"the {arm.role} ModelDeployment {arm.deployment} does not exist")
        if not arm.service or not arm.model.get("version"):
            return ("False", ab.ARM_NOT_READY, f"the {arm.role} ModelDeployment {arm.deployment} has no "
                                               "InferenceService with a resolved model yet")
    if (control.model.get("name"), control.model.get("version")) == \
            (treatment.model.get("name"), treatment.model.get("version")):
        return ("False", ab.IDENTICAL_ARMS, f"both arms serve version {control.model.get('version')} of model "
                                            f"{control.model.get('name')}: there is nothing to compare")
    if versions:
        for arm in (control, treatment):
            if str(arm.model.get("version")) != str(versions.get(arm.role)):
                return ("False", ab.VERSION_CHANGED,
                        f"the {arm.role} ModelDeployment {arm.deployment} now serves version "
                        f"{arm.model.get('version')}, not version {versions.get(arm.role)} under test: the test is "
                        "paused (restore the version, or delete and re-create the ABTest)")
    return ("True", ab.ARMS_READY, f"{control.deployment} serves version {control.model.get('version')}, "
                                   f"{treatment.deployment} version {treatment.model.get('version')}")


def keyed_arms(*arms: Arm) -> list[str]:
    """The arms whose ModelDeployment requires an API key (spec.security.apiKeySecretRef)."""
    return [arm.deployment for arm in arms
            if (((arm.body or {}).get("spec") or {}).get("security") or {}).get("apiKeySecretRef")]


async def observe_router(rt: Runtime, ctx: Context, graph: Mapping[str, Any], treatment: str) -> tuple[bool, str]:
    """Whether every pod of the graph's router (its Deployment or Knative Service) routes away from
    `treatment` (router.py says how KServe runs the router)."""
    workload = None
    for kind in router_workloads(graph):
        try:
            workload = await get_child(rt.kube, kind, ctx.namespace, ctx.name)
        except ApiError as exc:
            return False, f"the router's {kind.plural} cannot be read: {exc}"
        if workload is not None:
            break
    return router_rolled_out(workload, released=[treatment])


def start(spec: ABTestSpec, control: Arm, treatment: Arm, outcome: Outcome) -> str:
    """Start the test now: record the versions compared and when; returns startedAt."""
    started_at = conditions.rfc3339(outcome.now)
    versions = {"control": str(control.model.get("version")), "treatment": str(treatment.model.get("version"))}
    outcome.started = {"startedAt": started_at, "modelVersions": versions}
    outcome.event(ab.STARTED, f"splitting traffic {100 - spec.traffic_split.treatment_percent}/"
                              f"{spec.traffic_split.treatment_percent}: {control.deployment} (version "
                              f"{versions['control']}) vs {treatment.deployment} (version "
                              f"{versions['treatment']}) on {spec.metric.name}")
    return started_at


async def apply_graph(rt: Runtime, ctx: Context, spec: ABTestSpec, control_service: str,
                      treatment_service: str | None, outcome: Outcome) -> None:
    desired = render.render_inference_graph(name=ctx.name, namespace=ctx.namespace, uid=ctx.uid,
                                            control_service=control_service, treatment_service=treatment_service,
                                            treatment_percent=spec.traffic_split.treatment_percent)
    try:
        current = await get_child(rt.kube, render.INFERENCE_GRAPH, ctx.namespace, ctx.name)
        applied = await apply_child(rt.kube, render.INFERENCE_GRAPH, desired, current)
    except ApiError as exc:
        outcome.graph_error = f"InferenceGraph {ctx.name} could not be applied: {exc}"
        return
    outcome.graph = applied.object
    if applied.created:
        outcome.event(ab.GRAPH_CREATED, f"InferenceGraph {ctx.name} created")


def _evaluation_due(rt: Runtime, uid: str, spec: ABTestSpec) -> bool:
    last = rt.last_evaluation.get(uid)
    return last is None or time.monotonic() - last >= parse_duration(spec.statistics.interval)
