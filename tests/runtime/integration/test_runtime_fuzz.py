"""Property-based fuzz of the clinical API over HTTP: whatever the body, the answer is never a 5xx.

Hypothesis generates bodies of three kinds: valid requests with one part replaced by an arbitrary
JSON value (wrong types, extreme numbers, unicode, nesting), arbitrary JSON documents, and raw byte
strings (broken JSON, non-UTF-8, huge numbers, deep nesting). They go to /predict, /batch_predict,
/feedback, /models/reload and the KServe V1 predict route of a real runtime process. Every rejection
must be a 4xx JSON body with an "error" message (and, from the clinical API, the "field").
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_kit import MODEL_NAME, RuntimeProcess, predict_body, trained_model

BODIES = 2200

scalars = (st.none() | st.booleans() | st.integers()
           | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
           | st.sampled_from(["fever", "male", "female", "sepsis", "", "\u0000", "\ud800", "MRN-1", "1e999"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
raw_bytes = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([b"", b"null", b"[]", b"{}", b"NaN", b'{"patient_id": NaN}', b"[" * 5000 + b"]" * 5000,
                     b'{"a":' * 3000 + b"1" + b"}" * 3000, b'{"patient_id": "\\ud800", "clinical_data": {}}',
                     b'{"patient_id": "p", "clinical_data": {"age": 1e999}}',
                     b'{"patient_id": "p", "clinical_data": {"age": ' + b"9" * 5000 + b"}}",
                     b"\xff\xfe{}", b'{"patient_id": "p", "clinical_data": {}, "\\udc80\\u0000": 1}',
                     b'{"patient_id": "p", "patient_id": "q", "clinical_data": {}}']),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` with one part replaced by an arbitrary value, or deleted."""
    doc = json.loads(json.dumps(base))
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return doc


def _valid_batch() -> dict[str, Any]:
    return {"requests": [predict_body("a"), predict_body("b", priority="emergency")]}


ENDPOINTS = {
    "/predict": predict_body("fuzz", priority="urgent", model_version=None),
    "/batch_predict": _valid_batch(),
    "/feedback": {"prediction_id": "0" * 32, "outcome": "sepsis"},
    f"/models/reload/{MODEL_NAME}": {"model_uri": "/nonexistent/model"},
    f"/v1/models/{MODEL_NAME}:predict": {"instances": [predict_body()["clinical_data"]]},
}

requests = st.sampled_from(sorted(ENDPOINTS)).flatmap(lambda path: st.tuples(st.just(path), st.one_of(
    mutated(ENDPOINTS[path]).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda d: json.dumps(d).encode()),
    raw_bytes,
)))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    model: Path = trained_model(tmp_path_factory)
    with RuntimeProcess(tmp_path_factory.mktemp("runtime-fuzz"), model_dir=model, audit=False) as rt:
        yield rt


def test_no_body_gets_a_5xx(runtime: RuntimeProcess) -> None:
    seen: list[int] = []
    fields: set[str] = set()
    failures: list[str] = []
    with runtime.client("admin", headers={"content-type": "application/json"}) as client:

        @settings(max_examples=BODIES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(requests)
        def fuzz(request: tuple[str, bytes]) -> None:
            path, body = request
            r = client.post(path, content=body)
            seen.append(r.status_code)
            if r.status_code >= 500 or r.status_code < 200:
                failures.append(f"{path} {body[:200]!r} -> {r.status_code} {r.text[:200]}")
                return
            if r.status_code >= 400:
                payload = r.json()
                assert isinstance(payload.get("error"), str) and payload["error"], (path, body[:200], r.text)
                if not path.startswith("/v1/") and r.status_code in (400, 404, 409, 422):
                    assert "field" in payload, (path, body[:200], r.text)
                    fields.add(str(payload["field"]))

        fuzz()
    assert failures == [], "\n".join(failures[:10])
    assert len(seen) >= 2000
    # The fuzz must have got past the JSON parser into the feature spec's checks, and to the model.
    assert seen.count(200) >= 5, {code: seen.count(code) for code in set(seen)}
    assert any(f.startswith("clinical_data.vital_signs.") for f in fields), sorted(fields)
    assert httpx.get(f"{runtime.url}/health").status_code == 200


def test_random_valid_bodies_all_succeed(runtime: RuntimeProcess) -> None:
    """Sanity check of the generator's base documents: unmutated they are accepted."""
    rng = random.Random(5)
    with runtime.client("admin") as client:
        for _ in range(5):
            body = predict_body(f"ok-{rng.randrange(10 ** 6)}")
            assert client.post("/predict", json=body).status_code == 200
        assert client.post("/batch_predict", json=_valid_batch()).status_code == 200
