"""Rate limits held by three real runtime replicas sharing one real Redis, and Redis stopped and started.

The limit measured is 1200/min over a 3 s sliding window (`--rate_limit_window_s=3`): the window's share
is 60 requests, the same arithmetic as 600/min over 60 s with the test's wall time cut twentyfold. Clients
spread their requests over the three replicas as a Service would; the count of 2xx answers in one window
must not exceed the window's share (+1 for a request on the window's edge).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from medserve_sandbox.redis_server import RedisServer
from runtime_kit import RuntimeProcess, auth, metric_samples, predict_body, trained_model

PER_MINUTE, WINDOW_S = 1200, 3.0
SHARE = int(PER_MINUTE * WINDOW_S / 60)  # 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, list[RuntimeProcess]]]:
    model_dir = trained_model(tmp_path_factory)
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    replicas = [RuntimeProcess(tmp_path_factory.mktemp(f"replica{i}"), model_dir=model_dir, audit=False,
                               args=[f"--redis_url={redis.url}", f"--rate_limit_per_minute={PER_MINUTE}",
                                     f"--rate_limit_window_s={WINDOW_S}", "--rate_limit_replicas=3"])
                for i in range(3)]
    try:
        for replica in replicas:
            replica.start()
        yield redis, replicas
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()


async def blast(urls: list[str], seconds: float, *, key: str = "clinician", clients: int = 9) -> dict[int, int]:
    codes: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(n: int) -> None:
        async with httpx.AsyncClient(headers=auth(key), timeout=30) as http:
            i = n
            while time.monotonic() < deadline:
                r = await http.post(f"{urls[i % len(urls)]}/predict", json=predict_body())
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                i += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    return codes


async def test_three_replicas_hold_one_limit(cluster: tuple[RedisServer, list[RuntimeProcess]]) -> None:
    _, replicas = cluster
    urls = [r.url for r in replicas]
    codes = await blast(urls, WINDOW_S * 0.9)
    print(f"3 replicas, {PER_MINUTE}/min over {WINDOW_S:g} s (share {SHARE}): {codes}")
    assert set(codes) <= {200, 429}, codes
    assert SHARE - 5 <= codes[200] <= SHARE + 1, codes  # not 3 x SHARE: one window for the deployment
    assert codes[429] > 0
    await asyncio.sleep(WINDOW_S)
    again = await blast(urls, WINDOW_S * 0.9)
    assert again[200] <= SHARE + 1, again  # the window slid on and holds again
    health = httpx.get(f"{urls[0]}/health", timeout=10).json()["rate_limit"]
    assert health == {"backend": "redis", "degraded": False, "per_minute": PER_MINUTE,
                      "local_per_minute": PER_MINUTE // 3}


async def test_a_batch_costs_one_token_per_record(cluster: tuple[RedisServer, list[RuntimeProcess]]) -> None:
    _, replicas = cluster
    http = replicas[1].client("admin")
    too_big = http.post("/batch_predict", json={"requests": [predict_body(f"p{i}") for i in range(SHARE + 1)]})
    assert too_big.status_code == 429 and f"costs {SHARE + 1} tokens" in too_big.json()["error"]
    half = {"requests": [predict_body(f"p{i}") for i in range(SHARE // 2 + 5)]}
    assert http.post("/batch_predict", json=half).status_code == 200
    assert replicas[2].client("admin").post("/batch_predict", json=half).status_code == 429  # shared


async def test_redis_stopped_degrades_to_the_local_share_and_recovers(
        cluster: tuple[RedisServer, list[RuntimeProcess]]) -> None:
    redis, replicas = cluster
    urls = [r.url for r in replicas]
    redis.stop()
    try:
        codes = await blast(urls, 2.0, key="predictor")
        assert set(codes) <= {200, 429}, codes  # no 5xx
        health = httpx.get(f"{urls[0]}/health", timeout=10).json()["rate_limit"]
        assert health["degraded"] is True
        metrics = httpx.get(f"{urls[0]}/metrics", timeout=10).text
        assert set(metric_samples(metrics, "medserve_rate_limit_degraded").values()) == {1.0}
    finally:
        redis.start()
    await asyncio.sleep(1.5)
    await blast(urls, 0.5, key="predictor", clients=3)  # the next requests find Redis again
    for url in urls:
        assert httpx.get(f"{url}/health", timeout=10).json()["rate_limit"]["degraded"] is False
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert set(metric_samples(metrics, "medserve_rate_limit_degraded").values()) == {0.0}



def test_prediction_cache_hits_and_holds_no_patient_identifier(
        cluster: tuple[RedisServer, list[RuntimeProcess]], tmp_path_factory: pytest.TempPathFactory) -> None:
    import redis

    server, _ = cluster
    rt = RuntimeProcess(tmp_path_factory.mktemp("cached"), model_dir=trained_model(tmp_path_factory),
                        audit=False, args=[f"--redis_url={server.url}", "--prediction_cache_ttl_s=60"])
    with rt, rt.client() as http:
        first = http.post("/predict", json=predict_body("Zebediah-Quillfeather-8841"))
        second = http.post("/predict", json=predict_body("another-patient-7"))  # same findings
        assert first.status_code == second.status_code == 200
        assert first.json()["prediction"]["probabilities"] == second.json()["prediction"]["probabilities"]
        assert first.json()["prediction_id"] != second.json()["prediction_id"]
        lookups = metric_samples(http.get("/metrics").text, "medserve_prediction_cache_lookups_total")
        assert {dict(k)["result"]: v for k, v in lookups.items()} == {"hit": 1.0, "miss": 1.0}
    client = redis.Redis.from_url(server.url)
    keys = [k for k in client.scan_iter("medserve:pc:*")]
    assert len(keys) == 1 and client.pttl(keys[0]) > 50_000
    stored = keys[0] + client.get(keys[0])  # type: ignore[operator]
    assert b"Zebediah" not in stored and b"patient" not in stored
    client.close()
