"""Server-side `meta.k8s.io/v1` Table output, as kube-apiserver renders it for `kubectl get`.

Custom resources use their CRD's additionalPrinterColumns, evaluated with the small JSONPath evaluator
of _jsonpath.py (`.a.b`, `.a[0]`, `.a[-1]`, `.a[*].b`, `['a.b']`, filters `[?(@.type=="Ready")]` with `==`, `!=`,
`<`, `<=`, `>`, `>=` or bare existence, quotes single or double); like the apiserver it takes the first
match, leaves missing values as null cells and renders `date` cells as ages ("5m", "3h2m").
Core kinds get the columns of the apiserver's built-in printers for the kinds the sandbox uses (Event,
Pod, Job, CronJob, Service, Secret, ConfigMap, ServiceAccount, Namespace, Deployment); any other kind
gets the default table: Name and Created At.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from medserve_sandbox._jsonpath import JSONPathError, Step, evaluate_jsonpath, parse_jsonpath

__all__ = ["JSONPathError", "evaluate_jsonpath", "human_duration", "parse_jsonpath", "parse_time", "render_table"]

_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_CREATED_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is "
    "not guaranteed to be set in happens-before order across separate operations. Clients may not set "
    "this value. It is represented in RFC3339 form and is in UTC."
)


_COLUMN_DESCRIPTION = "Custom resource definition column (in JSONPath format): "


# ---------------------------------------------------------------------- cells


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def human_duration(seconds_total: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration: the ages kubectl shows."""
    seconds = int(seconds_total)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _since(timestamp: Any, now: datetime) -> str:
    moment = parse_time(timestamp)
    if moment is None:
        return "<unknown>"
    return human_duration((now - moment).total_seconds())


def _text(value: Any) -> str:
    """How kube's JSONPath printer writes a value into a string cell."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "<nil>"
    return json.dumps(value, separators=(",", ":"))


def _cell(column_type: str, value: Any, now: datetime) -> Any:
    """The apiserver's cellForJSONValue: a value of the wrong type becomes a null cell."""
    if value is None:
        return None
    match column_type:
        case "string":
            return _text(value)
        case "integer":
            if isinstance(value, bool):
                return None
            if isinstance(value, int | float):
                return int(value)
        case "number":
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        case "boolean":
            if isinstance(value, bool):
                return value
        case "date":
            if isinstance(value, str):
                moment = parse_time(value)
                return "<invalid>" if moment is None else human_duration((now - moment).total_seconds())
    return None


# ---------------------------------------------------------------------- built-in printers of core kinds

Column = tuple[str, str, int, Callable[[Mapping[str, Any], datetime], Any]]


def _get(obj: Mapping[str, Any], *keys: str) -> Any:
    value: Any = obj
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _age(obj: Mapping[str, Any], now: datetime) -> str:
    return _since(_get(obj, "metadata", "creationTimestamp"), now)


def _event_first(obj: Mapping[str, Any], now: datetime) -> str:
    first = obj.get("firstTimestamp") or obj.get("deprecatedFirstTimestamp")
    if first:
        return _since(first, now)
    return _since(obj.get("eventTime"), now)


def _event_last(obj: Mapping[str, Any], now: datetime) -> str:
    series = obj.get("series")
    if isinstance(series, Mapping) and series.get("lastObservedTime"):
        return _since(series["lastObservedTime"], now)
    last = obj.get("lastTimestamp") or obj.get("deprecatedLastTimestamp")
    if last:
        return _since(last, now)
    return _event_first(obj, now)


def _event_object(obj: Mapping[str, Any], now: datetime) -> str:
    # core/v1 Events name the object in involvedObject, events.k8s.io/v1 Events in regarding.
    target = obj.get("involvedObject") or obj.get("regarding") or {}
    kind = str(_get(target, "kind") or "").lower()
    name = _get(target, "name")
    return f"{kind}/{name}" if name else kind


def _event_source(obj: Mapping[str, Any], now: datetime) -> str:
    component = _get(obj, "source", "component") or obj.get("reportingComponent") or ""
    host = _get(obj, "source", "host") or obj.get("reportingInstance") or ""
    return f"{component}, {host}" if host else str(component)


def _event_count(obj: Mapping[str, Any], now: datetime) -> int:
    series = obj.get("series")
    if isinstance(series, Mapping) and isinstance(series.get("count"), int):
        return int(series["count"])
    count = obj.get("count")
    return int(count) if isinstance(count, int) and count > 0 else 1


def _pod_ready(obj: Mapping[str, Any], now: datetime) -> str:
    containers = _get(obj, "spec", "containers") or []
    statuses = _get(obj, "status", "containerStatuses") or []
    ready = sum(1 for status in statuses if isinstance(status, Mapping) and status.get("ready"))
    return f"{ready}/{len(containers)}"


def _pod_status(obj: Mapping[str, Any], now: datetime) -> str:
    if _get(obj, "metadata", "deletionTimestamp"):
        return "Terminating"
    return str(_get(obj, "status", "reason") or _get(obj, "status", "phase") or "Pending")


def _pod_restarts(obj: Mapping[str, Any], now: datetime) -> int:
    statuses = _get(obj, "status", "containerStatuses") or []
    return sum(int(status.get("restartCount") or 0) for status in statuses if isinstance(status, Mapping))


def _condition_true(obj: Mapping[str, Any], condition_type: str) -> bool:
    for condition in _get(obj, "status", "conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == condition_type:
            return condition.get("status") == "True"
    return False


def _job_status(obj: Mapping[str, Any], now: datetime) -> str:
    for condition_type, text in (
        ("Complete", "Complete"),
        ("Failed", "Failed"),
        ("FailureTarget", "FailureTarget"),
        ("SuccessCriteriaMet", "SuccessCriteriaMet"),
        ("Suspended", "Suspended"),
    ):
        if _condition_true(obj, condition_type):
            return text
    return "Terminating" if _get(obj, "metadata", "deletionTimestamp") else "Running"


def _job_completions(obj: Mapping[str, Any], now: datetime) -> str:
    completions = _get(obj, "spec", "completions")
    succeeded = _get(obj, "status", "succeeded") or 0
    return f"{succeeded}/{completions if completions is not None else 1}"


def _job_duration(obj: Mapping[str, Any], now: datetime) -> str:
    start = parse_time(_get(obj, "status", "startTime"))
    if start is None:
        return ""
    end = parse_time(_get(obj, "status", "completionTime")) or now
    return human_duration((end - start).total_seconds())


def _service_ports(obj: Mapping[str, Any], now: datetime) -> str:
    ports = []
    for port in _get(obj, "spec", "ports") or []:
        if isinstance(port, Mapping):
            text = f"{port.get('port')}/{port.get('protocol') or 'TCP'}"
            if port.get("nodePort"):
                text = f"{port.get('port')}:{port['nodePort']}/{port.get('protocol') or 'TCP'}"
            ports.append(text)
    return ",".join(ports) or "<none>"


def _service_external(obj: Mapping[str, Any], now: datetime) -> str:
    ips = list(_get(obj, "spec", "externalIPs") or [])
    for ingress in _get(obj, "status", "loadBalancer", "ingress") or []:
        if isinstance(ingress, Mapping):
            ips.append(ingress.get("ip") or ingress.get("hostname") or "")
    if ips:
        return ",".join(str(ip) for ip in ips if ip)
    return "<pending>" if _get(obj, "spec", "type") == "LoadBalancer" else "<none>"


def _count(*keys: str) -> Callable[[Mapping[str, Any], datetime], int]:
    def count(obj: Mapping[str, Any], now: datetime) -> int:
        return sum(len(obj.get(key) or ()) for key in keys)

    return count


def _field(*keys: str, empty: Any = "") -> Callable[[Mapping[str, Any], datetime], Any]:
    def field(obj: Mapping[str, Any], now: datetime) -> Any:
        value = _get(obj, *keys)
        return empty if value is None else value

    return field


_AGE: Column = ("Age", "string", 0, _age)

_PRINTERS: dict[str, list[Column]] = {
    "Event": [
        ("Last Seen", "string", 0, _event_last),
        ("Type", "string", 0, _field("type")),
        ("Reason", "string", 0, _field("reason")),
        ("Object", "string", 0, _event_object),
        ("Subobject", "string", 1, _field("involvedObject", "fieldPath")),
        ("Source", "string", 1, _event_source),
        ("Message", "string", 0, lambda obj, now: str(obj.get("message") or obj.get("note") or "").strip()),
        ("First Seen", "string", 1, _event_first),
        ("Count", "string", 1, _event_count),
        ("Name", "string", 1, _field("metadata", "name")),
    ],
    "Pod": [
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, _pod_restarts),
        _AGE,
        ("IP", "string", 1, _field("status", "podIP", empty="<none>")),
        ("Node", "string", 1, _field("spec", "nodeName", empty="<none>")),
    ],
    "Job": [
        ("Status", "string", 0, _job_status),
        ("Completions", "string", 0, _job_completions),
        ("Duration", "string", 0, _job_duration),
        _AGE,
    ],
    "CronJob": [
        ("Schedule", "string", 0, _field("spec", "schedule")),
        ("Timezone", "string", 0, _field("spec", "timeZone", empty="<none>")),
        ("Suspend", "boolean", 0, lambda obj, now: bool(_get(obj, "spec", "suspend"))),
        ("Active", "integer", 0, lambda obj, now: len(_get(obj, "status", "active") or ())),
        (
            "Last Schedule",
            "string",
            0,
            lambda obj, now: (
                _since(_get(obj, "status", "lastScheduleTime"), now)
                if _get(obj, "status", "lastScheduleTime")
                else "<none>"
            ),
        ),
        _AGE,
    ],
    "Service": [
        ("Type", "string", 0, _field("spec", "type", empty="ClusterIP")),
        ("Cluster-IP", "string", 0, _field("spec", "clusterIP", empty="<none>")),
        ("External-IP", "string", 0, _service_external),
        ("Port(s)", "string", 0, _service_ports),
        _AGE,
    ],
    "Secret": [
        ("Type", "string", 0, _field("type", empty="Opaque")),
        ("Data", "string", 0, _count("data")),
        _AGE,
    ],
    "ConfigMap": [("Data", "string", 0, _count("data", "binaryData")), _AGE],
    "ServiceAccount": [("Secrets", "string", 0, _count("secrets")), _AGE],
    "Namespace": [("Status", "string", 0, _field("status", "phase", empty="Active")), _AGE],
    "Deployment": [
        (
            "Ready",
            "string",
            0,
            lambda obj, now: (
                f"{_get(obj, 'status', 'readyReplicas') or 0}/{_get(obj, 'spec', 'replicas') or 0}"
            ),
        ),
        ("Up-to-date", "string", 0, _field("status", "updatedReplicas", empty=0)),
        ("Available", "string", 0, _field("status", "availableReplicas", empty=0)),
        _AGE,
    ],
}


# ---------------------------------------------------------------------- the Table


def _name_column() -> dict[str, Any]:
    return {
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": _NAME_DESCRIPTION,
        "priority": 0,
    }


def _row_object(obj: Mapping[str, Any], include_object: str) -> dict[str, Any] | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return dict(obj)
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


_compiled_paths: dict[str, list[Step]] = {}


def _compiled(path: str) -> list[Step] | None:
    steps = _compiled_paths.get(path)
    if steps is None:
        try:
            steps = parse_jsonpath(path)
        except JSONPathError:
            return None
        _compiled_paths[path] = steps
    return steps


def render_table(
    objects: list[dict[str, Any]],
    *,
    printer_columns: list[dict[str, Any]] | None,
    kind: str,
    include_object: str = "Metadata",
    resource_version: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A `meta.k8s.io/v1` Table of `objects` (a list or a single object in a one-element list).

    `printer_columns` are a CRD version's additionalPrinterColumns (None for other kinds);
    `include_object` is the request's `includeObject` (Metadata, Object or None).
    """
    moment = now or datetime.now(UTC)
    definitions = [_name_column()]
    rows: list[dict[str, Any]] = []
    if printer_columns is not None:
        for column in printer_columns:
            definitions.append(
                {
                    "name": column.get("name", ""),
                    "type": column.get("type", "string"),
                    "format": column.get("format", ""),
                    "description": column.get("description")
                    or f"{_COLUMN_DESCRIPTION}{column.get('jsonPath', '')}",
                    "priority": int(column.get("priority", 0)),
                }
            )
        paths = [_compiled(str(column.get("jsonPath", ""))) for column in printer_columns]
        for obj in objects:
            cells: list[Any] = [_get(obj, "metadata", "name")]
            for column, steps in zip(printer_columns, paths, strict=True):
                found = evaluate_jsonpath(steps, obj) if steps is not None else []
                cells.append(_cell(str(column.get("type", "string")), found[0] if found else None, moment))
            rows.append({"cells": cells})
    elif kind in _PRINTERS:
        printer = _PRINTERS[kind]
        # kube's event printer has no leading Name column (Name is a wide column at the end).
        if kind == "Event":
            definitions = []
        definitions.extend(
            {"name": name, "type": column_type, "format": "", "description": "", "priority": priority}
            for name, column_type, priority, _ in printer
        )
        for obj in objects:
            cells = [] if kind == "Event" else [_get(obj, "metadata", "name")]
            cells.extend(render(obj, moment) for _, _, _, render in printer)
            rows.append({"cells": cells})
    else:
        definitions.append(
            {
                "name": "Created At",
                "type": "date",
                "format": "",
                "description": _CREATED_DESCRIPTION,
                "priority": 0,
            }
        )
        for obj in objects:
            rows.append(
                {"cells": [_get(obj, "metadata", "name"), _get(obj, "metadata", "creationTimestamp")]}
            )
    for row, obj in zip(rows, objects, strict=True):
        row_object = _row_object(obj, include_object)
        if row_object is not None:
            row["object"] = row_object
    metadata: dict[str, Any] = {"resourceVersion": resource_version} if resource_version else {}
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    }
