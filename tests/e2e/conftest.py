"""The e2e tier's cluster: a real kind cluster (pytest-kind's KindCluster) built from kind-config.yaml.

Every test here is marked `kind` and skipped, with the reason, where Docker or kind is missing or
Docker's engine is not running. Options from pytest-kind apply: `--cluster-name`, `--keep-cluster`
(reuse the cluster across runs: `make kind-up` then `pytest -m kind tests/e2e --cluster-name medserve
--keep-cluster`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
KIND_CONFIG = REPO / "kind-config.yaml"


def missing_requirement() -> str | None:
    """Why a kind cluster cannot be created here, or None when it can."""
    if shutil.which("docker") is None:
        return "docker is not installed (the e2e tier needs Docker and kind)"
    if shutil.which("kind") is None:
        return "kind is not installed (https://kind.sigs.k8s.io; the e2e tier needs Docker and kind)"
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "Docker's engine did not answer `docker info` within 30s"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"Docker's engine is not running (`docker info`: {reason})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in tests/e2e is a kind test; skip them all at once, with the reason, when kind cannot run."""
    e2e = [item for item in items if Path(str(item.fspath)).is_relative_to(Path(__file__).parent)]
    for item in e2e:
        item.add_marker(pytest.mark.kind)
    reason = missing_requirement() if e2e else None
    if reason:
        for item in e2e:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def kind_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A running kind cluster (overrides pytest-kind's fixture: it would download kind and kubectl)."""
    from pytest_kind import KindCluster

    kind, kubectl = shutil.which("kind"), shutil.which("kubectl")
    assert kind and kubectl, missing_requirement()
    cluster = KindCluster(request.config.getoption("cluster_name"), kind_path=Path(kind),
                          kubectl_path=Path(kubectl))
    cluster.create(config_file=KIND_CONFIG)
    yield cluster
    if not request.config.getoption("keep_cluster"):
        cluster.delete()
