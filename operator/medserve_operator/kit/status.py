"""The status writer, and the per-object memory it keeps: one lock per object, and the status last written.

The operator is the only writer of its resources' status, so the status it last wrote is never older
than one in a body handed over by the resync or a watch event: reconcilers decide on that, and a
reconciliation that finds nothing new writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from medserve_operator.api.common import API_VERSION, INVALID_SPEC, READY, ConditionSet
from medserve_operator.clients.kube import KubeClient, merge_patch
from medserve_operator.kit import conditions


@dataclasses.dataclass(frozen=True)
class Resource:
    """One of the operator's own kinds, as its status writer needs it."""

    plural: str
    conditions: ConditionSet
    api_version: str = API_VERSION


@dataclasses.dataclass
class ObjectMemory:
    locks: dict[str, asyncio.Lock] = dataclasses.field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    on_reconciled: Callable[[str], None] | None = None
    """Told each object reconciled, by any path (the kind's `Resyncer.reconciled`)."""

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    def status(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The status last written for `uid`, else the one in `body` (after a restart)."""
        return dict(self.statuses.get(uid) or body.get("status") or {})

    def remember(self, uid: str, status: dict[str, Any]) -> None:
        self.statuses[uid] = status

    def forget(self, uid: str) -> None:
        self.locks.pop(uid, None)
        self.statuses.pop(uid, None)


async def write_status(kube: KubeClient, memory: ObjectMemory, resource: Resource, body: Mapping[str, Any],
                       current: dict[str, Any], new: dict[str, Any], *,
                       events: list[conditions.Event]) -> None:
    """Patch the object's status from `current` to `new` (nothing when they are equal), remember `new`, and add
    an Event to `events` for each announced condition that changed (the kind's ConditionSet says which)."""
    if new == current:
        return
    meta = body["metadata"]
    await kube.patch(resource.api_version, resource.plural, meta["namespace"], meta["name"],
                     {"status": merge_patch(current, new)}, subresource="status")
    memory.remember(meta["uid"], new)
    events.extend(conditions.announced_transitions(current.get("conditions"), new.get("conditions"),
                                                   resource.conditions))


def invalid_spec(current: Mapping[str, Any], error: Exception, *, generation: int, now: str,
                 phase: str | None = None) -> dict[str, Any]:
    """The status of an object whose spec does not validate: Ready False InvalidSpec naming the problems."""
    status = dict(current)
    status["observedGeneration"] = generation
    status["conditions"] = conditions.set_condition(status.get("conditions"), READY, "False", INVALID_SPEC,
                                                    str(error), generation=generation, now=now)
    if phase is not None:
        status["phase"] = phase
    return status
