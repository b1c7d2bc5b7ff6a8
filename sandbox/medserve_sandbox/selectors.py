"""Label and field selectors as the Kubernetes API server parses them (`?labelSelector=`, `?fieldSelector=`).

Label selectors are parsed as apimachinery/pkg/labels/selector.go (Lexer, Parser, NewRequirement) does,
with its error messages: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not
exist), `k>1` and `k<1`. Field selectors support `=`, `==` and `!=` on any dotted path
of the object (the real server only allows a per-kind list such as `metadata.name`, `metadata.namespace`,
`involvedObject.*` for events, `status.phase` for pods; this emulator is more permissive there).
A missing field compares as the empty string, as in the real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from medserve_sandbox._objectmeta import (
    DNS1123_SUBDOMAIN,
    DNS1123_SUBDOMAIN_MESSAGE,
    LABEL_VALUE,
    LABEL_VALUE_MESSAGE,
    QUALIFIED_NAME_MESSAGE,
    QUALIFIED_NAME_PART,
)
from medserve_sandbox._schemanode import go_value


class SelectorError(ValueError):
    """A selector that does not parse; the message names the selector and the bad part."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of: =, !=, in, notin, exists, !exists, gt, lt
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
            case "gt" | "lt":
                # labels.Requirement.Matches: both the label's value and the bound parse as integers.
                try:
                    have, bound = int(str(value)), int(next(iter(self.values)))
                except ValueError:
                    return False
                return have > bound if self.operator == "gt" else have < bound
            case _:
                return not present


def _label_key_errors(key: str) -> list[str]:
    """api/validate/content IsLabelKey, with the patterns and messages ObjectMeta's label checks use."""
    parts = key.split("/")
    if len(parts) > 2:
        return ["a valid label key " + QUALIFIED_NAME_MESSAGE.removeprefix("name part ")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    errors: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                errors.append("prefix part must be no more than 253 characters")
            if not DNS1123_SUBDOMAIN.match(prefix):
                errors.append(f"prefix part {DNS1123_SUBDOMAIN_MESSAGE}")
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not QUALIFIED_NAME_PART.match(name):
        errors.append(QUALIFIED_NAME_MESSAGE)
    return errors


def _label_value_errors(value: str) -> list[str]:
    """api/validate/content IsLabelValue."""
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if not LABEL_VALUE.match(value):
        errors.append(LABEL_VALUE_MESSAGE)
    return errors


# The lexer's tokens (apimachinery/pkg/labels/selector.go string2token); identifiers are ("id", literal).
_SPECIAL = frozenset("=!(),<>")
_TOKENS = {")": ")", ",": ",", "!": "!", "==": "==", "=": "=", ">": "gt", "in": "in", "<": "lt", "!=": "!=",
           "notin": "notin", "(": "("}
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"


def _lex(selector: str) -> list[tuple[str, str]]:
    """labels.Lexer: (token, literal) pairs ending with ("end", "")."""
    items: list[tuple[str, str]] = []
    pos, size = 0, len(selector)
    while True:
        while pos < size and selector[pos] in " \t\r\n":
            pos += 1
        if pos >= size:
            items.append(("end", ""))
            return items
        if selector[pos] in _SPECIAL:  # scanSpecialSymbol: the longest run of symbols that is a token
            buffer, last = "", None
            while pos < size and selector[pos] in _SPECIAL:
                buffer += selector[pos]
                if buffer in _TOKENS:
                    last = (_TOKENS[buffer], buffer)
                elif last is not None:
                    break
                pos += 1
            items.append(last or ("error", f"error expected: keyword found '{buffer}'"))
            continue
        start = pos  # scanIDOrKeyword
        while pos < size and selector[pos] not in _SPECIAL and selector[pos] not in " \t\r\n":
            pos += 1
        literal = selector[start:pos]
        items.append((_TOKENS[literal], literal) if literal in _TOKENS else ("id", literal))


class _Parser:
    """labels.Parser: the same recursive descent, with the same error messages."""

    def __init__(self, selector: str) -> None:
        self.items = _lex(selector)
        self.position = 0

    def lookahead(self, values: bool = True) -> tuple[str, str]:
        token, literal = self.items[self.position]
        return ("id" if values and token in ("in", "notin") else token), literal

    def consume(self, values: bool = True) -> tuple[str, str]:
        found = self.lookahead(values)
        self.position += 1
        return found

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            token, literal = self.lookahead()
            if token == "end":
                return requirements
            if token not in ("id", "!"):
                raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")
            try:
                requirements.append(self.requirement())
            except SelectorError as exc:
                raise SelectorError(f"unable to parse requirement: {exc}") from None
            token, literal = self.consume()
            if token == "end":
                return requirements
            if token != ",":
                raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            following, literal = self.lookahead()
            if following not in ("id", "!"):
                raise SelectorError(f"found '{literal}', expected: identifier after ','")

    def requirement(self) -> Requirement:
        token, key = self.consume()
        operator = None
        if token == "!":
            operator = "!exists"
            token, key = self.consume()
        if token != "id":
            raise SelectorError(f"found '{key}', expected: identifier")
        if errors := _label_key_errors(key):
            raise SelectorError(f"<nil>: Invalid value: {go_value(key)}: {'; '.join(errors)}")
        if operator is not None or self.lookahead()[0] in ("end", ","):
            return Requirement(key, operator or "exists", frozenset())
        token, literal = self.consume(values=False)
        if token not in ("in", "notin", "=", "==", "!=", "gt", "lt"):
            raise SelectorError(f"found '{literal}', expected: {_BINARY_OPERATORS}")
        values = self.set_values() if token in ("in", "notin") else self.exact_value()
        return _new_requirement(key, {"==": "="}.get(token, token), values)

    def set_values(self) -> list[str]:
        token, literal = self.consume()
        if token != "(":
            raise SelectorError(f"found '{literal}' expected: '('")
        token, literal = self.lookahead()
        if token == ")":
            self.consume()
            return [""]
        if token not in ("id", ","):
            raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")
        found = self.identifiers()
        if self.consume()[0] != ")":
            raise SelectorError(f"found '{literal}', expected: ')'")
        return found

    def identifiers(self) -> list[str]:
        found: set[str] = set()
        while True:
            token, literal = self.consume()
            if token == "id":
                found.add(literal)
                following, literal = self.lookahead()
                if following == ")":
                    return sorted(found)
                if following != ",":
                    raise SelectorError(f"found '{literal}', expected: ',' or ')'")
            elif token == ",":
                following = self.lookahead()[0]
                if not found or following in (")", ","):
                    found.add("")
                if following == ")":
                    return sorted(found)
            else:
                raise SelectorError(f"found '{literal}', expected: ',', or identifier")

    def exact_value(self) -> list[str]:
        if self.lookahead()[0] in ("end", ","):
            return [""]
        token, literal = self.consume()
        if token != "id":
            raise SelectorError(f"found '{literal}', expected: identifier")
        return [literal]


def _new_requirement(key: str, operator: str, values: list[str]) -> Requirement:
    """labels.NewRequirement's checks of the values (the key was checked while parsing)."""
    errors: list[str] = []
    if operator in ("gt", "lt"):
        errors += [f"values[{i}]: Invalid value: {go_value(value)}: for 'Gt', 'Lt' operators, the value must be an "
                   "integer" for i, value in enumerate(values) if not re.fullmatch(r"[+-]?[0-9]+", value)]
    for i, value in enumerate(values):
        if problems := _label_value_errors(value):
            errors.append(f"values[{i}][{key}]: Invalid value: {go_value(value)}: {'; '.join(problems)}")
    if errors:
        raise SelectorError(errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]")
    return Requirement(key, operator, frozenset(values))


def parse_label_selector(selector: str) -> list[Requirement]:
    """Parse a label selector as labels.Parse does; raises SelectorError with its message."""
    return _Parser(selector).parse()


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
