"""JSON-object helpers shared by the emulator's store modules (storage.py, lifecycle.py, store.py)."""

from __future__ import annotations

import datetime
import json
from typing import Any

Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clone(obj: Obj) -> Obj:
    """A deep copy; the JSON round trip is faster than copy.deepcopy for JSON-shaped data."""
    result: Obj = json.loads(json.dumps(obj))
    return result


def owner_uids(obj: Obj) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {ref["uid"] for ref in refs if isinstance(ref, dict) and isinstance(ref.get("uid"), str)}


def content(obj: Obj, *, with_status: bool) -> Obj:
    """The part of an object whose change bumps metadata.generation."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if with_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def drop_empty_metadata(meta: Obj) -> None:
    """The real server omits empty labels, annotations, finalizers and ownerReferences (omitempty)."""
    for key in ("labels", "annotations", "finalizers", "ownerReferences"):
        if key in meta and not meta[key]:
            del meta[key]

