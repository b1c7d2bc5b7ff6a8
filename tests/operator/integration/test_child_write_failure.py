"""A child write the API server refuses with anything but 409 is recorded in status, then retried by kopf.

The reconciler runs in-process against the real emulated API server (sandbox/emulator.py) from which the
KServe InferenceService CRD was deleted, as in a cluster where KServe is not (or no longer) installed: the
create answers 404. The status must still be written — InferenceServiceReady False with the error, Ready
following it — and the error re-raised, so that kopf retries with backoff. The version is pinned in status
and fixed in the spec, so the MLflow registry is never asked (its client points at a closed port). The
Events go through kopf's own posting queue, set up here as kopf's operator would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting
from medserve_operator.api.common import API_VERSION
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers import modeldeployment
from medserve_operator.kit import conditions
from medserve_sandbox.emulator import EmulatorProcess

CLOSED_PORT = "http://127.0.0.1:9"
PROJECT_CRDS = sorted((Path(__file__).resolve().parents[3] / "crds").glob("*.yaml"))


async def _reconcile_without_kserve(kubeconfig: str) -> tuple[BaseException | None, dict[str, Any], list[Any]]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    posting.settings_var.set(kopf.OperatorSettings())
    kube = KubeClient.from_environment(kubeconfig)
    registry = MlflowRegistry(CLOSED_PORT)
    try:
        await kube.create(API_VERSION, "modeldeployments", "default", {
            "apiVersion": API_VERSION, "kind": "ModelDeployment",
            "metadata": {"name": "triage", "namespace": "default"},
            "spec": {"model": {"name": "triage-classifier", "version": "3"}}})
        await kube.patch(API_VERSION, "modeldeployments", "default", "triage",
                         {"status": {"model": {"name": "triage-classifier", "version": "3", "source": "",
                                               "runId": ""}}}, subresource="status")
        body = await kube.get(API_VERSION, "modeldeployments", "default", "triage")
        assert body is not None
        rt = modeldeployment.Runtime(config=OperatorConfig(mlflow_uri=CLOSED_PORT, runtime_mlflow_uri=CLOSED_PORT),
                                     kube=kube, registry=registry)
        error: BaseException | None = None
        try:
            await modeldeployment.reconcile(rt, body, logging.getLogger("test"), periodic=False)
        except ApiError as exc:
            error = exc
        stored = await kube.get(API_VERSION, "modeldeployments", "default", "triage")
        events = [queue.get_nowait() for _ in range(queue.qsize())]
        return error, (stored or {}).get("status") or {}, events
    finally:
        await kube.aclose()
        await registry.aclose()


def test_a_refused_create_is_in_status_and_raised_for_kopf(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    cluster = emulator_factory(crd_paths=PROJECT_CRDS)
    cluster.kubectl("delete", "crd", "inferenceservices.serving.kserve.io")
    # kube-apiserver refuses creates with 403 while its CRD handler still sees the CRD terminating (after kubectl
    # has seen it gone); once the handler has dropped it, the resource is a 404 like any unknown one.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "--raw", "/apis/serving.kserve.io/v1beta1/inferenceservices",
                          check=False).returncode == 0:
        assert time.monotonic() < deadline, "inferenceservices are still served 30 s after their CRD's deletion"
        time.sleep(0.1)
    error, status, events = asyncio.run(_reconcile_without_kserve(str(cluster.kubeconfig)))

    assert isinstance(error, ApiError) and error.status == 404
    isvc = conditions.find(status.get("conditions"), "InferenceServiceReady")
    assert isvc is not None and (isvc["status"], isvc["reason"]) == ("False", "InferenceServiceFailed")
    assert "InferenceService triage could not be applied: 404" in isvc["message"]
    ready = conditions.find(status.get("conditions"), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "InferenceServiceFailed")
    assert conditions.is_true(status.get("conditions"), "ModelResolved")
    assert status["phase"] == "Deploying" and status["observedGeneration"] == 1
    assert "inferenceService" not in status
    # The example names no audit database, so AuditDurable warns too: its records would die with the pod.
    assert sorted((e.type, e.reason) for e in events) == [("Warning", "AuditLogInPod"),
                                                           ("Warning", "InferenceServiceFailed")]


def test_an_unreachable_api_server_is_an_api_error_naming_it() -> None:
    """The Kubernetes client against a loopback port nothing listens on: a 503 ApiError, as any API error."""

    async def attempt() -> None:
        kube = KubeClient(CLOSED_PORT)
        try:
            await kube.get("v1", "configmaps", "default", "settings")
        finally:
            await kube.aclose()

    with pytest.raises(ApiError) as raised:
        asyncio.run(attempt())
    assert (raised.value.status, raised.value.reason) == (503, "ServiceUnavailable")
    assert f"the Kubernetes API at {CLOSED_PORT} did not answer GET /api/v1/namespaces/default/configmaps/" \
           "settings: ClientConnectorError" in raised.value.message
