"""Helpers for the model-runtime tests: trained example models, API keys, runtime server processes.

`trained_model(tmp_path_factory, seed=...)` runs the real example training job
(examples/training/train.py --output-dir) once per seed per test session; `RuntimeProcess` runs the
real `python -m medserve_runtime` on a free loopback port and stops it with SIGTERM, as a kubelet does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
from medserve_sandbox import procs

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "training" / "train.py"
MODEL_NAME = "triage"
PHI_KEY = "test-phi-hash-key"

KEYS: dict[str, tuple[str, list[str]]] = {
    # id: (the key itself, permissions)
    "clinician": ("msk_test_clinician_1f2e3d", ["predict", "feedback"]),
    "admin": ("msk_test_admin_9a8b7c", ["predict", "feedback", "admin"]),
    "predictor": ("msk_test_predict_only_55aa", ["predict"]),
    "auditor": ("msk_test_no_permissions_0b0b", []),
}

_TRAINED: dict[tuple[str, int], Path] = {}


def trained_model(tmp_path_factory: pytest.TempPathFactory, *, seed: int = 0, epochs: int = 40) -> Path:
    """A model directory written by the example training job (trained once per session and seed)."""
    cache_key = (str(tmp_path_factory.getbasetemp()), seed)
    if cache_key not in _TRAINED:
        out = tmp_path_factory.mktemp(f"triage-seed{seed}")
        subprocess.run([sys.executable, str(TRAIN), "--output-dir", str(out), "--seed", str(seed),
                        "--epochs", str(epochs)], check=True, capture_output=True, timeout=300)
        _TRAINED[cache_key] = out
    return _TRAINED[cache_key]


def write_keys(path: Path) -> Path:
    path.write_text(json.dumps([{"id": key_id, "sha256": hashlib.sha256(key.encode()).hexdigest(),
                                 "permissions": perms} for key_id, (key, perms) in KEYS.items()]))
    return path


def auth(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key_id][0]}"}


def clinical_records(n: int, *, seed: int = 7, shift: float = 0.0) -> list[dict[str, Any]]:
    """Realistic clinical_data records from the training job's own generator."""
    sys.path.insert(0, str(TRAIN.parent))
    try:
        import train  # type: ignore[import-not-found]  # examples/training, on sys.path
    finally:
        sys.path.remove(str(TRAIN.parent))
    records, _ = train.generate(n, seed=seed, shift=shift)
    return list(records)


def predict_body(patient_id: str = "patient-1", **extra: Any) -> dict[str, Any]:
    return {"patient_id": patient_id, "clinical_data": {
        "age": 71, "sex": "female", "symptoms": ["fever", "confusion", "chills"],
        "vital_signs": {"heart_rate": 121, "systolic_bp": 92, "diastolic_bp": 58, "temperature": 38.9,
                        "respiratory_rate": 25, "oxygen_saturation": 93}}, **extra}


class RuntimeProcess:
    """`with RuntimeProcess(workdir, model_dir=...) as rt: httpx.get(rt.url + "/health")`."""

    def __init__(self, workdir: Path, *, model_dir: Path | None = None, model_uri: str | None = None,
                 keys: bool = True, audit: bool = True, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or procs.free_port()
        self.log_path = workdir / "runtime.log"
        self.audit_path = workdir / "audit.jsonl" if audit else None
        self.keys_path = write_keys(workdir / "keys.json") if keys else None
        self.cmd = [sys.executable, "-m", "medserve_runtime", f"--model_name={MODEL_NAME}",
                    f"--http_port={self.port}"]
        self.cmd.append(f"--model_dir={model_dir}" if model_dir is not None else f"--model_uri={model_uri}")
        if self.keys_path is not None:
            self.cmd.append(f"--api_keys_file={self.keys_path}")
        if self.audit_path is not None:
            self.cmd.append(f"--audit_log={self.audit_path}")
        self.cmd.extend(args)
        self.env = {**os.environ, "MEDSERVE_PHI_HASH_KEY": PHI_KEY, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> RuntimeProcess:
        self.proc = procs.spawn(self.cmd, log_path=self.log_path, env=self.env)
        try:
            procs.wait_until(lambda: procs.http_ok(f"{self.url}/v2/health/ready"), proc=self.proc,
                             log_path=self.log_path, what="medserve-runtime", timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        """SIGTERM (graceful: in-flight requests finish, the audit log is flushed); the exit code."""
        if self.proc is None:
            return None
        code = procs.stop(self.proc, timeout=30)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def audit_records(self, event: str | None = "request") -> list[dict[str, Any]]:
        """The file audit log's records of `event` (None: all, with the writer_start/stop records)."""
        assert self.audit_path is not None
        if not self.audit_path.exists():
            return []
        records = [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]
        return [r for r in records if event is None or r.get("event") == event]

    def client(self, key_id: str | None = "clinician", headers: dict[str, str] | None = None) -> httpx.Client:
        """A client sending `key_id`'s API key (None: no key) and `headers` with every request."""
        sent = {**(auth(key_id) if key_id else {}), **(headers or {})}
        return httpx.Client(base_url=self.url, headers=sent, timeout=30)

    def __enter__(self) -> RuntimeProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def metric_samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """{frozenset(labels): value} of every sample called exactly `name` in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[frozenset(sample.labels.items())] = sample.value
    return out
