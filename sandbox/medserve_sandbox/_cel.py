"""CEL `x-kubernetes-validations` rules of CRD schemas, evaluated with cel-python the way kube-apiserver does.

A rule is compiled once (programs are cached by rule text for the life of the process) and evaluated with
`self` bound to the value at its schema node, and `oldSelf` to the old value for transition rules.

cel-python implements the CEL core language and its standard functions: `has()`, `size()`, comparisons,
arithmetic, `&&`, `||`, `!`, the ternary, `in`, the macros `all`/`exists`/`exists_one`/`map`/`filter`,
`string.matches/startsWith/endsWith/contains`, `int()`/`string()`/`double()`, timestamps and durations.
It does not implement (and such rules are skipped, logged once per rule, never failing a write):
- the Kubernetes CEL libraries: `quantity()`, `isURL()`/`url()`, `ip()`/`cidr()`, `isSorted()`, `sum()`,
  `indexOf()`, `lowerAscii()`, `format()`, regex `find()`;
- optional types (`self.?field`, `optionalOldSelf: true`);
- comparisons between int and double values (kube's CEL allows them; cel-python has no such overload);
- the runtime cost budget (every rule runs to completion).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import celpy
from celpy import celtypes

logger = logging.getLogger(__name__)

_OLD_SELF = re.compile(r"\boldSelf\b")
_SELF = re.compile(r"\b(?<!\.)self\b")
_SELF_FIELD = re.compile(r"\b(?<!\.)self\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


def fields_used(rule: str) -> frozenset[str] | None:
    """The fields of `self` a rule reads when it only ever reads `self.<field>`; None when it may read more.

    Converting only those fields to CEL values makes a root rule on `self.metadata.name` cheap instead
    of converting the whole object on every write.
    """
    fields = frozenset(_SELF_FIELD.findall(rule))
    if len(_SELF.findall(rule)) != len(_SELF_FIELD.findall(rule)) or _OLD_SELF.search(rule):
        return None
    return fields


# Messages of cel-python evaluation errors that come from a feature it lacks rather than from the data.
_UNSUPPORTED_MARKERS = (
    "undeclared reference",
    "no such overload",
    "no matching overload",
    "unknown function",
)


class CelSchema(Protocol):
    """The part of a schema node the CEL value converter needs (kept abstract to avoid an import cycle)."""

    @property
    def type(self) -> str | None: ...

    def cel_child(self, key: str) -> CelSchema | None: ...

    def cel_items(self) -> CelSchema | None: ...


@dataclass(frozen=True)
class CelRule:
    """One compiled `x-kubernetes-validations` entry; `program is None` means cel-python cannot run it."""

    rule: str
    message: str | None
    message_expression: Any
    field_path: str | None
    reason: str
    transition: bool
    optional_old_self: bool
    program: Any
    fields: frozenset[str] | None


@dataclass(frozen=True)
class CelOutcome:
    """`passed` is True when the rule held (or could not be evaluated); otherwise `message` says why."""

    passed: bool
    message: str = ""


_programs: dict[str, Any] = {}
_unsupported: set[str] = set()
_environment: Any = None


def _compile(text: str) -> Any:
    """Compile one CEL expression for cel-python's interpreter.

    Its CompiledRunner is about three times faster but mis-evaluates `||`/`&&` over `has()` (cel-python
    0.5), so the interpreter is used for every rule.
    """
    global _environment
    if text in _programs:
        return _programs[text]
    if _environment is None:
        _environment = celpy.Environment()
    program = _environment.program(_environment.compile(text))
    _programs[text] = program
    return program


def _note_unsupported(rule: str, why: str) -> None:
    if rule not in _unsupported:
        _unsupported.add(rule)
        logger.warning("CEL rule not enforced by the emulator (%s): %s", why, rule)


def compile_rule(raw: Mapping[str, Any]) -> CelRule:
    """Compile a validation entry; a rule cel-python cannot parse is logged once and never enforced."""
    text = str(raw.get("rule", ""))
    program: Any = None
    optional_old_self = bool(raw.get("optionalOldSelf"))
    if optional_old_self:
        _note_unsupported(text, "optionalOldSelf needs CEL optional types")
    else:
        try:
            program = _compile(text)
        except Exception as exc:
            _note_unsupported(text, f"cel-python cannot compile it: {str(exc).splitlines()[0]}")
    message_expression: Any = None
    if raw.get("messageExpression"):
        try:
            message_expression = _compile(str(raw["messageExpression"]))
        except Exception as exc:
            _note_unsupported(str(raw["messageExpression"]), f"cel-python cannot compile it: {exc}")
    return CelRule(
        rule=text,
        message=str(raw["message"]) if raw.get("message") else None,
        message_expression=message_expression,
        field_path=str(raw["fieldPath"]) if raw.get("fieldPath") else None,
        reason=str(raw.get("reason") or "FieldValueInvalid"),
        transition=bool(_OLD_SELF.search(text)),
        optional_old_self=optional_old_self,
        program=program,
        fields=fields_used(text) if raw.get("messageExpression") is None else None,
    )


def to_cel(value: Any, schema: CelSchema | None) -> Any:
    """Convert a JSON value to CEL types; `number` fields become doubles even when written as integers."""
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        if schema is not None and schema.type == "number":
            return celtypes.DoubleType(float(value))
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        items = schema.cel_items() if schema is not None else None
        return celtypes.ListType([to_cel(item, items) for item in value])
    if isinstance(value, dict):
        return celtypes.MapType(
            {
                celtypes.StringType(key): to_cel(item, schema.cel_child(key) if schema is not None else None)
                for key, item in value.items()
            }
        )
    return celtypes.StringType(str(value))


def _run(program: Any, activation: dict[str, Any]) -> Any:
    result = program.evaluate(activation)
    if isinstance(result, Exception):
        raise result
    return result


def evaluate(rule: CelRule, self_value: Any, old_value: Any) -> CelOutcome:
    """Evaluate a rule on CEL-converted values (`old_value` only used by transition rules)."""
    if rule.program is None:
        return CelOutcome(True)
    activation = {"self": self_value}
    if rule.transition:
        activation["oldSelf"] = old_value
    try:
        result = _run(rule.program, activation)
    except Exception as exc:
        text = str(exc)
        if any(marker in text for marker in _UNSUPPORTED_MARKERS):
            _note_unsupported(rule.rule, f"cel-python cannot evaluate it: {text.splitlines()[0][:200]}")
            return CelOutcome(True)
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else text
        return CelOutcome(False, f"{detail} evaluating rule: {rule.rule}")
    if not isinstance(result, bool | celtypes.BoolType):
        return CelOutcome(False, f"rule did not evaluate to a boolean evaluating rule: {rule.rule}")
    if bool(result):
        return CelOutcome(True)
    if rule.message_expression is not None:
        try:
            message = _run(rule.message_expression, activation)
            if isinstance(message, str) and message.strip():
                return CelOutcome(False, str(message))
        except Exception as exc:
            logger.debug("messageExpression failed for rule %s: %s", rule.rule, exc)
    if rule.message:
        return CelOutcome(False, rule.message)
    return CelOutcome(False, f"failed rule: {rule.rule}")
