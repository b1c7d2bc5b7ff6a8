"""The emulator's Job status rules (sandbox/jobstatus.py), as kube-apiserver v1.36 words them (the
recorded answer `job-status-complete-without-success-criteria` is the same rule over HTTP)."""

from __future__ import annotations

from typing import Any

import pytest
from medserve_sandbox import jobstatus
from medserve_sandbox.apierrors import ApiError

START, END = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "once"}, "status": status}


def cond(*types: str) -> list[dict[str, str]]:
    return [{"type": t, "status": "True"} for t in types]


def test_the_job_controllers_way_to_finish_is_accepted() -> None:
    running = job(startTime=START, active=1)
    jobstatus.validate(running, job(startTime=START, completionTime=END, succeeded=1,
                                    conditions=cond("SuccessCriteriaMet", "Complete")))
    jobstatus.validate(running, job(startTime=START, failed=1, conditions=cond("FailureTarget", "Failed")))
    jobstatus.validate(running, job(startTime=START, active=1, conditions=cond("FailureTarget")))  # interim


@pytest.mark.parametrize(("status", "expected"), [
    ({"startTime": START, "completionTime": END, "conditions": cond("Complete")},
     ["status.conditions: Invalid value: cannot set Complete=True condition without the SuccessCriteriaMet=true "
      "condition"]),
    ({"startTime": START, "conditions": cond("Failed")},
     ["status.conditions: Invalid value: cannot set Failed=True condition without the FailureTarget=true "
      "condition"]),
    ({"startTime": START, "active": 1, "conditions": cond("FailureTarget", "Failed")},
     ["status.active: Invalid value: 1: active>0 is invalid for finished job"]),
    ({"conditions": cond("SuccessCriteriaMet", "Complete")},
     ["status.completionTime: Required value: completionTime is required for Complete jobs",
      "status.startTime: Required value: startTime is required for finished job"]),
    ({"startTime": START, "completionTime": END},
     [f'status.completionTime: Invalid value: "{END}": cannot set completionTime when there is no Complete=True '
      "condition"]),
])
def test_what_the_real_server_refuses(status: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ApiError) as refused:
        jobstatus.validate(job(startTime=START, active=1), job(**status))
    assert refused.value.code == 422
    assert [f"{c['field']}: {c['message']}" for c in refused.value.details["causes"]] == expected  # type: ignore[index]
    summary = expected[0] if len(expected) == 1 else f"[{', '.join(expected)}]"
    assert refused.value.message == f'Job.batch "once" is invalid: {summary}'


def test_rules_apply_only_when_their_fields_change() -> None:
    # An already-failed Job without FailureTarget (written before the rule existed) may still change its counters.
    old = job(startTime=START, failed=1, conditions=cond("Failed"))
    jobstatus.validate(old, job(startTime=START, failed=2, conditions=cond("Failed")))
