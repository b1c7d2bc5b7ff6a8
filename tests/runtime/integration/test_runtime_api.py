"""The model runtime over HTTP: every endpoint, validation, auth, permissions, rate limit, size limit,
metrics, the audit log (one record per request, even under concurrency) and PHI handling.

Real `python -m medserve_runtime` processes serving a model trained by examples/training/train.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from medserve_contract.modelspec import load_reference_profile
from medserve_runtime.audit import verify
from runtime_kit import (
    KEYS,
    MODEL_NAME,
    RuntimeProcess,
    auth,
    clinical_records,
    metric_samples,
    predict_body,
    trained_model,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model(tmp_path_factory)


@pytest.fixture(scope="module")
def runtime(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    with RuntimeProcess(tmp_path_factory.mktemp("runtime-api"), model_dir=model_dir,
                        args=["--max_request_bytes=20000", "--rate_limit_per_minute=100000"]) as rt:
        yield rt


@pytest.fixture()
def client(runtime: RuntimeProcess) -> Iterator[httpx.Client]:
    with runtime.client("clinician") as c:
        yield c


def test_predict_answers_in_the_service_shape(client: httpx.Client) -> None:
    r = client.post("/predict", json=predict_body("patient-shape", priority="urgent"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"prediction_id", "patient_id", "model_version", "prediction", "confidence",
                         "processing_time", "timestamp", "clinical_insights"}
    assert body["patient_id"] == "patient-shape"
    assert body["model_version"].startswith("local-")
    prediction = body["prediction"]
    assert prediction["primary_diagnosis"] in prediction["probabilities"]
    assert prediction["confidence_level"] in ("high", "moderate", "low")
    assert prediction["recommended_actions"]
    assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-3
    assert body["confidence"] == max(prediction["probabilities"].values())
    assert body["processing_time"] > 0
    assert body["timestamp"].endswith("Z")
    assert isinstance(body["clinical_insights"], list)


def test_batch_predict_answers_each_record(client: httpx.Client) -> None:
    records = clinical_records(5)
    r = client.post("/batch_predict", json={"requests": [{"patient_id": f"p{i}", "clinical_data": rec}
                                                         for i, rec in enumerate(records)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 5
    assert [p["patient_id"] for p in body["predictions"]] == [f"p{i}" for i in range(5)]
    assert len({p["prediction_id"] for p in body["predictions"]}) == 5


def test_kserve_v1_and_v2_protocols(runtime: RuntimeProcess, client: httpx.Client) -> None:
    records = clinical_records(3)
    v1 = client.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": records})
    assert v1.status_code == 200, v1.text
    predictions = v1.json()["predictions"]
    assert len(predictions) == 3 and all("label" in p and "prediction_id" in p for p in predictions)

    meta = httpx.get(f"{runtime.url}/v2/models/{MODEL_NAME}").json()
    dim = meta["inputs"][0]["shape"][1]
    v2 = client.post(f"/v2/models/{MODEL_NAME}/infer",
                     json={"inputs": [{"name": "input", "shape": [2, dim], "datatype": "FP32",
                                       "data": [0.0] * (2 * dim)}]})
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 4]
    assert len(outputs["label"]["data"]) == 2

    bad = client.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": [{"age": "old"}]})
    # The clinical shape and status on KServe's route too: the record is a clinical_data object.
    assert bad.status_code == 422 and bad.json()["field"] == "instances[0].age"
    assert client.post("/v1/models/nosuchmodel:predict", json={"instances": records}).status_code == 404


def test_health_and_readiness_need_no_key(runtime: RuntimeProcess) -> None:
    for path in ("/health", "/v2/health/live", "/v2/health/ready", f"/v1/models/{MODEL_NAME}",
                 f"/v2/models/{MODEL_NAME}/ready", "/metrics"):
        assert httpx.get(runtime.url + path).status_code == 200, path
    health = httpx.get(runtime.url + "/health").json()
    assert health["status"] == "healthy" and health["model"] == MODEL_NAME


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    (b"[]", 422, "body"),
    ({"clinical_data": {}}, 422, "patient_id"),
    ({"patient_id": "", "clinical_data": {}}, 422, "patient_id"),
    ({"patient_id": "p\u0007", "clinical_data": {}}, 422, "patient_id"),
    ({"patient_id": "p"}, 422, "clinical_data"),
    ({"patient_id": "p", "clinical_data": []}, 422, "clinical_data"),
    ({**predict_body(), "priority": "whenever"}, 422, "priority"),
    ({**predict_body(), "unexpected": 1}, 422, "unexpected"),
    ({**predict_body(), "model_version": "999"}, 404, "model_version"),
    ({"patient_id": "p", "clinical_data": {"age": 40}}, 422, "clinical_data.sex"),
    ({"patient_id": "p", "clinical_data": {**predict_body()["clinical_data"], "age": "forty"}}, 422,
     "clinical_data.age"),
    ({"patient_id": "p", "clinical_data": {**predict_body()["clinical_data"], "age": 400}}, 422,
     "clinical_data.age"),
    ({"patient_id": "p", "clinical_data": {**predict_body()["clinical_data"], "sex": "x"}}, 422,
     "clinical_data.sex"),
    ({"patient_id": "p", "clinical_data": {**predict_body()["clinical_data"], "symptoms": ["fever", 3]}}, 422,
     "clinical_data.symptoms[1]"),
    ({"patient_id": "p", "clinical_data": {**predict_body()["clinical_data"], "vital_signs": 5}}, 422,
     "clinical_data.vital_signs"),
])
def test_bad_input_gets_a_4xx_naming_the_field(client: httpx.Client, body: Any, status: int,
                                               field: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert field in r.json()["error"]


def test_batch_errors_name_the_record(client: httpx.Client) -> None:
    bad = {"requests": [predict_body("a"), {"patient_id": "b", "clinical_data": {"age": 30}}]}
    r = client.post("/batch_predict", json=bad)
    assert r.status_code == 422 and r.json()["field"] == "requests[1].clinical_data.sex"
    assert client.post("/batch_predict", json={"requests": []}).json()["field"] == "requests"


def test_request_size_limit(runtime: RuntimeProcess, client: httpx.Client) -> None:
    big = predict_body(notes="x" * 30000)
    assert client.post("/predict", json=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no content-length: the limit applies to the bytes received
        yield b'{"patient_id": "p", "clinical_data": {"padding": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}}'

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "too_large"


def test_authentication_and_permissions(runtime: RuntimeProcess) -> None:
    url = runtime.url
    body = predict_body()
    missing = httpx.post(f"{url}/predict", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{url}/predict", json=body, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    x_api_key = httpx.post(f"{url}/predict", json=body, headers={"X-API-Key": KEYS["clinician"][0]})
    assert x_api_key.status_code == 200
    assert httpx.post(f"{url}/predict", json=body, headers=auth("auditor")).status_code == 403
    v1 = httpx.post(f"{url}/v1/models/{MODEL_NAME}:predict", json={"instances": []}, headers=auth("auditor"))
    assert v1.status_code == 403
    feedback = {"prediction_id": "x", "outcome": "sepsis"}
    assert httpx.post(f"{url}/feedback", json=feedback, headers=auth("predictor")).status_code == 403
    reload_body = {"model_uri": "/nonexistent"}
    assert httpx.post(f"{url}/models/reload/{MODEL_NAME}", json=reload_body,
                      headers=auth("clinician")).status_code == 403
    assert httpx.post(f"{url}/v2/repository/models/{MODEL_NAME}/unload",
                      headers=auth("clinician")).status_code == 403
    assert httpx.get(f"{url}/models").status_code == 401
    assert httpx.get(f"{url}/models", headers=auth("auditor")).status_code == 200


def test_rate_limit_per_key(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with RuntimeProcess(tmp_path_factory.mktemp("runtime-ratelimit"), model_dir=model_dir,
                        args=["--rate_limit_per_minute=3"]) as rt, \
            rt.client("clinician") as clinician, rt.client("admin") as admin:
        codes = [clinician.post("/predict", json=predict_body()).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = clinician.post("/predict", json=predict_body())
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert admin.post("/predict", json=predict_body()).status_code == 200  # its own bucket
    statuses = [r["status"] for r in rt.audit_records()]  # read after the stop flushed the log
    assert statuses.count(429) == 2


def test_feedback_scores_the_version_that_predicted(runtime: RuntimeProcess, client: httpx.Client) -> None:
    made = [client.post("/predict", json=predict_body(f"fb-{i}")).json() for i in range(3)]
    outcomes = [made[0]["prediction"]["primary_diagnosis"], made[1]["prediction"]["primary_diagnosis"],
                next(lab for lab in made[2]["prediction"]["probabilities"]
                     if lab != made[2]["prediction"]["primary_diagnosis"])]
    for m, outcome in zip(made, outcomes, strict=True):
        r = client.post("/feedback", json={"prediction_id": m["prediction_id"], "outcome": outcome})
        assert r.status_code == 200, r.text
        assert r.json()["correct"] == (outcome == m["prediction"]["primary_diagnosis"])
    again = client.post("/feedback", json={"prediction_id": made[0]["prediction_id"], "outcome": outcomes[0]})
    assert again.status_code == 409
    unknown = client.post("/feedback", json={"prediction_id": "0" * 32, "outcome": "sepsis"})
    assert unknown.status_code == 404 and unknown.json()["field"] == "prediction_id"
    fresh = client.post("/predict", json=predict_body()).json()
    wrong_label = client.post("/feedback", json={"prediction_id": fresh["prediction_id"], "outcome": "flu"})
    assert wrong_label.status_code == 422 and wrong_label.json()["field"] == "outcome"

    version = made[0]["model_version"]
    correct = frozenset({("model", MODEL_NAME), ("version", version), ("outcome", "correct")})
    incorrect = frozenset({("model", MODEL_NAME), ("version", version), ("outcome", "incorrect")})

    def published() -> dict[frozenset[tuple[str, str]], float]:
        return metric_samples(httpx.get(f"{runtime.url}/metrics").text, "medserve_feedback_total")

    # Feedback is published in cohorts of --metrics_min_cohort (10): top the three up until one is out.
    for i in range(10):
        if published()[incorrect] >= 1:
            break
        extra = client.post("/predict", json=predict_body(f"fb-extra-{i}")).json()
        assert client.post("/feedback", json={"prediction_id": extra["prediction_id"],
                                              "outcome": extra["prediction"]["primary_diagnosis"]}).status_code == 200
    feedback = published()
    assert feedback[correct] >= 2 and feedback[incorrect] >= 1
    assert (feedback[correct] + feedback[incorrect]) % 10 == 0  # whole cohorts only
    stats = client.get("/models").json()["models"][0]
    assert stats["name"] == MODEL_NAME and stats["serving_version"] == version
    serving = stats["versions"][0]
    assert serving["request_count"] >= 4
    assert serving["average_latency_ms"] > 0 and serving["throughput_rps"] > 0
    assert serving["feedback_count"] >= 3 and 0 < serving["accuracy"] < 1


def test_metrics_carry_the_reference_profile_edges(runtime: RuntimeProcess, model_dir: Path,
                                                   client: httpx.Client) -> None:
    records = clinical_records(20, seed=11)
    r = client.post("/batch_predict", json={"requests": [{"patient_id": f"m{i}", "clinical_data": rec}
                                                         for i, rec in enumerate(records)]})
    assert r.status_code == 200
    version = r.json()["model_version"]
    text = httpx.get(f"{runtime.url}/metrics").text
    assert 'le="0.0001"' in text  # sub-millisecond latency buckets
    latency = metric_samples(text, "medserve_request_duration_seconds_count")
    assert any(dict(labels).get("endpoint") == "/batch_predict" for labels in latency)

    profile = load_reference_profile(model_dir)
    age_edges = profile.feature("age").bin_edges  # type: ignore[union-attr]
    buckets = metric_samples(text, "medserve_feature_value_bucket")
    ages = {dict(labels)["le"]: value for labels, value in buckets.items()
            if dict(labels)["feature"] == "age" and dict(labels)["version"] == version}
    assert [float(le) for le in ages if le != "+Inf"] == sorted(age_edges)
    assert ages["+Inf"] >= 20
    categories = metric_samples(text, "medserve_feature_category_total")
    sexes = {dict(labels)["category"] for labels in categories if dict(labels)["feature"] == "sex"}
    assert sexes == {"female", "male"}
    predictions = metric_samples(text, "medserve_predictions_total")
    assert sum(v for labels, v in predictions.items() if dict(labels)["version"] == version) >= 20
    assert metric_samples(text, "medserve_prediction_confidence_count")


async def test_one_audit_record_per_request_under_concurrency(
        model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Failed authentications limited high enough that the 50 unauthenticated ones all get their 401.
    rt = RuntimeProcess(tmp_path_factory.mktemp("runtime-audit"), model_dir=model_dir,
                        args=["--auth_failures_per_minute=1000"])
    rt.start()
    sent = 0
    try:
        kinds = [("clinician", predict_body()), (None, predict_body()), ("auditor", predict_body()),
                 ("clinician", {"patient_id": "p", "clinical_data": {"age": "x"}})]
        async with httpx.AsyncClient(base_url=rt.url, timeout=60) as http:
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> int:
                key_id, body = kinds[i % len(kinds)]
                async with sem:
                    r = await http.post("/predict", json=body, headers=auth(key_id) if key_id else {})
                    return r.status_code

            codes = await asyncio.gather(*(one(i) for i in range(200)))
            sent = len(codes)
            # Probes and scrapes are not audited; they must not change the count.
            await http.get("/health")
            await http.get("/metrics")
        assert sorted(set(codes)) == [200, 401, 403, 422]
    finally:
        assert rt.stop() == 0  # SIGTERM: a clean exit, and the audit log flushed
    every = rt.audit_records(None)
    assert [r["seq"] for r in every] == list(range(1, len(every) + 1))
    assert verify(rt.audit_path).ok  # type: ignore[arg-type]
    records = rt.audit_records()
    # Failed authentications are audited in aggregate (one record per client address and interval).
    failures = sum(r["count"] for r in every if r["event"] == "auth_failures")
    assert len(records) + failures == sent
    by_status = {s: sum(1 for r in records if r["status"] == s) for s in (200, 403, 422)}
    assert by_status == {200: 50, 403: 50, 422: 50} and failures == 50
    ok = [r for r in records if r["status"] == 200]
    assert all(r["key_id"] == "clinician" and r["patient_hash"].startswith("pt_") and r["prediction_id"]
               and r["model_version"] for r in ok)
    assert all(r["key_id"] == "auditor" for r in records if r["status"] == 403)


def test_patient_identifiers_never_leave_the_response(model_dir: Path,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    distinctive = ["Zebediah-Quillfeather-8841", "MRN-55501234", "patient 4471 Ottoline Marchbanks",
                   "p.okonkwo@example-hospital.org"]
    rt = RuntimeProcess(tmp_path_factory.mktemp("runtime-phi"), model_dir=model_dir)
    rt.start()
    try:
        with rt.client("clinician") as c:
            for pid in distinctive:
                ok = c.post("/predict", json=predict_body(pid))
                assert ok.status_code == 200 and ok.json()["patient_id"] == pid  # only here
                bad = c.post("/predict", json={"patient_id": pid, "clinical_data": {"age": "x"}})
                assert bad.status_code == 422 and pid not in bad.text
                both = {"requests": [predict_body(pid), predict_body("other")]}
                batch = c.post("/batch_predict", json=both)
                assert batch.status_code == 200
                c.post("/predict", json={"patient_id": pid, "clinical_data": {}, "model_version": pid[:60]})
                c.post("/predict", json={"patient_id": pid, "clinical_data": {}, "surprise": pid})
            metrics = httpx.get(f"{rt.url}/metrics").text
    finally:
        rt.stop()
    audit_text = rt.audit_path.read_text()  # type: ignore[union-attr]
    log = rt.log()
    assert "/predict" in log  # the access log was written, so there was something to leak into
    for pid in distinctive:
        for where, text in (("server log", log), ("/metrics", metrics), ("audit log", audit_text)):
            assert pid not in text, f"{pid!r} found in the {where}"
    assert all(r["patient_hash"] is None or r["patient_hash"].startswith("pt_")
               for r in rt.audit_records())


def test_gpu_without_cuda_fails_clearly(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; the failure path cannot be shown")
    rt = RuntimeProcess(tmp_path_factory.mktemp("runtime-gpu"), model_dir=model_dir, args=["--device=gpu"])
    with pytest.raises(Exception, match="exited with code 2"):
        rt.start(timeout=60)
    assert "CUDA is not available" in rt.log()
