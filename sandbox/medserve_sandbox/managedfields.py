"""Server-side apply and managedFields, as the real API server computes them, over plain JSON-like dicts.

The real server keeps, per field manager, the set of fields it owns (`metadata.managedFields`, in the
FieldsV1 format); an apply merges the manager's configuration into the live object, refuses (409) to
change a field another manager owns unless `force=true`, and removes the fields the manager stopped
applying; every other write (create, update, patch) records the fields it changed for its manager.
This module follows, in its own words:

- sigs.k8s.io/structured-merge-diff `merge/update.go` (`Updater.Apply`, `Updater.Update`,
  `Updater.update`, `Updater.prune`), `typed/merge.go` (`mergingWalker`, `visitListItems`: the order
  of merged associative lists), `typed/compare.go` (`compareWalker`: added / removed / modified
  fields), `typed/tofieldset.go` (`toFieldSetWalker`: the fields a configuration sets),
  `fieldpath/serialize.go` and `serialize-pe.go` (FieldsV1: `f:`, `k:`, `v:`, `i:`, `.`),
  `fieldpath/element.go` (`PathElement.String`, used in conflict messages);
- k8s.io/apimachinery `pkg/util/managedfields/internal/`: `managedfields.go`
  (`BuildManagerIdentifier`, `sortEncodedManagedFields`), `stripmeta.go` (the metadata fields never
  owned), `managedfieldsupdater.go` (times), `fieldmanager.go` (`decodeLiveOrNew`: managedFields
  sent on an update replace the live ones, `[{}]` resets them), `conflict.go`
  (`NewConflictError`, `printManager`);
- k8s.io/apiserver `pkg/endpoints/handlers/patch.go` (`applyPatcher`: an apply creates a missing
  object) and `rest.go` (`managerOrUserAgent`, `prefixFromUserAgent`).

Schemas: a custom resource's node types come from its CRD's structural schema
(`x-kubernetes-list-type` atomic/set/map with `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`,
`properties` as struct fields, `additionalProperties` and `x-kubernetes-preserve-unknown-fields` as
maps), its `metadata` from ObjectMeta's own markers (labels/annotations maps, finalizers a set,
ownerReferences keyed by uid). Built-in kinds have no schema here: objects are structs, lists are
atomic except the well-known associative lists of the core types (containers, env, volumes, ports,
... keyed as their Go markers say).

Not covered: the 10-Update-managers cap (`capmanagers.go`, "ancient-changes"), the
last-applied-configuration interplay with client-side apply (`lastappliedmanager.go`), version
conversion of managed sets (multi-version CRDs are served without conversion, so sets are kept as
recorded), lists with duplicate entries, and the zero-value Go structs the real server compares a
created built-in object against (so a created Deployment's `f:spec` carries `.` here, not there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from medserve_sandbox.objects import Obj, now_rfc3339

Path = tuple[str, ...]  # serialized path elements: "f:spec", 'k:{"name":"a"}', 'v:"x"', "i:0"
FieldSet = frozenset[Path]

MAX_MANAGER_LENGTH = 128


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()

# stripmeta.go: fields no manager ever owns.
_STRIPPED: FieldSet = frozenset({
    ("f:apiVersion",), ("f:kind",), ("f:metadata",),
    *(("f:metadata", f"f:{name}") for name in ("name", "namespace", "creationTimestamp", "selfLink", "uid",
                                              "clusterName", "generation", "managedFields", "resourceVersion")),
})

_STRING_MAP: Obj = {"type": "object", "additionalProperties": {"type": "string"}}
# ObjectMeta's markers (k8s.io/apimachinery pkg/apis/meta/v1/types.go), as the real server's schema has them.
_OBJECT_META: Obj = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
        "ownerReferences": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"],
                            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                      "properties": {k: {} for k in ("apiVersion", "kind", "name", "uid",
                                                                     "controller", "blockOwnerDeletion")}}},
        "managedFields": {"type": "array", "x-kubernetes-list-type": "atomic"},
    },
}
# The associative lists of the built-in kinds (their Go types' listType/listMapKey and patchMergeKey markers),
# by field name; other built-in lists are atomic.
_BUILTIN_LIST_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "env": ("name",), "volumes": ("name",), "volumeMounts": ("mountPath",), "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",), "hostAliases": ("ip",), "resourceClaims": ("name",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
_BUILTIN_SETS = frozenset({"finalizers"})
# Built-in fields that are maps of user keys, not structs (their keys are owned one by one, with `.`).
_BUILTIN_MAPS = frozenset({"labels", "annotations", "data", "binaryData", "stringData", "matchLabels",
                           "nodeSelector", "limits", "requests", "selector"})


class ManagedFieldsError(ValueError):
    """An apply that cannot be computed (a list item without its key, a duplicate key): answered 422/400."""


class ApplyConflict(Exception):
    """Fields another manager owns would change; `conflicts` is [(manager identifier, path)]."""

    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        super().__init__(conflict_message(conflicts))
        self.conflicts = conflicts


# ---------------------------------------------------------------- schema shapes


@dataclass(frozen=True)
class Shape:
    """What the schema says of one node; `schema` is a structural-schema dict, or None when none is known."""

    schema: Obj | None
    builtin: bool = False
    field: str = ""

    @staticmethod
    def for_custom(root: Obj | None) -> Shape:
        return Shape(root if isinstance(root, dict) else {"type": "object", "x-kubernetes-preserve-unknown-fields":
                                                          True}, field="<root>")

    @staticmethod
    def for_builtin() -> Shape:
        return Shape(None, builtin=True, field="<root>")

    def child(self, key: str) -> tuple[Shape, bool] | None:
        """The shape of `key` in this object and whether it is a declared (struct) field; None when pruned."""
        if self.field == "<root>" or (self.schema is not None and self.schema.get("x-kubernetes-embedded-resource")):
            if key == "metadata":
                return Shape(_OBJECT_META, field="metadata"), True
            if key in ("apiVersion", "kind"):
                return Shape({"type": "string"}, field=key), True
        if self.schema is None:
            declared = not (self.builtin and self.field in _BUILTIN_MAPS)
            return Shape(None, builtin=self.builtin, field=key), declared
        properties = self.schema.get("properties")
        if isinstance(properties, dict) and key in properties:
            node = properties[key]
            return Shape(node if isinstance(node, dict) else {}, field=key), True
        extra = self.schema.get("additionalProperties")
        if isinstance(extra, dict):
            return Shape(extra, field=key), False
        if extra is True or self.schema.get("x-kubernetes-preserve-unknown-fields"):
            return Shape(None, field=key), False
        if not isinstance(properties, dict) and not self.schema.get("type"):
            return Shape(None, field=key), False  # an untyped node: deduced from the value
        return None

    def atomic_map(self) -> bool:
        return self.schema is not None and self.schema.get("x-kubernetes-map-type") == "atomic"

    def list_type(self) -> tuple[str, tuple[str, ...]]:
        if self.schema is None:
            if self.builtin and self.field in _BUILTIN_LIST_KEYS:
                return "map", _BUILTIN_LIST_KEYS[self.field]
            if self.builtin and self.field in _BUILTIN_SETS:
                return "set", ()
            return "atomic", ()
        kind = self.schema.get("x-kubernetes-list-type", "atomic")
        if kind == "map":
            return "map", tuple(self.schema.get("x-kubernetes-list-map-keys") or ())
        return ("set", ()) if kind == "set" else ("atomic", ())

    def item(self) -> Shape:
        if self.schema is None:
            return Shape(None, builtin=self.builtin, field=f"{self.field}[]")
        items = self.schema.get("items")
        return Shape(items if isinstance(items, dict) else None, field=f"{self.field}[]")

    def key_default(self, key: str) -> Any:
        item = self.item()
        properties = (item.schema or {}).get("properties") or {}
        node = properties.get(key)
        return node.get("default", ABSENT) if isinstance(node, dict) else ABSENT


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def item_element(shape: Shape, item: Any, index: int) -> str:
    """listItemToPathElement: `k:` for associative lists (keys sorted by name), `v:` for sets."""
    kind, keys = shape.list_type()
    if kind == "map" and keys:
        if not isinstance(item, dict):
            raise ManagedFieldsError(f"associative list with keys has an element that is not a map: {item!r}")
        fields: dict[str, Any] = {}
        for key in keys:
            if key in item:
                fields[key] = item[key]
            else:
                default = shape.key_default(key)
                if default is ABSENT:
                    raise ManagedFieldsError(f"associative list with keys has an element that omits key field "
                                             f"{key!r} (and doesn't have default value)")
                fields[key] = default
        return "k:" + _encode(dict(sorted(fields.items())))
    if kind == "set" or kind == "map":
        if isinstance(item, dict | list):
            raise ManagedFieldsError("associative list without keys has an element that is a map or a list")
        return "v:" + _encode(item)
    return f"i:{index}"


def _index_items(shape: Shape, items: list[Any]) -> tuple[list[str], dict[str, Any]]:
    elements: list[str] = []
    by_element: dict[str, Any] = {}
    for index, item in enumerate(items):
        element = item_element(shape, item, index)
        if element in by_element:
            raise ManagedFieldsError(f"duplicate entries for key {element_string(element)}")
        by_element[element] = item
        elements.append(element)
    return elements, by_element


# ---------------------------------------------------------------- the walks (tofieldset, compare, merge)


def field_set(value: Any, shape: Shape) -> FieldSet:
    """The fields a configuration sets (toFieldSetWalker)."""
    out: set[Path] = set()
    _to_set(value, shape, (), out)
    return frozenset(out)


def _to_set(value: Any, shape: Shape, path: Path, out: set[Path]) -> None:
    if isinstance(value, dict):
        if shape.atomic_map():
            out.add(path)
            return
        for key, item in value.items():
            found = shape.child(key)
            if found is None:
                continue  # pruned: not in the schema
            child, declared = found
            child_path = (*path, f"f:{key}")
            _to_set(item, child, child_path, out)
            if item is None or item == {} or not declared:
                out.add(child_path)
    elif isinstance(value, list):
        if shape.list_type()[0] == "atomic":
            out.add(path)
            return
        for index, item in enumerate(value):
            child_path = (*path, item_element(shape, item, index))
            _to_set(item, shape.item(), child_path, out)
            out.add(child_path)
    elif path:
        out.add(path)


@dataclass
class Comparison:
    added: set[Path]
    removed: set[Path]
    modified: set[Path]

    def changed(self) -> set[Path]:
        return self.added | self.modified


def compare(old: Any, new: Any, shape: Shape) -> Comparison:
    """The fields added, removed and modified from `old` to `new` (compareWalker)."""
    result = Comparison(set(), set(), set())
    _compare(old, new, shape, (), result)
    for paths in (result.added, result.removed, result.modified):
        paths.discard(())
    return result


def _is_leaf(old: Any, new: Any, shape: Shape) -> bool:
    containers = [v for v in (old, new) if v is not ABSENT]
    if any(not isinstance(v, dict | list) for v in containers) or len({type(v) for v in containers}) > 1:
        return True
    if isinstance(containers[0], dict):
        return shape.atomic_map() or all(not v for v in containers)
    return shape.list_type()[0] == "atomic" or all(not v for v in containers)


def _compare(old: Any, new: Any, shape: Shape, path: Path, out: Comparison) -> None:
    if _is_leaf(old, new, shape):
        if old is ABSENT:
            out.added.add(path)
        elif new is ABSENT:
            out.removed.add(path)
        elif old != new:
            out.modified.add(path)
        return
    sample = new if new is not ABSENT else old
    if isinstance(sample, dict):
        left = old if isinstance(old, dict) else {}
        right = new if isinstance(new, dict) else {}
        for key in {**left, **right}:
            found = shape.child(key)
            child = found[0] if found is not None else Shape(None, field=key)
            _compare(left.get(key, ABSENT), right.get(key, ABSENT), child, (*path, f"f:{key}"), out)
    else:
        left_elements, left_items = _index_items(shape, old if isinstance(old, list) else [])
        right_elements, right_items = _index_items(shape, new if isinstance(new, list) else [])
        item_shape = shape.item()
        for element in left_elements + [e for e in right_elements if e not in left_items]:
            _compare(left_items.get(element, ABSENT), right_items.get(element, ABSENT), item_shape,
                     (*path, element), out)
    if old is ABSENT:
        out.added.add(path)
    elif new is ABSENT:
        out.removed.add(path)


def merge(live: Any, config: Any, shape: Shape) -> Any:
    """The live object with the applied configuration merged in (mergingWalker)."""
    if config is ABSENT:
        return live
    if live is ABSENT or isinstance(config, dict) != isinstance(live, dict) \
            or isinstance(config, list) != isinstance(live, list):
        return config
    if isinstance(config, dict):
        if shape.atomic_map():
            return config
        merged = dict(live)
        for key, item in config.items():
            found = shape.child(key)
            child = found[0] if found is not None else Shape(None, field=key)
            merged[key] = merge(live.get(key, ABSENT), item, child)
        return merged
    if isinstance(config, list):
        if shape.list_type()[0] == "atomic":
            return config
        return _merge_list(live, config, shape)
    return config


def _merge_list(live: list[Any], config: list[Any], shape: Shape) -> list[Any]:
    """visitListItems of typed/merge.go: live items keep their places, configured items follow the
    configuration's order among those shared with the live list."""
    left, left_items = _index_items(shape, live)
    right, right_items = _index_items(shape, config)
    item_shape = shape.item()
    shared = [element for element in right if element in left_items]
    next_shared = shared.pop(0) if shared else None
    merged_right: set[str] = set()
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if i < len(left) and j < len(right):
            element = left[i]
            if element == right[j]:
                merged_right.add(element)
                out.append(merge(left_items[element], right_items[element], item_shape))
                i += 1
                j += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if element in right_items and next_shared is not None and next_shared != element:
                i += 1
                continue
        if i < len(left):
            element = left[i]
            if element not in right_items:
                out.append(left_items[element])
                i += 1
                continue
            if element in merged_right:
                i += 1
        if j < len(right):
            element = right[j]
            merged_right.add(element)
            out.append(merge(left_items.get(element, ABSENT), right_items[element], item_shape))
            j += 1
            if next_shared is not None and next_shared == element:
                next_shared = shared.pop(0) if shared else None
    return out


def remove_fields(obj: Obj, paths: Iterable[Path], shape: Shape) -> Obj:
    """The object without the given fields (RemoveItems), longest paths last so parents go whole."""
    result: Obj = json.loads(json.dumps(obj))
    for path in sorted(paths, key=len):
        _remove(result, path, shape)
    return result


def _remove(node: Any, path: Path, shape: Shape) -> None:
    head, rest = path[0], path[1:]
    if isinstance(node, dict) and head.startswith("f:"):
        key = head[2:]
        if key not in node:
            return
        if not rest:
            del node[key]
            return
        found = shape.child(key)
        _remove(node[key], rest, found[0] if found is not None else Shape(None, field=key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if item_element(shape, item, index) == head:
                if not rest:
                    del node[index]
                else:
                    _remove(item, rest, shape.item())
                return


# ---------------------------------------------------------------- FieldsV1, paths, managers


def to_fields_v1(fields: FieldSet) -> Obj:
    """SetToFields: members with children carry a "." entry."""
    tree: Obj = {}
    for path in sorted(fields):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    for path in fields:
        node = tree
        for element in path:
            node = node[element]
        if node and "." not in node:
            node["."] = {}
    return _sorted_tree(tree)


def _sorted_tree(tree: Obj) -> Obj:
    return {key: _sorted_tree(tree[key]) for key in sorted(tree, key=lambda k: (k != ".", k))}


def from_fields_v1(tree: Any) -> FieldSet:
    """FieldsToSet; a malformed tree raises ManagedFieldsError."""
    out: set[Path] = set()

    def walk(node: Any, path: Path) -> None:
        if not isinstance(node, dict):
            raise ManagedFieldsError(f"fieldsV1 at {path!r} is not an object")
        if not node and path:
            out.add(path)
        for element, child in node.items():
            if element == ".":
                out.add(path)
                continue
            if element[:2] not in ("f:", "k:", "v:", "i:"):
                raise ManagedFieldsError(f"unknown path element {element!r} in fieldsV1")
            if element[:2] in ("k:", "v:"):
                try:
                    element = element[:2] + _encode(json.loads(element[2:]) if element[:2] == "v:"
                                                    else dict(sorted(json.loads(element[2:]).items())))
                except (ValueError, AttributeError) as exc:
                    raise ManagedFieldsError(f"path element {element!r}: {exc}") from exc
            walk(child, (*path, element))

    walk(tree, ())
    return frozenset(out)


def _value_string(value: Any) -> str:
    """value.ToString: strings quoted, the rest as JSON."""
    return _encode(value)


def element_string(element: str) -> str:
    kind, body = element[:2], element[2:]
    if kind == "f:":
        return "." + body
    if kind == "k:":
        fields = json.loads(body)
        return "[" + ",".join(f"{k}={_value_string(v)}" for k, v in fields.items()) + "]"
    if kind == "v:":
        return f"[={_value_string(json.loads(body))}]"
    return f"[{body}]"


def path_string(path: Path) -> str:
    return "".join(element_string(element) for element in path)


@dataclass
class ManagerEntry:
    """One manager's set, as decoded from (or encoded into) a managedFields entry."""

    manager: str
    operation: str
    api_version: str
    fields: FieldSet
    time: str | None = None
    subresource: str = ""

    @property
    def identity(self) -> str:
        """BuildManagerIdentifier: an Apply entry is one manager whatever its apiVersion."""
        ident: Obj = {"manager": self.manager, "operation": self.operation}
        if self.operation == "Update":
            ident["apiVersion"] = self.api_version
        if self.subresource:
            ident["subresource"] = self.subresource
        return _encode(ident)

    def encode(self) -> Obj:
        entry: Obj = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version}
        if self.time is not None:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = to_fields_v1(self.fields)
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


Managers = dict[str, ManagerEntry]


def decode(entries: Any) -> Managers:
    """DecodeManagedFields; raises ManagedFieldsError on an entry the real server would refuse."""
    if not isinstance(entries, list):
        raise ManagedFieldsError("metadata.managedFields must be a list")
    managers: Managers = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ManagedFieldsError(f"managed fields entry {number} is not an object")
        if entry.get("operation") not in ("Apply", "Update"):
            raise ManagedFieldsError("operation must be `Apply` or `Update`")
        if not entry.get("apiVersion"):
            raise ManagedFieldsError("apiVersion must not be empty")
        if entry.get("fieldsType") != "FieldsV1":
            raise ManagedFieldsError(f"missing or invalid fieldsType in managed fields entry {number}")
        decoded = ManagerEntry(str(entry.get("manager", "")), entry["operation"], str(entry["apiVersion"]),
                               from_fields_v1(entry.get("fieldsV1") or {}), entry.get("time"),
                               str(entry.get("subresource") or ""))
        managers[decoded.identity] = decoded
    return managers


def encode(managers: Managers) -> list[Obj] | None:
    """encodeManagedFields + sortEncodedManagedFields: Apply before Update, then by time and name."""
    entries = [entry for entry in managers.values() if entry.fields]
    if not entries:
        return None
    entries.sort(key=lambda e: (e.operation, e.time or "", e.manager, e.api_version, e.subresource))
    return [entry.encode() for entry in entries]


def print_manager(identity: str) -> str:
    """printManager of conflict.go."""
    try:
        entry = json.loads(identity)
    except ValueError:
        return _encode(identity)
    text = _encode(entry.get("manager", ""))
    if entry.get("subresource"):
        text = f"{text} with subresource {_encode(entry['subresource'])}"
    if entry.get("operation") == "Update":
        time = entry.get("time")
        return f"{text} using {entry.get('apiVersion')}" + (f" at {time}" if time else "")
    return text


def conflict_message(conflicts: list[tuple[str, Path]]) -> str:
    """getConflictMessage of conflict.go."""
    if len(conflicts) == 1:
        identity, path = conflicts[0]
        return f"Apply failed with 1 conflict: conflict with {print_manager(identity)}: {path_string(path)}"
    by_manager: dict[str, list[Path]] = {}
    for identity, path in conflicts:
        by_manager.setdefault(identity, []).append(path)
    lines: list[str] = []
    for identity in sorted(by_manager):
        lines.append(f"conflicts with {print_manager(identity)}:")
        lines.extend(f"- {path_string(path)}" for path in by_manager[identity])
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


def conflict_causes(conflicts: list[tuple[str, Path]]) -> list[Obj]:
    return [{"reason": "FieldManagerConflict", "message": f"conflict with {print_manager(identity)}",
             "field": path_string(path)} for identity, path in conflicts]


def manager_from_user_agent(user_agent: str) -> str:
    """prefixFromUserAgent: the User-Agent up to its first "/", printable characters, at most 128."""
    printable = "".join(ch for ch in user_agent.split("/", 1)[0] if ch.isprintable())
    return printable[:MAX_MANAGER_LENGTH]


# ---------------------------------------------------------------- the field manager


@dataclass(frozen=True)
class Scope:
    """What differs per request: the type's shape, the version written, the subresource, reset fields."""

    shape: Shape
    api_version: str
    subresource: str = ""
    status_reset: bool = False  # the type has a status subresource: the main resource never owns status

    def keep(self, path: Path) -> bool:
        """The reset-fields filter (a strategy's GetResetFields) and stripmeta.go's stripped fields."""
        if path in _STRIPPED:
            return False
        if self.subresource == "status":
            return path[:1] == ("f:status",)
        return not (self.status_reset and path[:1] == ("f:status",))

    def filter(self, paths: Iterable[Path]) -> FieldSet:
        return frozenset(path for path in paths if self.keep(path))


def _live_managers(live: Obj | None) -> Managers:
    try:
        return decode(((live or {}).get("metadata") or {}).get("managedFields") or [])
    except ManagedFieldsError:
        return {}


def _requested_managers(live: Obj | None, new: Obj, scope: Scope) -> Managers:
    """decodeLiveOrNew: managedFields sent on the main resource replace the live ones, `[{}]` resets them."""
    sent = (new.get("metadata") or {}).get("managedFields")
    if scope.subresource or not sent:
        return _live_managers(live)
    if sent == [{}]:
        return {}
    try:
        managers = decode(sent)
    except ManagedFieldsError:
        return _live_managers(live)
    return managers or _live_managers(live)


def _without_managed_fields(obj: Obj | None) -> Any:
    if obj is None:
        return ABSENT
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return dict(obj, metadata=meta)


def _drop_from_others(managers: Managers, me: str, paths: set[Path]) -> None:
    for identity, entry in list(managers.items()):
        if identity != me and entry.fields & paths:
            entry.fields = entry.fields - paths


def record_update(live: Obj | None, new: Obj, manager: str, scope: Scope) -> list[Obj] | None:
    """Updater.Update for a create, update or non-apply patch by `manager`: the managedFields of `new`.

    The manager gains every field the write added or modified and the others lose them (an update
    takes ownership without conflicts); fields the write removed leave every set. `live` is None on create.
    """
    managers = _requested_managers(live, new, scope)
    old_value = _without_managed_fields(live) if live is not None else \
        {k: new[k] for k in ("apiVersion", "kind") if k in new}
    diff = compare(old_value, _without_managed_fields(new), scope.shape)
    changed = scope.filter(diff.changed())
    removed = set(diff.removed)
    for entry in managers.values():
        entry.fields = entry.fields - removed
    me = ManagerEntry(manager, "Update", scope.api_version, frozenset(), subresource=scope.subresource)
    _drop_from_others(managers, me.identity, set(changed))
    previous = managers.get(me.identity)
    if changed:
        base = previous.fields if previous is not None else frozenset()
        me.fields = scope.filter(base | changed)
        me.time = now_rfc3339()
        managers[me.identity] = me
    return encode(managers)


@dataclass
class Applied:
    """An apply's outcome: the object to store (before defaulting) and its managedFields."""

    obj: Obj
    managed_fields: list[Obj] | None


def apply(live: Obj | None, config: Obj, manager: str, scope: Scope, *, force: bool,
          empty: Obj) -> Applied:
    """Updater.Apply: merge `config` into `live` (or into `empty` when the object does not exist), drop
    the fields `manager` applied before and no manager owns any more, and refuse changes to fields
    another manager owns (ApplyConflict) unless `force`, in which case they change hands."""
    managers = _live_managers(live)
    base = _without_managed_fields(live) if live is not None else empty
    merged = merge(base, config, scope.shape)
    me = ManagerEntry(manager, "Apply", scope.api_version, scope.filter(field_set(config, scope.shape)),
                      subresource=scope.subresource)
    last = managers.get(me.identity)
    managers[me.identity] = me
    if last is not None and last.fields:
        owned: set[Path] = set()
        for entry in managers.values():
            owned |= entry.fields
        disowned = [path for path in last.fields - owned
                    if not any(other[:len(path)] == path for other in owned)]
        merged = remove_fields(merged, disowned, scope.shape)
    diff = compare(base, merged, scope.shape)
    changed = scope.filter(diff.changed())
    conflicts = sorted(((identity, path) for identity, entry in managers.items() if identity != me.identity
                        for path in entry.fields & changed), key=lambda c: (c[0], c[1]))
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    _drop_from_others(managers, me.identity, set(changed) | diff.removed)
    unchanged = not diff.changed() and not diff.removed and last is not None and last.fields == me.fields
    me.time = (last.time if unchanged and last is not None else None) or now_rfc3339()
    return Applied(merged, encode(managers))


def walk_paths(fields: FieldSet) -> Iterator[str]:
    """The set's paths as the real server prints them, sorted (for messages and tests)."""
    for path in sorted(fields):
        yield path_string(path)


def shape_of_crd(crd: Mapping[str, Any] | None, version: str) -> Shape:
    """A custom resource's shape from its CRD's schema at `version`."""
    for entry in ((crd or {}).get("spec") or {}).get("versions") or []:
        if isinstance(entry, dict) and entry.get("name") == version:
            return Shape.for_custom((entry.get("schema") or {}).get("openAPIV3Schema"))
    return Shape.for_custom(None)
