"""Object lifecycle in the emulator's store: owner bookkeeping, deletion, garbage collection, terminations.

Every stored write goes through `_put` / `_remove` here, which keep the ownerReference index that
garbage collection needs (Background, Foreground and Orphan propagation, recursive; dangling owners
are collected too). Namespace deletion empties the namespace first; CRD deletion removes its objects
first and stops serving the resource. Like the real controllers (only faster) the cleanup runs after
the response of the request that triggered it (`ObjectStorage._schedule`).
"""

from __future__ import annotations

import logging
from typing import Any

from medserve_sandbox import crdschema
from medserve_sandbox.apierrors import ApiError, bad_request, conflict, error_details, invalid, invalid_causes
from medserve_sandbox.objects import Obj, now_rfc3339, owner_uids
from medserve_sandbox.resources import CrdError, GroupResource, ResourceType, type_from_crd
from medserve_sandbox.selectors import ObjectFilter
from medserve_sandbox.storage import CRD_KEY, NAMESPACES_KEY, ObjectStorage
from medserve_sandbox.watches import WatchEvent

logger = logging.getLogger(__name__)

# The real server refuses to delete these.
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
# batch/v1 Jobs orphan their pods by default (a compatibility rule of the real server).
ORPHAN_BY_DEFAULT = frozenset({("batch", "jobs")})


class ObjectLifecycle(ObjectStorage):
    """Low-level writes with owner bookkeeping, deletes, garbage collection, namespace and CRD cleanup."""

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
        old_owners = owner_uids(old) if old is not None else set()
        new_owners = owner_uids(obj)
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
        for owner in owner_uids(obj):
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
                                                 "deleted", error_details(rtype, name))
            return self._terminate_namespace(rtype, old)
        if rtype.key == CRD_KEY:
            return self._terminate_crd(rtype, old)
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            if policy == "Orphan":
                self._orphan_dependents(uid)
            return old
        # As the real server (k8s.io/apiserver pkg/registry/generic/registry/store.go,
        # updateForGracefulDeletionAndFinalizers): Foreground and Orphan show as the foregroundDeletion and
        # orphan finalizers, which garbage collection removes once it has deleted or orphaned the dependents.
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if not finalizers:
            return self._remove(rtype, old)
        new = dict(old, metadata=dict(meta, deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0,
                                      finalizers=finalizers))
        self._put(rtype, new, old=old)
        if "foregroundDeletion" in finalizers:
            self._schedule(self._collect_dependents, uid, "Foreground")
            self._schedule(self._finish_foreground, uid)
        if "orphan" in finalizers:
            self._schedule(self._finish_orphan, uid)
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
            others = owner_uids(obj) - {uid}
            if policy != "Foreground" and any(other in self.by_uid for other in others):
                self._drop_owner_refs(rtype, obj, {uid})
            else:
                self.delete(rtype, key[1] or None, key[2], propagation=policy)

    def _collect_if_orphaned(self, key: GroupResource, namespace: str, name: str) -> None:
        found = self._lookup_key((key, namespace, name))
        if found is None:
            return
        rtype, obj = found
        owners = owner_uids(obj)
        missing = {uid for uid in owners if uid not in self.by_uid}
        if not missing:
            return
        if missing == owners:
            self.delete(rtype, namespace or None, name)
        else:
            self._drop_owner_refs(rtype, obj, missing)

    def _finish_orphan(self, owner_uid: str) -> None:
        """The garbage collector's orphan finalizer: drop the owner from its dependents, then release it."""
        self._orphan_dependents(owner_uid)
        found = self._lookup_key(self.by_uid[owner_uid]) if owner_uid in self.by_uid else None
        if found is None:
            return
        self._release(*found, "orphan")

    def _finish_foreground(self, owner_uid: str) -> None:
        """Release an owner in foreground deletion once its last dependent is gone."""
        found = self._lookup_key(self.by_uid[owner_uid]) if owner_uid in self.by_uid else None
        if found is None or self.dependents.get(owner_uid):
            return
        self._release(*found, "foregroundDeletion")

    def _release(self, rtype: ResourceType, obj: Obj, finalizer: str) -> None:
        """Take `finalizer` off `obj`; with none left, the object (being deleted) is gone."""
        finalizers = obj["metadata"].get("finalizers") or []
        if finalizer not in finalizers:
            return
        remaining = [f for f in finalizers if f != finalizer]
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
        causes = crdschema.schema_causes(crd)
        if causes:
            raise invalid_causes("CustomResourceDefinition", "apiextensions.k8s.io", name, causes)
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

