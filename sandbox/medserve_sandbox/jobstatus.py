"""The status rules kube-apiserver holds a batch/v1 Job's status writes to.

pkg/registry/batch/job/strategy.go (jobStatusStrategy.ValidateUpdate, getStatusValidationOptions) turns
each rule on when the fields it speaks of changed; pkg/apis/batch/validation/validation.go
(validateJobStatus) words the errors. These are the rules a Job controller (the sandbox's stand-in, here)
can break when it finishes a Job: terminal conditions without their interim ones (SuccessCriteriaMet
before Complete, FailureTarget before Failed), Complete with Failed or FailureTarget, completionTime
without Complete or Complete without it, a finished Job with active Pods or without startTime.
"""

from __future__ import annotations

from typing import Any

from medserve_sandbox._schemanode import Cause
from medserve_sandbox.apierrors import invalid_causes

Obj = dict[str, Any]


def _true(status: Obj, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or [])


def errors(old: Obj, new: Obj) -> list[Cause]:
    """(field, message, reason) for each rule the status write from `old` to `new` breaks."""
    before, after = old.get("status") or {}, new.get("status") or {}

    def changed(test: Any) -> bool:
        return bool(test(before) != test(after))

    def complete(s: Obj) -> bool:
        return _true(s, "Complete")

    def failed(s: Obj) -> bool:
        return _true(s, "Failed")

    def finished(s: Obj) -> bool:
        return complete(s) or failed(s)

    found: list[Cause] = []
    conditions = "status.conditions"
    if (changed(complete) or changed(failed)) and complete(after) and failed(after):
        found.append((conditions, "Invalid value: cannot set Complete=True and Failed=true conditions",
                      "FieldValueInvalid"))
    if (changed(complete) or changed(lambda s: _true(s, "FailureTarget"))) and complete(after) \
            and _true(after, "FailureTarget"):
        found.append((conditions, "Invalid value: cannot set Complete=True and FailureTarget=true conditions",
                      "FieldValueInvalid"))
    completion_changed = changed(lambda s: s.get("completionTime"))
    if (changed(complete) or completion_changed) and after.get("completionTime") and not complete(after):
        found.append(("status.completionTime", f'Invalid value: "{after["completionTime"]}": cannot set '
                      "completionTime when there is no Complete=True condition", "FieldValueInvalid"))
    if (changed(complete) or completion_changed) and complete(after) and not after.get("completionTime"):
        found.append(("status.completionTime", "Required value: completionTime is required for Complete jobs",
                      "FieldValueRequired"))
    if changed(failed) and failed(after) and not _true(after, "FailureTarget"):
        found.append((conditions, "Invalid value: cannot set Failed=True condition without the FailureTarget=true "
                      "condition", "FieldValueInvalid"))
    if (changed(complete) or changed(lambda s: _true(s, "SuccessCriteriaMet"))) and complete(after) \
            and not _true(after, "SuccessCriteriaMet"):
        found.append((conditions, "Invalid value: cannot set Complete=True condition without the "
                      "SuccessCriteriaMet=true condition", "FieldValueInvalid"))
    if (changed(finished) or changed(lambda s: s.get("active"))) and finished(after) and (after.get("active") or 0) > 0:
        found.append(("status.active", f"Invalid value: {after['active']}: active>0 is invalid for finished job",
                      "FieldValueInvalid"))
    if (changed(finished) or changed(lambda s: s.get("startTime"))) and finished(after) and not after.get("startTime"):
        found.append(("status.startTime", "Required value: startTime is required for finished job",
                      "FieldValueRequired"))
    return found


def validate(old: Obj, new: Obj) -> None:
    """Raise the 422 kube-apiserver answers a Job status write that breaks a rule (see the module docstring)."""
    found = errors(old, new)
    if found:
        raise invalid_causes("Job", "batch", new["metadata"]["name"], found)
