"""The emulator's object store: the state and the write semantics of a Kubernetes API server, no HTTP.

One global, monotonically increasing resourceVersion; objects indexed by (group-resource, namespace,
name) so that reads and writes are O(1) and lists are O(objects of that resource); every write goes
through an admission step (defaulting, pruning, validation; see schemas.py) and is fanned out to
the watchers of that resource as it happens. Stored objects are never mutated in place: a write builds
a new dict, so lists, watch events and responses can share them without copying.

It runs inside one asyncio event loop and every operation is synchronous, so no locks are needed;
garbage collection and namespace/CRD cleanup are scheduled with `loop.call_soon`, after the response
of the request that triggered them, like the real controllers (only faster).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import datetime
import json
import logging
import secrets
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from medserve_sandbox import patches
from medserve_sandbox.resources import (
    CrdError,
    GroupResource,
    ResourceType,
    builtin_types,
    type_from_crd,
)
from medserve_sandbox.schemas import failure_status
from medserve_sandbox.selectors import ObjectFilter

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

CRD_KEY: GroupResource = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES_KEY: GroupResource = ("", "namespaces")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# How many watch events are kept per resource for watches that resume from a resourceVersion;
# older resourceVersions get 410 Gone, and clients re-list, as with a compacted etcd. Between this
# and twice this many are kept (the log is trimmed in halves).
EVENT_HISTORY = 10000
# The real server refuses to delete these.
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
# batch/v1 Jobs orphan their pods by default (a compatibility rule of the real server).
ORPHAN_BY_DEFAULT = frozenset({("batch", "jobs")})
# Built-in kinds that carry metadata.generation (custom resources always do).
GENERATION_KINDS = frozenset({("batch", "jobs"), ("batch", "cronjobs"), CRD_KEY})
SYSTEM_METADATA = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds")


class Admission(Protocol):
    """What the store needs from the schema registry (schemas.SchemaRegistry)."""

    def admit(self, obj: Obj, *, old: Obj | None, field_validation: str) -> tuple[Obj, list[str]]: ...

    def add_crd(self, crd: Obj) -> None: ...

    def remove_crd(self, name: str) -> None: ...


class ApiError(Exception):
    """An error answered as a `Status` object, as the real API server does."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status_body(self) -> Obj:
        return failure_status(self.code, self.reason, self.message, self.details)

    @classmethod
    def from_status(cls, status: Obj) -> ApiError:
        return cls(
            int(status.get("code", 500)),
            str(status.get("reason", "InternalError")),
            str(status.get("message", "")),
            status.get("details"),
        )


def _details(rtype: ResourceType, name: str) -> dict[str, Any]:
    return {"name": name, "group": rtype.group, "kind": rtype.plural}


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rtype.group_resource()} "{name}" not found', _details(rtype, name))


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {rtype.group_resource()} "{name}": {why}',
        _details(rtype, name),
    )


def invalid(rtype: ResourceType, name: str, field_path: str, message: str,
            reason: str = "FieldValueInvalid") -> ApiError:
    details = _details(rtype, name) | {"kind": rtype.kind, "causes": [
        {"reason": reason, "message": f"{field_path}: {message}", "field": field_path},
    ]}
    return ApiError(422, "Invalid", f'{rtype.kind} "{name}" is invalid: {field_path}: {message}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clone(obj: Obj) -> Obj:
    """A deep copy; the JSON round trip is faster than copy.deepcopy for JSON-shaped data."""
    result: Obj = json.loads(json.dumps(obj))
    return result


def _owner_uids(obj: Obj) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {ref["uid"] for ref in refs if isinstance(ref, dict) and isinstance(ref.get("uid"), str)}


def _content(obj: Obj, *, with_status: bool) -> Obj:
    """The part of an object whose change bumps metadata.generation."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if with_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def _drop_empty_metadata(meta: Obj) -> None:
    """The real server omits empty labels, annotations, finalizers and ownerReferences (omitempty)."""
    for key in ("labels", "annotations", "finalizers", "ownerReferences"):
        if key in meta and not meta[key]:
            del meta[key]


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


@dataclass
class WriteResult:
    obj: Obj
    warnings: list[str] = field(default_factory=list)
    created: bool = False


class Store:
    """All objects of the emulated cluster, and the semantics of writing them."""

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
        for namespace in INITIAL_NAMESPACES:
            self._put(self.types[NAMESPACES_KEY], {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "uid": str(uuid.uuid4()),
                             "creationTimestamp": now_rfc3339(),
                             "labels": {"kubernetes.io/metadata.name": namespace}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }, old=None)

    # ---------------------------------------------------------------- resource types

    def _register(self, rtype: ResourceType) -> None:
        self.types[rtype.key] = rtype
        self.objects.setdefault(rtype.key, {})
        self.logs.setdefault(rtype.key, EventLog(self.watch_history))
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

    # ---------------------------------------------------------------- low-level writes

    def _put(self, rtype: ResourceType, obj: Obj, *, old: Obj | None) -> Obj:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        key = rtype.key
        namespace = meta.get("namespace", "")
        name = meta["name"]
        self._bucket(rtype, namespace)[name] = obj
        self.by_uid[meta["uid"]] = (key, namespace, name)
        old_owners = _owner_uids(old) if old is not None else set()
        new_owners = _owner_uids(obj)
        for uid in old_owners - new_owners:
            self.dependents.get(uid, set()).discard((key, namespace, name))
        for uid in new_owners - old_owners:
            self.dependents.setdefault(uid, set()).add((key, namespace, name))
        if any(uid not in self.by_uid for uid in new_owners):
            self._schedule(self._collect_if_orphaned, key, namespace, name)
        self._emit(key, WatchEvent(self.rv, "ADDED" if old is None else "MODIFIED", obj, old))
        return obj

    def _remove(self, rtype: ResourceType, obj: Obj) -> Obj:
        self.rv += 1
        meta = obj["metadata"]
        final = dict(obj, metadata=dict(meta, resourceVersion=str(self.rv)))
        key = rtype.key
        namespace = meta.get("namespace", "")
        name = meta["name"]
        bucket = self.objects.get(key, {}).get(namespace, {})
        bucket.pop(name, None)
        uid = meta["uid"]
        self.by_uid.pop(uid, None)
        for owner in _owner_uids(obj):
            owned = self.dependents.get(owner)
            if owned is not None:
                owned.discard((key, namespace, name))
                if not owned:
                    del self.dependents[owner]
                self._schedule(self._finish_foreground, owner)
        self._emit(key, WatchEvent(self.rv, "DELETED", final, obj))
        if uid in self.dependents:
            self._schedule(self._collect_dependents, uid)
        if namespace and namespace in self.terminating_namespaces:
            self._schedule(self._finish_namespace, namespace)
        if key in self.terminating_crds:
            self._schedule(self._finish_crd, key)
        if key == CRD_KEY:
            self._uninstall_crd(obj)
        return final

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

    def _admit(self, rtype: ResourceType, obj: Obj, old: Obj | None, field_validation: str) -> tuple[Obj, list[str]]:
        if self.admission is None:
            return obj, []
        try:
            return self.admission.admit(obj, old=old, field_validation=field_validation)
        except ApiError:
            raise
        except Exception as exc:
            # schemas.InvalidObject carries its own 422 Status; anything else is a bug in admission.
            status_body = getattr(exc, "status_body", None)
            if callable(status_body):
                raise ApiError.from_status(status_body()) from exc
            logger.exception("admission failed for %s", rtype.kind)
            raise ApiError(500, "InternalError", f"admission of {rtype.kind} failed: {exc}") from exc

    # ---------------------------------------------------------------- create

    def _check_type_meta(self, rtype: ResourceType, version: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(f"the body of a {rtype.kind} must be a JSON object")
        expected = rtype.api_version(version)
        body.setdefault("apiVersion", expected)
        body.setdefault("kind", rtype.kind)
        if body["kind"] != rtype.kind or body["apiVersion"] != expected:
            raise bad_request(
                f"the API version in the data ({body['apiVersion']}) and kind ({body['kind']}) do not match "
                f"the request ({expected}, {rtype.kind})"
            )
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be a JSON object")
        return meta

    def _check_namespace(self, rtype: ResourceType, namespace: str | None, meta: Obj) -> str | None:
        if not rtype.namespaced:
            meta.pop("namespace", None)
            return None
        if namespace is None:
            raise ApiError(405, "MethodNotAllowed",
                           f"{rtype.plural} are namespaced: use /namespaces/NAME/{rtype.plural}")
        body_namespace = meta.get("namespace")
        if body_namespace not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace
        return namespace

    def create(self, rtype: ResourceType, version: str, namespace: str | None, body: Any, *,
               dry_run: bool = False, field_validation: str = "Warn") -> WriteResult:
        meta = self._check_type_meta(rtype, version, body)
        namespace = self._check_namespace(rtype, namespace, meta)
        if namespace is not None:
            namespace_obj = self.find(self.types[NAMESPACES_KEY], None, namespace)
            if namespace_obj is None:
                raise not_found(self.types[NAMESPACES_KEY], namespace)
            if namespace in self.terminating_namespaces:
                raise ApiError(
                    403, "Forbidden",
                    f'{rtype.plural} "{meta.get("name", "")}" is forbidden: unable to create new content in '
                    f"namespace {namespace} because it is being terminated",
                )
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise invalid(rtype, "", "metadata.name", "Required value: name or generateName is required",
                              "FieldValueRequired")
            alphabet = string.ascii_lowercase + string.digits
            for _ in range(100):
                name = prefix + "".join(secrets.choice(alphabet) for _ in range(5))
                if self.find(rtype, namespace, name) is None:
                    break
            meta["name"] = name
        if not isinstance(name, str):
            raise invalid(rtype, str(name), "metadata.name", "must be a string")
        if self.find(rtype, namespace, name) is not None:
            raise ApiError(
                409, "AlreadyExists", f'{rtype.group_resource()} "{name}" already exists', _details(rtype, name)
            )
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rtype.custom or rtype.key in GENERATION_KINDS:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rtype.has_status(version):
            body.pop("status", None)
        self._prepare_builtin(rtype, body)
        obj, warnings = self._admit(rtype, body, None, field_validation)
        _drop_empty_metadata(obj["metadata"])
        if rtype.key == CRD_KEY:
            new_type = self._check_crd(obj)
            obj["status"] = self._crd_status(obj)
        if dry_run:
            return WriteResult(obj, warnings, created=True)
        if rtype.key == CRD_KEY:
            self._add_crd_schema(obj)
        self._put(rtype, obj, old=None)
        if rtype.key == CRD_KEY:
            self._install_crd(obj, new_type)
        return WriteResult(obj, warnings, created=True)

    def _prepare_builtin(self, rtype: ResourceType, obj: Obj) -> None:
        """What the real server's create strategies fill in for the built-in kinds we serve."""
        match rtype.key:
            case ("", "namespaces"):
                obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
                obj["status"] = {"phase": "Active"}
                obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            case ("", "pods"):
                obj["status"] = {"phase": "Pending"}
            case ("", "secrets"):
                self._fold_string_data(obj)
                if not obj.get("type"):
                    obj["type"] = "Opaque"
            case ("", "services"):
                obj["status"] = {"loadBalancer": {}}

    @staticmethod
    def _fold_string_data(obj: Obj) -> None:
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()

    # ---------------------------------------------------------------- update / patch

    def update(self, rtype: ResourceType, version: str, namespace: str | None, name: str, body: Any, *,
               subresource: str | None = None, dry_run: bool = False,
               field_validation: str = "Warn") -> WriteResult:
        old = self.get(rtype, namespace, name)
        # Custom resources (and CRDs) do not allow unconditional updates: a PUT must name the
        # resourceVersion it replaces, as on a real server (built-in kinds like ConfigMap allow it).
        meta = body.get("metadata") if isinstance(body, dict) else None
        if (rtype.custom or rtype.key == CRD_KEY) and not (isinstance(meta, dict) and meta.get("resourceVersion")):
            raise invalid(rtype, name, "metadata.resourceVersion",
                          "Invalid value: 0x0: must be specified for an update")
        return self._update(rtype, version, namespace, name, body, old, subresource=subresource,
                            dry_run=dry_run, field_validation=field_validation)

    def patch(self, rtype: ResourceType, version: str, namespace: str | None, name: str, patch_type: str,
              patch: Any, *, subresource: str | None = None, dry_run: bool = False,
              field_validation: str = "Warn") -> WriteResult:
        old = self.get(rtype, namespace, name)
        base = clone(old)
        if base["apiVersion"] != rtype.api_version(version):
            base["apiVersion"] = rtype.api_version(version)
        try:
            match patch_type:
                case "merge":
                    if not isinstance(patch, dict):
                        raise patches.PatchError("a merge patch must be a JSON object")
                    patched = patches.merge_patch(base, patch)
                case "json":
                    patched = patches.json_patch(base, patch)
                case "strategic":
                    if rtype.custom:
                        raise ApiError(
                            415, "UnsupportedMediaType",
                            "the body of the request was in an unknown format - accepted media types include: "
                            "application/json-patch+json, application/merge-patch+json, "
                            "application/apply-patch+yaml",
                        )
                    if not isinstance(patch, dict):
                        raise patches.PatchError("a strategic merge patch must be a JSON object")
                    patched = patches.strategic_merge_patch(base, patch)
                case _:
                    raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
        except patches.PatchError as exc:
            raise ApiError(422, "Invalid", f'{rtype.kind} "{name}": {exc}', _details(rtype, name)) from exc
        if not isinstance(patched, dict):
            raise bad_request("the patch did not produce an object")
        return self._update(rtype, version, namespace, name, patched, old, subresource=subresource,
                            dry_run=dry_run, field_validation=field_validation)

    def _update(self, rtype: ResourceType, version: str, namespace: str | None, name: str, body: Any,
                old: Obj, *, subresource: str | None, dry_run: bool, field_validation: str) -> WriteResult:
        if subresource not in (None, "status"):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({subresource})")
        if subresource == "status" and not rtype.has_status(version):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        meta = self._check_type_meta(rtype, version, body)
        if meta.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        self._check_namespace(rtype, namespace, meta)
        old_meta = old["metadata"]
        requested_rv = meta.get("resourceVersion")
        if requested_rv not in (None, "") and requested_rv != old_meta["resourceVersion"]:
            raise conflict(rtype, name, "the object has been modified; please apply your changes to the latest "
                                        "version and try again")
        new: Obj
        if subresource == "status":
            new = clone(old)
            new["apiVersion"] = body["apiVersion"]
            if "status" in body:
                new["status"] = body["status"]
            else:
                new.pop("status", None)
        else:
            new = body
            meta["name"] = name
            for key in SYSTEM_METADATA:
                if key in old_meta:
                    meta[key] = old_meta[key]
                else:
                    meta.pop(key, None)
            if rtype.has_status(version):
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            if rtype.key == ("", "secrets"):
                self._fold_string_data(new)
        new_meta = new["metadata"]
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(rtype, name, "metadata.finalizers",
                              f"Forbidden: no new finalizers can be added if the object is being deleted, "
                              f"found new finalizers {sorted(added)}", "FieldValueForbidden")
        new, warnings = self._admit(rtype, new, old, field_validation)
        new_meta = new["metadata"]
        with_status = rtype.has_status(version)
        spec_changed = _content(new, with_status=with_status) != _content(old, with_status=with_status)
        if "generation" in old_meta and spec_changed:
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new_type: ResourceType | None = None
        if rtype.key == CRD_KEY and subresource is None:
            new_type = self._check_crd(new)
        _drop_empty_metadata(new_meta)
        if new == old:
            return WriteResult(old, warnings)  # a no-op write: no new resourceVersion, no event
        if dry_run:
            return WriteResult(new, warnings)
        if old_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            return WriteResult(self._remove(rtype, new), warnings)
        if new_type is not None:
            self._add_crd_schema(new)
        self._put(rtype, new, old=old)
        if new_type is not None:
            self._install_crd(new, new_type)
        return WriteResult(new, warnings)

    # ---------------------------------------------------------------- delete

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, *,
               propagation: str | None = None, preconditions: dict[str, Any] | None = None,
               dry_run: bool = False) -> Obj:
        old = self.get(rtype, namespace, name)
        meta = old["metadata"]
        if preconditions:
            if preconditions.get("uid") not in (None, meta["uid"]):
                raise conflict(rtype, name, f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                                            f"UID in object meta: {meta['uid']}")
            if preconditions.get("resourceVersion") not in (None, meta["resourceVersion"]):
                raise conflict(rtype, name, "Precondition failed: ResourceVersion in precondition: "
                                            f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                                            f"{meta['resourceVersion']}")
        if propagation not in (None, "Background", "Foreground", "Orphan"):
            raise bad_request(f"propagationPolicy {propagation!r} must be one of Background, Foreground, Orphan")
        if dry_run:
            return old
        policy = propagation or ("Orphan" if rtype.key in ORPHAN_BY_DEFAULT else "Background")
        if rtype.key == NAMESPACES_KEY:
            if name in PROTECTED_NAMESPACES:
                raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be '
                                                 "deleted", _details(rtype, name))
            return self._terminate_namespace(rtype, old)
        if rtype.key == CRD_KEY:
            return self._terminate_crd(rtype, old)
        uid = meta["uid"]
        if policy == "Orphan":
            self._orphan_dependents(uid)
        if meta.get("deletionTimestamp"):
            return old
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and self.dependents.get(uid) and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if not finalizers:
            return self._remove(rtype, old)
        new = dict(old, metadata=dict(meta, deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0,
                                      finalizers=finalizers))
        self._put(rtype, new, old=old)
        if "foregroundDeletion" in finalizers:
            self._schedule(self._collect_dependents, uid, "Foreground")
        return new

    def delete_collection(self, rtype: ResourceType, namespace: str | None, predicate: ObjectFilter | None, *,
                          propagation: str | None = None, dry_run: bool = False) -> list[Obj]:
        items, _ = self.list_objects(rtype, namespace, predicate)
        return [self.delete(rtype, item["metadata"].get("namespace"), item["metadata"]["name"],
                            propagation=propagation, dry_run=dry_run) for item in items]

    # ---------------------------------------------------------------- garbage collection

    def _lookup_key(self, key: tuple[GroupResource, str, str]) -> tuple[ResourceType, Obj] | None:
        group_resource, namespace, name = key
        rtype = self.types.get(group_resource)
        if rtype is None:
            return None
        obj = self.find(rtype, namespace, name)
        return None if obj is None else (rtype, obj)

    def _drop_owner_refs(self, rtype: ResourceType, obj: Obj, uids: set[str]) -> None:
        meta = obj["metadata"]
        refs = [ref for ref in meta.get("ownerReferences") or [] if ref.get("uid") not in uids]
        new_meta = dict(meta, ownerReferences=refs)
        if not refs:
            del new_meta["ownerReferences"]
        self._put(rtype, dict(obj, metadata=new_meta), old=obj)

    def _orphan_dependents(self, uid: str) -> None:
        for key in sorted(self.dependents.pop(uid, set())):
            found = self._lookup_key(key)
            if found is not None:
                self._drop_owner_refs(found[0], found[1], {uid})

    def _collect_dependents(self, uid: str, policy: str = "Background") -> None:
        if policy != "Foreground":
            if uid in self.by_uid:
                return  # the owner came back (or was never gone): nothing to collect
            keys = self.dependents.pop(uid, set())
        else:
            keys = set(self.dependents.get(uid, set()))
        for key in sorted(keys):
            found = self._lookup_key(key)
            if found is None:
                continue
            rtype, obj = found
            others = _owner_uids(obj) - {uid}
            if policy != "Foreground" and any(other in self.by_uid for other in others):
                self._drop_owner_refs(rtype, obj, {uid})
            else:
                self.delete(rtype, key[1] or None, key[2], propagation=policy)

    def _collect_if_orphaned(self, key: GroupResource, namespace: str, name: str) -> None:
        found = self._lookup_key((key, namespace, name))
        if found is None:
            return
        rtype, obj = found
        owners = _owner_uids(obj)
        missing = {uid for uid in owners if uid not in self.by_uid}
        if not missing:
            return
        if missing == owners:
            self.delete(rtype, namespace or None, name)
        else:
            self._drop_owner_refs(rtype, obj, missing)

    def _finish_foreground(self, owner_uid: str) -> None:
        """Release an owner in foreground deletion once its last dependent is gone."""
        found = self._lookup_key(self.by_uid[owner_uid]) if owner_uid in self.by_uid else None
        if found is None or self.dependents.get(owner_uid):
            return
        rtype, obj = found
        finalizers = obj["metadata"].get("finalizers") or []
        if "foregroundDeletion" not in finalizers:
            return
        remaining = [f for f in finalizers if f != "foregroundDeletion"]
        new = dict(obj, metadata=dict(obj["metadata"], finalizers=remaining))
        if remaining:
            self._put(rtype, new, old=obj)
        else:
            del new["metadata"]["finalizers"]
            self._remove(rtype, new)

    # ---------------------------------------------------------------- namespaces and CRDs

    def _terminate_namespace(self, rtype: ResourceType, old: Obj) -> Obj:
        name = old["metadata"]["name"]
        if name in self.terminating_namespaces:
            return old
        self.terminating_namespaces.add(name)
        new = dict(old, metadata=dict(old["metadata"], deletionTimestamp=now_rfc3339()),
                   status=dict(old.get("status") or {}, phase="Terminating"))
        self._put(rtype, new, old=old)
        self._schedule(self._empty_namespace, name)
        return new

    def _empty_namespace(self, namespace: str) -> None:
        for rtype in list(self.types.values()):
            if rtype.namespaced:
                for obj in list(self.iterate(rtype, namespace)):
                    if not obj["metadata"].get("deletionTimestamp"):
                        self.delete(rtype, namespace, obj["metadata"]["name"], propagation="Background")
        self._finish_namespace(namespace)

    def _finish_namespace(self, namespace: str) -> None:
        if namespace not in self.terminating_namespaces:
            return
        for key, buckets in self.objects.items():
            if self.types[key].namespaced and buckets.get(namespace):
                return
        self.terminating_namespaces.discard(namespace)
        ns_obj = self.find(self.types[NAMESPACES_KEY], None, namespace)
        if ns_obj is not None:
            self._remove(self.types[NAMESPACES_KEY], ns_obj)

    def _check_crd(self, crd: Obj) -> ResourceType:
        name = crd["metadata"]["name"]
        try:
            new_type = type_from_crd(crd)
        except CrdError as exc:
            raise invalid(self.types[CRD_KEY], name, exc.field_path, exc.message) from exc
        existing = self.types.get(new_type.key)
        if existing is not None and not existing.custom:
            raise invalid(self.types[CRD_KEY], name, "spec.names.plural",
                          f"{new_type.group_resource()} is a built-in resource of this server")
        return new_type

    @staticmethod
    def _crd_status(crd: Obj) -> Obj:
        timestamp = now_rfc3339()
        spec = crd["spec"]
        storage = [v["name"] for v in spec["versions"] if v.get("storage")]
        return {
            "acceptedNames": spec["names"],
            "storedVersions": storage,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": timestamp},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": timestamp},
            ],
        }

    def _add_crd_schema(self, crd: Obj) -> None:
        """Give the CRD's schemas to admission before the CRD is stored, so a refusal stores nothing."""
        if self.admission is None:
            return
        try:
            self.admission.add_crd(crd)
        except ValueError as exc:
            raise invalid(self.types[CRD_KEY], crd["metadata"]["name"], "spec", str(exc)) from exc

    def _install_crd(self, crd: Obj, new_type: ResourceType) -> None:
        existing = self.types.get(new_type.key)
        if existing is not None:
            # Same group-resource: keep its objects, logs and watchers; replace what is served.
            self.types[new_type.key] = new_type
            self.types_generation += 1
        else:
            self._register(new_type)
        logger.info("serving %s (%s)", new_type.group_resource(), ", ".join(new_type.versions))

    def _uninstall_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        self.terminating_crds.discard(key)
        rtype = self.types.get(key)
        if self.admission is not None:
            self.admission.remove_crd(crd["metadata"]["name"])
        if rtype is not None and rtype.custom:
            self._unregister(key)
            logger.info("stopped serving %s", rtype.group_resource())

    def _terminate_crd(self, rtype: ResourceType, old: Obj) -> Obj:
        spec = old["spec"]
        key = (spec["group"], spec["names"]["plural"])
        if key in self.terminating_crds:
            return old
        served = self.types.get(key)
        if served is None or not any(True for _ in self.iterate(served, None)):
            return self._remove(rtype, old)
        self.terminating_crds.add(key)
        new = dict(old, metadata=dict(old["metadata"], deletionTimestamp=now_rfc3339()))
        self._put(rtype, new, old=old)
        for obj in list(self.iterate(served, None)):
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp"):
                self.delete(served, meta.get("namespace"), meta["name"], propagation="Background")
        return new

    def _finish_crd(self, key: GroupResource) -> None:
        served = self.types.get(key)
        if key not in self.terminating_crds or (served is not None and any(True for _ in self.iterate(served, None))):
            return
        crd = self.find(self.types[CRD_KEY], None, f"{key[1]}.{key[0]}")
        if crd is not None:
            self._remove(self.types[CRD_KEY], crd)

    # ---------------------------------------------------------------- watches

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
