"""Fixtures shared by every test tier: the repository's paths, emulated clusters on loopback, and the
integration fixtures (a real MLflow server, the emulated Kubernetes API with crds/, the real operator,
real PostgreSQL and Redis servers: `postgres`/`redis` for a module, which a fault test may stop and start).

`emulator_factory` starts real `medserve emulator` processes (see sandbox/emulator.py) and stops them
at the end of the test module; `cluster` is one with crds/ installed.

The envtest tier (`make test-envtest`, MEDSERVE_ENVTEST=1) hands the same tests a real control plane
instead (sandbox/controlplane.py: etcd + kube-apiserver, + kube-controller-manager when present, from
$KUBEBUILDER_ASSETS), with crds/ and KServe's CRDs installed server-side; every test that needs a
cluster is skipped, with the reason, where the binaries are missing. Tests of emulator-only flags
(`extra_args`) are skipped there.

`widget_crd` is a small CustomResourceDefinition with printer columns,
a category, short names, defaults and the status subresource, for tests of the emulator (and of
kubectl against it) that must not depend on the project's own CRDs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from envtest_kit import chart_service_account
from kit import OperatorProcess
from medserve_sandbox.controlplane import ControlPlane, MissingAssets
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from medserve_sandbox.postgres_server import PostgresServer
from medserve_sandbox.redis_server import RedisServer
from medserve_sandbox.schemas import find_kserve_crds_dir

REPO = Path(__file__).resolve().parents[1]
PROJECT_CRDS = sorted((REPO / "crds").glob("*.yaml"))

KUBECTL = Path(shutil.which("kubectl") or "/usr/bin/kubectl")

WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.medserve.io
spec:
  group: test.medserve.io
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    listKind: WidgetList
    shortNames: [wd]
    categories: [medserve-test]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Phase, type: string, jsonPath: .status.phase}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 100}
              color: {type: string, enum: [red, green, blue], default: red}
              note: {type: string}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""


@pytest.fixture(scope="session")
def widget_crd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crds") / "widgets.yaml"
    path.write_text(WIDGET_CRD)
    return path


EmulatorFactory = Callable[..., EmulatorProcess]
Cluster = EmulatorProcess | ControlPlane
ENVTEST = os.environ.get("MEDSERVE_ENVTEST") == "1"


def envtest() -> bool:
    """True in the envtest tier: the cluster fixtures are real control planes."""
    return ENVTEST


def control_plane(workdir: Path, crd_paths: list[Path]) -> ControlPlane:
    """A real control plane with `crd_paths` and KServe's CRDs, or a skip naming what is missing."""
    try:
        return ControlPlane(workdir, crd_paths=crd_paths, kserve_crds=find_kserve_crds_dir())
    except MissingAssets as exc:
        pytest.skip(f"envtest tier: {exc}")


@pytest.fixture(scope="module")
def emulator_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    """Start emulators with `emulator_factory(crd_paths=[...], extra_args=[...])`; all stop after the module.

    In the envtest tier each call starts a real control plane instead; `extra_args` (the emulator's own
    flags) have no counterpart there, and a test passing them is skipped."""
    started: list[Cluster] = []

    def start(crd_paths: list[Path] | None = None, extra_args: list[str] | None = None) -> Cluster:
        if ENVTEST:
            if extra_args:
                pytest.skip(f"envtest tier: emulator flags {extra_args} have no real-server counterpart")
            plane = control_plane(tmp_path_factory.mktemp("envtest"), list(crd_paths or []))
            started.append(plane)
            return plane.start()
        workdir = tmp_path_factory.mktemp("emulator")
        emulator = EmulatorProcess(workdir, crd_paths=crd_paths or [], log_path=workdir / "emulator.log",
                                   extra_args=extra_args)
        started.append(emulator)
        return emulator.start()

    yield start
    for cluster in started:
        cluster.stop()

@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    if ENVTEST:
        with control_plane(workdir, PROJECT_CRDS) as plane:
            yield plane
        return
    with EmulatorProcess(workdir, crd_paths=PROJECT_CRDS, log_path=workdir / "emulator.log") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def operator(cluster: Cluster, mlflow_server: MlflowServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("op")
    kubeconfig = chart_service_account(cluster, workdir)  # the operator runs with the chart's RBAC, no more
    op = OperatorProcess(kubeconfig, mlflow_server.url, workdir / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster for the test module (initdb'd fresh; removed afterwards)."""
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis server for the test module."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
