"""The model runtime loading from a real MLflow registry (models:/NAME/VERSION) and hot-swapping versions.

A real MLflow server (SQLite store, proxied artifacts); the example training job registers two
versions into it, as a RetrainPolicy Job would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from medserve_sandbox.mlflow_server import MlflowServer
from runtime_kit import MODEL_NAME, TRAIN, RuntimeProcess, predict_body

REGISTERED = "runtime-test-triage"


def register(mlflow_url: str, *, seed: int) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, "MEDSERVE_JOB_NAME": f"runtime-test-{seed}"}
    out = subprocess.run([sys.executable, str(TRAIN), "--model-name", REGISTERED, "--seed", str(seed),
                          "--epochs", "10", "--json"], env=env, check=True, capture_output=True, text=True,
                         timeout=300)
    version: str = json.loads(out.stdout.strip().splitlines()[-1])["version"]
    return version


def test_serves_a_registry_version_and_reloads_another(mlflow_server: MlflowServer,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    first = register(mlflow_server.url, seed=3)
    second = register(mlflow_server.url, seed=4)
    assert first != second
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    with RuntimeProcess(tmp_path_factory.mktemp("runtime-mlflow"), model_uri=f"models:/{REGISTERED}/{first}",
                        env=env) as rt, rt.client("admin") as admin:
        r = admin.post("/predict", json=predict_body())
        assert r.status_code == 200 and r.json()["model_version"] == first
        swapped = admin.post(f"/models/reload/{MODEL_NAME}", json={"version": second})
        assert swapped.status_code == 200, swapped.text
        assert swapped.json()["previous_version"] == first and swapped.json()["version"] == second
        assert admin.post("/predict", json=predict_body()).json()["model_version"] == second
        assert admin.post("/predict", json=predict_body(model_version=first)).status_code == 404
        missing = admin.post(f"/models/reload/{MODEL_NAME}", json={"version": "999"})
        assert missing.status_code == 422 and missing.json()["field"] == "version"
        models = admin.get("/models").json()["models"][0]
        assert models["registered_model"] == REGISTERED and models["serving_version"] == second
        assert models["source"] == f"models:/{REGISTERED}/{second}"
