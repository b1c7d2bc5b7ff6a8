"""The ABTest's status, serialised in one place: from what a reconciliation found (`Outcome`, the sequential
test's typed `Evaluation` among it) to `status` (pure), and back from a status to the test's running state.

The p-value and the interval are what the next look continues from (`running_state`), so they are rounded
outwards — p up, the interval wider — and the rounding never makes the test bolder.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, get_args

from medserve_operator.api import abtest as ab
from medserve_operator.api.abtest import ABTestSpec
from medserve_operator.api.common import READY
from medserve_operator.controllers.abtest.router import forwarded_key_header
from medserve_operator.kit import conditions, reconciler
from medserve_operator.kit import status as kit_status
from medserve_operator.kit.conditions import Check, Conditions

if TYPE_CHECKING:  # numpy comes with the statistics: loaded at the first evaluation, not at start-up
    from medserve_operator.stats import sequential


@dataclasses.dataclass(kw_only=True)
class Outcome(reconciler.Outcome):
    """What one reconciliation found and did, before it becomes status."""

    now: datetime.datetime
    spec: ABTestSpec | None = None
    arms: Check | None = None
    graph: dict[str, Any] | None = None
    graph_error: str | None = None
    started: dict[str, Any] | None = None
    """startedAt and modelVersions, when the test starts now."""
    metrics: Check | None = None
    evaluation: sequential.Evaluation | None = None
    """The sequential test after this reconciliation's look, when it made one."""
    concluded: str | None = None
    """The conclusion's message, when the test concludes now."""
    promoted: Check | None = None
    recommendation: dict[str, Any] | None = None
    """status.recommendation, set with a Promoted=False reason=PromotionRecommended."""
    headers: Check | None = None
    """HeadersPropagated: whether the router forwards the arms' API key."""
    router: tuple[bool, str] | None = None
    """Concluded: whether every router pod routes away from the treatment (router.router_rolled_out)."""
    drain_seconds: float = 30.0


def evaluation_status(result: sequential.Evaluation) -> dict[str, Any]:
    """The evaluation's status fields (samples, estimates, alwaysValidPValue, decision); no NaN/inf in it."""

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    estimates: dict[str, Any] = {
        "control": finite(result.control), "treatment": finite(result.treatment),
        "difference": finite(result.difference),
    }
    if all(math.isfinite(b) for b in result.confidence_sequence):
        estimates["confidenceSequence"] = list(result.confidence_sequence)
    return {
        "samples": {"control": result.samples_control, "treatment": result.samples_treatment},
        "estimates": {k: v for k, v in estimates.items() if v is not None},
        "alwaysValidPValue": result.always_valid_p_value,
        "decision": result.decision,
    }


def status_figures(result: sequential.Evaluation) -> dict[str, Any]:
    """`evaluation_status`, short enough to read in `kubectl get`, rounded outwards (pure)."""
    figures = evaluation_status(result)
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


def running_state(status: Mapping[str, Any] | None) -> sequential.RunningState:
    """The running p-value and interval the last look left in status (`alwaysValidPValue`,
    `estimates.confidenceSequence`): what the next look continues from."""
    from medserve_operator.stats import sequential

    status = status or {}
    p = status.get("alwaysValidPValue")
    bounds = (status.get("estimates") or {}).get("confidenceSequence")
    low, high = (bounds if isinstance(bounds, list) and len(bounds) == 2 else (-math.inf, math.inf))
    return sequential.RunningState(p_value=float(p) if isinstance(p, int | float) else 1.0, low=float(low),
                                   high=float(high))


def concluded_decision(status: Mapping[str, Any]) -> ab.Decision | None:
    """The decision a concluded test recorded (its promotion may still be pending)."""
    decision = status.get("decision")
    return decision if decision in get_args(ab.Decision) else None


def promotion_pending(status: Mapping[str, Any], outcome: Outcome) -> bool:
    """Whether promotion is to be decided now: the test concluded now, its last try is to be retried, or it
    recommended a change to Git and `onConclusion.pinVersion` now lets the operator make it."""
    if outcome.concluded is not None:
        return True
    promoted = conditions.find(status.get("conditions"), ab.PROMOTED)
    if promoted is None or promoted.get("reason") in ab.RETRY_PROMOTION:
        return True
    return promoted.get("reason") == ab.PROMOTION_RECOMMENDED and outcome.spec is not None \
        and outcome.spec.on_conclusion.pin_version


def headers_check(patterns: tuple[str, ...] | None, keyed_arms: list[str]) -> Check:
    """HeadersPropagated (pure): arms that require an API key get it only if the router forwards its header."""
    if not keyed_arms:
        return ("True", ab.NO_KEYS_REQUIRED, "no arm requires an API key")
    header = forwarded_key_header(patterns)
    if header is not None:
        return ("True", ab.KEY_FORWARDED, f"KServe's router forwards {header}, which carries the API key "
                                          f"{', '.join(keyed_arms)} require")
    return ("False", ab.KEY_NOT_FORWARDED,
            f"{', '.join(keyed_arms)} require an API key, but KServe's router forwards neither Authorization nor "
            "X-Api-Key (router.headers.propagate in the inferenceservice-config ConfigMap; the operator's "
            "MEDSERVE_ROUTER_HEADERS_PROPAGATE mirrors it): every request through the graph gets 401")


def release_checks(current: list[dict[str, Any]] | None, router: tuple[bool, str], *, treatment: str,
                   now: datetime.datetime, drain_seconds: float) -> tuple[Check, Check]:
    """TreatmentRoutedAway and TreatmentReleased (pure): released once the router has routed away from the
    treatment for `drain_seconds`, timed from the routed-away condition's lastTransitionTime."""
    done, why = router
    if not done:
        waiting = f"waiting before {treatment} may be removed: {why}"
        return ("False", ab.ROUTER_SWITCHING, why), ("False", ab.ROUTER_SWITCHING, waiting)
    routed: Check = ("True", ab.ROUTER_SWITCHED, why)
    previous = conditions.find(current, ab.TREATMENT_ROUTED_AWAY)
    since = conditions.parse_time(str(previous.get("lastTransitionTime"))) \
        if previous is not None and previous.get("status") == "True" else None
    waited = (now - since).total_seconds() if since is not None else 0.0
    if waited >= drain_seconds:
        return routed, ("True", ab.RELEASED, f"no router pod has routed to {treatment} for {waited:g} s: it may "
                                             "be removed")
    return routed, ("False", ab.DRAINING, f"router pods told to stop answer for up to {drain_seconds:g} s "
                                          f"(KServe's drainSleepDuration); {waited:g} s so far")


def compute_status(current: dict[str, Any], outcome: Outcome, *, name: str, generation: int) -> dict[str, Any]:
    """The new status from the current one and what this reconciliation found (pure)."""
    now = conditions.rfc3339(outcome.now)
    if outcome.spec_error is not None:
        return kit_status.invalid_spec(current, outcome.spec_error, generation=generation, now=now,
                                       phase=ab.PHASE_FAILED)
    status = dict(current)
    status["observedGeneration"] = generation
    conds = Conditions(status.get("conditions"), generation=generation, now=now)
    if outcome.arms is not None:
        conds.put(ab.ARMS_READY, *outcome.arms)
    graph = outcome.graph
    if outcome.graph_error is not None:
        conds.put(ab.GRAPH_READY, "False", ab.GRAPH_FAILED, outcome.graph_error)
    elif graph is None:
        status.pop("url", None)
        conds.put(ab.GRAPH_READY, "False", ab.GRAPH_MISSING, "no InferenceGraph until both arms are ready")
    else:
        status["inferenceGraph"] = name
        graph_status = graph.get("status") or {}
        if graph_status.get("url"):
            status["url"] = graph_status["url"]
        ready = conditions.find(graph_status.get("conditions"), READY)
        if ready is None:
            conds.put(ab.GRAPH_READY, "Unknown", ab.GRAPH_PENDING,
                      f"waiting for KServe to report InferenceGraph {name}")
        elif ready.get("status") == "True":
            conds.put(ab.GRAPH_READY, "True", ab.GRAPH_IS_READY, f"InferenceGraph {name} is ready")
        else:
            conds.put(ab.GRAPH_READY, "False", str(ready.get("reason") or ab.GRAPH_NOT_READY),
                      str(ready.get("message") or f"InferenceGraph {name} is not ready"))
    if outcome.started is not None:
        status.update(outcome.started)
    if outcome.metrics is not None:
        conds.put(ab.METRICS_AVAILABLE, *outcome.metrics)
    if outcome.evaluation is not None:
        status.update(status_figures(outcome.evaluation), evaluatedAt=now)
    if outcome.concluded is not None:
        status["concludedAt"] = now
        conds.put(ab.CONCLUDED, "True", str(status.get("decision")), outcome.concluded)
    if outcome.headers is not None:
        conds.put(ab.HEADERS_PROPAGATED, *outcome.headers)
    if outcome.router is not None:
        treatment = outcome.spec.treatment.model_deployment if outcome.spec is not None else "the treatment"
        routed, released = release_checks(current.get("conditions"), outcome.router, treatment=treatment,
                                          now=outcome.now, drain_seconds=outcome.drain_seconds)
        conds.put(ab.TREATMENT_ROUTED_AWAY, *routed)
        conds.put(ab.TREATMENT_RELEASED, *released)
    if outcome.promoted is not None:
        conds.put(ab.PROMOTED, *outcome.promoted)
        if outcome.recommendation is not None:
            status["recommendation"] = outcome.recommendation
        else:
            status.pop("recommendation", None)
    required = ab.CONDITIONS.required
    if status.get("concludedAt"):
        status["phase"] = ab.PHASE_CONCLUDED
        required = (ab.GRAPH_READY,)
    else:
        status["phase"] = ab.PHASE_RUNNING if status.get("startedAt") else ab.PHASE_PENDING
        required = required if status.get("startedAt") else required[:2]
    status["conditions"] = conds.ready(required)
    return status
