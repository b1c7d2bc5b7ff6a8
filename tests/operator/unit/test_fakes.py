"""The in-process fakes behave as the real API server, MLflow client and Prometheus client do where the
orchestration tests lean on it (tests/support/fakes.py says which real code each follows)."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeKube, FakePrometheus, FakeRegistry, merge
from medserve_operator.clients.kube import ApiError, merge_patch
from medserve_operator.clients.mlflow import ModelNotFound, ModelNotReady, RegistryUnavailable
from medserve_operator.clients.prometheus import PrometheusQueryError, PrometheusUnavailable, VectorSample

API, ISVC = "serving.kserve.io/v1beta1", "inferenceservices"


def isvc(name: str = "a", **labels: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "InferenceService", "metadata": {"name": name, "labels": labels},
            "spec": {"predictor": {"minReplicas": 1}}, "status": {"url": "ignored on create"}}


async def test_create_sets_identity_and_drops_status_and_refuses_a_taken_name() -> None:
    kube = FakeKube()
    created = await kube.create(API, ISVC, "ns", isvc())
    meta = created["metadata"]
    assert (meta["generation"], meta["namespace"]) == (1, "ns")
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"].endswith("Z")
    assert "status" not in created
    with pytest.raises(ApiError) as caught:
        await kube.create(API, ISVC, "ns", isvc())
    assert (caught.value.status, caught.value.reason) == (409, "AlreadyExists")
    assert kube.writes == {"create": 2}
    assert await kube.get(API, ISVC, "ns", "missing") is None


async def test_replace_needs_the_current_resource_version_for_a_custom_resource() -> None:
    kube = FakeKube()
    created = await kube.create(API, ISVC, "ns", isvc())
    stale = {**created, "spec": {"predictor": {"minReplicas": 2}}}
    kube.set_status(API, ISVC, "ns", "a", {"url": "http://a"})  # another writer bumps resourceVersion
    with pytest.raises(ApiError) as caught:
        await kube.replace(API, ISVC, "ns", stale)
    assert (caught.value.status, caught.value.reason) == (409, "Conflict")
    unversioned = {**stale, "metadata": {k: v for k, v in stale["metadata"].items() if k != "resourceVersion"}}
    with pytest.raises(ApiError) as caught:
        await kube.replace(API, ISVC, "ns", unversioned)
    assert (caught.value.status, caught.value.reason) == (422, "Invalid")
    with pytest.raises(ApiError) as caught:
        await kube.replace(API, ISVC, "ns", {**stale, "metadata": {"name": "missing"}})
    assert caught.value.status == 404

    fresh = kube.obj(API, ISVC, "ns", "a")
    replaced = await kube.replace(API, ISVC, "ns", {**fresh, "spec": {"predictor": {"minReplicas": 2}},
                                                   "status": {"url": "a PUT does not set status"}})
    assert replaced["metadata"]["generation"] == 2
    assert replaced["status"] == {"url": "http://a"}
    unchanged = await kube.replace(API, ISVC, "ns", replaced)
    assert unchanged["metadata"]["resourceVersion"] == replaced["metadata"]["resourceVersion"]


async def test_a_builtin_kind_takes_an_unconditional_update() -> None:
    kube = FakeKube()
    await kube.create("batch/v1", "cronjobs", "ns", {"metadata": {"name": "c"}, "spec": {"schedule": "* * * * *"}})
    replaced = await kube.replace("batch/v1", "cronjobs", "ns", {"metadata": {"name": "c"},
                                                                "spec": {"schedule": "0 * * * *"}})
    assert (replaced["spec"]["schedule"], replaced["metadata"]["generation"]) == ("0 * * * *", 2)


async def test_merge_patch_and_the_status_subresource() -> None:
    kube = FakeKube()
    await kube.create(API, ISVC, "ns", isvc())
    patched = await kube.patch(API, ISVC, "ns", "a", {"status": {"url": "http://a", "x": 1}}, subresource="status")
    assert patched["status"] == {"url": "http://a", "x": 1} and patched["metadata"]["generation"] == 1
    patched = await kube.patch(API, ISVC, "ns", "a", {"spec": {"predictor": {"minReplicas": 3}}, "status": {"x": 2}},
                               subresource="status")
    assert patched["spec"]["predictor"]["minReplicas"] == 1  # the status subresource ignores spec
    patched = await kube.patch(API, ISVC, "ns", "a", {"spec": {"predictor": {"maxReplicas": 4}}, "status": {"x": 3}})
    assert patched["spec"]["predictor"] == {"minReplicas": 1, "maxReplicas": 4}
    assert patched["status"]["x"] == 2  # the main resource ignores status
    assert patched["metadata"]["generation"] == 2
    patched = await kube.patch(API, ISVC, "ns", "a", {"status": {"x": None}}, subresource="status")
    assert patched["status"] == {"url": "http://a"}
    assert kube.writes == {"create": 1, "patch/status": 3, "patch": 1}
    with pytest.raises(ApiError) as caught:
        await kube.patch(API, ISVC, "ns", "missing", {"spec": {}})
    assert caught.value.status == 404


def test_merge_applies_what_the_operators_merge_patch_computes() -> None:
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": True}
    new = {"a": 2, "b": {"c": [3]}, "f": {"g": None}}
    assert merge(old, merge_patch(old, new)) == {"a": 2, "b": {"c": [3]}, "f": {}}


async def test_list_by_label_selector_and_cascading_delete() -> None:
    kube = FakeKube()
    owner = await kube.create(API, ISVC, "ns", isvc("owner", tier="a"))
    await kube.create(API, ISVC, "ns", isvc("other", tier="b"))
    await kube.create("batch/v1", "jobs", "ns", {"metadata": {"name": "j", "labels": {"tier": "a"}, "ownerReferences": [
        {"uid": owner["metadata"]["uid"], "kind": "InferenceService", "name": "owner"}]}, "spec": {}})
    assert [o["metadata"]["name"] for o in await kube.list(API, ISVC, "ns", label_selector="tier=a")] == ["owner"]
    assert [o["metadata"]["name"] for o in await kube.list(API, ISVC, "ns", label_selector="tier!=a")] == ["other"]
    assert len(await kube.list(API, ISVC, "ns", label_selector="tier")) == 2
    assert await kube.list(API, ISVC, "ns", label_selector="!tier") == []
    assert await kube.list(API, ISVC, "elsewhere") == []
    with pytest.raises(ValueError, match="equality-based"):
        await kube.list(API, ISVC, "ns", label_selector="tier in (a,b)")
    assert await kube.delete(API, ISVC, "ns", "owner") is True
    assert kube.named("jobs") == []
    assert await kube.delete(API, ISVC, "ns", "owner") is False


async def test_registry_errors_are_the_real_clients() -> None:
    registry = FakeRegistry()
    assert registry.add_version("m") == "1"
    registry.add_version("m", status="PENDING_REGISTRATION", tags={"job": "j"})
    registry.move_alias("m", "champion", "1")
    resolved = await registry.resolve("m", alias="champion")
    assert (resolved.version, resolved.alias, resolved.uri) == ("1", "champion", "models:/m/1")
    with pytest.raises(ValueError):
        await registry.resolve("m")
    for kwargs in ({"version": "9"}, {"alias": "nope"}):
        with pytest.raises(ModelNotFound):
            await registry.resolve("m", **kwargs)
    with pytest.raises(ModelNotReady):
        await registry.resolve("m", version="2")
    with pytest.raises(ModelNotFound):
        await registry.set_alias("m", "champion", "9")
    registry.down = True
    with pytest.raises(RegistryUnavailable):
        await registry.find_versions_by_tag("m", "job", "j")


async def test_prometheus_answers_by_matchers_and_fails_as_the_real_client() -> None:
    prometheus = FakePrometheus()
    prometheus.answer(('model="a"',), [VectorSample({}, 1.0), VectorSample({}, 2.0)])
    prometheus.answer(("up",), 3.0)
    assert await prometheus.value("up") == 3.0
    assert await prometheus.query('x{model="b"}') == []
    assert await prometheus.value('x{model="b"}') is None
    with pytest.raises(PrometheusQueryError, match="2 series"):
        await prometheus.value('x{model="a"}')
    prometheus.down = True
    with pytest.raises(PrometheusUnavailable):
        await prometheus.query_value("up")
