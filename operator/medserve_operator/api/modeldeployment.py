"""ModelDeployment: one MLflow model version served by KServe; its spec, status, conditions and reasons."""

from __future__ import annotations

from typing import Annotated, Final, Literal, get_args

from pydantic import Field

from medserve_operator.api.common import (
    AGE,
    API_VERSION_DESCRIPTION,
    DNS1123_SUBDOMAIN,
    MLFLOW_MODEL_NAME,
    MODEL_ALIAS,
    MODEL_VERSION,
    READY,
    SECRET_KEY,
    ApiModel,
    ApiVersion,
    CelRule,
    Conditions,
    ConditionSet,
    Duration,
    LocalObjectReference,
    PositiveDuration,
    PrinterColumn,
    Quantity,
    ResourceRequirements,
    SecretKeyRef,
    Timestamp,
    TopLevel,
    name_rules,
)

KIND: Final = "ModelDeployment"
PLURAL: Final = "modeldeployments"

# --- condition types ----------------------------------------------------------------------------------------
MODEL_RESOLVED: Final = "ModelResolved"
INFERENCE_SERVICE_READY: Final = "InferenceServiceReady"
DRIFT_DETECTED: Final = "DriftDetected"
"""Reported, never held against Ready (the model still answers)."""
DEGRADED: Final = "Degraded"
"""Accuracy from feedback below `monitoring.alerts.minAccuracy`; holds Ready back."""
AUDIT_DURABLE: Final = "AuditDurable"
"""Whether audit records outlive the pod (PostgreSQL with a persistent spool); reported, never held against
Ready (the model still answers, and every answer is still audited)."""

CONDITIONS = ConditionSet(required=(MODEL_RESOLVED, INFERENCE_SERVICE_READY), negative=(DEGRADED, DRIFT_DETECTED))
"""DriftDetected is negative for Events (turning True is a Warning) but not required by Ready."""
READY_NEGATIVE: Final = (DEGRADED,)
"""The negative conditions that hold Ready back (DriftDetected does not)."""

# KServe's own condition types on an InferenceService (pkg/apis/serving/v1beta1/inference_service_status.go).
KSERVE_PREDICTOR_READY: Final = "PredictorReady"
KSERVE_INGRESS_READY: Final = "IngressReady"
KSERVE_LATEST_DEPLOYMENT_READY: Final = "LatestDeploymentReady"
KSERVE_CANARY_READY: Final = "CanaryPredictorReady"

# --- reasons --------------------------------------------------------------------------------------------------
RESOLVED: Final = "Resolved"
ISVC_READY: Final = "InferenceServiceReady"
ISVC_PENDING: Final = "InferenceServicePending"
ISVC_UPDATING: Final = "InferenceServiceUpdating"
ISVC_NOT_READY: Final = "InferenceServiceNotReady"
ISVC_MISSING: Final = "InferenceServiceMissing"
ISVC_FAILED: Final = "InferenceServiceFailed"
"""The InferenceService could not be written (the API server refused it); the operator retries."""
ISVC_UNSUPPORTED: Final = "UnsupportedInMode"
"""The spec asks for something the InferenceService's deployment mode cannot do (a scaling metric the HPA
does not know, a change of mode KServe refuses); nothing is written until the spec changes."""
DRIFTED: Final = "DriftDetected"
NO_DRIFT: Final = "NoDrift"
INSUFFICIENT_DATA: Final = "InsufficientData"
INSUFFICIENT_FEEDBACK: Final = "InsufficientFeedback"
LOW_ACCURACY: Final = "LowAccuracy"
ACCURACY_OK: Final = "AccuracyOK"
MONITORING_FAILED: Final = "MonitoringFailed"
INVALID_DRIFT_DATA: Final = "InvalidDriftData"
AUDIT_PERSISTENT: Final = "PersistentSpool"
SPOOL_NOT_PERSISTENT: Final = "SpoolNotPersistent"
SPOOL_CLAIM_FAILED: Final = "SpoolClaimFailed"
AUDIT_IN_POD: Final = "AuditLogInPod"
AUDIT_DISABLED: Final = "AuditDisabled"

# --- event reasons -------------------------------------------------------------------------------------------
ROLLOUT_STARTED: Final = "RolloutStarted"
ROLLOUT_PROMOTED: Final = "RolloutPromoted"
"""The canary served its share (for rollout.canaryDuration); it is given all traffic."""
ROLLOUT_COMPLETE: Final = "RolloutComplete"
"""KServe reports the new version serving all traffic."""
ISVC_CREATED: Final = "InferenceServiceCreated"

DeploymentMode = Literal["Serverless", "Standard"]
"""How KServe runs the predictor: Serverless (a Knative Service, scale to zero, revisions) or Standard (a
Deployment with an HPA; KServe's former RawDeployment)."""
DEPLOYMENT_MODES: Final[tuple[str, ...]] = get_args(DeploymentMode)

Phase = Literal["Pending", "Resolving", "Deploying", "Ready", "Degraded", "Failed"]
PHASE_RESOLVING: Final = "Resolving"
PHASE_DEPLOYING: Final = "Deploying"
PHASE_READY: Final = READY
PHASE_DEGRADED: Final = DEGRADED
PHASE_FAILED: Final = "Failed"


class ModelRef(ApiModel):
    """Which MLflow registered model to serve: a fixed version, or an alias the operator follows."""

    name: str = Field(pattern=MLFLOW_MODEL_NAME, description="MLflow registered model name.")
    version: str | None = Field(
        default=None, pattern=MODEL_VERSION, description='Model version to serve, e.g. "3". Exclusive with alias.'
    )
    alias: str | None = Field(
        default=None,
        pattern=MODEL_ALIAS,
        description="MLflow alias (e.g. champion) resolved to an immutable version, pinned in status.model "
        "and re-resolved every monitoring.interval. Exclusive with version.",
    )

    __cel_rules__ = (
        CelRule(
            rule="has(self.version) != has(self.alias)",
            message="exactly one of version or alias must be set",
            check=lambda m: (m.version is None) != (m.alias is None),
        ),
    )


class BatchingSpec(ApiModel):
    """Server-side request batching of the model runtime."""

    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Largest batch the runtime forms.")
    max_latency_ms: int = Field(
        default=5, ge=0, le=1000, description="Longest a request waits for a batch to fill, in milliseconds."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, passed through to the predictor's pods as is."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default).")
    value: str | None = Field(default=None, max_length=63, description="Taint value, for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class RuntimeSpec(ApiModel):
    """How the model runtime container runs."""

    deployment_mode: DeploymentMode | None = Field(
        default=None,
        description="KServe deployment mode: Serverless (Knative) or Standard (Deployment and HPA); unset "
        "uses the operator's default. KServe refuses to change it on an existing InferenceService.",
    )

    image: str = Field(default="", max_length=512, description='Runtime image; "" uses the operator\'s default.')
    protocol: Literal["v1", "v2"] = Field(default="v2", description="KServe inference protocol.")
    device: Literal["cpu", "gpu"] = Field(default="cpu", description="Where the model runs.")
    optimization: Literal["none", "dynamic-int8"] = Field(
        default="none", description="Inference optimisation applied when the model is loaded."
    )
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Request batching.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Compute resources of the runtime container."
    )
    service_account_name: str | None = Field(
        default=None, pattern=DNS1123_SUBDOMAIN, max_length=253,
        description="ServiceAccount of the runtime's pods: its cloud identity, and the storage credentials "
        "KServe's storage initializer reads from it.",
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, description="Secrets to pull the runtime image from a private registry."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None,
        description="Node labels the runtime's pods must run on (Serverless: needs Knative's "
        "kubernetes.podspec-nodeselector).",
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        description="Taints the runtime's pods tolerate, e.g. of GPU nodes (Serverless: needs Knative's "
        "kubernetes.podspec-tolerations).",
    )


class ScalingSpec(ApiModel):
    """Autoscaling of the predictor."""

    min_replicas: int = Field(default=1, ge=0, le=100, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(default=3, ge=1, le=1000, description="Most replicas.")
    metric: Literal["concurrency", "rps", "cpu", "memory"] | None = Field(
        default=None, description="Metric the autoscaler tracks. Unset: concurrency in Serverless mode (Knative's "
        "autoscaler), cpu in Standard mode (the HPA); Standard takes only cpu and memory."
    )
    target: int | None = Field(
        default=None, ge=1, le=100000, description="Target value of the metric per replica (cpu and memory: "
        "percent of the request). Unset: 8 for concurrency, else KServe's and Knative's own default (cpu and "
        "memory 80%, rps 200)."
    )

    __cel_rules__ = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            check=lambda m: m.min_replicas <= m.max_replicas,
            field_path=".minReplicas",
        ),
    )


class RolloutSpec(ApiModel):
    """How a new model version is rolled out."""

    canary_traffic_percent: int = Field(
        default=10,
        ge=0,
        le=100,
        description="Share of traffic the new version gets first when the resolved version changes; "
        "0 switches at once.",
    )
    canary_duration: Duration = Field(
        default="0s",
        description="How long the canary serves its share, once KServe reports it serving, before the new "
        "version takes all traffic; 0s promotes it as soon as it serves.",
    )


class DriftSpec(ApiModel):
    """Data drift detection on the model's input features."""

    enabled: bool = Field(default=True, description="Whether drift is evaluated.")
    statistic: Literal["psi", "ks", "chi2", "js"] = Field(default="psi", description="Drift statistic.")
    threshold: float = Field(
        default=0.05,
        ge=0,
        le=10,
        description="Practical-significance floor: a feature drifts only if its score exceeds this AND its "
        "corrected p-value is at most alpha (the test, not the floor, controls false alarms).",
    )
    alpha: float = Field(
        default=0.001,
        gt=0,
        le=0.5,
        description="Per-window false-alarm rate, corrected over features (Bonferroni/Benjamini-Hochberg).",
    )
    window: PositiveDuration = Field(default="1h", description="Window of recent traffic compared to reference.")
    min_samples: int = Field(default=200, ge=1, description="Fewest samples in a window before drift is judged.")
    features: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default=[], description="Features to monitor; empty means all monitored features."
    )


class AlertsSpec(ApiModel):
    """Service-level alert thresholds."""

    latency_p95_ms: int | None = Field(default=None, ge=1, description="Alert when p95 latency exceeds this (ms).")
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Alert when accuracy from feedback falls below this."
    )


class MonitoringSpec(ApiModel):
    """What the operator watches after the model is deployed."""

    interval: PositiveDuration = Field(
        default="5m", description="How often the operator re-resolves an alias and evaluates drift."
    )
    drift: DriftSpec = Field(default_factory=DriftSpec, description="Drift detection.")
    alerts: AlertsSpec = Field(default_factory=AlertsSpec, description="Alert thresholds.")


class AuditDsnSecretRef(SecretKeyRef):
    """The Secret key holding the audit database's PostgreSQL URL, password included."""

    key: str = Field(default="dsn", pattern=SECRET_KEY,
                     min_length=1, max_length=253, description="The Secret's key holding the URL.")


class AuditKeySecretRef(SecretKeyRef):
    """The Secret key holding the HMAC key of the audit chains."""

    key: str = Field(default="key", pattern=SECRET_KEY,
                     min_length=1, max_length=253, description="The Secret's key holding the HMAC key.")


class RedisSecretRef(SecretKeyRef):
    """The Secret key holding the URL of the Redis the replicas share."""

    key: str = Field(default="url", pattern=SECRET_KEY,
                     min_length=1, max_length=253, description="The Secret's key holding the redis:// URL.")


class AuditSpoolSpec(ApiModel):
    """The volume where audit records wait, fsynced, while PostgreSQL is unreachable: a ReadWriteMany
    PersistentVolumeClaim `<name>-audit-spool` the operator creates, shared by the replicas, so that a
    replica deleted during an outage leaves its records to the others to write."""

    storage_class_name: str | None = Field(
        default=None, pattern=DNS1123_SUBDOMAIN, max_length=253,
        description="Storage class of the claim (one that offers ReadWriteMany); unset: the operator's "
        "default, else the cluster's.",
    )
    size: Quantity | None = Field(default=None, description="Requested size; unset: the operator's default.")


class AuditSpec(ApiModel):
    """Where the audit records go. With `dsnSecretRef` they go to PostgreSQL (with a spool for outages),
    else to a file in the pod, which does not outlive it."""

    dsn_secret_ref: AuditDsnSecretRef | None = Field(
        default=None,
        description="Secret key holding the PostgreSQL URL; unset: the operator's default, else a file in the pod.",
    )
    key_secret_ref: AuditKeySecretRef | None = Field(
        default=None,
        description="Secret key holding the chains' HMAC key; unset: the operator's default, else unkeyed "
        "(an edit with the chain recomputed is then not detected).",
    )
    spool: AuditSpoolSpec | None = Field(
        default=None,
        description="Persistent spool for outages of the database; unset: the operator's default, else an "
        "emptyDir (records spooled in an outage are then lost with the pod, and AuditDurable says so).",
    )


class SecuritySpec(ApiModel):
    """Access control and request limits of the inference endpoint."""

    api_key_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret whose keys.json key holds the hashed API keys; without it the endpoint is open.",
    )
    rate_limit_per_minute: int = Field(
        default=100, ge=1, le=1000000,
        description="Requests (a batch: one per record) per minute per key, for the deployment as a whole: "
        "shared through Redis (redisSecretRef), else each replica allows its share of scaling.maxReplicas.",
    )
    redis_secret_ref: RedisSecretRef | None = Field(
        default=None,
        description="Secret key holding the Redis URL the replicas share rate limits through; unset: the "
        "operator's default, else per-replica limits.",
    )
    audit_log: bool = Field(default=True, description="Write one audit record per request (false: none at all).")
    audit: AuditSpec | None = Field(
        default=None, description="Where the audit records go; unset: the operator's defaults."
    )
    max_request_bytes: int = Field(
        default=1048576, ge=1024, le=67108864, description="Largest request body accepted, in bytes."
    )

    __cel_rules__ = (
        CelRule(
            rule="self.auditLog || !has(self.audit)",
            message="audit settings need auditLog: true",
            check=lambda m: m.audit_log or m.audit is None,
            field_path=".audit",
        ),
    )


class ModelDeploymentSpec(ApiModel):
    """The desired state of a ModelDeployment: one MLflow model version, served by KServe."""

    model: ModelRef = Field(description="The MLflow model to serve.")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="The model runtime.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout of new versions.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Monitoring and drift.")
    security: SecuritySpec = Field(default_factory=SecuritySpec, description="Security of the endpoint.")


class ServedModel(ApiModel):
    """A model version as resolved in the MLflow registry, as status shows it (`status.model`)."""

    name: str = Field(description="MLflow registered model name.")
    version: str = Field(description="The immutable model version.")
    alias: str | None = Field(default=None, description="The alias it was resolved from, if any.")
    source: str | None = Field(default=None, description="Where the model's artifacts are stored.")
    uri: str | None = Field(default=None, description="MLflow model URI, models:/NAME/VERSION.")
    run_id: str | None = Field(default=None, description="MLflow run that produced the version.")
    resolved_at: Timestamp | None = Field(default=None, description="When the version was resolved.")


class DriftStatus(ApiModel):
    """The latest drift evaluation."""

    statistic: str | None = Field(default=None, description="Statistic used.")
    score: float | None = Field(default=None, description="Largest per-feature score.")
    p_value: float | None = Field(default=None, description="Smallest corrected p-value over features.")
    drifted_features: list[str] = Field(default_factory=list, description="Features judged drifted.")
    window: str | None = Field(default=None, description="Window evaluated.")
    evaluated_at: Timestamp | None = Field(default=None, description="When drift was evaluated.")
    samples: int | None = Field(default=None, ge=0, description="Samples in the window.")


class RolloutStatus(ApiModel):
    """A rollout in progress: where it stands, as the operator read it from KServe."""

    stage: Literal["Canary", "Promoting"] = Field(
        description="Canary: the new version gets rollout.canaryTrafficPercent; Promoting: it was given all "
        "traffic and the operator waits for KServe to report it serving all of it."
    )
    canary_serving_since: Timestamp | None = Field(
        default=None, description="When KServe first reported the canary serving its share."
    )


class ModelDeploymentStatus(ApiModel):
    """The observed state of a ModelDeployment."""

    phase: Phase | None = Field(
        default=None, description="Summary of the deployment's state."
    )
    observed_generation: int | None = Field(default=None, ge=0, description="Last metadata.generation acted on.")
    model: ServedModel | None = Field(default=None, description="The model version being served.")
    previous_model: ServedModel | None = Field(
        default=None, description="The version the canary replaces, while a rollout is in progress."
    )
    rollout: RolloutStatus | None = Field(default=None, description="The rollout in progress, if any.")
    inference_service: str | None = Field(default=None, description="Name of the KServe InferenceService.")
    deployment_mode: DeploymentMode | None = Field(
        default=None, description="The deployment mode the InferenceService was created in."
    )
    url: str | None = Field(default=None, description="URL of the inference endpoint.")
    drift: DriftStatus | None = Field(default=None, description="Latest drift evaluation.")
    conditions: Conditions = Field(default_factory=list, description="Current conditions.")


class ModelDeployment(TopLevel):
    """ModelDeployment serves one version of an MLflow registered model with KServe, following an alias if
    asked, with autoscaling, canary rollout, drift monitoring and API-key security."""

    plural = "modeldeployments"
    short_names = ("md",)
    printer_columns = (
        PrinterColumn("Model", "string", ".spec.model.name", "MLflow registered model."),
        PrinterColumn("Version", "string", ".status.model.version", "Model version being served."),
        PrinterColumn("Phase", "string", ".status.phase", "Summary of the state."),
        PrinterColumn("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready condition."),
        PrinterColumn("Drift", "number", ".status.drift.score", "Latest drift score."),
        PrinterColumn("URL", "string", ".status.url", "Inference endpoint."),
        AGE,
    )
    __cel_rules__ = name_rules("ModelDeployment")

    api_version: ApiVersion = Field(description=API_VERSION_DESCRIPTION)
    kind: Literal["ModelDeployment"] = Field(description="The kind, ModelDeployment.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")

