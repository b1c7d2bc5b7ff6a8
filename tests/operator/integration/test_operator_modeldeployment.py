"""The real kopf operator against the emulated API server and a real MLflow registry.

KServe's controller does not run here; where a test needs an InferenceService to become Ready it
writes that status itself through the API, exactly as KServe's controller would (the only stand-in).
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

from kit import OperatorProcess, get_json, wait_for
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from mlflow import MlflowClient


def register(mlflow_url: str, name: str, versions: int = 1) -> MlflowClient:
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    client.create_registered_model(name)
    for _ in range(versions):
        run = client.create_run(experiment_id="0")
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return client


def apply_md(cluster: EmulatorProcess, name: str, model: str, *, version: str | None = None,
             alias: str | None = None, interval: str = "5m", namespace: str = "default") -> None:
    ref = f'version: "{version}"' if version else f"alias: {alias}"
    manifest = textwrap.dedent(f"""\
        apiVersion: medserve.io/v1alpha1
        kind: ModelDeployment
        metadata: {{name: {name}, namespace: {namespace}}}
        spec:
          model:
            name: {model}
            {ref}
          rollout: {{canaryTrafficPercent: 10}}
          monitoring: {{interval: {interval}}}
        """)
    cluster.kubectl("apply", "-f", "-", input=manifest)


def md(cluster: EmulatorProcess, name: str, namespace: str = "default") -> dict[str, Any]:
    return get_json(cluster, "modeldeployment", name, "-n", namespace) or {}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def isvc(cluster: EmulatorProcess, name: str, namespace: str = "default") -> dict[str, Any] | None:
    return get_json(cluster, "inferenceservices.serving.kserve.io", name, "-n", namespace)


def kserve_marks_ready(cluster: EmulatorProcess, name: str) -> None:
    """Write the InferenceService status as KServe 0.20's controller does in Serverless mode once the
    predictor's latest revision is up (kserve pkg/apis/serving/v1beta1/inference_service_status.go
    `PropagateStatus`: the Knative Service's conditions and traffic, `latestRolledoutRevision` once the latest
    ready revision has 100%; sandbox/medserve_sandbox/kserve_status.py builds the same). One revision per
    model version here: `<name>-predictor-0000<version>`. With `canaryTrafficPercent` set, the latest
    revision gets that share and the last rolled-out one keeps the rest (`ksvc_reconciler.go`)."""
    obj = isvc(cluster, name)
    assert obj is not None
    predictor = obj["spec"]["predictor"]
    uri = next(a for a in predictor["containers"][0]["args"] if a.startswith("--model_uri="))
    latest = f"{name}-predictor-{int(uri.rsplit('/', 1)[1]):05d}"
    previous = ((obj.get("status") or {}).get("components") or {}).get("predictor", {}).get("latestRolledoutRevision")
    percent = predictor.get("canaryTrafficPercent")
    if percent is not None and previous and previous != latest:
        traffic = [{"revisionName": latest, "latestRevision": True, "percent": percent},
                   {"revisionName": previous, "latestRevision": False, "percent": 100 - percent, "tag": "prev"}]
        rolled_out = previous
    else:
        traffic, rolled_out = [{"revisionName": latest, "latestRevision": True, "percent": 100}], latest
    when = "2026-01-01T00:00:00Z"
    status = {"observedGeneration": obj["metadata"]["generation"],
              "url": f"http://{name}.default.example.com",
              "deploymentMode": "Knative",
              "components": {"predictor": {"latestCreatedRevision": latest, "latestReadyRevision": latest,
                                           "latestRolledoutRevision": rolled_out, "traffic": traffic}},
              "conditions": [{"type": t, "status": "True", "lastTransitionTime": when}
                             for t in ("IngressReady", "LatestDeploymentReady", "PredictorReady", "Ready")]}
    cluster.kubectl("patch", "inferenceservices.serving.kserve.io", name, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": status}))


def test_create_renders_isvc_and_pins_version(cluster: EmulatorProcess, operator: OperatorProcess,
                                              mlflow_server: MlflowServer) -> None:
    register(mlflow_server.url, "sepsis-a", versions=2)
    apply_md(cluster, "sepsis-a", "sepsis-a", version="2")
    obj = wait_for(lambda: (o := md(cluster, "sepsis-a")).get("status", {}).get("model") and o,
                   what="status.model")
    assert obj["status"]["model"]["version"] == "2"
    assert obj["status"]["model"]["uri"] == "models:/sepsis-a/2"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "ModelResolved")["status"] == "True"
    # No handler needs a finalizer (the resync is not a kopf timer): a deletion never waits for the operator.
    assert "finalizers" not in obj["metadata"]
    service = isvc(cluster, "sepsis-a")
    assert service is not None
    owner = service["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", obj["metadata"]["uid"], True)
    container = service["spec"]["predictor"]["containers"][0]
    assert "--model_uri=models:/sepsis-a/2" in container["args"]
    assert "canaryTrafficPercent" not in service["spec"]["predictor"]
    obj = wait_for(lambda: (o := md(cluster, "sepsis-a")).get("status", {}).get("phase") == "Deploying" and o,
                   what="phase Deploying")
    assert condition(obj, "InferenceServiceReady")["reason"] == "InferenceServicePending"

    kserve_marks_ready(cluster, "sepsis-a")
    obj = wait_for(lambda: (o := md(cluster, "sepsis-a")).get("status", {}).get("phase") == "Ready" and o,
                   what="phase Ready after KServe reports ready")
    assert obj["status"]["url"] == "http://sepsis-a.default.example.com"
    assert condition(obj, "Ready")["status"] == "True"


def test_version_change_rolls_out_as_canary_then_completes(cluster: EmulatorProcess, operator: OperatorProcess,
                                                           mlflow_server: MlflowServer) -> None:
    register(mlflow_server.url, "sepsis-b", versions=2)
    apply_md(cluster, "sepsis-b", "sepsis-b", version="1")
    wait_for(lambda: isvc(cluster, "sepsis-b"), what="InferenceService")
    kserve_marks_ready(cluster, "sepsis-b")
    wait_for(lambda: md(cluster, "sepsis-b").get("status", {}).get("phase") == "Ready", what="Ready on v1")

    apply_md(cluster, "sepsis-b", "sepsis-b", version="2")
    service = wait_for(lambda: (s := isvc(cluster, "sepsis-b")) and
                       "--model_uri=models:/sepsis-b/2" in s["spec"]["predictor"]["containers"][0]["args"] and s,
                       what="InferenceService on version 2")
    assert service["spec"]["predictor"]["canaryTrafficPercent"] == 10
    obj = wait_for(lambda: (o := md(cluster, "sepsis-b")).get("status", {}).get("previousModel") and o,
                   what="status.previousModel during the canary")
    assert obj["status"]["previousModel"]["version"] == "1"
    assert obj["status"]["model"]["version"] == "2"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2

    kserve_marks_ready(cluster, "sepsis-b")
    service = wait_for(lambda: (s := isvc(cluster, "sepsis-b")) and
                       "canaryTrafficPercent" not in s["spec"]["predictor"] and s, what="canary promoted")
    kserve_marks_ready(cluster, "sepsis-b")  # Knative moves all traffic to the latest revision
    obj = wait_for(lambda: (o := md(cluster, "sepsis-b")) and "previousModel" not in o["status"] and o,
                   what="previousModel cleared")
    events = cluster.kubectl("get", "events", "--field-selector", "involvedObject.name=sepsis-b", "-o", "json")
    reasons = {e["reason"] for e in json.loads(events.stdout)["items"]}
    assert {"RolloutStarted", "RolloutComplete"} <= reasons


def test_alias_move_is_picked_up_within_the_interval(cluster: EmulatorProcess, operator: OperatorProcess,
                                                     mlflow_server: MlflowServer) -> None:
    client = register(mlflow_server.url, "sepsis-c", versions=2)
    client.set_registered_model_alias("sepsis-c", "champion", "1")
    apply_md(cluster, "sepsis-c", "sepsis-c", alias="champion", interval="2s")
    obj = wait_for(lambda: (o := md(cluster, "sepsis-c")).get("status", {}).get("model") and o, what="pinned")
    assert (obj["status"]["model"]["version"], obj["status"]["model"]["alias"]) == ("1", "champion")

    client.set_registered_model_alias("sepsis-c", "champion", "2")
    wait_for(lambda: md(cluster, "sepsis-c")["status"]["model"]["version"] == "2", timeout=15,
             what="the moved alias to be pinned")
    service = isvc(cluster, "sepsis-c")
    assert service is not None
    assert "--model_uri=models:/sepsis-c/2" in service["spec"]["predictor"]["containers"][0]["args"]


def test_delete_cascades_to_the_inference_service(cluster: EmulatorProcess, operator: OperatorProcess,
                                                  mlflow_server: MlflowServer) -> None:
    register(mlflow_server.url, "sepsis-d")
    apply_md(cluster, "sepsis-d", "sepsis-d", version="1")
    wait_for(lambda: isvc(cluster, "sepsis-d"), what="InferenceService")
    cluster.kubectl("delete", "modeldeployment", "sepsis-d", "--wait=true")
    wait_for(lambda: isvc(cluster, "sepsis-d") is None, what="the InferenceService to be collected")


def test_unknown_model_fails_without_a_retry_storm(cluster: EmulatorProcess, operator: OperatorProcess) -> None:
    apply_md(cluster, "ghost", "no-such-model", version="7")
    obj = wait_for(lambda: (o := md(cluster, "ghost")).get("status", {}).get("phase") == "Failed" and o,
                   what="phase Failed")
    cond = condition(obj, "ModelResolved")
    assert (cond["status"], cond["reason"]) == ("False", "ModelNotFound")
    assert "no-such-model" in cond["message"]
    assert isvc(cluster, "ghost") is None
    time.sleep(4)  # resync runs every second; a storm would show as many attempts in the log
    attempts = operator.log().count("Cannot resolve model no-such-model")
    assert 1 <= attempts <= 2, f"{attempts} registry lookups for an unknown model in a few seconds"
    assert operator.alive()


def test_invalid_spec_past_the_schema_is_reported(cluster: EmulatorProcess, operator: OperatorProcess) -> None:
    """A CRD without our schema (as if someone applied an old CRD) lets a bad spec through; the operator
    must name the field in a condition and stop, not crash or loop."""
    body = {"apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "bad-spec", "namespace": "default"},
            "spec": {"model": {"name": "x", "version": "1", "alias": "also"}}}
    result = cluster.kubectl("create", "-f", "-", "--validate=false", input=json.dumps(body), check=False)
    if result.returncode != 0:
        # The emulator enforces the CRD's own rule (as a real API server does): that is the first line.
        assert "spec.model" in result.stderr
        return
    obj = wait_for(lambda: (o := md(cluster, "bad-spec")).get("status", {}).get("phase") == "Failed" and o,
                   what="phase Failed for an invalid spec")
    assert condition(obj, "Ready")["reason"] == "InvalidSpec"
    assert "spec.model" in condition(obj, "Ready")["message"]
    assert operator.alive()


def test_mlflow_down_and_back(cluster: EmulatorProcess, tmp_path: Path) -> None:
    """Its own MLflow and operator, so that stopping MLflow does not disturb the other tests."""
    cluster.kubectl("create", "namespace", "outage")
    server = MlflowServer(tmp_path / "mlflow").start()
    op = OperatorProcess(cluster.kubeconfig, server.url, tmp_path / "operator.log", namespace="outage").start()
    try:
        register(server.url, "sepsis-e")
        server.stop()
        apply_md(cluster, "sepsis-e", "sepsis-e", version="1", namespace="outage")
        def outage_md() -> dict[str, Any]:
            return md(cluster, "sepsis-e", "outage")

        obj = wait_for(lambda: condition(o := outage_md(), "ModelResolved").get("reason") == "RegistryUnavailable"
                       and o, what="RegistryUnavailable")
        assert obj["status"]["phase"] == "Resolving"
        assert isvc(cluster, "sepsis-e", "outage") is None
        server.start()
        wait_for(lambda: isvc(cluster, "sepsis-e", "outage"), timeout=60, what="InferenceService once MLflow is back")
        obj = wait_for(lambda: condition(o := outage_md(), "ModelResolved").get("status") == "True" and o,
                       what="ModelResolved after MLflow is back")
        assert obj["status"]["model"]["version"] == "1"
        assert op.alive()
    finally:
        op.stop()
        server.stop()
