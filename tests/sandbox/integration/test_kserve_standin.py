"""The sandbox's KServe stand-in (sandbox/kserve_standin.py) against the emulated API, with real runtimes.

InferenceServices are written with kubectl (so KServe's CRD schema and its validating webhook see them) and
the stand-in runs each predictor as a real `python -m medserve_runtime` process on a model trained by the
example job (a local `--model_dir`, no registry). Each test names the KServe or Knative function whose
behaviour it holds (kserve/kserve at aaac4e29, 0.20.0; knative/serving at 98e5ef90). The canary tests
count which predictor answered `GET /v1/models` (KServe's model list: the `--model_name` of the process)
over N requests through `status.url` and hold the proportion to a 4-sigma binomial bound: no timing.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit import get_json, wait_for
from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess, KubectlError
from runtime_kit import trained_model

ISVC = "inferenceservices.serving.kserve.io"
WAIT = 180.0
N = 400


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model(tmp_path_factory, epochs=5)


@pytest.fixture(scope="module")
def standin(cluster: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("kserve-standin")
    log = workdir / "kserve-standin.log"
    proc = procs.spawn([sys.executable, "-m", "medserve_sandbox.kserve_standin", "--kubeconfig",
                        str(cluster.kubeconfig), "--workdir", str(workdir), "--default-deployment-mode", "Standard",
                        "--seed", "11"], log_path=log)
    procs.wait_until(lambda: "KServe stand-in watching" in log.read_text(errors="replace"), proc=proc,
                     log_path=log, what="KServe stand-in", timeout=60)
    yield log
    assert proc.poll() is None, procs.log_tail(log)
    procs.stop(proc, timeout=30)


def container(model_name: str, model_dir: Path) -> dict[str, Any]:
    return {"name": "kserve-container", "image": "medserve-runtime:0.1.0",
            "args": [f"--model_name={model_name}", f"--model_dir={model_dir}", "--rate_limit_per_minute=1000000"],
            "env": [{"name": "STORAGE_URI", "value": f"file://{model_dir}"}]}


def apply(cluster: EmulatorProcess, name: str, mode: str, predictor: dict[str, Any], **spec: Any) -> None:
    body = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"serving.kserve.io/deploymentMode": mode}},
            "spec": {"predictor": predictor, **spec}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def isvc(cluster: EmulatorProcess, name: str) -> dict[str, Any]:
    return get_json(cluster, ISVC, name) or {}


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def wait_status(cluster: EmulatorProcess, name: str, what: str, check: Any) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = isvc(cluster, name)
        return obj if obj and check(obj) else None
    found: dict[str, Any] = wait_for(reached, timeout=WAIT, what=f"InferenceService {name}: {what}")
    return found


def served_by(url: str, n: int = N) -> Counter[str]:
    counts: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(n):
            response = client.get("/v1/models")
            assert response.status_code == 200, response.text
            counts[response.json()["models"][0]] += 1
    return counts


def assert_share(counts: Counter[str], name: str, p: float) -> None:
    n = sum(counts.values())
    band = 4 * math.sqrt(n * p * (1 - p))  # fails by chance about once in 15000 runs
    assert abs(counts[name] - n * p) <= band, (counts, p)


def test_standard_status_is_copied_from_the_deployment(cluster: EmulatorProcess, standin: Path,
                                                       model_dir: Path) -> None:
    """PropagateRawStatus (PredictorReady, observedGeneration = the Deployment's) and kube_ingress_reconciler."""
    apply(cluster, "std", "Standard", {"containers": [container("std", model_dir)]})
    obj = wait_status(cluster, "std", "Ready", lambda o: conditions(o).get("Ready", {}).get("status") == "True")
    status = obj["status"]
    assert status["deploymentMode"] == "Standard" and status["observedGeneration"] == 1
    assert set(conditions(obj)) == {"IngressReady", "PredictorReady", "Ready"}
    assert conditions(obj)["PredictorReady"]["reason"] == "NewReplicaSetAvailable"
    assert status["url"].startswith("http://127.0.0.1:") and status["address"]["url"].startswith("http://127.0.0.1:")
    assert status["components"]["predictor"]["url"] == status["address"]["url"]
    assert "latestCreatedRevision" not in status["components"]["predictor"]  # Knative's fields only
    assert served_by(status["url"], 5) == Counter({"std": 5})


def test_standard_canary_splits_and_changes_outside_the_deployment_keep_observed_generation(
    cluster: EmulatorProcess, standin: Path, model_dir: Path,
) -> None:
    """Replica counts go to the HPA and spec.canary makes other Deployments (reconcileCanaryDeployments), so
    the stable Deployment's generation, and with it observedGeneration, stays; applyCanaryWeights splits."""
    replicas = {"spec": {"predictor": {"minReplicas": 2, "maxReplicas": 3}}}
    cluster.kubectl("patch", ISVC, "std", "--type=merge", "-p", json.dumps(replicas))
    cluster.kubectl("patch", ISVC, "std", "--type=merge", "-p", json.dumps({"spec": {"canary": [
        {"trafficPercent": 30, "predictor": {"name": "challenger", "containers": [container("std-next", model_dir)]}},
    ]}}))
    obj = wait_status(cluster, "std", "the canary Ready",
                      lambda o: (o["status"].get("canaryStatuses") or [{}])[0].get("ready") is True)
    assert obj["metadata"]["generation"] == 3 and obj["status"]["observedGeneration"] == 1
    assert obj["status"]["canaryStatuses"] == [{"name": "challenger", "ready": True, "trafficPercent": 30}]
    assert conditions(obj)["CanaryPredictorReady"]["status"] == "True"
    assert conditions(obj)["CanaryPredictorReady"]["reason"] == "AllCanariesReady"
    counts = served_by(obj["status"]["url"])
    assert set(counts) == {"std", "std-next"}
    assert_share(counts, "std-next", 0.30)
    # The stable predictor's Service (status.address, what an InferenceGraph calls) is not split.
    assert served_by(obj["status"]["address"]["url"], 20) == Counter({"std": 20})
    cluster.kubectl("delete", ISVC, "std")


def test_canary_outside_standard_is_refused_by_the_webhook(cluster: EmulatorProcess, standin: Path,
                                                           model_dir: Path) -> None:
    """validateCanarySpecs: `canary is only supported in Standard deployment mode`, a 403 from the webhook."""
    with pytest.raises(KubectlError) as caught:
        apply(cluster, "svl-canary", "Serverless", {"containers": [container("x", model_dir)]},
              canary=[{"trafficPercent": 10, "predictor": {"name": "b", "containers": [container("y", model_dir)]}}])
    message = str(caught.value)
    assert 'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request' in message
    assert "canary is only supported in Standard deployment mode" in message


def test_serverless_pod_security_context_is_refused_by_knative(cluster: EmulatorProcess, standin: Path,
                                                               model_dir: Path) -> None:
    """fieldmask.go PodSpecMask with the default kubernetes.podspec-securitycontext: disabled; KServe reports
    the failed Knative Service create as PredictorReady False, ReconcileFailed (PropagateRawStatusWithMessages)."""
    predictor = {"containers": [container("svl", model_dir)], "securityContext": {"runAsNonRoot": True,
                                                                                   "runAsUser": 1000}}
    apply(cluster, "svl", "Serverless", predictor)
    obj = wait_status(cluster, "svl", "ReconcileFailed",
                      lambda o: conditions(o).get("PredictorReady", {}).get("reason") == "ReconcileFailed")
    ready = conditions(obj)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ReconcileFailed")
    assert ready["message"] == ('admission webhook "validation.webhook.serving.knative.dev" denied the request: '
                                "validation failed: must not set the field(s): spec.template.spec.securityContext")
    assert "url" not in obj["status"] and obj["status"]["deploymentMode"] == "Knative"


def test_serverless_status_canary_split_and_promotion(cluster: EmulatorProcess, standin: Path,
                                                      model_dir: Path) -> None:
    """PropagateStatus (revisions, traffic, observedGeneration = the Knative Service's), ksvc_reconciler.go's
    canary traffic, and Knative's route splitting it between two live revisions."""
    cluster.kubectl("patch", ISVC, "svl", "--type=json", "-p", json.dumps([
        {"op": "remove", "path": "/spec/predictor/securityContext"}]))
    obj = wait_status(cluster, "svl", "Ready", lambda o: conditions(o).get("Ready", {}).get("status") == "True")
    assert set(conditions(obj)) == {"IngressReady", "LatestDeploymentReady", "PredictorConfigurationReady",
                                    "PredictorReady", "PredictorRouteReady", "Ready", "RoutesReady"}
    predictor = obj["status"]["components"]["predictor"]
    assert predictor["latestCreatedRevision"] == predictor["latestReadyRevision"] == "svl-predictor-00001"
    assert predictor["latestRolledoutRevision"] == "svl-predictor-00001"
    assert predictor["traffic"] == [{"revisionName": "svl-predictor-00001", "latestRevision": True, "percent": 100}]
    # The Knative Service was first created at the InferenceService's second generation.
    assert (obj["metadata"]["generation"], obj["status"]["observedGeneration"]) == (2, 1)

    new = container("svl-next", model_dir)
    cluster.kubectl("patch", ISVC, "svl", "--type=merge", "-p", json.dumps(
        {"spec": {"predictor": {"canaryTrafficPercent": 25, "containers": [new]}}}))
    obj = wait_status(cluster, "svl", "the canary revision serving",
                      lambda o: o["status"]["components"]["predictor"].get("latestReadyRevision")
                      == "svl-predictor-00002")
    predictor = obj["status"]["components"]["predictor"]
    assert predictor["traffic"] == [
        {"revisionName": "svl-predictor-00002", "latestRevision": True, "percent": 25},
        {"revisionName": "svl-predictor-00001", "latestRevision": False, "percent": 75, "tag": "prev"}]
    assert predictor["latestRolledoutRevision"] == "svl-predictor-00001"
    assert obj["status"]["observedGeneration"] == 2
    counts = served_by(obj["status"]["url"])
    assert set(counts) == {"svl", "svl-next"}
    assert_share(counts, "svl-next", 0.25)

    cluster.kubectl("patch", ISVC, "svl", "--type=json", "-p", json.dumps([
        {"op": "remove", "path": "/spec/predictor/canaryTrafficPercent"}]))
    obj = wait_status(cluster, "svl", "the promotion",
                      lambda o: o["status"]["components"]["predictor"].get("latestRolledoutRevision")
                      == "svl-predictor-00002")
    predictor = obj["status"]["components"]["predictor"]
    assert predictor["previousRolledoutRevision"] == "svl-predictor-00001"
    assert predictor["traffic"] == [{"revisionName": "svl-predictor-00002", "latestRevision": True, "percent": 100}]
    assert served_by(obj["status"]["url"], 20) == Counter({"svl-next": 20})
    wait_for(lambda: "svl-predictor-00001 has no traffic: scaling it to zero" in standin.read_text(), timeout=WAIT,
             what="the old revision scaled to zero")
    cluster.kubectl("delete", ISVC, "svl")
