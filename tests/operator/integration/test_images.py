"""Smoke tests of the three images `make images` builds (Containerfile), run with podman on loopback.

- training: the example job in the training image trains and registers version 1 of a model in a real
  MLflow server (the sandbox's, artifacts proxied by the server);
- runtime: the runtime image serves that version from MLflow with `--read-only --cap-drop ALL`, as a
  non-root user, and answers /predict and /metrics;
- operator: the operator image, read-only and without capabilities too, reconciles a ModelDeployment
  against the API emulator into an InferenceService running the runtime image.

Containers share the host's network (`--network host`, as the builds do) so that they reach MLflow and
the emulator on 127.0.0.1. Skipped with the reason where podman is missing, or, outside CI, where the
images have not been built (`make images`); in CI (CI=true, .ci/run builds them first) a missing image
fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit import get_json, wait_for
from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from runtime_kit import clinical_records

REPO = Path(__file__).resolve().parents[3]
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
PREFIX = os.environ.get("IMAGE_PREFIX", "localhost/medserve")
IMAGES = {target: f"{PREFIX}/{target}:{VERSION}" for target in ("operator", "runtime", "training")}
PODMAN = shutil.which("podman")
CONTAINERS_CONF = REPO / "build" / "images" / "containers.conf"
MODEL = "smoke-triage"
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host",
            "--tmpfs", "/tmp:rw,size=256m,mode=1777"]

pytestmark = pytest.mark.skipif(PODMAN is None, reason="podman is not installed (make images installs it)")


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert PODMAN is not None
    env = dict(os.environ)
    if CONTAINERS_CONF.exists():  # runc and the ulimits .ci/build-images chose for this machine
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    result = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module", autouse=True)
def images() -> None:
    missing = [image for image in IMAGES.values() if podman("image", "exists", image, check=False).returncode != 0]
    if missing:
        message = f"not built: {', '.join(missing)} (run `make images`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


class Container:
    """One detached container, removed at the end; `logs()` for the failure messages."""

    def __init__(self, *args: str) -> None:
        self.name = f"medserve-smoke-{uuid.uuid4().hex[:8]}"
        podman("run", "-d", "--name", self.name, *args)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def running(self) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip()
        return out == "true"

    def inspect(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(podman("inspect", self.name).stdout)
        return found[0]

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False)


@pytest.fixture(scope="module")
def trained(mlflow_server: MlflowServer) -> dict[str, Any]:
    """Version 1 of MODEL, trained and registered by the training image."""
    result = podman("run", "--rm", *HARDENED, "-e", f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                    "-e", f"MEDSERVE_MODEL_NAME={MODEL}", IMAGES["training"],
                    "python", "examples/training/train.py", "--samples", "600", "--epochs", "5", "--alias",
                    "champion", "--json", timeout=600)
    model: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return model


@pytest.fixture(scope="module")
def runtime(trained: dict[str, Any], mlflow_server: MlflowServer) -> Iterator[tuple[Container, str]]:
    port = procs.free_port()
    container = Container(*HARDENED, "-e", f"MLFLOW_TRACKING_URI={mlflow_server.url}", IMAGES["runtime"],
                          f"--model_name={MODEL}", f"--model_uri=models:/{MODEL}/1", f"--http_port={port}",
                          "--rate_limit_per_minute=100000")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: container.running() and procs.http_ok(f"{url}/v2/health/ready"), timeout=180,
                 what=f"the runtime image serving on {url}")
    except AssertionError:
        print(container.logs())
        container.remove()
        raise
    yield container, url
    container.remove()


def test_runtime_image_serves_the_model_read_only_and_non_root(runtime: tuple[Container, str]) -> None:
    container, url = runtime
    config = container.inspect()
    assert config["HostConfig"]["ReadonlyRootfs"] is True
    # The server process itself: no capability left (effective, permitted, bounding), not root.
    status = dict(line.split(":\t", 1) for line in podman(
        "exec", container.name, "cat", "/proc/1/status").stdout.splitlines() if ":\t" in line)
    assert {status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd")} == {"0000000000000000"}
    assert status["Uid"].split()[0] == "65532" and status["Gid"].split()[0] == "65532"
    record = clinical_records(1, seed=5)[0]
    response = httpx.post(f"{url}/predict", json={"patient_id": "smoke-1", "clinical_data": record}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1" and body["prediction"]["primary_diagnosis"]
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'medserve_model_info{' in metrics and f'model="{MODEL}"' in metrics
    bad = httpx.post(f"{url}/predict", json={"clinical_data": []}, timeout=10)
    assert 400 <= bad.status_code < 500, bad.text
    write = podman("exec", container.name, "sh", "-c", "touch /opt/medserve/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_images_carry_oci_labels_and_a_non_root_user() -> None:
    for target, image in IMAGES.items():
        config = json.loads(podman("image", "inspect", image).stdout)[0]
        labels = config["Labels"]
        assert labels["org.opencontainers.image.version"] == VERSION
        assert labels["org.opencontainers.image.title"].startswith("medserve")
        assert config["Config"]["User"] == "65532:65532", target


def test_operator_image_has_no_torch_mlflow_or_sandbox() -> None:
    absent = ("torch", "mlflow", "kserve", "medserve_sandbox", "medserve_runtime")
    probe = f"import importlib.util as u; print([m for m in {absent!r} if u.find_spec(m)])"
    out = podman("run", "--rm", *HARDENED, "--entrypoint", "python", IMAGES["operator"], "-c", probe).stdout
    assert out.strip() == "[]"


def test_operator_image_reconciles_a_model_deployment(cluster: EmulatorProcess, mlflow_server: MlflowServer,
                                                      trained: dict[str, Any], tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cluster.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)
    container = Container(*HARDENED, "-v", f"{kubeconfig}:/etc/medserve/kubeconfig:ro",
                          "-e", "KUBECONFIG=/etc/medserve/kubeconfig", "-e", f"MEDSERVE_MLFLOW_URI={mlflow_server.url}",
                          "-e", f"MEDSERVE_RUNTIME_IMAGE={IMAGES['runtime']}", "-e", "MEDSERVE_RESYNC_SECONDS=1",
                          IMAGES["operator"], "operator", "--namespace", "default")
    try:
        wait_for(lambda: "medserve operator started" in container.logs(), timeout=120, what="the operator image")
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "smoke", "namespace": "default"},
            "spec": {"model": {"name": MODEL, "alias": "champion"}}}))
        isvc = wait_for(lambda: get_json(cluster, "inferenceservice", "smoke", "-n", "default"), timeout=120,
                        what="the InferenceService the operator image renders")
        predictor = isvc["spec"]["predictor"]
        assert predictor["containers"][0]["image"] == IMAGES["runtime"]
        md = wait_for(lambda: ((m := get_json(cluster, "modeldeployment", "smoke", "-n", "default") or {})
                               .get("status", {}).get("model") and m), timeout=60, what="status.model")
        assert md["status"]["model"]["version"] == "1"
        assert container.running(), container.logs()
    except AssertionError:
        print(container.logs())
        raise
    finally:
        container.remove()
