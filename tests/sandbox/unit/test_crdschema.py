"""The structural-schema rules the emulator refuses CRDs for (sandbox/medserve_sandbox/crdschema.py)."""

from __future__ import annotations

from typing import Any

from medserve_sandbox import crdschema


def crd(*schemas: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"versions": [{"name": f"v{i}", "schema": {"openAPIV3Schema": s}} for i, s in enumerate(schemas)]}}


LIMITS = {"type": "object", "properties": {"low": {"type": "integer"}, "high": {"type": "integer"}},
          "x-kubernetes-validations": [{"rule": "self.low <= self.high"}]}


def test_a_default_is_checked_literally_against_the_rules_below_it() -> None:
    root = {"type": "object", "properties": {"spec": {"type": "object", "default": {"limits": {}},
                                                      "properties": {"limits": LIMITS}}}}
    [(field, message, reason)] = crdschema.schema_causes(crd(root))
    assert field == "spec.validation.openAPIV3Schema.properties[spec].default"
    assert message == 'Invalid value: "object": no such key: low evaluating rule: self.low <= self.high'
    assert reason == "FieldValueInvalid"


def test_a_complete_default_and_a_metadata_restricting_names_pass() -> None:
    root = {"type": "object", "properties": {
        "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}},
        "spec": {"type": "object", "properties": {"limits": dict(LIMITS, default={"low": 1, "high": 2})}}}}
    assert crdschema.schema_causes(crd(root)) == []


def test_differing_versions_are_named_by_index() -> None:
    described = {"type": "object", "properties": {"metadata": {"type": "object", "description": "x"}}}
    [(field, _, reason)] = crdschema.schema_causes(crd({"type": "object"}, described))
    assert (field, reason) == ("spec.versions[1].schema.openAPIV3Schema.properties[metadata]", "FieldValueForbidden")
