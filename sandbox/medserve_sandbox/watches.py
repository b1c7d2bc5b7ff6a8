"""Watch streams of the emulator's store: the event log a watch resumes from, and one watcher's filter.

The store (storage.py) appends every write to the resource's `EventLog` and offers it to each `Watcher`
of that resource; the HTTP side (apiserver.py) drains a watcher's queue into the response.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field

from medserve_sandbox.objects import Obj
from medserve_sandbox.resources import GroupResource
from medserve_sandbox.selectors import ObjectFilter

# How many watch events are kept per resource for watches that resume from a resourceVersion;
# older resourceVersions get 410 Gone, and clients re-list, as with a compacted etcd. Between this
# and twice this many are kept (the log is trimmed in halves).
EVENT_HISTORY = 10000


@dataclass
class WatchEvent:
    rv: int
    type: str
    obj: Obj
    old: Obj | None
    encoded: bytes | None = None  # the JSON of `obj`, computed once for all watchers


@dataclass
class EventLog:
    history: int = EVENT_HISTORY  # how many events are kept at least
    events: list[WatchEvent] = field(default_factory=list)
    compacted_rv: int = 0  # events at or below this resourceVersion are forgotten

    def append(self, event: WatchEvent) -> None:
        self.events.append(event)
        # Trim in halves, so that appending stays O(1) amortised.
        if len(self.events) > 2 * self.history:
            self.compacted_rv = self.events[-self.history - 1].rv
            del self.events[:-self.history]

    def since(self, rv: int) -> list[WatchEvent]:
        start = bisect.bisect_right(self.events, rv, key=lambda event: event.rv)
        return self.events[start:]


class Watcher:
    """One watch stream: filters the events of one resource and queues them for the HTTP response."""

    def __init__(self, key: GroupResource, namespace: str | None, name: str | None,
                 predicate: ObjectFilter | None) -> None:
        self.key = key
        self.namespace = namespace
        self.name = name
        self.predicate = predicate
        # (type, event) pairs; None ends the stream (server shutdown, resource removed).
        self.queue: asyncio.Queue[tuple[str, WatchEvent] | None] = asyncio.Queue()

    def offer(self, event: WatchEvent) -> None:
        meta = event.obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return
        if self.name is not None and meta.get("name") != self.name:
            return
        event_type = event.type
        if self.predicate is not None:
            matches_now = self.predicate(event.obj)
            if event_type == "MODIFIED":
                matched_before = event.old is not None and self.predicate(event.old)
                if matches_now and not matched_before:
                    event_type = "ADDED"
                elif matched_before and not matches_now:
                    event_type = "DELETED"
                elif not matches_now:
                    return
            elif not matches_now:
                return
        self.queue.put_nowait((event_type, event))

    def close(self) -> None:
        self.queue.put_nowait(None)


