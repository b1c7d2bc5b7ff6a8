"""Discovery and OpenAPI documents of the emulator, computed from the resource types the store serves.

The legacy discovery documents (/api, /apis, /apis/G, /apis/G/V; kubectl falls back to them after asking
for aggregated discovery) and a minimal /openapi/v3 that tells kubectl to leave field validation to the
server. The HTTP routing is in apiserver.py; the document shapes are in resources.py.
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
from medserve_sandbox.store import ApiError, Obj, Store


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
    return openapi_v3_group_version(group, version, types)
