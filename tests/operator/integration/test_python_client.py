"""The Python `kubernetes` client (the client DESIGN.md names for platform scripts) drives the three kinds.

Against the emulator (or, in the envtest tier, a real control plane) with the project's CRDs and the
real operator: create, get, list with a label selector, watch, merge patch, server-side apply with a
field manager (and its conflict), the status subresource, the API's 409 and 422 answers as
`ApiException`s, and delete with foreground propagation — each as a platform team's script would call it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kit import OperatorProcess, get_json, wait_for
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from mlflow import MlflowClient

GROUP, VERSION, NAMESPACE = "medserve.io", "v1alpha1", "default"


@pytest.fixture(scope="module")
def api(cluster: EmulatorProcess) -> Iterator[client.CustomObjectsApi]:
    with config.new_client_from_config(config_file=str(cluster.kubeconfig)) as api_client:
        yield client.CustomObjectsApi(api_client)


def register(mlflow_url: str, name: str, versions: int) -> None:
    registry = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    registry.create_registered_model(name)
    for _ in range(versions):
        run = registry.create_run(experiment_id="0")
        registry.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)


def model_deployment(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"team": "py-client"}},
            "spec": {"model": {"name": name, "version": version}, "monitoring": {"drift": {"enabled": False}}}}


def get(api: client.CustomObjectsApi, plural: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)
    return found


def test_model_deployment_through_the_python_client(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer,
        api: client.CustomObjectsApi) -> None:
    register(mlflow_server.url, "py-client", versions=2)
    created = api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments",
                                                  model_deployment("py-client", "1"))
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1

    with pytest.raises(ApiException) as conflict:
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments",
                                            model_deployment("py-client", "1"))
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "AlreadyExists"

    bad = model_deployment("py-client-bad", "1")
    bad["spec"]["model"] = {"version": "1"}
    with pytest.raises(ApiException) as invalid:
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments", bad)
    assert invalid.value.status == 422
    assert "spec.model.name" in json.loads(invalid.value.body)["message"]

    # The operator resolves the version and renders the InferenceService; the status subresource says so.
    status = wait_for(lambda: (s := api.get_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, "modeldeployments", "py-client").get("status") or {})
        .get("observedGeneration") == 1 and s, timeout=120, what="the operator's status")
    assert status["model"]["version"] == "1"
    assert get_json(cluster, "inferenceservices.serving.kserve.io", "py-client") is not None

    listed = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments",
                                               label_selector="team=py-client")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["py-client"]

    # A watch from the list's resourceVersion sees the merge patch, then the operator's status for it.
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments", "py-client",
                                       {"spec": {"model": {"version": "2"}}})
    seen: list[tuple[str, int, Any]] = []
    stream = watch.Watch()
    for event in stream.stream(api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, "modeldeployments",
                               resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=120):
        obj = event["object"]
        seen.append((event["type"], obj["metadata"]["generation"],
                     (obj.get("status") or {}).get("observedGeneration")))
        if obj["metadata"]["generation"] == 2 and (obj.get("status") or {}).get("observedGeneration") == 2:
            stream.stop()
    assert seen[0][:2] == ("MODIFIED", 2) and seen[-1] == ("MODIFIED", 2, 2), seen

    # Server-side apply: a second manager setting a field the first owns conflicts, unless forced.
    def apply(manager: str, tier: str, *, force: bool = False) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                "metadata": {"name": "py-client", "namespace": NAMESPACE, "labels": {"tier": tier}}}
        applied: dict[str, Any] = api.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "modeldeployments", "py-client", body, field_manager=manager,
            force=force, _content_type="application/apply-patch+yaml")
        return applied

    applied = apply("platform-script", "gold")
    assert applied["metadata"]["labels"] == {"team": "py-client", "tier": "gold"}
    assert "platform-script" in {m["manager"] for m in applied["metadata"]["managedFields"]}
    with pytest.raises(ApiException) as owned:
        apply("other-script", "silver")
    assert owned.value.status == 409
    assert 'conflict with "platform-script"' in json.loads(owned.value.body)["message"]
    assert apply("other-script", "silver", force=True)["metadata"]["labels"]["tier"] == "silver"

    api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments", "py-client",
                                        propagation_policy="Foreground")
    wait_for(lambda: get_json(cluster, "inferenceservices.serving.kserve.io", "py-client") is None
             and get_json(cluster, "modeldeployment", "py-client") is None, timeout=120,
             what="the ModelDeployment and its InferenceService gone")


def test_abtest_and_retrain_policy_through_the_python_client(
        cluster: EmulatorProcess, operator: OperatorProcess, mlflow_server: MlflowServer,
        api: client.CustomObjectsApi) -> None:
    register(mlflow_server.url, "py-arm-a", versions=1)
    register(mlflow_server.url, "py-arm-b", versions=1)
    for name in ("py-arm-a", "py-arm-b"):
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modeldeployments",
                                            model_deployment(name, "1"))
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "abtests", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ABTest", "metadata": {"name": "py-ab", "namespace": NAMESPACE},
        "spec": {"control": {"modelDeployment": "py-arm-a"}, "treatment": {"modelDeployment": "py-arm-b"},
                 "trafficSplit": {"treatmentPercent": 30}}})
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "retrainpolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RetrainPolicy",
        "metadata": {"name": "py-rt", "namespace": NAMESPACE},
        "spec": {"modelDeployment": "py-arm-a", "schedule": "0 3 * * 0",
                 "job": {"image": "ghcr.io/medserve/training:0.1.0"}}})

    # The operator answers both through their status subresources.
    ab = wait_for(lambda: (s := get(api, "abtests", "py-ab").get("status") or {}).get("conditions") and s,
                  timeout=120, what="the ABTest's status")
    assert {c["type"] for c in ab["conditions"]} >= {"ArmsReady", "Ready"}
    policy = wait_for(lambda: (s := get(api, "retrainpolicies", "py-rt").get("status") or {}).get("nextScheduleTime")
                      and s, timeout=120, what="the RetrainPolicy scheduled")
    assert next(c for c in policy["conditions"] if c["type"] == "Scheduled")["reason"] == "CronJobReady"
    with config.new_client_from_config(config_file=str(cluster.kubeconfig)) as api_client:
        cronjob = client.BatchV1Api(api_client).read_namespaced_cron_job("py-rt", NAMESPACE)
    assert cronjob.spec.schedule == "0 3 * * 0"
    assert cronjob.metadata.owner_references[0].kind == "RetrainPolicy"

    # A JSON patch on the ABTest's spec bumps its generation; the operator observes it.
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "abtests", "py-ab",
                                       [{"op": "replace", "path": "/spec/trafficSplit/treatmentPercent", "value": 40}],
                                       _content_type="application/json-patch+json")  # the client sends merge otherwise
    wait_for(lambda: (get(api, "abtests", "py-ab").get("status") or {}).get("observedGeneration") == 2,
             timeout=120, what="the ABTest's generation 2 observed")
    for plural, name in (("retrainpolicies", "py-rt"), ("abtests", "py-ab"),
                         ("modeldeployments", "py-arm-a"), ("modeldeployments", "py-arm-b")):
        api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)
    wait_for(lambda: not api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "abtests")["items"]
             and get_json(cluster, "cronjob", "py-rt") is None, timeout=120, what="the objects and CronJob gone")
