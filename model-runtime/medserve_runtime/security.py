"""API keys and per-key rate limits for the runtime.

Keys come from the mounted Secret's `keys.json`: a JSON list of `{"id", "sha256", "permissions"}` where
`sha256` is the hex SHA-256 of the key. Only those digests are ever held in memory; a presented key is
hashed and compared, in constant time, against every stored digest so that neither the comparison nor
the loop reveals which entry (if any) matched. The key id, never the key, is what the rest of the
runtime sees (audit records, metrics, rate-limit buckets).

Nothing here prints or logs a presented key: errors carry only a fixed message and, for 403, the id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

PERMISSIONS = frozenset({"predict", "feedback", "admin"})
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
ENTRY_FIELDS = frozenset({"id", "sha256", "permissions"})


class AuthError(Exception):
    """A request without a usable key (401) or without the permission it needs (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: str
    permissions: frozenset[str]


def _parse_entry(entry: Any, where: str) -> tuple[bytes, ApiKey]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be an object with id, sha256 and permissions")
    if isinstance(entry.get("id"), str):
        where = f"{where} (id {entry['id']!r})"
    missing = sorted(ENTRY_FIELDS - entry.keys())
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(str(k) for k in entry.keys() - ENTRY_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    key_id, digest, permissions = entry["id"], entry["sha256"], entry["permissions"]
    if not isinstance(key_id, str) or not KEY_ID.match(key_id):
        raise ValueError(f"{where}: id must match {KEY_ID.pattern}")
    if not isinstance(digest, str) or not SHA256_HEX.match(digest):
        raise ValueError(f"{where}: sha256 must be 64 hex digits (the SHA-256 of the key, not the key)")
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise ValueError(f"{where}: permissions must be a list of strings")
    bad = sorted(set(permissions) - PERMISSIONS)
    if bad:
        allowed = ", ".join(sorted(PERMISSIONS))
        raise ValueError(f"{where}: unknown permission(s) {', '.join(map(repr, bad))} (allowed: {allowed})")
    return bytes.fromhex(digest), ApiKey(id=key_id, permissions=frozenset(permissions))


def _parse_records(records: Any, source: str) -> tuple[tuple[bytes, ApiKey], ...]:
    if not isinstance(records, list):
        raise ValueError(f"{source}: must be a JSON list of {{id, sha256, permissions}} entries")
    entries: list[tuple[bytes, ApiKey]] = []
    ids: set[str] = set()
    digests: set[bytes] = set()
    for index, record in enumerate(records):
        digest, key = _parse_entry(record, f"{source}: entry {index}")
        if key.id in ids:
            raise ValueError(f"{source}: entry {index}: duplicate id {key.id!r}")
        if digest in digests:
            raise ValueError(f"{source}: entry {index} (id {key.id!r}): same sha256 as an earlier entry")
        ids.add(key.id)
        digests.add(digest)
        entries.append((digest, key))
    return tuple(entries)


class KeyStore:
    """The accepted keys, as (sha256 digest, ApiKey) pairs; swapped atomically on reload."""

    def __init__(self, entries: tuple[tuple[bytes, ApiKey], ...], *, path: Path | None = None) -> None:
        self._entries = entries
        self._path = path

    @classmethod
    def from_file(cls, path: Path) -> Self:
        return cls(cls._load(path), path=path)

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> Self:
        return cls(_parse_records(records, "api keys"))

    @staticmethod
    def _load(path: Path) -> tuple[tuple[bytes, ApiKey], ...]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read API keys file: {exc}") from exc
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        return _parse_records(records, str(path))

    def reload(self) -> None:
        """Re-read the file (Secret rotation). On a bad file this raises and keeps the current keys."""
        if self._path is None:
            raise RuntimeError("this KeyStore was not loaded from a file")
        self._entries = self._load(self._path)

    @property
    def ids(self) -> list[str]:
        return [key.id for _, key in self._entries]

    def _compare(self, presented: bytes, stored: bytes) -> bool:
        return hmac.compare_digest(presented, stored)

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise AuthError(401, "unauthenticated", "missing API key (send `Authorization: Bearer <key>`)")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: ApiKey | None = None
        # No early exit: every stored digest is compared, so timing does not say which entry matched.
        for stored, key in self._entries:
            matched = self._compare(digest, stored)
            found = key if matched else found
        if found is None:
            raise AuthError(401, "unauthenticated", "invalid API key")
        return found

    def authorize(self, presented: str | None, permission: str) -> ApiKey:
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        key = self.authenticate(presented)
        if permission not in key.permissions:
            raise AuthError(403, "forbidden", f"API key {key.id!r} lacks the {permission!r} permission")
        return key


class RateLimiter:
    """A token bucket per key id: `per_minute` tokens of capacity, refilled at `per_minute / 60` per second.

    Buckets are created on first use and never evicted: the ids are the key store's, a small fixed set.
    A cost above the capacity is charged as the full capacity, so a large batch empties the bucket
    instead of being refused forever.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"rate_limit_per_minute must be >= 1, got {per_minute}")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, time of last update)

    def acquire(self, key_id: str, cost: int = 1) -> float | None:
        """Take `cost` tokens; None when allowed, else the whole seconds to wait (>= 1) for Retry-After.

        Cost 0 only looks: None while at least one token is left, nothing is taken.
        """
        need = min(float(max(cost, 1)), self.capacity)
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= need:
                self._buckets[key_id] = (tokens - need if cost else tokens, now)
                return None
            self._buckets[key_id] = (tokens, now)
        return float(max(1, math.ceil((need - tokens) / self.rate)))
