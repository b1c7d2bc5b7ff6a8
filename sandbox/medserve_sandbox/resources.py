"""The resource types the emulator serves, and the discovery and OpenAPI documents built from them.

Built-in types are a fixed table (core/v1, apps/v1 deployments, batch/v1, events.k8s.io/v1, coordination.k8s.io/v1,
apiextensions.k8s.io/v1, rbac.authorization.k8s.io/v1); custom types come and go with the
CustomResourceDefinitions stored in the emulator. The discovery documents are the legacy ones
(APIVersions, APIGroupList, APIGroup, APIResourceList); kubectl asks for aggregated discovery first and
falls back to these because the answer's Content-Type is plain `application/json`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

READ_VERBS = ["get", "list", "watch"]
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
STATUS_VERBS = ["get", "patch", "update"]

GroupResource = tuple[str, str]  # (group, plural): objects are stored once per group-resource


@dataclass
class VersionInfo:
    """What differs between the served versions of one resource."""

    printer_columns: list[dict[str, Any]] | None = None
    subresources: frozenset[str] = frozenset()


@dataclass
class ResourceType:
    group: str
    plural: str
    kind: str
    namespaced: bool
    versions: dict[str, VersionInfo]
    storage_version: str
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    verbs: list[str] = field(default_factory=lambda: list(ALL_VERBS))
    custom: bool = False  # defined by a CustomResourceDefinition

    def __post_init__(self) -> None:
        if not self.singular:
            self.singular = self.kind.lower()

    @property
    def key(self) -> GroupResource:
        return (self.group, self.plural)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def has_status(self, version: str | None = None) -> bool:
        info = self.versions.get(version or self.storage_version)
        return info is not None and "status" in info.subresources

    def group_resource(self) -> str:
        """`plural.group` (or just `plural` for core), as the real server names kinds in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    status: bool = False,
    short_names: list[str] | None = None,
    categories: list[str] | None = None,
) -> ResourceType:
    return ResourceType(
        group=group,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        versions={version: VersionInfo(subresources=frozenset({"status"}) if status else frozenset())},
        storage_version=version,
        short_names=short_names or [],
        categories=categories or [],
    )


def builtin_types() -> list[ResourceType]:
    return [
        _builtin("", "v1", "namespaces", "Namespace", namespaced=False, status=True, short_names=["ns"]),
        _builtin("", "v1", "configmaps", "ConfigMap", short_names=["cm"]),
        _builtin("", "v1", "secrets", "Secret"),
        _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status=True, short_names=["pvc"]),
        _builtin("", "v1", "events", "Event", short_names=["ev"]),
        _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=["sa"]),
        _builtin("", "v1", "services", "Service", status=True, short_names=["svc"], categories=["all"]),
        _builtin("", "v1", "pods", "Pod", status=True, short_names=["po"], categories=["all"]),
        _builtin("apps", "v1", "deployments", "Deployment", status=True, short_names=["deploy"], categories=["all"]),
        _builtin("batch", "v1", "jobs", "Job", status=True, categories=["all"]),
        _builtin("batch", "v1", "cronjobs", "CronJob", status=True, short_names=["cj"], categories=["all"]),
        _builtin("events.k8s.io", "v1", "events", "Event"),
        _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
        _builtin(
            "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
            namespaced=False, status=True, short_names=["crd", "crds"], categories=["api-extensions"],
        ),
        _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
        _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
        _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    ]


class CrdError(ValueError):
    """A CustomResourceDefinition the emulator cannot serve; carries (field, message) like a 422 cause."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


def type_from_crd(crd: dict[str, Any]) -> ResourceType:
    """The served resource of a CustomResourceDefinition (apiextensions.k8s.io/v1)."""
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        raise CrdError("spec", "Required value")
    group = spec.get("group")
    names = spec.get("names")
    if not isinstance(group, str) or not group:
        raise CrdError("spec.group", "Required value")
    if not isinstance(names, dict) or not isinstance(names.get("plural"), str) or not names.get("kind"):
        raise CrdError("spec.names", "plural and kind are required")
    plural = names["plural"]
    name = (crd.get("metadata") or {}).get("name")
    if name != f"{plural}.{group}":
        raise CrdError("metadata.name", f"must be spec.names.plural+\".\"+spec.group ({plural}.{group!s})")
    scope = spec.get("scope")
    if scope not in {"Namespaced", "Cluster"}:
        raise CrdError("spec.scope", 'Unsupported value: supported values: "Cluster", "Namespaced"')
    versions: dict[str, VersionInfo] = {}
    storage: str | None = None
    raw_versions = spec.get("versions")
    if not isinstance(raw_versions, list) or not raw_versions:
        raise CrdError("spec.versions", "must have exactly one version marked as storage version")
    for index, version in enumerate(raw_versions):
        if not isinstance(version, dict) or not isinstance(version.get("name"), str):
            raise CrdError(f"spec.versions[{index}].name", "Required value")
        if version.get("storage"):
            storage = version["name"]
        if version.get("served", True):
            subresources = frozenset((version.get("subresources") or {}).keys())
            versions[version["name"]] = VersionInfo(
                printer_columns=version.get("additionalPrinterColumns"),
                # Only status is served; a declared scale subresource is left out of discovery.
                subresources=subresources & {"status"},
            )
    if storage is None:
        raise CrdError("spec.versions", "must have exactly one version marked as storage version")
    return ResourceType(
        group=group,
        plural=plural,
        kind=names["kind"],
        namespaced=scope == "Namespaced",
        versions=versions,
        storage_version=storage,
        singular=names.get("singular") or names["kind"].lower(),
        short_names=list(names.get("shortNames") or []),
        categories=list(names.get("categories") or []),
        custom=True,
    )


def _version_order(version: str) -> tuple[int, int, int]:
    """Kubernetes version priority: GA > beta > alpha, then higher numbers first."""
    match = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not match:
        return (0, 0, 0)
    stability = {"alpha": 1, "beta": 2, None: 3}[match.group(2)]
    return (stability, int(match.group(1)), int(match.group(3) or 0))


def sorted_versions(versions: list[str]) -> list[str]:
    return sorted(versions, key=_version_order, reverse=True)


def api_resource_list(group_version: str, types: list[tuple[ResourceType, str]]) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rtype, version in types:
        resources.append({
            "name": rtype.plural,
            "singularName": rtype.singular,
            "namespaced": rtype.namespaced,
            "kind": rtype.kind,
            "verbs": rtype.verbs,
            "shortNames": rtype.short_names,
            "categories": rtype.categories,
            "storageVersionHash": hashlib.sha256(
                f"{rtype.group}/{rtype.storage_version}/{rtype.kind}".encode()
            ).hexdigest()[:11],
        })
        for subresource in sorted(rtype.versions[version].subresources):
            resources.append({
                "name": f"{rtype.plural}/{subresource}",
                "singularName": "",
                "namespaced": rtype.namespaced,
                "kind": rtype.kind,
                "verbs": STATUS_VERBS,
            })
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def api_group(group: str, versions: list[str]) -> dict[str, Any]:
    ordered = sorted_versions(versions)
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered],
        "preferredVersion": {"groupVersion": f"{group}/{ordered[0]}", "version": ordered[0]},
    }


def openapi_v3_group_version(group: str, version: str, types: list[ResourceType]) -> dict[str, Any]:
    """A minimal OpenAPI v3 document for one group-version.

    kubectl reads it only to learn whether the server validates fields itself (a PATCH operation per
    kind with the `fieldValidation` query parameter); when it does, kubectl skips its client-side
    schema validation and sends `fieldValidation=Strict`, which this emulator honours. The built-in
    kinds' schemas are not published, so kubectl computes strategic merge patches from its compiled-in
    types; discovery.py adds the custom resources' schemas.
    """
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    paths: dict[str, Any] = {}
    for rtype in types:
        base = f"{prefix}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{prefix}/{rtype.plural}"
        paths[f"{base}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{rtype.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": rtype.kind},
                "parameters": [
                    {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                    for name in ("dryRun", "fieldManager", "fieldValidation", "force")
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


KNATIVE_SERVICE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "services.serving.knative.dev"},
    "spec": {
        "group": "serving.knative.dev", "scope": "Namespaced",
        "names": {"kind": "Service", "plural": "services", "singular": "service", "listKind": "ServiceList",
                  "shortNames": ["kservice", "ksvc"], "categories": ["all", "knative", "serving"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            "additionalPrinterColumns": [
                {"name": "URL", "type": "string", "jsonPath": ".status.url"},
                {"name": "LatestCreated", "type": "string", "jsonPath": ".status.latestCreatedRevisionName"},
                {"name": "LatestReady", "type": "string", "jsonPath": ".status.latestReadyRevisionName"},
                {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            ],
        }],
    },
}
"""Knative Serving's Service (`serving.knative.dev/v1` `services`, short names `kservice`/`ksvc`, the names of
knative/serving `config/core/300-resources/service.yaml`), without a schema: a cluster holds one only where
KServe's graph controller makes one (the router of a graph in Knative mode, which the graph stand-in writes
and the operator reads before it releases an A/B arm), and nothing checks what is in it."""
