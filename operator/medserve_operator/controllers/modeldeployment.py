"""The ModelDeployment reconciler: MLflow registry → KServe InferenceService → status.

The kopf handlers are thin: they hand the object to `reconcile`, which parses the spec, resolves the
model, calls the pure renderer, applies the InferenceService, and writes the status. Every path into
the reconciler — a spec change, the operator's restart, the periodic resync, an event on the child
InferenceService — runs the same idempotent function, so a look that finds nothing new writes nothing.

Every `monitoring.interval` the periodic path also asks the monitor (monitoring.py: Prometheus and the
reference profile) for the served version's drift and accuracy; they become `status.drift` and the
`DriftDetected` and `Degraded` conditions. Drift is reported, never held against Ready (the model still
answers); accuracy below `monitoring.alerts.minAccuracy` is, through Degraded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, cast

import kopf

from medserve_operator import GROUP, VERSION
from medserve_operator.api import ModelDeploymentSpec, SpecError, parse_duration, parse_spec
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry, ModelNotFound, RegistryError, ResolvedModel
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers import monitoring, render
from medserve_operator.controllers.monitoring import Evaluation, Monitor
from medserve_operator.kit import conditions
from medserve_operator.kit.memory import ObjectMemory

MD_API = f"{GROUP}/{VERSION}"
MD_PLURAL = "modeldeployments"
ISVC_API = "serving.kserve.io/v1beta1"
ISVC_PLURAL = "inferenceservices"
CONDITION_TYPES = ("ModelResolved", "InferenceServiceReady")


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


@dataclasses.dataclass
class Outcome:
    """What one reconciliation found, before it becomes status."""

    resolved: ResolvedModel | None = None
    resolution_error: RegistryError | None = None
    spec_error: SpecError | None = None
    inference_service: dict[str, Any] | None = None
    previous_model: dict[str, Any] | None = None
    drift_enabled: bool | None = None
    """Whether the spec asks for drift evaluation (None: the spec was not read). False drops DriftDetected."""
    min_accuracy: float | None = None
    """monitoring.alerts.minAccuracy; None drops the Degraded condition (once the spec was read)."""
    evaluation: Evaluation | None = None
    """Drift and accuracy, when this reconciliation evaluated them (every monitoring.interval)."""
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


async def reconcile(rt: Runtime, body: kopf.Body | dict[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any],
                    *, periodic: bool) -> Outcome:
    """Bring the InferenceService and the status in line with the ModelDeployment `body`."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    outcome = Outcome()
    async with rt.memory.lock(uid):
        # A body handed over by a timer may predate our last status write; decisions (is a canary running?
        # which version is pinned?) are made on the status as last written.
        status = rt.memory.status(uid, body)
        try:
            spec = parse_spec(ModelDeploymentSpec, dict(body.get("spec") or {}))
        except SpecError as exc:
            outcome.spec_error = exc
            await _write_status(rt, body, status, outcome)
            return outcome

        outcome.drift_enabled = spec.monitoring.drift.enabled
        outcome.min_accuracy = spec.monitoring.alerts.min_accuracy
        pinned = _pinned(spec, status.get("model"))
        outcome.resolved = pinned
        if _needs_resolution(rt, uid, spec, pinned, periodic=periodic):
            rt.last_resolution[uid] = time.monotonic()
            try:
                outcome.resolved = await rt.registry.resolve(spec.model.name, version=spec.model.version,
                                                             alias=spec.model.alias)
            except RegistryError as exc:
                outcome.resolution_error = exc
                logger.warning("Cannot resolve model %s: %s", spec.model.name, exc)

        # Until an InferenceService is recorded in status, try to create it without looking first (one request
        # less per new ModelDeployment); a 409 falls back to reading and updating it.
        current = await rt.kube.get(ISVC_API, ISVC_PLURAL, namespace, name) if "inferenceService" in status \
            else None
        outcome.inference_service = current
        if outcome.resolved is not None:
            outcome.inference_service = await _apply_inference_service(rt, body, spec, outcome, current, status)
        if periodic and outcome.resolved is not None and _evaluation_due(rt, uid, spec):
            rt.last_evaluation[uid] = time.monotonic()
            outcome.evaluation = await _evaluate(rt, namespace, name, spec, outcome.resolved, logger)
        await _write_status(rt, body, status, outcome)
    for type_, reason, message in outcome.events:
        kopf.event(kopf.Body(cast(kopf.RawBody, body)),
                   type=type_, reason=reason, message=message)
    return outcome


def _pinned(spec: ModelDeploymentSpec, model: dict[str, Any] | None) -> ResolvedModel | None:
    """The version pinned in status, if it still answers the spec's version or alias."""
    if not model or model.get("name") != spec.model.name:
        return None
    if (spec.model.version and model.get("version") != spec.model.version) or \
            (spec.model.alias and model.get("alias") != spec.model.alias):
        return None
    return ResolvedModel(name=model["name"], version=model["version"], source=model.get("source", ""),
                         run_id=model.get("runId", ""), alias=model.get("alias"))


def _needs_resolution(rt: Runtime, uid: str, spec: ModelDeploymentSpec, pinned: ResolvedModel | None,
                      *, periodic: bool) -> bool:
    """Versions are immutable: resolve once. Aliases move: look again every `monitoring.interval`."""
    if pinned is None:
        return not periodic or _interval_elapsed(rt, uid, spec)
    if spec.model.version:
        return False
    return not periodic or _interval_elapsed(rt, uid, spec)


def _interval_elapsed(rt: Runtime, uid: str, spec: ModelDeploymentSpec) -> bool:
    last = rt.last_resolution.get(uid)
    return last is None or time.monotonic() - last >= parse_duration(spec.monitoring.interval)


def _evaluation_due(rt: Runtime, uid: str, spec: ModelDeploymentSpec) -> bool:
    """Drift and accuracy are looked at every `monitoring.interval`, if the spec asks for either."""
    if not spec.monitoring.drift.enabled and spec.monitoring.alerts.min_accuracy is None:
        return False
    last = rt.last_evaluation.get(uid)
    return last is None or time.monotonic() - last >= parse_duration(spec.monitoring.interval)


async def _evaluate(rt: Runtime, namespace: str, name: str, spec: ModelDeploymentSpec, model: ResolvedModel,
                    logger: logging.Logger | logging.LoggerAdapter[Any]) -> Evaluation:
    now = conditions.now_rfc3339()
    if rt.monitor is None:
        return monitoring.not_configured(spec.monitoring, evaluated_at=now)
    try:
        return await rt.monitor.evaluate(namespace=namespace, deployment=name, model=model, spec=spec.monitoring,
                                         evaluated_at=now)
    except Exception as exc:
        # Monitoring is a side line of serving: a bug in it must not stop the reconciler from keeping the
        # InferenceService in shape. Say so on the conditions and in the log, and try again next interval.
        logger.exception("monitoring of %s/%s failed", namespace, name)
        problem = monitoring.Problem("MonitoringFailed", f"monitoring failed: {type(exc).__name__}: {exc}")
        return Evaluation(window=spec.monitoring.drift.window, evaluated_at=now,
                          drift_problem=problem if spec.monitoring.drift.enabled else None,
                          accuracy_problem=problem if spec.monitoring.alerts.min_accuracy is not None else None)


async def _apply_inference_service(rt: Runtime, body: kopf.Body | dict[str, Any], spec: ModelDeploymentSpec,
                                   outcome: Outcome, current: dict[str, Any] | None,
                                   status: dict[str, Any]) -> dict[str, Any]:
    assert outcome.resolved is not None
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    new = outcome.resolved
    running_version = ((current or {}).get("metadata", {}).get("labels") or {}).get("medserve.io/model-version")
    previous = status.get("previousModel")
    if current is not None and running_version and running_version != new.version:
        # A new version: roll it out as a canary beside the one serving now.
        previous = status.get("model") or {"name": new.name, "version": running_version}
        if spec.rollout.canary_traffic_percent > 0:
            outcome.events.append(("Normal", "RolloutStarted",
                                   f"rolling out version {new.version} (from {previous.get('version')}) with "
                                   f"{spec.rollout.canary_traffic_percent}% canary traffic"))
        else:
            previous = None
    elif previous and _isvc_ready(current) and previous.get("version") != new.version:
        outcome.events.append(("Normal", "RolloutComplete",
                               f"version {new.version} serves all traffic (replaced {previous.get('version')})"))
        previous = None
    if previous is not None and previous.get("version") == new.version:
        previous = None  # rolled back to the version that was serving: no canary to keep
    outcome.previous_model = previous
    desired = render.render_inference_service(
        name=name, namespace=namespace, uid=meta["uid"], spec=spec, model_name=new.name,
        model_version=new.version, image=spec.runtime.image or rt.config.runtime_image,
        mlflow_uri=rt.config.runtime_mlflow_uri, canary=previous is not None,
    )
    if current is None:
        try:
            created = await rt.kube.create(ISVC_API, ISVC_PLURAL, namespace, desired)
            outcome.events.append(("Normal", "InferenceServiceCreated",
                                   f"InferenceService {name} created for {new.uri}"))
            return created
        except ApiError as exc:
            if exc.status != 409:
                raise
            current = await rt.kube.get(ISVC_API, ISVC_PLURAL, namespace, name)
            if current is None:
                raise
    if not render.inference_service_differs(desired, current):
        return current
    return await rt.kube.replace(ISVC_API, ISVC_PLURAL, namespace, render.updated(current, desired))


def _isvc_ready(isvc: dict[str, Any] | None) -> bool:
    if not isvc:
        return False
    status = isvc.get("status") or {}
    generation = isvc.get("metadata", {}).get("generation")
    fresh = status.get("observedGeneration") is None or generation is None or \
        status["observedGeneration"] >= generation
    return fresh and conditions.is_true(status.get("conditions"), "Ready")


def compute_status(current: dict[str, Any], outcome: Outcome, *, name: str, generation: int,
                   now: str | None = None) -> dict[str, Any]:
    """The new status from the current one and what this reconciliation found (pure)."""
    now = now or conditions.now_rfc3339()
    status = dict(current)
    conds: list[dict[str, Any]] = list(status.get("conditions") or [])
    status["observedGeneration"] = generation
    if outcome.spec_error is not None:
        conds = conditions.set_condition(conds, "Ready", "False", "InvalidSpec", str(outcome.spec_error),
                                         generation=generation, now=now)
        status.update(conditions=conds, phase="Failed")
        return status

    resolved, error = outcome.resolved, outcome.resolution_error
    if resolved is not None:
        model = {"name": resolved.name, "version": resolved.version, "source": resolved.source,
                 "uri": resolved.uri, "runId": resolved.run_id}
        if resolved.alias:
            model["alias"] = resolved.alias
        old = status.get("model") or {}
        model["resolvedAt"] = old.get("resolvedAt", now) if _same_model(old, model) else now
        status["model"] = model
        via = f"alias {resolved.alias!r} → version {resolved.version}" if resolved.alias else \
            f"version {resolved.version}"
        conds = conditions.set_condition(conds, "ModelResolved", "True", "Resolved",
                                         f"{resolved.name} {via}", generation=generation, now=now)
        if error is not None:  # an alias re-check failed; the pinned version keeps serving
            conds = conditions.set_condition(conds, "ModelResolved", "True", "Resolved",
                                             f"{resolved.name} pinned to version {resolved.version}; "
                                             f"re-check failed: {error}", generation=generation, now=now)
    elif error is not None:
        conds = conditions.set_condition(conds, "ModelResolved", "False", error.reason, str(error),
                                         generation=generation, now=now)
    if outcome.previous_model:
        status["previousModel"] = outcome.previous_model
    else:
        status.pop("previousModel", None)

    isvc = outcome.inference_service
    if isvc is not None:
        status["inferenceService"] = name
        isvc_status = isvc.get("status") or {}
        if isvc_status.get("url"):
            status["url"] = isvc_status["url"]
        ready = conditions.find(isvc_status.get("conditions"), "Ready")
        if _isvc_ready(isvc):
            canary = f" (canary: {outcome.previous_model['version']} → {resolved.version})" \
                if outcome.previous_model and resolved else ""
            conds = conditions.set_condition(conds, "InferenceServiceReady", "True", "InferenceServiceReady",
                                             f"InferenceService {name} is ready{canary}",
                                             generation=generation, now=now)
        elif ready is None:
            conds = conditions.set_condition(conds, "InferenceServiceReady", "Unknown", "InferenceServicePending",
                                             f"waiting for KServe to report InferenceService {name}",
                                             generation=generation, now=now)
        elif ready.get("status") == "True":  # ready, but KServe has not yet seen our latest change
            conds = conditions.set_condition(conds, "InferenceServiceReady", "Unknown", "InferenceServiceUpdating",
                                             f"waiting for KServe to roll out generation "
                                             f"{isvc['metadata'].get('generation')} of InferenceService {name}",
                                             generation=generation, now=now)
        else:
            conds = conditions.set_condition(conds, "InferenceServiceReady", "False",
                                             str(ready.get("reason") or "InferenceServiceNotReady"),
                                             str(ready.get("message") or f"InferenceService {name} is not ready"),
                                             generation=generation, now=now)
    else:
        status.pop("url", None)
        conds = conditions.set_condition(conds, "InferenceServiceReady", "False", "InferenceServiceMissing",
                                         "no InferenceService yet: the model is not resolved",
                                         generation=generation, now=now)
    conds = _monitoring_conditions(status, conds, outcome, generation=generation, now=now)
    conds = conditions.derive_ready(conds, CONDITION_TYPES, negative=("Degraded",), generation=generation,
                                    now=now)
    status["conditions"] = conds
    status["phase"] = _phase(conds)
    return status


def _monitoring_conditions(status: dict[str, Any], conds: list[dict[str, Any]], outcome: Outcome, *,
                           generation: int, now: str) -> list[dict[str, Any]]:
    """`status.drift`, `DriftDetected` and `Degraded` from this reconciliation's evaluation, if it made one.

    Without a new evaluation they stay as last written; a spec that stops asking drops them. An outage
    (Prometheus, MLflow) makes the condition Unknown and keeps the last figures in status.drift, whose
    evaluatedAt says how old they are. DriftDetected never holds Ready back (the model still serves);
    Degraded does.
    """
    if outcome.drift_enabled is False:
        conds = [c for c in conds if c.get("type") != "DriftDetected"]
        status.pop("drift", None)
    if outcome.drift_enabled is not None and outcome.min_accuracy is None:
        conds = [c for c in conds if c.get("type") != "Degraded"]
    evaluation = outcome.evaluation
    if evaluation is None:
        return conds
    result = evaluation.drift
    if result is not None:
        drift_status: dict[str, Any] = {
            "statistic": result.statistic,
            "score": _rounded(monitoring.finite(result.score), 4),
            "pValue": _rounded(monitoring.finite(result.p_value), 6, significant=True),
            "driftedFeatures": list(result.drifted_features),
            "window": evaluation.window, "evaluatedAt": evaluation.evaluated_at, "samples": result.samples}
        status["drift"] = {k: v for k, v in drift_status.items() if v is not None}
        drift_condition: dict[str, tuple[conditions.ConditionStatus, str]] = {
            "Drifted": ("True", "DriftDetected"), "NoDrift": ("False", "NoDrift"),
            "InsufficientData": ("Unknown", "InsufficientData")}
        conds = conditions.set_condition(conds, "DriftDetected", *drift_condition[result.state],
                                         f"{result.message} (window {evaluation.window})",
                                         generation=generation, now=now)
    elif evaluation.drift_problem is not None:
        conds = conditions.set_condition(conds, "DriftDetected", "Unknown", evaluation.drift_problem.reason,
                                         evaluation.drift_problem.message, generation=generation, now=now)
    accuracy = evaluation.accuracy
    if accuracy is not None and outcome.min_accuracy is not None:
        value = accuracy.value
        if value is None or accuracy.total < monitoring.MIN_FEEDBACK:
            conds = conditions.set_condition(
                conds, "Degraded", "False", "InsufficientFeedback",
                f"{accuracy.total:.0f} feedback outcomes in the last {evaluation.window}; accuracy is judged "
                f"from {monitoring.MIN_FEEDBACK}", generation=generation, now=now)
        else:
            low = value < outcome.min_accuracy
            conds = conditions.set_condition(
                conds, "Degraded", "True" if low else "False", "LowAccuracy" if low else "AccuracyOK",
                f"accuracy {value:.3f} from {accuracy.total:.0f} feedback outcomes in the last {evaluation.window} "
                f"is {'below' if low else 'at or above'} minAccuracy {outcome.min_accuracy:g}",
                generation=generation, now=now)
    elif evaluation.accuracy_problem is not None:
        conds = conditions.set_condition(conds, "Degraded", "Unknown", evaluation.accuracy_problem.reason,
                                         evaluation.accuracy_problem.message, generation=generation, now=now)
    return conds


def _rounded(value: float | None, digits: int, *, significant: bool = False) -> float | None:
    """A status figure short enough to read in `kubectl get` (p-values keep significant digits)."""
    if value is None:
        return None
    return float(f"{value:.{digits}g}") if significant else round(value, digits)


def _same_model(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(old.get(k) == new.get(k) for k in ("name", "version", "alias"))


def _phase(conds: list[dict[str, Any]]) -> str:
    resolved = conditions.find(conds, "ModelResolved")
    if resolved is None or resolved.get("status") != "True":
        return "Failed" if resolved is not None and resolved.get("reason") == ModelNotFound.reason else "Resolving"
    if not conditions.is_true(conds, "InferenceServiceReady"):
        return "Deploying"
    return "Degraded" if conditions.is_true(conds, "Degraded") else "Ready"


async def _write_status(rt: Runtime, body: kopf.Body | dict[str, Any], current: dict[str, Any],
                        outcome: Outcome) -> None:
    meta = body["metadata"]
    new = compute_status(current, outcome, name=meta["name"], generation=int(meta.get("generation", 1)))
    await rt.memory.write_status(rt.kube, MD_API, MD_PLURAL, body, current, new, events=outcome.events)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the ModelDeployment handlers into `registry` (nothing is registered at import time)."""
    resource = (GROUP, VERSION, MD_PLURAL)

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, field="spec", registry=registry)
    async def md_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int,
                         **_: Any) -> None:
        outcome = await reconcile(memo.runtime, body, logger, periodic=False)
        if outcome.spec_error is not None:
            raise kopf.PermanentError(f"invalid spec: {outcome.spec_error}")
        if isinstance(outcome.resolution_error, ModelNotFound) and outcome.resolved is None:
            raise kopf.PermanentError(str(outcome.resolution_error))
        if outcome.resolution_error is not None and outcome.resolved is None:
            raise kopf.TemporaryError(str(outcome.resolution_error), delay=min(300.0, 2.0 * 2 ** retry))

    @kopf.timer(*resource, interval=config.resync_seconds, initial_delay=config.resync_seconds,
                registry=registry)
    async def md_resync(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        await reconcile(memo.runtime, body, logger, periodic=True)

    @kopf.on.delete(*resource, optional=True, registry=registry)
    async def md_deleted(uid: str, memo: kopf.Memo, **_: Any) -> None:
        memo.runtime.forget(uid)

    @kopf.on.event("serving.kserve.io", "v1beta1", ISVC_PLURAL, registry=registry,
                   labels={"app.kubernetes.io/managed-by": "medserve",
                           "medserve.io/model-deployment": kopf.PRESENT})
    async def isvc_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger,
                           **_: Any) -> None:
        owner = next((ref for ref in body.metadata.get("ownerReferences", [])
                      if ref.get("kind") == "ModelDeployment" and ref.get("apiVersion") == MD_API), None)
        if owner is None:
            return
        if type == "DELETED" or body.get("status"):
            # Only a status change (KServe reporting) or a deletion needs the parent looked at now; spec drift
            # is corrected by the periodic resync.
            rt: Runtime = memo.runtime
            parent = await rt.kube.get(MD_API, MD_PLURAL, body.metadata.namespace, owner["name"])
            if parent is not None and parent["metadata"].get("uid") == owner.get("uid") and \
                    not parent["metadata"].get("deletionTimestamp"):
                await reconcile(rt, parent, logger, periodic=True)
