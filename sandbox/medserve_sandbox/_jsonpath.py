"""A small JSONPath evaluator for CRD printer columns, as kube-apiserver's (client-go util/jsonpath) reads them.

Supports `.a.b`, `.a[0]`, `.a[-1]`, `.a[*].b`, `['a.b']`, filters `[?(@.type=="Ready")]` with `==`, `!=`,
`<`, `<=`, `>`, `>=` or bare existence, quotes single or double. `parse_jsonpath` compiles a path once,
`evaluate_jsonpath` returns every match; the Table renderer (_table.py) takes the first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


class JSONPathError(ValueError):
    """A printer-column JSONPath this evaluator does not understand."""


Step = tuple[Any, ...]

_IDENT = re.compile(r"[A-Za-z0-9_\-/$]+")
_FILTER = re.compile(
    r"^@((?:\.[A-Za-z0-9_\-/]+|\[['\"][^'\"]*['\"]\])*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*$"
)
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _literal(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    if _NUMBER.match(text):
        return float(text) if "." in text else int(text)
    raise JSONPathError(f"unsupported literal {text!r} in a JSONPath filter")


def parse_jsonpath(path: str) -> list[Step]:
    """Parse a printer-column JSONPath (with or without the surrounding braces) into steps."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    steps: list[Step] = []
    index = 0
    if text.startswith("$"):
        index = 1
    while index < len(text):
        char = text[index]
        if char == ".":
            index += 1
            if index < len(text) and text[index] == "*":
                steps.append(("wildcard",))
                index += 1
                continue
            match = _IDENT.match(text, index)
            if match is None:
                if index >= len(text):
                    break
                raise JSONPathError(f"unexpected {text[index]!r} at {index} in JSONPath {path!r}")
            steps.append(("field", match.group(0)))
            index = match.end()
        elif char == "[":
            end = _closing_bracket(text, index, path)
            inner = text[index + 1 : end].strip()
            index = end + 1
            if inner == "*":
                steps.append(("wildcard",))
            elif inner.startswith("?(") and inner.endswith(")"):
                filter_match = _FILTER.match(inner[2:-1].strip())
                if filter_match is None:
                    raise JSONPathError(f"unsupported filter {inner!r} in JSONPath {path!r}")
                sub_path = parse_jsonpath(filter_match.group(1)) if filter_match.group(1) else []
                operator = filter_match.group(2)
                value = _literal(filter_match.group(3)) if operator else None
                steps.append(("filter", sub_path, operator, value))
            elif len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                steps.append(("field", inner[1:-1]))
            elif re.fullmatch(r"-?\d+", inner):
                steps.append(("index", int(inner)))
            else:
                raise JSONPathError(f"unsupported subscript [{inner}] in JSONPath {path!r}")
        else:
            raise JSONPathError(f"unexpected {char!r} at {index} in JSONPath {path!r}")
    return steps


def _closing_bracket(text: str, start: int, path: str) -> int:
    depth = 0
    quote = ""
    for position in range(start, len(text)):
        char = text[position]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return position
    raise JSONPathError(f"unclosed [ in JSONPath {path!r}")


def _compare(left: Any, operator: str, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool) or left is None or right is None:
        comparable = left is right or left == right if operator in ("==", "!=") else False
        return comparable if operator == "==" else (not comparable if operator == "!=" else False)
    numeric = isinstance(left, int | float) and isinstance(right, int | float)
    if not numeric and not (isinstance(left, str) and isinstance(right, str)):
        return operator == "!="
    match operator:
        case "==":
            return bool(left == right)
        case "!=":
            return bool(left != right)
        case "<":
            return bool(left < right)
        case "<=":
            return bool(left <= right)
        case ">":
            return bool(left > right)
        case _:
            return bool(left >= right)


def evaluate_jsonpath(steps: list[Step], value: Any) -> list[Any]:
    """All values the path selects in `value` (missing keys select nothing)."""
    current = [value]
    for step in steps:
        following: list[Any] = []
        kind = step[0]
        for item in current:
            if kind == "field":
                if isinstance(item, Mapping) and step[1] in item:
                    following.append(item[step[1]])
            elif kind == "index":
                if isinstance(item, list) and -len(item) <= step[1] < len(item):
                    following.append(item[step[1]])
            elif kind == "wildcard":
                if isinstance(item, list):
                    following.extend(item)
                elif isinstance(item, Mapping):
                    following.extend(item.values())
            else:
                _, sub_path, operator, literal = step
                elements = (
                    item
                    if isinstance(item, list)
                    else list(item.values())
                    if isinstance(item, Mapping)
                    else []
                )
                for element in elements:
                    found = evaluate_jsonpath(sub_path, element)
                    if not found:
                        continue
                    if operator is None or _compare(found[0], operator, literal):
                        following.append(element)
        current = following
    return current

