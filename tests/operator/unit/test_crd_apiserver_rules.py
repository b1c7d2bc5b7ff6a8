"""The generated CRDs against the rules kube-apiserver applies when a CRD is created.

Each check is a port of a rule in the Kubernetes source (staging/src/k8s.io/apiextensions-apiserver),
cited where it is checked; the rules are the ones a real API server refused our CRDs for, and the
other structural-schema rules around them:

- pkg/apiserver/schema/validation.go `validateStructuralInvariants`: every node has a type (but
  int-or-string), arrays have items, no additionalProperties at the root, the root is an object,
  kind and apiVersion are strings, int-or-string excludes preserve-unknown-fields;
  `validateStructuralMetadataInvariants`: the root `metadata` says nothing but `type: object`
  (name/generateName restrictions aside) - not even a description.
- pkg/apis/apiextensions/validation/validation.go `ValidateCustomResourceDefinitionOpenAPISchema`
  (`validate`): id, $ref, definitions, dependencies, patternProperties, additionalItems forbidden;
  uniqueItems true forbidden; properties and additionalProperties exclusive; list-type map needs
  object items whose map keys are scalar and required (or defaulted); rule messages without line
  breaks; with the status subresource only some keywords at the root (`allowedFieldsAtRootSchema`);
  no defaults inside metadata.
- pkg/apiserver/schema/defaulting/validation.go `validate`: every default must validate against its
  own schema node *literally* (the nested defaults are not applied to it first), must be pruned (no
  unknown fields), and the node's CEL rules are evaluated against it.

The last rule is why `default: {}` on an object carrying `self.minReplicas <= self.maxReplicas`
was refused ("no such key: minReplicas"). Rule costs are not estimated here: the envtest tier
installs the CRDs into a real kube-apiserver, which does.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel
from medserve_operator import api
from medserve_operator.tools import crdgen

CRDS: dict[str, dict[str, Any]] = {kind: crdgen.crd_for(model) for kind, model in api.KINDS.items()}

# pkg/apis/apiextensions/validation/validation.go, `validate` (each "is not supported").
UNSUPPORTED = {"id", "$ref", "definitions", "dependencies", "patternProperties", "additionalItems", "$schema"}
# ...and what a structural schema cannot carry (schema/structural.go has no field for them).
NOT_STRUCTURAL = {"anyOf", "oneOf", "allOf", "not", "nullable", "const", "$defs"}
# validation.go: allowedFieldsAtRootSchema, as JSON keywords.
ALLOWED_AT_ROOT = {
    "description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "required",
    "items", "properties", "externalDocs", "example", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
}  # fmt: skip
SCALARS = {"string", "integer", "number", "boolean"}
_ENV = celpy.Environment()


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.properties[{key}]")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.additionalProperties")


def structural_errors(root: dict[str, Any]) -> list[str]:
    """What validateStructuralInvariants / validateStructuralMetadataInvariants and the CRD schema
    validation report for one openAPIV3Schema (with the status subresource on)."""
    errors: list[str] = []
    if root.get("type") != "object":
        errors.append("type: must be object at the root")
    if "additionalProperties" in root:
        errors.append("additionalProperties: must not be used at the root")
    for key in set(root) - ALLOWED_AT_ROOT:
        errors.append(f"{key}: not allowed at the root of the schema if the status subresource is enabled")
    props = root.get("properties", {})
    for key in ("kind", "apiVersion"):
        if key in props and props[key].get("type") != "string":
            errors.append(f"properties[{key}].type: must be string")
    if "metadata" in props:
        meta = copy.deepcopy(props["metadata"])
        if meta.get("type") != "object":
            errors.append("properties[metadata].type: must be object")
        meta.pop("type", None)
        meta.pop("default", None)  # checked as "must not be set" below
        names = set(meta.get("properties", {}))
        if names and names <= {"name", "generateName"}:
            meta.pop("properties")
        if meta:
            errors.append(
                "properties[metadata]: Forbidden: must not specify anything other than name and generateName, "
                f"but metadata is implicitly specified (has {sorted(meta)})"
            )
        inside = walk(props["metadata"])
        errors += [f"properties[metadata]{p}.default: must not be set" for p, n in inside if "default" in n]
    for path, node in walk(root):
        where = path or "<root>"
        for key in (UNSUPPORTED | NOT_STRUCTURAL) & set(node):
            errors.append(f"{where}.{key}: not supported in a structural schema")
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        if "type" not in node and not int_or_string and not node.get("x-kubernetes-preserve-unknown-fields"):
            errors.append(f"{where}.type: Required value: must not be empty")
        if int_or_string and node.get("x-kubernetes-preserve-unknown-fields"):
            errors.append(f"{where}: x-kubernetes-preserve-unknown-fields must be false if x-kubernetes-int-or-string")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            errors.append(f"{where}.items: must be specified (one schema)")
        if node.get("uniqueItems") is True:
            errors.append(f"{where}.uniqueItems: cannot be set to true")
        if "properties" in node and "additionalProperties" in node:
            errors.append(f"{where}: additionalProperties and properties are mutual exclusive")
        if node.get("additionalProperties") is False:
            errors.append(f"{where}.additionalProperties: false is not supported")
        for required in node.get("required", []):
            if required not in node.get("properties", {}):
                errors.append(f"{where}.required: {required} is not a property")
        if node.get("x-kubernetes-list-type") == "map":
            items = node.get("items", {})
            keys = node.get("x-kubernetes-list-map-keys") or []
            if not keys or items.get("type") != "object":
                errors.append(f"{where}: list-type map needs map keys and object items")
            for key in keys:
                item = items.get("properties", {}).get(key)
                if item is None or item.get("type") not in SCALARS:
                    errors.append(f"{where}: map key {key} must be a scalar property of the items")
                elif key not in items.get("required", []) and "default" not in item:
                    errors.append(f"{where}.items.properties[{key}].default: must have a default or be required")
        for i, rule in enumerate(node.get("x-kubernetes-validations", [])):
            if not rule.get("rule"):
                errors.append(f"{where}.x-kubernetes-validations[{i}].rule: rule is not specified")
            message = rule.get("message")
            if message is not None and (not message or "\n" in message):
                errors.append(f"{where}.x-kubernetes-validations[{i}].message: must be non-empty, one line")
    return errors


def _type_ok(node: dict[str, Any], value: Any) -> bool:
    if node.get("x-kubernetes-int-or-string"):
        return isinstance(value, int | str) and not isinstance(value, bool)
    expected: dict[str, type | tuple[type, ...]] = {
        "string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list,
    }  # fmt: skip
    kind = node.get("type")
    if kind is None:
        return True
    return isinstance(value, expected[kind]) and not (kind in {"integer", "number"} and isinstance(value, bool))


def value_errors(node: dict[str, Any], value: Any, where: str) -> list[str]:
    """kube-openapi's schema validation of one value (ValidateCustomResource), without defaulting,
    followed by the node's CEL rules (cel.NewValidator(...).Validate) - bottom-up, as the server does."""
    if not _type_ok(node, value):
        return [f"{where}: Invalid value: must be of type {node.get('type')}"]
    errors: list[str] = []
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{where}: Unsupported value {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and (value < low or (node.get("exclusiveMinimum") and value == low)):
            errors.append(f"{where}: should be greater than {low}")
        if high is not None and (value > high or (node.get("exclusiveMaximum") and value == high)):
            errors.append(f"{where}: should be less than {high}")
    if isinstance(value, str):
        if "pattern" in node and not re.search(node["pattern"], value):
            errors.append(f"{where}: should match {node['pattern']!r}")
        if len(value) > node.get("maxLength", len(value)) or len(value) < node.get("minLength", 0):
            errors.append(f"{where}: length out of bounds")
    if isinstance(value, list):
        if len(value) > node.get("maxItems", len(value)) or len(value) < node.get("minItems", 0):
            errors.append(f"{where}: item count out of bounds")
        for i, item in enumerate(value):
            errors += value_errors(node.get("items", {}), item, f"{where}[{i}]")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        for key in node.get("required", []):
            if key not in value:
                errors.append(f"{where}.{key}: Required value")
        for key, item in value.items():
            if key in properties:
                errors += value_errors(properties[key], item, f"{where}.{key}")
            elif isinstance(node.get("additionalProperties"), dict):
                errors += value_errors(node["additionalProperties"], item, f"{where}.{key}")
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{where}.{key}: must not have unknown fields")
    if errors:
        return errors  # the server skips CEL on a value that failed the schema
    for rule in node.get("x-kubernetes-validations", []):
        try:
            ok = _ENV.program(_ENV.compile(rule["rule"])).evaluate({"self": json_to_cel(value)})
        except celpy.CELEvalError as exc:
            errors.append(f"{where}: Invalid value: {exc.args[0]} evaluating rule: {rule.get('message', rule['rule'])}")
            continue
        if isinstance(ok, celpy.CELEvalError):
            errors.append(f"{where}: Invalid value: {ok.args[0]} evaluating rule: {rule.get('message', rule['rule'])}")
        elif not ok:
            errors.append(f"{where}: Invalid value: {rule.get('message', rule['rule'])}")
    return errors


def default_errors(root: dict[str, Any]) -> list[str]:
    """defaulting/validation.go `validate`: each default, literally, against its own node."""
    errors: list[str] = []
    for path, node in walk(root):
        if "default" in node:
            errors += value_errors(node, node["default"], f"{path}.default")
    return errors


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_generated_schema_keeps_the_structural_rules(kind: str) -> None:
    assert structural_errors(schema_of(kind)) == []


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_every_default_validates_literally_with_its_cel_rules(kind: str) -> None:
    assert default_errors(schema_of(kind)) == []


def test_defaults_of_sub_objects_are_what_the_server_would_build_from_empty() -> None:
    """The full default changes nothing for users: it equals nested defaulting of {}."""
    for kind in api.KINDS:
        for path, node in walk(schema_of(kind)):
            if node.get("type") == "object" and "default" in node and "properties" in node:
                bare = {k: v for k, v in node.items() if k != "default"}
                assert node["default"] == crdgen.apply_schema_defaults(bare, {}), (kind, path)
    scaling = schema_of("ModelDeployment")["properties"]["spec"]["properties"]["scaling"]
    assert scaling["default"] == {"minReplicas": 1, "maxReplicas": 3}


# --- the checks fail on the bugs a real server found -----------------------------------------------------------


def test_a_described_root_metadata_is_refused() -> None:
    broken = copy.deepcopy(schema_of("ModelDeployment"))
    broken["properties"]["metadata"]["description"] = "Standard object metadata."
    [error] = structural_errors(broken)
    assert "must not specify anything other than name and generateName" in error
    # Restricting name is what the server allows; a default in metadata is not.
    allowed = copy.deepcopy(schema_of("ModelDeployment"))
    allowed["properties"]["metadata"]["properties"] = {"name": {"type": "string", "maxLength": 45}}
    assert structural_errors(allowed) == []
    allowed["properties"]["metadata"]["properties"]["name"]["default"] = "x"
    assert structural_errors(allowed) == ["properties[metadata].properties[name].default: must not be set"]


@pytest.mark.parametrize(
    ("kind", "path", "missing"),
    [
        ("ModelDeployment", ("spec", "scaling"), "minReplicas"),
        ("ABTest", ("spec", "statistics"), "minSamplesPerArm"),
        ("ABTest", ("spec", "metric"), "source"),
        ("RetrainPolicy", ("spec", "promotion", "abTest", "statistics"), "minSamplesPerArm"),
        ("RetrainPolicy", ("spec", "promotion", "abTest", "metric"), "source"),
    ],
)
def test_an_empty_default_under_a_cel_rule_is_refused(kind: str, path: tuple[str, ...], missing: str) -> None:
    broken = copy.deepcopy(schema_of(kind))
    node = broken
    for key in path:
        node = node["properties"][key]
    node["default"] = {}
    errors = default_errors(broken)
    assert errors and all(".default" in e for e in errors), errors
    assert any("no such" in e and missing in e for e in errors), errors


def test_other_structural_rules_are_enforced() -> None:
    base = schema_of("RetrainPolicy")
    cases: list[tuple[str, Any, str]] = [
        ("uniqueItems", True, "uniqueItems"),
        ("$ref", "#/x", "not supported"),
        ("nullable", True, "not supported"),
        ("additionalProperties", {"type": "string"}, "mutual exclusive"),
    ]
    for key, value, fragment in cases:
        broken = copy.deepcopy(base)
        broken["properties"]["spec"][key] = value
        assert any(fragment in e for e in structural_errors(broken)), key
    untyped = copy.deepcopy(base)
    del untyped["properties"]["spec"]["properties"]["schedule"]["type"]
    assert any("must not be empty" in e for e in structural_errors(untyped))
    env = copy.deepcopy(base)
    env_items = env["properties"]["spec"]["properties"]["job"]["properties"]["env"]["items"]
    env_items["required"] = [r for r in env_items.get("required", []) if r != "name"]
    assert any("must have a default or be required" in e for e in structural_errors(env))
    pruned = copy.deepcopy(schema_of("ModelDeployment"))
    pruned["properties"]["spec"]["properties"]["rollout"]["default"] = {"canaryTrafficPercent": 10, "bogus": 1}
    assert any("unknown fields" in e for e in default_errors(pruned))
