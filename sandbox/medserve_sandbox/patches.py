"""The three PATCH flavours of the Kubernetes API, applied to plain JSON-like dicts.

- JSON merge patch (RFC 7386, `application/merge-patch+json`): exact.
- JSON patch (RFC 6902, `application/json-patch+json`): exact, including `test` (a failed test is a
  PatchError that the server answers with 422, which is what kopf expects for its resourceVersion test).
- Strategic merge patch (`application/strategic-merge-patch+json`): APPROXIMATED. The real server
  reads each field's patch strategy and merge key from the Go types; here a fixed table of the
  well-known list fields (containers, env, volumes, ports, ...) merges lists by key, other lists are
  replaced, and the directives kubectl sends (`$patch`, `$retainKeys`, `$setElementOrder/...`,
  `$deleteFromPrimitiveList/...`) are honoured. Good enough for `kubectl apply` of core kinds.

All functions return new objects and never modify their inputs.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied; the message says which operation or path failed."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [_unescape(token) for token in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, for_insert: bool) -> int:
    if token == "-" and for_insert:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"path {path!r}: {token!r} is not a list index")
    index = int(token)
    limit = len(container) if for_insert else len(container) - 1
    if index > limit:
        raise PatchError(f"path {path!r}: index {index} is out of range")
    return index


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, dict):
            if token not in current:
                raise PatchError(f"path {path!r}: {token!r} does not exist")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, path, for_insert=False)]
        else:
            raise PatchError(f"path {path!r}: cannot descend into a scalar at {token!r}")
    return current


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {path!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path, for_insert=False)]
    raise PatchError(f"path {path!r}: the parent is a scalar")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, path, for_insert=True), value)
    else:
        raise PatchError(f"path {path!r}: the parent is a scalar")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {path!r} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, path, for_insert=False))
    raise PatchError(f"path {path!r}: the parent is a scalar")


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 over a deep copy of `target`."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for number, operation in enumerate(operations):
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"operation {number}: needs 'op' and 'path'")
        op, path = operation["op"], operation["path"]
        if op in {"add", "replace", "test"} and "value" not in operation:
            raise PatchError(f"operation {number} ({op} {path}): needs 'value'")
        match op:
            case "add":
                doc = _add(doc, path, copy.deepcopy(operation["value"]))
            case "remove":
                doc, _ = _remove(doc, path)
            case "replace":
                _get(doc, path)  # must exist
                if _pointer(path):
                    doc, _ = _remove(doc, path)
                doc = _add(doc, path, copy.deepcopy(operation["value"]))
            case "move" | "copy":
                source = operation.get("from")
                if not isinstance(source, str):
                    raise PatchError(f"operation {number} ({op} {path}): needs 'from'")
                if op == "move":
                    doc, value = _remove(doc, source)
                else:
                    value = copy.deepcopy(_get(doc, source))
                doc = _add(doc, path, value)
            case "test":
                actual = _get(doc, path)
                if actual != operation["value"]:
                    raise PatchError(
                        f"test operation failed: {path} is {actual!r}, not {operation['value']!r}"
                    )
            case _:
                raise PatchError(f"operation {number}: unknown op {op!r}")
    return doc


# The list fields that merge by a key under strategic merge patch (from the core/v1 and batch/v1
# Go types). `ports` is keyed by containerPort in containers and by port in services.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of scalars that merge as sets under strategic merge patch.
_MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        sample = next((item for item in items if isinstance(item, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _MERGE_KEYS.get(field)


def _strategic_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    current = list(original) if isinstance(original, list) else []
    if field in _MERGED_PRIMITIVE_LISTS:
        return current + [item for item in patch if item not in current]
    key = _merge_key(field, patch + current)
    if key is None or not all(isinstance(item, dict) for item in patch):
        return [strategic_merge_patch(None, item) if isinstance(item, dict) else item for item in patch]
    for item in patch:
        directive = item.get("$patch")
        position = next(
            (i for i, existing in enumerate(current)
             if isinstance(existing, dict) and existing.get(key) == item.get(key)),
            None,
        )
        if directive == "delete":
            if position is not None:
                current.pop(position)
        elif directive == "replace":
            return [strategic_merge_patch(None, {k: v for k, v in item.items() if k != "$patch"})]
        elif position is None:
            current.append(strategic_merge_patch(None, item))
        else:
            current[position] = strategic_merge_patch(current[position], item)
    return current


def _order_by(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """Apply `$setElementOrder/field`: listed elements first in the given order, the rest after."""
    if key is None:
        ranking = {repr(value): rank for rank, value in enumerate(order)}
        return sorted(items, key=lambda item: ranking.get(repr(item), len(ranking)))
    ranking = {repr(entry.get(key)): rank for rank, entry in enumerate(order) if isinstance(entry, dict)}
    return sorted(
        items,
        key=lambda item: ranking.get(repr(item.get(key)) if isinstance(item, dict) else "", len(ranking)),
    )


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge patch (see the module docstring for what it covers)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    base: dict[str, Any] = dict(target) if isinstance(target, dict) and directive != "replace" else {}
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        base = {k: v for k, v in base.items() if k in retain}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in {"$patch", "$retainKeys"}:
            continue
        if key.startswith("$setElementOrder/"):
            if isinstance(value, list):
                orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(base.get(field), list) and isinstance(value, list):
                base[field] = [item for item in base[field] if item not in value]
            continue
        if value is None:
            base.pop(key, None)
        elif isinstance(value, list):
            base[key] = _strategic_list(key, base.get(key), value)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(base.get(key), value)
            if merged is None:
                base.pop(key, None)
            else:
                base[key] = merged
        else:
            base[key] = value
    for field, order in orders.items():
        if isinstance(base.get(field), list):
            base[field] = _order_by(base[field], order, _merge_key(field, base[field]))
    return base
