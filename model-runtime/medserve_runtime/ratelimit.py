"""Rate limits that hold for the deployment as a whole: sliding windows in Redis, shared by every replica.

A key limited to N per minute gets at most N tokens in any 60-second window, across all replicas: each
check is one atomic Lua script (`WINDOW_SCRIPT`) on a sorted set per key, whose members are the grants of
the last minute with their cost, plus a running total. A request costs one token, a batch one token per
record (`request_cost`), so a 1,000-record `/batch_predict` is 1,000 predictions' worth of the limit; a
batch larger than the whole limit is refused outright (it could never fit). The script reads Redis's own
clock (`TIME`), so replicas with skewed clocks share one window.

When Redis cannot be reached, each replica falls back to a local bucket of N / replicas (the replica
count it was told, `--rate_limit_replicas`: the deployment's maximum, so the sum still holds the limit),
reports it (`degraded`, the metric and `/health`) and tries Redis again every RETRY_S, recovering by
itself. The local fallback is security.RateLimiter, the limiter the runtime uses without Redis.

`FailedAuthLimiter` throttles authentication failures per client address the same way (a guessing client
gets 429 before its key is even checked), and counts them so that the audit trail gets one aggregate
record per address and interval instead of one record per guess.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from medserve_runtime.security import RateLimiter

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
RETRY_S = 1.0
REDIS_TIMEOUT_S = 0.25  # a slow Redis must not hold requests: fall back to the local bucket instead
PREFIX = "medserve:rl:"

# KEYS[1]: the window's sorted set (member "<nonce>:<cost>", score: grant time in ms); KEYS[2]: its total.
# ARGV: limit, cost, window in ms, nonce. Returns {1, 0} when granted, else {0, ms until it would fit}.
# Cost 0 only looks: granted while the window is not full, nothing is added.
WINDOW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, cost, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
for _, member in ipairs(expired) do
  total = total - tonumber(string.match(member, ':(%d+)$'))
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window) end
if total < 0 then total = 0 end
if cost == 0 then
  if total < limit then return {1, 0} end
  cost = 1
elseif total + cost <= limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. cost)
  redis.call('SET', KEYS[2], total + cost, 'PX', window * 2)
  redis.call('PEXPIRE', KEYS[1], window * 2)
  return {1, 0}
end
redis.call('SET', KEYS[2], total, 'PX', window * 2)
local need = total + cost - limit
local oldest = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #oldest, 2 do
  need = need - tonumber(string.match(oldest[i], ':(%d+)$'))
  if need <= 0 then return {0, tonumber(oldest[i + 1]) + window - now} end
end
return {0, window}
"""


def request_cost(endpoint: str, body: bytes) -> int:
    """Tokens a request costs: its number of records for batch and KServe inference, else 1.

    A body that does not parse costs 1 (the handler answers it with 422).
    """
    if endpoint not in ("/batch_predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer"):
        return 1
    try:
        data = orjson.loads(body)
        if endpoint == "/batch_predict":
            count = len(data["requests"])
        elif endpoint.startswith("/v1/"):
            count = len(data["instances"])
        else:
            count = int(data["inputs"][0]["shape"][0])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return 1
    return max(1, count) if isinstance(count, int) else 1


@dataclasses.dataclass
class Decision:
    """None `retry_after` = allowed; else the whole seconds to wait. `reason` for a refused over-size cost."""

    retry_after: float | None
    reason: str | None = None


class SharedLimiter:
    """Per-key sliding windows in Redis with the local fallback (see the module docstring)."""

    def __init__(self, url: str | None, per_minute: int, *, replicas: int = 1, prefix: str = PREFIX,
                 window_s: float = WINDOW_S, timeout_s: float = REDIS_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"rate_limit_per_minute must be >= 1, got {per_minute}")
        if replicas < 1:
            raise ValueError(f"rate_limit_replicas must be >= 1, got {replicas}")
        self.url = url
        self.per_minute = per_minute
        # The window's share of the per-minute limit: N/min over a window of W s grants N*W/60 per window.
        self.window_s = window_s
        self.window_limit = max(1, round(per_minute * window_s / 60))
        self.replicas = replicas
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._clock = clock
        # Without Redis this replica's bucket is the whole limit; as Redis's fallback, its share of it.
        self.local = RateLimiter(per_minute if url is None else max(1, per_minute // replicas), clock=clock)
        self._client: aioredis.Redis | None = None
        self._script: Any = None
        self._retry_at = 0.0
        self.degraded = False
        self.fallbacks = 0
        self._lock = threading.Lock()

    def _redis(self) -> Any:
        if self._client is None:
            assert self.url is not None
            self._client = aioredis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                                   socket_connect_timeout=self.timeout_s,
                                                   retry_on_timeout=False)
            self._script = self._client.register_script(WINDOW_SCRIPT)
        return self._script

    async def acquire(self, key: str, cost: int = 1) -> Decision:
        if cost > self.window_limit:
            return Decision(float(math.ceil(self.window_s)),
                            f"this request costs {cost} tokens (one per record) and the key's whole limit is "
                            f"{self.window_limit} per {self.window_s:g} s; send at most {self.window_limit} "
                            "records at a time")
        if self.url is not None and (not self.degraded or self._clock() >= self._retry_at):
            try:
                granted, wait_ms = await self._redis()(
                    keys=[f"{self.prefix}{key}", f"{self.prefix}{key}:total"],
                    args=[self.window_limit, cost, int(self.window_s * 1000), secrets.token_hex(8)])
            except (TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                self._fall_back(exc)
            except redis.exceptions.RedisError as exc:  # e.g. a Redis that lost the script: same fallback
                self._fall_back(exc)
            else:
                if self.degraded:
                    logger.warning("rate limits: Redis %s answers again; limits are shared again", self._where)
                self.degraded = False
                if granted:
                    return Decision(None)
                return Decision(float(max(1, math.ceil(int(wait_ms) / 1000))))
        return Decision(self.local.acquire(key, cost))

    @property
    def _where(self) -> str:
        return (self.url or "").rsplit("@", 1)[-1]

    def _fall_back(self, exc: BaseException) -> None:
        if not self.degraded:
            logger.error("rate limits: Redis %s unreachable (%s); each replica now allows %d/min per key "
                         "(%d/min over %d replicas) until it answers", self._where, type(exc).__name__,
                         self.local.capacity, self.per_minute, self.replicas)
        self.degraded = True
        self.fallbacks += 1
        self._retry_at = self._clock() + RETRY_S
        self._client = None  # a fresh connection pool next time

    def health(self) -> dict[str, Any]:
        return {"backend": "local" if self.url is None else "redis", "degraded": self.url is not None and
                self.degraded, "per_minute": self.per_minute, "local_per_minute": int(self.local.capacity)}


class FailedAuthLimiter:
    """Authentication failures per client address: a limit (shared through Redis when there is one) and
    the counts behind the aggregate audit records (`take_counts`)."""

    def __init__(self, url: str | None, per_minute: int, *, replicas: int = 1, window_s: float = WINDOW_S) -> None:
        self.window = SharedLimiter(url, per_minute, replicas=replicas, prefix=PREFIX + "authfail:",
                                    window_s=window_s)
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    async def blocked(self, address: str) -> float | None:
        """Retry-After seconds when `address` has used up its failures (checked without spending one; a
        refused attempt still counts in the aggregate)."""
        wait = (await self.window.acquire(address, 0)).retry_after
        if wait is not None:
            with self._lock:
                self._counts[address] = self._counts.get(address, 0) + 1
        return wait

    async def failed(self, address: str) -> float | None:
        """Count one failure; Retry-After seconds when this one is over the limit."""
        with self._lock:
            self._counts[address] = self._counts.get(address, 0) + 1
        return (await self.window.acquire(address, 1)).retry_after

    def take_counts(self) -> dict[str, int]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts
