"""Decoding of the Kubernetes protobuf request bodies that kubectl's typed clients send.

`kubectl create namespace|configmap|secret|serviceaccount` POST their object as
`application/vnd.kubernetes.protobuf` (and client-go does not retry as JSON on 415), so the emulator
decodes those four kinds (with their ObjectMeta) into the same dicts a JSON body gives, and the
DeleteOptions that typed clients (Helm's uninstall) send with a DELETE, and the access and rules
reviews of `kubectl auth can-i`. The field
numbers come from k8s.io/api/core/v1/generated.proto and k8s.io/apimachinery/.../meta/v1/generated.proto.
Any other kind raises UnsupportedKind, which the server answers with 415 and a hint to use
`kubectl apply -f` (JSON) instead.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

MAGIC = b"k8s\x00"

# A field is (json name, type); a type is a scalar name, a nested schema (dict), or ("map", value type).
# "repeated:" marks a repeated field.
Schema = dict[int, tuple[str, Any]]

TIME: Schema = {1: ("seconds", "int"), 2: ("nanos", "int")}
OWNER_REFERENCE: Schema = {
    5: ("apiVersion", "string"), 1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
    6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool"),
}
OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"), 5: ("uid", "string"),
    6: ("resourceVersion", "string"), 7: ("generation", "int"), 8: ("creationTimestamp", "time"),
    11: ("labels", ("map", "string")), 12: ("annotations", ("map", "string")),
    13: ("ownerReferences", ("repeated", OWNER_REFERENCE)), 14: ("finalizers", ("repeated", "string")),
}
OBJECT_REFERENCE: Schema = {
    1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"), 4: ("uid", "string"),
    5: ("apiVersion", "string"), 6: ("resourceVersion", "string"), 7: ("fieldPath", "string"),
}
KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): {
        1: ("metadata", OBJECT_META),
        2: ("spec", {1: ("finalizers", ("repeated", "string"))}),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", OBJECT_META), 2: ("data", ("map", "string")), 3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    ("v1", "Secret"): {
        1: ("metadata", OBJECT_META), 2: ("data", ("map", "bytes")), 3: ("type", "string"),
        4: ("stringData", ("map", "string")), 5: ("immutable", "bool"),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", OBJECT_META), 2: ("secrets", ("repeated", OBJECT_REFERENCE)),
        3: ("imagePullSecrets", ("repeated", {1: ("name", "string")})),
        4: ("automountServiceAccountToken", "bool"),
    },
}
# k8s.io/apimachinery pkg/apis/meta/v1/generated.proto: what client-go's typed clients send with a DELETE
# (Helm's uninstall deletes its release Secrets so).
DELETE_OPTIONS: Schema = {
    1: ("gracePeriodSeconds", "int"), 2: ("preconditions", {1: ("uid", "string"), 2: ("resourceVersion", "string")}),
    3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "string"), 5: ("dryRun", ("repeated", "string")),
}
KINDS[("v1", "DeleteOptions")] = KINDS[("meta.k8s.io/v1", "DeleteOptions")] = DELETE_OPTIONS
# k8s.io/api authorization/v1 generated.proto: `kubectl auth can-i` POSTs its review as protobuf.
RESOURCE_ATTRIBUTES: Schema = {1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
                               4: ("version", "string"), 5: ("resource", "string"), 6: ("subresource", "string"),
                               7: ("name", "string")}
KINDS[("authorization.k8s.io/v1", "SelfSubjectAccessReview")] = {
    1: ("metadata", OBJECT_META),
    2: ("spec", {1: ("resourceAttributes", RESOURCE_ATTRIBUTES),
                 2: ("nonResourceAttributes", {1: ("path", "string"), 2: ("verb", "string")})}),
}
KINDS[("authorization.k8s.io/v1", "SelfSubjectRulesReview")] = {
    1: ("metadata", OBJECT_META), 2: ("spec", {1: ("namespace", "string")}),
}
UNKNOWN: Schema = {1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}), 2: ("raw", "raw")}


class ProtobufError(ValueError):
    """A body that is not valid Kubernetes protobuf."""


class UnsupportedKind(ProtobufError):
    """Valid protobuf of a kind this emulator cannot decode."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            fields.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            fields.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return fields


def _scalar(kind: Any, value: int | bytes) -> Any:
    if isinstance(kind, dict):
        return _message(kind, value)
    match kind:
        case "string":
            return value.decode() if isinstance(value, bytes) else str(value)
        case "bytes":
            return base64.b64encode(value).decode() if isinstance(value, bytes) else ""
        case "raw":
            return value
        case "int":  # int64 varints are two's complement
            return (value - (1 << 64) if value >= 1 << 63 else value) if isinstance(value, int) else 0
        case "bool":
            return bool(value)
        case "time":
            seconds = _message(TIME, value).get("seconds", 0)
            moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    raise ProtobufError(f"unknown field type {kind!r}")


def _message(schema: Schema, data: int | bytes) -> dict[str, Any]:
    if not isinstance(data, bytes):
        raise ProtobufError("expected an embedded message")
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, tuple) and kind[0] == "map":
            entry = _message({1: ("key", "string"), 2: ("value", kind[1])}, value)
            result.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
        elif isinstance(kind, tuple) and kind[0] == "repeated":
            result.setdefault(name, []).append(_scalar(kind[1], value))
        else:
            result[name] = _scalar(kind, value)
    return result


def decode(body: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf body (magic + runtime.Unknown) as the equivalent JSON object."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf magic number")
    unknown = _message(UNKNOWN, body[len(MAGIC):])
    type_meta = unknown.get("typeMeta", {})
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise UnsupportedKind(f"{kind or 'this kind'} ({api_version or 'unknown version'})")
    obj = _message(schema, unknown.get("raw", b""))
    # Go encodes unset strings and times as empty values; JSON would omit them (server-set fields).
    meta = obj.get("metadata", {})
    meta.pop("creationTimestamp", None)
    obj["metadata"] = {key: value for key, value in meta.items() if value not in ("", 0)}
    return {"apiVersion": api_version, "kind": kind, **obj}
