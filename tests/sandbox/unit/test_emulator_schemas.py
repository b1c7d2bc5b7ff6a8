"""Admission (validation, defaulting, pruning, CEL) and Table output of the API emulator, without a server.

The KServe tests read KServe's real CRDs from `shared/upstream/kserve` (or $MEDSERVE_KSERVE_CRDS) and are
skipped with the reason when they are absent. Core kinds use kubernetes-validate's Kubernetes schemas.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from medserve_sandbox._table import evaluate_jsonpath, human_duration, parse_jsonpath
from medserve_sandbox.schemas import (
    DecodeError,
    InvalidObject,
    SchemaRegistry,
    find_kserve_crds_dir,
    render_table,
)

VERSION_RE = "'^[1-9][0-9]*$'"
GADGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.test.medserve.io
spec:
  group: test.medserve.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, listKind: GadgetList}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      additionalPrinterColumns:
        - {name: Model, type: string, jsonPath: .spec.model.name}
        - {name: Min, type: integer, jsonPath: .spec.scaling.minReplicas}
        - {name: Ready, type: string, jsonPath: ".status.conditions[?(@.type==\\"Ready\\")].status"}
        - {name: Reason, type: string, priority: 1, jsonPath: ".status.conditions[?(@.type=='Ready')].reason"}
        - {name: Score, type: number, jsonPath: .status.score}
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-validations:
            - rule: self.metadata.name.size() <= 20
              messageExpression: "'name ' + self.metadata.name + ' is longer than 20 characters'"
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              required: [model]
              properties:
                model:
                  type: object
                  required: [name]
                  x-kubernetes-validations:
                    - rule: has(self.version) != has(self.alias)
                      message: exactly one of version or alias must be set
                  properties:
                    name: {type: string, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'}
                    version: {type: string, pattern: '^[1-9][0-9]*$'}
                    alias: {type: string, maxLength: 8}
                runtime:
                  type: object
                  default: {}
                  properties:
                    protocol: {type: string, enum: [v1, v2], default: v2}
                    batching:
                      type: object
                      default: {}
                      properties:
                        maxBatchSize: {type: integer, minimum: 1, maximum: 1024, default: 16}
                scaling:
                  type: object
                  default: {}
                  x-kubernetes-validations:
                    - rule: self.minReplicas <= self.maxReplicas
                      message: minReplicas must be less than or equal to maxReplicas
                      fieldPath: .minReplicas
                  properties:
                    minReplicas: {type: integer, minimum: 0, maximum: 100, default: 1}
                    maxReplicas: {type: integer, minimum: 1, maximum: 1000, default: 3}
                threshold: {type: number, minimum: 0, exclusiveMinimum: true, maximum: 10}
                limits:
                  type: object
                  additionalProperties:
                    anyOf: [{type: integer}, {type: string}]
                    x-kubernetes-int-or-string: true
                    pattern: '^[0-9]+(m|Mi|Gi)?$'
                extra:
                  type: object
                  x-kubernetes-preserve-unknown-fields: true
                tags:
                  type: array
                  maxItems: 3
                  x-kubernetes-list-type: set
                  items: {type: string, minLength: 1}
                startedAt: {type: string, format: date-time}
                note: {type: string, nullable: true}
                owner:
                  type: string
                  x-kubernetes-validations:
                    - {rule: self == oldSelf, message: owner is immutable}
                legacy:
                  type: string
                  x-kubernetes-validations:
                    - {rule: "self.?foo.orValue('x') == 'x'", message: uses CEL optionals}
                template:
                  type: object
                  x-kubernetes-embedded-resource: true
                  x-kubernetes-preserve-unknown-fields: true
            status:
              type: object
              properties:
                phase: {type: string, enum: [Pending, Ready]}
                score: {type: number}
                conditions:
                  type: array
                  items:
                    type: object
                    required: [type, status]
                    properties:
                      type: {type: string}
                      status: {type: string, enum: ["True", "False", "Unknown"]}
                      reason: {type: string}
"""


def gadget(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "test.medserve.io/v1",
        "kind": "Gadget",
        "metadata": {"name": "g1", "namespace": "default"},
        "spec": {"model": {"name": "triage", "version": "3"}, **spec},
    }


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    schemas = SchemaRegistry()
    schemas.add_crd(yaml.safe_load(GADGET_CRD))
    return schemas


def invalid(registry: SchemaRegistry, obj: dict[str, Any], **kwargs: Any) -> InvalidObject:
    with pytest.raises(InvalidObject) as caught:
        registry.admit(obj, old=kwargs.pop("old", None), **kwargs)
    return caught.value


def causes(error: InvalidObject) -> dict[str, str]:
    return {field: message for field, message, _ in error.causes}


# ---------------------------------------------------------------------- defaults, pruning, types


def test_defaults_fill_nested_objects_that_are_themselves_defaulted(registry: SchemaRegistry) -> None:
    original = gadget()
    admitted, warnings = registry.admit(original, old=None)
    assert warnings == []
    assert admitted["spec"]["runtime"] == {"protocol": "v2", "batching": {"maxBatchSize": 16}}
    assert admitted["spec"]["scaling"] == {"minReplicas": 1, "maxReplicas": 3}
    assert "runtime" not in original["spec"], "admit() must not modify its input"
    partial, _ = registry.admit(gadget(runtime={"batching": {}}), old=None)
    assert partial["spec"]["runtime"] == {"protocol": "v2", "batching": {"maxBatchSize": 16}}


def test_null_of_a_non_nullable_field_is_dropped_then_defaulted(registry: SchemaRegistry) -> None:
    admitted, _ = registry.admit(gadget(runtime=None, note=None), old=None)
    assert admitted["spec"]["runtime"]["protocol"] == "v2"
    assert admitted["spec"]["note"] is None


def test_unknown_fields_strict_rejects_with_the_apiservers_strict_decoding_error(
    registry: SchemaRegistry,
) -> None:
    obj = gadget(foo=1)
    obj["metadata"]["bogus"] = "x"
    error = invalid(registry, obj)
    assert error.code == 400
    body = error.status_body()
    assert body["reason"] == "BadRequest" and body["code"] == 400
    assert body["message"] == (
        'Gadget in version "v1" cannot be handled as a Gadget: strict decoding error: '
        'unknown field "metadata.bogus", unknown field "spec.foo"'
    )


def test_unknown_fields_warn_prunes_and_warns_ignore_prunes_silently(registry: SchemaRegistry) -> None:
    obj = gadget(foo=1, runtime={"protocol": "v1", "gpu": True})
    admitted, warnings = registry.admit(obj, old=None, field_validation="Warn")
    assert "foo" not in admitted["spec"] and "gpu" not in admitted["spec"]["runtime"]
    assert warnings == ['unknown field "spec.foo"', 'unknown field "spec.runtime.gpu"']
    admitted, warnings = registry.admit(obj, old=None, field_validation="Ignore")
    assert "foo" not in admitted["spec"] and warnings == []
    with pytest.raises(ValueError, match="fieldValidation"):
        registry.admit(obj, old=None, field_validation="Loose")


def test_preserve_unknown_fields_and_embedded_resources_keep_their_content(registry: SchemaRegistry) -> None:
    template = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}
    admitted, _ = registry.admit(gadget(extra={"any": {"thing": [1, 2]}}, template=template), old=None)
    assert admitted["spec"]["extra"] == {"any": {"thing": [1, 2]}}
    assert admitted["spec"]["template"] == template
    error = invalid(registry, gadget(template={"metadata": {"name": "c"}}))
    assert causes(error) == {
        "spec.template.apiVersion": "Required value: must not be empty",
        "spec.template.kind": "Required value: must not be empty",
    }


def test_type_enum_pattern_and_range_errors_read_like_the_apiservers(registry: SchemaRegistry) -> None:
    error = invalid(
        registry,
        gadget(
            model={"name": "triage", "version": "abc"},
            runtime={"protocol": "v3"},
            scaling={"minReplicas": 200, "maxReplicas": 300},
            threshold=0,
            tags=["a", "b", "c", "d"],
            startedAt="yesterday",
        ),
    )
    assert error.code == 422
    assert causes(error) == {
        "spec.model.version": f'Invalid value: "abc": spec.model.version in body should match {VERSION_RE}',
        "spec.runtime.protocol": 'Unsupported value: "v3": supported values: "v1", "v2"',
        "spec.scaling.minReplicas": (
            "Invalid value: 200: spec.scaling.minReplicas in body should be less than or equal to 100"
        ),
        "spec.threshold": "Invalid value: 0: spec.threshold in body should be greater than 0",
        "spec.tags": "Too many: 4: must have at most 3 items",
        "spec.startedAt": (
            'Invalid value: "yesterday": spec.startedAt in body must be of type date-time: "yesterday"'
        ),
        # the enum error blocks the CEL rules, as in kube-apiserver
        "": (
            'Invalid value: "null": some validation rules were not checked because the object was invalid; '
            "correct the existing errors to complete validation"
        ),
    }
    reasons = {field: reason for field, _, reason in error.causes}
    assert reasons["spec.runtime.protocol"] == "FieldValueNotSupported"
    assert reasons["spec.tags"] == "FieldValueTooMany"


def test_type_errors_and_required_fields(registry: SchemaRegistry) -> None:
    obj = gadget(scaling={"minReplicas": "two"})
    del obj["spec"]["model"]["name"]
    error = invalid(registry, obj)
    found = causes(error)
    assert found["spec.scaling.minReplicas"] == (
        'Invalid value: "string": spec.scaling.minReplicas in body must be of type integer: "string"'
    )
    assert found["spec.model.name"] == "Required value"
    assert invalid(registry, {**gadget(), "spec": {}}).causes[0] == (
        "spec.model",
        "Required value",
        "FieldValueRequired",
    )


def test_int_or_string_map_values(registry: SchemaRegistry) -> None:
    admitted, _ = registry.admit(gadget(limits={"cpu": "500m", "memory": "1Gi", "gpu": 1}), old=None)
    assert admitted["spec"]["limits"] == {"cpu": "500m", "memory": "1Gi", "gpu": 1}
    found = causes(invalid(registry, gadget(limits={"cpu": True, "memory": "lots"})))
    assert found["spec.limits[cpu]"].endswith('must be of type integer,string: "boolean"')
    assert found["spec.limits[memory]"] == (
        "Invalid value: \"lots\": spec.limits[memory] in body should match '^[0-9]+(m|Mi|Gi)?$'"
    )


def test_list_type_set_rejects_duplicates(registry: SchemaRegistry) -> None:
    error = invalid(registry, gadget(tags=["a", "a"]))
    assert error.causes == [("spec.tags[1]", 'Duplicate value: "a"', "FieldValueDuplicate")]


def test_status_is_validated_when_present(registry: SchemaRegistry) -> None:
    obj = gadget()
    obj["status"] = {"phase": "Bogus", "conditions": [{"type": "Ready"}]}
    found = causes(invalid(registry, obj))
    assert found["status.phase"] == 'Unsupported value: "Bogus": supported values: "Pending", "Ready"'
    assert found["status.conditions[0].status"] == "Required value"


def test_object_meta_rules(registry: SchemaRegistry) -> None:
    obj = gadget()
    obj["metadata"] = {"namespace": "default"}
    assert causes(invalid(registry, obj)) == {
        "metadata.name": "Required value: name or generateName is required"
    }
    obj["metadata"] = {"generateName": "g-", "labels": {"app": "x"}}
    registry.admit(obj, old=None)
    obj["metadata"] = {"name": "Bad_Name", "labels": {"bad key!": "x", "ok": "bad value!"}}
    found = invalid(registry, obj).causes
    assert found[0][0] == "metadata.name" and "RFC 1123 subdomain" in found[0][1]
    assert [field for field, _, _ in found[1:3]] == ["metadata.labels", "metadata.labels"]
    assert "name part must consist of alphanumeric characters" in found[1][1]
    assert "a valid label must be an empty string" in found[2][1]


# ---------------------------------------------------------------------- CEL


def test_cel_exactly_one_of(registry: SchemaRegistry) -> None:
    for model in ({"name": "m", "version": "1", "alias": "prod"}, {"name": "m"}):
        error = invalid(registry, gadget(model=model))
        assert error.causes == [
            (
                "spec.model",
                'Invalid value: "object": exactly one of version or alias must be set',
                "FieldValueInvalid",
            )
        ]
    registry.admit(gadget(model={"name": "m", "alias": "prod"}), old=None)


def test_cel_comparison_reports_at_its_field_path(registry: SchemaRegistry) -> None:
    error = invalid(registry, gadget(scaling={"minReplicas": 5, "maxReplicas": 2}))
    assert error.message == (
        'Gadget.test.medserve.io "g1" is invalid: spec.scaling.minReplicas: Invalid value: "object": '
        "minReplicas must be less than or equal to maxReplicas"
    )
    # the defaults take part: minReplicas 4 against the default maxReplicas 3
    assert invalid(registry, gadget(scaling={"minReplicas": 4})).causes[0][0] == "spec.scaling.minReplicas"


def test_cel_root_rule_on_metadata_name_with_message_expression(registry: SchemaRegistry) -> None:
    obj = gadget()
    obj["metadata"]["name"] = "a-very-long-gadget-name"
    error = invalid(registry, obj)
    assert error.message == (
        'Gadget.test.medserve.io "a-very-long-gadget-name" is invalid: <nil>: Invalid value: "object": '
        "name a-very-long-gadget-name is longer than 20 characters"
    )
    assert error.causes[0][0] == ""
    assert error.status_body()["details"]["causes"][0]["field"] == "<nil>"


def test_cel_transition_rule_only_runs_on_update(registry: SchemaRegistry) -> None:
    created, _ = registry.admit(gadget(owner="alice"), old=None)
    registry.admit(gadget(owner="alice"), old=created)
    error = invalid(registry, gadget(owner="bob"), old=created)
    assert causes(error) == {"spec.owner": 'Invalid value: "string": owner is immutable'}


def test_type_errors_block_cel_rules(registry: SchemaRegistry) -> None:
    error = invalid(registry, gadget(scaling={"minReplicas": "5", "maxReplicas": 2}))
    assert [field for field, _, _ in error.causes] == ["spec.scaling.minReplicas", ""]


def test_cel_rule_cel_python_cannot_compile_is_logged_once_and_not_enforced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crd = yaml.safe_load(GADGET_CRD.replace("self.?foo.orValue('x')", "self.?bar.orValue('x')"))
    with caplog.at_level(logging.WARNING, logger="medserve_sandbox._cel"):
        schemas = SchemaRegistry()
        schemas.add_crd(crd)
        schemas.admit(gadget(legacy="anything"), old=None)
        schemas.admit(gadget(legacy="anything"), old=None)
    logged = [record.getMessage() for record in caplog.records if "self.?bar" in record.getMessage()]
    assert len(logged) == 1 and "not enforced" in logged[0]


def test_status_body_is_a_complete_kubernetes_status(registry: SchemaRegistry) -> None:
    body = invalid(registry, gadget(model={"name": "triage", "version": "abc"})).status_body()
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Gadget.test.medserve.io "g1" is invalid: spec.model.version: Invalid value: "abc": '
        "spec.model.version in body should match '^[1-9][0-9]*$'",
        "reason": "Invalid",
        "details": {
            "name": "g1",
            "group": "test.medserve.io",
            "kind": "Gadget",
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": f'Invalid value: "abc": spec.model.version in body should match {VERSION_RE}',
                    "field": "spec.model.version",
                }
            ],
        },
        "code": 422,
    }


def test_crd_update_and_removal() -> None:
    schemas = SchemaRegistry()
    crd = yaml.safe_load(GADGET_CRD)
    schemas.add_crd(crd)
    assert schemas.printer_columns("test.medserve.io/v1", "Gadget") is not None
    stricter = copy.deepcopy(crd)
    version = stricter["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["scaling"]["properties"][
        "maxReplicas"
    ]["maximum"] = 5
    del version["additionalPrinterColumns"]
    schemas.add_crd(stricter)
    with pytest.raises(InvalidObject):
        schemas.admit(gadget(scaling={"maxReplicas": 6}), old=None)
    assert schemas.printer_columns("test.medserve.io/v1", "Gadget") == [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    schemas.remove_crd("gadgets.test.medserve.io")
    assert schemas.printer_columns("test.medserve.io/v1", "Gadget") is None
    admitted, _ = schemas.admit(gadget(scaling={"maxReplicas": 6}), old=None)
    assert admitted["spec"]["scaling"] == {"maxReplicas": 6}


# ---------------------------------------------------------------------- KServe


@pytest.fixture(scope="module")
def kserve() -> SchemaRegistry:
    directory = find_kserve_crds_dir()
    if directory is None:
        pytest.skip("KServe CRDs not found: set MEDSERVE_KSERVE_CRDS or provide ../shared/upstream/kserve")
    schemas = SchemaRegistry()
    assert sorted(schemas.add_kserve_crds(directory)) == ["InferenceGraph", "InferenceService"]
    return schemas


def inference_service() -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "triage", "namespace": "default"},
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "canaryTrafficPercent": 10,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "medserve-runtime:0.1.0",
                        "args": ["--model_name=triage"],
                        "ports": [{"containerPort": 8080}],
                        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": 1}},
                        "securityContext": {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                    }
                ],
            }
        },
    }


def test_kserve_inference_service_accepts_a_valid_object_and_applies_its_defaults(
    kserve: SchemaRegistry,
) -> None:
    admitted, warnings = kserve.admit(inference_service(), old=None)
    assert warnings == []
    container = admitted["spec"]["predictor"]["containers"][0]
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]  # KServe's schema default
    assert container["resources"]["limits"] == {"cpu": 1}


def test_kserve_inference_service_rejects_a_broken_object(kserve: SchemaRegistry) -> None:
    broken = inference_service()
    predictor = broken["spec"]["predictor"]
    predictor["minReplicas"] = "one"
    predictor["containers"][0]["resources"]["requests"]["memory"] = "lots"
    del predictor["containers"][0]["name"]
    error = invalid(kserve, broken)
    found = causes(error)
    assert found["spec.predictor.minReplicas"].endswith('must be of type integer: "string"')
    assert found["spec.predictor.containers[0].resources.requests[memory]"].startswith(
        'Invalid value: "lots": spec.predictor.containers[0].resources.requests[memory] in body should match'
    )
    assert found["spec.predictor.containers[0].name"] == "Required value"
    assert error.message.startswith('InferenceService.serving.kserve.io "triage" is invalid: [')
    unknown = inference_service()
    unknown["spec"]["predictor"]["replicas"] = 2
    assert invalid(kserve, unknown).code == 400


def test_kserve_inference_graph(kserve: SchemaRegistry) -> None:
    graph: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "triage-ab"},
        "spec": {
            "nodes": {
                "root": {
                    "routerType": "Splitter",
                    "steps": [{"serviceName": "a", "weight": 70}, {"serviceName": "b", "weight": 30}],
                }
            }
        },
    }
    kserve.admit(graph, old=None)
    graph["spec"]["nodes"]["root"]["routerType"] = "Random"
    graph["spec"]["nodes"]["root"]["steps"][0]["weight"] = "70"
    found = causes(invalid(kserve, graph))
    assert found["spec.nodes[root].routerType"].startswith(
        'Unsupported value: "Random": supported values: "Sequence"'
    )
    assert found["spec.nodes[root].steps[0].weight"].endswith('must be of type integer: "string"')


def test_kserve_printer_columns(kserve: SchemaRegistry) -> None:
    columns = kserve.printer_columns("serving.kserve.io/v1beta1", "InferenceService")
    assert columns is not None
    obj = inference_service()
    obj["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    obj["status"] = {
        "url": "http://triage.default.example.com",
        "conditions": [{"type": "Ready", "status": "True"}],
        "components": {
            "predictor": {
                "traffic": [
                    {"tag": "prev", "percent": 90, "revisionName": "triage-00001"},
                    {"latestRevision": True, "percent": 10, "revisionName": "triage-00002"},
                ]
            }
        },
    }
    now = datetime(2025, 1, 1, 0, 5, tzinfo=UTC)
    table = render_table([obj], printer_columns=columns, kind="InferenceService", now=now)
    assert [column["name"] for column in table["columnDefinitions"]] == [
        "Name", "URL", "Ready", "Prev", "Latest", "PrevRolledoutRevision", "LatestReadyRevision", "Age",
    ]  # fmt: skip
    assert table["rows"][0]["cells"] == [
        "triage", "http://triage.default.example.com", "True", 90, 10, "triage-00001", "triage-00002", "5m",
    ]  # fmt: skip


def test_find_kserve_crds_dir_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEDSERVE_KSERVE_CRDS", str(tmp_path))
    assert find_kserve_crds_dir() is None
    (tmp_path / "serving.kserve.io_widgets.yaml").write_text("")
    assert find_kserve_crds_dir() == tmp_path


# ---------------------------------------------------------------------- core kinds


def job(**spec: Any) -> dict[str, Any]:
    pod = {"restartPolicy": "Never", "containers": [{"name": "train", "image": "python:3.11"}]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "retrain-1", "namespace": "default"},
        "spec": {"backoffLimit": 2, "template": {"spec": pod}, **spec},
    }


def test_core_job_valid_and_invalid(registry: SchemaRegistry) -> None:
    admitted, warnings = registry.admit(job(), old=None)
    assert admitted == job() and warnings == []
    broken = job()
    del broken["spec"]["template"]["spec"]["containers"][0]["name"]
    found = causes(invalid(registry, broken))
    assert found["spec.template.spec.containers[0].name"] == "Required value"
    # A value of the wrong JSON type does not decode into the Go struct: 400 before any validation.
    with pytest.raises(DecodeError) as decoding:
        registry.admit(job(backoffLimit="two"), old=None)
    assert str(decoding.value) == ('Job in version "v1" cannot be handled as a Job: json: cannot unmarshal string '
                                   "into Go struct field JobSpec.spec.backoffLimit of type int32")
    assert decoding.value.status_body()["code"] == 400
    long_name = job()
    long_name["metadata"]["name"] = "x" * 64
    assert causes(invalid(registry, long_name)) == {
        "metadata.name": f'Invalid value: "{"x" * 64}": must be no more than 63 characters'
    }


def test_core_unknown_fields_follow_field_validation(registry: SchemaRegistry) -> None:
    obj = job()
    obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    error = invalid(registry, obj)
    assert error.code == 400
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in error.message
    admitted, warnings = registry.admit(obj, old=None, field_validation="Warn")
    assert "imagePullPolicyy" not in admitted["spec"]["template"]["spec"]["containers"][0]
    assert warnings == ['unknown field "spec.template.spec.containers[0].imagePullPolicyy"']


def test_core_secret_valid_and_invalid(registry: SchemaRegistry) -> None:
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "api-keys", "labels": {"app.kubernetes.io/part-of": "medserve"}},
        "type": "Opaque",
        "stringData": {"keys": "k1"},
    }
    assert registry.admit(secret, old=None)[0] == secret
    broken = copy.deepcopy(secret)
    broken["metadata"]["name"] = "API_keys"
    found = causes(invalid(registry, broken))
    assert found["metadata.name"].startswith('Invalid value: "API_keys": a lowercase RFC 1123 subdomain')
    broken["data"] = {"keys": 42}
    with pytest.raises(DecodeError, match="cannot unmarshal number into Go struct field Secret.data of type "
                                          r"\[\]uint8"):
        registry.admit(broken, old=None)


def test_kinds_without_a_schema_are_accepted(registry: SchemaRegistry) -> None:
    obj = {
        "apiVersion": "example.com/v1",
        "kind": "Thing",
        "metadata": {"name": "t"},
        "anything": {"goes": 1},
    }
    assert registry.admit(obj, old=None) == (obj, [])
    assert not registry.has_schema("example.com/v1", "Thing")
    assert registry.has_schema("v1", "ConfigMap")


# ---------------------------------------------------------------------- tables


def gadget_with_status(name: str, ready: str | None, score: float | None) -> dict[str, Any]:
    obj = gadget()
    obj["metadata"].update(name=name, creationTimestamp="2025-03-01T12:00:00Z", uid=f"uid-{name}")
    obj["spec"]["scaling"] = {"minReplicas": 2}
    if ready is not None:
        obj["status"] = {
            "conditions": [
                {"type": "Synced", "status": "True"},
                {"type": "Ready", "status": ready, "reason": "Serving"},
            ]
        }
    if score is not None:
        obj.setdefault("status", {})["score"] = score
    return obj


def test_render_table_with_printer_columns(registry: SchemaRegistry) -> None:
    columns = registry.printer_columns("test.medserve.io/v1", "Gadget")
    objects = [gadget_with_status("a", "True", 0.25), gadget_with_status("b", None, None)]
    now = datetime(2025, 3, 1, 15, 30, tzinfo=UTC)
    table = render_table(objects, printer_columns=columns, kind="Gadget", now=now, resource_version="42")
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42"}
    definitions = table["columnDefinitions"]
    assert [(c["name"], c["type"], c["priority"]) for c in definitions] == [
        ("Name", "string", 0), ("Model", "string", 0), ("Min", "integer", 0), ("Ready", "string", 0),
        ("Reason", "string", 1), ("Score", "number", 0), ("Age", "date", 0),
    ]  # fmt: skip
    assert definitions[0]["format"] == "name"
    assert (
        definitions[1]["description"]
        == "Custom resource definition column (in JSONPath format): .spec.model.name"
    )
    assert table["rows"][0]["cells"] == ["a", "triage", 2, "True", "Serving", 0.25, "3h30m"]
    assert table["rows"][1]["cells"] == ["b", "triage", 2, None, None, None, "3h30m"]
    assert table["rows"][0]["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": objects[0]["metadata"],
    }
    full = render_table(objects, printer_columns=columns, kind="Gadget", include_object="Object", now=now)
    assert full["rows"][0]["object"] == objects[0]
    bare = render_table(objects, printer_columns=columns, kind="Gadget", include_object="None", now=now)
    assert "object" not in bare["rows"][0]


def test_render_table_without_printer_columns_and_for_events() -> None:
    obj = {
        "apiVersion": "example.com/v1",
        "kind": "Thing",
        "metadata": {"name": "t", "creationTimestamp": "2025-03-01T12:00:00Z"},
    }
    table = render_table([obj], printer_columns=None, kind="Thing")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Created At"]
    assert table["rows"][0]["cells"] == ["t", "2025-03-01T12:00:00Z"]
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "triage.1", "creationTimestamp": "2025-03-01T12:00:00Z"},
        "involvedObject": {"kind": "ModelDeployment", "name": "triage"},
        "type": "Normal",
        "reason": "ModelResolved",
        "message": "resolved triage version 3 ",
        "firstTimestamp": "2025-03-01T12:00:00Z",
        "lastTimestamp": "2025-03-01T12:01:00Z",
        "count": 2,
    }
    now = datetime(2025, 3, 1, 12, 2, tzinfo=UTC)
    events = render_table([event], printer_columns=None, kind="Event", now=now)
    names = [c["name"] for c in events["columnDefinitions"] if c["priority"] == 0]
    assert names == ["Last Seen", "Type", "Reason", "Object", "Message"]
    cells = dict(
        zip([c["name"] for c in events["columnDefinitions"]], events["rows"][0]["cells"], strict=True)
    )
    assert cells["Last Seen"] == "60s" and cells["Object"] == "modeldeployment/triage"
    assert cells["Message"] == "resolved triage version 3" and cells["Count"] == 2


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (".spec.model.name", ["m"]),
        ("{.spec.list[0].name}", ["x"]),
        (".spec.list[-1].name", ["y"]),
        (".spec.list[*].name", ["x", "y"]),
        ('.status.conditions[?(@.type=="Ready")].status', ["False"]),
        (".status.conditions[?(@.type=='Ready')].status", ["False"]),
        (".status.conditions[?(@.observedGeneration>=2)].type", ["Ready"]),
        (".spec.list[?(@.primary==true)].name", ["y"]),
        (".spec.list[?(@.primary)].name", ["y"]),
        (".metadata.labels['app.kubernetes.io/name']", ["g"]),
        (".spec.missing.deeper", []),
    ],
)
def test_jsonpath(path: str, expected: list[Any]) -> None:
    obj = {
        "metadata": {"labels": {"app.kubernetes.io/name": "g"}},
        "spec": {"model": {"name": "m"}, "list": [{"name": "x"}, {"name": "y", "primary": True}]},
        "status": {
            "conditions": [
                {"type": "Synced", "status": "True", "observedGeneration": 1},
                {"type": "Ready", "status": "False", "observedGeneration": 2},
            ]
        },
    }
    assert evaluate_jsonpath(parse_jsonpath(path), obj) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "<invalid>"), (0, "0s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600 + 60, "3h1m"),
     (10 * 3600, "10h"), (3 * 86400 + 3600, "3d1h"), (30 * 86400, "30d"), (3 * 365 * 86400, "3y")],
)  # fmt: skip
def test_human_duration_matches_kubernetes(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_admission_of_many_objects_reuses_compiled_validators(registry: SchemaRegistry) -> None:
    """1000 admissions of distinct objects give independent results (no state leaks between them)."""
    make: Callable[[int], dict[str, Any]] = lambda index: gadget(scaling={"minReplicas": index % 4})  # noqa: E731
    results = [registry.admit(make(index), old=None)[0] for index in range(1000)]
    assert [result["spec"]["scaling"]["minReplicas"] for result in results[:5]] == [0, 1, 2, 3, 0]
    assert all(result["spec"]["scaling"]["maxReplicas"] == 3 for result in results)
    results[0]["spec"]["runtime"]["batching"]["maxBatchSize"] = 99
    assert results[1]["spec"]["runtime"]["batching"]["maxBatchSize"] == 16
