"""What the three kinds share: the API version, patterns, durations, CEL plumbing, the base model, shared refs.

Every cross-field rule is written once as a CEL expression (it goes into the CRD's
`x-kubernetes-validations`, so the API server enforces it) with its Python twin right next to it (a
callable over the validated model, run by pydantic), in each model's `__cel_rules__`. Defaults here are
the CRD's defaults too.

Pure: pydantic, croniter and the standard library only (an import-linter contract keeps it that way).
"""

from __future__ import annotations

import dataclasses
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple, Self, get_args

from croniter import croniter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, field_validator
from pydantic import model_validator as _model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

ApiVersion = Literal["medserve.io/v1alpha1"]
"""The one spelling of the API version; the kinds' `apiVersion` fields are typed with it."""
API_VERSION: Final[str] = get_args(ApiVersion)[0]
GROUP, VERSION = API_VERSION.split("/")
API_VERSION_DESCRIPTION = f"The API version, {API_VERSION}."

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
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
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
    SECRET_KEY: "must be a Secret key: letters, digits, '-', '.' or '_'",
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


def unique_by(key: str) -> Callable[[list[Any]], list[Any]]:
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
    AfterValidator(unique_by("type")),
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
]


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: str = Field(
        pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253, description="Name of the referenced object."
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace; each use subclasses it to give `key` its own default."""

    name: str = Field(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(pattern=SECRET_KEY, min_length=1, max_length=253, description="The Secret's key.")


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



def name_rules(kind: str) -> tuple[CelRule, ...]:
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


class TopLevel(ApiModel):
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


AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since the object was created.")


# --- conditions --------------------------------------------------------------------------------------------

READY: Final = "Ready"
"""The summary condition every kind has, derived from the others (`kit.conditions.derive_ready`)."""
INVALID_SPEC: Final = "InvalidSpec"
"""Ready's reason when the spec does not validate."""
REASON_READY: Final = "Ready"
REASON_PENDING: Final = "Pending"
REASON_NOT_READY: Final = "NotReady"
MODEL_DEPLOYMENT_NOT_FOUND: Final = "ModelDeploymentNotFound"
"""A reason shared by ABTest and RetrainPolicy: the ModelDeployment they name does not exist."""
PROMETHEUS_NOT_CONFIGURED: Final = "PrometheusNotConfigured"
PROMETHEUS_UNAVAILABLE: Final = "PrometheusUnavailable"


@dataclasses.dataclass(frozen=True)
class ConditionSet:
    """The conditions of one kind, for the generic condition code in `kit.conditions`.

    `required`: what Ready needs in the kind's steady state (a status may require a prefix of it while the
    object is in an earlier phase); `negative`: conditions whose True means trouble (their Events are
    Warnings when they turn True, and Ready is False while one is True); `announced`: the conditions whose
    transitions become Events (None: all; the others get Events of their own that say more).
    """

    required: tuple[str, ...]
    negative: tuple[str, ...] = ()
    announced: tuple[str, ...] | None = None
