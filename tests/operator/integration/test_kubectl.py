"""The real kubectl (v1.32) against the emulator: apply, get with printer columns, categories, describe, delete.

These are the commands the README and the demo tell people to run, so they must behave as on a
real cluster. Each test uses its own namespace.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from medserve_sandbox.emulator import EmulatorProcess

REPO = Path(__file__).resolve().parents[3]
PROJECT_CRDS = sorted((REPO / "crds").glob("*.yaml"))

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def cluster(emulator_factory: Callable[..., EmulatorProcess], widget_crd: Path) -> EmulatorProcess:
    return emulator_factory(crd_paths=[widget_crd])


@pytest.fixture
def namespace(cluster: EmulatorProcess) -> str:
    name = f"kt-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


def widget_manifest(name: str, size: int, color: str = "blue") -> str:
    return textwrap.dedent(f"""\
        apiVersion: test.medserve.io/v1
        kind: Widget
        metadata:
          name: {name}
          labels: {{app: widgets}}
        spec:
          size: {size}
          color: {color}
        """)


def table(output: str) -> list[dict[str, str]]:
    """Parse kubectl's column output into dicts (column names may hold single spaces: LAST TRIGGER)."""
    lines = [line for line in output.splitlines() if line.strip()]
    starts = [match.start() for match in re.finditer(r"\S+(?: \S+)*", lines[0])]
    bounds = [*starts, None]
    names = [lines[0][bounds[i]:bounds[i + 1]].strip() for i in range(len(starts))]
    return [{names[i]: line[bounds[i]:bounds[i + 1]].strip() for i in range(len(starts))} for line in lines[1:]]


def test_apply_create_unchanged_configured(cluster: EmulatorProcess, namespace: str) -> None:
    manifest = widget_manifest("alpha", 3)
    first = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    assert first.stdout.strip() == "widget.test.medserve.io/alpha created"
    again = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    assert again.stdout.strip() == "widget.test.medserve.io/alpha unchanged"
    changed = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget_manifest("alpha", 4))
    assert changed.stdout.strip() == "widget.test.medserve.io/alpha configured"
    obj = json.loads(cluster.kubectl("get", "widget", "alpha", "-n", namespace, "-o", "json").stdout)
    assert obj["spec"]["size"] == 4 and obj["metadata"]["generation"] == 2


def test_apply_of_core_kinds_and_strategic_merge(cluster: EmulatorProcess, namespace: str) -> None:
    manifest = textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: settings, labels: {a: "1"}}
        data: {one: "1", two: "2"}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selector: {app: web}
          ports: [{name: http, port: 80, targetPort: 8080}]
        """)
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    assert result.stdout.split("\n")[:2] == ["configmap/settings created", "service/web created"]
    assert "unchanged" in cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest).stdout
    edited = manifest.replace('two: "2"', 'three: "3"').replace("port: 80,", "port: 81,")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=edited)
    cm = json.loads(cluster.kubectl("get", "cm", "settings", "-n", namespace, "-o", "json").stdout)
    assert cm["data"] == {"one": "1", "three": "3"}
    svc = json.loads(cluster.kubectl("get", "svc", "web", "-n", namespace, "-o", "json").stdout)
    assert [p["port"] for p in svc["spec"]["ports"]] == [81]


def test_get_prints_printer_columns(cluster: EmulatorProcess, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget_manifest("beta", 7, "green"))
    rows = table(cluster.kubectl("get", "widgets", "-n", namespace).stdout)
    assert rows[0]["NAME"] == "beta" and rows[0]["SIZE"] == "7" and rows[0]["COLOR"] == "green"
    assert {"NAME", "SIZE", "COLOR", "PHASE", "AGE"} <= set(rows[0])
    short = table(cluster.kubectl("get", "wd", "beta", "-n", namespace).stdout)
    assert short[0]["NAME"] == "beta"
    by_label = cluster.kubectl("get", "widgets", "-n", namespace, "-l", "app=widgets", "-o", "name").stdout
    assert by_label.split() == ["widget.test.medserve.io/beta"]


def test_get_by_category(cluster: EmulatorProcess, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget_manifest("gamma", 1))
    rows = table(cluster.kubectl("get", "medserve-test", "-n", namespace).stdout)
    assert [(row["NAME"], row["SIZE"]) for row in rows] == [("gamma", "1")]


def test_get_yaml_round_trips(cluster: EmulatorProcess, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget_manifest("delta", 2))
    obj = yaml.safe_load(cluster.kubectl("get", "widget", "delta", "-n", namespace, "-o", "yaml").stdout)
    assert obj["kind"] == "Widget" and obj["metadata"]["namespace"] == namespace
    assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    listing = yaml.safe_load(cluster.kubectl("get", "widgets", "-n", namespace, "-o", "yaml").stdout)
    assert listing["kind"] == "List" and [i["metadata"]["name"] for i in listing["items"]] == ["delta"]


def test_describe_shows_spec_and_events(cluster: EmulatorProcess, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget_manifest("epsilon", 5))
    obj = json.loads(cluster.kubectl("get", "widget", "epsilon", "-n", namespace, "-o", "json").stdout)
    event = {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "epsilon.1", "namespace": namespace},
        "involvedObject": {"apiVersion": "test.medserve.io/v1", "kind": "Widget", "name": "epsilon",
                           "namespace": namespace, "uid": obj["metadata"]["uid"]},
        "reason": "Polished", "message": "the widget shines", "type": "Normal", "count": 1,
        "firstTimestamp": obj["metadata"]["creationTimestamp"], "lastTimestamp": obj["metadata"]["creationTimestamp"],
        "source": {"component": "test"},
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(event))
    output = cluster.kubectl("describe", "widget", "epsilon", "-n", namespace).stdout
    assert "Name:         epsilon" in output and "Size:   5" in output
    assert "Polished" in output and "the widget shines" in output


def test_delete_cascades_and_waits(cluster: EmulatorProcess, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget_manifest("zeta", 1))
    owner = json.loads(cluster.kubectl("get", "widget", "zeta", "-n", namespace, "-o", "json").stdout)
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "zeta-child", "ownerReferences": [
        {"apiVersion": "test.medserve.io/v1", "kind": "Widget", "name": "zeta", "uid": owner["metadata"]["uid"]}]}}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(child))
    result = cluster.kubectl("delete", "widget", "zeta", "-n", namespace)
    assert result.stdout.strip() == 'widget.test.medserve.io "zeta" deleted'
    assert cluster.kubectl("get", "widget", "zeta", "-n", namespace, check=False).returncode != 0
    # A real garbage collector sees the Widget kind only after its next discovery sync (kube-controller-manager's
    # garbagecollector Sync, every 30 s): the CRD was installed after it started.
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "cm", "zeta-child", "-n", namespace, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the dependent ConfigMap was not garbage-collected"
        time.sleep(0.1)
    missing = cluster.kubectl("get", "widget", "zeta", "-n", namespace, check=False)
    assert 'widgets.test.medserve.io "zeta" not found' in missing.stderr


def test_invalid_manifest_is_rejected_naming_the_field(cluster: EmulatorProcess, namespace: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget_manifest("eta", 0), check=False)
    assert result.returncode != 0 and "spec.size" in result.stderr
    unknown = widget_manifest("eta", 1).replace("color: blue", "colour: blue")
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=unknown, check=False)
    assert result.returncode != 0 and "colour" in result.stderr


def test_imperative_create_and_label(cluster: EmulatorProcess, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "cfg", "-n", namespace, "--from-literal=a=b")
    cluster.kubectl("create", "secret", "generic", "keys", "-n", namespace, "--from-literal=token=s3cret")
    secret = json.loads(cluster.kubectl("get", "secret", "keys", "-n", namespace, "-o", "json").stdout)
    assert secret["data"] == {"token": "czNjcmV0"} and secret["type"] == "Opaque"
    cm = json.loads(cluster.kubectl("get", "cm", "cfg", "-n", namespace, "-o", "json").stdout)
    assert cm["data"] == {"a": "b"}
    cluster.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    assert cluster.kubectl("get", "sa", "robot", "-n", namespace, "-o", "name").stdout.strip() == "serviceaccount/robot"
    cluster.kubectl("create", "job", "once", "-n", namespace, "--image=busybox")
    once = json.loads(cluster.kubectl("get", "job", "once", "-n", namespace, "-o", "json").stdout)
    container = once["spec"]["template"]["spec"]["containers"][0]
    assert (container["name"], container["image"], container["imagePullPolicy"]) == ("once", "busybox", "Always")
    assert once["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    if isinstance(cluster, EmulatorProcess):
        # A kind whose protobuf the emulator does not decode is refused with the way out, never half-read.
        refused = cluster.kubectl("create", "deployment", "web", "-n", namespace, "--image=nginx", check=False)
        assert refused.returncode != 0 and "kubectl apply -f" in refused.stderr
    cluster.kubectl("label", "cm", "cfg", "-n", namespace, "tier=gold")
    cluster.kubectl("annotate", "cm", "cfg", "-n", namespace, "note=hi")
    cm = json.loads(cluster.kubectl("get", "cm", "cfg", "-n", namespace, "-o", "json").stdout)
    assert cm["metadata"]["labels"] == {"tier": "gold"} and cm["metadata"]["annotations"]["note"] == "hi"


@pytest.mark.skipif(not PROJECT_CRDS, reason="crds/ is empty: run `medserve crds` first")
def test_project_crds_apply_and_serve_their_kinds(cluster: EmulatorProcess, namespace: str) -> None:
    result = cluster.kubectl("apply", *[arg for path in PROJECT_CRDS for arg in ("-f", str(path))])
    assert result.stdout.count("customresourcedefinition.apiextensions.k8s.io/") == len(PROJECT_CRDS)
    assert cluster.kubectl("apply", *[arg for path in PROJECT_CRDS for arg in ("-f", str(path))]
                           ).stdout.count("unchanged") == len(PROJECT_CRDS)
    cluster.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.medserve.io", "--timeout=10s")
    manifest = textwrap.dedent("""\
        apiVersion: medserve.io/v1alpha1
        kind: ModelDeployment
        metadata: {name: sepsis}
        spec:
          model: {name: sepsis-risk, version: "3"}
        """)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    rows = table(cluster.kubectl("get", "modeldeployments", "-n", namespace).stdout)
    assert rows[0]["NAME"] == "sepsis" and rows[0]["MODEL"] == "sepsis-risk"
    assert "modeldeployment.medserve.io/sepsis" in cluster.kubectl("get", "medserve", "-n", namespace).stdout
    obj: dict[str, Any] = json.loads(cluster.kubectl("get", "md", "sepsis", "-n", namespace, "-o", "json").stdout)
    assert obj["spec"]["scaling"]["maxReplicas"] >= 1  # defaulted by the CRD schema
