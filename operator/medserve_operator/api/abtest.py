"""ABTest: two ModelDeployments, one traffic split, one always-valid decision; spec, status, conditions, reasons."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from medserve_operator.api.common import (
    AGE,
    API_VERSION_DESCRIPTION,
    MODEL_DEPLOYMENT_NOT_FOUND,
    READY,
    ApiModel,
    ApiVersion,
    CelRule,
    Conditions,
    ConditionSet,
    DeploymentName,
    PositiveDuration,
    PrinterColumn,
    Timestamp,
    TopLevel,
    name_rules,
)

KIND: Final = "ABTest"
PLURAL: Final = "abtests"

# --- condition types ----------------------------------------------------------------------------------------
ARMS_READY: Final = "ArmsReady"
GRAPH_READY: Final = "GraphReady"
METRICS_AVAILABLE: Final = "MetricsAvailable"
CONCLUDED: Final = "Concluded"
PROMOTED: Final = "Promoted"
HEADERS_PROPAGATED: Final = "HeadersPropagated"
"""Whether KServe's router forwards the arms' API key (controllers/abtest/router.py `forwards`)."""
TREATMENT_ROUTED_AWAY: Final = "TreatmentRoutedAway"
"""Concluded: every router pod runs the control-only graph (its lastTransitionTime: since when)."""
TREATMENT_RELEASED: Final = "TreatmentReleased"
"""Concluded: routed away for the router's drain time; the treatment may now be deleted."""

CONDITIONS = ConditionSet(required=(ARMS_READY, GRAPH_READY, METRICS_AVAILABLE),
                          announced=(ARMS_READY, GRAPH_READY, METRICS_AVAILABLE, READY))
"""Before the test starts Ready needs the first two, once concluded only GraphReady. Concluded and Promoted
get Events of their own."""

# --- reasons --------------------------------------------------------------------------------------------------
ARM_NOT_READY: Final = "ArmNotReady"
KEY_FORWARDED: Final = "KeyForwarded"
NO_KEYS_REQUIRED: Final = "NoKeysRequired"
KEY_NOT_FORWARDED: Final = "KeyNotForwarded"
ROUTER_SWITCHING: Final = "RouterSwitching"
ROUTER_SWITCHED: Final = "RouterSwitched"
DRAINING: Final = "Draining"
RELEASED: Final = "Released"
IDENTICAL_ARMS: Final = "IdenticalArms"
VERSION_CHANGED: Final = "VersionChanged"
GRAPH_FAILED: Final = "InferenceGraphFailed"
GRAPH_MISSING: Final = "InferenceGraphMissing"
GRAPH_PENDING: Final = "InferenceGraphPending"
GRAPH_IS_READY: Final = "InferenceGraphReady"
GRAPH_NOT_READY: Final = "InferenceGraphNotReady"
INVALID_METRIC: Final = "InvalidMetric"
CONTROL_KEPT: Final = "ControlKept"
PROMOTION_DISABLED: Final = "PromotionDisabled"
PROMOTION_FAILED: Final = "PromotionFailed"
ALIAS_MOVED: Final = "AliasMoved"
VERSION_PINNED: Final = "VersionPinned"
PROMOTION_RECOMMENDED: Final = "PromotionRecommended"
"""A winner against a control that pins a version, without `onConclusion.pinVersion`: the change is left to
Git (status.recommendation says which); also the Event's reason."""

# --- event reasons -------------------------------------------------------------------------------------------
GRAPH_CREATED: Final = "InferenceGraphCreated"
STARTED: Final = "ABTestStarted"
CONCLUDED_EVENT: Final = "ABTestConcluded"
PROMOTED_EVENT: Final = "Promoted"
NOT_PROMOTED_EVENT: Final = "NotPromoted"

Decision = Literal["TreatmentBetter", "ControlBetter", "NoDifference", "NonInferior", "Inconclusive"]
"""The sequential test's decision (`stats.sequential.Decision` is the same Literal)."""
WINNING: Final[tuple[Decision, ...]] = ("TreatmentBetter", "NonInferior")
"""Decisions under which a treatment is promoted."""
CONTROL_BETTER: Final = "ControlBetter"

Phase = Literal["Pending", "Running", "Concluded", "Stopped", "Failed"]
PHASE_PENDING: Final = "Pending"
PHASE_RUNNING: Final = "Running"
PHASE_CONCLUDED: Final = "Concluded"
PHASE_FAILED: Final = "Failed"


class ArmRef(ApiModel):
    """One arm of an A/B test."""

    model_deployment: DeploymentName = Field(description="Name of a ModelDeployment in the same namespace.")


class TrafficSplit(ApiModel):
    """How traffic is divided between the arms."""

    treatment_percent: int = Field(default=50, ge=1, le=99, description="Share of traffic sent to the treatment.")


class MetricSpec(ApiModel):
    """The metric the arms are compared on."""

    name: str = Field(default="accuracy", min_length=1, max_length=128, description="Metric name.")
    source: Literal["feedback", "promql"] = Field(
        default="feedback", description="feedback: ground truth sent to /feedback; promql: a Prometheus query."
    )
    promql: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="PromQL query giving the metric per arm, required when source is promql; may use the "
        "{arm_version} and {arm_model} template fields, filled in per arm.",
    )
    kind: Literal["proportion", "mean"] = Field(
        default="proportion", description="Whether the metric is a proportion (0..1 outcomes) or a mean."
    )
    higher_is_better: bool = Field(default=True, description="Whether larger metric values are better.")

    __cel_rules__ = (
        CelRule(
            rule="(self.source == 'promql') == has(self.promql)",
            message="promql must be set when source is promql, and only then",
            check=lambda m: (m.source == "promql") == (m.promql is not None),
            field_path=".promql",
        ),
    )


class StatisticsSpec(ApiModel):
    """The sequential test that decides the A/B test."""

    method: Literal["msprt"] = Field(
        default="msprt", description="Mixture sequential probability ratio test (always-valid p-values)."
    )
    alpha: float = Field(default=0.05, gt=0, le=0.5, description="False-positive rate of the decision.")
    minimum_detectable_effect: float = Field(
        default=0.02, gt=0, le=1, description="Smallest difference worth detecting; tunes the mixture."
    )
    min_samples_per_arm: int = Field(default=100, ge=1, description="Samples per arm before any decision.")
    max_samples_per_arm: int = Field(
        default=20000, ge=2, description="Samples per arm after which the test concludes either way."
    )
    interval: PositiveDuration = Field(default="1m", description="How often the test is evaluated.")

    __cel_rules__ = (
        CelRule(
            rule="self.minSamplesPerArm <= self.maxSamplesPerArm",
            message="minSamplesPerArm must be less than or equal to maxSamplesPerArm",
            check=lambda m: m.min_samples_per_arm <= m.max_samples_per_arm,
            field_path=".minSamplesPerArm",
        ),
    )


class ConclusionSpec(ApiModel):
    """What happens when the test concludes."""

    promote: bool = Field(
        default=False, description="Promote a winning treatment: move the control's MLflow alias to the "
        "treatment's model version. A control that pins a version instead gets status.recommendation and an "
        "Event saying what to change in Git, unless pinVersion is true."
    )
    pin_version: bool = Field(
        default=False, description="Let the operator patch the control ModelDeployment's spec.model to the "
        "winning version when the control pins a version (no alias). Off by default: a GitOps tool that owns "
        "the ModelDeployment (ArgoCD with self-heal) would revert the edit, so the operator only recommends it."
    )


Hypothesis = Literal["superiority", "non-inferiority"]
HYPOTHESIS_DESCRIPTION = "superiority: the treatment must be better; non-inferiority: not worse by the margin."
MARGIN_DESCRIPTION = "How much worse the treatment may be under the non-inferiority hypothesis."


class ABTestSpec(ApiModel):
    """The desired state of an ABTest: two ModelDeployments, one traffic split, one sequential decision."""

    control: ArmRef = Field(description="The current model.")
    treatment: ArmRef = Field(description="The challenger.")
    traffic_split: TrafficSplit = Field(default_factory=TrafficSplit, description="Traffic split.")
    metric: MetricSpec = Field(default_factory=MetricSpec, description="Metric compared.")
    hypothesis: Hypothesis = Field(default="superiority", description=HYPOTHESIS_DESCRIPTION)
    non_inferiority_margin: float = Field(default=0.02, ge=0, le=1, description=MARGIN_DESCRIPTION)
    statistics: StatisticsSpec = Field(default_factory=StatisticsSpec, description="The sequential test.")
    max_duration: PositiveDuration = Field(default="24h", description="Longest the test runs before concluding.")
    on_conclusion: ConclusionSpec = Field(default_factory=ConclusionSpec, description="Action on conclusion.")

    __cel_rules__ = (
        CelRule(
            rule="self.control.modelDeployment != self.treatment.modelDeployment",
            message="treatment must name a different ModelDeployment than control",
            check=lambda m: m.control.model_deployment != m.treatment.model_deployment,
            field_path=".treatment.modelDeployment",
        ),
    )


class ArmSamples(ApiModel):
    """Samples collected per arm."""

    control: int = Field(default=0, ge=0, description="Samples of the control.")
    treatment: int = Field(default=0, ge=0, description="Samples of the treatment.")


class Estimates(ApiModel):
    """Metric estimates per arm and their difference."""

    control: float | None = Field(default=None, description="Metric of the control.")
    treatment: float | None = Field(default=None, description="Metric of the treatment.")
    difference: float | None = Field(default=None, description="treatment minus control.")
    confidence_sequence: list[float] | None = Field(
        default=None, min_length=2, max_length=2, description="Always-valid [low, high] bounds of the difference."
    )


class ArmVersions(ApiModel):
    """The model version each arm served when the test started: the data compared is theirs."""

    control: str = Field(description="Model version of the control.")
    treatment: str = Field(description="Model version of the treatment.")


class Recommendation(ApiModel):
    """A promotion the operator leaves to whoever owns the ModelDeployment's spec (Git): what to set, and why."""

    model_deployment: str = Field(description="The ModelDeployment whose spec.model is to change.")
    model: str = Field(description="Registered model name to set as spec.model.name.")
    version: str = Field(description="Model version to set as spec.model.version.")
    reason: str = Field(description="Why: the decision and the data behind it.")


RETRY_PROMOTION = (PROMOTION_FAILED, MODEL_DEPLOYMENT_NOT_FOUND)
"""ABTest Promoted reasons after which promotion is tried again at the next reconciliation."""


class ABTestStatus(ApiModel):
    """The observed state of an ABTest."""

    phase: Phase | None = Field(
        default=None, description="Summary of the test's state."
    )
    observed_generation: int | None = Field(default=None, ge=0, description="Last metadata.generation acted on.")
    url: str | None = Field(default=None, description="URL of the split endpoint.")
    inference_graph: str | None = Field(default=None, description="Name of the KServe InferenceGraph.")
    model_versions: ArmVersions | None = Field(default=None, description="Model versions compared.")
    samples: ArmSamples | None = Field(default=None, description="Samples per arm.")
    estimates: Estimates | None = Field(default=None, description="Metric estimates.")
    always_valid_p_value: float | None = Field(
        default=None, ge=0, le=1, description="p-value that stays valid under continuous monitoring."
    )
    decision: Decision | None = Field(
        default=None, description="The decision, once concluded."
    )
    started_at: Timestamp | None = Field(default=None, description="When traffic was first split.")
    evaluated_at: Timestamp | None = Field(default=None, description="When the test was last evaluated.")
    concluded_at: Timestamp | None = Field(default=None, description="When the test concluded.")
    recommendation: Recommendation | None = Field(
        default=None, description="The promotion to make in Git, when the control pins a version and "
        "onConclusion.pinVersion is false."
    )
    conditions: Conditions = Field(default_factory=list, description="Current conditions.")


class ABTest(TopLevel):
    """ABTest splits traffic between two ModelDeployments and decides, with an always-valid sequential test,
    whether the treatment is better (or not worse) than the control."""

    plural = "abtests"
    short_names = ("abt",)
    printer_columns = (
        PrinterColumn("Control", "string", ".spec.control.modelDeployment", "Control ModelDeployment."),
        PrinterColumn("Treatment", "string", ".spec.treatment.modelDeployment", "Treatment ModelDeployment."),
        PrinterColumn("Split", "integer", ".spec.trafficSplit.treatmentPercent", "Percent to the treatment."),
        PrinterColumn("Samples", "integer", ".status.samples.treatment", "Samples of the treatment."),
        PrinterColumn("P", "number", ".status.alwaysValidPValue", "Always-valid p-value."),
        PrinterColumn("Decision", "string", ".status.decision", "Decision, once concluded."),
        AGE,
    )
    __cel_rules__ = name_rules("ABTest")

    api_version: ApiVersion = Field(description=API_VERSION_DESCRIPTION)
    kind: Literal["ABTest"] = Field(description="The kind, ABTest.")
    spec: ABTestSpec = Field(description="Desired state.")
    status: ABTestStatus | None = Field(default=None, description="Observed state.")

