"""Compiled structural-schema nodes, the value checks they apply (types, formats), and a walk's findings.

`SchemaNode` compiles a node of a CRD's `openAPIV3Schema` lazily (a large schema costs only the nodes
real objects touch); `Findings` collects what one admission found wrong. The walk itself is in
_structural.py, ObjectMeta's fixed rules in _objectmeta.py.
"""

from __future__ import annotations

import base64
import binascii
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

MISSING: Any = object()

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5,19}[0-9A-Fa-f]{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_GO_DURATION = re.compile(r"^[-+]?(\d+(\.\d*)?(ns|us|µs|ms|s|m|h))+$|^0$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)


def valid_format(fmt: str, value: str) -> bool:
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


def is_type(value: Any, expected: str) -> bool:
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
class CelJob:
    node: SchemaNode
    value: Any
    path: str
    old: Any
    root: bool


@dataclass
class Findings:
    """The state of one admission: what was found wrong, pruned, and which CEL rules are still to run."""

    causes: list[Cause] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    type_errors: bool = False
    nameless: bool = False  # no name and no generateName: the apiserver refuses before any CEL rule runs
    cel_jobs: list[CelJob] = field(default_factory=list)

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

