"""RetrainPolicy: when a ModelDeployment's model is retrained, how, and how the new version is promoted;
its spec, status, conditions and reasons."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field

from medserve_operator.api.abtest import (
    HYPOTHESIS_DESCRIPTION,
    MARGIN_DESCRIPTION,
    Hypothesis,
    MetricSpec,
    Recommendation,
    StatisticsSpec,
    TrafficSplit,
)
from medserve_operator.api.common import (
    AGE,
    API_VERSION_DESCRIPTION,
    READY,
    ApiModel,
    ApiVersion,
    CelRule,
    Conditions,
    ConditionSet,
    CronSchedule,
    DeploymentName,
    Duration,
    EnvVar,
    PositiveDuration,
    PrinterColumn,
    ResourceRequirements,
    Timestamp,
    TimeZone,
    TopLevel,
    name_rules,
    unique_by,
)

KIND: Final = "RetrainPolicy"
PLURAL: Final = "retrainpolicies"

# --- condition types ----------------------------------------------------------------------------------------
SCHEDULED: Final = "Scheduled"
TRIGGERS_READY: Final = "TriggersReady"
RETRAINING: Final = "Retraining"
COOLING_DOWN: Final = "CoolingDown"
PROMOTED: Final = "Promoted"

CONDITIONS = ConditionSet(required=(SCHEDULED, TRIGGERS_READY), announced=(SCHEDULED, TRIGGERS_READY, READY))
"""Without a schedule Ready needs TriggersReady only, with a schedule and no triggers Scheduled only.
Retraining, CoolingDown and Promoted get Events of their own that say more (which Job, which version)."""

# --- reasons --------------------------------------------------------------------------------------------------
NO_SCHEDULE: Final = "NoSchedule"
CRONJOB_FAILED: Final = "CronJobFailed"
CRONJOB_READY: Final = "CronJobReady"
NO_TRIGGERS: Final = "NoTriggers"
EVALUATED: Final = "Evaluated"
NOT_EVALUATED: Final = "NotEvaluated"
UNSUPPORTED_METRIC: Final = "UnsupportedMetric"
JOB_RUNNING: Final = "JobRunning"
JOB_ERROR: Final = "JobError"
JOB_SUCCEEDED: Final = "JobSucceeded"
JOB_FAILED: Final = "JobFailed"
IDLE: Final = "Idle"
COOLDOWN: Final = "Cooldown"
COOLDOWN_OVER: Final = "CooldownOver"
NEVER_TRIGGERED: Final = "NeverTriggered"
MANUAL_PROMOTION: Final = "ManualPromotion"
DIRECT_PROMOTION: Final = "DirectPromotion"
ALIAS_MOVED: Final = "AliasMoved"
PROMOTION_RECOMMENDED: Final = "PromotionRecommended"
"""A version to promote into a ModelDeployment that pins one, without `promotion.pinVersion`: the change is left
to Git (status.recommendation says which); also the Event's reason."""
ABTEST_RUNNING: Final = "ABTestRunning"
ABTEST_FAILED: Final = "ABTestFailed"
ABTEST_DELETED: Final = "ABTestDeleted"
ABTEST_WON: Final = "ABTestWon"
ABTEST_LOST: Final = "ABTestLost"
ABTEST_INCONCLUSIVE: Final = "ABTestInconclusive"

# --- event reasons -------------------------------------------------------------------------------------------
CRONJOB_CREATED: Final = "CronJobCreated"
CRONJOB_DELETED: Final = "CronJobDeleted"
RETRAINING_TRIGGERED: Final = "RetrainingTriggered"
RETRAINING_SUCCEEDED: Final = "RetrainingSucceeded"
RETRAINING_FAILED: Final = "RetrainingFailed"
NO_VERSION_REGISTERED: Final = "NoVersionRegistered"
NEW_VERSION_AVAILABLE: Final = "NewVersionAvailable"
PROMOTED_EVENT: Final = "Promoted"
NOT_PROMOTED_EVENT: Final = "NotPromoted"
ABTEST_STARTED: Final = "ABTestStarted"
CHALLENGER_REMOVED: Final = "ChallengerRemoved"

# --- what starts a job (status.lastTriggered.reason), and how it ends (status.lastJob.result) ---------------
TriggerReason = Literal["Schedule", "Drift", "Performance", "Query"]
SCHEDULE: Final = "Schedule"
DRIFT: Final = "Drift"
PERFORMANCE: Final = "Performance"
QUERY: Final = "Query"
JobOutcome = Literal["Succeeded", "Failed"]
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"


class DriftTrigger(ApiModel):
    """Retrain when the ModelDeployment reports drift."""

    enabled: bool = Field(default=False, description="Retrain when the DriftDetected condition turns True.")


class PerformanceTrigger(ApiModel):
    """Retrain when a feedback metric falls below a threshold."""

    metric: str = Field(default="accuracy", min_length=1, max_length=128, description="Metric from feedback.")
    below: float = Field(ge=0, le=1, description="Retrain when the metric falls below this.")
    window: PositiveDuration = Field(default="1h", description="Window the metric is computed over.")
    min_samples: int = Field(default=100, ge=1, description="Fewest feedback samples before judging.")


class QueryTrigger(ApiModel):
    """Retrain when a Prometheus query exceeds a threshold."""

    promql: str = Field(min_length=1, max_length=4096, description="PromQL query returning one number.")
    above: float = Field(description="Retrain when the query result exceeds this.")


class TriggersSpec(ApiModel):
    """Events that start a retraining job."""

    drift: DriftTrigger = Field(default_factory=DriftTrigger, description="Drift trigger.")
    performance: PerformanceTrigger | None = Field(default=None, description="Performance trigger.")
    query: QueryTrigger | None = Field(default=None, description="Prometheus query trigger.")


class JobTemplate(ApiModel):
    """The retraining job's container; it gets MLFLOW_TRACKING_URI, MEDSERVE_MODEL_NAME and
    MEDSERVE_TRIGGER_REASON and registers a new model version."""

    image: str = Field(min_length=1, max_length=512, description="Training image.")
    command: list[str] = Field(default=[], description="Entrypoint; empty uses the image's.")
    args: list[str] = Field(default=[], description="Arguments to the entrypoint.")
    env: Annotated[
        list[EnvVar],
        AfterValidator(unique_by("name")),
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = Field(default=[], description="Extra environment variables.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Compute resources of the training container."
    )
    backoff_limit: int = Field(default=2, ge=0, le=10, description="Retries before the job is marked failed.")
    active_deadline_seconds: int = Field(
        default=7200, ge=60, le=604800, description="Longest the job may run, in seconds."
    )
    ttl_seconds_after_finished: int = Field(
        default=86400, ge=0, description="How long a finished job is kept, in seconds."
    )


class ABTestTemplate(ApiModel):
    """The ABTest created to promote a retrained model: the ABTest spec without its arms."""

    traffic_split: TrafficSplit = Field(default_factory=TrafficSplit, description="Traffic split.")
    metric: MetricSpec = Field(default_factory=MetricSpec, description="Metric compared.")
    hypothesis: Hypothesis = Field(default="superiority", description=HYPOTHESIS_DESCRIPTION)
    non_inferiority_margin: float = Field(default=0.02, ge=0, le=1, description=MARGIN_DESCRIPTION)
    statistics: StatisticsSpec = Field(default_factory=StatisticsSpec, description="The sequential test.")
    max_duration: PositiveDuration = Field(default="24h", description="Longest the test runs before concluding.")


class PromotionSpec(ApiModel):
    """How a retrained model version reaches production."""

    strategy: Literal["manual", "direct", "abtest"] = Field(
        default="manual",
        description="manual: only register the version; direct: deploy it at once (move the "
        "ModelDeployment's alias; see pinVersion for one that pins a version); abtest: run an ABTest against the "
        "current version first.",
    )
    ab_test: ABTestTemplate = Field(default_factory=ABTestTemplate, description="The ABTest for strategy abtest.")
    pin_version: bool = Field(
        default=False, description="Let the operator patch the ModelDeployment's spec.model to the new version "
        "when it pins a version (no alias): strategy direct, and the ABTest of strategy abtest "
        "(its onConclusion.pinVersion). Off by default: a GitOps tool that owns the ModelDeployment (ArgoCD "
        "with self-heal) would revert the edit, so the operator records status.recommendation and an Event "
        "instead. A ModelDeployment that follows an MLflow alias gets the alias moved either way."
    )


class RetrainPolicySpec(ApiModel):
    """The desired state of a RetrainPolicy: when a model is retrained, how, and how the result is promoted."""

    model_deployment: DeploymentName = Field(description="The ModelDeployment whose model is retrained.")
    schedule: CronSchedule | None = Field(
        default=None, description="Cron schedule (5 fields, or @hourly/@daily/@weekly/@monthly/@yearly)."
    )
    time_zone: TimeZone | None = Field(default=None, description="IANA time zone of the schedule; default UTC.")
    triggers: TriggersSpec = Field(default_factory=TriggersSpec, description="Event triggers.")
    cooldown: Duration = Field(default="6h", description="Least time between two retraining jobs.")
    job: JobTemplate = Field(description="The retraining job.")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec, description="Promotion of the new version.")

    __cel_rules__ = (
        CelRule(
            rule="has(self.schedule) || (has(self.triggers) && ((has(self.triggers.drift) && "
            "has(self.triggers.drift.enabled) && self.triggers.drift.enabled) || has(self.triggers.performance) "
            "|| has(self.triggers.query)))",
            message="at least one of schedule, triggers.drift.enabled, triggers.performance or triggers.query "
            "must be set",
            check=lambda m: (
                m.schedule is not None
                or m.triggers.drift.enabled
                or m.triggers.performance is not None
                or m.triggers.query is not None
            ),
        ),
        CelRule(
            rule="!has(self.timeZone) || has(self.schedule)",
            message="timeZone needs a schedule",
            check=lambda m: m.time_zone is None or m.schedule is not None,
            field_path=".timeZone",
        ),
    )


class TriggerRecord(ApiModel):
    """When and why retraining was last triggered."""

    time: Timestamp = Field(description="When.")
    reason: str = Field(description="Why: Schedule, Drift, Performance or Query.")


class ActiveJob(ApiModel):
    """The retraining job now running."""

    name: str = Field(description="Job name.")
    started_at: Timestamp | None = Field(default=None, description="When it started.")


class JobResult(ApiModel):
    """The outcome of the last finished retraining job."""

    name: str = Field(description="Job name.")
    result: JobOutcome = Field(description="Outcome.")
    reason: str | None = Field(default=None, description="Why it failed, or what it did.")
    model_version: str | None = Field(default=None, description="Model version it registered.")
    finished_at: Timestamp | None = Field(default=None, description="When it finished.")


class ABTestRecord(ApiModel):
    """The ABTest that decides whether a retrained version is promoted (promotion strategy abtest)."""

    name: str = Field(description="The ABTest.")
    challenger: str = Field(description="The ModelDeployment serving the new version during the test.")
    model_version: str = Field(description="The retrained model version under test.")
    decision: str | None = Field(default=None, description="The ABTest's decision, once concluded.")
    promoted: bool | None = Field(default=None, description="Whether the version was promoted, once decided.")


class RetrainPolicyStatus(ApiModel):
    """The observed state of a RetrainPolicy."""

    observed_generation: int | None = Field(default=None, ge=0, description="Last metadata.generation acted on.")
    last_triggered: TriggerRecord | None = Field(default=None, description="Last trigger.")
    active_job: ActiveJob | None = Field(default=None, description="Running job, if any.")
    last_job: JobResult | None = Field(default=None, description="Last finished job.")
    ab_test: ABTestRecord | None = Field(default=None, description="ABTest of the last retrained version.")
    recommendation: Recommendation | None = Field(
        default=None, description="The promotion to make in Git, when the ModelDeployment pins a version and "
        "promotion.pinVersion is false."
    )
    next_schedule_time: Timestamp | None = Field(default=None, description="Next scheduled run.")
    conditions: Conditions = Field(default_factory=list, description="Current conditions.")


class RetrainPolicy(TopLevel):
    """RetrainPolicy retrains a ModelDeployment's model on a schedule or when drift, performance or a
    Prometheus query says so, and promotes the new version manually, directly or through an ABTest."""

    plural = "retrainpolicies"
    short_names = ("rtp",)
    printer_columns = (
        PrinterColumn("Model", "string", ".spec.modelDeployment", "ModelDeployment retrained."),
        PrinterColumn("Schedule", "string", ".spec.schedule", "Cron schedule."),
        PrinterColumn("Last Trigger", "string", ".status.lastTriggered.reason", "Why it last triggered."),
        PrinterColumn("Active", "string", ".status.activeJob.name", "Running job."),
        PrinterColumn("Last Result", "string", ".status.lastJob.result", "Outcome of the last job."),
        AGE,
    )
    __cel_rules__ = name_rules("RetrainPolicy")

    api_version: ApiVersion = Field(description=API_VERSION_DESCRIPTION)
    kind: Literal["RetrainPolicy"] = Field(description="The kind, RetrainPolicy.")
    spec: RetrainPolicySpec = Field(description="Desired state.")
    status: RetrainPolicyStatus | None = Field(default=None, description="Observed state.")
