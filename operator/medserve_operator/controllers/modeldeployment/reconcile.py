"""The ModelDeployment reconciler: MLflow registry → KServe InferenceService → status, as named steps.

`reconcile` runs, under the kit's locked prologue and epilogue (`kit.reconciler.reconcile_object`):

1. `resolve`: the version pinned in status, re-resolved in MLflow when due (versions are immutable:
   once; aliases move: every `monitoring.interval`);
2. `decide_rollout` (pure): whether a changed version rolls out as a canary beside the serving one, the
   canary is promoted, or KServe reports the new version serving all traffic (per deployment mode);
3. `apply`: the audit spool's PersistentVolumeClaim when one is asked for (else, or when it cannot be
   created, the spool is an emptyDir and the AuditDurable condition says so), then render the
   InferenceService and create or replace it (`kit.apply.apply_child`);
4. `evaluate`: every `monitoring.interval` on the periodic path, drift and accuracy from the monitor
   (monitoring.py: Prometheus and the reference profile), which status.py turns into `status.drift` and
   the `DriftDetected` and `Degraded` conditions.

Every path into the reconciler — a spec change, the operator's restart, the periodic resync, an event on the
child InferenceService — runs the same idempotent function, so a look that finds nothing new writes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Mapping
from typing import Any

from medserve_operator.api import modeldeployment as md
from medserve_operator.api.common import parse_duration
from medserve_operator.api.modeldeployment import ModelDeploymentSpec, RolloutSpec
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry, RegistryError, ResolvedModel
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.modeldeployment import monitoring, render
from medserve_operator.controllers.modeldeployment.monitoring import Evaluation, Monitor
from medserve_operator.controllers.modeldeployment.status import (
    Outcome,
    canary_serving,
    compute_status,
    pinned_model,
    running_version,
    serves_all_traffic,
)
from medserve_operator.kit import Logger, conditions
from medserve_operator.kit.apply import apply_child, get_child
from medserve_operator.kit.conditions import Event
from medserve_operator.kit.reconciler import Context, Kind, reconcile_object
from medserve_operator.kit.status import ObjectMemory, Resource

KIND = Kind(Resource(md.PLURAL, md.CONDITIONS), ModelDeploymentSpec)


@dataclasses.dataclass
class Runtime:
    """What the handlers share: configuration, the API and registry clients, per-object bookkeeping."""

    config: OperatorConfig
    kube: KubeClient
    registry: MlflowRegistry
    monitor: Monitor | None = None
    """Drift and accuracy from Prometheus; None when no Prometheus is configured."""
    memory: ObjectMemory = dataclasses.field(default_factory=ObjectMemory)
    last_resolution: dict[str, float] = dataclasses.field(default_factory=dict)
    last_evaluation: dict[str, float] = dataclasses.field(default_factory=dict)

    def forget(self, uid: str) -> None:
        self.memory.forget(uid)
        self.last_resolution.pop(uid, None)
        self.last_evaluation.pop(uid, None)


async def reconcile(rt: Runtime, body: Mapping[str, Any], logger: Logger, *, periodic: bool) -> Outcome:
    """Bring the InferenceService and the status in line with the ModelDeployment `body`."""

    async def steps(ctx: Context, spec: ModelDeploymentSpec, outcome: Outcome) -> None:
        outcome.drift_enabled = spec.monitoring.drift.enabled
        outcome.min_accuracy = spec.monitoring.alerts.min_accuracy
        await resolve(rt, ctx, spec, outcome, periodic=periodic)
        # Until an InferenceService is recorded in status, try to create it without looking first (one request
        # less per new ModelDeployment); a 409 falls back to reading and updating it.
        current = await get_child(rt.kube, render.INFERENCE_SERVICE, ctx.namespace, ctx.name) \
            if "inferenceService" in ctx.status else None
        outcome.inference_service = current
        if outcome.resolved is None:
            return
        outcome.mode, refused = deployment_mode(rt, spec, current)
        if refused is not None:
            outcome.isvc_error, outcome.isvc_error_reason = refused, md.ISVC_UNSUPPORTED
            outcome.previous_model = ctx.status.get("previousModel")
            outcome.rollout = ctx.status.get("rollout")
            return
        rollout = decide_rollout(current, ctx.status, outcome.resolved, spec.rollout, outcome.mode)
        outcome.previous_model, outcome.rollout = rollout.previous, rollout.stage
        outcome.events.extend(rollout.events)
        await apply(rt, ctx, spec, outcome, current, canary=rollout.canary)
        if outcome.retry is None and periodic and \
                _due(rt.last_evaluation, ctx.uid, spec, asked=_monitoring_asked(spec)):
            rt.last_evaluation[ctx.uid] = time.monotonic()
            outcome.evaluation = await evaluate(rt, ctx, spec, outcome.resolved)

    return await reconcile_object(
        rt, KIND, body, logger, Outcome(), steps=steps,
        status=lambda ctx, outcome: compute_status(ctx.status, outcome, name=ctx.name, generation=ctx.generation))


async def resolve(rt: Runtime, ctx: Context, spec: ModelDeploymentSpec, outcome: Outcome, *,
                  periodic: bool) -> None:
    """The version to serve: the one pinned in status, or a fresh resolution when one is due."""
    pinned = pinned_model(spec, ctx.status.get("model"))
    outcome.resolved = pinned
    if not needs_resolution(rt, ctx.uid, spec, pinned, periodic=periodic):
        return
    rt.last_resolution[ctx.uid] = time.monotonic()
    try:
        outcome.resolved = await rt.registry.resolve(spec.model.name, version=spec.model.version,
                                                     alias=spec.model.alias)
    except RegistryError as exc:
        outcome.resolution_error = exc
        ctx.logger.warning("Cannot resolve model %s: %s", spec.model.name, exc)


def needs_resolution(rt: Runtime, uid: str, spec: ModelDeploymentSpec, pinned: ResolvedModel | None, *,
                     periodic: bool) -> bool:
    """Versions are immutable: resolve once. Aliases move: look again every `monitoring.interval`."""
    if pinned is not None and spec.model.version:
        return False
    return not periodic or _due(rt.last_resolution, uid, spec)


def _monitoring_asked(spec: ModelDeploymentSpec) -> bool:
    return spec.monitoring.drift.enabled or spec.monitoring.alerts.min_accuracy is not None


def _due(last_looks: dict[str, float], uid: str, spec: ModelDeploymentSpec, *, asked: bool = True) -> bool:
    """Whether `monitoring.interval` has passed since the last look (if the spec asks for looks at all)."""
    if not asked:
        return False
    last = last_looks.get(uid)
    return last is None or time.monotonic() - last >= parse_duration(spec.monitoring.interval)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What `decide_rollout` decided: the version a canary replaces (None: no rollout in progress), the
    rollout's stage for `status.rollout`, whether the canary is rendered, and the Events."""

    previous: dict[str, Any] | None
    stage: dict[str, Any] | None = None
    canary: bool = False
    events: tuple[Event, ...] = ()


def decide_rollout(current: Mapping[str, Any] | None, status: Mapping[str, Any], new: ResolvedModel,
                   rollout: RolloutSpec, mode: md.DeploymentMode, *, now: datetime.datetime | None = None) -> Rollout:
    """Where a rollout stands (pure), from the InferenceService as stored and as KServe reports it.

    A changed version starts a canary beside the version serving now (stage Canary). Once KServe reports the
    canary serving its share (`status.canary_serving`) for `rollout.canaryDuration`, it is promoted (stage
    Promoting: Serverless drops canaryTrafficPercent, Standard retargets the predictor to the canary). The
    rollout is complete only when KServe reports the new version serving all traffic
    (`status.serves_all_traffic`); until then previousModel stays in status.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    percent = rollout.canary_traffic_percent
    running = running_version(current)
    previous = status.get("previousModel")
    stage = dict(status.get("rollout") or {}) if previous else {}
    events: list[Event] = []
    if current is not None and running and running != new.version:
        # A new version: roll it out as a canary beside the one serving now. status.model names it, unless an
        # earlier write of the InferenceService failed after status had already moved on to the new version.
        model = status.get("model") or {}
        previous = model if model.get("version") == running else {"name": new.name, "version": running}
        if percent == 0:
            return Rollout(None)
        events.append(("Normal", md.ROLLOUT_STARTED, f"rolling out version {new.version} (from "
                                                     f"{previous.get('version')}) with {percent}% canary traffic"))
        return Rollout(previous, {"stage": "Canary"}, canary=True, events=tuple(events))
    if current is None or not previous or previous.get("version") == new.version:
        return Rollout(None)  # nothing rolls out (or rolled back to the version that was serving)
    if stage.get("stage", "Canary") == "Canary":
        stage["stage"] = "Canary"
        if not canary_serving(current, mode, version=new.version, percent=percent):
            return Rollout(previous, stage, canary=True)
        since = stage.setdefault("canaryServingSince", _rfc3339(now))
        if (now - _parse_rfc3339(since)).total_seconds() < parse_duration(rollout.canary_duration):
            return Rollout(previous, stage, canary=True)
        events.append(("Normal", md.ROLLOUT_PROMOTED,
                       f"version {new.version} served {percent}% of the traffic since {since}; giving it all"))
        return Rollout(previous, {**stage, "stage": "Promoting"}, events=tuple(events))
    if serves_all_traffic(current, mode, version=new.version):
        events.append(("Normal", md.ROLLOUT_COMPLETE,
                       f"version {new.version} serves all traffic (replaced {previous.get('version')})"))
        return Rollout(None, events=tuple(events))
    return Rollout(previous, stage)


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(text: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)  # unreadable: counts as long ago


def deployment_mode(rt: Runtime, spec: ModelDeploymentSpec, current: Mapping[str, Any] | None,
                    ) -> tuple[md.DeploymentMode, str | None]:
    """The mode to render in, and why the spec cannot have its way (KServe refuses a change of mode).

    An existing InferenceService keeps its mode when the spec names none (a changed operator default
    applies to new ones only).
    """
    existing = render.mode_of(dict(current)) if current else None
    wanted = spec.runtime.deployment_mode
    if existing is not None and wanted is not None and wanted != existing:
        return existing, (f"spec.runtime.deploymentMode: KServe cannot move an InferenceService from {existing} "
                          f"to {wanted} (validateDeploymentMode); set it back, or delete the InferenceService for "
                          "the operator to create it anew")
    return wanted or existing or rt.config.deployment_mode, None


async def apply(rt: Runtime, ctx: Context, spec: ModelDeploymentSpec, outcome: Outcome,
                current: dict[str, Any] | None, *, canary: bool) -> None:
    """Create or replace the InferenceService; a refusal is recorded in status, then retried by kopf."""
    assert outcome.resolved is not None and outcome.mode is not None
    new = outcome.resolved
    previous = outcome.previous_model
    outcome.audit = await apply_spool_claim(rt, ctx, render.audit_plan(spec.security, rt.config.audit), outcome)
    try:
        desired = render.render_inference_service(
            name=ctx.name, namespace=ctx.namespace, uid=ctx.uid, spec=spec, model_name=new.name,
            model_version=new.version, image=spec.runtime.image or rt.config.runtime_image,
            mlflow_uri=rt.config.runtime_mlflow_uri, mode=outcome.mode,
            peer_url_template=rt.config.runtime_peer_url_template.replace("{namespace}", ctx.namespace),
            canary_from=render.ModelVersion(str(previous.get("name") or new.name), str(previous["version"]))
            if canary and previous else None, audit=outcome.audit,
        )
    except render.RenderError as exc:
        outcome.isvc_error, outcome.isvc_error_reason = str(exc), md.ISVC_UNSUPPORTED
        return
    try:
        applied = await apply_child(rt.kube, render.INFERENCE_SERVICE, desired, current,
                                    differs=render.inference_service_differs)
    except ApiError as exc:
        outcome.isvc_error = f"InferenceService {ctx.name} could not be applied: {exc}"
        outcome.retry = exc
        return
    outcome.inference_service = applied.object
    if applied.created:
        outcome.event(md.ISVC_CREATED, f"InferenceService {ctx.name} created for {new.uri}")


async def apply_spool_claim(rt: Runtime, ctx: Context, plan: render.AuditPlan, outcome: Outcome) -> render.AuditPlan:
    """Create the audit spool's claim when `plan` asks for one; the plan the InferenceService is rendered with
    (its spool an emptyDir, and `outcome.spool_error` saying why, when the claim cannot be written)."""
    if plan.spool is None:
        return plan
    desired = render.render_spool_claim(name=ctx.name, namespace=ctx.namespace, uid=ctx.uid, claim=plan.spool)
    try:
        current = await get_child(rt.kube, render.PERSISTENT_VOLUME_CLAIM, ctx.namespace, desired["metadata"]["name"])
        if current is not None:  # a claim's spec is immutable: only its labels and owner are put back
            desired["spec"] = current.get("spec") or {}
        await apply_child(rt.kube, render.PERSISTENT_VOLUME_CLAIM, desired, current)
    except ApiError as exc:
        outcome.spool_error = f"PersistentVolumeClaim {desired['metadata']['name']} could not be applied: {exc}"
        ctx.logger.warning("%s; the audit spool falls back to an emptyDir", outcome.spool_error)
        return dataclasses.replace(plan, spool=None)
    return plan


async def evaluate(rt: Runtime, ctx: Context, spec: ModelDeploymentSpec, model: ResolvedModel) -> Evaluation:
    """Drift and accuracy of the served version; never raises (a failure becomes the conditions' reason)."""
    now = conditions.now_rfc3339()
    if rt.monitor is None:
        return monitoring.not_configured(spec.monitoring, evaluated_at=now)
    try:
        return await rt.monitor.evaluate(namespace=ctx.namespace, deployment=ctx.name, model=model,
                                         spec=spec.monitoring, evaluated_at=now)
    except Exception as exc:
        # Monitoring is a side line of serving: a bug in it must not stop the reconciler from keeping the
        # InferenceService in shape. Say so on the conditions and in the log, and try again next interval.
        ctx.logger.exception("monitoring of %s/%s failed", ctx.namespace, ctx.name)
        problem = monitoring.Problem(md.MONITORING_FAILED, f"monitoring failed: {type(exc).__name__}: {exc}")
        return Evaluation(window=spec.monitoring.drift.window, evaluated_at=now,
                          drift_problem=problem if spec.monitoring.drift.enabled else None,
                          accuracy_problem=problem if spec.monitoring.alerts.min_accuracy is not None else None)
