"""Label and field selectors as the Kubernetes API server parses them (`?labelSelector=`, `?fieldSelector=`).

Label selectors support every operator of the API: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
`k` (exists) and `!k` (does not exist). Field selectors support `=`, `==` and `!=` on any dotted path
of the object (the real server only allows a per-kind list such as `metadata.name`, `metadata.namespace`,
`involvedObject.*` for events, `status.phase` for pods; this emulator is more permissive there).
A missing field compares as the empty string, as in the real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class SelectorError(ValueError):
    """A selector that does not parse; the message names the selector and the bad part."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of: =, !=, in, notin, exists, !exists
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case _:
                return not present


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses (`a in (x,y),b` is two requirements)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(r"^(?P<key>[^!=\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^=!\s]*)$")


def _check_key(key: str, selector: str) -> str:
    if not _LABEL_KEY.match(key):
        raise SelectorError(f"labelSelector {selector!r}: invalid label key {key!r}")
    return key


def _check_value(value: str, selector: str) -> str:
    if not _LABEL_VALUE.match(value) or len(value) > 63:
        raise SelectorError(f"labelSelector {selector!r}: invalid label value {value!r}")
    return value


def parse_label_selector(selector: str) -> list[Requirement]:
    """Parse a label selector string; raises SelectorError naming the bad requirement."""
    requirements: list[Requirement] = []
    for part in _split_top_level(selector):
        if match := _SET_RE.match(part):
            values = frozenset(
                _check_value(v.strip(), selector) for v in match["values"].split(",") if v.strip()
            )
            if not values:
                raise SelectorError(f"labelSelector {selector!r}: {part!r} needs at least one value")
            requirements.append(Requirement(_check_key(match["key"], selector), match["op"], values))
        elif match := _EQ_RE.match(part):
            operator = "!=" if match["op"] == "!=" else "="
            value = _check_value(match["value"], selector)
            requirements.append(Requirement(_check_key(match["key"], selector), operator, frozenset([value])))
        elif part.startswith("!"):
            requirements.append(Requirement(_check_key(part[1:].strip(), selector), "!exists", frozenset()))
        elif " " not in part:
            requirements.append(Requirement(_check_key(part, selector), "exists", frozenset()))
        else:
            raise SelectorError(f"labelSelector {selector!r}: cannot parse {part!r}")
    return requirements


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for step in self.path:
            current = current.get(step) if isinstance(current, Mapping) else None
        if current is None:
            text = ""
        elif isinstance(current, bool):
            text = "true" if current else "false"
        else:
            text = str(current)
        return (text == self.value) != self.negate


_FIELD_RE = re.compile(r"^(?P<path>[A-Za-z0-9_.-]+)\s*(?P<op>==|=|!=)\s*(?P<value>.*)$")


def parse_field_selector(selector: str) -> list[FieldRequirement]:
    """Parse a field selector string; raises SelectorError naming the bad requirement."""
    requirements: list[FieldRequirement] = []
    for part in (p.strip() for p in selector.split(",")):
        if not part:
            continue
        match = _FIELD_RE.match(part)
        if not match:
            raise SelectorError(f"fieldSelector {selector!r}: cannot parse {part!r} (use field=value)")
        value = match["value"].strip()
        requirements.append(FieldRequirement(tuple(match["path"].split(".")), match["op"] == "!=", value))
    return requirements


ObjectFilter = Callable[[Mapping[str, Any]], bool]


def compile_filter(label_selector: str | None, field_selector: str | None) -> ObjectFilter | None:
    """One predicate for both selectors, or None when there is nothing to filter on."""
    labels = parse_label_selector(label_selector) if label_selector else []
    fields = parse_field_selector(field_selector) if field_selector else []
    if not labels and not fields:
        return None

    def matches(obj: Mapping[str, Any]) -> bool:
        if labels:
            meta = obj.get("metadata")
            obj_labels = meta.get("labels") if isinstance(meta, Mapping) else None
            if not isinstance(obj_labels, Mapping):
                obj_labels = {}
            if not all(requirement.matches(obj_labels) for requirement in labels):
                return False
        return all(requirement.matches(obj) for requirement in fields)

    return matches


def field_selector_name(field_selector: str | None) -> str | None:
    """The name pinned by `metadata.name=X` in a field selector, for an O(1) lookup instead of a scan."""
    if not field_selector:
        return None
    for requirement in parse_field_selector(field_selector):
        if requirement.path == ("metadata", "name") and not requirement.negate:
            return requirement.value
    return None
