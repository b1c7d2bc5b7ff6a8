"""The sandbox's InferenceGraph stand-in (sandbox/graph_standin.py) as a process against the emulated API.

The graphs are created with kubectl, so the emulator validates each against KServe's own CRD schema, and
the stand-in writes their status through the status subresource as KServe's controller would.

Stand-ins, said where they are used: the arms behind the graph are test doubles of the medserve runtime,
two small HTTP servers in this process that answer `/predict`, `/batch_predict`, `/feedback` (200 only
for an id they issued themselves, 404 otherwise, as the runtime does) and KServe's
`/v1/models/<name>:predict`. A real runtime needs a registered, trained model and seconds to start per
arm; what is tested here is the router's split, its stickiness and its URL contract, which the doubles
show exactly, and they can say which arm answered and which ids each one issued. No KServe stand-in runs
either: where a step names an InferenceService, the test writes that service's `status.url` itself.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import textwrap
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
from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess

GRAPH = "inferencegraphs.serving.kserve.io"
ISVC = "inferenceservices.serving.kserve.io"


class Arm:
    """A test double of one medserve runtime: issues prediction ids and accepts feedback only for its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.issued: set[str] = set()
        self.refused_feedback = 0  # feedback for an id it did not issue: what a router without stickiness causes
        self.seen: list[tuple[str, str, str | None]] = []  # (method, path with query, X-Trace header)
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
            self.seen.append((handler.command, handler.path, handler.headers.get("X-Trace")))

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
                        "--kubeconfig", str(cluster.kubeconfig), "--seed", "7"], log_path=log)
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


def test_splitter_splits_by_weight_and_feedback_reaches_the_predicting_arm(
    cluster: EmulatorProcess, standin: Path, arms: tuple[Arm, Arm],
) -> None:
    champion, challenger = arms
    cluster.kubectl("apply", "-f", "-", input=splitter("triage-ab", [
        {"name": "champion", "serviceUrl": champion.url, "weight": 80},
        {"name": "challenger", "serviceUrl": challenger.url, "weight": 20},
    ]))
    obj = wait_ready(cluster, "triage-ab")
    url = obj["status"]["url"]
    assert url.startswith("http://127.0.0.1:")
    assert ready(obj)["lastTransitionTime"]

    n, p = 1000, 0.8
    made: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(n):
            response = client.post("/predict", json={"patient_id": "MRN-1", "clinical_data": {}})
            assert response.status_code == 200
            assert response.headers["X-Medserve-Arm"] == response.json()["model_name"]
            assert response.headers["X-Upstream"] == response.json()["model_name"]  # upstream headers come back
            made[response.json()["prediction_id"]] = response.headers["X-Medserve-Arm"]
        counts = Counter(made.values())
        band = 4 * math.sqrt(n * p * (1 - p))
        assert abs(counts["champion"] - n * p) <= band, counts

        for pid, arm in made.items():
            response = client.post("/feedback", json={"prediction_id": pid, "outcome": "sepsis"})
            assert (response.status_code, response.headers["X-Medserve-Arm"]) == (200, arm)
        assert champion.refused_feedback == challenger.refused_feedback == 0  # remembered, not found by trying

        batch = client.post("/batch_predict", json={"requests": [{"patient_id": "MRN-2"}] * 3})
        assert batch.status_code == 200
        for prediction in batch.json()["predictions"]:
            response = client.post("/feedback", json={"prediction_id": prediction["prediction_id"]})
            assert (response.status_code, response.json()["model_name"]) == (200, batch.headers["X-Medserve-Arm"])
        assert champion.refused_feedback == challenger.refused_feedback == 0

        # An id the router never saw (made straight at an arm, as after a restart) still finds its arm.
        direct = httpx.post(f"{challenger.url}/predict", json={}).json()["prediction_id"]
        response = client.post("/feedback", json={"prediction_id": direct})
        assert (response.status_code, response.headers["X-Medserve-Arm"]) == (200, "challenger")
        response = client.post("/feedback", json={"prediction_id": "never-made"})
        assert response.status_code == 404 and response.json()["code"] == "unknown_prediction"

        # Same URL contract: path, query and headers pass through, and so does an upstream error as it is.
        response = client.get("/models?verbose=1", headers={"X-Trace": "t-1"})
        arm = champion if response.headers["X-Medserve-Arm"] == "champion" else challenger
        assert arm.seen[-1] == ("GET", "/models?verbose=1", "t-1")
        # The graph root of a serviceUrl step is the URL itself (here the double's "/", which it does not serve).
        response = client.post("/", json={"instances": [[1, 2]]})
        arm = champion if response.headers["X-Medserve-Arm"] == "champion" else challenger
        assert arm.seen[-1][:2] == ("POST", "/")
        assert (response.status_code, response.json()) == (404, {"error": "no route /"})


def test_weight_change_reroutes_on_the_same_port(cluster: EmulatorProcess, standin: Path) -> None:
    before = graph(cluster, "triage-ab")
    url = before["status"]["url"]
    with httpx.Client(base_url=url, timeout=10) as client:
        old = [r.json()["prediction_id"] for r in (client.post("/predict", json={}) for _ in range(20))
               if r.headers["X-Medserve-Arm"] == "champion"]
        assert old
        cluster.kubectl("patch", GRAPH, "triage-ab", "--type=json", "-p", json.dumps([
            {"op": "replace", "path": "/spec/nodes/root/steps/0/weight", "value": 0},
            {"op": "replace", "path": "/spec/nodes/root/steps/1/weight", "value": 100},
        ]))
        after = wait_ready(cluster, "triage-ab", generation=before["metadata"]["generation"] + 1)
        assert after["status"]["url"] == url
        arms_used = {client.post("/predict", json={}).headers["X-Medserve-Arm"] for _ in range(100)}
        assert arms_used == {"challenger"}
        # The router's Deployment (KServe raw_ig.go) runs the new graph, rolled out: what the operator waits for.
        deployment = json.loads(cluster.kubectl("get", "deployments.apps", "triage-ab", "-o", "json").stdout)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] == "--graph-json" and json.loads(args[1]) == after["spec"]
        assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"]
        assert deployment["status"]["updatedReplicas"] == deployment["status"]["replicas"] == 1
        # The champion takes no new traffic, but the feedback on its earlier predictions still reaches it.
        for pid in old:
            response = client.post("/feedback", json={"prediction_id": pid})
            assert (response.status_code, response.headers["X-Medserve-Arm"]) == (200, "champion")


def test_unreachable_arm_is_a_502_naming_the_step(cluster: EmulatorProcess, standin: Path) -> None:
    dead = f"http://127.0.0.1:{procs.free_port()}"
    cluster.kubectl("apply", "-f", "-", input=splitter("dead-end", [{"name": "gone", "serviceUrl": dead,
                                                                     "weight": 100}]))
    url = wait_ready(cluster, "dead-end")["status"]["url"]
    response = httpx.post(f"{url}/predict", json={}, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert "gone" in response.json()["error"]["message"]
    cluster.kubectl("delete", GRAPH, "dead-end")


def test_switch_router_is_unsupported(cluster: EmulatorProcess, standin: Path, arms: tuple[Arm, Arm]) -> None:
    cluster.kubectl("apply", "-f", "-", input=splitter("triage-switch", [
        {"name": "adults", "serviceUrl": arms[0].url, "condition": "[@this].#(age>=18)"},
    ], router="Switch"))
    obj = wait_ready(cluster, "triage-switch", status="False")
    assert ready(obj)["reason"] == "UnsupportedRouter"
    assert "Switch" in ready(obj)["message"]
    response = httpx.post(f"{obj['status']['url']}/predict", json={}, timeout=10)
    assert response.status_code == 503 and response.json()["error"]["code"] == "graph_not_ready"
    cluster.kubectl("delete", GRAPH, "triage-switch")


def test_service_name_steps_follow_the_inference_service_url(cluster: EmulatorProcess, standin: Path,
                                                             arms: tuple[Arm, Arm]) -> None:
    cluster.kubectl("apply", "-f", "-", input=splitter("triage-svc", [
        {"name": "v2", "serviceName": "triage-v2", "weight": 100},
    ]))
    obj = wait_ready(cluster, "triage-svc", status="False")
    assert ready(obj)["reason"] == "ServiceNotReady"
    assert "v2" in ready(obj)["message"] and "triage-v2" in ready(obj)["message"]
    url = obj["status"]["url"]
    response = httpx.post(f"{url}/predict", json={}, timeout=10)
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("application/json")
    assert "ServiceNotReady" in response.json()["error"]["message"]

    cluster.kubectl("apply", "-f", "-", input=textwrap.dedent("""\
        apiVersion: serving.kserve.io/v1beta1
        kind: InferenceService
        metadata: {name: triage-v2, namespace: default}
        spec:
          predictor:
            containers:
            - name: kserve-container
              image: medserve-runtime:0.1.0
              args: ["--model_name=triage-v2"]
        """))
    cluster.kubectl("patch", ISVC, "triage-v2", "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"url": arms[1].url}}))
    obj = wait_ready(cluster, "triage-svc")
    assert obj["status"]["url"] == url
    response = httpx.post(f"{url}/", json={"instances": [[1, 2]]}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"predictions": [0], "model_name": "triage-v2", "arm": "challenger"}
    assert response.headers["X-Medserve-Arm"] == "v2"
    assert arms[1].seen[-1][:2] == ("POST", "/v1/models/triage-v2:predict")
    pid = httpx.post(f"{url}/predict", json={}, timeout=10).json()["prediction_id"]
    assert httpx.post(f"{url}/feedback", json={"prediction_id": pid}, timeout=10).status_code == 200
    cluster.kubectl("delete", ISVC, "triage-v2")
    cluster.kubectl("delete", GRAPH, "triage-svc")


def test_deleting_the_graph_closes_its_port(cluster: EmulatorProcess, standin: Path) -> None:
    url = graph(cluster, "triage-ab")["status"]["url"]
    assert port_open(url)
    cluster.kubectl("delete", GRAPH, "triage-ab")
    wait_for(lambda: not port_open(url), timeout=10, what=f"{url} to stop listening")
    assert "closing its listener" in standin.read_text()
