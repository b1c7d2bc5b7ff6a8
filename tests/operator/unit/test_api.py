"""The API models: defaults, every cross-field rule on both sides, durations, cron, names, camelCase."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

import pytest
from medserve_operator import api
from medserve_operator.api import (
    ABTestSpec,
    ModelDeploymentSpec,
    RetrainPolicySpec,
    SpecError,
    parse_duration,
    parse_object,
    parse_spec,
)
from pydantic import ValidationError

MD_SPEC: dict[str, Any] = {"model": {"name": "triage-classifier", "version": "3"}}
AB_SPEC: dict[str, Any] = {"control": {"modelDeployment": "triage"}, "treatment": {"modelDeployment": "triage-b"}}
RP_SPEC: dict[str, Any] = {"modelDeployment": "triage", "schedule": "@daily", "job": {"image": "train:1"}}
SPECS = {"ModelDeployment": MD_SPEC, "ABTest": AB_SPEC, "RetrainPolicy": RP_SPEC}


def problems(kind: str, spec: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        parse_spec(api.spec_model(kind), spec)
    except SpecError as exc:
        return exc.problems
    return []


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with the dotted camelCase `path` set to `value` (objects created as needed)."""
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return doc


def obj(kind: str, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec or SPECS[kind]}


# --- defaults -----------------------------------------------------------------------------------------------


def test_model_deployment_defaults() -> None:
    spec = parse_spec(ModelDeploymentSpec, MD_SPEC)
    assert isinstance(spec, ModelDeploymentSpec)
    assert spec.model_dump(by_alias=True, exclude_none=True) == {
        "model": {"name": "triage-classifier", "version": "3"},
        "runtime": {
            "image": "",
            "protocol": "v2",
            "device": "cpu",
            "optimization": "none",
            "batching": {"maxBatchSize": 16, "maxLatencyMs": 5},
            "resources": {"limits": {}, "requests": {}},
        },
        "scaling": {"minReplicas": 1, "maxReplicas": 3},
        "rollout": {"canaryTrafficPercent": 10, "canaryDuration": "0s"},
        "monitoring": {
            "interval": "5m",
            "drift": {
                "enabled": True,
                "statistic": "psi",
                "threshold": 0.05,
                "alpha": 0.001,
                "window": "1h",
                "minSamples": 200,
                "features": [],
            },
            "alerts": {},
        },
        "security": {"rateLimitPerMinute": 100, "auditLog": True, "maxRequestBytes": 1048576},
    }
    assert spec.security.api_key_secret_ref is None
    assert spec.model.alias is None


def test_abtest_defaults() -> None:
    spec = parse_spec(ABTestSpec, AB_SPEC)
    assert isinstance(spec, ABTestSpec)
    assert spec.traffic_split.treatment_percent == 50
    assert (spec.metric.name, spec.metric.source, spec.metric.kind, spec.metric.higher_is_better) == (
        "accuracy",
        "feedback",
        "proportion",
        True,
    )
    assert spec.metric.promql is None
    assert (spec.hypothesis, spec.non_inferiority_margin) == ("superiority", 0.02)
    stats = spec.statistics
    assert (stats.method, stats.alpha, stats.minimum_detectable_effect) == ("msprt", 0.05, 0.02)
    assert (stats.min_samples_per_arm, stats.max_samples_per_arm, stats.interval) == (100, 20000, "1m")
    assert spec.max_duration == "24h"
    assert spec.on_conclusion.promote is False


def test_retrain_policy_defaults() -> None:
    spec = parse_spec(RetrainPolicySpec, RP_SPEC)
    assert isinstance(spec, RetrainPolicySpec)
    assert spec.time_zone is None
    assert spec.triggers.drift.enabled is False
    assert spec.triggers.performance is None and spec.triggers.query is None
    assert spec.cooldown == "6h"
    job = spec.job
    assert (job.command, job.args, job.env) == ([], [], [])
    assert (job.backoff_limit, job.active_deadline_seconds, job.ttl_seconds_after_finished) == (2, 7200, 86400)
    assert spec.promotion.strategy == "manual"
    template = spec.promotion.ab_test
    assert (template.traffic_split.treatment_percent, template.hypothesis, template.max_duration) == (
        50,
        "superiority",
        "24h",
    )
    perf = parse_spec(RetrainPolicySpec, with_(RP_SPEC, "triggers.performance", {"below": 0.8}))
    assert isinstance(perf, RetrainPolicySpec) and perf.triggers.performance is not None
    assert (perf.triggers.performance.metric, perf.triggers.performance.window) == ("accuracy", "1h")
    assert perf.triggers.performance.min_samples == 100


def test_defaults_are_not_shared_between_instances() -> None:
    a = parse_spec(ModelDeploymentSpec, MD_SPEC)
    b = parse_spec(ModelDeploymentSpec, MD_SPEC)
    assert isinstance(a, ModelDeploymentSpec) and isinstance(b, ModelDeploymentSpec)
    a.monitoring.drift.features.append("age")
    assert b.monitoring.drift.features == []


# --- cross-field rules, both sides ----------------------------------------------------------------------------

RULE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # (kind, spec, expected problem path or None when valid)
    ("ModelDeployment", {"model": {"name": "m", "version": "1"}}, None),
    ("ModelDeployment", {"model": {"name": "m", "alias": "champion"}}, None),
    ("ModelDeployment", {"model": {"name": "m"}}, "spec.model"),
    ("ModelDeployment", {"model": {"name": "m", "version": "1", "alias": "champion"}}, "spec.model"),
    ("ModelDeployment", with_(MD_SPEC, "scaling", {"minReplicas": 3, "maxReplicas": 3}), None),
    ("ModelDeployment", with_(MD_SPEC, "scaling", {"minReplicas": 0, "maxReplicas": 1}), None),
    ("ModelDeployment", with_(MD_SPEC, "scaling", {"minReplicas": 4, "maxReplicas": 3}), "spec.scaling.minReplicas"),
    # maxReplicas defaults to 3: the rule sees the default.
    ("ModelDeployment", with_(MD_SPEC, "scaling", {"minReplicas": 4}), "spec.scaling.minReplicas"),
    ("ABTest", AB_SPEC, None),
    ("ABTest", with_(AB_SPEC, "treatment", {"modelDeployment": "triage"}), "spec.treatment.modelDeployment"),
    ("ABTest", with_(AB_SPEC, "metric", {"source": "promql", "promql": "sum(x)"}), None),
    ("ABTest", with_(AB_SPEC, "metric", {"source": "promql"}), "spec.metric.promql"),
    ("ABTest", with_(AB_SPEC, "metric", {"source": "feedback", "promql": "sum(x)"}), "spec.metric.promql"),
    ("ABTest", with_(AB_SPEC, "metric", {"promql": "sum(x)"}), "spec.metric.promql"),
    ("ABTest", with_(AB_SPEC, "statistics", {"minSamplesPerArm": 50, "maxSamplesPerArm": 50}), None),
    (
        "ABTest",
        with_(AB_SPEC, "statistics", {"minSamplesPerArm": 51, "maxSamplesPerArm": 50}),
        "spec.statistics.minSamplesPerArm",
    ),
    ("ABTest", with_(AB_SPEC, "statistics", {"minSamplesPerArm": 20001}), "spec.statistics.minSamplesPerArm"),
    (
        "RetrainPolicy",
        with_(RP_SPEC, "promotion", {"abTest": {"statistics": {"minSamplesPerArm": 9, "maxSamplesPerArm": 8}}}),
        "spec.promotion.abTest.statistics.minSamplesPerArm",
    ),
    (
        "RetrainPolicy",
        with_(RP_SPEC, "promotion", {"abTest": {"metric": {"source": "promql"}}}),
        "spec.promotion.abTest.metric.promql",
    ),
    ("RetrainPolicy", {"modelDeployment": "triage", "job": {"image": "i"}}, "spec"),
    ("RetrainPolicy", {"modelDeployment": "triage", "job": {"image": "i"}, "triggers": {"drift": {}}}, "spec"),
    ("RetrainPolicy", {"modelDeployment": "triage", "job": {"image": "i"}, "schedule": "0 3 * * 0"}, None),
    ("RetrainPolicy", {"modelDeployment": "t", "job": {"image": "i"}, "triggers": {"drift": {"enabled": True}}}, None),
    (
        "RetrainPolicy",
        {"modelDeployment": "t", "job": {"image": "i"}, "triggers": {"performance": {"below": 0.8}}},
        None,
    ),
    (
        "RetrainPolicy",
        {"modelDeployment": "t", "job": {"image": "i"}, "triggers": {"query": {"promql": "up", "above": 1}}},
        None,
    ),
    ("RetrainPolicy", with_(RP_SPEC, "timeZone", "Europe/Berlin"), None),
    (
        "RetrainPolicy",
        {"modelDeployment": "t", "job": {"image": "i"}, "timeZone": "UTC", "triggers": {"drift": {"enabled": True}}},
        "spec.timeZone",
    ),
]


@pytest.mark.parametrize(("kind", "spec", "path"), RULE_CASES)
def test_cross_field_rules(kind: str, spec: dict[str, Any], path: str | None) -> None:
    found = problems(kind, spec)
    if path is None:
        assert found == []
    else:
        assert [p for p, _ in found] == [path], found


def test_rule_messages_name_the_fields() -> None:
    assert problems("ModelDeployment", {"model": {"name": "m"}}) == [
        ("spec.model", "exactly one of version or alias must be set")
    ]
    [(_, message)] = problems("RetrainPolicy", {"modelDeployment": "t", "job": {"image": "i"}})
    assert "schedule" in message and "triggers.drift.enabled" in message


def test_every_model_rule_has_a_message_and_a_twin() -> None:
    models = [m for m in vars(api).values() if isinstance(m, type) and issubclass(m, api.ApiModel)]
    rules = [rule for model in models for rule in model.__dict__.get("__cel_rules__", ())]
    assert len(rules) >= 11
    for rule in rules:
        assert rule.rule and rule.message and callable(rule.check)


# --- durations ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800), ("1h0m5s", 3605), ("0s", 0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "1.5h", "5 m", "-1s", "1w", "5M", "1h 30m", "PT5M"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["0s", "0m0s", "00h", "1x", "1.5m", "", "5"])
def test_positive_durations_refuse_zero_and_garbage(value: str) -> None:
    [(path, message)] = problems("ModelDeployment", with_(MD_SPEC, "monitoring.interval", value))
    assert path == "spec.monitoring.interval"
    assert "duration" in message


@pytest.mark.parametrize("value", ["1ms", "10s", "0s1m", "100ms", "1d12h"])
def test_positive_durations_accept(value: str) -> None:
    assert problems("ABTest", with_(AB_SPEC, "maxDuration", value)) == []


def test_cooldown_may_be_zero() -> None:
    assert problems("RetrainPolicy", with_(RP_SPEC, "cooldown", "0s")) == []
    [(path, _)] = problems("RetrainPolicy", with_(RP_SPEC, "cooldown", "six hours"))
    assert path == "spec.cooldown"


# --- cron and time zones -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule", ["0 3 * * 0", "*/15 * * * *", "0 0 1 1 *", "@hourly", "@daily", "@weekly", "@monthly", "@yearly"]
)
def test_cron_accepts(schedule: str) -> None:
    assert problems("RetrainPolicy", with_(RP_SPEC, "schedule", schedule)) == []


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ("* * *", "has 3 fields"),
        ("0 0 3 * * 0", "has 6 fields"),
        ("61 * * * *", "invalid cron"),
        ("0 25 * * *", "invalid cron"),
        ("@often", "unknown cron macro"),
        ("", "has 0 fields"),
    ],
)
def test_cron_rejects(schedule: str, fragment: str) -> None:
    [(path, message)] = problems("RetrainPolicy", with_(RP_SPEC, "schedule", schedule))
    assert path == "spec.schedule"
    assert fragment in message


def test_time_zone() -> None:
    assert problems("RetrainPolicy", with_(RP_SPEC, "timeZone", "America/New_York")) == []
    [(path, message)] = problems("RetrainPolicy", with_(RP_SPEC, "timeZone", "Mars/Olympus_Mons"))
    assert path == "spec.timeZone" and "time zone" in message


# --- names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "limit"), [("ModelDeployment", 45), ("ABTest", 45), ("RetrainPolicy", 40)])
def test_name_length_per_kind(kind: str, limit: int) -> None:
    parse_object(obj(kind, "a" * limit))
    with pytest.raises(SpecError) as err:
        parse_object(obj(kind, "a" * (limit + 1)))
    assert err.value.path == "metadata.name"
    assert f"at most {limit} characters" in err.value.message


@pytest.mark.parametrize("name", ["Triage", "1triage", "triage-", "tri_age", "tri.age", "-triage", ""])
def test_names_must_be_dns_1035_labels(name: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_object(obj("ModelDeployment", name))
    assert err.value.path == "metadata.name"
    assert "DNS-1035" in err.value.message


def test_name_problems_are_reported_with_spec_problems() -> None:
    with pytest.raises(SpecError) as err:
        parse_object(obj("ModelDeployment", "Bad", {"model": {"name": "m", "version": "x"}}))
    assert {p for p, _ in err.value.problems} == {"metadata.name", "spec.model.version"}


def test_missing_name() -> None:
    doc = obj("ABTest", "x")
    doc["metadata"] = {}
    with pytest.raises(SpecError, match=r"metadata\.name: metadata\.name is required"):
        parse_object(doc)


@pytest.mark.parametrize("value", ["Triage", "a" * 46, "9lives"])
def test_referenced_deployment_names(value: str) -> None:
    [(path, _)] = problems("RetrainPolicy", with_(RP_SPEC, "modelDeployment", value))
    assert path == "spec.modelDeployment"
    [(path, _)] = problems("ABTest", with_(AB_SPEC, "control.modelDeployment", value))
    assert path == "spec.control.modelDeployment"


# --- types, ranges, unknown fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("scaling.minReplicas", "2", 'must be an integer (got "2")'),
        ("scaling.minReplicas", 1.5, "must be an integer (got 1.5)"),
        ("scaling", [], "must be an object (got [])"),
        ("monitoring.drift.features", "age", 'must be a list (got "age")'),
        ("scaling.minReplicas", -1, "greater than or equal to 0"),
        ("scaling.maxReplicas", 1001, "less than or equal to 1000"),
        ("monitoring.drift.enabled", "yes", "must be a boolean (true or false)"),
        ("monitoring.drift.alpha", 0, "greater than 0"),
        ("monitoring.drift.alpha", 0.6, "less than or equal to 0.5"),
        ("monitoring.drift.statistic", "kl", "'psi', 'ks', 'chi2' or 'js'"),
        ("runtime.protocol", "v3", "'v1' or 'v2'"),
        ("model.version", 3, 'must be a string (got 3; quote it in YAML, e.g. "3")'),
        ("model.version", "0", "model version number"),
        ("model.alias", "9champion", "MLflow alias"),
        ("model.name", "-bad", "MLflow registered model name"),
        ("runtime.batching.maxBatchSize", 0, "greater than or equal to 1"),
        ("security.maxRequestBytes", 100, "greater than or equal to 1024"),
        ("security.apiKeySecretRef.name", "Bad_Name", "DNS-1123"),
        ("runtime.resources.limits.cpu", "two", "Kubernetes quantity"),
        ("runtime.resources.limits.memory", True, "quantity"),
        ("runtime.replicas", 3, "unknown field"),
    ],
)
def test_field_problems(path: str, value: Any, fragment: str) -> None:
    spec = with_(MD_SPEC, path, value)
    if path.startswith("model.version"):
        spec = {"model": {"name": "m", "version": value}}
    found = problems("ModelDeployment", spec)
    assert [p for p, _ in found] == [f"spec.{path}"], found
    assert fragment in found[0][1]


def test_quantities_accept_strings_and_integers() -> None:
    spec = with_(MD_SPEC, "runtime.resources", {"limits": {"cpu": 2, "memory": "1Gi"}, "requests": {"cpu": "0.5"}})
    parsed = parse_spec(ModelDeploymentSpec, spec)
    assert isinstance(parsed, ModelDeploymentSpec)
    assert parsed.runtime.resources.limits == {"cpu": 2, "memory": "1Gi"}


def test_duplicate_env_names_are_refused() -> None:
    spec = with_(RP_SPEC, "job.env", [{"name": "A", "value": "1"}, {"name": "A"}])
    [(path, message)] = problems("RetrainPolicy", spec)
    assert path == "spec.job.env" and "duplicate" in message
    [(path, _)] = problems("RetrainPolicy", with_(RP_SPEC, "job.env", [{"name": "1A"}]))
    assert path == "spec.job.env[0].name"


def test_several_problems_are_all_reported() -> None:
    spec = {"model": {"name": "m", "version": "1"}, "scaling": {"target": 0}, "rollout": {"canaryTrafficPercent": 101}}
    assert [p for p, _ in problems("ModelDeployment", spec)] == [
        "spec.scaling.target",
        "spec.rollout.canaryTrafficPercent",
    ]


def test_spec_error_carries_every_problem_and_names_paths() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(ModelDeploymentSpec, {"model": {"name": "m", "version": "1"}, "bogus": 1, "scaling": []})
    exc = err.value
    assert exc.problems[0] == (exc.path, exc.message)
    assert {p for p, _ in exc.problems} == {"spec.bogus", "spec.scaling"}
    assert "spec.bogus: unknown field" in str(exc)
    assert isinstance(exc, ValueError)
    single = SpecError("spec.model", "broken")
    assert (single.path, single.message, single.problems, str(single)) == (
        "spec.model",
        "broken",
        [("spec.model", "broken")],
        "spec.model: broken",
    )


def test_parse_spec_takes_any_mapping() -> None:
    """kopf hands the spec over as a read-only Mapping view, not a dict."""
    view = MappingProxyType({"model": MappingProxyType({"name": "m", "alias": "a"}), "runtime": {"resources": {}}})
    parsed = parse_spec(ModelDeploymentSpec, view)
    assert isinstance(parsed, ModelDeploymentSpec) and parsed.model.alias == "a"


def test_parse_spec_rejects_unknown_kinds_and_non_objects() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(api.spec_model("Deployment"), {})
    assert err.value.path == "kind"
    with pytest.raises(SpecError) as err:
        parse_spec(ModelDeploymentSpec, [])  # type: ignore[arg-type]
    assert err.value.path == "spec"


def test_parse_object_checks_api_version_and_kind() -> None:
    doc = obj("ModelDeployment", "triage")
    doc["apiVersion"] = "medserve.io/v1"
    with pytest.raises(SpecError) as err:
        parse_object(doc)
    assert err.value.path == "apiVersion"
    with pytest.raises(SpecError) as err:
        parse_object({**doc, "kind": "Model"})
    assert err.value.path == "kind"


# --- camelCase round trip ---------------------------------------------------------------------------------------


FULL_MD: dict[str, Any] = {
    "model": {"name": "triage-classifier", "alias": "champion"},
    "runtime": {
        "image": "ghcr.io/medserve/runtime:1",
        "protocol": "v1",
        "device": "gpu",
        "optimization": "dynamic-int8",
        "batching": {"maxBatchSize": 8, "maxLatencyMs": 0},
        "resources": {"limits": {"cpu": "2", "nvidia.com/gpu": 1}, "requests": {"memory": "1Gi"}},
    },
    "scaling": {"minReplicas": 0, "maxReplicas": 10, "metric": "rps", "target": 100},
    "rollout": {"canaryTrafficPercent": 0, "canaryDuration": "15m"},
    "monitoring": {
        "interval": "30s",
        "drift": {
            "enabled": False,
            "statistic": "ks",
            "threshold": 1,
            "alpha": 0.5,
            "window": "2h",
            "minSamples": 1,
            "features": ["age", "heart_rate"],
        },
        "alerts": {"latencyP95Ms": 250, "minAccuracy": 0.9},
    },
    "security": {
        "apiKeySecretRef": {"name": "keys"},
        "rateLimitPerMinute": 5,
        "auditLog": False,
        "maxRequestBytes": 1024,
    },
}


def test_camel_case_round_trip() -> None:
    spec = parse_spec(ModelDeploymentSpec, FULL_MD)
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped == FULL_MD
    assert parse_spec(ModelDeploymentSpec, dumped) == spec
    assert spec.monitoring.alerts.latency_p95_ms == 250  # type: ignore[union-attr]
    assert spec.security.api_key_secret_ref is not None  # type: ignore[union-attr]


def test_snake_case_keys_are_unknown_fields_in_manifests() -> None:
    found = problems("ModelDeployment", with_(MD_SPEC, "scaling", {"min_replicas": 2}))
    assert found == [("spec.scaling.min_replicas", "unknown field")]


def test_python_code_may_use_snake_case_names() -> None:
    ref = api.ModelRef(name="m", version="2")
    assert ref.model_dump(by_alias=True, exclude_none=True) == {"name": "m", "version": "2"}
    with pytest.raises(ValidationError):
        api.ScalingSpec(min_replicas=5, max_replicas=2)


def test_status_models_round_trip() -> None:
    status: dict[str, Any] = {
        "phase": "Ready",
        "observedGeneration": 2,
        "model": {"name": "m", "version": "3", "alias": "champion", "uri": "models:/m/3", "runId": "abc"},
        "inferenceService": "triage",
        "url": "http://triage.default.example.com",
        "drift": {"statistic": "psi", "score": 0.1, "pValue": 0.5, "driftedFeatures": [], "samples": 10},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "InferenceServiceReady",
                "message": "",
                "lastTransitionTime": "2024-05-01T10:00:00Z",
                "observedGeneration": 2,
            }
        ],
    }
    doc = obj("ModelDeployment", "triage")
    doc["status"] = status
    parsed = parse_object(doc)
    assert parsed.model_dump(by_alias=True, exclude_none=True)["status"] == status
    doc["status"]["conditions"].append(dict(status["conditions"][0]))
    with pytest.raises(SpecError, match="duplicate entries with type 'Ready'"):
        parse_object(doc)
