"""The Helm chart installed for real: `helm install`, `upgrade`, `rollback`, `uninstall` and
`--dry-run=server` of charts/medserve with Helm 4's defaults (server-side apply), against the cluster
a fresh cluster from `emulator_factory` (no CRDs of ours yet, so Helm installs the chart's crds/): the
emulator, or in the envtest tier a real kube-apiserver.

Runs the real `helm` binary (on PATH, or the one `make helm` put into .venv/bin); skipped with the
reason when there is none. Nothing runs the operator's image here: the Deployment is created, not
started (no kubelet on either cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from medserve_sandbox.emulator_process import EmulatorProcess

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "medserve"
HELM = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
NS = "medserve-system"

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary on PATH or in .venv/bin (run `make helm`)")


def helm(cluster: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": str(cluster.workdir / "helm"),
           "HELM_CONFIG_HOME": str(cluster.workdir / "helm"), "HELM_DATA_HOME": str(cluster.workdir / "helm")}
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=300, check=False, env=env)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def release_secrets(cluster: Any) -> list[str]:
    listing = json.loads(cluster.kubectl("get", "secrets", "-n", NS, "-l", "owner=helm", "-o", "json").stdout)
    return sorted(item["metadata"]["name"] for item in listing["items"])


@pytest.fixture(scope="module")
def cluster(emulator_factory: Callable[..., Any]) -> Any:
    return emulator_factory()


@pytest.fixture(autouse=True)
def _known_limits(cluster: Any) -> None:
    if not isinstance(cluster, EmulatorProcess) and cluster.server_minor() < 27:
        pytest.skip(f"the chart requires kubeVersion >=1.27; this kube-apiserver is 1.{cluster.server_minor()}")


def test_install_upgrade_rollback_uninstall(cluster: Any) -> None:
    dry = helm(cluster, "install", "medserve", str(CHART), "-n", NS, "--create-namespace", "--dry-run=server")
    assert "STATUS: pending-install" in dry.stdout
    installed = helm(cluster, "install", "medserve", str(CHART), "-n", NS, "--create-namespace", "--wait=false")
    assert "STATUS: deployed" in installed.stdout, installed.stdout
    deployment = json.loads(cluster.kubectl("get", "deployment", "medserve", "-n", NS, "-o", "json").stdout)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "medserve"
    for crd in ("modeldeployments.medserve.io", "abtests.medserve.io", "retrainpolicies.medserve.io"):
        cluster.kubectl("get", "crd", crd)
    role = json.loads(cluster.kubectl("get", "clusterrole", "medserve", "-o", "json").stdout)
    assert any("modeldeployments/finalizers" in rule["resources"] for rule in role["rules"])

    helm(cluster, "upgrade", "medserve", str(CHART), "-n", NS, "--set", "operator.resyncSeconds=45")
    env = json.loads(cluster.kubectl("get", "deployment", "medserve", "-n", NS, "-o", "json").stdout)
    [container] = env["spec"]["template"]["spec"]["containers"]
    assert {"name": "MEDSERVE_RESYNC_SECONDS", "value": "45"} in container["env"]
    helm(cluster, "rollback", "medserve", "1", "-n", NS)
    back = json.loads(cluster.kubectl("get", "deployment", "medserve", "-n", NS, "-o", "json").stdout)
    [container] = back["spec"]["template"]["spec"]["containers"]
    assert {"name": "MEDSERVE_RESYNC_SECONDS", "value": "30"} in container["env"]
    history = json.loads(helm(cluster, "history", "medserve", "-n", NS, "-o", "json").stdout)
    assert [entry["revision"] for entry in history] == [1, 2, 3]
    assert len(release_secrets(cluster)) == 3

    helm(cluster, "uninstall", "medserve", "-n", NS, "--wait=false")
    assert release_secrets(cluster) == []
    assert cluster.kubectl("get", "deployment", "medserve", "-n", NS, check=False).returncode != 0
    # Helm never deletes what it installed from crds/.
    cluster.kubectl("get", "crd", "modeldeployments.medserve.io")
