"""Parsing and its errors: typed `parse_spec(Model, raw) -> Model`, and problems a person can act on.

Types are strict, as the API server's are: "5" is not an integer, and snake_case keys are unknown fields.
Every problem is a (path, message) pair, paths camelCase like `spec.model.version`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from medserve_operator.api.common import PATTERN_HINTS

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """An invalid object: one or more (path, message) problems, paths camelCase like `spec.model.version`.

    `path` and `message` are the first problem's; `problems` holds them all.
    """

    def __init__(self, path: str, message: str, *, problems: list[tuple[str, str]] | None = None) -> None:
        self.problems: list[tuple[str, str]] = problems if problems else [(path, message)]
        self.path, self.message = self.problems[0]
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.problems))

    @classmethod
    def from_problems(cls, problems: list[tuple[str, str]]) -> SpecError:
        return cls(problems[0][0], problems[0][1], problems=problems)


def _join_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


_TYPE_WORDS = {
    "a valid dictionary": "an object",
    "a valid array": "a list",
    "a valid list": "a list",
    "a valid integer": "an integer",
    "a valid number": "a number",
    "a valid boolean": "a boolean (true or false)",
    "a valid string": "a string",
}


def describe_error(error: Mapping[str, Any]) -> str:
    """A message a person can act on, for one pydantic error (from `ValidationError.errors()`)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(str(ctx.get("pattern")), f"must match the pattern {ctx.get('pattern')}")
        return f"{hint} (got {_shown(value)})"
    if kind in {"cel_rule", "quantity", "quantity_type"}:
        return str(error["msg"])
    message = str(error["msg"])
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    for prefix, replacement in (("Input should be", "must be"), ("String should", "must"), ("List should", "must")):
        if message.startswith(prefix):
            message = replacement + message[len(prefix) :]
    # Say it in the words of YAML and Kubernetes rather than Python's.
    for python_words, yaml_words in _TYPE_WORDS.items():
        message = message.replace(python_words, yaml_words)
    if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        return f'{message} (got {_shown(value)}; quote it in YAML, e.g. "{value}")'
    return f"{message} (got {_shown(value)})"


def errors_from_validation(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic ValidationError into (path, message) problems, paths camelCase under `prefix`."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        path = _join_path(prefix, tuple(error["loc"]))
        field_path = (error.get("ctx") or {}).get("field_path") if error["type"] == "cel_rule" else None
        if field_path:
            path = _join_path(path, tuple(field_path.lstrip(".").split(".")))
        problems.append((path, describe_error(error)))
    return problems


def _plain(value: object) -> object:
    """Plain dicts and lists from any Mapping/sequence (kopf hands specs over as read-only Mapping views)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _as_json(data: object) -> str:
    # YAML turns unquoted timestamps into datetime objects; kubectl sends them as strings, and so do we.
    return json.dumps(_plain(data), default=str)


def parse_spec(model: type[M], spec: Mapping[str, Any]) -> M:
    """Validate a spec (camelCase dict, as the API server stores it) as `model`, e.g. `ModelDeploymentSpec`.

    Raises SpecError with every problem, paths starting at `spec`.
    """
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be an object (got {_shown(spec)})")
    return parse_model(model, spec, prefix="spec")


def parse_model(model: type[M], data: Mapping[str, Any], *, prefix: str = "") -> M:
    """Validate `data` (camelCase, strict) as `model`; SpecError with every problem, paths under `prefix`."""
    try:
        return model.model_validate_json(_as_json(data), strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise SpecError.from_problems(errors_from_validation(exc, prefix)) from None


def shown(value: object) -> str:
    """`value` as JSON, cut to 80 characters, for an error message."""
    return _shown(value)
