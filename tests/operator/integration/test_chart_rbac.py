"""The chart's ClusterRole against a real kube-apiserver's RBAC and OwnerReferencesPermissionEnforcement.

Envtest tier only (the emulator stores RBAC objects but enforces none: skipped there, with the reason).
The chart's ServiceAccount, ClusterRole and ClusterRoleBinding are applied as `helm template` renders
them (envtest_kit.chart_service_account), and the children the operator creates are created with that
account's token: an InferenceService owned by a ModelDeployment with `blockOwnerDeletion: true` (the
operator's render.owner_reference) needs `update` on modeldeployments/finalizers, and is refused 403
without it. `kubectl auth can-i` checks the verbs the operator uses are granted and the trimmed ones
are not.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envtest_kit import chart_service_account
from medserve_sandbox.controlplane import ControlPlane
from medserve_sandbox.emulator_process import KUBECTL


@pytest.fixture(scope="module")
def plane(cluster: Any) -> ControlPlane:
    if not isinstance(cluster, ControlPlane):
        pytest.skip("the emulator enforces no RBAC: this runs in the envtest tier (make test-envtest)")
    return cluster


@pytest.fixture(scope="module")
def operator_kubeconfig(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chart_service_account(plane, tmp_path_factory.mktemp("rbac"))


def as_operator(plane: ControlPlane, kubeconfig: Path, *args: str, input: str | None = None,
                ) -> subprocess.CompletedProcess[str]:
    cmd = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(plane.workdir / "operator-cache"), *args]
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120, check=False)


def test_blocking_owner_reference_needs_update_on_the_owners_finalizers(
        plane: ControlPlane, operator_kubeconfig: Path) -> None:
    plane.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "owner", "namespace": "default"},
        "spec": {"model": {"name": "m", "version": "1"}}}))
    owner = json.loads(plane.kubectl("get", "modeldeployment", "owner", "-o", "json").stdout)
    child = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "owner", "namespace": "default", "ownerReferences": [{
            "apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment", "name": "owner",
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "medserve/runtime:dev"}]}},
    }
    created = as_operator(plane, operator_kubeconfig, "create", "-f", "-", input=json.dumps(child))
    assert created.returncode == 0, created.stderr


@pytest.mark.parametrize(("verb", "resource", "allowed"), [
    ("update", "modeldeployments.medserve.io/finalizers", True),
    ("update", "retrainpolicies.medserve.io/finalizers", True),
    ("patch", "modeldeployments.medserve.io/status", True),
    ("create", "inferenceservices.serving.kserve.io", True),
    ("update", "inferenceservices.serving.kserve.io", True),
    ("create", "jobs.batch", True),
    ("delete", "cronjobs.batch", True),
    ("create", "events", True),
    ("create", "persistentvolumeclaims", True),
    ("update", "persistentvolumeclaims", True),
    # Trimmed: the operator never does these.
    ("delete", "abtests.medserve.io", False),
    ("delete", "inferenceservices.serving.kserve.io", False),
    ("delete", "jobs.batch", False),
    ("get", "secrets", False),
    ("delete", "persistentvolumeclaims", False),
])
def test_the_operator_account_may_do_what_it_does_and_no_more(
        plane: ControlPlane, operator_kubeconfig: Path, verb: str, resource: str, allowed: bool) -> None:
    kind, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    answer = as_operator(plane, operator_kubeconfig, "auth", "can-i", verb, kind, *extra, "-n", "default")
    assert answer.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, answer.stdout, answer.stderr)
