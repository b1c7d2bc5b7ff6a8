"""Children the operator writes: get, create or replace one, with the 409 on create handled here, once.

A child is created without looking first when the caller knows of none (one request less per new object);
a 409 (someone, or an earlier reconciliation whose status write was lost, created it) falls back to reading
and updating it. Only what the operator owns is compared (`manifest.owned_differs`), so a child that is
already right costs one GET and no write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.kit import manifest

CONFLICT = 409


@dataclasses.dataclass(frozen=True)
class ChildKind:
    """Where a kind of child lives in the API: its apiVersion and plural."""

    api_version: str
    plural: str


@dataclasses.dataclass(frozen=True)
class Applied:
    """The child as the API server has it after `apply_child`, and whether this call created it."""

    object: dict[str, Any]
    created: bool = False


async def create_child(kube: KubeClient, kind: ChildKind, desired: dict[str, Any]) -> dict[str, Any] | None:
    """Create `desired`; None when it already exists (409). Any other refusal raises ApiError."""
    try:
        return await kube.create(kind.api_version, kind.plural, desired["metadata"]["namespace"], desired)
    except ApiError as exc:
        if exc.status != CONFLICT:
            raise
        return None


async def get_child(kube: KubeClient, kind: ChildKind, namespace: str, name: str) -> dict[str, Any] | None:
    return await kube.get(kind.api_version, kind.plural, namespace, name)


async def apply_child(kube: KubeClient, kind: ChildKind, desired: dict[str, Any], current: dict[str, Any] | None,
                      *, differs: Callable[[dict[str, Any], dict[str, Any]], bool] = manifest.owned_differs,
                      ) -> Applied:
    """Make the child look like `desired`: create it when `current` is None, replace it when `differs`.

    Raises ApiError when the API server refuses the write (the caller records it in status and decides
    whether kopf retries).
    """
    meta = desired["metadata"]
    if current is None:
        created = await create_child(kube, kind, desired)
        if created is not None:
            return Applied(created, created=True)
        current = await get_child(kube, kind, meta["namespace"], meta["name"])
        if current is None:  # created and deleted again in between: the next reconciliation creates it
            raise ApiError(CONFLICT, "Conflict", f"{kind.plural} {meta['name']} exists and does not")
    if not differs(desired, current):
        return Applied(current)
    return Applied(await kube.replace(kind.api_version, kind.plural, meta["namespace"],
                                      manifest.updated(current, desired)))
