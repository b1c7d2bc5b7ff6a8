"""The rule kube-apiserver holds a Pod's spec updates to: a Pod's spec is immutable but for a few fields.

pkg/apis/core/validation/validation.go: ValidatePodUpdate (called by pkg/registry/core/pod/strategy.go
podStrategy.ValidateUpdate) and ValidateContainerUpdates. Adding or removing a container is refused
first ("pod updates may not add or remove containers"); otherwise the new spec, with the updatable
fields (`updatablePodSpecFields`: container and init-container images, activeDeadlineSeconds,
tolerations, schedulingGates, terminationGracePeriodSeconds from negative to 1) put back to their old
values, must equal the old spec. Not reproduced: the go-cmp diff the real message appends after the
list of updatable fields, and the rules on those fields' new values (only additions to tolerations,
only removals of schedulingGates, a shrinking activeDeadlineSeconds).
"""

from __future__ import annotations

import copy
from typing import Any

from medserve_sandbox._schemanode import Cause
from medserve_sandbox.apierrors import invalid_causes

Obj = dict[str, Any]

UPDATABLE = ("`spec.containers[*].image`", "`spec.initContainers[*].image`", "`spec.activeDeadlineSeconds`",
             "`spec.tolerations` (only additions to existing tolerations)",
             "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)")


def errors(old: Obj, new: Obj) -> list[Cause]:
    """(field, message, reason) for the rule the spec update from `old` to `new` breaks, if any."""
    before, after = old.get("spec") or {}, new.get("spec") or {}
    for field in ("containers", "initContainers"):
        if len(before.get(field) or []) != len(after.get(field) or []):
            return [(f"spec.{field}", "Forbidden: pod updates may not add or remove containers",
                     "FieldValueForbidden")]
    munged = copy.deepcopy(after)
    for field in ("containers", "initContainers"):
        for container, previous in zip(munged.get(field) or [], before.get(field) or [], strict=True):
            container["image"] = previous.get("image")
    for field in ("activeDeadlineSeconds", "tolerations", "schedulingGates"):
        munged.pop(field, None)
        if field in before:
            munged[field] = before[field]
    grace = before.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and grace < 0 and munged.get("terminationGracePeriodSeconds") == 1:
        munged["terminationGracePeriodSeconds"] = grace
    if munged != before:
        return [("spec", f"Forbidden: pod updates may not change fields other than {','.join(UPDATABLE)}",
                 "FieldValueForbidden")]
    return []


def validate(old: Obj, new: Obj) -> None:
    """Raise the 422 kube-apiserver answers a Pod spec update that breaks the rule (module docstring)."""
    found = errors(old, new)
    if found:
        raise invalid_causes("Pod", "", new["metadata"]["name"], found)
