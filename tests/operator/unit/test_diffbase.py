"""The operator's diff-base storage builds the essence kopf's own AnnotationsDiffBaseStorage builds."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
from medserve_operator.main import DiffBaseStorage


def body() -> dict[str, Any]:
    return {
        "apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {
            "name": "triage", "namespace": "clinical", "uid": "u-1", "resourceVersion": "41", "generation": 3,
            "ownerReferences": [{"kind": "Deployment", "name": "d", "uid": "u-0"}],
            "labels": {"team": "icu"},
            "annotations": {
                "medserve.io/last-handled-configuration": '{"spec": {}}',
                "kopf.zalando.org/register.x": "{}",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "clinical.example/owner": "dr-x",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:model": {}}}}],
        },
        "spec": {"model": {"name": "sepsis", "version": "2"}, "scaling": {"minReplicas": 1}},
        "status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.mark.parametrize("trim", [None, "labels", "annotations", "metadata", "status"])
def test_essence_equals_kopfs(trim: str | None) -> None:
    raw = body()
    if trim in ("labels", "annotations"):
        del raw["metadata"][trim]
    elif trim is not None:
        del raw[trim]
    before = copy.deepcopy(raw)
    ours = DiffBaseStorage(prefix="medserve.io", key="last-handled-configuration")
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="medserve.io", key="last-handled-configuration")
    essence = ours.build(body=kopf.Body(raw), extra_fields={("spec",)})  # as kopf calls it for ours
    assert essence == kopfs.build(body=kopf.Body(raw), extra_fields={("spec",)})
    assert ours.build(body=kopf.Body(raw)) == kopfs.build(body=kopf.Body(raw))
    assert "status" not in essence and set(essence.get("metadata", {})) <= {"labels", "annotations"}
    assert raw == before  # nothing of the body changed
    essence["spec"]["model"]["name"] = "changed"  # and the essence is a copy
    assert raw["spec"]["model"]["name"] == "sepsis"


def test_extra_fields_are_kopfs_build() -> None:
    raw = body()
    ours = DiffBaseStorage(prefix="medserve.io", key="last-handled-configuration")
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="medserve.io", key="last-handled-configuration")
    for fields in ([("status", "phase")], ["metadata.finalizers"], ["spec.model", ("status",)]):
        assert ours.build(body=kopf.Body(raw), extra_fields=fields) == kopfs.build(body=kopf.Body(raw),
                                                                                  extra_fields=fields)
