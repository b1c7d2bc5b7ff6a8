"""Standard Kubernetes conditions, shared by the three reconcilers.

Conditions follow the API conventions: `{type, status, reason, message, lastTransitionTime,
observedGeneration}`; `lastTransitionTime` moves only when `status` flips, and `Ready` is derived from
the other conditions rather than set by hand. Everything here is pure: dicts in, dicts out.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, TypedDict

from medserve_operator.api.common import READY, REASON_NOT_READY, REASON_PENDING, REASON_READY, ConditionSet

ConditionStatus = Literal["True", "False", "Unknown"]


Check: TypeAlias = "tuple[ConditionStatus, str, str]"
"""A condition a step decided on, before it is written: (status, reason, message)."""
Event: TypeAlias = tuple[str, str, str]
"""An Event to post on the object: (type Normal/Warning, reason, message)."""


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
            blocking = condition or {"type": type_, "status": "Unknown", "reason": REASON_PENDING,
                                     "message": f"{type_} has not been evaluated yet"}
            break
    if blocking is None:
        for type_ in negative:
            condition = find(conditions, type_)
            if condition is not None and condition.get("status") == "True":
                blocking = condition
                break
    if blocking is None:
        return set_condition(conditions, READY, "True", REASON_READY, "all conditions are satisfied",
                             generation=generation, now=now)
    blocked_status: ConditionStatus = "Unknown" if blocking.get("status") == "Unknown" else "False"
    if blocking.get("type") in negative:
        blocked_status = "False"
    return set_condition(
        conditions, READY, blocked_status, str(blocking.get("reason") or REASON_NOT_READY),
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
    negative: Sequence[str],
) -> list[Event]:
    """Events for the conditions whose status or reason changed: (event type, reason, message).

    A condition turning good is a Normal event, turning bad a Warning; for `negative` conditions
    (True means trouble: a kind's `ConditionSet.negative`) it is the other way round.
    """
    events: list[Event] = []
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
        if condition.get("type") == READY and not good:
            continue  # the sub-condition holding Ready back has its own event
        unknown = condition.get("status") == "Unknown"  # waiting is not a failure
        events.append(("Normal" if good or unknown else "Warning", str(condition.get("reason")),
                       f"{condition.get('type')} is {condition.get('status')}: {condition.get('message', '')}"))
    return events


def announced_transitions(old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]] | None,
                          condition_set: ConditionSet) -> list[Event]:
    """`transitions` of the conditions `condition_set` announces, with its negative polarity."""

    def shown(conds: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
        announced = condition_set.announced
        return [c for c in conds or [] if announced is None or c.get("type") in announced]

    return transitions(shown(old), shown(new), negative=condition_set.negative)


class Conditions:
    """A condition list being built for one status write: every `put` at the same generation and time."""

    def __init__(self, current: Sequence[Mapping[str, Any]] | None, *, generation: int, now: str) -> None:
        self.items: list[dict[str, Any]] = [dict(c) for c in current or []]
        self.generation = generation
        self.now = now

    def put(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.items = set_condition(self.items, type_, status, reason, message, generation=self.generation,
                                   now=self.now)

    def drop(self, type_: str) -> None:
        self.items = [c for c in self.items if c.get("type") != type_]

    def find(self, type_: str) -> Mapping[str, Any] | None:
        return find(self.items, type_)

    def is_true(self, type_: str) -> bool:
        return is_true(self.items, type_)

    def ready(self, required: Sequence[str], *, negative: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The list with Ready derived from `required` and `negative` (see `derive_ready`)."""
        return derive_ready(self.items, required, negative=negative, generation=self.generation, now=self.now)
