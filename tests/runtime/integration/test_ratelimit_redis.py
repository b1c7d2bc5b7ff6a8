"""Shared rate limits and the prediction cache against a real Redis server: one window for all replicas,
batch cost, failed-authentication limits, the local fallback when Redis stops, and recovery.

Three `SharedLimiter`s stand for three replicas (each its own connection pool, as in three pods); the
runtime processes sharing one Redis are tested in test_audit_faults.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from medserve_runtime.predcache import PredictionCache
from medserve_runtime.ratelimit import FailedAuthLimiter, SharedLimiter, request_cost
from medserve_sandbox.redis_server import RedisServer


async def test_three_replicas_share_one_window(redis_server: RedisServer) -> None:
    # 1200/min over a 2 s window: 40 tokens per window, the same arithmetic as 1200/min over 60 s. The
    # Redis timeout is the default's 0.25 s x 20: this measures the shared window, and a loaded CI machine
    # can take longer than 0.25 s to open the first connections (the fallback has its own tests below).
    replicas = [SharedLimiter(redis_server.url, 1200, replicas=3, prefix="t1:", window_s=2.0, timeout_s=5.0)
                for _ in range(3)]
    assert replicas[0].window_limit == 40
    granted = 0
    deadline = time.monotonic() + 1.5  # inside one window
    while time.monotonic() < deadline:
        decisions = await asyncio.gather(*(r.acquire("clinician") for r in replicas for _ in range(5)))
        granted += sum(d.retry_after is None for d in decisions)
    assert granted == 40  # exactly the window's share, not 3 x 40
    refused = await replicas[1].acquire("clinician")
    assert refused.retry_after is not None and refused.retry_after >= 1
    assert (await replicas[2].acquire("another-key")).retry_after is None  # per key
    await asyncio.sleep(2.1)
    assert (await replicas[0].acquire("clinician")).retry_after is None  # the window slid on
    assert not any(r.degraded for r in replicas)


async def test_a_batch_costs_one_token_per_record(redis_server: RedisServer) -> None:
    limiter = SharedLimiter(redis_server.url, 60, prefix="t2:")
    assert (await limiter.acquire("k", 50)).retry_after is None
    assert (await limiter.acquire("k", 11)).retry_after is not None
    assert (await limiter.acquire("k", 10)).retry_after is None
    too_big = await limiter.acquire("k2", 61)
    assert too_big.retry_after is not None and "costs 61 tokens" in (too_big.reason or "")
    assert request_cost("/batch_predict", b'{"requests": [{}, {}, {}]}') == 3
    assert request_cost("/v1/models/{name}:predict", b'{"instances": [[1], [2]]}') == 2
    assert request_cost("/v2/models/{name}/infer", b'{"inputs": [{"shape": [7, 3]}]}') == 7
    assert request_cost("/batch_predict", b"not json") == 1
    assert request_cost("/predict", b'{"requests": [1, 2]}') == 1


async def test_failed_authentication_is_limited_per_address_and_counted(redis_server: RedisServer) -> None:
    limiter = FailedAuthLimiter(redis_server.url, 5, replicas=2)
    results = [await limiter.failed("10.0.0.7") for _ in range(8)]
    assert [r is None for r in results] == [True] * 5 + [False] * 3
    assert await limiter.blocked("10.0.0.7") is not None
    assert await limiter.blocked("10.0.0.8") is None
    assert limiter.take_counts() == {"10.0.0.7": 9}  # the refused look counts as an attempt too
    assert limiter.take_counts() == {}


async def test_redis_down_falls_back_to_the_local_share_and_recovers(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        limiter = SharedLimiter(redis.url, 120, replicas=4)
        assert (await limiter.acquire("k")).retry_after is None and not limiter.degraded
        redis.stop()
        allowed = [(await limiter.acquire("k")).retry_after is None for _ in range(40)]
        assert limiter.degraded and limiter.health()["degraded"] is True
        assert sum(allowed) == 30  # 120/min over 4 replicas: a full local bucket of 30
        redis.start()
        await asyncio.sleep(1.1)  # RETRY_S
        assert (await limiter.acquire("k")).retry_after is None
        assert not limiter.degraded and limiter.health()["degraded"] is False
    finally:
        redis.stop()


async def test_prediction_cache_hits_misses_ttl_and_outage(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        cache = PredictionCache(redis.url, "triage", ttl_s=0.5)
        rows = [b"\x00\x01", b"\x02\x03"]
        assert await cache.get("3", rows) == [None, None]
        await cache.put("3", rows, [[0.1, 0.9], [0.8, 0.2]])
        assert await cache.get("3", rows) == [[0.1, 0.9], [0.8, 0.2]]
        assert await cache.get("4", rows) == [None, None]  # another version, another key
        assert (cache.hits, cache.misses) == (2, 4)
        await asyncio.sleep(0.6)
        assert await cache.get("3", rows[:1]) == [None]  # expired
        redis.stop()
        assert await cache.get("3", rows) == [None, None]  # unreachable: a miss, not an error
        await cache.put("3", rows, [[0.1, 0.9], [0.8, 0.2]])
        await cache.aclose()
    finally:
        redis.stop()


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rate_limit_replicas must be >= 1"):
        SharedLimiter(None, 10, replicas=0)
    with pytest.raises(ValueError, match="TTL must be > 0"):
        PredictionCache("redis://127.0.0.1:1", "m", ttl_s=0)
