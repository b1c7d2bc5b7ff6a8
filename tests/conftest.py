"""Fixtures shared by every test tier: the repository's paths, emulated clusters on loopback, and the
integration fixtures (a real MLflow server, the emulated Kubernetes API with crds/, the real operator).

`emulator_factory` starts real `medserve emulator` processes (see sandbox/emulator.py) and stops them
at the end of the test module; `widget_crd` is a small CustomResourceDefinition with printer columns,
a category, short names, defaults and the status subresource, for tests of the emulator itself that
must not depend on the project's own CRDs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kit import OperatorProcess
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer

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


@pytest.fixture(scope="module")
def emulator_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorFactory]:
    """Start emulators with `emulator_factory(crd_paths=[...], extra_args=[...])`; all stop after the module."""
    started: list[EmulatorProcess] = []

    def start(crd_paths: list[Path] | None = None, extra_args: list[str] | None = None) -> EmulatorProcess:
        workdir = tmp_path_factory.mktemp("emulator")
        emulator = EmulatorProcess(workdir, crd_paths=crd_paths or [], log_path=workdir / "emulator.log",
                                   extra_args=extra_args)
        started.append(emulator)
        return emulator.start()

    yield start
    for emulator in started:
        emulator.stop()

@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    workdir = tmp_path_factory.mktemp("cluster")
    with EmulatorProcess(workdir, crd_paths=PROJECT_CRDS, log_path=workdir / "emulator.log") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def operator(cluster: EmulatorProcess, mlflow_server: MlflowServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, mlflow_server.url, tmp_path_factory.mktemp("op") / "operator.log")
    op.start()
    yield op
    op.stop()


