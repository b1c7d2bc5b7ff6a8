"""Standard Kubernetes conditions, shared by the three reconcilers.

Conditions follow the API conventions: `{type, status, reason, message, lastTransitionTime,
observedGeneration}`; `lastTransitionTime` moves only when `status` flips, and `Ready` is derived from
the other conditions rather than set by hand. Everything here is pure: dicts in, dicts out.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(TypedDict):
    type: str
    status: ConditionStatus
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it: UTC, second precision, a trailing Z."""
    return rfc3339(datetime.datetime.now(datetime.UTC))


def rfc3339(when: datetime.datetime) -> str:
    """`when` as Kubernetes writes times: UTC, second precision, a trailing Z."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    """A Kubernetes timestamp (RFC 3339) as an aware datetime; None when absent or malformed."""
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with the condition `type_` set; other conditions are kept in their order.

    The transition time is carried over unless the status flips, so that a periodic re-evaluation that
    finds nothing new writes nothing new.
    """
    result: list[dict[str, Any]] = []
    replaced = False
    for condition in conditions or ():
        if condition.get("type") != type_:
            result.append(dict(condition))
            continue
        replaced = True
        same = condition.get("status") == status and condition.get("lastTransitionTime")
        result.append(_make(type_, status, reason, message, generation,
                            str(condition["lastTransitionTime"]) if same else (now or now_rfc3339())))
    if not replaced:
        result.append(_make(type_, status, reason, message, generation, now or now_rfc3339()))
    return result


def derive_ready(
    conditions: Sequence[Mapping[str, Any]] | None,
    required: Sequence[str],
    *,
    generation: int,
    negative: Sequence[str] = (),
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Set `Ready` from the sub-conditions, as KServe does.

    Ready is True when every `required` condition is True and no `negative` condition (one whose True
    means trouble, such as `Degraded`) is True. Otherwise Ready copies the reason and message of the
    first condition that holds it back, so `kubectl get` shows why in one place.
    """
    blocking: Mapping[str, Any] | None = None
    for type_ in required:
        condition = find(conditions, type_)
        if condition is None or condition.get("status") != "True":
            blocking = condition or {"type": type_, "status": "Unknown", "reason": "Pending",
                                     "message": f"{type_} has not been evaluated yet"}
            break
    if blocking is None:
        for type_ in negative:
            condition = find(conditions, type_)
            if condition is not None and condition.get("status") == "True":
                blocking = condition
                break
    if blocking is None:
        return set_condition(conditions, "Ready", "True", "Ready", "all conditions are satisfied",
                             generation=generation, now=now)
    blocked_status: ConditionStatus = "Unknown" if blocking.get("status") == "Unknown" else "False"
    if blocking.get("type") in negative:
        blocked_status = "False"
    return set_condition(
        conditions, "Ready", blocked_status, str(blocking.get("reason") or "NotReady"),
        f"{blocking.get('type')}: {blocking.get('message', '')}", generation=generation, now=now,
    )


def _make(type_: str, status: ConditionStatus, reason: str, message: str, generation: int,
          when: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": when,
        "observedGeneration": generation,
    }


def transitions(
    old: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]] | None,
    *,
    negative: Sequence[str] = ("Degraded", "DriftDetected"),
) -> list[tuple[str, str, str]]:
    """Events for the conditions whose status or reason changed: (event type, reason, message).

    A condition turning good is a Normal event, turning bad a Warning; for `negative` conditions
    (True means trouble) it is the other way round.
    """
    events: list[tuple[str, str, str]] = []
    for condition in new or ():
        before = find(old, str(condition.get("type")))
        if before is not None and before.get("status") == condition.get("status") \
                and before.get("reason") == condition.get("reason"):
            continue
        good = condition.get("status") == "True"
        if condition.get("type") in negative:
            good = condition.get("status") == "False"
        if before is None and (good or condition.get("status") == "Unknown"):
            continue  # a first condition that is fine or not yet known: an event would only be noise
        if condition.get("type") == "Ready" and not good:
            continue  # the sub-condition holding Ready back has its own event
        unknown = condition.get("status") == "Unknown"  # waiting is not a failure
        events.append(("Normal" if good or unknown else "Warning", str(condition.get("reason")),
                       f"{condition.get('type')} is {condition.get('status')}: {condition.get('message', '')}"))
    return events
