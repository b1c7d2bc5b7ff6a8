"""Structural-schema admission of custom resources: validation, defaulting and pruning in one walk.

This is what kube-apiserver does to a custom resource on every write, against the served version's
`openAPIV3Schema`: drop `null`s of non-nullable fields, apply `default`s (recursively: a defaulted
object gets its own defaults), prune fields the schema does not declare (unless
`x-kubernetes-preserve-unknown-fields`), validate types, enums, patterns, bounds, lengths, required
fields, `x-kubernetes-int-or-string`, `x-kubernetes-embedded-resource`, list types `set`/`map`, the
`format`s the apiserver checks, and then the CEL `x-kubernetes-validations` rules — skipped, as the
apiserver does, when the object has type errors. Error messages follow the apiserver's wording.

Schema nodes are compiled lazily and cached, so a large schema (KServe's InferenceService has about
13 000 nodes) costs only the nodes real objects touch. This module is the walk over a value and its
schema (defaulting, pruning, validation) and the CEL step; the compiled nodes and the value checks are
in _schemanode.py, ObjectMeta's fixed rules in _objectmeta.py.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from medserve_sandbox import _cel
from medserve_sandbox._objectmeta import ObjectMetaChecks
from medserve_sandbox._schemanode import (
    MISSING,
    Cause,
    CelJob,
    SchemaNode,
    go_value,
    is_type,
    join,
    json_type_name,
    valid_format,
)

__all__ = ["Cause", "SchemaNode", "Walk", "go_value", "join", "json_type_name", "visit_root"]


class Walk(ObjectMetaChecks):
    """One admission's walk over a value and its schema: defaulting, pruning and validation, then CEL."""

    # ------------------------------------------------------------------ the walk

    def visit(self, node: SchemaNode, value: Any, path: str, old: Any) -> Any:
        """Validate `value` against `node`; return a new, defaulted and pruned copy of it."""
        if value is None:
            if not node.nullable:
                self.type_error(path, value, node.type or "object")
            return None
        if node.int_or_string:
            if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
                self.type_error(path, value, "integer,string")
                return copy.deepcopy(value)
        elif node.type is not None and not is_type(value, node.type):
            self.type_error(path, value, node.type)
            return copy.deepcopy(value)
        if isinstance(value, dict):
            result: Any = self._visit_object(node, value, path, old)
        elif isinstance(value, list):
            result = self._visit_array(node, value, path, old)
        else:
            result = value
            self._check_scalar(node, value, path)
        if node.enum is not None and result not in node.enum:
            supported = ", ".join(go_value(item) for item in node.enum)
            self.type_errors = True  # kube lets enum errors, like type errors, block the CEL rules
            self.add(
                path,
                f"Unsupported value: {go_value(result)}: supported values: {supported}",
                "FieldValueNotSupported",
            )
        if node.value_checks:
            self._check_bounds(node, result, path)
        if node.rules:
            self.cel_jobs.append(CelJob(node, result, path, old, root=False))
        return result

    def _visit_object(self, node: SchemaNode, value: dict[str, Any], path: str, old: Any) -> dict[str, Any]:
        old_map = old if isinstance(old, dict) else None
        result: dict[str, Any] = {}
        for key, item in value.items():
            child = node.child(key)
            item_path = join(path, key) if node.properties_raw.get(key) is not None else f"{path}[{key}]"
            if child is None:
                if node.preserve_unknown or (node.type is None and not node.properties_raw):
                    result[key] = copy.deepcopy(item)
                elif node.embedded and key in ("apiVersion", "kind", "metadata"):
                    result[key] = self._embedded_part(key, item, join(path, key))
                else:
                    self.unknown.append(join(path, key))
                continue
            if item is None and not child.nullable:
                continue  # kube drops nulls of non-nullable fields before defaulting
            old_item = old_map.get(key, MISSING) if old_map is not None else MISSING
            result[key] = self.visit(child, item, item_path, old_item)
        for key, default in node.defaults:
            if key not in result:
                child = node.child(key)
                assert child is not None
                old_item = old_map.get(key, MISSING) if old_map is not None else MISSING
                result[key] = self.visit(child, copy.deepcopy(default), join(path, key), old_item)
        if node.embedded:
            for key in ("apiVersion", "kind"):
                if not result.get(key):
                    self.add(join(path, key), "Required value: must not be empty", "FieldValueRequired")
        for key in node.required:
            if key not in result:
                self.add(join(path, key), "Required value", "FieldValueRequired")
        return result

    def _embedded_part(self, key: str, item: Any, path: str) -> Any:
        if key == "metadata":
            if not isinstance(item, dict):
                self.type_error(path, item, "object")
                return copy.deepcopy(item)
            return self.visit_object_meta(item, path, name_required=False)
        if not isinstance(item, str):
            self.type_error(path, item, "string")
        return item

    def _visit_array(self, node: SchemaNode, value: list[Any], path: str, old: Any) -> list[Any]:
        items = node.items()
        old_by_key: dict[tuple[Any, ...], Any] = {}
        if node.list_type == "map" and node.list_map_keys and isinstance(old, list):
            for entry in old:
                if isinstance(entry, dict):
                    old_by_key[tuple(entry.get(k) for k in node.list_map_keys)] = entry
        result: list[Any] = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            if items is None:
                result.append(copy.deepcopy(item))
                continue
            old_item = MISSING
            if old_by_key and isinstance(item, dict):
                old_item = old_by_key.get(tuple(item.get(k) for k in node.list_map_keys), MISSING)
            result.append(self.visit(items, item, item_path, old_item))
        if node.list_type == "set":
            seen: set[str] = set()
            for index, item in enumerate(result):
                marker = go_value(item)
                if marker in seen:
                    self.add(f"{path}[{index}]", f"Duplicate value: {marker}", "FieldValueDuplicate")
                seen.add(marker)
        elif node.list_type == "map" and node.list_map_keys:
            seen_keys: set[str] = set()
            for index, item in enumerate(result):
                if not isinstance(item, dict):
                    continue
                key_value = {k: item.get(k) for k in node.list_map_keys}
                marker = go_value(key_value)
                if marker in seen_keys:
                    self.add(f"{path}[{index}]", f"Duplicate value: {marker}", "FieldValueDuplicate")
                seen_keys.add(marker)
        return result

    def _check_scalar(self, node: SchemaNode, value: Any, path: str) -> None:
        if not isinstance(value, str):
            return
        if node.pattern is not None and not node.pattern.search(value):
            self.add(
                path,
                f"Invalid value: {go_value(value)}: {path} in body should match '{node.pattern.pattern}'",
            )
        if node.format and not valid_format(node.format, value):
            self.add(
                path,
                f"Invalid value: {go_value(value)}: {path} in body must be of type "
                f"{node.format}: {go_value(value)}",
            )

    def _check_bounds(self, node: SchemaNode, value: Any, path: str) -> None:
        raw = node.raw
        shown = go_value(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "maximum" in raw:
                limit = raw["maximum"]
                if raw.get("exclusiveMaximum") is True and value >= limit:
                    self.add(
                        path, f"Invalid value: {shown}: {path} in body should be less than {go_value(limit)}"
                    )
                elif value > limit:
                    self.add(
                        path,
                        f"Invalid value: {shown}: {path} in body should be less than or equal "
                        f"to {go_value(limit)}",
                    )
            if "minimum" in raw:
                limit = raw["minimum"]
                if raw.get("exclusiveMinimum") is True and value <= limit:
                    self.add(
                        path,
                        f"Invalid value: {shown}: {path} in body should be greater than {go_value(limit)}",
                    )
                elif value < limit:
                    self.add(
                        path,
                        f"Invalid value: {shown}: {path} in body should be greater than or equal "
                        f"to {go_value(limit)}",
                    )
            if raw.get("multipleOf"):
                quotient = value / raw["multipleOf"]
                if not math.isclose(quotient, round(quotient), rel_tol=0, abs_tol=1e-9):
                    self.add(
                        path,
                        f"Invalid value: {shown}: {path} in body should be a multiple of "
                        f"{go_value(raw['multipleOf'])}",
                    )
        elif isinstance(value, str):
            if "maxLength" in raw and len(value) > raw["maxLength"]:
                self.add(
                    path, f"Too long: may not be more than {raw['maxLength']} bytes", "FieldValueTooLong"
                )
            if "minLength" in raw and len(value) < raw["minLength"]:
                self.add(
                    path,
                    f"Invalid value: {shown}: {path} in body should be at least "
                    f"{raw['minLength']} chars long",
                )
        elif isinstance(value, list):
            if "maxItems" in raw and len(value) > raw["maxItems"]:
                self.add(
                    path,
                    f"Too many: {len(value)}: must have at most {raw['maxItems']} items",
                    "FieldValueTooMany",
                )
            if "minItems" in raw and len(value) < raw["minItems"]:
                self.add(
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at least "
                    f"{raw['minItems']} items",
                )
        elif isinstance(value, dict):
            if "maxProperties" in raw and len(value) > raw["maxProperties"]:
                self.add(
                    path,
                    f"Too many: {len(value)}: must have at most {raw['maxProperties']} items",
                    "FieldValueTooMany",
                )
            if "minProperties" in raw and len(value) < raw["minProperties"]:
                self.add(
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at least "
                    f"{raw['minProperties']} properties",
                )
        self._check_combinators(node, value, path)

    def _check_combinators(self, node: SchemaNode, value: Any, path: str) -> None:
        """anyOf/oneOf/allOf/not only validate values in structural schemas (no defaulting or pruning)."""
        for keyword in ("anyOf", "oneOf", "allOf", "not"):
            branches = node.branches(keyword) if keyword in node.raw else ()
            if not branches:
                continue
            results = [_branch_errors(branch, value, path) for branch in branches]
            passing = sum(1 for errors in results if not errors)
            if keyword == "allOf":
                for errors in results:
                    self.causes.extend(errors)
            elif keyword == "anyOf" and passing == 0:
                self.causes.extend(results[0] if len(results) == 1 else [])
                if len(results) > 1:
                    self.add(
                        path,
                        f"Invalid value: {go_value(value)}: {path} in body must be valid against "
                        "at least one of the schemas in anyOf",
                    )
            elif keyword == "oneOf" and passing != 1:
                self.add(
                    path,
                    f"Invalid value: {go_value(value)}: {path} in body must validate one and only "
                    "one schema (oneOf)",
                )
            elif keyword == "not" and passing == 1:
                self.add(
                    path,
                    f"Invalid value: {go_value(value)}: {path} in body must not validate the schema (not)",
                )

    # ------------------------------------------------------------------ CEL

    def run_cel(self) -> None:
        """Run the collected CEL rules, unless type errors make them meaningless (as the apiserver does)."""
        if not self.cel_jobs or self.nameless:
            return
        if self.type_errors:
            self.add(
                "",
                'Invalid value: "null": some validation rules were not checked because the object was '
                "invalid; correct the existing errors to complete validation",
            )
            return
        for job in self.cel_jobs:
            transition_ready = job.old is not MISSING
            converted: dict[frozenset[str] | None, Any] = {}
            old_value: Any = MISSING
            for rule in job.node.rules:
                if rule.program is None or (rule.transition and not transition_ready):
                    continue
                view = _cel_view(job.value, job.root, rule.fields)
                memo_key = _memo_key(rule, view)
                outcome = _cel_memo.get(memo_key) if memo_key is not None else None
                if outcome is None:
                    if rule.fields not in converted:
                        converted[rule.fields] = _cel.to_cel(view, job.node)
                    if rule.transition and old_value is MISSING:
                        old_value = _cel.to_cel(_cel_view(job.old, job.root, None), job.node)
                    outcome = _cel.evaluate(rule, converted[rule.fields], old_value)
                    if memo_key is not None:
                        if len(_cel_memo) >= _CEL_MEMO_SIZE:
                            _cel_memo.clear()
                        _cel_memo[memo_key] = outcome
                if outcome.passed:
                    continue
                path = job.path
                if rule.field_path:
                    path = join(path, rule.field_path.lstrip("."))
                self.add(path, _cel_message(rule.reason, job.node, outcome.message), rule.reason)


# CEL rules are pure functions of the fields they read, so outcomes are remembered by those fields' values:
# the many status writes of an unchanged spec then cost no CEL evaluation at all.
_CEL_MEMO_SIZE = 20_000
_cel_memo: dict[tuple[str, str], _cel.CelOutcome] = {}


def _memo_key(rule: _cel.CelRule, view: Any) -> tuple[str, str] | None:
    if rule.fields is None or rule.transition:
        return None
    try:
        return rule.rule, json.dumps(view, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


def _cel_view(value: Any, root: bool, fields: frozenset[str] | None) -> Any:
    """What CEL sees: only the `fields` a rule reads (all when None) and, at the root, only
    `metadata.name` and `metadata.generateName` of the metadata."""
    if not isinstance(value, dict) or (not root and fields is None):
        return value
    view = dict(value) if fields is None else {key: value[key] for key in fields if key in value}
    meta = view.get("metadata") if root else None
    if isinstance(meta, dict):
        view["metadata"] = {key: meta[key] for key in ("name", "generateName") if key in meta}
        if "name" not in meta and isinstance(meta.get("generateName"), str):
            # The apiserver generates the name (generateName + 5 characters) before validation.
            view["metadata"]["name"] = meta["generateName"] + "xxxxx"
    return view


def _cel_message(reason: str, node: SchemaNode, message: str) -> str:
    match reason:
        case "FieldValueRequired":
            return f"Required value: {message}"
        case "FieldValueForbidden":
            return f"Forbidden: {message}"
        case "FieldValueDuplicate":
            return f"Duplicate value: {message}"
        case _:
            return f"Invalid value: {go_value(node.type or 'object')}: {message}"


def _branch_errors(branch: SchemaNode, value: Any, path: str) -> list[Cause]:
    """Errors of `value` against one anyOf/oneOf/allOf/not branch, without touching the value."""
    probe = Walk()
    if branch.type is not None and not is_type(value, branch.type):
        probe.type_error(path, value, branch.type)
        return probe.causes
    if branch.enum is not None and value not in branch.enum:
        supported = ", ".join(go_value(item) for item in branch.enum)
        probe.add(
            path,
            f"Unsupported value: {go_value(value)}: supported values: {supported}",
            "FieldValueNotSupported",
        )
    if isinstance(value, dict):
        for key in branch.required:
            if key not in value:
                probe.add(join(path, key), "Required value", "FieldValueRequired")
        for key, item in value.items():
            child = branch.child(key) if branch.properties_raw or branch.additional_raw else None
            if child is not None:
                probe.causes.extend(_branch_errors(child, item, join(path, key)))
    elif isinstance(value, list):
        items = branch.items()
        if items is not None:
            for index, item in enumerate(value):
                probe.causes.extend(_branch_errors(items, item, f"{path}[{index}]"))
    else:
        probe._check_scalar(branch, value, path)
    if branch.value_checks:
        probe._check_bounds(branch, value, path)
    return probe.causes


def visit_root(
    walk: Walk, root: SchemaNode, obj: dict[str, Any], old: dict[str, Any] | None
) -> dict[str, Any]:
    """Admit a whole custom resource: apiVersion/kind kept, metadata as ObjectMeta, the rest by the schema.

    The schema may constrain `metadata.name`/`metadata.generateName` (the only metadata fields a CRD
    schema may declare); the rest of ObjectMeta is validated by the fixed rules every kind shares.
    """
    result: dict[str, Any] = {}
    old_obj: Any = old if old is not None else MISSING
    for key, item in obj.items():
        if key in ("apiVersion", "kind"):
            result[key] = item
            if not isinstance(item, str):
                walk.type_error(key, item, "string")
            continue
        if key == "metadata":
            if not isinstance(item, dict):
                walk.type_error("metadata", item, "object")
                result[key] = copy.deepcopy(item)
                continue
            result[key] = walk.visit_object_meta(item, "metadata")
            meta_node = root.child("metadata")
            if meta_node is not None:
                for meta_key in ("name", "generateName"):
                    constraint = meta_node.child(meta_key)
                    if constraint is not None and isinstance(result[key].get(meta_key), str):
                        walk.visit(constraint, result[key][meta_key], f"metadata.{meta_key}", MISSING)
            continue
        child = root.child(key)
        if child is None:
            if root.preserve_unknown:
                result[key] = copy.deepcopy(item)
            else:
                walk.unknown.append(key)
            continue
        if item is None and not child.nullable:
            continue
        old_item = old.get(key, MISSING) if old is not None else MISSING
        result[key] = walk.visit(child, item, key, old_item)
    if "metadata" not in result:
        walk.add("metadata.name", "Required value: name or generateName is required", "FieldValueRequired")
    for key, default in root.defaults:
        if key not in result and key not in ("apiVersion", "kind", "metadata"):
            child = root.child(key)
            assert child is not None
            result[key] = walk.visit(child, copy.deepcopy(default), key, MISSING)
    for key in root.required:
        if key not in result:
            walk.add(key, "Required value", "FieldValueRequired")
    if root.rules:
        walk.cel_jobs.append(CelJob(root, result, "", old_obj, root=True))
    return result
