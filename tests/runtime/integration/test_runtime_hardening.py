"""A security reviewer's black-box checks against a real `medserve-runtime` process over loopback.

- Tagged identifiers (every one contains `ZQX`) are injected at every point a client controls: the
  path, the query string, headers, body values, V1 records, V2 tensors and ids, /feedback's
  prediction_id; then the server log, every audit record and /metrics are grepped for them, for
  the X-Forwarded-For address, for the API key and for the MLflow password.
- Every route answers bad input with `{error, field, code}` and a 4xx, never a 5xx.
- A differential /metrics scrape around one /predict reveals nothing about that patient.
- Slow and idle clients on raw loopback sockets are cut off within the configured timeouts while
  the service stays available; oversized headers get 431.
- Outages: a reload against a registry that accepts connections and never answers fails within
  bounded time, without its password; start-up against it gives up within --startup_timeout_s.
- schemathesis generates requests from the runtime's own OpenAPI document: no 5xx.

The "registry" that never answers is a plain listening socket on loopback (what a black-holed
MLflow looks like to its client); there is nothing to emulate.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from runtime_kit import KEYS, MODEL_NAME, RuntimeProcess, auth, predict_body, trained_model

TAG = "ZQX"
MLFLOW_PASSWORD = "pa55ZQXw0rd"
FORWARDED = "10.77.77.77"
SCRAPE_TOKEN = "scrape-token-0c41"


class BlackHole:
    """A TCP listener that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model(tmp_path_factory)


LIMIT_ARGS = ["--header_timeout_s=2", "--body_timeout_s=2", "--timeout-keep-alive=2", "--max_connections=40",
              "--registry_timeout_s=2", "--max_header_bytes=8192", "--max_headers=50"]


@pytest.fixture(scope="module")
def runtime(model_dir: Path, blackhole: BlackHole,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    env = {"MLFLOW_TRACKING_URI": f"http://medserve:{MLFLOW_PASSWORD}@127.0.0.1:{blackhole.port}"}
    with RuntimeProcess(tmp_path_factory.mktemp("runtime-hardening"), model_dir=model_dir, env=env,
                        args=LIMIT_ARGS) as rt:
        yield rt


def _leaks(text: str) -> list[str]:
    secrets = [TAG, FORWARDED, MLFLOW_PASSWORD, *(key for key, _ in KEYS.values())]
    return [s for s in secrets if s.lower() in text.lower()]


def _assert_shape(r: httpx.Response, status: int | tuple[int, ...], field: str | None = "*") -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.request.method, r.request.url.path, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "field", "code"}, body
    if field != "*":
        assert body["field"] == field, body


def _v2(data: list[Any], dim: int = 21, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, dim], "data": data}], **extra}


def test_tagged_identifiers_reach_no_log_audit_record_or_metric(runtime: RuntimeProcess) -> None:
    headers = {**auth("admin"), "X-Forwarded-For": FORWARDED, "X-Real-IP": FORWARDED,
               "X-Request-Id": f"{TAG}-rid", "User-Agent": f"{TAG}-agent", "Referer": f"http://{TAG}/",
               "X-Patient": f"{TAG}-hdr", "Cookie": f"session={TAG}-cookie"}
    statuses: list[int] = []
    with httpx.Client(base_url=runtime.url, headers=headers, timeout=30) as c:
        def send(method: str, path: str, **kw: Any) -> httpx.Response:
            r = c.request(method, path, **kw)
            statuses.append(r.status_code)
            return r

        ok = send("POST", f"/predict?patient={TAG}-q1&api_key={KEYS['admin'][0]}",
                  json=predict_body(f"MRN-{TAG}-body"))
        assert ok.status_code == 200, ok.text
        prediction_id = ok.json()["prediction_id"]
        for path in (f"/predict/{TAG}-p1", f"/v1/models/{TAG}-p2:predict", f"/v2/models/{TAG}-p3/infer",
                     f"/models/reload/{TAG}-p4", f"/{TAG}%2Fp5", f"/feedback/{TAG}.p6&x=1"):
            _assert_shape(send("POST", path, json={}), (404, 405, 422))
        for path in (f"/v2/models/{TAG}-p7", f"/v1/models/{TAG}-p8", f"/health?{TAG}=q2",
                     f"/metrics?x={TAG}-q3", f"/v2/models/{MODEL_NAME}/versions/{TAG}-p9"):
            assert send("GET", path).status_code < 500
        bad_bodies: list[tuple[str, dict[str, Any], str]] = [
            ("/predict", {"patient_id": f"{TAG}-b1", "clinical_data": {"age": f"{TAG}-b2"}}, "clinical_data.age"),
            ("/predict", {"patient_id": f"{TAG}-b3", "clinical_data": {}, f"{TAG}-key": 1}, f"{TAG}-key"),
            ("/predict", {"patient_id": f"{TAG}-b4", "clinical_data": {
                **predict_body()["clinical_data"], "symptoms": [f"{TAG}-s"]}}, "clinical_data.symptoms[0]"),
            ("/batch_predict", {"requests": [predict_body(f"{TAG}-b5"), {"patient_id": 5}]}, "requests[1].patient_id"),
            (f"/v1/models/{MODEL_NAME}:predict", {"instances": [{"age": f"{TAG}-v1"}]}, "instances[0].age"),
            (f"/v2/models/{MODEL_NAME}/infer", _v2([f"{TAG}-v2", *[1.0] * 20], id=f"{TAG}-v3"), "inputs[0].data"),
            (f"/v2/models/{MODEL_NAME}/infer", _v2([{"x": f"{TAG}-v4"}, *[1.0] * 20]), "inputs[0].data"),
            ("/feedback", {"prediction_id": f"{TAG}-f1", "outcome": "sepsis"}, "prediction_id"),
            ("/feedback", {"prediction_id": prediction_id, "outcome": f"{TAG}-f2"}, "outcome"),
            ("/models/reload/triage", {"model_uri": f"/nonexistent/{TAG}-dir"}, "model_uri"),
        ]
        for path, body, field in bad_bodies:
            r = send("POST", path, json=body)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
            assert r.json()["field"] == field or field.startswith(TAG), (path, r.json())
        # What another requester can read never carries them.
        for path in ("/health", "/models", "/metrics", "/v2/models", f"/v2/models/{MODEL_NAME}"):
            other = httpx.get(runtime.url + path, headers=auth("clinician"), timeout=30)
            assert not _leaks(other.text), (path, _leaks(other.text))
        assert ok.headers["x-request-id"] != f"{TAG}-rid"  # the runtime's own id, not the client's
    assert max(statuses) < 500, statuses
    time.sleep(0.5)  # the audit writer flushes per record; give the log a moment
    metrics = httpx.get(f"{runtime.url}/metrics", timeout=30).text
    audit = runtime.audit_path.read_text() if runtime.audit_path else ""
    for where, text in (("server log", runtime.log()), ("audit log", audit), ("/metrics", metrics)):
        assert not _leaks(text), (where, _leaks(text),
                                  [line for line in text.splitlines() if _leaks(line)][:5])
    log = runtime.log()
    assert "access POST /predict 200" in log and "key=admin" in log
    assert "Traceback" not in log and " ERROR " not in log


def test_every_route_answers_bad_input_with_a_named_4xx(runtime: RuntimeProcess) -> None:
    c = runtime.client("admin")
    huge = int("9" * 400)
    cases: list[tuple[str, str, Any, int | tuple[int, ...], str | None]] = [
        ("POST", f"/v2/models/{MODEL_NAME}/infer", _v2([huge, *[1.0] * 20]), 400, "inputs[0].data"),
        ("POST", f"/v2/models/{MODEL_NAME}/infer", {"inputs": "x"}, 422, "inputs"),
        ("POST", f"/v2/models/{MODEL_NAME}/versions/1/infer", _v2([1.0] * 21), 404, "model_version"),
        ("POST", f"/v1/models/{MODEL_NAME}:explain", {"instances": [{}]}, 404, "path"),
        ("POST", f"/v1/models/{MODEL_NAME}:predict", {"instances": "x"}, 400, "instances"),
        ("POST", f"/v1/models/{MODEL_NAME}:predict", {"instances": [{"age": huge}]}, (400, 422), "*"),
        ("POST", "/v1/models/other:predict", {"instances": [{}]}, 404, "model_name"),
        ("PUT", "/predict", None, 405, "method"),
        ("DELETE", "/feedback", None, 405, "method"),
        ("GET", "/nowhere", None, 404, "path"),
        ("POST", "/predict", None, 400, "body"),
        ("POST", "/v2/repository/models/anything/load", None, 404, "path"),
    ]
    for method, path, body, status, field in cases:
        r = c.request(method, path, json=body) if body is not None else c.request(method, path)
        _assert_shape(r, status, field)
    raw = c.post(f"/v2/models/{MODEL_NAME}/infer", content=b'{"inputs": [{"data": [' + b"9" * 400 + b"]}]}",
                 headers={"content-type": "application/json"})
    assert 400 <= raw.status_code < 500, raw.text


def test_a_registry_that_never_answers_fails_a_reload_quickly_and_without_its_password(
        runtime: RuntimeProcess) -> None:
    started = time.monotonic()
    r = runtime.client("admin").post("/models/reload/triage", json={"model_uri": "models:/triage/1"})
    elapsed = time.monotonic() - started
    _assert_shape(r, 422, "model_uri")
    assert MLFLOW_PASSWORD not in r.text
    # Bounded by --registry_timeout_s=2 and one retry; MLflow's defaults would hold it for minutes.
    assert elapsed < 30, elapsed
    assert runtime.client("clinician").post("/predict", json=predict_body()).status_code == 200


def test_start_up_against_an_unreachable_registry_gives_up_within_the_configured_time(
        blackhole: BlackHole, tmp_path: Path) -> None:
    rt = RuntimeProcess(tmp_path, model_uri="models:/triage/1",
                        env={"MLFLOW_TRACKING_URI": f"http://medserve:{MLFLOW_PASSWORD}@127.0.0.1:{blackhole.port}"},
                        args=["--startup_timeout_s=5", "--registry_timeout_s=30"])
    from medserve_sandbox import procs

    started = time.monotonic()
    proc = procs.spawn(rt.cmd, log_path=rt.log_path, env=rt.env)
    code = proc.wait(timeout=60)
    elapsed = time.monotonic() - started
    assert code == 2
    log = rt.log()
    assert "cannot start" in log and "did not load within 5 s" in log, log[-2000:]
    assert MLFLOW_PASSWORD not in log
    assert elapsed < 45, elapsed  # torch import and the 5 s; the registry timeout alone is 30 s a try


def test_a_differential_metrics_scrape_reveals_no_patient(model_dir: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "scrape-token"
    token_file.write_text(SCRAPE_TOKEN + "\n")
    with RuntimeProcess(tmp_path / "rt", model_dir=model_dir,
                        args=["--metrics_min_cohort=10", f"--metrics_token_file={token_file}"]) as rt:
        assert httpx.get(f"{rt.url}/metrics").status_code == 401
        scrape_headers = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}

        def per_record() -> dict[str, float]:
            text = httpx.get(f"{rt.url}/metrics", headers=scrape_headers).text
            assert "medserve_feature_value_sum" not in text
            return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith(("medserve_feature", "medserve_predictions_total",
                                        "medserve_prediction_confidence"))}

        c = rt.client("clinician")
        before = per_record()
        body = predict_body("patient-diff")
        body["clinical_data"]["age"] = 93
        assert c.post("/predict", json=body).status_code == 200
        assert per_record() == before  # nothing of that patient: not age, sex, symptoms nor class
        for i in range(9):
            assert c.post("/predict", json=predict_body(f"p{i}")).status_code == 200
        after = per_record()
        assert after != before  # a cohort of 10 is published
        changed = {k for k in after if after[k] != before.get(k)}
        assert any("medserve_feature_value_bucket" in k for k in changed)
        assert any(k.startswith("medserve_predictions_total") for k in changed)


def _recv_all(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `limit` seconds), and when it closed."""
    sock.settimeout(limit)
    started, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - started


def _connect(runtime: RuntimeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", runtime.port), timeout=10)


def test_idle_and_slow_clients_are_cut_off_while_service_stays_up(runtime: RuntimeProcess) -> None:
    idle = [_connect(runtime) for _ in range(30)]
    assert httpx.get(f"{runtime.url}/health", timeout=10).status_code == 200  # while they wait
    for sock in idle:
        data, _ = _recv_all(sock, 10)
        assert data.startswith(b"HTTP/1.1 408"), data[:80]
        sock.close()

    trickle = _connect(runtime)
    trickle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    trickle.settimeout(0.3)
    started, answer = time.monotonic(), None
    while answer is None and time.monotonic() - started < 10:  # one header byte every 0.3 s
        try:
            trickle.sendall(b"X")
            answer = trickle.recv(1024)  # the 408, or b"" once closed
        except TimeoutError:
            continue
        except OSError:
            answer = b""
    assert answer is not None and time.monotonic() - started < 8
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:80]
    trickle.close()

    body = _connect(runtime)
    key = KEYS["clinician"][0]
    body.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"patient_id\":".encode())
    data, elapsed = _recv_all(body, 10)
    assert data.startswith(b"HTTP/1.1 408") and elapsed < 8, data[:120]
    body.close()

    keep_alive = _connect(runtime)
    keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data, elapsed = _recv_all(keep_alive, 10)
    assert data.startswith(b"HTTP/1.1 200") and elapsed < 8  # closed after --timeout-keep-alive=2
    keep_alive.close()
    assert httpx.get(f"{runtime.url}/health", timeout=10).status_code == 200


def test_connections_over_the_limit_are_refused_and_service_recovers(runtime: RuntimeProcess) -> None:
    held = [_connect(runtime) for _ in range(45)]  # --max_connections=40
    refused = 0
    for sock in held:
        sock.settimeout(0.5)
        try:
            if sock.recv(64).startswith(b"HTTP/1.1 503"):
                refused += 1
        except TimeoutError:
            pass
    assert refused >= 5
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{runtime.url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("request_bytes", [
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(80)) + b"\r\n",
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["one-large-header", "too-many-headers", "long-url"])
def test_oversized_headers_get_431(runtime: RuntimeProcess, request_bytes: bytes) -> None:
    sock = _connect(runtime)
    with contextlib.suppress(OSError):  # the server may close before it has read everything
        sock.sendall(request_bytes)
    data, _ = _recv_all(sock, 10)
    sock.close()
    assert data.startswith(b"HTTP/1.1 431"), data[:80]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["field"] == "headers"


def test_eight_mebibytes_of_header_are_not_read(runtime: RuntimeProcess) -> None:
    sock = _connect(runtime)
    sent = 0
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(128):
            sock.sendall(b"a" * 65536)
            sent += 65536
    except OSError:
        pass  # cut off: exactly what should happen
    data, _ = _recv_all(sock, 10)
    sock.close()
    assert data.startswith(b"HTTP/1.1 431"), data[:80]
    assert httpx.get(f"{runtime.url}/health", timeout=10).status_code == 200


def test_schemathesis_finds_no_server_error(runtime: RuntimeProcess) -> None:
    """Requests generated from the runtime's own OpenAPI document (FastAPI's, KServe's routes and the
    clinical ones): no 5xx. Bounded: a few examples per operation, about a minute in all."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{runtime.url}/openapi.json", headers=auth("admin"), timeout=30)
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=runtime.url, headers=auth("admin"), timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code} {response.text[:200]}")

        given(strategy)(run)()
    assert calls > 50
    assert not failures, failures[:10]


def test_every_audit_record_carries_the_request_id_of_its_access_line(runtime: RuntimeProcess) -> None:
    sent = [runtime.client("clinician").post("/predict", json=predict_body("rid-1")),
            runtime.client("clinician").post("/predict", json={"patient_id": "rid-2", "clinical_data": {}}),
            runtime.client("auditor").post("/predict", json=predict_body("rid-3")),
            runtime.client("admin").post("/models/reload/other", json={})]
    ids = {r.headers["x-request-id"]: r.status_code for r in sent}
    assert [*ids.values()] == [200, 422, 403, 404] and all(len(i) == 16 for i in ids)
    records = {r["request_id"]: r for r in runtime.audit_records() if r["request_id"] in ids}
    assert {i: r["status"] for i, r in records.items()} == ids
    deadline = time.monotonic() + 10  # the access line is written once the answer has gone
    while not all(f"request_id={i}" in runtime.log() for i in ids):
        assert time.monotonic() < deadline, runtime.log()[-2000:]
        time.sleep(0.1)
    for request_id, status in ids.items():
        line = next(line for line in runtime.log().splitlines() if f"request_id={request_id}" in line)
        assert f" {status} " in line, line


def _downloads(pid: int) -> list[Any]:
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "medserve_runtime.registry" in " ".join(p.cmdline())]


def test_a_reload_past_its_deadline_or_at_shutdown_kills_its_registry_download(
        blackhole: BlackHole, model_dir: Path, tmp_path: Path) -> None:
    """The registry never answers and MLflow would wait 60 s a call: the download (a child process) is
    killed when the request deadline cancels the reload, and when the server is stopped mid-reload."""
    import psutil

    env = {"MLFLOW_TRACKING_URI": f"http://medserve:{MLFLOW_PASSWORD}@127.0.0.1:{blackhole.port}"}
    rt = RuntimeProcess(tmp_path / "deadline", model_dir=model_dir, env=env,
                        args=["--registry_timeout_s=60", "--request_deadline_s=4"]).start()
    try:
        assert rt.proc is not None
        started = time.monotonic()
        r = rt.client("admin").post("/models/reload/triage", json={"model_uri": "models:/triage/1"})
        assert r.status_code == 503 and r.json()["code"] == "deadline_exceeded", r.text
        assert time.monotonic() - started < 30  # the 4 s deadline, not MLflow's 60 s (slack for a loaded machine)
        assert _downloads(rt.proc.pid) == []  # killed with the cancelled request, not left running
        assert rt.client("clinician").post("/predict", json=predict_body()).status_code == 200
        # The reload lock was released: the next reload starts (and is cut off) as promptly.
        r = rt.client("admin").post("/models/reload/triage", json={"model_uri": "models:/triage/1"})
        assert r.status_code == 503, r.text
    finally:
        rt.stop()

    rt = RuntimeProcess(tmp_path / "shutdown", model_dir=model_dir, env=env,
                        args=["--registry_timeout_s=60", "--request_deadline_s=120"]).start()
    assert rt.proc is not None
    answers: list[httpx.Response | Exception] = []

    def reload() -> None:
        try:
            answers.append(httpx.post(f"{rt.url}/models/reload/triage", headers=auth("admin"), timeout=60,
                                      json={"model_uri": "models:/triage/1"}))
        except httpx.HTTPError as exc:
            answers.append(exc)

    thread = threading.Thread(target=reload)
    thread.start()
    deadline = time.monotonic() + 30
    while not (children := _downloads(rt.proc.pid)):
        assert time.monotonic() < deadline, "no registry download started"
        time.sleep(0.1)
    started = time.monotonic()
    assert rt.stop() == 0
    assert time.monotonic() - started < 40  # not the 60 s (and retries) MLflow would wait
    thread.join(30)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    assert answers and (not isinstance(answers[0], httpx.Response) or answers[0].status_code != 200)
    assert MLFLOW_PASSWORD not in rt.log()


def test_the_h11_implementation_is_refused_with_the_reason(model_dir: Path, tmp_path: Path) -> None:
    """The limits live in the httptools protocol; a server on h11 would serve without them, so it does not
    start (argument checking happens before torch is imported: this is quick)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "medserve_runtime", f"--model_dir={model_dir}", "--http=h11"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "'h11' is not served" in done.stderr and "httptools" in done.stderr, done.stderr
