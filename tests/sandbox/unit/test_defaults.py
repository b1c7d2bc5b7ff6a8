"""The built-in kinds' defaults (sandbox/medserve_sandbox/defaults.py), as the real server fills them in."""

from __future__ import annotations

import pytest
from medserve_sandbox import defaults


@pytest.mark.parametrize(("image", "policy"), [
    ("busybox", "Always"), ("busybox:latest", "Always"), ("busybox:1.36", "IfNotPresent"),
    ("registry:5000/app", "Always"), ("registry:5000/app:v2", "IfNotPresent"), ("app@sha256:abc", "IfNotPresent"),
])
def test_image_pull_policy_follows_the_tag(image: str, policy: str) -> None:
    spec = {"containers": [{"name": "c", "image": image}]}
    defaults.pod_spec(spec)
    assert spec["containers"][0]["imagePullPolicy"] == policy


def test_a_job_gets_its_defaults_selector_and_labels() -> None:
    job = {"metadata": {"name": "once", "uid": "u-1"},
           "spec": {"parallelism": 3, "template": {"spec": {"restartPolicy": "Never", "containers": []}}}}
    defaults.on_create(("batch", "jobs"), job)
    spec = job["spec"]
    assert "completions" not in spec  # only when both completions and parallelism are unset
    assert (spec["parallelism"], spec["backoffLimit"], spec["suspend"]) == (3, 6, False)
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}}
    assert spec["template"]["metadata"]["labels"]["job-name"] == "once"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_conditions_carry_their_unset_times_as_null() -> None:
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    defaults.conditions_as_go(("batch", "jobs"), job)
    assert job["status"]["conditions"] == [{"type": "Complete", "status": "True", "lastProbeTime": None,
                                            "lastTransitionTime": None}]
