"""The envtest tier's helper shared by conftest and the RBAC test: the chart's own RBAC on a real control plane."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from medserve_sandbox.controlplane import ControlPlane
from medserve_sandbox.emulator_process import EmulatorProcess

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "medserve"
HELM = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))


def chart_service_account(plane: ControlPlane | EmulatorProcess, workdir: Path) -> Path:
    """The chart's ServiceAccount, ClusterRole and ClusterRoleBinding (as `helm template` renders them)
    applied to the cluster (a real control plane, or the emulator, whose RBAC follows kube-apiserver's),
    and a kubeconfig holding a token of that account: the operator then runs with exactly the chart's
    permissions, so a missing rule fails the test that needs it."""
    if HELM is None:
        pytest.skip("no helm binary to render the chart's RBAC (run `make helm`)")
    rendered = subprocess.run(
        [HELM, "template", "medserve", str(CHART), "--namespace", "medserve-system",
         "--set", "mlflow.trackingUri=http://unused", "--show-only", "templates/serviceaccount.yaml",
         "--show-only", "templates/clusterrole.yaml", "--show-only", "templates/clusterrolebinding.yaml"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    if plane.kubectl("get", "namespace", "medserve-system", check=False).returncode != 0:
        plane.kubectl("create", "namespace", "medserve-system")
    plane.kubectl("apply", "-n", "medserve-system", "-f", "-", input=rendered)
    account = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "ServiceAccount")
    return plane.service_account_kubeconfig(workdir / "operator.kubeconfig", "medserve-system",
                                            account["metadata"]["name"])
