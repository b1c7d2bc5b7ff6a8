"""The medserve API (`medserve.io/v1alpha1`): pydantic models of ModelDeployment, ABTest and RetrainPolicy.

This module is the one source of truth for the three kinds. `medserve crds` generates the
CustomResourceDefinitions from these models, `medserve validate` checks manifests with them, and the
reconcilers parse every spec with `parse_spec`. Python attributes are snake_case; the YAML/JSON keys are
camelCase (the alias of every field).

Every cross-field rule is written once as a CEL expression (it goes into the CRD's
`x-kubernetes-validations`, so the API server enforces it) with its Python twin right next to it (a
callable over the validated model, run by pydantic), in each model's `__cel_rules__`. Defaults here are
the CRD's defaults too.

The module is pure: it imports pydantic, croniter and the standard library only (an import-linter
contract keeps it that way), so it can be used by the CLI, the operator and a future admission webhook.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Self

from croniter import croniter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError, field_validator
from pydantic import model_validator as _model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "ABTest",
    "ABTestSpec",
    "ABTestStatus",
    "ABTestTemplate",
    "ActiveJob",
    "AlertsSpec",
    "ArmRef",
    "ArmSamples",
    "BatchingSpec",
    "CelRule",
    "ConclusionSpec",
    "Condition",
    "DriftSpec",
    "DriftStatus",
    "DriftTrigger",
    "Duration",
    "EnvVar",
    "Estimates",
    "JobResult",
    "JobTemplate",
    "LocalObjectReference",
    "MetricSpec",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelRef",
    "MonitoringSpec",
    "PerformanceTrigger",
    "PositiveDuration",
    "PrinterColumn",
    "PromotionSpec",
    "QueryTrigger",
    "ResolvedModel",
    "ResourceRequirements",
    "RetrainPolicy",
    "RetrainPolicySpec",
    "RetrainPolicyStatus",
    "RolloutSpec",
    "RuntimeSpec",
    "ScalingSpec",
    "SecuritySpec",
    "SpecError",
    "StatisticsSpec",
    "TrafficSplit",
    "TriggerRecord",
    "TriggersSpec",
    "describe_error",
    "errors_from_validation",
    "parse_duration",
    "parse_object",
    "parse_spec",
]

GROUP = "medserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# --- patterns (RE2-, Rust- and ECMA-compatible: no look-around, so the CRD, pydantic and
# kube-apiserver all read them the same way) -------------------------------------------------------

DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
# Same grammar, but at least one non-zero number somewhere, so "0s" and "0h0m" are refused.
POSITIVE_DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))*0*[1-9][0-9]*(ms|s|m|h|d)([0-9]+(ms|s|m|h|d))*$"
MLFLOW_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MODEL_VERSION = r"^[1-9][0-9]*$"
MODEL_ALIAS = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
ENV_VAR_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Loose on purpose: the CRD can only check the shape; croniter checks the fields in Python.
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$"
TIME_ZONE_PATTERN = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

# What each pattern means, for error messages a person can act on.
PATTERN_HINTS: dict[str, str] = {
    DNS1035_LABEL: "must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter "
    "and ending with a letter or digit",
    DNS1123_SUBDOMAIN: "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'",
    DURATION_PATTERN: "must be a duration such as 90s, 5m or 1h30m (units ms, s, m, h, d)",
    POSITIVE_DURATION_PATTERN: "must be a positive duration such as 90s, 5m or 1h30m (units ms, s, m, h, d)",
    MLFLOW_MODEL_NAME: "must be an MLflow registered model name: letters, digits, '.', '_' or '-', "
    "starting with a letter or digit, at most 128 characters",
    MODEL_VERSION: 'must be a model version number written as a string, e.g. "3"',
    MODEL_ALIAS: "must be an MLflow alias: letters, digits, '_' or '-', starting with a letter or '_', "
    "at most 64 characters",
    CONDITION_REASON: "must be a CamelCase reason such as ModelNotFound",
    ENV_VAR_NAME: "must be an environment variable name: letters, digits, '-', '.', '_', not starting with a digit",
    CRON_PATTERN: "must be a 5-field cron expression or one of @hourly, @daily, @weekly, @monthly, @yearly",
    TIME_ZONE_PATTERN: "must be an IANA time zone name such as Europe/Berlin",
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 500m, 2, 1Gi or 512Mi",
}

# The longest metadata.name each kind allows: the objects derived from it must fit in 63 characters.
MAX_NAME_LENGTH: dict[str, int] = {"ModelDeployment": 45, "ABTest": 45, "RetrainPolicy": 40}


# --- durations -------------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")


def parse_duration(s: str) -> float:
    """Return the number of seconds in a duration such as "90s", "1h30m" or "250ms".

    Raises ValueError (naming the accepted units) when `s` is not a duration.
    """
    if not isinstance(s, str) or re.fullmatch(DURATION_PATTERN, s) is None:
        raise ValueError(f"{s!r} {PATTERN_HINTS[DURATION_PATTERN]}")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(s))


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=64)]
"""A duration: one or more `<number><unit>` with unit ms, s, m, h or d, e.g. "90s" or "1h30m"."""

PositiveDuration = Annotated[str, Field(pattern=POSITIVE_DURATION_PATTERN, max_length=64)]
"""A `Duration` greater than zero."""


# --- other validated scalar types --------------------------------------------------------------------


def _check_cron(value: str) -> str:
    # Kubernetes CronJobs take exactly five fields (or a macro); croniter alone would also take the
    # six- and seven-field forms with seconds and years.
    if value.startswith("@"):
        if value not in {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}:
            raise ValueError(f"unknown cron macro {value!r}; use @hourly, @daily, @weekly, @monthly or @yearly")
        return value
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron expression {value!r} has {len(fields)} fields; expected 5 (minute hour day-of-month month "
            "day-of-week)"
        )
    if not croniter.is_valid(value):
        raise ValueError(f"invalid cron expression {value!r}")
    return value


def _check_time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        # Without a time zone database there is nothing to check against; the pattern still applies.
        if zoneinfo.available_timezones():
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


def _check_quantity(value: object) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("quantity_type", "must be a quantity: a string such as 500m or 1Gi, or an integer")
    if isinstance(value, str) and re.fullmatch(QUANTITY_PATTERN, value) is None:
        raise PydanticCustomError("quantity", PATTERN_HINTS[QUANTITY_PATTERN])
    return value


def _unique_by(key: str) -> Callable[[list[Any]], list[Any]]:
    """An after-validator for `x-kubernetes-list-type: map` lists: the API server rejects duplicate keys."""

    def check(items: list[Any]) -> list[Any]:
        seen: set[object] = set()
        for item in items:
            value = getattr(item, key)
            if value in seen:
                raise ValueError(f"duplicate entries with {key} {value!r}")
            seen.add(value)
        return items

    return check


CronSchedule = Annotated[
    str,
    AfterValidator(_check_cron),
    Field(max_length=256, json_schema_extra={"pattern": CRON_PATTERN}),
]
TimeZone = Annotated[
    str,
    AfterValidator(_check_time_zone),
    Field(max_length=64, json_schema_extra={"pattern": TIME_ZONE_PATTERN}),
]
Quantity = Annotated[str | int, PlainValidator(_check_quantity)]
DeploymentName = Annotated[
    str, Field(pattern=DNS1035_LABEL, min_length=1, max_length=MAX_NAME_LENGTH["ModelDeployment"])
]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


# --- the base model and the CEL rules ------------------------------------------------------------------


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule: `rule` is CEL for the CRD, `check` its Python twin over the validated model.

    `field_path` (".minReplicas") says which field a violation is reported on, relative to the object the
    rule is attached to; None reports it on the object itself.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None


def _is_metadata_rule(rule: CelRule) -> bool:
    return (rule.field_path or "").startswith(".metadata.")


class PrinterColumn(NamedTuple):
    """One `additionalPrinterColumns` entry of a CRD."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


class ApiModel(BaseModel):
    """Base of every medserve API model: camelCase keys, unknown fields refused, CEL rules enforced."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    __cel_rules__: ClassVar[tuple[CelRule, ...]] = ()

    @_model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).__cel_rules__:
            if not _is_metadata_rule(rule) and not rule.check(self):
                raise PydanticCustomError("cel_rule", rule.message, {"field_path": rule.field_path or ""})
        return self


# --- shared types ---------------------------------------------------------------------------------------


class Condition(ApiModel):
    """A standard Kubernetes condition: one aspect of the object's state."""

    type: str = Field(min_length=1, max_length=316, description="Type of condition in CamelCase, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition.")
    reason: str = Field(
        pattern=CONDITION_REASON,
        min_length=1,
        max_length=1024,
        description="Machine-readable CamelCase reason for the condition's last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details of the transition.")
    last_transition_time: Timestamp = Field(
        description="When the condition last changed status (RFC 3339); it does not move when only the "
        "reason or message changes."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the condition was set for."
    )


Conditions = Annotated[
    list[Condition],
    AfterValidator(_unique_by("type")),
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
]


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: str = Field(
        pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253, description="Name of the referenced object."
    )


class ResourceRequirements(ApiModel):
    """Compute resources of a container, passed through to Kubernetes as is."""

    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum resources allowed, e.g. {cpu: '2', memory: 2Gi}."
    )
    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Resources reserved for scheduling, e.g. {cpu: 500m, memory: 1Gi}."
    )


class EnvVar(ApiModel):
    """An environment variable with a literal value."""

    name: str = Field(pattern=ENV_VAR_NAME, min_length=1, max_length=256, description="Variable name.")
    value: str = Field(default="", description="Variable value.")


# --- ModelDeployment -------------------------------------------------------------------------------------


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


class RuntimeSpec(ApiModel):
    """How the model runtime container runs."""

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


class ScalingSpec(ApiModel):
    """Autoscaling of the predictor."""

    min_replicas: int = Field(default=1, ge=0, le=100, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(default=3, ge=1, le=1000, description="Most replicas.")
    metric: Literal["concurrency", "rps", "cpu", "memory"] = Field(
        default="concurrency", description="Metric the autoscaler tracks."
    )
    target: int = Field(default=8, ge=1, le=100000, description="Target value of the metric per replica.")

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


class SecuritySpec(ApiModel):
    """Access control and request limits of the inference endpoint."""

    api_key_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret whose keys.json key holds the hashed API keys; without it the endpoint is open.",
    )
    rate_limit_per_minute: int = Field(default=100, ge=1, le=1000000, description="Requests per minute per key.")
    audit_log: bool = Field(default=True, description="Write one audit record per request.")
    max_request_bytes: int = Field(
        default=1048576, ge=1024, le=67108864, description="Largest request body accepted, in bytes."
    )


class ModelDeploymentSpec(ApiModel):
    """The desired state of a ModelDeployment: one MLflow model version, served by KServe."""

    model: ModelRef = Field(description="The MLflow model to serve.")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="The model runtime.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout of new versions.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Monitoring and drift.")
    security: SecuritySpec = Field(default_factory=SecuritySpec, description="Security of the endpoint.")


class ResolvedModel(ApiModel):
    """A model version as resolved in the MLflow registry."""

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


class ModelDeploymentStatus(ApiModel):
    """The observed state of a ModelDeployment."""

    phase: Literal["Pending", "Resolving", "Deploying", "Ready", "Degraded", "Failed"] | None = Field(
        default=None, description="Summary of the deployment's state."
    )
    observed_generation: int | None = Field(default=None, ge=0, description="Last metadata.generation acted on.")
    model: ResolvedModel | None = Field(default=None, description="The model version being served.")
    previous_model: ResolvedModel | None = Field(
        default=None, description="The version the canary replaces, while a rollout is in progress."
    )
    inference_service: str | None = Field(default=None, description="Name of the KServe InferenceService.")
    url: str | None = Field(default=None, description="URL of the inference endpoint.")
    drift: DriftStatus | None = Field(default=None, description="Latest drift evaluation.")
    conditions: Conditions = Field(default_factory=list, description="Current conditions.")


def _name_rules(kind: str) -> tuple[CelRule, ...]:
    """Root rules on metadata.name: a DNS-1035 label short enough for every object derived from it."""
    limit = MAX_NAME_LENGTH[kind]
    return (
        CelRule(
            rule=f"self.metadata.name.matches('{DNS1035_LABEL}')",
            message=f"metadata.name {PATTERN_HINTS[DNS1035_LABEL]}",
            check=lambda m: re.fullmatch(DNS1035_LABEL, str(m.metadata.get("name", "a"))) is not None,
            field_path=".metadata.name",
        ),
        CelRule(
            rule=f"self.metadata.name.size() <= {limit}",
            message=f"metadata.name must be at most {limit} characters: the names of the objects derived "
            "from it must fit in 63",
            check=lambda m: len(str(m.metadata.get("name", ""))) <= limit,
            field_path=".metadata.name",
        ),
    )


class _TopLevel(ApiModel):
    """Shared shape of the three kinds.

    The root CEL rules on metadata.name run as a field validator of `metadata`, so that a bad name is
    reported together with the spec's problems rather than only once the spec is valid.
    """

    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]

    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        name = metadata.get("name")
        if name is None and "generateName" not in metadata:
            raise PydanticCustomError("cel_rule", "metadata.name is required", {"field_path": ".name"})
        if name is not None and not isinstance(name, str):
            raise PydanticCustomError("cel_rule", "metadata.name must be a string", {"field_path": ".name"})
        subject = SimpleNamespace(metadata=metadata)
        for rule in cls.__cel_rules__:
            if _is_metadata_rule(rule) and not rule.check(subject):
                raise PydanticCustomError("cel_rule", rule.message, {"field_path": ".name"})
        return metadata


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since the object was created.")


class ModelDeployment(_TopLevel):
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
        _AGE,
    )
    __cel_rules__ = _name_rules("ModelDeployment")

    api_version: Literal["medserve.io/v1alpha1"] = Field(description="The API version, medserve.io/v1alpha1.")
    kind: Literal["ModelDeployment"] = Field(description="The kind, ModelDeployment.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")


# --- ABTest ----------------------------------------------------------------------------------------------


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
        "treatment's model version, or pin a control without an alias to it."
    )


Hypothesis = Literal["superiority", "non-inferiority"]
_HYPOTHESIS_DESCRIPTION = "superiority: the treatment must be better; non-inferiority: not worse by the margin."
_MARGIN_DESCRIPTION = "How much worse the treatment may be under the non-inferiority hypothesis."


class ABTestSpec(ApiModel):
    """The desired state of an ABTest: two ModelDeployments, one traffic split, one sequential decision."""

    control: ArmRef = Field(description="The current model.")
    treatment: ArmRef = Field(description="The challenger.")
    traffic_split: TrafficSplit = Field(default_factory=TrafficSplit, description="Traffic split.")
    metric: MetricSpec = Field(default_factory=MetricSpec, description="Metric compared.")
    hypothesis: Hypothesis = Field(default="superiority", description=_HYPOTHESIS_DESCRIPTION)
    non_inferiority_margin: float = Field(default=0.02, ge=0, le=1, description=_MARGIN_DESCRIPTION)
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


RETRY_PROMOTION = ("PromotionFailed", "ModelDeploymentNotFound")
"""ABTest Promoted reasons after which promotion is tried again at the next reconciliation."""


class ABTestStatus(ApiModel):
    """The observed state of an ABTest."""

    phase: Literal["Pending", "Running", "Concluded", "Stopped", "Failed"] | None = Field(
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
    decision: Literal["TreatmentBetter", "ControlBetter", "NoDifference", "NonInferior", "Inconclusive"] | None = Field(
        default=None, description="The decision, once concluded."
    )
    started_at: Timestamp | None = Field(default=None, description="When traffic was first split.")
    evaluated_at: Timestamp | None = Field(default=None, description="When the test was last evaluated.")
    concluded_at: Timestamp | None = Field(default=None, description="When the test concluded.")
    conditions: Conditions = Field(default_factory=list, description="Current conditions.")


class ABTest(_TopLevel):
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
        _AGE,
    )
    __cel_rules__ = _name_rules("ABTest")

    api_version: Literal["medserve.io/v1alpha1"] = Field(description="The API version, medserve.io/v1alpha1.")
    kind: Literal["ABTest"] = Field(description="The kind, ABTest.")
    spec: ABTestSpec = Field(description="Desired state.")
    status: ABTestStatus | None = Field(default=None, description="Observed state.")


# --- RetrainPolicy ---------------------------------------------------------------------------------------


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
        AfterValidator(_unique_by("name")),
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
    hypothesis: Hypothesis = Field(default="superiority", description=_HYPOTHESIS_DESCRIPTION)
    non_inferiority_margin: float = Field(default=0.02, ge=0, le=1, description=_MARGIN_DESCRIPTION)
    statistics: StatisticsSpec = Field(default_factory=StatisticsSpec, description="The sequential test.")
    max_duration: PositiveDuration = Field(default="24h", description="Longest the test runs before concluding.")


class PromotionSpec(ApiModel):
    """How a retrained model version reaches production."""

    strategy: Literal["manual", "direct", "abtest"] = Field(
        default="manual",
        description="manual: only register the version; direct: deploy it at once; abtest: run an ABTest "
        "against the current version first.",
    )
    ab_test: ABTestTemplate = Field(default_factory=ABTestTemplate, description="The ABTest for strategy abtest.")


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
    result: Literal["Succeeded", "Failed"] = Field(description="Outcome.")
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
    next_schedule_time: Timestamp | None = Field(default=None, description="Next scheduled run.")
    conditions: Conditions = Field(default_factory=list, description="Current conditions.")


class RetrainPolicy(_TopLevel):
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
        _AGE,
    )
    __cel_rules__ = _name_rules("RetrainPolicy")

    api_version: Literal["medserve.io/v1alpha1"] = Field(description="The API version, medserve.io/v1alpha1.")
    kind: Literal["RetrainPolicy"] = Field(description="The kind, RetrainPolicy.")
    spec: RetrainPolicySpec = Field(description="Desired state.")
    status: RetrainPolicyStatus | None = Field(default=None, description="Observed state.")


KINDS: dict[str, type[ModelDeployment] | type[ABTest] | type[RetrainPolicy]] = {
    "ModelDeployment": ModelDeployment,
    "ABTest": ABTest,
    "RetrainPolicy": RetrainPolicy,
}
_SPECS: dict[str, type[ModelDeploymentSpec] | type[ABTestSpec] | type[RetrainPolicySpec]] = {
    "ModelDeployment": ModelDeploymentSpec,
    "ABTest": ABTestSpec,
    "RetrainPolicy": RetrainPolicySpec,
}


# --- errors ----------------------------------------------------------------------------------------------


class SpecError(ValueError):
    """An invalid object: one or more (path, message) problems, paths camelCase like `spec.model.version`.

    `path` and `message` are the first problem's; `problems` holds them all.
    """

    def __init__(self, path: str, message: str, *, problems: list[tuple[str, str]] | None = None) -> None:
        self.problems: list[tuple[str, str]] = problems if problems else [(path, message)]
        self.path, self.message = self.problems[0]
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.problems))

    @classmethod
    def from_problems(cls, problems: list[tuple[str, str]]) -> SpecError:
        return cls(problems[0][0], problems[0][1], problems=problems)


def _join_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


_TYPE_WORDS = {
    "a valid dictionary": "an object",
    "a valid array": "a list",
    "a valid list": "a list",
    "a valid integer": "an integer",
    "a valid number": "a number",
    "a valid boolean": "a boolean (true or false)",
    "a valid string": "a string",
}


def describe_error(error: Mapping[str, Any]) -> str:
    """A message a person can act on, for one pydantic error (from `ValidationError.errors()`)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(str(ctx.get("pattern")), f"must match the pattern {ctx.get('pattern')}")
        return f"{hint} (got {_shown(value)})"
    if kind in {"cel_rule", "quantity", "quantity_type"}:
        return str(error["msg"])
    message = str(error["msg"])
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    for prefix, replacement in (("Input should be", "must be"), ("String should", "must"), ("List should", "must")):
        if message.startswith(prefix):
            message = replacement + message[len(prefix) :]
    # Say it in the words of YAML and Kubernetes rather than Python's.
    for python_words, yaml_words in _TYPE_WORDS.items():
        message = message.replace(python_words, yaml_words)
    if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        return f'{message} (got {_shown(value)}; quote it in YAML, e.g. "{value}")'
    return f"{message} (got {_shown(value)})"


def errors_from_validation(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic ValidationError into (path, message) problems, paths camelCase under `prefix`."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        path = _join_path(prefix, tuple(error["loc"]))
        field_path = (error.get("ctx") or {}).get("field_path") if error["type"] == "cel_rule" else None
        if field_path:
            path = _join_path(path, tuple(field_path.lstrip(".").split(".")))
        problems.append((path, describe_error(error)))
    return problems


def _plain(value: object) -> object:
    """Plain dicts and lists from any Mapping/sequence (kopf hands specs over as read-only Mapping views)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _as_json(data: object) -> str:
    # YAML turns unquoted timestamps into datetime objects; kubectl sends them as strings, and so do we.
    return json.dumps(_plain(data), default=str)


def parse_spec(kind: str, spec: Mapping[str, Any]) -> ModelDeploymentSpec | ABTestSpec | RetrainPolicySpec:
    """Validate a spec (camelCase dict, as the API server stores it) of `kind`.

    Types are strict, as the API server's are: "5" is not an integer, and snake_case keys are unknown
    fields. Raises SpecError with every problem, paths starting at `spec`.
    """
    model = _SPECS.get(kind)
    if model is None:
        raise SpecError("kind", f"unknown kind {kind!r}; expected one of {', '.join(_SPECS)}")
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be an object (got {_shown(spec)})")
    try:
        return model.model_validate_json(_as_json(spec), strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise SpecError.from_problems(errors_from_validation(exc, "spec")) from None


def parse_object(obj: Mapping[str, Any]) -> ModelDeployment | ABTest | RetrainPolicy:
    """Validate a whole object (apiVersion, kind, metadata, spec, status) of one of the three kinds.

    Raises SpecError with every problem, paths from the object's root (`spec.model.version`).
    """
    kind = obj.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise SpecError("kind", f"unknown kind {_shown(kind)}; expected one of {', '.join(KINDS)}")
    try:
        return model.model_validate_json(_as_json(obj), strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise SpecError.from_problems(errors_from_validation(exc)) from None
