"""The structural-schema rules kube-apiserver checks on a CustomResourceDefinition's schemas at create/update.

Ported, in the emulator's words, from k8s.io/apiextensions-apiserver:
- pkg/apiserver/schema/validation.go `validateStructuralMetadataInvariants`: the root `metadata` may
  say nothing but `type: object` (and restrict name/generateName) - not even a description;
- pkg/apiserver/schema/defaulting/validation.go `validate`: every `default` is checked literally (its
  nested defaults are not applied to it first) against the CEL rules of its node and of the nodes
  below it, so `default: {}` on an object whose rule reads `self.low` is refused with "no such key".
The errors carry the real field paths: `spec.validation.openAPIV3Schema...` when every version has the
same schema (the server folds them into the internal top-level validation), else
`spec.versions[i].schema.openAPIV3Schema...`.

Not covered here: the defaults' OpenAPI value validation and pruning check, rule cost estimation, and
the other structural invariants (tests/operator/unit/test_crd_apiserver_rules.py holds the project's
own CRDs to all of them; the envtest tier installs them into a real server).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from medserve_sandbox import _cel

Cause = tuple[str, str, str]  # field, message, reason

_METADATA_ALLOWED = frozenset({"name", "generateName"})
_NO_SUCH_KEY = re.compile(r"no such member in mapping: '([^']*)'")


def _metadata_causes(root: dict[str, Any], prefix: str) -> Iterator[Cause]:
    metadata = (root.get("properties") or {}).get("metadata")
    if not isinstance(metadata, dict):
        return
    rest = {k: v for k, v in metadata.items() if not (k == "type" and v == "object")}
    properties = rest.pop("properties", None)
    if rest or (isinstance(properties, dict) and set(properties) - _METADATA_ALLOWED):
        yield (f"{prefix}.properties[metadata]", "Forbidden: must not specify anything other than name and "
               "generateName, but metadata is implicitly specified", "FieldValueForbidden")


def _rule_message(raw: dict[str, Any]) -> str:
    """ruleErrorString of apiextensions' cel validation: the rule's message, else the rule."""
    return str(raw.get("message") or raw.get("rule") or "").strip()


def _rules_failing(node: dict[str, Any], value: Any) -> Iterator[str]:
    """The CEL errors of `node`'s rules (and its children's, on the children present) for `value`."""
    for raw in node.get("x-kubernetes-validations") or []:
        if not isinstance(raw, dict):
            continue
        rule = _cel.compile_rule(raw)
        if rule.transition:
            continue  # no oldSelf for a default
        outcome = _cel.evaluate(rule, _cel.to_cel(value, None), None)
        if outcome.passed:
            continue
        if " evaluating rule: " in outcome.message:
            detail = _NO_SUCH_KEY.sub(r"no such key: \1", outcome.message.rsplit(" evaluating rule: ", 1)[0])
            yield f"{detail} evaluating rule: {_rule_message(raw)}"
        else:
            yield outcome.message
    if isinstance(value, dict):
        for key, child in (node.get("properties") or {}).items():
            if key in value and isinstance(child, dict):
                yield from _rules_failing(child, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            yield from _rules_failing(node["items"], item)


def _default_causes(node: dict[str, Any], path: str) -> Iterator[Cause]:
    if "default" in node:
        for message in _rules_failing(node, node["default"]):
            yield (f"{path}.default", f'Invalid value: "{node.get("type", "object")}": {message}',
                   "FieldValueInvalid")
    for key, child in (node.get("properties") or {}).items():
        if isinstance(child, dict):
            yield from _default_causes(child, f"{path}.properties[{key}]")
    for key in ("items", "additionalProperties"):
        child = node.get(key)
        if isinstance(child, dict):
            yield from _default_causes(child, f"{path}.{key}")


def schema_causes(crd: dict[str, Any]) -> list[Cause]:
    """The causes the real server would refuse this CRD's schemas with (empty when none)."""
    versions = [v for v in (crd.get("spec") or {}).get("versions") or [] if isinstance(v, dict)]
    roots = [((v.get("schema") or {}).get("openAPIV3Schema")) for v in versions]
    same = len(roots) > 0 and all(root == roots[0] for root in roots)
    causes: list[Cause] = []
    for index, root in enumerate(roots[:1] if same else roots):
        if not isinstance(root, dict):
            continue
        prefix = "spec.validation.openAPIV3Schema" if same else f"spec.versions[{index}].schema.openAPIV3Schema"
        causes.extend(_metadata_causes(root, prefix))
        causes.extend(_default_causes(root, prefix))
    return causes
