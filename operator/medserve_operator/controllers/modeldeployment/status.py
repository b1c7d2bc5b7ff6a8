"""The ModelDeployment's status, serialised in one place: from what a reconciliation found (`Outcome`) to
`status` (pure), and back from a status to the version it pins; and what KServe reports, read the way
KServe's own code defines it.

`Ready` is derived from ModelResolved and InferenceServiceReady, held back by Degraded (accuracy); drift is
reported by DriftDetected and never held against Ready (the model still answers), and so is AuditDurable
(whether the audit records outlive the pod).

Reading KServe 0.20 (kserve/kserve `pkg/apis/serving/v1beta1/inference_service_status.go`):
- `status.observedGeneration` is NOT the InferenceService's: `PropagateStatus` copies the Knative Service's
  and `PropagateRawStatus` the first Deployment's, so it is never compared with `metadata.generation`.
- `Ready` is KServe's living condition set over `PredictorReady` and `IngressReady` (`conditionSet`).
  Serverless: `PredictorReady` is the Knative Service's Ready, `LatestDeploymentReady` its
  ConfigurationsReady (`PropagateCrossComponentStatus`), and `components.predictor` carries
  `latestCreatedRevision`, `latestReadyRevision`, `latestRolledoutRevision` (set when the latest ready
  revision gets 100%) and `traffic` (the Knative Service's resolved targets); KServe itself counts the
  model Loaded only when latestCreatedRevision == latestReadyRevision (`PropagateModelStatus`).
  Standard: `PredictorReady` comes from the stable Deployments' Available/Progressing conditions
  (`PropagateRawStatus`); each canary is reported in `canaryStatuses` (name, ready = the canary Deployment
  has available replicas, trafficPercent) with `CanaryPredictorReady`, both cleared when the spec has no
  canary (`components/predictor.go`, `reconcileCanaryDeployments`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from medserve_operator.api import modeldeployment as md
from medserve_operator.api.common import READY
from medserve_operator.api.modeldeployment import DriftStatus, ModelDeploymentSpec, ServedModel
from medserve_operator.clients.mlflow import ModelNotFound, RegistryError, ResolvedModel
from medserve_operator.controllers.modeldeployment import monitoring, render
from medserve_operator.controllers.modeldeployment.monitoring import Evaluation
from medserve_operator.controllers.modeldeployment.render import MODEL_VERSION_LABEL, AuditPlan, spool_claim_name
from medserve_operator.kit import conditions, reconciler
from medserve_operator.kit import status as kit_status
from medserve_operator.kit.conditions import Conditions, ConditionStatus


@dataclasses.dataclass(kw_only=True)
class Outcome(reconciler.Outcome):
    """What one reconciliation found, before it becomes status."""

    resolved: ResolvedModel | None = None
    resolution_error: RegistryError | None = None
    inference_service: dict[str, Any] | None = None
    isvc_error: str | None = None
    """Why the InferenceService could not be written, when the API server refused it."""
    isvc_error_reason: str = md.ISVC_FAILED
    mode: md.DeploymentMode | None = None
    """The deployment mode the InferenceService runs (or is created) in."""
    previous_model: dict[str, Any] | None = None
    rollout: dict[str, Any] | None = None
    """`status.rollout` while a canary rolls out (None: none)."""
    drift_enabled: bool | None = None
    """Whether the spec asks for drift evaluation (None: the spec was not read). False drops DriftDetected."""
    min_accuracy: float | None = None
    """monitoring.alerts.minAccuracy; None drops the Degraded condition (once the spec was read)."""
    evaluation: Evaluation | None = None
    """Drift and accuracy, when this reconciliation evaluated them (every monitoring.interval)."""
    audit: AuditPlan | None = None
    """Where the rendered runtime sends its audit records, when this reconciliation rendered it."""
    spool_error: str | None = None
    """Why the audit spool's claim could not be written (the spool is then an emptyDir)."""


def pinned_model(spec: ModelDeploymentSpec, model: Mapping[str, Any] | None) -> ResolvedModel | None:
    """The version pinned in `status.model`, if it still answers the spec's version or alias."""
    if not model or model.get("name") != spec.model.name:
        return None
    if (spec.model.version and model.get("version") != spec.model.version) or \
            (spec.model.alias and model.get("alias") != spec.model.alias):
        return None
    return ResolvedModel(name=model["name"], version=model["version"], source=model.get("source", ""),
                         run_id=model.get("runId", ""), alias=model.get("alias"))


def served_model(resolved: ResolvedModel, *, resolved_at: str) -> dict[str, Any]:
    """`status.model` for a resolution."""
    return ServedModel(name=resolved.name, version=resolved.version, alias=resolved.alias or None,
                       source=resolved.source, uri=resolved.uri, run_id=resolved.run_id,
                       resolved_at=resolved_at).model_dump(by_alias=True, exclude_none=True)


def _status(isvc: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (isvc or {}).get("status") or {}


def _spec(isvc: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (isvc or {}).get("spec") or {}


def _predictor_status(isvc: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (_status(isvc).get("components") or {}).get("predictor") or {}


def isvc_mode(isvc: Mapping[str, Any] | None, default: md.DeploymentMode = "Serverless") -> md.DeploymentMode:
    return (render.mode_of(dict(isvc)) if isvc else None) or default


def newest_not_ready(isvc: Mapping[str, Any] | None, mode: md.DeploymentMode) -> str | None:
    """Why the newest deployment KServe made is not serving yet (None: it is), from the mode's own fields."""
    status = _status(isvc)
    if mode == "Serverless":
        if conditions.find(status.get("conditions"), md.KSERVE_LATEST_DEPLOYMENT_READY) is not None and \
                not conditions.is_true(status.get("conditions"), md.KSERVE_LATEST_DEPLOYMENT_READY):
            return "its latest deployment is not ready"
        predictor = _predictor_status(isvc)
        created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
        if created and created != ready:
            return f"revision {created} is not ready yet (serving: {ready or 'none'})"
        return None
    if _spec(isvc).get("canary") and not conditions.is_true(status.get("conditions"), md.KSERVE_CANARY_READY):
        return "its canary is not ready yet"
    return None


def isvc_ready(isvc: Mapping[str, Any] | None, mode: md.DeploymentMode | None = None) -> bool:
    """Whether KServe reports the InferenceService serving: Ready, and its newest deployment ready."""
    if not isvc or not conditions.is_true(_status(isvc).get("conditions"), READY):
        return False
    return newest_not_ready(isvc, mode or isvc_mode(isvc)) is None


def canary_serving(isvc: Mapping[str, Any] | None, mode: md.DeploymentMode, *, version: str, percent: int) -> bool:
    """Whether KServe reports the canary of `version` serving `percent`% beside the previous version.

    Serverless: the stored predictor asks for canaryTrafficPercent `percent`, and the traffic's latest-
    revision target is the newest revision (created == ready) at `percent`%, the rest on another revision
    (KServe's "prev" target). Standard: `spec.canary` names the version's predictor at `percent`%, and
    canaryStatuses reports it ready at that share with CanaryPredictorReady True.
    """
    if not isvc_ready(isvc, mode):
        return False
    if mode == "Serverless":
        if (_spec(isvc).get("predictor") or {}).get("canaryTrafficPercent") != percent:
            return False
        predictor = _predictor_status(isvc)
        newest = predictor.get("latestReadyRevision")
        traffic = predictor.get("traffic") or []
        latest = [t for t in traffic if t.get("latestRevision")]
        others = [t for t in traffic if not t.get("latestRevision")]
        return bool(newest) and newest == predictor.get("latestCreatedRevision") and len(latest) == 1 and \
            latest[0].get("revisionName") == newest and latest[0].get("percent") == percent and \
            all(t.get("revisionName") != newest for t in others) and (percent == 100 or bool(others))
    name = render.predictor_name(version)
    wanted = [c for c in _spec(isvc).get("canary") or [] if (c.get("predictor") or {}).get("name") == name]
    if len(wanted) != 1 or wanted[0].get("trafficPercent") != percent:
        return False
    reported = [c for c in _status(isvc).get("canaryStatuses") or [] if c.get("name") == name]
    return len(reported) == 1 and reported[0].get("ready") is True and reported[0].get("trafficPercent") == percent


def serves_all_traffic(isvc: Mapping[str, Any] | None, mode: md.DeploymentMode, *, version: str) -> bool:
    """Whether KServe reports the InferenceService's predictor for `version` serving all traffic, no canary.

    Serverless: no canaryTrafficPercent stored, and all traffic on the latest ready revision, which is also
    the latest created and the latest rolled out. Standard: no `spec.canary`, the predictor retargeted to the
    version's name, and neither canaryStatuses nor CanaryPredictorReady left in status (KServe clears them
    once it has reconciled the spec without a canary).
    """
    if not isvc_ready(isvc, mode) or running_version(isvc) != version:
        return False
    status, spec = _status(isvc), _spec(isvc)
    if mode == "Serverless":
        if "canaryTrafficPercent" in (spec.get("predictor") or {}):
            return False
        predictor = _predictor_status(isvc)
        newest = predictor.get("latestReadyRevision")
        traffic = predictor.get("traffic") or []
        return bool(newest) and newest == predictor.get("latestCreatedRevision") == \
            predictor.get("latestRolledoutRevision") and bool(traffic) and \
            all(t.get("revisionName") == newest for t in traffic) and \
            sum(int(t.get("percent") or 0) for t in traffic) == 100
    return not spec.get("canary") and (spec.get("predictor") or {}).get("name") == render.predictor_name(version) \
        and not status.get("canaryStatuses") and \
        conditions.find(status.get("conditions"), md.KSERVE_CANARY_READY) is None


def running_version(isvc: Mapping[str, Any] | None) -> str | None:
    """The model version the InferenceService serves now (its label)."""
    return ((isvc or {}).get("metadata", {}).get("labels") or {}).get(MODEL_VERSION_LABEL)


def compute_status(current: dict[str, Any], outcome: Outcome, *, name: str, generation: int,
                   now: str | None = None) -> dict[str, Any]:
    """The new status from the current one and what this reconciliation found (pure)."""
    now = now or conditions.now_rfc3339()
    if outcome.spec_error is not None:
        return kit_status.invalid_spec(current, outcome.spec_error, generation=generation, now=now,
                                       phase=md.PHASE_FAILED)
    status = dict(current)
    status["observedGeneration"] = generation
    conds = Conditions(status.get("conditions"), generation=generation, now=now)

    resolved, error = outcome.resolved, outcome.resolution_error
    if resolved is not None:
        old = status.get("model") or {}
        same = all(old.get(k) == v for k, v in (("name", resolved.name), ("version", resolved.version),
                                                 ("alias", resolved.alias or None)))
        status["model"] = served_model(resolved, resolved_at=old.get("resolvedAt", now) if same else now)
        via = f"alias {resolved.alias!r} → version {resolved.version}" if resolved.alias else \
            f"version {resolved.version}"
        conds.put(md.MODEL_RESOLVED, "True", md.RESOLVED, f"{resolved.name} {via}")
        if error is not None:  # an alias re-check failed; the pinned version keeps serving
            conds.put(md.MODEL_RESOLVED, "True", md.RESOLVED, f"{resolved.name} pinned to version "
                                                              f"{resolved.version}; re-check failed: {error}")
    elif error is not None:
        conds.put(md.MODEL_RESOLVED, "False", error.reason, str(error))
    if outcome.previous_model:
        status["previousModel"] = outcome.previous_model
    else:
        status.pop("previousModel", None)
    if outcome.rollout and outcome.previous_model:
        status["rollout"] = outcome.rollout
    else:
        status.pop("rollout", None)

    _inference_service_condition(status, conds, outcome, name)
    _audit_condition(conds, outcome, name)
    _monitoring_conditions(status, conds, outcome)
    final = conds.ready(md.CONDITIONS.required, negative=md.READY_NEGATIVE)
    status["conditions"] = final
    status["phase"] = _phase(final)
    return status


def _inference_service_condition(status: dict[str, Any], conds: Conditions, outcome: Outcome, name: str) -> None:
    isvc, resolved = outcome.inference_service, outcome.resolved
    if outcome.isvc_error is not None:
        conds.put(md.INFERENCE_SERVICE_READY, "False", outcome.isvc_error_reason, outcome.isvc_error)
        if isvc is None:
            return
    if isvc is None:
        status.pop("url", None)
        conds.put(md.INFERENCE_SERVICE_READY, "False", md.ISVC_MISSING,
                  "no InferenceService yet: the model is not resolved")
        return
    status["inferenceService"] = name
    if outcome.mode is not None:
        status["deploymentMode"] = outcome.mode
    isvc_status = isvc.get("status") or {}
    if isvc_status.get("url"):
        status["url"] = isvc_status["url"]
    if outcome.isvc_error is not None:
        return
    mode = outcome.mode or isvc_mode(isvc)
    ready = conditions.find(isvc_status.get("conditions"), READY)
    waiting = newest_not_ready(isvc, mode)
    if ready is not None and ready.get("status") == "True" and waiting is None:
        canary = f" (canary: {outcome.previous_model['version']} → {resolved.version})" \
            if outcome.previous_model and resolved else ""
        conds.put(md.INFERENCE_SERVICE_READY, "True", md.ISVC_READY, f"InferenceService {name} is ready{canary}")
    elif ready is None:
        conds.put(md.INFERENCE_SERVICE_READY, "Unknown", md.ISVC_PENDING,
                  f"waiting for KServe to report InferenceService {name}")
    elif ready.get("status") == "True":  # serving, but the newest revision or canary is not up yet
        conds.put(md.INFERENCE_SERVICE_READY, "Unknown", md.ISVC_UPDATING,
                  f"InferenceService {name} serves, but {waiting}")
    else:
        # KServe's Ready carries no reason of its own when PredictorReady or IngressReady is the cause.
        cause = next((c for c in (ready, conditions.find(isvc_status.get("conditions"), md.KSERVE_PREDICTOR_READY),
                                  conditions.find(isvc_status.get("conditions"), md.KSERVE_INGRESS_READY))
                      if c is not None and c.get("status") != "True" and c.get("reason")), ready)
        conds.put(md.INFERENCE_SERVICE_READY, "False", str(cause.get("reason") or md.ISVC_NOT_READY),
                  str(cause.get("message") or ready.get("message") or f"InferenceService {name} is not ready"))


def _audit_condition(conds: Conditions, outcome: Outcome, name: str) -> None:
    """AuditDurable: whether what the runtime is rendered with keeps the audit records past the pod. It
    names Secrets and claims, never their contents."""
    plan = outcome.audit
    if plan is None:
        return
    keyed = f"; chains keyed by Secret {plan.key.name} key {plan.key.key}" if plan.key else \
        "; chains UNKEYED (no audit key Secret): an edit with the chain recomputed is not detected"
    if not plan.enabled:
        conds.put(md.AUDIT_DURABLE, "False", md.AUDIT_DISABLED, "spec.security.auditLog is false: no audit records")
    elif plan.dsn is None:
        conds.put(md.AUDIT_DURABLE, "False", md.AUDIT_IN_POD,
                  "audit records go to a file on an emptyDir and are lost with the pod; set "
                  f"spec.security.audit.dsnSecretRef (or the operator's default) for PostgreSQL{keyed}")
    elif outcome.spool_error is not None:
        conds.put(md.AUDIT_DURABLE, "False", md.SPOOL_CLAIM_FAILED,
                  f"{outcome.spool_error}; the audit spool is an emptyDir: records spooled while PostgreSQL is "
                  "unreachable are lost if the pod is deleted before it answers again")
    elif plan.spool is None:
        conds.put(md.AUDIT_DURABLE, "False", md.SPOOL_NOT_PERSISTENT,
                  f"audit records go to PostgreSQL (Secret {plan.dsn.name} key {plan.dsn.key}); the spool is an "
                  "emptyDir: records spooled while PostgreSQL is unreachable are lost if the pod is deleted "
                  f"before it answers again; set spec.security.audit.spool for a persistent one{keyed}")
    else:
        conds.put(md.AUDIT_DURABLE, "True", md.AUDIT_PERSISTENT,
                  f"audit records go to PostgreSQL (Secret {plan.dsn.name} key {plan.dsn.key}), spooled in an "
                  f"outage on PersistentVolumeClaim {spool_claim_name(name)}{keyed}")


_DRIFT_CONDITION: dict[str, tuple[ConditionStatus, str]] = {
    "Drifted": ("True", md.DRIFTED), "NoDrift": ("False", md.NO_DRIFT),
    "InsufficientData": ("Unknown", md.INSUFFICIENT_DATA)}
"""DriftDetected from `stats.drift.DriftResult.state`."""


def _monitoring_conditions(status: dict[str, Any], conds: Conditions, outcome: Outcome) -> None:
    """`status.drift`, `DriftDetected` and `Degraded` from this reconciliation's evaluation, if it made one.

    Without a new evaluation they stay as last written; a spec that stops asking drops them. An outage
    (Prometheus, MLflow) makes the condition Unknown and keeps the last figures in status.drift, whose
    evaluatedAt says how old they are.
    """
    if outcome.drift_enabled is False:
        conds.drop(md.DRIFT_DETECTED)
        status.pop("drift", None)
    if outcome.drift_enabled is not None and outcome.min_accuracy is None:
        conds.drop(md.DEGRADED)
    evaluation = outcome.evaluation
    if evaluation is None:
        return
    result = evaluation.drift
    if result is not None:
        status["drift"] = DriftStatus(
            statistic=result.statistic, score=_rounded(monitoring.finite(result.score), 4),
            p_value=_rounded(monitoring.finite(result.p_value), 6, significant=True),
            drifted_features=list(result.drifted_features), window=evaluation.window,
            evaluated_at=evaluation.evaluated_at, samples=result.samples,
        ).model_dump(by_alias=True, exclude_none=True)
        conds.put(md.DRIFT_DETECTED, *_DRIFT_CONDITION[result.state], f"{result.message} (window {evaluation.window})")
    elif evaluation.drift_problem is not None:
        conds.put(md.DRIFT_DETECTED, "Unknown", evaluation.drift_problem.reason, evaluation.drift_problem.message)
    accuracy = evaluation.accuracy
    if accuracy is not None and outcome.min_accuracy is not None:
        value = accuracy.value
        if value is None or accuracy.total < monitoring.MIN_FEEDBACK:
            conds.put(md.DEGRADED, "False", md.INSUFFICIENT_FEEDBACK,
                      f"{accuracy.total:.0f} feedback outcomes in the last {evaluation.window}; accuracy is judged "
                      f"from {monitoring.MIN_FEEDBACK}")
        else:
            low = value < outcome.min_accuracy
            conds.put(md.DEGRADED, "True" if low else "False", md.LOW_ACCURACY if low else md.ACCURACY_OK,
                      f"accuracy {value:.3f} from {accuracy.total:.0f} feedback outcomes in the last "
                      f"{evaluation.window} is {'below' if low else 'at or above'} minAccuracy "
                      f"{outcome.min_accuracy:g}")
    elif evaluation.accuracy_problem is not None:
        conds.put(md.DEGRADED, "Unknown", evaluation.accuracy_problem.reason, evaluation.accuracy_problem.message)


def _rounded(value: float | None, digits: int, *, significant: bool = False) -> float | None:
    """A status figure short enough to read in `kubectl get` (p-values keep significant digits)."""
    if value is None:
        return None
    return float(f"{value:.{digits}g}") if significant else round(value, digits)


def _phase(conds: list[dict[str, Any]]) -> md.Phase:
    resolved = conditions.find(conds, md.MODEL_RESOLVED)
    if resolved is None or resolved.get("status") != "True":
        return md.PHASE_FAILED if resolved is not None and resolved.get("reason") == ModelNotFound.reason \
            else md.PHASE_RESOLVING
    if not conditions.is_true(conds, md.INFERENCE_SERVICE_READY):
        return md.PHASE_DEPLOYING
    return md.PHASE_DEGRADED if conditions.is_true(conds, md.DEGRADED) else md.PHASE_READY
