"""Decoding of the Kubernetes protobuf request bodies that kubectl's typed clients send.

`kubectl create namespace|configmap|secret|serviceaccount` and `kubectl create job --from=cronjob/...`
POST their object as `application/vnd.kubernetes.protobuf` (and client-go does not retry as JSON on
415), so the emulator decodes those kinds (with their ObjectMeta) into the same dicts a JSON body gives,
and the
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
    1: ("name", "string0"), 2: ("generateName", "string0"), 3: ("namespace", "string0"), 5: ("uid", "string0"),
    6: ("resourceVersion", "string0"), 7: ("generation", "int0"), 8: ("creationTimestamp", "time"),
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
# k8s.io/api rbac/v1 generated.proto: `kubectl create clusterrole|role|clusterrolebinding|rolebinding` POST protobuf.
POLICY_RULE: Schema = {1: ("verbs", ("repeated", "string")), 2: ("apiGroups", ("repeated", "string")),
                       3: ("resources", ("repeated", "string")), 4: ("resourceNames", ("repeated", "string")),
                       5: ("nonResourceURLs", ("repeated", "string"))}
SUBJECT: Schema = {1: ("kind", "string"), 2: ("apiGroup", "string0"), 3: ("name", "string"),
                   4: ("namespace", "string0")}
ROLE_REF: Schema = {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")}
for _kind in ("Role", "ClusterRole"):
    KINDS[("rbac.authorization.k8s.io/v1", _kind)] = {
        1: ("metadata", OBJECT_META), 2: ("rules", ("repeated", POLICY_RULE))}
for _kind in ("RoleBinding", "ClusterRoleBinding"):
    KINDS[("rbac.authorization.k8s.io/v1", _kind)] = {
        1: ("metadata", OBJECT_META), 2: ("subjects", ("repeated", SUBJECT)), 3: ("roleRef", ROLE_REF)}
# k8s.io/api authentication/v1 generated.proto: `kubectl create token` POSTs its TokenRequest as protobuf.
KINDS[("authentication.k8s.io/v1", "TokenRequest")] = {
    1: ("metadata", OBJECT_META),
    2: ("spec", {1: ("audiences", ("repeated", "string")), 4: ("expirationSeconds", "int"),
                 3: ("boundObjectRef", {1: ("kind", "string"), 2: ("apiVersion", "string"), 3: ("name", "string"),
                                        4: ("uid", "string")})}),
}

# --- batch/v1 Job (`kubectl create job --from=cronjob/NAME` POSTs the CronJob's jobTemplate as a Job) ---
# Field numbers from k8s.io/api core/v1/generated.proto and batch/v1/generated.proto (messages PodSpec,
# Container, ..., JobSpec, Job). Types ending in "0" are Go value fields with `omitempty`: the zero value
# is what an unset field marshals to (gogo encodes non-pointer fields always), so it is dropped, as JSON
# would omit it; "string"/"int"/"bool" are pointers, kept as sent. ("inline", schema) is an embedded
# struct that JSON flattens (LocalObjectReference in the key selectors, VolumeSource in Volume). Inside a
# Job every field must be known: an unknown number raises UnsupportedField rather than being dropped.
LOCAL_REF: Schema = {1: ("name", "string0")}
KEY_SELECTOR: Schema = {1: ("", ("inline", LOCAL_REF)), 2: ("key", "string0"), 3: ("optional", "bool")}
SECCOMP: Schema = {1: ("type", "string0"), 2: ("localhostProfile", "string")}
LABEL_SELECTOR: Schema = {  # apimachinery meta/v1 LabelSelector, LabelSelectorRequirement
    1: ("matchLabels", ("map", "string")),
    2: ("matchExpressions", ("repeated", {1: ("key", "string0"), 2: ("operator", "string0"),
                                          3: ("values", ("repeated", "string"))})),
}
KEY_TO_PATH: Schema = {1: ("key", "string0"), 2: ("path", "string0"), 3: ("mode", "int")}
VOLUME_SOURCE: Schema = {
    1: ("hostPath", {1: ("path", "string0"), 2: ("type", "string")}),
    2: ("emptyDir", {1: ("medium", "string0"), 2: ("sizeLimit", "quantity")}),
    6: ("secret", {1: ("secretName", "string0"), 2: ("items", ("repeated", KEY_TO_PATH)), 3: ("defaultMode", "int"),
                   4: ("optional", "bool")}),
    10: ("persistentVolumeClaim", {1: ("claimName", "string0"), 2: ("readOnly", "bool0")}),
    19: ("configMap", {1: ("", ("inline", LOCAL_REF)), 2: ("items", ("repeated", KEY_TO_PATH)),
                       3: ("defaultMode", "int"), 4: ("optional", "bool")}),
}
CONTAINER: Schema = {
    1: ("name", "string0"), 2: ("image", "string0"), 3: ("command", ("repeated", "string")),
    4: ("args", ("repeated", "string")), 5: ("workingDir", "string0"),
    6: ("ports", ("repeated", {1: ("name", "string0"), 2: ("hostPort", "int0"), 3: ("containerPort", "int"),
                               4: ("protocol", "string0"), 5: ("hostIP", "string0")})),
    19: ("envFrom", ("repeated", {1: ("prefix", "string0"),
                                  2: ("configMapRef", {1: ("", ("inline", LOCAL_REF)), 2: ("optional", "bool")}),
                                  3: ("secretRef", {1: ("", ("inline", LOCAL_REF)), 2: ("optional", "bool")})})),
    7: ("env", ("repeated", {1: ("name", "string0"), 2: ("value", "string0"), 3: ("valueFrom", {
        1: ("fieldRef", {1: ("apiVersion", "string0"), 2: ("fieldPath", "string0")}),
        2: ("resourceFieldRef", {1: ("containerName", "string0"), 2: ("resource", "string0"),
                                 3: ("divisor", "quantity")}),
        3: ("configMapKeyRef", KEY_SELECTOR), 4: ("secretKeyRef", KEY_SELECTOR)})})),
    8: ("resources", {1: ("limits", ("map", "quantity")), 2: ("requests", ("map", "quantity")),
                      3: ("claims", ("repeated", {1: ("name", "string0"), 2: ("request", "string0")}))}),
    9: ("volumeMounts", ("repeated", {1: ("name", "string0"), 2: ("readOnly", "bool0"),
                                      7: ("recursiveReadOnly", "string"), 3: ("mountPath", "string0"),
                                      4: ("subPath", "string0"), 5: ("mountPropagation", "string"),
                                      6: ("subPathExpr", "string0")})),
    13: ("terminationMessagePath", "string0"), 20: ("terminationMessagePolicy", "string0"),
    14: ("imagePullPolicy", "string0"),
    15: ("securityContext", {
        1: ("capabilities", {1: ("add", ("repeated", "string")), 2: ("drop", ("repeated", "string"))}),
        2: ("privileged", "bool"), 4: ("runAsUser", "int"), 8: ("runAsGroup", "int"), 5: ("runAsNonRoot", "bool"),
        6: ("readOnlyRootFilesystem", "bool"), 7: ("allowPrivilegeEscalation", "bool"), 9: ("procMount", "string"),
        11: ("seccompProfile", SECCOMP)}),
    16: ("stdin", "bool0"), 17: ("stdinOnce", "bool0"), 18: ("tty", "bool0"),
}
POD_SPEC: Schema = {
    1: ("volumes", ("repeated", {1: ("name", "string0"), 2: ("", ("inline", VOLUME_SOURCE))})),
    20: ("initContainers", ("repeated", CONTAINER)), 2: ("containers", ("repeated", CONTAINER)),
    3: ("restartPolicy", "string0"), 4: ("terminationGracePeriodSeconds", "int"),
    5: ("activeDeadlineSeconds", "int"), 6: ("dnsPolicy", "string0"), 7: ("nodeSelector", ("map", "string")),
    8: ("serviceAccountName", "string0"), 9: ("serviceAccount", "string0"),
    21: ("automountServiceAccountToken", "bool"), 10: ("nodeName", "string0"), 11: ("hostNetwork", "bool0"),
    12: ("hostPID", "bool0"), 13: ("hostIPC", "bool0"), 27: ("shareProcessNamespace", "bool"),
    14: ("securityContext", {
        2: ("runAsUser", "int"), 6: ("runAsGroup", "int"), 3: ("runAsNonRoot", "bool"),
        4: ("supplementalGroups", ("repeated", "int")), 12: ("supplementalGroupsPolicy", "string"),
        5: ("fsGroup", "int"), 9: ("fsGroupChangePolicy", "string"), 10: ("seccompProfile", SECCOMP)}),
    15: ("imagePullSecrets", ("repeated", LOCAL_REF)), 16: ("hostname", "string0"), 17: ("subdomain", "string0"),
    19: ("schedulerName", "string0"),
    22: ("tolerations", ("repeated", {1: ("key", "string0"), 2: ("operator", "string0"), 3: ("value", "string0"),
                                      4: ("effect", "string0"), 5: ("tolerationSeconds", "int")})),
    24: ("priorityClassName", "string0"), 25: ("priority", "int"), 29: ("runtimeClassName", "string"),
    30: ("enableServiceLinks", "bool"), 31: ("preemptionPolicy", "string"), 35: ("setHostnameAsFQDN", "bool"),
    37: ("hostUsers", "bool"),
}
JOB_SPEC: Schema = {
    1: ("parallelism", "int"), 2: ("completions", "int"), 3: ("activeDeadlineSeconds", "int"),
    7: ("backoffLimit", "int"), 12: ("backoffLimitPerIndex", "int"), 13: ("maxFailedIndexes", "int"),
    4: ("selector", LABEL_SELECTOR), 5: ("manualSelector", "bool"),
    6: ("template", {1: ("metadata", OBJECT_META), 2: ("spec", POD_SPEC)}),
    8: ("ttlSecondsAfterFinished", "int"), 9: ("completionMode", "string"), 10: ("suspend", "bool"),
    14: ("podReplacementPolicy", "string"), 15: ("managedBy", "string"),
}
# The status (a value field, so always sent) is the server's: a client's is empty, and ignored.
KINDS[("batch/v1", "Job")] = {1: ("metadata", OBJECT_META), 2: ("spec", JOB_SPEC), 3: ("status", "ignored")}
STRICT_KINDS = frozenset({("batch/v1", "Job")})
UNKNOWN: Schema = {1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}), 2: ("raw", "raw")}


class ProtobufError(ValueError):
    """A body that is not valid Kubernetes protobuf."""


class UnsupportedKind(ProtobufError):
    """Valid protobuf of a kind this emulator cannot decode."""


class UnsupportedField(UnsupportedKind):
    """A field of a strictly decoded kind that this emulator does not know (it would be lost)."""


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


ZERO: dict[str, Any] = {"string0": "", "bool0": False, "int0": 0, "time": "1970-01-01T00:00:00Z"}
"""The omitempty value kinds and their zero values (dropped on decoding)."""


def _scalar(kind: Any, value: int | bytes, strict: bool = False) -> Any:
    if isinstance(kind, dict):
        return _message(kind, value, strict)
    match kind:
        case "string0":
            return _scalar("string", value)
        case "bool0":
            return _scalar("bool", value)
        case "int0":
            return _scalar("int", value)
        case "quantity":  # apimachinery resource.Quantity: `optional string string = 1`
            return _message({1: ("string", "string")}, value).get("string", "")
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


def _message(schema: Schema, data: int | bytes, strict: bool = False) -> dict[str, Any]:
    """One message as a dict. `strict`: an unknown field number raises UnsupportedField (ObjectMeta is
    lenient: it carries server-set fields a client may echo)."""
    if not isinstance(data, bytes):
        raise ProtobufError("expected an embedded message")
    strict = strict and schema is not OBJECT_META
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            if strict:
                raise UnsupportedField(f"field number {number} of a message holding "
                                       f"{', '.join(name or '(inline)' for name, _ in schema.values())}")
            continue
        name, kind = schema[number]
        if kind == "ignored":
            continue
        if isinstance(kind, tuple) and kind[0] == "map":
            entry = _message({1: ("key", "string"), 2: ("value", kind[1])}, value)
            result.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
        elif isinstance(kind, tuple) and kind[0] == "repeated":
            result.setdefault(name, []).append(_scalar(kind[1], value, strict))
        elif isinstance(kind, tuple) and kind[0] == "inline":
            result.update(_message(kind[1], value, strict))
        else:
            decoded = _scalar(kind, value, strict)
            if not isinstance(kind, str) or kind not in ZERO or decoded != ZERO[kind]:
                result[name] = decoded
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
    obj = _message(schema, unknown.get("raw", b""), (api_version, kind) in STRICT_KINDS)
    # Go encodes unset strings and times as empty values; JSON would omit them (server-set fields).
    meta = obj.get("metadata", {})
    meta.pop("creationTimestamp", None)
    obj["metadata"] = {key: value for key, value in meta.items() if value not in ("", 0)}
    return {"apiVersion": api_version, "kind": kind, **obj}
