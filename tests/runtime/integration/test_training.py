"""The example training jobs, run as a RetrainPolicy Job runs them: a subprocess against a real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from medserve_contract.modelspec import (
    FEATURE_SPEC_FILE,
    MODEL_FILE,
    REFERENCE_PROFILE_FILE,
    NumericFeature,
    load_feature_spec,
    load_reference_profile,
)
from medserve_sandbox.mlflow_server import MlflowServer

REPO = Path(__file__).resolve().parents[3]
TRAINING = REPO / "examples" / "training"
# Fewer samples and epochs than the defaults: the tests check the plumbing, not the model's quality.
FAST = ["--samples", "600", "--epochs", "5"]


def train(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a training script with --json and return its report; fail with its stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MEDSERVE_", "MLFLOW_"))}
    result = subprocess.run([sys.executable, str(TRAINING / script), *args, "--json"], env={**base, **(env or {})},
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line with --json, got: {result.stdout!r}"
    report: dict[str, Any] = json.loads(lines[0])
    return report


def mlflow_get(server: MlflowServer, endpoint: str, **params: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module: torch.jit.ScriptModule = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    return module


def test_output_dir_writes_the_three_files(tmp_path: Path) -> None:
    report = train("train.py", *FAST, "--output-dir", str(tmp_path))
    assert report["output_dir"] == str(tmp_path.resolve())
    assert 0.5 < report["accuracy"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MODEL_FILE, FEATURE_SPEC_FILE,
                                                                REFERENCE_PROFILE_FILE])

    spec = load_feature_spec(tmp_path)
    profile = load_reference_profile(tmp_path)
    assert spec.target == "primary_diagnosis" and len(spec.labels) == 4
    assert {f.name for f in spec.features} == {f.name for f in profile.features}
    assert profile.samples == 480  # the 80% training split of 600 records
    for feature in profile.features:
        assert sum(feature.proportions) == pytest.approx(1.0), feature.name
        if feature.type == "numeric":
            assert len(feature.proportions) <= 10

    # The model takes what the spec encodes and returns one logit per label.
    record = {"age": 71, "sex": "female", "symptoms": ["fever", "confusion", "chills"],
              "vital_signs": {"heart_rate": 124, "systolic_bp": 88, "diastolic_bp": 54, "temperature": 39.2,
                              "respiratory_rate": 28, "oxygen_saturation": 91}}
    x = torch.from_numpy(spec.encode_batch([record]))
    with torch.no_grad():
        logits = load_torchscript(tmp_path / MODEL_FILE)(x)
    assert tuple(logits.shape) == (1, len(spec.labels))


def test_shift_moves_the_population(tmp_path: Path) -> None:
    train("train.py", *FAST, "--output-dir", str(tmp_path / "ref"))
    train("train.py", *FAST, "--shift", "1.5", "--output-dir", str(tmp_path / "shifted"))
    ref = load_feature_spec(tmp_path / "ref")
    shifted = load_feature_spec(tmp_path / "shifted")
    for name, direction in (("age", 1), ("heart_rate", 1), ("oxygen_saturation", -1)):
        before, after = ref.feature(name), shifted.feature(name)
        assert isinstance(before, NumericFeature) and isinstance(after, NumericFeature)
        assert (after.mean - before.mean) * direction > 0.5 * before.std, name


def test_registers_a_tagged_version_with_its_artifacts(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    name = f"triage-test-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MEDSERVE_MODEL_NAME": name,
           "MEDSERVE_JOB_NAME": "triage-retrain-29017", "MEDSERVE_TRIGGER_REASON": "drift"}
    first = train("train.py", *FAST, "--alias", "champion", env=env)
    assert first["name"] == name and first["version"] == "1"
    assert first["source"].endswith(f"{first['run_id']}/artifacts/model")

    version = mlflow_get(mlflow_server, "model-versions/get", name=name, version="1")["model_version"]
    assert version["run_id"] == first["run_id"]
    assert version["source"] == first["source"]
    assert version["status"] == "READY"
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert tags == {"medserve.io/job-name": "triage-retrain-29017", "medserve.io/trigger-reason": "drift"}
    alias = mlflow_get(mlflow_server, "registered-models/alias", name=name, alias="champion")["model_version"]
    assert alias["version"] == "1"

    run = mlflow_get(mlflow_server, "runs/get", run_id=first["run_id"])["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(first["accuracy"])
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["samples"] == "600"

    # The artifacts are what a runtime downloads: the three files, readable with the shared formats.
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=first["source"], dst_path=str(tmp_path),
                                                     tracking_uri=mlflow_server.url))
    assert sorted(p.name for p in local.iterdir()) == sorted([MODEL_FILE, FEATURE_SPEC_FILE,
                                                             REFERENCE_PROFILE_FILE])
    assert load_feature_spec(local).model_name == name
    assert all(sum(f.proportions) == pytest.approx(1.0) for f in load_reference_profile(local).features)

    # A second run without a Job around it: a new version, untagged, and the alias stays where it was.
    env_plain = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MEDSERVE_MODEL_NAME": name}
    second = train("train.py", *FAST, "--seed", "1", env=env_plain)
    assert second["version"] == "2"
    version2 = mlflow_get(mlflow_server, "model-versions/get", name=name, version="2")["model_version"]
    assert version2.get("tags", []) == []
    alias = mlflow_get(mlflow_server, "registered-models/alias", name=name, alias="champion")["model_version"]
    assert alias["version"] == "1"


def test_without_tracking_uri_it_says_what_is_missing() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MEDSERVE_", "MLFLOW_"))}
    result = subprocess.run([sys.executable, str(TRAINING / "train.py"), *FAST], env=base, capture_output=True,
                            text=True, timeout=240, check=False)
    assert result.returncode != 0
    assert "MLFLOW_TRACKING_URI is not set" in result.stderr


def test_breast_cancer_uses_the_same_formats(tmp_path: Path) -> None:
    report = train("train_breast_cancer.py", "--epochs", "20", "--output-dir", str(tmp_path))
    assert report["accuracy"] > 0.85
    spec = load_feature_spec(tmp_path)
    profile = load_reference_profile(tmp_path)
    assert spec.labels == ["malignant", "benign"]
    assert len(spec.features) == 30 and all(f.type == "numeric" for f in spec.features)
    assert spec.feature("mean_radius").type == "numeric"
    assert all(sum(f.proportions) == pytest.approx(1.0) for f in profile.features)
    typical = {f.name: f.mean for f in spec.features if isinstance(f, NumericFeature)}
    x = torch.from_numpy(spec.encode_batch([typical]))
    with torch.no_grad():
        assert tuple(load_torchscript(tmp_path / MODEL_FILE)(x).shape) == (1, 2)
    assert np.isfinite(x.numpy()).all()
