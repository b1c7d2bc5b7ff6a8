"""The chart's ClusterRole against RBAC and OwnerReferencesPermissionEnforcement.

Against the emulator (whose RBAC and gc admission follow kube-apiserver's: sandbox/rbac.py) and, in the
envtest tier, a real kube-apiserver. The chart's ServiceAccount, ClusterRole and ClusterRoleBinding are
applied as `helm template` renders them (envtest_kit.chart_service_account), and the children the operator
creates are created with that account's token: an InferenceService owned by a ModelDeployment with
`blockOwnerDeletion: true` (the operator's render.owner_reference) needs `update` on
modeldeployments/finalizers, and is refused 403 without it (shown by taking the rule out of the
ClusterRole). `kubectl auth can-i` checks the verbs the operator uses are granted and the trimmed ones are
not.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envtest_kit import chart_service_account
from medserve_sandbox.controlplane import ControlPlane
from medserve_sandbox.emulator_process import KUBECTL, EmulatorProcess

Cluster = ControlPlane | EmulatorProcess


@pytest.fixture(scope="module")
def operator_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chart_service_account(cluster, tmp_path_factory.mktemp("rbac"))


def as_operator(cluster: Cluster, kubeconfig: Path, *args: str, input: str | None = None,
                ) -> subprocess.CompletedProcess[str]:
    cmd = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cluster.workdir / "operator-cache"), *args]
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120, check=False)


def owned_child(cluster: Cluster, name: str) -> dict[str, Any]:
    """An InferenceService owned, with blockOwnerDeletion, by a new ModelDeployment `name` (as the operator
    renders it)."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"model": {"name": "m", "version": "1"}}}))
    owner = json.loads(cluster.kubectl("get", "modeldeployment", name, "-o", "json").stdout)
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "default", "ownerReferences": [{
            "apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment", "name": name,
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "medserve/runtime:dev"}]}},
    }


def test_blocking_owner_reference_needs_update_on_the_owners_finalizers(
        cluster: Cluster, operator_kubeconfig: Path) -> None:
    created = as_operator(cluster, operator_kubeconfig, "create", "-f", "-", input=json.dumps(owned_child(cluster,
                                                                                                          "owner")))
    assert created.returncode == 0, created.stderr


def test_without_the_finalizers_rule_the_child_is_refused(cluster: Cluster, operator_kubeconfig: Path) -> None:
    """The rule taken out of the chart's ClusterRole: the operator's InferenceService create fails 403."""
    role = json.loads(cluster.kubectl("get", "clusterrole", "medserve", "-o", "json").stdout)
    trimmed = [rule for rule in role["rules"] if not any(r.endswith("/finalizers") for r in rule.get("resources", []))]
    assert len(trimmed) < len(role["rules"])
    cluster.kubectl("patch", "clusterrole", "medserve", "--type=json",
                    "-p", json.dumps([{"op": "replace", "path": "/rules", "value": trimmed}]))
    try:
        refused = as_operator(cluster, operator_kubeconfig, "create", "-f", "-",
                              input=json.dumps(owned_child(cluster, "owner-trimmed")))
    finally:
        cluster.kubectl("patch", "clusterrole", "medserve", "--type=json",
                        "-p", json.dumps([{"op": "replace", "path": "/rules", "value": role["rules"]}]))
    assert refused.returncode != 0
    assert ('inferenceservices.serving.kserve.io "owner-trimmed" is forbidden: cannot set blockOwnerDeletion if an '
            "ownerReference refers to a resource you can't set finalizers on") in refused.stderr, refused.stderr


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
        cluster: Cluster, operator_kubeconfig: Path, verb: str, resource: str, allowed: bool) -> None:
    kind, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    answer = as_operator(cluster, operator_kubeconfig, "auth", "can-i", verb, kind, *extra, "-n", "default")
    assert answer.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, answer.stdout, answer.stderr)
