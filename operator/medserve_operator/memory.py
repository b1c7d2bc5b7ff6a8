"""Per-object memory shared by the reconcilers: one lock per object, and the status last written.

The operator is the only writer of its resources' status, so the status it last wrote is never older
than one in a body handed over by a timer or a watch event: reconcilers decide on that, and a
reconciliation that finds nothing new writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any


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

    def forget(self, uid: str) -> None:
        self.locks.pop(uid, None)
        self.statuses.pop(uid, None)
