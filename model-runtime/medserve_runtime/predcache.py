"""The optional prediction cache in Redis (`--prediction_cache_ttl_s` > 0 with `--redis_url`; off by default).

A key is `medserve:pc:<model>:<version>:<sha256 of the encoded feature vector>`: the model's input after
the feature spec has encoded it, never the request, so a patient identifier (or any free text) can be in
neither the key nor the value; the value is the model's output row (class probabilities) as JSON. The
same findings under the same model version give the same answer, so a hit skips the forward pass; a new
version changes every key. Entries expire after the TTL. Redis being unreachable is a miss, never an
error: the cache can only make a request faster.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

import orjson
import redis.asyncio as aioredis
import redis.exceptions

logger = logging.getLogger(__name__)

PREFIX = "medserve:pc:"
TIMEOUT_S = 0.1
RETRY_S = 1.0


def cache_key(model: str, version: str, features: bytes) -> str:
    return f"{PREFIX}{model}:{version}:{hashlib.sha256(features).hexdigest()}"


class PredictionCache:
    """get/put rows of probabilities by (model, version, encoded features); `hits`/`misses` count lookups."""

    def __init__(self, url: str, model: str, *, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 on_lookup: Callable[[bool], None] | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"prediction cache TTL must be > 0 s, got {ttl_s}")
        self.model = model
        self.ttl_ms = int(ttl_s * 1000)
        self._client = aioredis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        self._clock = clock
        self._retry_at = 0.0
        self._on_lookup = on_lookup
        self.hits = 0
        self.misses = 0

    async def get(self, version: str, rows: Sequence[bytes]) -> list[list[float] | None]:
        found: list[list[float] | None] = [None] * len(rows)
        if rows and self._clock() >= self._retry_at:
            try:
                values = await self._client.mget([cache_key(self.model, version, row) for row in rows])
                found = [orjson.loads(value) if value is not None else None for value in values]
            except (redis.exceptions.RedisError, OSError, orjson.JSONDecodeError) as exc:
                self._unavailable(exc)
        for value in found:
            hit = value is not None
            self.hits += hit
            self.misses += not hit
            if self._on_lookup is not None:
                self._on_lookup(hit)
        return found

    async def put(self, version: str, rows: Sequence[bytes], outputs: Sequence[Sequence[float]]) -> None:
        if not rows or self._clock() < self._retry_at:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for row, output in zip(rows, outputs, strict=True):
                    pipe.set(cache_key(self.model, version, row), orjson.dumps(list(output)), px=self.ttl_ms)
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            self._unavailable(exc)

    def _unavailable(self, exc: BaseException) -> None:
        if self._clock() >= self._retry_at:
            logger.warning("prediction cache: Redis unavailable (%s); answering without the cache",
                           type(exc).__name__)
        self._retry_at = self._clock() + RETRY_S

    async def aclose(self) -> None:
        await self._client.aclose()
