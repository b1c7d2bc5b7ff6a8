"""API keys (load, authenticate, authorize, reload) and the per-key token-bucket rate limiter.

The rate limiter runs on an injected clock, so refill and Retry-After are exact without sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from medserve_runtime.security import ApiKey, AuthError, KeyStore, RateLimiter

CLINICIAN, ADMIN = "msk_test_clinician_1", "msk_test_admin_2"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


RECORDS: list[dict[str, Any]] = [
    {"id": "clinician-app", "sha256": sha(CLINICIAN), "permissions": ["predict", "feedback"]},
    {"id": "ops-admin", "sha256": sha(ADMIN), "permissions": ["predict", "feedback", "admin"]},
    {"id": "reader", "sha256": sha("msk_reader"), "permissions": []},
]


@pytest.fixture
def store() -> KeyStore:
    return KeyStore.from_records(RECORDS)


def test_good_keys_authenticate_to_their_id(store: KeyStore) -> None:
    assert store.authenticate(CLINICIAN) == ApiKey("clinician-app", frozenset({"predict", "feedback"}))
    assert store.authorize(ADMIN, "admin").id == "ops-admin"
    assert store.authorize(CLINICIAN, "feedback").id == "clinician-app"


@pytest.mark.parametrize("presented", [None, ""])
def test_missing_key_is_401(store: KeyStore, presented: str | None) -> None:
    with pytest.raises(AuthError) as err:
        store.authorize(presented, "predict")
    assert (err.value.status, err.value.code) == (401, "unauthenticated")
    assert "missing" in err.value.message


def test_wrong_key_is_401_and_never_echoed(store: KeyStore) -> None:
    wrong = "msk_wrong_key_9f9f9f"
    with pytest.raises(AuthError) as err:
        store.authorize(wrong, "predict")
    assert err.value.status == 401
    assert wrong not in str(err.value) and wrong not in err.value.message
    assert sha(wrong) not in err.value.message


def test_missing_permission_is_403_naming_the_id_not_the_key(store: KeyStore) -> None:
    with pytest.raises(AuthError) as err:
        store.authorize(CLINICIAN, "admin")
    assert (err.value.status, err.value.code) == (403, "forbidden")
    assert "clinician-app" in err.value.message and "admin" in err.value.message
    assert CLINICIAN not in err.value.message
    with pytest.raises(AuthError, match="predict"):
        store.authorize("msk_reader", "predict")


def test_unknown_permission_asked_for_is_a_programming_error(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="'root'"):
        store.authorize(ADMIN, "root")


class CountingKeyStore(KeyStore):
    compares = 0

    def _compare(self, presented: bytes, stored: bytes) -> bool:
        self.compares += 1
        return super()._compare(presented, stored)


@pytest.mark.parametrize("presented", [CLINICIAN, ADMIN, "msk_reader", "msk_nobody"])
def test_every_stored_hash_is_compared_whichever_key_matches(presented: str) -> None:
    store = CountingKeyStore.from_records(RECORDS)
    with contextlib.suppress(AuthError):
        store.authenticate(presented)
    assert store.compares == len(RECORDS)


def test_only_hashes_are_kept(store: KeyStore) -> None:
    assert CLINICIAN not in repr(vars(store))


def write_keys(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_from_file_and_reload_follow_rotation(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.json", RECORDS[:1])
    store = KeyStore.from_file(path)
    assert store.authenticate(CLINICIAN).id == "clinician-app"
    write_keys(path, RECORDS[1:2])
    store.reload()
    assert store.authenticate(ADMIN).id == "ops-admin"
    with pytest.raises(AuthError):
        store.authenticate(CLINICIAN)
    write_keys(path, "not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        store.reload()
    assert store.authenticate(ADMIN).id == "ops-admin"  # a bad rotation keeps the keys in force


def test_reload_without_a_file_is_refused(store: KeyStore) -> None:
    with pytest.raises(RuntimeError):
        store.reload()


def test_the_example_secret_keys_load(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[3]
    secret = yaml.safe_load((root / "examples/01-model-deployment/api-keys-secret.yaml").read_text())
    store = KeyStore.from_file(write_keys(tmp_path / "keys.json", secret["stringData"]["keys.json"]))
    assert store.authorize("msk_demo_admin_2c8e5a1f9d4b", "admin").id == "ops-admin"
    assert store.authorize("msk_demo_clinician_7f3a9c2e4b1d", "predict").id == "clinician-app"


GOOD = {"id": "a", "sha256": sha("k"), "permissions": ["predict"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"keys\.json: not valid JSON"),
        ({"id": "a"}, r"keys\.json: must be a JSON list"),
        (["x"], r"entry 0: must be an object"),
        ([GOOD, {"id": "b", "permissions": []}], r"entry 1 \(id 'b'\): missing field\(s\) sha256"),
        ([{"sha256": sha("k"), "permissions": []}], r"entry 0: missing field\(s\) id"),
        (
            [{**GOOD, "permissions": ["predict", "root"]}],
            r"entry 0 \(id 'a'\): unknown permission\(s\) 'root'",
        ),
        ([{**GOOD, "permissions": "predict"}], r"entry 0 \(id 'a'\): permissions must be a list"),
        ([{**GOOD, "sha256": "msk_plain_key"}], r"entry 0 \(id 'a'\): sha256 must be 64 hex digits"),
        ([{**GOOD, "id": "has space"}], r"entry 0 \(id 'has space'\): id must match"),
        ([{**GOOD, "permision": []}], r"entry 0 \(id 'a'\): unknown field\(s\) permision"),
        ([GOOD, {**GOOD, "sha256": sha("other")}], r"entry 1: duplicate id 'a'"),
        ([GOOD, {**GOOD, "id": "b"}], r"entry 1 \(id 'b'\): same sha256 as an earlier entry"),
    ],
)
def test_bad_key_files_name_the_entry(tmp_path: Path, content: object, message: str) -> None:
    path = write_keys(tmp_path / "keys.json", content)
    with pytest.raises(ValueError, match=message):
        KeyStore.from_file(path)


def test_unreadable_key_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.json: cannot read"):
        KeyStore.from_file(tmp_path / "missing.json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_gives_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock=clock)  # one token a second, 60 of capacity
    assert all(limiter.acquire("a") is None for _ in range(60))
    assert limiter.acquire("a") == 1.0
    assert limiter.acquire("b") is None  # buckets are per key id
    clock.now += 0.5
    assert limiter.acquire("a") == 1.0  # half a token: still whole seconds, at least 1
    clock.now += 0.5
    assert limiter.acquire("a") is None
    assert limiter.acquire("a", cost=5) == 5.0
    clock.now += 5
    assert limiter.acquire("a", cost=5) is None


def test_rate_limiter_refills_to_capacity_only() -> None:
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)  # a token every 10 s
    for _ in range(6):
        assert limiter.acquire("a") is None
    assert limiter.acquire("a") == 10.0
    clock.now += 3600
    assert [limiter.acquire("a") for _ in range(7)] == [None] * 6 + [10.0]


def test_a_cost_above_capacity_drains_the_bucket_instead_of_starving() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock=clock)
    assert limiter.acquire("a", cost=50) is None
    assert limiter.acquire("a") == 6.0
    clock.now += 60
    assert limiter.acquire("a", cost=50) is None


def test_rate_limiter_counts_exactly_under_threads() -> None:
    limiter = RateLimiter(1000, clock=Clock())
    allowed: list[bool] = []

    def hammer() -> None:
        for _ in range(250):
            allowed.append(limiter.acquire("shared") is None)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1000 and len(allowed) == 2000


def test_rate_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate_limit_per_minute"):
        RateLimiter(0)
