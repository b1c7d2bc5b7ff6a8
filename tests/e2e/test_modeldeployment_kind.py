"""A ModelDeployment on a real cluster (kind): the CRDs install, the API server admits the example, and the
operator, running out of cluster against it, resolves the model in a real MLflow and creates the
InferenceService, which KServe's real CRD schema accepts; deleting the ModelDeployment lets the
cluster's garbage collector remove it.

KServe's controller is not installed, so the InferenceService is not expected to become Ready.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from medserve_sandbox import procs
from medserve_sandbox.mlflow_server import MlflowServer
from medserve_sandbox.schemas import find_kserve_crds_dir

pytestmark = pytest.mark.kind

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "medserve-e2e"


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


@pytest.fixture(scope="module")
def cluster(kind_cluster: Any) -> Any:
    """The kind cluster with KServe's CRDs and ours installed, and a restricted namespace to work in."""
    kserve = find_kserve_crds_dir()
    if kserve is None:
        pytest.skip("KServe's CRDs (shared/upstream/kserve or $MEDSERVE_KSERVE_CRDS) are not available")
    # Server-side apply: the InferenceService CRD is too large for the last-applied annotation.
    for crds in (kserve, REPO / "crds"):
        kind_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    kind_cluster.kubectl("wait", "--for=condition=Established", "--timeout=120s", "crd", "--all")
    namespaces = kind_cluster.kubectl("get", "namespaces", "-o", "name")
    if f"namespace/{NAMESPACE}" not in namespaces.split():
        kind_cluster.kubectl("create", "namespace", NAMESPACE)
    kind_cluster.kubectl("label", "--overwrite", "namespace", NAMESPACE,
                         "pod-security.kubernetes.io/enforce=restricted")
    return kind_cluster


@pytest.fixture(scope="module")
def mlflow_with_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow with the example model registered (version 1, alias champion)."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "MEDSERVE_MODEL_NAME": "triage-classifier"}
        subprocess.run([sys.executable, str(REPO / "examples" / "training" / "train.py"), "--alias", "champion",
                        "--samples", "1000", "--epochs", "10"], env=env, check=True, capture_output=True,
                       timeout=300)
        yield server


@pytest.fixture(scope="module")
def operator(cluster: Any, mlflow_with_model: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The real operator, out of cluster, watching the e2e namespace."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    health_port = procs.free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path), "MEDSERVE_MLFLOW_URI": mlflow_with_model.url,
           "MEDSERVE_RESYNC_SECONDS": "5"}
    proc = procs.spawn([sys.executable, "-m", "medserve_operator.cli", "operator", "--namespace", NAMESPACE,
                        "--liveness", f"http://127.0.0.1:{health_port}/healthz"], log_path=log, env=env)
    try:
        procs.wait_until(lambda: procs.http_ok(f"http://127.0.0.1:{health_port}/healthz"), proc=proc,
                         log_path=log, what="medserve operator", timeout=120)
        yield
    finally:
        procs.stop(proc)


def get_json(cluster: Any, *args: str) -> dict[str, Any] | None:
    try:
        out = cluster.kubectl("get", *args, "-n", NAMESPACE, "-o", "json", stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        return None
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def test_model_deployment_creates_its_inference_service(cluster: Any, operator: None) -> None:
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "01-model-deployment"))

    def deployed() -> dict[str, Any] | None:
        md = get_json(cluster, "modeldeployment", "triage")
        status = (md or {}).get("status") or {}
        if (status.get("model") or {}).get("version") == "1" and get_json(cluster, "inferenceservice", "triage"):
            return md
        return None

    md = wait_for(deployed, timeout=180, what="ModelDeployment triage to resolve version 1 and its InferenceService")
    assert md["status"]["model"]["uri"] == "models:/triage-classifier/1"
    isvc = get_json(cluster, "inferenceservice", "triage")
    assert isvc is not None
    (owner,) = isvc["metadata"]["ownerReferences"]
    assert owner["kind"] == "ModelDeployment" and owner["uid"] == md["metadata"]["uid"]
    container = isvc["spec"]["predictor"]["containers"][0]
    assert "--model_uri=models:/triage-classifier/1" in container["args"]

    cluster.kubectl("delete", "-n", NAMESPACE, "modeldeployment", "triage", "--wait=true", "--timeout=120s")
    wait_for(lambda: get_json(cluster, "inferenceservice", "triage") is None, timeout=120,
             what="the cluster's garbage collector to delete the InferenceService")
