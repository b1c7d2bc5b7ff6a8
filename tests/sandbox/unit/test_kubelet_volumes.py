"""The stand-ins' kubelet part (kubelet_volumes.py): Secret, emptyDir and claim volumes as local directories,
env from fieldRef and secretKeyRef, `$(VAR)` expansion, and the kubelet's refusals, against FakeKube."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeKube
from medserve_sandbox import kubelet_volumes
from medserve_sandbox.kubelet_volumes import ContainerConfigError, expand, materialise

NS = "icu"


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
            "plural": "secrets", "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


@pytest.fixture
def kube() -> FakeKube:
    kube = FakeKube()
    kube.put(secret("audit-db", dsn="postgresql://u:pw@db/audit", other="x"))
    kube.put(secret("redis", url="redis://r:6379/0"))
    kube.put({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "plural": "persistentvolumeclaims",
              "metadata": {"name": "spool", "namespace": NS},
              "spec": {"accessModes": ["ReadWriteMany"]}})
    return kube


CONTAINER: dict[str, Any] = {
    "args": ["--audit_dsn_file=/var/run/db/dsn", "--audit_spool=/var/lib/audit/$(POD_NAME).jsonl", "--x=$$(POD_NAME)",
             "--y=$(UNKNOWN)"],
    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GREETING", "value": "pod $(POD_NAME)"},
            {"name": "MEDSERVE_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}}],
    "volumeMounts": [{"name": "db", "mountPath": "/var/run/db", "readOnly": True},
                     {"name": "spool", "mountPath": "/var/lib/audit"}, {"name": "tmp", "mountPath": "/tmp"}],
}
VOLUMES: list[dict[str, Any]] = [
    {"name": "db", "secret": {"secretName": "audit-db", "defaultMode": 0o440,
                              "items": [{"key": "dsn", "path": "dsn"}]}},
    {"name": "spool", "persistentVolumeClaim": {"claimName": "spool"}},
    {"name": "tmp", "emptyDir": {}},
]


async def test_volumes_env_and_args_as_the_kubelet_sets_them_up(kube: FakeKube, tmp_path: Path) -> None:
    local = await materialise(kube, namespace=NS, pod_name="m-predictor-00001", volumes=VOLUMES, container=CONTAINER,
                              pod_dir=tmp_path / "pod", shared_dir=tmp_path / "shared")
    dsn_file = tmp_path / "pod" / "db" / "dsn"
    assert dsn_file.read_text() == "postgresql://u:pw@db/audit"
    assert not (tmp_path / "pod" / "db" / "other").exists()  # only the items asked for
    assert stat.S_IMODE(dsn_file.stat().st_mode) == 0o440
    assert local.env == {"POD_NAME": "m-predictor-00001", "GREETING": "pod m-predictor-00001",
                         "MEDSERVE_REDIS_URL": "redis://r:6379/0"}
    assert local.args == [f"--audit_dsn_file={dsn_file}",
                          f"--audit_spool={tmp_path / 'shared' / NS / 'spool'}/m-predictor-00001.jsonl",
                          "--x=$(POD_NAME)", "--y=$(UNKNOWN)"]
    assert (tmp_path / "pod" / "tmp").is_dir()
    # A second pod mounting the claim gets the same directory: what a ReadWriteMany volume is.
    other = await materialise(kube, namespace=NS, pod_name="m-predictor-00002", volumes=VOLUMES,
                              container=CONTAINER, pod_dir=tmp_path / "pod2", shared_dir=tmp_path / "shared")
    assert other.mounts["/var/lib/audit"] == local.mounts["/var/lib/audit"]


@pytest.mark.parametrize(("volumes", "env", "reason", "message"), [
    ([{**VOLUMES[0], "secret": {**VOLUMES[0]["secret"], "secretName": "gone"}}, *VOLUMES[1:]], None,
     "FailedMount", 'MountVolume.SetUp failed for volume "db" : secret "gone" not found'),
    ([{**VOLUMES[0], "secret": {**VOLUMES[0]["secret"], "items": [{"key": "url", "path": "url"}]}}, *VOLUMES[1:]],
     None, "FailedMount", 'volume "db" : couldn\'t find key url in Secret icu/audit-db'),
    ([VOLUMES[0], {"name": "spool", "persistentVolumeClaim": {"claimName": "nope"}}, VOLUMES[2]], None,
     "FailedScheduling", 'persistentvolumeclaim "nope" not found'),
    (VOLUMES, [{"name": "R", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}}],
     "CreateContainerConfigError", "couldn't find key password in Secret icu/redis"),
    (VOLUMES, [{"name": "R", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "url"}}}],
     "CreateContainerConfigError", 'secret "absent" not found'),
], ids=["no-secret", "no-key", "no-claim", "env-no-key", "env-no-secret"])
async def test_what_the_kubelet_refuses_is_refused_with_its_message(
        kube: FakeKube, tmp_path: Path, volumes: list[dict[str, Any]], env: list[dict[str, Any]] | None,
        reason: str, message: str) -> None:
    container = {**CONTAINER, "env": env} if env is not None else CONTAINER
    with pytest.raises(ContainerConfigError) as refused:
        await materialise(kube, namespace=NS, pod_name="p", volumes=volumes, container=container,
                          pod_dir=tmp_path / "pod", shared_dir=tmp_path / "shared")
    assert refused.value.reason == reason and message in refused.value.message


async def test_a_whole_secret_without_items_and_optional_parts(kube: FakeKube, tmp_path: Path) -> None:
    directory = await kubelet_volumes.mount_volume(kube, {"name": "k", "secret": {"secretName": "audit-db"}},
                                                   namespace=NS, pod_dir=tmp_path, shared_dir=tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == ["dsn", "other"]
    optional = await kubelet_volumes.mount_volume(kube, {"name": "o", "secret": {"secretName": "x", "optional": True}},
                                                  namespace=NS, pod_dir=tmp_path, shared_dir=tmp_path)
    assert list(optional.iterdir()) == []


def test_expansion_follows_the_kubelet() -> None:
    assert expand("a$(A)b$$(A)c$(B)", {"A": "1"}) == "a1b$(A)c$(B)"
