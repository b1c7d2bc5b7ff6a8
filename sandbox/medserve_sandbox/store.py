"""The emulator's object store: the write semantics of a Kubernetes API server (create, update, patch), no HTTP.

`Store` is what the HTTP side (apiserver.py) talks to. It is built in layers, one module each:
storage.py holds the indexed objects, reads and watches (one global, monotonically increasing
resourceVersion; O(1) reads and writes, lists O(objects of that resource)); lifecycle.py holds
deletion, ownerReference garbage collection and namespace/CRD cleanup; this module checks and admits
writes: every write goes through an admission step (defaulting, pruning, validation; see schemas.py)
before it is stored and fanned out to the watchers of that resource. Stored objects are never mutated
in place: a write builds a new dict, so lists, watch events and responses can share them without copying.

It runs inside one asyncio event loop and every operation is synchronous, so no locks are needed;
garbage collection and namespace/CRD cleanup are scheduled with `loop.call_soon`, after the response
of the request that triggered them, like the real controllers (only faster).
"""

from __future__ import annotations

import base64
import logging
import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

from medserve_sandbox import defaults, jobstatus, kserve_webhooks, managedfields, patches, podupdate, rbac
from medserve_sandbox.apierrors import ApiError, bad_request, conflict, error_details, invalid, not_found
from medserve_sandbox.lifecycle import ObjectLifecycle
from medserve_sandbox.objects import Obj, clone, content, drop_empty_metadata, now_rfc3339
from medserve_sandbox.resources import ResourceType
from medserve_sandbox.storage import CRD_KEY, NAMESPACES_KEY, Admission
from medserve_sandbox.watches import EVENT_HISTORY, Watcher, WatchEvent

logger = logging.getLogger(__name__)

__all__ = [
    "CRD_KEY", "EVENT_HISTORY", "NAMESPACES_KEY", "Admission", "ApiError", "Obj", "Store", "WatchEvent", "Watcher",
    "WriteResult", "bad_request", "clone", "conflict", "invalid", "not_found", "now_rfc3339",
]

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# Built-in kinds that carry metadata.generation (custom resources always do).
GENERATION_KINDS = frozenset({("apps", "deployments"), ("batch", "jobs"), ("batch", "cronjobs"), CRD_KEY})
SYSTEM_METADATA = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds")


@dataclass
class WriteResult:
    obj: Obj
    warnings: list[str] = field(default_factory=list)
    created: bool = False


class Store(ObjectLifecycle):
    """All objects of the emulated cluster, and the semantics of writing them."""

    def __init__(self, admission: Admission | None, *, watch_history: int = EVENT_HISTORY) -> None:
        super().__init__(admission, watch_history=watch_history)
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
    def _admit(self, rtype: ResourceType, obj: Obj, old: Obj | None, field_validation: str, *,
               subresource: str | None = None) -> tuple[Obj, list[str]]:
        rbac.check_owner_references(self, rbac.CURRENT_USER.get(), group=rtype.group, plural=rtype.plural,
                                    namespace=(obj.get("metadata") or {}).get("namespace"), obj=obj, old=old,
                                    subresource=subresource, resolve_owner=self._owner_resource)
        if self.admission is None:
            return obj, []
        try:
            admitted = self.admission.admit(obj, old=old, field_validation=field_validation)
            if subresource is None:
                # KServe's validating webhooks see the main resource only (their rules name no subresource),
                # and run after the schema, as kube-apiserver orders them.
                kserve_webhooks.admit(admitted[0], old)
            return admitted
        except ApiError:
            raise
        except Exception as exc:
            # schemas.InvalidObject carries its own 422 Status; anything else is a bug in admission.
            status_body = getattr(exc, "status_body", None)
            if callable(status_body):
                raise ApiError.from_status(status_body()) from exc
            logger.exception("admission failed for %s", rtype.kind)
            raise ApiError(500, "InternalError", f"admission of {rtype.kind} failed: {exc}") from exc

    def _owner_resource(self, api_version: str, kind: str) -> tuple[str, str] | None:
        rtype = self.by_kind(api_version, kind)
        return None if rtype is None else (rtype.group, rtype.plural)

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
               dry_run: bool = False, field_validation: str = "Warn", field_manager: str | None = None,
               applied: managedfields.Applied | None = None) -> WriteResult:
        """POST. `field_manager` records the write in managedFields (an apply passes `applied` instead)."""
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
                409, "AlreadyExists", f'{rtype.group_resource()} "{name}" already exists', error_details(rtype, name)
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
        defaults.conditions_as_go(rtype.key, obj)
        self._set_managed_fields(rtype, version, None, obj, None, field_manager, applied)
        drop_empty_metadata(obj["metadata"])
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
        """What the real server's create strategies and defaulting fill in for the built-in kinds we serve."""
        if not rtype.custom:
            defaults.on_create(rtype.key, obj)
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
               field_validation: str = "Warn", field_manager: str | None = None) -> WriteResult:
        old = self.get(rtype, namespace, name)
        # Custom resources (and CRDs) do not allow unconditional updates: a PUT must name the
        # resourceVersion it replaces, as on a real server (built-in kinds like ConfigMap allow it).
        meta = body.get("metadata") if isinstance(body, dict) else None
        if (rtype.custom or rtype.key == CRD_KEY) and not (isinstance(meta, dict) and meta.get("resourceVersion")):
            raise invalid(rtype, name, "metadata.resourceVersion",
                          "Invalid value: 0x0: must be specified for an update")
        return self._update(rtype, version, namespace, name, body, old, subresource=subresource,
                            dry_run=dry_run, field_validation=field_validation, field_manager=field_manager)

    def patch(self, rtype: ResourceType, version: str, namespace: str | None, name: str, patch_type: str,
              patch: Any, *, subresource: str | None = None, dry_run: bool = False,
              field_validation: str = "Warn", field_manager: str | None = None) -> WriteResult:
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
            raise ApiError(422, "Invalid", f'{rtype.kind} "{name}": {exc}', error_details(rtype, name)) from exc
        if not isinstance(patched, dict):
            raise bad_request("the patch did not produce an object")
        return self._update(rtype, version, namespace, name, patched, old, subresource=subresource,
                            dry_run=dry_run, field_validation=field_validation, field_manager=field_manager)

    # ---------------------------------------------------------------- server-side apply / managedFields

    def _scope(self, rtype: ResourceType, version: str, subresource: str | None) -> managedfields.Scope:
        if rtype.custom:
            crd = self.find(self.types[CRD_KEY], None, f"{rtype.plural}.{rtype.group}")
            shape = managedfields.shape_of_crd(crd, version)
        else:
            shape = managedfields.Shape.for_builtin()
        return managedfields.Scope(shape, rtype.api_version(version), subresource or "",
                                   status_reset=subresource is None and rtype.has_status(version))

    def _set_managed_fields(self, rtype: ResourceType, version: str, subresource: str | None, new: Obj,
                            old: Obj | None, field_manager: str | None,
                            applied: managedfields.Applied | None) -> None:
        meta = new["metadata"]
        entries: list[Obj] | None
        if applied is not None:
            entries = applied.managed_fields
        elif field_manager is not None:
            try:
                entries = managedfields.record_update(old, new, field_manager, self._scope(rtype, version,
                                                                                             subresource))
            except managedfields.ManagedFieldsError as exc:
                raise invalid(rtype, meta.get("name", ""), "metadata.managedFields", str(exc)) from exc
        else:
            entries = ((old or {}).get("metadata") or {}).get("managedFields")
        if entries:
            meta["managedFields"] = entries
        else:
            meta.pop("managedFields", None)

    def apply(self, rtype: ResourceType, version: str, namespace: str | None, name: str, config: Any, *,
              field_manager: str, force: bool = False, subresource: str | None = None, dry_run: bool = False,
              field_validation: str = "Warn") -> WriteResult:
        """PATCH with application/apply-patch+yaml (k8s.io/apiserver handlers/patch.go, applyPatcher): an
        apply to a missing object creates it; see managedfields.apply for the merge and the conflicts."""
        if not isinstance(config, dict):
            raise bad_request("the apply configuration must be a YAML or JSON object")
        expected = rtype.api_version(version)
        if config.get("apiVersion") != expected:
            raise bad_request(f"Incorrect version specified in apply patch. Specified patch version: "
                              f"{config.get('apiVersion', '')}, expected: {expected}")
        if config.get("kind") != rtype.kind:
            raise bad_request(f"invalid object type: {expected}, Kind={config.get('kind', '')}")
        meta = config.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("the apply configuration needs metadata with a name")
        if meta.get("managedFields") is not None:
            raise bad_request("metadata.managedFields must be nil")
        live = self.find(rtype, namespace, name)
        if live is None and subresource is not None:
            raise not_found(rtype, name)
        scope = self._scope(rtype, version, subresource)
        empty: Obj = {"apiVersion": expected, "kind": rtype.kind}
        try:
            applied = managedfields.apply(live, config, field_manager, scope, force=force, empty=empty)
        except managedfields.ApplyConflict as exc:
            raise ApiError(409, "Conflict", str(exc),
                           {"causes": managedfields.conflict_causes(exc.conflicts)}) from exc
        except managedfields.ManagedFieldsError as exc:
            raise invalid(rtype, name, "", str(exc)) from exc
        if live is None:
            body = applied.obj
            body.setdefault("metadata", {}).setdefault("name", name)
            return self.create(rtype, version, namespace, body, dry_run=dry_run,
                               field_validation=field_validation, applied=applied)
        return self._update(rtype, version, namespace, name, applied.obj, live, subresource=subresource,
                            dry_run=dry_run, field_validation=field_validation, applied=applied)

    def _update(self, rtype: ResourceType, version: str, namespace: str | None, name: str, body: Any,
                old: Obj, *, subresource: str | None, dry_run: bool, field_validation: str,
                field_manager: str | None = None, applied: managedfields.Applied | None = None) -> WriteResult:
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
            if not rtype.custom:
                defaults.on_write(rtype.key, new)
        new_meta = new["metadata"]
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(rtype, name, "metadata.finalizers",
                              f"Forbidden: no new finalizers can be added if the object is being deleted, "
                              f"found new finalizers {sorted(added)}", "FieldValueForbidden")
        new, warnings = self._admit(rtype, new, old, field_validation, subresource=subresource)
        if rtype.key == ("batch", "jobs") and subresource == "status":
            jobstatus.validate(old, new)
        if rtype.key == ("", "pods") and subresource is None:
            podupdate.validate(old, new)
        defaults.conditions_as_go(rtype.key, new)
        self._set_managed_fields(rtype, version, subresource, new, old, field_manager, applied)
        new_meta = new["metadata"]
        with_status = rtype.has_status(version)
        spec_changed = content(new, with_status=with_status) != content(old, with_status=with_status)
        if "generation" in old_meta and spec_changed:
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new_type: ResourceType | None = None
        if rtype.key == CRD_KEY and subresource is None:
            new_type = self._check_crd(new)
        drop_empty_metadata(new_meta)
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
