"""Object storage of the emulator: resource types, the indexed objects, reads, event fan-out, watches.

One global, monotonically increasing resourceVersion; objects indexed by (group-resource, namespace,
name) so that reads are O(1) and lists are O(objects of that resource); every stored change is
appended to the resource's event log and offered to its watchers (watches.py) as it happens.
Writing (store.py) and deleting with garbage collection (lifecycle.py) build on this class.

It runs inside one asyncio event loop and every operation is synchronous, so no locks are needed;
background work is scheduled with `loop.call_soon`, after the response of the request that caused it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from medserve_sandbox.apierrors import ApiError, bad_request, not_found
from medserve_sandbox.objects import Obj
from medserve_sandbox.resources import GroupResource, ResourceType, builtin_types
from medserve_sandbox.selectors import ObjectFilter
from medserve_sandbox.watches import EVENT_HISTORY, EventLog, Watcher, WatchEvent

logger = logging.getLogger(__name__)

CRD_KEY: GroupResource = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES_KEY: GroupResource = ("", "namespaces")


class Admission(Protocol):
    """What the store needs from the schema registry (schemas.SchemaRegistry)."""

    def admit(self, obj: Obj, *, old: Obj | None, field_validation: str) -> tuple[Obj, list[str]]: ...

    def add_crd(self, crd: Obj) -> None: ...

    def remove_crd(self, name: str) -> None: ...


class ObjectStorage:
    """The objects of the emulated cluster, by resource type, and the watches on them."""

    def __init__(self, admission: Admission | None, *, watch_history: int = EVENT_HISTORY) -> None:
        self.admission = admission
        self.watch_history = max(1, watch_history)
        self.types: dict[GroupResource, ResourceType] = {}
        self.rv = 0
        self.objects: dict[GroupResource, dict[str, dict[str, Obj]]] = {}
        self.by_uid: dict[str, tuple[GroupResource, str, str]] = {}
        self.dependents: dict[str, set[tuple[GroupResource, str, str]]] = {}
        self.logs: dict[GroupResource, EventLog] = {}
        self.watchers: dict[GroupResource, set[Watcher]] = {}
        self.terminating_namespaces: set[str] = set()
        self.terminating_crds: set[GroupResource] = set()
        self.closing = False
        # Bumped whenever the set of served resources changes (discovery and OpenAPI caches key on it).
        self.types_generation = 0
        for rtype in builtin_types():
            self._register(rtype)


    def _register(self, rtype: ResourceType) -> None:
        self.types[rtype.key] = rtype
        self.objects.setdefault(rtype.key, {})
        # A resource's history starts when it starts being served (the real server's watch cache starts
        # from a list at that resourceVersion): a watch from before then is too old (410 Expired).
        self.logs.setdefault(rtype.key, EventLog(self.watch_history, compacted_rv=self.rv))
        self.types_generation += 1

    def _unregister(self, key: GroupResource) -> None:
        self.types.pop(key, None)
        self.objects.pop(key, None)
        self.logs.pop(key, None)
        for watcher in self.watchers.pop(key, set()):
            watcher.close()
        self.types_generation += 1

    def lookup(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.types.get((group, plural))
        if rtype is None or version not in rtype.versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rtype

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        for rtype in self.types.values():
            if rtype.group == group and rtype.kind == kind:
                return rtype
        return None

    # ---------------------------------------------------------------- reads

    def _bucket(self, rtype: ResourceType, namespace: str | None) -> dict[str, Obj]:
        return self.objects[rtype.key].setdefault(namespace or "", {})

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        buckets = self.objects.get(rtype.key)
        if buckets is None:
            return None
        return buckets.get(namespace or "", {}).get(name)

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.find(rtype, namespace, name)
        if obj is None:
            raise not_found(rtype, name)
        return obj

    def iterate(self, rtype: ResourceType, namespace: str | None, name: str | None = None) -> Iterator[Obj]:
        buckets = self.objects.get(rtype.key, {})
        if name is not None:
            for bucket_ns, bucket in buckets.items():
                if namespace is None or bucket_ns == namespace:
                    obj = bucket.get(name)
                    if obj is not None:
                        yield obj
            return
        if namespace is not None:
            yield from buckets.get(namespace, {}).values()
            return
        for bucket in buckets.values():
            yield from bucket.values()

    def list_objects(self, rtype: ResourceType, namespace: str | None, predicate: ObjectFilter | None,
             name: str | None = None) -> tuple[list[Obj], str]:
        items = [obj for obj in self.iterate(rtype, namespace, name) if predicate is None or predicate(obj)]
        items.sort(key=lambda obj: (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
        return items, str(self.rv)

    def _emit(self, key: GroupResource, event: WatchEvent) -> None:
        self.logs[key].append(event)
        for watcher in self.watchers.get(key, ()):
            watcher.offer(event)

    def _schedule(self, fn: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except ApiError as exc:
                logger.info("background cleanup %s%r: %s", fn.__name__, args, exc.message)
            except Exception:
                logger.exception("background cleanup %s%r failed", fn.__name__, args)

        try:
            asyncio.get_running_loop().call_soon(run)
        except RuntimeError:  # no loop (a synchronous caller): run it now
            run()

    def watch(self, rtype: ResourceType, namespace: str | None, name: str | None, predicate: ObjectFilter | None,
              since: str | None) -> tuple[Watcher, list[tuple[str, WatchEvent]]]:
        """Register a watcher; also return the events it must see first (replay or current state).

        Raises ApiError(410) when `since` is older than the kept history.
        """
        watcher = Watcher(rtype.key, namespace, name, predicate)
        backlog: list[tuple[str, WatchEvent]] = []
        if since in (None, "", "0"):
            items, _ = self.list_objects(rtype, namespace, predicate, name)
            backlog = [("ADDED", WatchEvent(int(obj["metadata"]["resourceVersion"]), "ADDED", obj, None))
                       for obj in items]
        else:
            assert since is not None
            try:
                start = int(since)
            except ValueError as exc:
                raise bad_request(f"resourceVersion {since!r} is not a valid resource version") from exc
            log = self.logs[rtype.key]
            if start < log.compacted_rv:
                raise ApiError(410, "Expired", f"too old resource version: {start} ({log.compacted_rv})")
            collector = Watcher(rtype.key, namespace, name, predicate)
            for event in log.since(start):
                collector.offer(event)
            while not collector.queue.empty():
                item = collector.queue.get_nowait()
                if item is not None:
                    backlog.append(item)
        self.watchers.setdefault(rtype.key, set()).add(watcher)
        if self.closing:
            watcher.close()
        return watcher, backlog

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.get(watcher.key, set()).discard(watcher)

    def close_all_watches(self) -> None:
        """End every watch stream now and every later one at once (the server is shutting down)."""
        self.closing = True
        for watchers in self.watchers.values():
            for watcher in watchers:
                watcher.close()
