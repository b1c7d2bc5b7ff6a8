"""A scripted set of Kubernetes API requests, their normalised answers, and the recorder.

The same script runs against a real kube-apiserver (to record its answers, committed as test data in
tests/sandbox/data/apiserver/answers.json) and against the emulator (tests/sandbox/integration/
test_recorded_answers.py compares). It covers what the operator, kubectl and Helm rely on: CRD
install (accepted, and refused with the server's messages), create/get/list/patch of a custom
resource (merge, JSON patch, strategic merge refused, server-side apply with two field managers, a
conflict and `force`), the status subresource, managedFields, list pagination, a watch from a
too-old resourceVersion, 404/409/422 bodies, deletes with each propagation policy, Table output,
/openapi/v2 and /openapi/v3, a SelfSubjectAccessReview and a built-in kind (a Job) with its
defaults.

Answers are normalised before they are stored or compared: uids, resourceVersions, timestamps and
continue tokens are replaced by placeholders, and the answer keeps only what the step says matters
(`keep`): the status code, and the body or some of its fields.

Record (needs the envtest binaries, see the README):

    PYTHONPATH=... KUBEBUILDER_ASSETS=/path python tests/support/apiscript.py record
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

DATA = Path(__file__).resolve().parents[1] / "sandbox" / "data" / "apiserver" / "answers.json"
NS = "recorded"
GROUP = "rec.medserve.io"
WIDGETS = f"/apis/{GROUP}/v1/namespaces/{NS}/widgets"


def widget_crd(name: str = f"widgets.{GROUP}", **schema_changes: Any) -> dict[str, Any]:
    spec_schema: dict[str, Any] = {
        "type": "object",
        "required": ["size"],
        "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 100},
            "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
            "limits": {
                "type": "object",
                "default": {"low": 1, "high": 5},
                "properties": {"low": {"type": "integer", "default": 1}, "high": {"type": "integer", "default": 5}},
                "x-kubernetes-validations": [{"rule": "self.low <= self.high", "message": "low must not exceed high"}],
            },
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    root: dict[str, Any] = {
        "type": "object",
        "properties": {
            "spec": spec_schema,
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
        },
    }
    for key, value in schema_changes.items():
        if key == "metadata":
            root["properties"]["metadata"] = value
        else:
            spec_schema["properties"][key] = value
    plural, group = name.split(".", 1)
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": plural[:-1].capitalize(),
                      "listKind": f"{plural[:-1].capitalize()}List", "shortNames": [plural[:2]]},
            "versions": [{
                "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                ],
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def widget(name: str, size: int = 3, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name, "namespace": NS},
            "spec": {"size": size, **spec}}


@dataclasses.dataclass(frozen=True)
class Step:
    """One request. `keep`: "status" (code, and reason/message of a Status), "body" (the whole
    normalised body), or a list of dotted paths into the body."""

    name: str
    method: str
    path: str
    body: Any = None
    content_type: str = "application/json"
    accept: str = "application/json"
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    keep: str | tuple[str, ...] = "body"
    stream: bool = False
    wait_established: str | None = None


SSA_A = "apiVersion: rec.medserve.io/v1\nkind: Widget\nmetadata:\n  name: applied\nspec:\n  size: 4\n  tags: [a]\n"
SSA_B = "apiVersion: rec.medserve.io/v1\nkind: Widget\nmetadata:\n  name: applied\nspec:\n  size: 9\n"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once", "namespace": NS},
       "spec": {"template": {"spec": {"restartPolicy": "Never",
                                      "containers": [{"name": "once", "image": "busybox:1.36"}]}}}}

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "two"},
       "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}, {"name": "side", "image": "busybox:1.36"}]}}

SCRIPT: tuple[Step, ...] = (
    Step("namespace-create", "POST", "/api/v1/namespaces",
         {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
         keep=("kind", "metadata.name", "spec", "status")),
    # CRD install: refused for a described root metadata, and for an empty default under a CEL rule.
    Step("crd-metadata-described", "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
         widget_crd(f"gadgets.{GROUP}", metadata={"type": "object", "description": "Standard object metadata."}),
         keep="status"),
    Step("crd-empty-default-under-cel", "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
         widget_crd(f"gizmos.{GROUP}", limits={
             "type": "object", "default": {},
             "properties": {"low": {"type": "integer", "default": 1}, "high": {"type": "integer", "default": 5}},
             "x-kubernetes-validations": [{"rule": "self.low <= self.high", "message": "low must not exceed high"}]}),
         keep="status"),
    Step("crd-create", "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", widget_crd(),
         keep=("kind", "metadata.name", "spec.names", "spec.versions"), wait_established=f"widgets.{GROUP}"),
    # Custom resources.
    Step("cr-create", "POST", WIDGETS, widget("alpha"), keep=("kind", "metadata.name", "metadata.generation", "spec")),
    Step("cr-create-conflict", "POST", WIDGETS, widget("alpha"), keep="status"),
    Step("cr-get", "GET", f"{WIDGETS}/alpha", keep=("metadata.name", "metadata.generation", "spec")),
    Step("cr-get-missing", "GET", f"{WIDGETS}/nope", keep="status"),
    Step("cr-create-invalid", "POST", WIDGETS, widget("bad", 0, color="pink"), keep="status"),
    Step("cr-create-cel-refused", "POST", WIDGETS, widget("worse", 2, limits={"low": 9, "high": 1}), keep="status"),
    Step("cr-create-beta", "POST", WIDGETS, widget("beta", 5), keep=("metadata.name",)),
    Step("cr-create-gamma", "POST", WIDGETS, widget("gamma", 6), keep=("metadata.name",)),
    Step("cr-list-page-1", "GET", WIDGETS, params={"limit": "2"},
         keep=("kind", "metadata.continue", "metadata.remainingItemCount", "items.*.metadata.name")),
    Step("cr-list-page-2", "GET", WIDGETS, params={"limit": "2", "continue": "$continue:cr-list-page-1"},
         keep=("kind", "metadata.continue", "items.*.metadata.name")),
    Step("cr-list-label-selector", "GET", WIDGETS, params={"labelSelector": "app=none"},
         keep=("kind", "items")),
    Step("cr-patch-merge", "PATCH", f"{WIDGETS}/alpha", {"spec": {"size": 7}},
         content_type="application/merge-patch+json", keep=("metadata.generation", "spec")),
    Step("cr-patch-json", "PATCH", f"{WIDGETS}/alpha", [{"op": "add", "path": "/spec/tags", "value": ["x"]}],
         content_type="application/json-patch+json", keep=("metadata.generation", "spec")),
    Step("cr-patch-strategic", "PATCH", f"{WIDGETS}/alpha", {"spec": {"size": 8}},
         content_type="application/strategic-merge-patch+json", keep="status"),
    Step("cr-patch-invalid", "PATCH", f"{WIDGETS}/alpha", {"spec": {"size": 1000}},
         content_type="application/merge-patch+json", keep="status"),
    # Status subresource: the main resource ignores status; /status ignores spec.
    Step("cr-status-via-main", "PATCH", f"{WIDGETS}/alpha", {"status": {"phase": "Ignored"}},
         content_type="application/merge-patch+json", keep=("metadata.generation", "status")),
    Step("cr-status-patch", "PATCH", f"{WIDGETS}/alpha/status", {"status": {"phase": "Ready"}, "spec": {"size": 99}},
         content_type="application/merge-patch+json", keep=("metadata.generation", "spec.size", "status")),
    # Server-side apply: two managers, a conflict, force, and the managedFields that result.
    Step("ssa-create", "PATCH", f"{WIDGETS}/applied", SSA_A, content_type="application/apply-patch+yaml",
         params={"fieldManager": "manager-a"}, keep=("metadata.name", "spec", "metadata.managedFields")),
    Step("ssa-conflict", "PATCH", f"{WIDGETS}/applied", SSA_B, content_type="application/apply-patch+yaml",
         params={"fieldManager": "manager-b"}, keep="status"),
    Step("ssa-force", "PATCH", f"{WIDGETS}/applied", SSA_B, content_type="application/apply-patch+yaml",
         params={"fieldManager": "manager-b", "force": "true"}, keep=("spec", "metadata.managedFields")),
    Step("ssa-no-field-manager", "PATCH", f"{WIDGETS}/applied", SSA_B, content_type="application/apply-patch+yaml",
         keep="status"),
    # Watch from a resourceVersion the server no longer has.
    Step("watch-too-old", "GET", WIDGETS, params={"watch": "true", "resourceVersion": "1", "timeoutSeconds": "3"},
         keep="body", stream=True),
    # Table output (kubectl get).
    Step("cr-table", "GET", WIDGETS, accept=TABLE,
         keep=("kind", "apiVersion", "columnDefinitions", "rows.*.cells")),
    # Deletes with each propagation policy.
    Step("cr-delete-background", "DELETE", f"{WIDGETS}/gamma", {"propagationPolicy": "Background"},
         keep=("kind", "metadata.name", "metadata.finalizers", "status")),
    Step("cr-delete-foreground", "DELETE", f"{WIDGETS}/beta", {"propagationPolicy": "Foreground"},
         keep=("kind", "metadata.name", "metadata.finalizers")),
    Step("cr-delete-orphan", "DELETE", f"{WIDGETS}/alpha", {"propagationPolicy": "Orphan"},
         keep=("kind", "metadata.name", "metadata.finalizers")),
    Step("cr-delete-missing", "DELETE", f"{WIDGETS}/nope", keep="status"),
    # Discovery documents.
    Step("openapi-v3-index", "GET", "/openapi/v3", keep=("paths.apis/rec.medserve.io/v1",)),
    Step("openapi-v3-group", "GET", f"/openapi/v3/apis/{GROUP}/v1",
         keep=("components.schemas.io.medserve.rec.v1.Widget.properties.spec",)),
    Step("openapi-v2", "GET", "/openapi/v2", keep=("definitions.io.medserve.rec.v1.Widget.properties.spec",)),
    # Authorization.
    Step("self-subject-access-review", "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
         {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
          "spec": {"resourceAttributes": {"namespace": NS, "verb": "create", "group": GROUP, "resource": "widgets"}}},
         keep=("kind", "spec", "status.allowed")),
    # A built-in kind and its defaults (what `kubectl create job --image=busybox:1.36 once` sends).
    Step("job-create", "POST", f"/apis/batch/v1/namespaces/{NS}/jobs", JOB,
         keep=("spec.backoffLimit", "spec.completions", "spec.parallelism", "spec.completionMode", "spec.suspend",
               "spec.template.spec.containers", "spec.template.spec.dnsPolicy",
               "spec.template.spec.terminationGracePeriodSeconds", "spec.template.spec.schedulerName",
               "spec.template.metadata.labels")),
    # Built-in kinds: a body that does not decode, a key the kind refuses, a 404 of the core group.
    Step("configmap-wrong-type", "POST", f"/api/v1/namespaces/{NS}/configmaps",
         {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typed"}, "data": {"k": 5}}, keep="status"),
    Step("configmap-bad-key", "POST", f"/api/v1/namespaces/{NS}/configmaps",
         {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keyed"}, "data": {"not a key!": "v"}},
         keep="status"),
    Step("configmap-get-missing", "GET", f"/api/v1/namespaces/{NS}/configmaps/nope", keep="status"),
    Step("pod-create", "POST", f"/api/v1/namespaces/{NS}/pods", POD, keep=("metadata.name",)),
    Step("pod-update-removes-a-container", "PATCH", f"/api/v1/namespaces/{NS}/pods/two",
         {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}},
         content_type="application/strategic-merge-patch+json", keep="status"),
    # Label selectors that do not parse.
    Step("label-selector-in-without-parentheses", "GET", WIDGETS, params={"labelSelector": "tier in web"},
         keep="status"),
    Step("label-selector-bad-value", "GET", WIDGETS, params={"labelSelector": "a=-b-"}, keep="status"),
    Step("job-status-complete-without-success-criteria", "PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/once/status",
         {"status": {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z", "succeeded": 1,
                     "conditions": [{"type": "Complete", "status": "True"}]}},
         content_type="application/merge-patch+json", keep="status"),
)

# --- normalisation ----------------------------------------------------------------------------------------

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME_KEYS = {"creationTimestamp", "deletionTimestamp", "time", "lastTransitionTime", "startTime", "completionTime",
              "lastProbeTime", "eventTime", "lastTimestamp", "firstTimestamp"}


def normalise(value: Any) -> Any:
    """Replace what differs from run to run (uids, resourceVersions, times, continue tokens)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "uid" and isinstance(item, str):
                out[key] = "<uid>"
            elif key == "resourceVersion" and isinstance(item, str):
                out[key] = "<rv>"
            elif key in _TIME_KEYS and isinstance(item, str):
                out[key] = "<time>"
            elif key == "continue" and isinstance(item, str) and item:
                out[key] = "<continue>"
            elif key == "selfLink":
                continue
            else:
                out[key] = normalise(item)
        return out
    if isinstance(value, list):
        return [normalise(item) for item in value]
    if isinstance(value, str):
        text = re.sub(r"\?hash=[0-9A-F]+$", "?hash=<hash>", _UUID.sub("<uid>", value))
        return re.sub(r"too old resource version: \d+ \(\d+\)", "too old resource version: <rv> (<rv>)", text)
    return value


def _pick(body: Any, path: str) -> Any:
    parts = path.split(".")
    # Keys that themselves hold dots (openapi names) are matched greedily from the left.
    node = body
    i = 0
    while i < len(parts):
        if parts[i] == "*":
            rest = ".".join(parts[i + 1:])
            return [(_pick(item, rest) if rest else item) for item in (node or [])]
        if not isinstance(node, dict):
            return None
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            return "<absent>"
    return node


def answer(step: Step, status: int, body: Any) -> dict[str, Any]:
    """What is stored (and compared) of one response."""
    body = normalise(body)
    kept: Any
    if step.keep == "status":
        kept = {k: body.get(k) for k in ("kind", "status", "reason", "code", "message")} \
            if isinstance(body, dict) else body
        if isinstance(body, dict) and isinstance(body.get("details"), dict):
            kept["details"] = {k: v for k, v in body["details"].items() if k != "uid"}
    elif step.keep == "body":
        kept = body
    else:
        kept = {path: _pick(body, path) for path in step.keep}
    return {"status": status, "body": kept}


# --- running the script -------------------------------------------------------------------------------------


def run_script(client: httpx.Client, script: tuple[Step, ...] = SCRIPT) -> dict[str, dict[str, Any]]:
    """Send every step in order; name -> answer."""
    raw: dict[str, Any] = {}
    answers: dict[str, dict[str, Any]] = {}
    for step in script:
        params = {}
        for key, value in step.params.items():
            if value.startswith("$continue:"):
                value = str((raw.get(value.split(":", 1)[1]) or {}).get("metadata", {}).get("continue", ""))
            params[key] = value
        content: bytes | None = None
        if step.body is not None:
            content = step.body.encode() if isinstance(step.body, str) else json.dumps(step.body).encode()
        headers = {"Accept": step.accept}
        if content is not None:
            headers["Content-Type"] = step.content_type
        response = client.request(step.method, step.path, params=params, content=content, headers=headers,
                                  timeout=30)
        if step.stream:
            body: Any = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        else:
            try:
                body = response.json()
            except ValueError:
                body = response.text
        raw[step.name] = body
        answers[step.name] = answer(step, response.status_code, body)
        if step.wait_established:
            _wait_established(client, step.wait_established)
    return answers


def _wait_established(client: httpx.Client, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crd = client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}").json()
        conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
        # Served only once discovery and the REST handler are up: poll the list too.
        if conditions.get("Established") == "True" and client.get(f"/apis/{GROUP}/v1/widgets").status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not established within 60s")


def client_for_kubeconfig(kubeconfig: Path) -> httpx.Client:
    """An httpx client with the kubeconfig's server, CA and client certificate (or token)."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    server = cluster["server"]
    if not server.startswith("https://"):
        return httpx.Client(base_url=server)
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    headers = {}
    if "client-certificate" in user:
        context.load_cert_chain(user["client-certificate"], user["client-key"])
    if "token" in user:
        headers["Authorization"] = f"Bearer {user['token']}"
    return httpx.Client(base_url=server, verify=context, headers=headers)


def record(out: Path, start: Callable[[Path], Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="apiscript-") as tmp:
        plane = start(Path(tmp))
        try:
            with client_for_kubeconfig(plane.kubeconfig) as client:
                version = client.get("/version").json()
                answers = run_script(client)
        finally:
            plane.stop()
    document = {
        "recordedWith": {"gitVersion": version.get("gitVersion"), "note": "kube-apiserver + etcd "
                         "+ kube-controller-manager on loopback (sandbox/medserve_sandbox/controlplane.py)"},
        "answers": answers,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return document


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="record the real API server's answers to the script")
    parser.add_argument("command", choices=["record"])
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args(argv)
    from medserve_sandbox.controlplane import ControlPlane

    document = record(args.out, lambda tmp: ControlPlane(tmp).start())
    sys.stdout.write(f"recorded {len(document['answers'])} answers from {document['recordedWith']['gitVersion']} "
                     f"to {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
