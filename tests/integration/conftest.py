"""Integration fixtures: a real MLflow server, the emulated Kubernetes API, the real operator process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import OperatorProcess
from medserve_operator.sandbox.emulator import EmulatorProcess
from medserve_operator.sandbox.mlflow_server import MlflowServer

REPO = Path(__file__).resolve().parents[2]
CRDS = sorted((REPO / "crds").glob("*.yaml"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    workdir = tmp_path_factory.mktemp("cluster")
    with EmulatorProcess(workdir, crd_paths=CRDS, log_path=workdir / "emulator.log") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def operator(cluster: EmulatorProcess, mlflow_server: MlflowServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, mlflow_server.url, tmp_path_factory.mktemp("op") / "operator.log")
    op.start()
    yield op
    op.stop()


