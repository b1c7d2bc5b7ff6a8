"""Structural-schema admission of custom resources: validation, defaulting and pruning in one walk.

This is what kube-apiserver does to a custom resource on every write, against the served version's
`openAPIV3Schema`: drop `null`s of non-nullable fields, apply `default`s (recursively: a defaulted
object gets its own defaults), prune fields the schema does not declare (unless
`x-kubernetes-preserve-unknown-fields`), validate types, enums, patterns, bounds, lengths, required
fields, `x-kubernetes-int-or-string`, `x-kubernetes-embedded-resource`, list types `set`/`map`, the
`format`s the apiserver checks, and then the CEL `x-kubernetes-validations` rules — skipped, as the
apiserver does, when the object has type errors. Error messages follow the apiserver's wording.

Schema nodes are compiled lazily and cached, so a large schema (KServe's InferenceService has about
13 000 nodes) costs only the nodes real objects touch.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medserve_sandbox import _cel

logger = logging.getLogger(__name__)

Cause = tuple[str, str, str]  # (field path, message without the path, reason)

_MISSING: Any = object()

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
DNS1123_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_LABEL_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
_QUALIFIED_NAME_MESSAGE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)

_OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
        "ownerReferences", "finalizers", "managedFields",
    }
)  # fmt: skip
_TOTAL_ANNOTATION_BYTES = 256 * 1024

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5,19}[0-9A-Fa-f]{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_GO_DURATION = re.compile(r"^[-+]?(\d+(\.\d*)?(ns|us|µs|ms|s|m|h))+$|^0$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)


def _valid_format(fmt: str, value: str) -> bool:
    """The string formats kube-openapi checks in CRDs; numeric ones (int32, double, ...) are not checked."""
    try:
        match fmt:
            case "date-time" | "datetime":
                return bool(_DATE_TIME.match(value))
            case "date":
                return bool(_DATE.match(value))
            case "byte":
                base64.b64decode(value, validate=True)
                return True
            case "uuid" | "uuid3" | "uuid4" | "uuid5":
                return bool(_UUID.match(value))
            case "ipv4":
                ipaddress.IPv4Address(value)
                return True
            case "ipv6":
                ipaddress.IPv6Address(value)
                return True
            case "cidr":
                ipaddress.ip_network(value, strict=False)
                return True
            case "mac":
                return bool(_MAC.match(value))
            case "email":
                return bool(_EMAIL.match(value))
            case "hostname":
                return bool(_HOSTNAME.match(value))
            case "duration":
                return bool(_GO_DURATION.match(value))
            case _:
                return True
    except (ValueError, binascii.Error):
        return False


def json_type_name(value: Any) -> str:
    """The JSON type of a value, as the apiserver names it in type errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def go_value(value: Any) -> str:
    """Format a value the way Go's field errors do (`"abc"`, `20`, `0.5`, `true`, `null`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _is_type(value: Any, expected: str) -> bool:
    match expected:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case _:
            return True


def _compile_pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error as exc:
        logger.warning("schema pattern %r is not a Python regex, not enforced: %s", pattern, exc)
        return None


class SchemaNode:
    """One node of a structural schema; children are compiled on first use and cached."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        raw_type = raw.get("type")
        self.type: str | None = raw_type if isinstance(raw_type, str) else None
        self.nullable = bool(raw.get("nullable"))
        self.int_or_string = bool(raw.get("x-kubernetes-int-or-string"))
        self.embedded = bool(raw.get("x-kubernetes-embedded-resource"))
        self.properties_raw: Mapping[str, Any] = raw.get("properties") or {}
        additional = raw.get("additionalProperties")
        self.additional_raw: Mapping[str, Any] | None = (
            additional if isinstance(additional, Mapping) else None
        )
        self.preserve_unknown = bool(raw.get("x-kubernetes-preserve-unknown-fields")) or additional is True
        self.required: tuple[str, ...] = tuple(raw.get("required") or ())
        self.defaults: tuple[tuple[str, Any], ...] = tuple(
            (key, prop["default"]) for key, prop in self.properties_raw.items() if "default" in prop
        )
        self.enum: list[Any] | None = raw.get("enum")
        self.pattern = _compile_pattern(raw["pattern"]) if "pattern" in raw else None
        self.format: str | None = raw.get("format")
        self.list_type: str | None = raw.get("x-kubernetes-list-type")
        self.list_map_keys: tuple[str, ...] = tuple(raw.get("x-kubernetes-list-map-keys") or ())
        self.value_checks = tuple(
            key for key in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
                            "minProperties", "maxProperties", "multipleOf", "anyOf", "oneOf", "allOf", "not")
            if key in raw
        )  # fmt: skip
        self.rules: tuple[_cel.CelRule, ...] = tuple(
            _cel.compile_rule(rule) for rule in raw.get("x-kubernetes-validations") or ()
        )
        self._children: dict[str, SchemaNode] = {}
        self._additional: SchemaNode | None = None
        self._items: SchemaNode | None = None
        self._branches: dict[str, tuple[SchemaNode, ...]] = {}

    def child(self, key: str) -> SchemaNode | None:
        """The schema of property `key` (or of the map values), None when the schema does not declare it."""
        node = self._children.get(key)
        if node is not None:
            return node
        raw = self.properties_raw.get(key)
        if raw is None:
            if self.additional_raw is None:
                return None
            if self._additional is None:
                self._additional = SchemaNode(self.additional_raw)
            return self._additional
        node = SchemaNode(raw)
        self._children[key] = node
        return node

    def items(self) -> SchemaNode | None:
        raw = self.raw.get("items")
        if not isinstance(raw, Mapping):
            return None
        if self._items is None:
            self._items = SchemaNode(raw)
        return self._items

    def branches(self, keyword: str) -> tuple[SchemaNode, ...]:
        cached = self._branches.get(keyword)
        if cached is None:
            raw = self.raw.get(keyword)
            raws = [raw] if isinstance(raw, Mapping) else list(raw or ())
            cached = tuple(SchemaNode(branch) for branch in raws)
            self._branches[keyword] = cached
        return cached

    # The CelSchema protocol, for number-typed values in CEL.
    def cel_child(self, key: str) -> SchemaNode | None:
        return self.child(key)

    def cel_items(self) -> SchemaNode | None:
        return self.items()


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class _CelJob:
    node: SchemaNode
    value: Any
    path: str
    old: Any
    root: bool


@dataclass
class Walk:
    """The state of one admission: what was found wrong, pruned, and which CEL rules are still to run."""

    causes: list[Cause] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    type_errors: bool = False
    nameless: bool = False  # no name and no generateName: the apiserver refuses before any CEL rule runs
    cel_jobs: list[_CelJob] = field(default_factory=list)

    def add(self, path: str, message: str, reason: str = "FieldValueInvalid") -> None:
        self.causes.append((path, message, reason))

    def type_error(self, path: str, value: Any, expected: str) -> None:
        self.type_errors = True
        actual = json_type_name(value)
        self.add(
            path,
            f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"',
            "FieldValueTypeInvalid",
        )

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
        elif node.type is not None and not _is_type(value, node.type):
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
            self.cel_jobs.append(_CelJob(node, result, path, old, root=False))
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
            old_item = old_map.get(key, _MISSING) if old_map is not None else _MISSING
            result[key] = self.visit(child, item, item_path, old_item)
        for key, default in node.defaults:
            if key not in result:
                child = node.child(key)
                assert child is not None
                old_item = old_map.get(key, _MISSING) if old_map is not None else _MISSING
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
            old_item = _MISSING
            if old_by_key and isinstance(item, dict):
                old_item = old_by_key.get(tuple(item.get(k) for k in node.list_map_keys), _MISSING)
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
        if node.format and not _valid_format(node.format, value):
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

    # ------------------------------------------------------------------ ObjectMeta

    def visit_object_meta(
        self,
        meta: dict[str, Any],
        path: str,
        *,
        name_required: bool = True,
        name_pattern: str = "subdomain",
        max_name_length: int = 253,
    ) -> dict[str, Any]:
        """Validate ObjectMeta as the apiserver does for every kind; prune undeclared metadata fields."""
        result: dict[str, Any] = {}
        for key, item in meta.items():
            if key not in _OBJECT_META_FIELDS:
                self.unknown.append(join(path, key))
                continue
            if item is None:
                continue
            result[key] = copy.deepcopy(item)
        name = result.get("name")
        generate_name = result.get("generateName")
        if name is not None and not isinstance(name, str):
            self.type_error(join(path, "name"), name, "string")
        elif name:
            self._check_name(name, join(path, "name"), name_pattern, max_name_length)
        elif name_required and not generate_name:
            self.nameless = True
            self.add(
                join(path, "name"), "Required value: name or generateName is required", "FieldValueRequired"
            )
        if generate_name is not None and not isinstance(generate_name, str):
            self.type_error(join(path, "generateName"), generate_name, "string")
        namespace = result.get("namespace")
        if namespace is not None:
            if not isinstance(namespace, str):
                self.type_error(join(path, "namespace"), namespace, "string")
            elif namespace and (not _DNS1123_LABEL.match(namespace) or len(namespace) > 63):
                self.add(
                    join(path, "namespace"), f"Invalid value: {go_value(namespace)}: {DNS1123_LABEL_MESSAGE}"
                )
        for key in ("generation", "deletionGracePeriodSeconds"):
            if key in result and not _is_type(result[key], "integer"):
                self.type_error(join(path, key), result[key], "integer")
        for key in ("uid", "resourceVersion", "selfLink", "creationTimestamp", "deletionTimestamp"):
            if key in result and not isinstance(result[key], str):
                self.type_error(join(path, key), result[key], "string")
        self._check_string_map(result, "labels", path, labels=True)
        self._check_string_map(result, "annotations", path, labels=False)
        self._check_finalizers(result, path)
        self._check_owner_references(result, path)
        return result

    def _check_name(self, name: str, path: str, name_pattern: str, max_length: int) -> None:
        regex, message = {
            "label": (_DNS1123_LABEL, DNS1123_LABEL_MESSAGE),
            "dns1035": (_DNS1035_LABEL, DNS1035_LABEL_MESSAGE),
        }.get(name_pattern, (_DNS1123_SUBDOMAIN, DNS1123_SUBDOMAIN_MESSAGE))
        if not regex.match(name):
            self.add(path, f"Invalid value: {go_value(name)}: {message}")
        if len(name) > max_length:
            self.add(path, f"Invalid value: {go_value(name)}: must be no more than {max_length} characters")

    def _check_qualified_name(self, key: str, path: str) -> bool:
        prefix, _, name = key.rpartition("/")
        if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
            self.add(path, f"Invalid value: {go_value(key)}: prefix part {DNS1123_SUBDOMAIN_MESSAGE}")
            return False
        if not name or len(name) > 63 or not _QUALIFIED_NAME_PART.match(name):
            self.add(path, f"Invalid value: {go_value(key)}: {_QUALIFIED_NAME_MESSAGE}")
            return False
        return True

    def _check_string_map(self, meta: dict[str, Any], key: str, path: str, *, labels: bool) -> None:
        if key not in meta:
            return
        mapping = meta[key]
        map_path = join(path, key)
        if not isinstance(mapping, dict):
            self.type_error(map_path, mapping, "object")
            return
        total = 0
        for map_key, map_value in mapping.items():
            self._check_qualified_name(map_key, map_path)
            if not isinstance(map_value, str):
                self.type_error(f"{map_path}.{map_key}", map_value, "string")
                continue
            total += len(map_key) + len(map_value)
            if labels and (len(map_value) > 63 or not _LABEL_VALUE.match(map_value)):
                self.add(map_path, f"Invalid value: {go_value(map_value)}: {_LABEL_VALUE_MESSAGE}")
        if not labels and total > _TOTAL_ANNOTATION_BYTES:
            self.add(
                map_path,
                f"Too long: may not be more than {_TOTAL_ANNOTATION_BYTES} bytes",
                "FieldValueTooLong",
            )

    def _check_finalizers(self, meta: dict[str, Any], path: str) -> None:
        if "finalizers" not in meta:
            return
        finalizers = meta["finalizers"]
        list_path = join(path, "finalizers")
        if not isinstance(finalizers, list):
            self.type_error(list_path, finalizers, "array")
            return
        for index, item in enumerate(finalizers):
            if not isinstance(item, str):
                self.type_error(f"{list_path}[{index}]", item, "string")
            else:
                self._check_qualified_name(item, f"{list_path}[{index}]")

    def _check_owner_references(self, meta: dict[str, Any], path: str) -> None:
        if "ownerReferences" not in meta:
            return
        refs = meta["ownerReferences"]
        list_path = join(path, "ownerReferences")
        if not isinstance(refs, list):
            self.type_error(list_path, refs, "array")
            return
        for index, ref in enumerate(refs):
            ref_path = f"{list_path}[{index}]"
            if not isinstance(ref, dict):
                self.type_error(ref_path, ref, "object")
                continue
            for key in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(key):
                    self.add(join(ref_path, key), "Required value", "FieldValueRequired")
                elif not isinstance(ref[key], str):
                    self.type_error(join(ref_path, key), ref[key], "string")
            for key in ("controller", "blockOwnerDeletion"):
                if key in ref and not isinstance(ref[key], bool):
                    self.type_error(join(ref_path, key), ref[key], "boolean")

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
            transition_ready = job.old is not _MISSING
            converted: dict[frozenset[str] | None, Any] = {}
            old_value: Any = _MISSING
            for rule in job.node.rules:
                if rule.program is None or (rule.transition and not transition_ready):
                    continue
                view = _cel_view(job.value, job.root, rule.fields)
                memo_key = _memo_key(rule, view)
                outcome = _cel_memo.get(memo_key) if memo_key is not None else None
                if outcome is None:
                    if rule.fields not in converted:
                        converted[rule.fields] = _cel.to_cel(view, job.node)
                    if rule.transition and old_value is _MISSING:
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
    if branch.type is not None and not _is_type(value, branch.type):
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
    old_obj: Any = old if old is not None else _MISSING
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
                        walk.visit(constraint, result[key][meta_key], f"metadata.{meta_key}", _MISSING)
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
        old_item = old.get(key, _MISSING) if old is not None else _MISSING
        result[key] = walk.visit(child, item, key, old_item)
    if "metadata" not in result:
        walk.add("metadata.name", "Required value: name or generateName is required", "FieldValueRequired")
    for key, default in root.defaults:
        if key not in result and key not in ("apiVersion", "kind", "metadata"):
            child = root.child(key)
            assert child is not None
            result[key] = walk.visit(child, copy.deepcopy(default), key, _MISSING)
    for key in root.required:
        if key not in result:
            walk.add(key, "Required value", "FieldValueRequired")
    if root.rules:
        walk.cel_jobs.append(_CelJob(root, result, "", old_obj, root=True))
    return result
