"""Manifest helpers shared by the renderers: labels, owner references, security contexts, and what the operator
owns of a child (to tell whether applying it would change anything).

Pure: dicts in, dicts out.
"""

from __future__ import annotations

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


def owned_differs(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Whether applying `desired` (a child the operator renders) would change `actual`.

    Compares only what the operator owns: our labels and annotations, the owner reference, and the spec as a
    subset (the API server adds defaults, which are ignored; a hand edit is put back). A field the spec no
    longer has is caught where it matters: a CronJob carries its template hash as an annotation, and an
    InferenceService's left-over canary setting is checked by its own `inference_service_differs`.
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


def contains(actual: Any, desired: Any) -> bool:
    """Whether every value set in `desired` is present and equal in `actual` (recursively)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(actual) == len(desired) and all(
            contains(a, d) for a, d in zip(actual, desired, strict=True))
    return bool(actual == desired)
