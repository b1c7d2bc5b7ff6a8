"""The sandbox's InferenceGraph stand-in (sandbox/graph_standin.py) as a process against the emulated API.

The graphs are created with kubectl, so the emulator validates each against KServe's own CRD schema and
KServe's validating webhook, and the stand-in writes their status through the status subresource as
KServe's controller would. What is held here is KServe 0.20's router contract (kserve cmd/router/main.go
`graphHandler`, `routeStep`, `pickupRoute`, `callService`; the step URL from pkg/controller/v1beta1/
inferenceservice/utils/utils.go `GetPredictorEndpoint`), each test naming the function it follows.

Stand-ins, said where they are used: the arms behind the graph are test doubles of the medserve runtime,
two small HTTP servers in this process that answer `/predict`, `/batch_predict`, `/feedback` (200 only
for an id they issued themselves, 404 otherwise, as the runtime does) and KServe's
`/v1/models/<name>:predict`. A real runtime needs a registered, trained model and seconds to start per
arm; what is tested here is the router's split, its stickiness and its URL contract, which the doubles
show exactly, and they can say which arm answered and what path and headers reached it. No KServe stand-in
runs either: where a step names an InferenceService, the test writes that service's `status.address` itself.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit import get_json, wait_for
from medserve_operator.controllers.abtest import router
from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess, KubectlError

GRAPH = "inferencegraphs.serving.kserve.io"
ISVC = "inferenceservices.serving.kserve.io"


class Arm:
    """A test double of one medserve runtime: issues prediction ids and accepts feedback only for its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.issued: set[str] = set()
        self.refused_feedback = 0  # feedback for an id it did not issue: what a router without stickiness causes
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, path with query, headers)
        self.lock = threading.Lock()
        arm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed ACK

            def do_GET(self) -> None:
                arm.record(self)
                self.reply(200, {"model_name": arm.name, "path": self.path})

            def do_POST(self) -> None:
                arm.record(self)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path == "/predict":
                    self.reply(200, {"prediction_id": arm.issue(), "model_name": arm.name})
                elif self.path == "/batch_predict":
                    predictions = [{"prediction_id": arm.issue(), "model_name": arm.name} for _ in body["requests"]]
                    self.reply(200, {"predictions": predictions, "count": len(predictions)})
                elif self.path == "/feedback":
                    with arm.lock:
                        known = body.get("prediction_id") in arm.issued
                        arm.refused_feedback += not known
                    if known:
                        self.reply(200, {"prediction_id": body["prediction_id"], "model_name": arm.name})
                    else:
                        self.reply(404, {"error": "prediction_id: no such prediction here", "field": "prediction_id",
                                         "code": "unknown_prediction"})
                elif self.path.startswith("/v1/models/") and self.path.endswith(":predict"):
                    model = self.path.removeprefix("/v1/models/").removesuffix(":predict")
                    self.reply(200, {"predictions": [0], "model_name": model, "arm": arm.name})
                elif self.path.startswith("/v2/models/") and self.path.endswith("/infer"):
                    model = self.path.removeprefix("/v2/models/").removesuffix("/infer")
                    self.reply(200, {"model_name": model, "outputs": [], "arm": arm.name})
                else:
                    self.reply(404, {"error": f"no route {self.path}"})

            def reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Upstream", arm.name)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.seen.append((handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}))

    def issue(self) -> str:
        pid = str(uuid.uuid4())
        with self.lock:
            self.issued.add(pid)
        return pid


@pytest.fixture(scope="module")
def arms() -> Iterator[tuple[Arm, Arm]]:
    pair = Arm("champion"), Arm("challenger")
    for arm in pair:
        arm.thread.start()
    yield pair
    for arm in pair:
        arm.server.shutdown()
        arm.server.server_close()


@pytest.fixture(scope="module")
def standin(cluster: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("graph-standin") / "graph-standin.log"
    proc = procs.spawn([sys.executable, "-m", "medserve_sandbox.graph_standin",
                        "--kubeconfig", str(cluster.kubeconfig), "--seed", "7",
                        "--propagate-header", "^X-Api-Key$", "--propagate-header", "Trace"], log_path=log)
    procs.wait_until(lambda: "InferenceGraph stand-in watching" in log.read_text(errors="replace"), proc=proc,
                     log_path=log, what="InferenceGraph stand-in", timeout=60)
    yield log
    assert proc.poll() is None, procs.log_tail(log)  # it never crashed, whatever the tests sent it
    procs.stop(proc, timeout=30)


def splitter(name: str, steps: list[dict[str, Any]], router: str = "Splitter") -> str:
    return json.dumps({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"nodes": {"root": {"routerType": router, "steps": steps}}}})


def graph(cluster: EmulatorProcess, name: str) -> dict[str, Any]:
    return get_json(cluster, GRAPH, name) or {}


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return dict(found[0]) if found else {}


def wait_ready(cluster: EmulatorProcess, name: str, status: str = "True", generation: int = 1) -> dict[str, Any]:
    """Ready with status.observedGeneration == `generation`: the router Deployment's generation (raw_ig.go)."""
    obj: dict[str, Any] = wait_for(
        lambda: (o := graph(cluster, name)) and ready(o).get("status") == status
        and o["status"].get("observedGeneration") == generation and o,
        timeout=15, what=f"InferenceGraph {name} Ready={status} at generation {generation}")
    return obj


def port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_splitter_splits_by_weight_and_forwards_only_the_body(cluster: EmulatorProcess, standin: Path,
                                                              arms: tuple[Arm, Arm]) -> None:
    """pickupRoute (weights), callService (POST to the step's URL: the client's path and query are dropped),
    graphHandler (the step's status and body back, none of its headers; Content-Type set for JSON)."""
    champion, challenger = arms
    cluster.kubectl("apply", "-f", "-", input=splitter("triage-ab", [
        {"name": "champion", "serviceUrl": f"{champion.url}/predict", "weight": 80},
        {"name": "challenger", "serviceUrl": f"{challenger.url}/predict", "weight": 20},
    ]))
    obj = wait_ready(cluster, "triage-ab")
    url = obj["status"]["url"]
    assert url.startswith("http://127.0.0.1:")
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]} == {"Ready": "True", "Stopped": "False"}

    n, p = 1000, 0.8
    counts: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(n):
            response = client.post("/anything/else?verbose=1", json={"patient_id": "MRN-1"})
            assert response.status_code == 200
            assert "X-Upstream" not in response.headers and "X-Medserve-Arm" not in response.headers
            assert response.headers["Content-Type"] == "application/json"
            counts[response.json()["model_name"]] += 1
        band = 4 * math.sqrt(n * p * (1 - p))  # a 4-sigma binomial bound: fails by chance about once in 15000
        assert abs(counts["champion"] - n * p) <= band, counts
        # Whatever the client's method and path, the arm sees POST at the step's URL.
        sizes = len(champion.seen), len(challenger.seen)
        client.get("/feedback?id=1")
        arm = champion if len(champion.seen) > sizes[0] else challenger
        assert arm.seen[-1][:2] == ("POST", "/predict")
        assert client.get("/readyz").status_code == 200  # readyHandler, not a step


def test_only_the_configured_headers_reach_the_arms(cluster: EmulatorProcess, standin: Path,
                                                   arms: tuple[Arm, Arm]) -> None:
    """callService: headers matching router.headers.propagate (here `^X-Api-Key$` and `Trace`) are forwarded,
    Authorization and the rest are not; Content-Type defaults to application/json."""
    url = graph(cluster, "triage-ab")["status"]["url"]
    before = len(arms[0].seen) + len(arms[1].seen)
    httpx.post(url, content=b"{}", headers={"X-Api-Key": "k-1", "X-Trace-Id": "t-1", "Authorization": "Bearer b",
                                            "X-Other": "o", "Content-Type": "text/plain"}, timeout=10)
    seen = [entry for arm in arms for entry in arm.seen]
    assert len(seen) == before + 1
    headers = next(h for arm in arms for (_, _, h) in arm.seen[-1:] if h.get("x-api-key") == "k-1")
    assert headers["x-trace-id"] == "t-1" and headers["content-type"] == "application/json"
    assert "authorization" not in headers and "x-other" not in headers


def test_weight_change_reroutes_on_the_same_port(cluster: EmulatorProcess, standin: Path) -> None:
    """A spec change moves the router Deployment's generation, which becomes observedGeneration."""
    before = graph(cluster, "triage-ab")
    url = before["status"]["url"]
    cluster.kubectl("patch", GRAPH, "triage-ab", "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/nodes/root/steps/0/weight", "value": 0},
        {"op": "replace", "path": "/spec/nodes/root/steps/1/weight", "value": 100},
    ]))
    after = wait_ready(cluster, "triage-ab", generation=before["status"]["observedGeneration"] + 1)
    assert after["status"]["url"] == url
    with httpx.Client(base_url=url, timeout=10) as client:
        assert {client.post("/", json={}).json()["model_name"] for _ in range(100)} == {"challenger"}
        # The router's Deployment (KServe raw_ig.go) runs the new graph, rolled out: what the operator waits for.
        deployment = json.loads(cluster.kubectl("get", "deployments.apps", "triage-ab", "-o", "json").stdout)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] == "--graph-json" and json.loads(args[1])["nodes"]["root"]["steps"][1]["weight"] == 100
        assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"]
        assert deployment["status"]["updatedReplicas"] == deployment["status"]["replicas"] == 1


def test_knative_mode_router_is_a_knative_service_rolled_out_per_change(cluster: EmulatorProcess, standin: Path,
                                                                         arms: tuple[Arm, Arm]) -> None:
    """knative_reconciler.go `createKnativeService`: in Knative mode the router is a Knative Service named after
    the graph, a revision per change of its `--graph-json`; the graph's status copies its conditions and no
    observedGeneration (controller.go `Reconcile`). The operator's `router_rolled_out` reads that Service."""
    champion, challenger = arms
    doc = json.loads(splitter("triage-kn", [
        {"name": "champion", "serviceUrl": f"{champion.url}/predict", "weight": 50},
        {"name": "challenger", "serviceUrl": f"{challenger.url}/predict", "weight": 50},
    ]))
    doc["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "Knative"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def ksvc() -> dict[str, Any]:
        return get_json(cluster, "ksvc", "triage-kn") or {}

    obj = wait_for(lambda: (o := graph(cluster, "triage-kn")) and ready(o).get("status") == "True" and o,
                   timeout=15, what="InferenceGraph triage-kn Ready")
    assert "observedGeneration" not in obj["status"]
    assert {c["type"] for c in obj["status"]["conditions"]} == {"ConfigurationsReady", "Ready", "RoutesReady",
                                                                 "Stopped"}
    first = wait_for(lambda: ksvc().get("status", {}).get("latestReadyRevisionName"), timeout=15,
                     what="the router's Knative Service")
    assert first == "triage-kn-00001"
    cluster.kubectl("patch", GRAPH, "triage-kn", "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/nodes/root/steps/0/weight", "value": 100},
        {"op": "replace", "path": "/spec/nodes/root/steps/1/weight", "value": 0}]))
    service = wait_for(lambda: (k := ksvc()) and k["status"].get("latestReadyRevisionName") == "triage-kn-00002" and k,
                       timeout=15, what="the router's second revision")
    args = service["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(args[1])["nodes"]["root"]["steps"][0]["weight"] == 100
    assert service["spec"]["template"]["metadata"]["labels"]["serving.kserve.io/kind"] == "InferenceGraph"
    assert service["metadata"]["ownerReferences"][0]["kind"] == "InferenceGraph"
    assert router.router_rolled_out(service, released=[]) == (
        True, "all traffic of the router's Knative Service triage-kn goes to revision triage-kn-00002")


def test_weights_not_summing_to_100_are_refused_by_the_webhook(cluster: EmulatorProcess, standin: Path,
                                                               arms: tuple[Arm, Arm]) -> None:
    """inference_graph_validation.go validateInferenceGraphSplitterWeight, answered as a webhook denial."""
    with pytest.raises(KubectlError) as caught:
        cluster.kubectl("apply", "-f", "-", input=splitter("bad-weights", [
            {"name": "a", "serviceUrl": arms[0].url, "weight": 70},
            {"name": "b", "serviceUrl": arms[1].url, "weight": 20}]))
    message = str(caught.value)
    assert 'admission webhook "inferencegraph.kserve-webhook-server.validator" denied the request' in message
    assert "the sum of traffic weights for all routing targets should be 100" in message


def test_unreachable_arm_is_a_500_with_the_routers_error(cluster: EmulatorProcess, standin: Path) -> None:
    """graphHandler + prepareErrorResponse: {"error": "Failed to process request", "cause": ...}, status 500."""
    dead = f"http://127.0.0.1:{procs.free_port()}"
    cluster.kubectl("apply", "-f", "-", input=splitter("dead-end", [{"name": "gone", "serviceUrl": dead,
                                                                     "weight": 100}]))
    url = wait_ready(cluster, "dead-end")["status"]["url"]
    response = httpx.post(f"{url}/predict", json={}, timeout=10)
    assert response.status_code == 500
    assert response.json()["error"] == "Failed to process request" and dead in response.json()["cause"]
    cluster.kubectl("delete", GRAPH, "dead-end")


def isvc_manifest(name: str, env: list[dict[str, str]]) -> str:
    return json.dumps({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "medserve:0.1",
                                                              "args": [f"--model_name={name}-model"],
                                                              "env": env}]}}})


def test_service_name_steps_take_the_protocol_from_the_container_env(cluster: EmulatorProcess, standin: Path,
                                                                     arms: tuple[Arm, Arm]) -> None:
    """GetPredictorEndpoint: status.address.url + PredictPath(GetModelName, GetProtocol): `/v1/models/<m>:predict`,
    or `/v2/models/<m>/infer` with env PROTOCOL=v2; no status is written while the service has no address."""
    cluster.kubectl("apply", "-f", "-", input=splitter("triage-svc", [
        {"name": "one", "serviceName": "triage-v1", "weight": 50},
        {"name": "two", "serviceName": "triage-v2", "weight": 50},
    ]))
    cluster.kubectl("apply", "-f", "-", input=isvc_manifest("triage-v1", []))
    cluster.kubectl("apply", "-f", "-", input=isvc_manifest("triage-v2", [{"name": "PROTOCOL", "value": "v2"}]))
    assert not graph(cluster, "triage-svc").get("status")  # the controller requeues before writing status
    for name, arm in (("triage-v1", arms[0]), ("triage-v2", arms[1])):
        cluster.kubectl("patch", ISVC, name, "--subresource=status", "--type=merge", "-p",
                        json.dumps({"status": {"url": "http://not-used.example", "address": {"url": arm.url}}}))
    url = wait_ready(cluster, "triage-svc")["status"]["url"]
    models: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(60):
            models[client.post("/predict", json={"inputs": []}).json()["model_name"]] += 1
    assert set(models) == {"triage-v1-model", "triage-v2-model"}
    assert arms[0].seen[-1][:2] == ("POST", "/v1/models/triage-v1-model:predict")
    assert arms[1].seen[-1][:2] == ("POST", "/v2/models/triage-v2-model/infer")
    for kind, name in ((GRAPH, "triage-svc"), (ISVC, "triage-v1"), (ISVC, "triage-v2")):
        cluster.kubectl("delete", kind, name)


def test_deleting_the_graph_closes_its_port(cluster: EmulatorProcess, standin: Path) -> None:
    url = graph(cluster, "triage-ab")["status"]["url"]
    assert port_open(url)
    cluster.kubectl("delete", GRAPH, "triage-ab")
    wait_for(lambda: not port_open(url), timeout=10, what=f"{url} to stop listening")
    assert "closing its listener" in standin.read_text()
