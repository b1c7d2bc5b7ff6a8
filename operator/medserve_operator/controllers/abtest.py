"""The ABTest reconciler: two ModelDeployments → a KServe InferenceGraph → an always-valid decision → promotion.

The kopf handlers are thin: they hand the ABTest to `reconcile`, which parses the spec, reads both arms'
ModelDeployments, applies the InferenceGraph (a Splitter sending `trafficSplit.treatmentPercent` of the
requests to the treatment), and every `statistics.interval` reads each arm's metric from Prometheus and
updates the sequential test (sequential.py). A spec change, the operator's restart, the periodic resync and
a status change of the graph run the same idempotent function.

The test starts (`status.startedAt`, `status.modelVersions`) once both arms serve different model versions
and the graph is Ready; from then on only data of those versions since `startedAt` counts:
- `metric.source: feedback`: the runtime's `medserve_feedback_total{model,version,outcome}` counters,
  `increase()`d over the test's window; the metric is accuracy (a proportion);
- `metric.source: promql`: the query, with `{arm_model}` and `{arm_version}` filled in per arm, gives one
  number per arm; it is sampled every `statistics.interval` over the window (a Prometheus subquery) and
  each sample is one observation. Use it for figures that are already aggregates (a per-minute error
  rate, a p95 latency): `samples` then counts looks, not requests.

It concludes when the sequential test decides, at `maxSamplesPerArm`, or at `maxDuration` (a final look).
Then the graph sends everything to the control, and with `onConclusion.promote` a winning treatment
(`TreatmentBetter`, or `NonInferior` under the non-inferiority hypothesis) is promoted: a control that
follows an MLflow alias gets the alias moved to the treatment's version, any other control is pinned to
it (the ModelDeployment reconciler then rolls it out as a canary). The `Promoted` condition and an Event
record the decision, the statistics and the data window. A concluded test is never evaluated again;
delete and re-create it to run another.

Nothing here holds up the operator: a missing or identical arm, an unreachable Prometheus or MLflow, a
query that does not give one number — each becomes a condition naming what is wrong, and the next
resync tries again.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import kopf

from medserve_operator import GROUP, VERSION
from medserve_operator.api import RETRY_PROMOTION, ABTestSpec, SpecError, parse_duration, parse_spec
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry, RegistryError
from medserve_operator.clients.prometheus import PrometheusClient, PrometheusError
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers import render
from medserve_operator.controllers.monitoring import feedback_query
from medserve_operator.kit import conditions
from medserve_operator.kit.memory import Logger, ObjectMemory

if TYPE_CHECKING:  # numpy comes with the statistics: loaded at the first evaluation, not at start-up
    from medserve_operator.stats import sequential

MEDSERVE_API = f"{GROUP}/{VERSION}"
AB_PLURAL = "abtests"
MD_PLURAL = "modeldeployments"
IG_API = "serving.kserve.io/v1alpha1"
IG_PLURAL = "inferencegraphs"
EVENT_CONDITIONS = ("ArmsReady", "GraphReady", "MetricsAvailable", "Ready")
"""Conditions whose transitions become Events; Concluded and Promoted get Events of their own."""
WINNING = ("TreatmentBetter", "NonInferior")

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


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm as its ModelDeployment reports it."""

    role: str
    deployment: str
    body: dict[str, Any] | None

    @property
    def status(self) -> dict[str, Any]:
        return dict((self.body or {}).get("status") or {})

    @property
    def service(self) -> str | None:
        return self.status.get("inferenceService")

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.status.get("model") or {})


Check: TypeAlias = "tuple[conditions.ConditionStatus, str, str]"


@dataclasses.dataclass
class Outcome:
    """What one reconciliation found and did, before it becomes status."""

    now: datetime.datetime
    spec: ABTestSpec | None = None
    spec_error: SpecError | None = None
    arms: Check | None = None
    graph: dict[str, Any] | None = None
    graph_error: str | None = None
    started: dict[str, Any] | None = None
    """startedAt and modelVersions, when the test starts now."""
    metrics: Check | None = None
    evaluation: dict[str, Any] | None = None
    concluded: str | None = None
    """The conclusion's message, when the test concludes now."""
    promoted: Check | None = None
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


async def reconcile(rt: Runtime, body: kopf.Body | dict[str, Any], logger: Logger) -> Outcome:
    """Bring the InferenceGraph, the evaluation and the status in line with the ABTest `body`."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    outcome = Outcome(now=datetime.datetime.now(datetime.UTC).replace(microsecond=0))
    async with rt.memory.lock(uid):
        status = rt.memory.status(uid, body)
        try:
            spec = parse_spec(ABTestSpec, dict(body.get("spec") or {}))
        except SpecError as exc:
            outcome.spec_error = exc
            await _write_status(rt, body, status, outcome)
            return outcome
        outcome.spec = spec
        concluded = bool(status.get("concludedAt"))
        control = await _arm(rt, namespace, "control", spec.control.model_deployment)
        treatment = await _arm(rt, namespace, "treatment", spec.treatment.model_deployment)
        if not concluded:
            outcome.arms = check_arms(control, treatment, status.get("modelVersions"))
        arms_ready = outcome.arms is not None and outcome.arms[0] == "True"
        if control.service and (concluded or arms_ready):
            await _apply_graph(rt, body, spec, control.service, None if concluded else treatment.service, outcome)
        else:
            outcome.graph = await rt.kube.get(IG_API, IG_PLURAL, namespace, name)
        graph_ready = conditions.is_true(((outcome.graph or {}).get("status") or {}).get("conditions"), "Ready")

        if not concluded and arms_ready and graph_ready:
            started_at = status.get("startedAt")
            if not started_at:
                started_at = conditions.rfc3339(outcome.now)
                versions = {"control": str(control.model.get("version")),
                            "treatment": str(treatment.model.get("version"))}
                outcome.started = {"startedAt": started_at, "modelVersions": versions}
                outcome.events.append(("Normal", "ABTestStarted",
                                       f"splitting traffic {100 - spec.traffic_split.treatment_percent}/"
                                       f"{spec.traffic_split.treatment_percent}: {control.deployment} (version "
                                       f"{versions['control']}) vs {treatment.deployment} (version "
                                       f"{versions['treatment']}) on {spec.metric.name}"))
            versions = (outcome.started or status).get("modelVersions") or {}
            if _evaluation_due(rt, uid, spec):
                rt.last_evaluation[uid] = time.monotonic()
                await _evaluate(rt, namespace, spec, status, started_at, versions, outcome, logger)
                if outcome.concluded is not None:
                    concluded = True
                    await _apply_graph(rt, body, spec, str(control.service), None, outcome)
        if concluded and _promotion_pending(status, outcome):
            await _promote(rt, namespace, spec, control, treatment,
                           {**status, **(outcome.started or {}), **(outcome.evaluation or {})}, outcome, logger)
        await _write_status(rt, body, status, outcome)
    for type_, reason, message in outcome.events:
        kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)
    return outcome


async def _arm(rt: Runtime, namespace: str, role: str, deployment: str) -> Arm:
    return Arm(role, deployment, await rt.kube.get(MEDSERVE_API, MD_PLURAL, namespace, deployment))


def check_arms(control: Arm, treatment: Arm, versions: Mapping[str, Any] | None) -> Check:
    """The ArmsReady condition (pure): both ModelDeployments exist, serve, and serve different versions —
    the versions recorded when the test started, once it has."""
    for arm in (control, treatment):
        if arm.body is None:
            return ("False", "ModelDeploymentNotFound",
                    f"the {arm.role} ModelDeployment {arm.deployment} does not exist")
        if not arm.service or not arm.model.get("version"):
            return ("False", "ArmNotReady", f"the {arm.role} ModelDeployment {arm.deployment} has no InferenceService "
                                            "with a resolved model yet")
    if (control.model.get("name"), control.model.get("version")) == \
            (treatment.model.get("name"), treatment.model.get("version")):
        return ("False", "IdenticalArms", f"both arms serve version {control.model.get('version')} of model "
                                          f"{control.model.get('name')}: there is nothing to compare")
    if versions:
        for arm in (control, treatment):
            if str(arm.model.get("version")) != str(versions.get(arm.role)):
                return ("False", "VersionChanged",
                        f"the {arm.role} ModelDeployment {arm.deployment} now serves version "
                        f"{arm.model.get('version')}, not version {versions.get(arm.role)} under test: the test is "
                        "paused (restore the version, or delete and re-create the ABTest)")
    return ("True", "ArmsReady", f"{control.deployment} serves version {control.model.get('version')}, "
                                 f"{treatment.deployment} version {treatment.model.get('version')}")


async def _apply_graph(rt: Runtime, body: kopf.Body | dict[str, Any], spec: ABTestSpec, control_service: str,
                       treatment_service: str | None, outcome: Outcome) -> None:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    desired = render.render_inference_graph(name=name, namespace=namespace, uid=meta["uid"],
                                            control_service=control_service, treatment_service=treatment_service,
                                            treatment_percent=spec.traffic_split.treatment_percent)
    try:
        current = await rt.kube.get(IG_API, IG_PLURAL, namespace, name)
        if current is None:
            outcome.graph = await rt.kube.create(IG_API, IG_PLURAL, namespace, desired)
            outcome.events.append(("Normal", "InferenceGraphCreated", f"InferenceGraph {name} created"))
        elif render.owned_differs(desired, current):
            outcome.graph = await rt.kube.replace(IG_API, IG_PLURAL, namespace, render.updated(current, desired))
        else:
            outcome.graph = current
    except ApiError as exc:
        outcome.graph_error = f"InferenceGraph {name} could not be applied: {exc}"


def _evaluation_due(rt: Runtime, uid: str, spec: ABTestSpec) -> bool:
    last = rt.last_evaluation.get(uid)
    return last is None or time.monotonic() - last >= parse_duration(spec.statistics.interval)


async def _evaluate(rt: Runtime, namespace: str, spec: ABTestSpec, status: dict[str, Any], started_at: str,
                    versions: Mapping[str, str], outcome: Outcome, logger: Logger) -> None:
    if rt.prometheus is None:
        outcome.metrics = ("False", "PrometheusNotConfigured",
                           "the test cannot be evaluated: the operator has no Prometheus (set MEDSERVE_PROMETHEUS_URL)")
        return
    from medserve_operator.stats import sequential

    started = conditions.parse_time(started_at) or outcome.now
    window = max(1, int((outcome.now - started).total_seconds()))
    final = window >= parse_duration(spec.max_duration)
    try:
        control = await arm_data(rt.prometheus, spec, namespace=namespace, role="control",
                                 deployment=spec.control.model_deployment, version=versions["control"], window=window)
        treatment = await arm_data(rt.prometheus, spec, namespace=namespace, role="treatment",
                                   deployment=spec.treatment.model_deployment, version=versions["treatment"],
                                   window=window)
        result = sequential.evaluate(sequential.Design.from_spec(spec), control, treatment,
                                     previous=sequential.RunningState.from_status(status), final=final)
    except PrometheusError as exc:
        logger.warning("ABTest metrics unavailable: %s", exc)
        outcome.metrics = ("False", exc.reason, f"the test is not evaluated: {exc}")
        return
    except ValueError as exc:
        outcome.metrics = ("False", "InvalidMetric", f"spec.metric: {exc}")
        return
    outcome.metrics = ("True", "MetricsAvailable", f"{result.samples_control} control and "
                                                   f"{result.samples_treatment} treatment samples since {started_at}")
    outcome.evaluation = {**status_figures(result), "evaluatedAt": conditions.rfc3339(outcome.now)}
    if result.concluded:
        at_max = max(result.samples_control, result.samples_treatment) >= spec.statistics.max_samples_per_arm
        why = "maxDuration ran out" if final else "maxSamplesPerArm was reached" if at_max else \
            "the sequential boundary was crossed"
        outcome.concluded = f"{result.decision} ({why}): {summary(spec, result, started_at, outcome.now)}"
        outcome.events.append(("Normal", "ABTestConcluded", outcome.concluded))


def status_figures(result: sequential.Evaluation) -> dict[str, Any]:
    """The evaluation's status fields, short enough to read in `kubectl get` (pure).

    The p-value and the interval are what the next look continues from (`RunningState.from_status`), so
    they are rounded outwards — p up, the interval wider — and the rounding never makes the test bolder.
    """
    figures = result.to_status()
    figures["alwaysValidPValue"] = min(1.0, _round_outwards(result.always_valid_p_value, up=True, significant=4))
    estimates = figures["estimates"]
    for key in ("control", "treatment", "difference"):
        if key in estimates:
            estimates[key] = round(estimates[key], 4)
    if "confidenceSequence" in estimates:
        low, high = estimates["confidenceSequence"]
        estimates["confidenceSequence"] = [_round_outwards(low, up=False), _round_outwards(high, up=True)]
    return figures


def _round_outwards(value: float, *, up: bool, significant: int | None = None, decimals: int = 4) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    digits = decimals if significant is None else significant - 1 - math.floor(math.log10(abs(value)))
    scale = 10.0 ** digits
    # round() first: 0.0168 * 1e4 is 168.00000000000003, which must not become 169.
    shifted = round(value * scale, 6)
    return (math.ceil(shifted) if up else math.floor(shifted)) / scale


def summary(spec: ABTestSpec, result: sequential.Evaluation, started_at: str, now: datetime.datetime) -> str:
    """The statistics and the data window of an evaluation, in one line (pure)."""
    low, high = result.confidence_sequence
    return (f"{spec.metric.name} treatment {result.treatment:.4f} vs control {result.control:.4f}, difference "
            f"{result.difference:+.4f}, always-valid {1 - spec.statistics.alpha:.0%} interval [{low:+.4f}, "
            f"{high:+.4f}], p = {result.always_valid_p_value:.3g}; {result.samples_control} control and "
            f"{result.samples_treatment} treatment samples from {started_at} to {conditions.rfc3339(now)}")


async def arm_data(prometheus: PrometheusClient, spec: ABTestSpec, *, namespace: str, role: str, deployment: str,
                   version: str, window: int) -> sequential.ArmData:
    """One arm's sufficient statistics over the last `window` seconds, from Prometheus."""
    from medserve_operator.stats import sequential

    metric = spec.metric
    if metric.source == "feedback":
        if metric.kind != "proportion" or metric.name != "accuracy":
            raise ValueError("source feedback gives accuracy, a proportion: set name accuracy and kind proportion, "
                             "or use source promql")
        query = feedback_query(deployment=deployment, namespace=namespace, version=version, window=f"{window}s")
        counts = {s.labels.get("outcome", ""): s.value for s in await prometheus.query(query)}
        trials = round(sum(counts.values()))
        return sequential.ArmData.proportion(min(round(counts.get("correct", 0.0)), trials), trials, arm=role)
    count, total, total_sq = [await prometheus.value(q) or 0.0
                              for q in promql_queries(str(metric.promql), deployment, version, window,
                                                      parse_duration(spec.statistics.interval))]
    if metric.kind == "proportion":
        return sequential.ArmData.proportion(total, count, arm=f"{role} (values must lie in [0, 1])")
    return sequential.ArmData.mean(count, total, total_sq, arm=role)


def promql_queries(template: str, deployment: str, version: str, window: int, step: float) -> tuple[str, str, str]:
    """(count, sum, sum of squares) of the arm's metric sampled every `step` s over `window` s (pure)."""
    query = template.replace("{arm_model}", deployment).replace("{arm_version}", version)
    span = f"[{window}s:{max(1, round(step))}s]"
    return (f"count_over_time(({query}){span})", f"sum_over_time(({query}){span})",
            f"sum_over_time((({query}) ^ 2){span})")


def _promotion_pending(status: Mapping[str, Any], outcome: Outcome) -> bool:
    if outcome.concluded is not None:
        return True
    promoted = conditions.find(status.get("conditions"), "Promoted")
    return promoted is None or promoted.get("reason") in RETRY_PROMOTION


async def _promote(rt: Runtime, namespace: str, spec: ABTestSpec, control: Arm, treatment: Arm,
                   status: Mapping[str, Any], outcome: Outcome, logger: Logger) -> None:
    decision = str(status.get("decision"))
    versions = status.get("modelVersions") or {}
    window = f"data from {status.get('startedAt')} to {status.get('concludedAt') or conditions.rfc3339(outcome.now)}"
    promoted: Check
    if decision not in WINNING:
        promoted = ("False", "ControlKept", f"decision {decision}: {control.deployment} keeps version "
                                            f"{versions.get('control')} ({window})")
    elif not spec.on_conclusion.promote:
        promoted = ("False", "PromotionDisabled",
                    f"decision {decision}, but onConclusion.promote is false: {control.deployment} keeps "
                    f"version {versions.get('control')}")
    elif control.body is None or treatment.body is None:
        missing = control if control.body is None else treatment
        promoted = ("False", "ModelDeploymentNotFound",
                    f"decision {decision}, but the {missing.role} ModelDeployment {missing.deployment} does "
                    "not exist: promotion waits for it")
    else:
        promoted = await _apply_promotion(rt, namespace, control, treatment, str(versions.get("treatment")),
                                          decision, window, logger)
    outcome.promoted = promoted
    if promoted[0] == "True":
        outcome.events.append(("Normal", "Promoted", promoted[2]))
    elif promoted[1] != "PromotionFailed":
        outcome.events.append(("Normal", "NotPromoted", promoted[2]))


async def _apply_promotion(rt: Runtime, namespace: str, control: Arm, treatment: Arm, version: str, decision: str,
                           window: str, logger: Logger) -> Check:
    control_model = ((control.body or {}).get("spec") or {}).get("model") or {}
    model_name = str(treatment.model.get("name") or control_model.get("name"))
    alias = control_model.get("alias")
    try:
        if alias and control_model.get("name") == model_name:
            await rt.registry.set_alias(model_name, str(alias), version)
            return ("True", "AliasMoved", f"decision {decision}: alias {alias} of {model_name} now points at version "
                                          f"{version}, which {control.deployment} serves next ({window})")
        await rt.kube.patch(MEDSERVE_API, MD_PLURAL, namespace, control.deployment,
                            {"spec": {"model": {"name": model_name, "version": version, "alias": None}}})
    except (RegistryError, ApiError) as exc:
        logger.warning("Promotion of version %s failed: %s", version, exc)
        return ("False", "PromotionFailed", f"decision {decision}; promoting version {version} failed, retrying: {exc}")
    return ("True", "VersionPinned", f"decision {decision}: {control.deployment} pinned to version {version} of "
                                     f"{model_name}, rolled out as a canary ({window})")


def compute_status(current: dict[str, Any], outcome: Outcome, *, name: str, generation: int) -> dict[str, Any]:
    """The new status from the current one and what this reconciliation found (pure)."""
    now = conditions.rfc3339(outcome.now)
    status = dict(current)
    status["observedGeneration"] = generation
    conds: list[dict[str, Any]] = list(status.get("conditions") or [])

    def put(type_: str, state: conditions.ConditionStatus, reason: str, message: str) -> None:
        nonlocal conds
        conds = conditions.set_condition(conds, type_, state, reason, message, generation=generation, now=now)

    if outcome.spec_error is not None:
        put("Ready", "False", "InvalidSpec", str(outcome.spec_error))
        status.update(conditions=conds, phase="Failed")
        return status
    if outcome.arms is not None:
        put("ArmsReady", *outcome.arms)
    graph = outcome.graph
    if outcome.graph_error is not None:
        put("GraphReady", "False", "InferenceGraphFailed", outcome.graph_error)
    elif graph is None:
        status.pop("url", None)
        put("GraphReady", "False", "InferenceGraphMissing", "no InferenceGraph until both arms are ready")
    else:
        status["inferenceGraph"] = name
        graph_status = graph.get("status") or {}
        if graph_status.get("url"):
            status["url"] = graph_status["url"]
        ready = conditions.find(graph_status.get("conditions"), "Ready")
        if ready is None:
            put("GraphReady", "Unknown", "InferenceGraphPending", f"waiting for KServe to report InferenceGraph {name}")
        elif ready.get("status") == "True":
            put("GraphReady", "True", "InferenceGraphReady", f"InferenceGraph {name} is ready")
        else:
            put("GraphReady", "False", str(ready.get("reason") or "InferenceGraphNotReady"),
                str(ready.get("message") or f"InferenceGraph {name} is not ready"))
    if outcome.started is not None:
        status.update(outcome.started)
    if outcome.metrics is not None:
        put("MetricsAvailable", *outcome.metrics)
    if outcome.evaluation is not None:
        status.update(outcome.evaluation)
    if outcome.concluded is not None:
        status["concludedAt"] = now
        put("Concluded", "True", str(status.get("decision")), outcome.concluded)
    if outcome.promoted is not None:
        put("Promoted", *outcome.promoted)
    if status.get("concludedAt"):
        status["phase"] = "Concluded"
        required: tuple[str, ...] = ("GraphReady",)
    else:
        status["phase"] = "Running" if status.get("startedAt") else "Pending"
        required = ("ArmsReady", "GraphReady", "MetricsAvailable") if status.get("startedAt") else \
            ("ArmsReady", "GraphReady")
    status["conditions"] = conditions.derive_ready(conds, required, generation=generation, now=now)
    return status


async def _write_status(rt: Runtime, body: kopf.Body | dict[str, Any], current: dict[str, Any],
                        outcome: Outcome) -> None:
    meta = body["metadata"]
    new = compute_status(current, outcome, name=meta["name"], generation=int(meta.get("generation", 1)))
    await rt.memory.write_status(rt.kube, MEDSERVE_API, AB_PLURAL, body, current, new, events=outcome.events,
                                 announce=EVENT_CONDITIONS)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the ABTest handlers into `registry` (nothing is registered at import time)."""
    resource = (GROUP, VERSION, AB_PLURAL)

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, field="spec", registry=registry)
    async def ab_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        outcome = await reconcile(memo.abtest, body, logger)
        if outcome.spec_error is not None:
            raise kopf.PermanentError(f"invalid spec: {outcome.spec_error}")

    @kopf.timer(*resource, interval=config.resync_seconds, initial_delay=config.resync_seconds, registry=registry)
    async def ab_resync(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        await reconcile(memo.abtest, body, logger)

    @kopf.on.delete(*resource, optional=True, registry=registry)
    async def ab_deleted(uid: str, memo: kopf.Memo, **_: Any) -> None:
        memo.abtest.forget(uid)

    @kopf.on.event("serving.kserve.io", "v1alpha1", IG_PLURAL, registry=registry,
                   labels={"app.kubernetes.io/managed-by": "medserve", render.ABTEST_LABEL: kopf.PRESENT})
    async def graph_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger,
                            **_: Any) -> None:
        if type != "DELETED" and not body.get("status"):
            return  # our own write; only KServe's report (or a deletion) needs the ABTest looked at now
        rt: Runtime = memo.abtest
        parent = await rt.kube.get(MEDSERVE_API, AB_PLURAL, body.metadata.namespace,
                                   str(body.metadata.labels.get(render.ABTEST_LABEL)))
        if parent is not None and not parent["metadata"].get("deletionTimestamp"):
            await reconcile(rt, parent, logger)
