"""Manifest helpers shared by the renderers: labels, owner references, security contexts, and what the operator
owns of a child (to tell whether applying it would change anything).

Pure: dicts in, dicts out.
"""

from __future__ import annotations

import decimal
import re
from typing import Any, Final

from medserve_operator.api.common import API_VERSION

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "medserve"
MANAGED_BY: Final = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, "app.kubernetes.io/part-of": "medserve"}
"""The labels on every object the operator creates."""
NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
MODEL_DEPLOYMENT_LABEL: Final = "medserve.io/model-deployment"
RETRAIN_POLICY_LABEL: Final = "medserve.io/retrain-policy"
"""On every Job, CronJob, challenger and ABTest a RetrainPolicy creates (a Job the CronJob starts is owned by
the CronJob, so the label, not the owner, leads back to the policy)."""

RESTRICTED_CONTAINER_SECURITY: Final = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD_SECURITY: Final = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def owner_reference(*, kind: str, name: str, uid: str, api_version: str = API_VERSION) -> dict[str, Any]:
    """The controller owner reference that makes the API server garbage-collect a child with its parent."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def label_value(value: str) -> str:
    """A string made safe as a label value: at most 63 characters of [A-Za-z0-9._-], alphanumeric ends."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)[:63]
    return cleaned.strip("._-")


def app_labels(app: str, instance: str, **extra: str) -> dict[str, str]:
    """MANAGED_BY plus the app.kubernetes.io name and instance, and `extra`."""
    return {**MANAGED_BY, NAME_LABEL: app, INSTANCE_LABEL: instance, **extra}


_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|"
                       r"[eE][+-]?[0-9]+)?$")
_QUANTITY_SCALE: Final[dict[str | None, decimal.Decimal]] = {
    None: decimal.Decimal(1), "n": decimal.Decimal("1e-9"), "u": decimal.Decimal("1e-6"),
    "m": decimal.Decimal("1e-3"), "k": decimal.Decimal("1e3"), "M": decimal.Decimal("1e6"),
    "G": decimal.Decimal("1e9"), "T": decimal.Decimal("1e12"), "P": decimal.Decimal("1e15"),
    "E": decimal.Decimal("1e18"), **{s: decimal.Decimal(1024) ** (i + 1)
                                     for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))}}
QUANTITY_MAPS: Final = frozenset({"limits", "requests"})
"""The keys whose values are maps of resource quantities (a container's `resources`)."""


def quantity_value(value: object) -> decimal.Decimal | None:
    """The number a Kubernetes quantity stands for ("500m" → 0.5, "1Gi" → 1073741824, 2 → 2); None if it
    is not one. As `k8s.io/apimachinery/pkg/api/resource/quantity.go` (ParseQuantity) reads it: a decimal
    number and a binary-SI, decimal-SI or exponent suffix."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    match = _QUANTITY.fullmatch(str(value))
    if match is None:
        return None
    number, suffix = decimal.Decimal(match.group(1)), match.group(2)
    if suffix and suffix[0] in "eE":
        scaled: decimal.Decimal = number.scaleb(int(suffix[1:]))
        return scaled
    return number * _QUANTITY_SCALE[suffix]


def owned_differs(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Whether applying `desired` (a child the operator renders) would change `actual`.

    Compares only what the operator owns: our labels and annotations, the owner reference, and the spec as a
    subset (the API server adds defaults, which are ignored; a hand edit is put back). Resource quantities
    compare by value: an admission webhook that decodes the object into Go types writes them back in
    canonical form (KServe's turns "0.5" into "500m" and 1 into "1"), and a string comparison would then
    replace the child on every look. A field the spec no longer has is caught where it matters: a CronJob
    carries its template hash as an annotation, and an InferenceService's left-over canary or pod field is
    checked by its own `inference_service_differs`.
    """
    meta = actual.get("metadata", {})
    for field in ("labels", "annotations"):
        have = meta.get(field) or {}
        if any(have.get(k) != v for k, v in desired["metadata"][field].items()):
            return True
    if desired["metadata"]["ownerReferences"] != meta.get("ownerReferences"):
        return True
    return not contains(actual.get("spec") or {}, desired["spec"])


def updated(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """`current` with what the operator owns replaced by `desired`'s: labels and annotations merged over the
    ones others set, the owner reference and the spec replaced (what a PUT sends)."""
    meta, want = current["metadata"], desired["metadata"]
    return {**current,
            "metadata": {**meta, "labels": {**(meta.get("labels") or {}), **want["labels"]},
                         "annotations": {**(meta.get("annotations") or {}), **want["annotations"]},
                         "ownerReferences": want["ownerReferences"]},
            "spec": desired["spec"]}


def contains(actual: Any, desired: Any, *, quantity_map: bool = False) -> bool:
    """Whether every value set in `desired` is present and equal in `actual` (recursively); the values of a
    `limits` or `requests` map are quantities, equal when they stand for the same number."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        if quantity_map:
            return all(k in actual and _same_quantity(actual[k], v) for k, v in desired.items())
        return all(k in actual and contains(actual[k], v, quantity_map=k in QUANTITY_MAPS)
                   for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(actual) == len(desired) and all(
            contains(a, d) for a, d in zip(actual, desired, strict=True))
    return bool(actual == desired)


def _same_quantity(actual: Any, desired: Any) -> bool:
    if actual == desired:
        return True
    have, want = quantity_value(actual), quantity_value(desired)
    return have is not None and have == want
