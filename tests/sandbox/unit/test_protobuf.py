"""The emulator's protobuf decoding of a batch/v1 Job (what `kubectl create job --from=cronjob/...` sends).

The bodies are encoded here field by field with the numbers of k8s.io/api core/v1 and batch/v1
generated.proto, as gogo-protobuf marshals them: value fields always (empty strings, false), pointer
fields only when set.
"""

from __future__ import annotations

import pytest
from medserve_sandbox import protobuf


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: bytes | int | str) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def job(container: bytes) -> bytes:
    meta = field(1, "manual") + field(2, "") + field(3, "") + field(8, field(1, 0))
    pod = field(2, container) + field(3, "Never") + field(11, 0) + field(21, 0)  # hostNetwork, automount=false
    spec = field(7, 0) + field(6, field(1, field(1, "") + field(8, b"")) + field(2, pod))  # backoffLimit 0
    raw = field(1, meta) + field(2, spec) + field(3, b"")
    return protobuf.MAGIC + field(1, field(1, "batch/v1") + field(2, "Job")) + field(2, raw)


def test_a_job_decodes_as_its_json_would_read() -> None:
    secret_ref = field(4, field(1, field(1, "db")) + field(2, "password"))
    container = (field(1, "train") + field(2, "img:1") + field(3, "python") + field(5, "")
                 + field(7, field(1, "DB_PASSWORD") + field(2, "") + field(3, secret_ref))
                 + field(8, field(1, field(1, "cpu") + field(2, field(1, "2"))))
                 + field(15, field(5, 1) + field(7, 0)) + field(16, 0))
    decoded = protobuf.decode(job(container))
    assert decoded == {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "manual"},
        "spec": {"backoffLimit": 0, "template": {"metadata": {}, "spec": {
            "containers": [{
                "name": "train", "image": "img:1", "command": ["python"],
                "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
                "resources": {"limits": {"cpu": "2"}},
                "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False}}],
            "restartPolicy": "Never", "automountServiceAccountToken": False}}}}


def test_a_field_the_emulator_does_not_know_is_refused_not_dropped() -> None:
    probe = field(10, field(1, b""))  # Container.livenessProbe
    with pytest.raises(protobuf.UnsupportedField, match="field number 10"):
        protobuf.decode(job(field(1, "train") + probe))
