"""Per-object memory shared by the reconcilers: one lock per object, and the status last written.

The operator is the only writer of its resources' status, so the status it last wrote is never older
than one in a body handed over by a timer or a watch event: reconcilers decide on that, and a
reconciliation that finds nothing new writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Collection, Mapping
from typing import Any, TypeAlias

from medserve_operator.clients.kube import KubeClient, merge_patch
from medserve_operator.kit import conditions

Logger: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"
"""What the handlers are given to log with (kopf passes a LoggerAdapter)."""


@dataclasses.dataclass
class ObjectMemory:
    locks: dict[str, asyncio.Lock] = dataclasses.field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())

    def status(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The status last written for `uid`, else the one in `body` (after a restart)."""
        return dict(self.statuses.get(uid) or body.get("status") or {})

    def remember(self, uid: str, status: dict[str, Any]) -> None:
        self.statuses[uid] = status

    async def write_status(self, kube: KubeClient, api_version: str, plural: str, body: Mapping[str, Any],
                           current: dict[str, Any], new: dict[str, Any], *, events: list[tuple[str, str, str]],
                           announce: Collection[str] | None = None) -> None:
        """Patch the object's status from `current` to `new` (nothing when they are equal), remember `new`, and
        add an Event to `events` for each condition that changed (of the types in `announce`; None: all)."""
        if new == current:
            return
        meta = body["metadata"]
        await kube.patch(api_version, plural, meta["namespace"], meta["name"], {"status": merge_patch(current, new)},
                         subresource="status")
        self.remember(meta["uid"], new)

        def shown(conds: Any) -> list[dict[str, Any]]:
            return [c for c in conds or [] if announce is None or c.get("type") in announce]

        events.extend(conditions.transitions(shown(current.get("conditions")), shown(new.get("conditions"))))

    def forget(self, uid: str) -> None:
        self.locks.pop(uid, None)
        self.statuses.pop(uid, None)
