"""The medserve API (`medserve.io/v1alpha1`): pydantic models of ModelDeployment, ABTest and RetrainPolicy.

This package is the one source of truth for the three kinds: one module per kind (`modeldeployment`,
`abtest`, `retrainpolicy`: spec and status models, condition types and reasons as constants, the kind's
`ConditionSet`), `common` for what they share (the API version, patterns, durations, CEL plumbing, the base
model, shared references) and `parsing` for the typed `parse_spec(Model, raw) -> Model` and its errors.
`medserve crds` generates the CustomResourceDefinitions from these models, `medserve validate` checks
manifests with them, and the reconcilers parse every spec with `parse_spec`. Python attributes are
snake_case; the YAML/JSON keys are camelCase (the alias of every field).

The package is pure: it imports pydantic, croniter and the standard library only (an import-linter
contract keeps it that way), so it can be used by the CLI, the operator and a future admission webhook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medserve_operator.api.abtest import (
    RETRY_PROMOTION as RETRY_PROMOTION,
)
from medserve_operator.api.abtest import (
    ABTest as ABTest,
)
from medserve_operator.api.abtest import (
    ABTestSpec as ABTestSpec,
)
from medserve_operator.api.abtest import (
    ABTestStatus as ABTestStatus,
)
from medserve_operator.api.abtest import (
    ArmRef as ArmRef,
)
from medserve_operator.api.abtest import (
    ArmSamples as ArmSamples,
)
from medserve_operator.api.abtest import (
    ArmVersions as ArmVersions,
)
from medserve_operator.api.abtest import (
    ConclusionSpec as ConclusionSpec,
)
from medserve_operator.api.abtest import (
    Estimates as Estimates,
)
from medserve_operator.api.abtest import (
    Hypothesis as Hypothesis,
)
from medserve_operator.api.abtest import (
    MetricSpec as MetricSpec,
)
from medserve_operator.api.abtest import (
    StatisticsSpec as StatisticsSpec,
)
from medserve_operator.api.abtest import (
    TrafficSplit as TrafficSplit,
)
from medserve_operator.api.common import (
    API_VERSION as API_VERSION,
)
from medserve_operator.api.common import (
    CONDITION_REASON as CONDITION_REASON,
)
from medserve_operator.api.common import (
    CRON_PATTERN as CRON_PATTERN,
)
from medserve_operator.api.common import (
    DNS1035_LABEL as DNS1035_LABEL,
)
from medserve_operator.api.common import (
    DNS1123_SUBDOMAIN as DNS1123_SUBDOMAIN,
)
from medserve_operator.api.common import (
    DURATION_PATTERN as DURATION_PATTERN,
)
from medserve_operator.api.common import (
    ENV_VAR_NAME as ENV_VAR_NAME,
)
from medserve_operator.api.common import (
    GROUP as GROUP,
)
from medserve_operator.api.common import (
    MAX_NAME_LENGTH as MAX_NAME_LENGTH,
)
from medserve_operator.api.common import (
    MLFLOW_MODEL_NAME as MLFLOW_MODEL_NAME,
)
from medserve_operator.api.common import (
    MODEL_ALIAS as MODEL_ALIAS,
)
from medserve_operator.api.common import (
    MODEL_VERSION as MODEL_VERSION,
)
from medserve_operator.api.common import (
    PATTERN_HINTS as PATTERN_HINTS,
)
from medserve_operator.api.common import (
    POSITIVE_DURATION_PATTERN as POSITIVE_DURATION_PATTERN,
)
from medserve_operator.api.common import (
    QUANTITY_PATTERN as QUANTITY_PATTERN,
)
from medserve_operator.api.common import (
    TIME_ZONE_PATTERN as TIME_ZONE_PATTERN,
)
from medserve_operator.api.common import (
    VERSION as VERSION,
)
from medserve_operator.api.common import (
    ApiModel as ApiModel,
)
from medserve_operator.api.common import (
    ApiVersion as ApiVersion,
)
from medserve_operator.api.common import (
    CelRule as CelRule,
)
from medserve_operator.api.common import (
    Condition as Condition,
)
from medserve_operator.api.common import (
    ConditionSet as ConditionSet,
)
from medserve_operator.api.common import (
    Duration as Duration,
)
from medserve_operator.api.common import (
    EnvVar as EnvVar,
)
from medserve_operator.api.common import (
    LocalObjectReference as LocalObjectReference,
)
from medserve_operator.api.common import (
    PositiveDuration as PositiveDuration,
)
from medserve_operator.api.common import (
    PrinterColumn as PrinterColumn,
)
from medserve_operator.api.common import (
    ResourceRequirements as ResourceRequirements,
)
from medserve_operator.api.common import (
    parse_duration as parse_duration,
)
from medserve_operator.api.modeldeployment import (
    AlertsSpec as AlertsSpec,
)
from medserve_operator.api.modeldeployment import (
    BatchingSpec as BatchingSpec,
)
from medserve_operator.api.modeldeployment import (
    DriftSpec as DriftSpec,
)
from medserve_operator.api.modeldeployment import (
    DriftStatus as DriftStatus,
)
from medserve_operator.api.modeldeployment import (
    ModelDeployment as ModelDeployment,
)
from medserve_operator.api.modeldeployment import (
    ModelDeploymentSpec as ModelDeploymentSpec,
)
from medserve_operator.api.modeldeployment import (
    ModelDeploymentStatus as ModelDeploymentStatus,
)
from medserve_operator.api.modeldeployment import (
    ModelRef as ModelRef,
)
from medserve_operator.api.modeldeployment import (
    MonitoringSpec as MonitoringSpec,
)
from medserve_operator.api.modeldeployment import (
    RolloutSpec as RolloutSpec,
)
from medserve_operator.api.modeldeployment import (
    RuntimeSpec as RuntimeSpec,
)
from medserve_operator.api.modeldeployment import (
    ScalingSpec as ScalingSpec,
)
from medserve_operator.api.modeldeployment import (
    SecuritySpec as SecuritySpec,
)
from medserve_operator.api.modeldeployment import (
    ServedModel as ServedModel,
)
from medserve_operator.api.parsing import (
    SpecError as SpecError,
)
from medserve_operator.api.parsing import (
    describe_error as describe_error,
)
from medserve_operator.api.parsing import (
    errors_from_validation as errors_from_validation,
)
from medserve_operator.api.parsing import (
    parse_model as parse_model,
)
from medserve_operator.api.parsing import (
    parse_spec as parse_spec,
)
from medserve_operator.api.parsing import (
    shown as shown,
)
from medserve_operator.api.retrainpolicy import (
    ABTestRecord as ABTestRecord,
)
from medserve_operator.api.retrainpolicy import (
    ABTestTemplate as ABTestTemplate,
)
from medserve_operator.api.retrainpolicy import (
    ActiveJob as ActiveJob,
)
from medserve_operator.api.retrainpolicy import (
    DriftTrigger as DriftTrigger,
)
from medserve_operator.api.retrainpolicy import (
    JobResult as JobResult,
)
from medserve_operator.api.retrainpolicy import (
    JobTemplate as JobTemplate,
)
from medserve_operator.api.retrainpolicy import (
    PerformanceTrigger as PerformanceTrigger,
)
from medserve_operator.api.retrainpolicy import (
    PromotionSpec as PromotionSpec,
)
from medserve_operator.api.retrainpolicy import (
    QueryTrigger as QueryTrigger,
)
from medserve_operator.api.retrainpolicy import (
    RetrainPolicy as RetrainPolicy,
)
from medserve_operator.api.retrainpolicy import (
    RetrainPolicySpec as RetrainPolicySpec,
)
from medserve_operator.api.retrainpolicy import (
    RetrainPolicyStatus as RetrainPolicyStatus,
)
from medserve_operator.api.retrainpolicy import (
    TriggerRecord as TriggerRecord,
)
from medserve_operator.api.retrainpolicy import (
    TriggersSpec as TriggersSpec,
)

KINDS: dict[str, type[ModelDeployment] | type[ABTest] | type[RetrainPolicy]] = {
    "ModelDeployment": ModelDeployment,
    "ABTest": ABTest,
    "RetrainPolicy": RetrainPolicy,
}
"""The kinds by name, for manifests, whose `kind` is a string (`parse_object`, `medserve validate`)."""
SPECS: dict[str, type[ModelDeploymentSpec] | type[ABTestSpec] | type[RetrainPolicySpec]] = {
    "ModelDeployment": ModelDeploymentSpec,
    "ABTest": ABTestSpec,
    "RetrainPolicy": RetrainPolicySpec,
}


def spec_model(kind: str) -> type[ModelDeploymentSpec] | type[ABTestSpec] | type[RetrainPolicySpec]:
    """The spec model of the kind named `kind` (for a name read from a manifest); SpecError when unknown."""
    model = SPECS.get(kind)
    if model is None:
        raise SpecError("kind", f"unknown kind {kind!r}; expected one of {', '.join(SPECS)}")
    return model


def parse_object(obj: Mapping[str, Any]) -> ModelDeployment | ABTest | RetrainPolicy:
    """Validate a whole object (apiVersion, kind, metadata, spec, status) of one of the three kinds.

    Raises SpecError with every problem, paths from the object's root (`spec.model.version`).
    """
    kind = obj.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise SpecError("kind", f"unknown kind {shown(kind)}; expected one of {', '.join(KINDS)}")
    return parse_model(model, obj)
