"""Hot reload of the model runtime under concurrent load, and dynamic int8 quantization.

Real runtime processes serving two models trained by examples/training/train.py with different seeds
(so two different versions); clients keep predicting while an admin swaps versions back and forth.
"""

from __future__ import annotations

import asyncio
import collections

import httpx
import pytest
from runtime_kit import MODEL_NAME, RuntimeProcess, auth, clinical_records, predict_body, trained_model

CLIENTS = 8


async def test_hot_reload_under_load_fails_no_request(tmp_path_factory: pytest.TempPathFactory) -> None:
    first = trained_model(tmp_path_factory, seed=0)
    second = trained_model(tmp_path_factory, seed=1, epochs=10)
    rt = RuntimeProcess(tmp_path_factory.mktemp("runtime-reload"), model_dir=first,
                        args=["--max_batch_size=8", "--max_latency_ms=2"])
    rt.start()
    try:
        async with httpx.AsyncClient(base_url=rt.url, timeout=60) as http:
            versions: collections.Counter[str] = collections.Counter()
            failures: list[str] = []
            stop = asyncio.Event()

            async def keep_predicting(i: int) -> int:
                sent = 0
                while not stop.is_set() or sent < 20:
                    r = await http.post("/predict", json=predict_body(f"load-{i}"), headers=auth("clinician"))
                    sent += 1
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")
                    else:
                        versions[r.json()["model_version"]] += 1
                return sent

            load = [asyncio.create_task(keep_predicting(i)) for i in range(CLIENTS)]
            swaps = []
            for target in (second, first, second):
                await asyncio.sleep(0.3)
                r = await http.post(f"/models/reload/{MODEL_NAME}", json={"model_uri": str(target)},
                                    headers=auth("admin"))
                assert r.status_code == 200, r.text
                swaps.append(r.json())
            await asyncio.sleep(0.3)
            stop.set()
            sent = sum(await asyncio.gather(*load))

            assert failures == []
            assert len(versions) == 2 and sum(versions.values()) == sent
            assert [s["version"] for s in swaps] == [swaps[0]["version"], swaps[0]["previous_version"],
                                                     swaps[0]["version"]]
            assert swaps[0]["version"] != swaps[0]["previous_version"]
            models = (await http.get("/models", headers=auth("clinician"))).json()["models"][0]
            assert models["serving_version"] == swaps[-1]["version"]
            assert {v["version"] for v in models["versions"]} == set(versions)
            assert sum(v["request_count"] for v in models["versions"]) == sent
    finally:
        rt.stop()
    records = [r for r in rt.audit_records() if r["endpoint"] == "/predict"]
    assert len(records) == sent and all(r["status"] == 200 for r in records)


def test_reload_rejections(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = trained_model(tmp_path_factory, seed=0)
    with RuntimeProcess(tmp_path_factory.mktemp("runtime-reload-bad"), model_dir=model) as rt, \
            rt.client("admin") as admin:
        missing = admin.post(f"/models/reload/{MODEL_NAME}", json={"model_uri": str(model / "nope")})
        assert missing.status_code == 422 and missing.json()["field"] == "model_uri"
        version_only = admin.post(f"/models/reload/{MODEL_NAME}", json={"version": "3"})
        assert version_only.status_code == 422 and version_only.json()["field"] == "version"
        both = admin.post(f"/models/reload/{MODEL_NAME}", json={"version": "3", "model_uri": str(model)})
        assert both.status_code == 422
        other = admin.post("/models/reload/another-model", json={"model_uri": str(model)})
        assert other.status_code == 404 and other.json()["field"] == "model_name"
        # After the failed attempts the original version still serves.
        assert admin.post("/predict", json=predict_body()).status_code == 200


def test_not_ready_answers_503_until_reloaded(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = trained_model(tmp_path_factory, seed=0)
    with RuntimeProcess(tmp_path_factory.mktemp("runtime-unload"), model_dir=model) as rt, \
            rt.client("admin") as admin:
        assert admin.post(f"/v2/repository/models/{MODEL_NAME}/unload").status_code == 200
        down = admin.post("/predict", json=predict_body())
        assert down.status_code == 503 and down.json()["code"] == "not_ready"
        assert down.headers["retry-after"] == "1"
        assert httpx.get(f"{rt.url}/health").status_code == 503
        assert admin.post(f"/models/reload/{MODEL_NAME}", json={"model_uri": str(model)}).status_code == 200
        assert admin.post("/predict", json=predict_body()).status_code == 200
        v1 = admin.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": clinical_records(1)})
        assert v1.status_code == 200
        assert httpx.get(f"{rt.url}/health").json()["status"] == "healthy"
    assert [r["status"] for r in rt.audit_records()] == [200, 503, 200, 200, 200]


def test_dynamic_int8_serves_and_agrees_with_fp32(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = trained_model(tmp_path_factory, seed=0)
    records = clinical_records(300, seed=21)
    body = {"requests": [{"patient_id": f"q{i}", "clinical_data": rec} for i, rec in enumerate(records)]}
    labels: dict[str, list[str]] = {}
    for optimization in ("none", "dynamic-int8"):
        with RuntimeProcess(tmp_path_factory.mktemp(f"runtime-{optimization}"), model_dir=model,
                            args=[f"--optimization={optimization}"]) as rt, rt.client("clinician") as c:
            assert c.get("/health").json()["optimization"] == optimization
            r = c.post("/batch_predict", json=body)
            assert r.status_code == 200, r.text
            labels[optimization] = [p["prediction"]["primary_diagnosis"] for p in r.json()["predictions"]]
            assert httpx.get(f"{rt.url}/metrics").text.count(f'optimization="{optimization}"') == 1
    agree = sum(a == b for a, b in zip(labels["none"], labels["dynamic-int8"], strict=True)) / len(records)
    assert agree >= 0.95, f"int8 agrees with fp32 on only {agree:.1%} of records"
