"""Discovery and OpenAPI documents of the emulator, computed from the resource types the store serves.

The legacy discovery documents (/api, /apis, /apis/G, /apis/G/V; kubectl falls back to them after asking
for aggregated discovery), /openapi/v3 (a PATCH operation per kind telling kubectl to leave field
validation to the server, and the custom resources' schemas) and /openapi/v2 (the custom resources'
schemas). The HTTP routing is in apiserver.py; the document shapes are in resources.py.

The schemas follow k8s.io/apiextensions-apiserver pkg/controller/openapi/builder (BuildOpenAPIV3 /
BuildOpenAPIV2): named by the reversed group, the version and the kind (`io.medserve.v1alpha1.
ModelDeployment`), the CRD's openAPIV3Schema with apiVersion/kind/metadata and
x-kubernetes-group-version-kind; v2 without what Swagger 2.0 cannot say (defaults, nullable,
oneOf/anyOf/not; builder's ToStructuralOpenAPIV2). Built-in kinds' schemas are not published.
"""

from __future__ import annotations

import hashlib
from typing import Any

from medserve_sandbox.resources import (
    ResourceType,
    api_group,
    api_resource_list,
    openapi_v3_group_version,
)
from medserve_sandbox.store import CRD_KEY, ApiError, Obj, Store

OBJECT_META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_V2_DROPPED = frozenset({"default", "nullable", "oneOf", "anyOf", "not"})


def served(store: Store) -> list[tuple[ResourceType, str]]:
    return [(rtype, version) for rtype in store.types.values() for version in rtype.versions]


def group_versions(store: Store) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rtype, version in served(store):
        versions = groups.setdefault(rtype.group, [])
        if version not in versions:
            versions.append(version)
    return groups


def group_list(store: Store) -> Obj:
    groups = group_versions(store)
    groups.pop("", None)
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [api_group(group, versions) for group, versions in sorted(groups.items())]}


def resource_list(store: Store, group: str, version: str) -> Obj:
    types = [(rtype, v) for rtype, v in served(store) if rtype.group == group and v == version]
    if not types:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    types.sort(key=lambda pair: pair[0].plural)
    return api_resource_list(f"{group}/{version}" if group else version, types)


def root_paths(store: Store) -> set[str]:
    paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/openapi/v3"}
    for group, versions in group_versions(store).items():
        if group:
            paths.add(f"/apis/{group}")
            paths.update(f"/apis/{group}/{version}" for version in versions)
    return paths


def openapi_index(store: Store) -> Obj:
    digest = hashlib.sha256(str(store.types_generation).encode()).hexdigest()[:16].upper()
    paths: dict[str, Any] = {}
    for group, versions in group_versions(store).items():
        for version in versions:
            key = f"apis/{group}/{version}" if group else f"api/{version}"
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def openapi_group_version(store: Store, key: str) -> Obj:
    segments = key.split("/")
    if segments[0] == "api" and len(segments) == 2:
        group, version = "", segments[1]
    elif segments[0] == "apis" and len(segments) == 3:
        group, version = segments[1], segments[2]
    else:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    types = [rtype for rtype, v in served(store) if rtype.group == group and v == version]
    if not types:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    document = openapi_v3_group_version(group, version, types)
    document["components"]["schemas"] = custom_schemas(store, types, version, ref_prefix="#/components/schemas/")
    return document


def schema_name(rtype: ResourceType, version: str) -> str:
    """The OpenAPI definition name of a kind: the reversed group, the version, the kind."""
    return ".".join([*reversed(rtype.group.split(".")), version, rtype.kind])


def _without_v2_keywords(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: Obj = {}
    for key, value in schema.items():
        if key in _V2_DROPPED:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _without_v2_keywords(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _without_v2_keywords(value)
        elif key == "allOf" and isinstance(value, list):
            out[key] = [_without_v2_keywords(sub) for sub in value]
        else:
            out[key] = value
    return out


def custom_schemas(store: Store, types: list[ResourceType], version: str | None, *, ref_prefix: str,
                   v2: bool = False) -> Obj:
    """The custom resources' schemas at `version` (every served version when None)."""
    schemas: Obj = {}
    for rtype in types:
        if not rtype.custom:
            continue
        crd = store.find(store.types[CRD_KEY], None, f"{rtype.plural}.{rtype.group}") or {}
        for entry in (crd.get("spec") or {}).get("versions") or []:
            name = entry.get("name")
            if not entry.get("served") or (version is not None and name != version):
                continue
            root = dict(((entry.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object"})
            properties = dict(root.get("properties") or {})
            properties["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned "
                                        "schema of this representation of an object."}
            properties["kind"] = {"type": "string", "description": "Kind is a string value representing the "
                                  "REST resource this object represents."}
            properties["metadata"] = {"$ref": ref_prefix + OBJECT_META_REF} if v2 else \
                {"allOf": [{"$ref": ref_prefix + OBJECT_META_REF}], "default": {}}
            root["properties"] = properties
            root["x-kubernetes-group-version-kind"] = [{"group": rtype.group, "version": name,
                                                        "kind": rtype.kind}]
            schemas[schema_name(rtype, name)] = _without_v2_keywords(root) if v2 else root
    schemas[OBJECT_META_REF] = {"type": "object", "description": "ObjectMeta is metadata that all persisted "
                                "resources must have.", "x-kubernetes-preserve-unknown-fields": True}
    return schemas


def openapi_v2(store: Store) -> Obj:
    """/openapi/v2: the custom resources' definitions (Swagger 2.0)."""
    types = [rtype for rtype in store.types.values() if rtype.custom]
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {},
            "definitions": custom_schemas(store, types, None, ref_prefix="#/definitions/", v2=True)}
