"""Clinical errors answered once, by the handler errors.add_exception_handlers registers: the real
clinical routes on a real FastAPI app, called in-process through Starlette's TestClient (no model is
loaded: every request here is turned away before it would need one)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from medserve_runtime.context import RequestNote, close_note, open_note
from medserve_runtime.errors import ClinicalError

NOTES: list[RequestNote] = []


@pytest.fixture(scope="module")
def client(clinical_app: FastAPI) -> TestClient:
    async def noting(scope: Any, receive: Any, send: Any) -> None:
        # What the gate does around every protected request: open the note handlers write to.
        note, token = open_note()
        NOTES.append(note)
        try:
            await clinical_app(scope, receive, send)
        finally:
            close_note(token)

    return TestClient(noting, raise_server_exceptions=True)


@pytest.mark.parametrize(("path", "body", "status", "field", "code"), [
    ("/predict", b"{not json", 400, "body", "invalid_json"),
    ("/predict", b'{"patient_id": "p", "clinical_data": {}, "extra": 1}', 422, "extra", "invalid"),
    ("/batch_predict", b'{"requests": []}', 422, "requests", "invalid"),
    ("/batch_predict", b'{"model_version": "1", "requests": [{"patient_id": "p", "clinical_data": {}, '
                       b'"model_version": "2"}]}', 422, "requests[0].model_version", "invalid"),
    ("/feedback", b'{"prediction_id": "nope", "outcome": "flu"}', 404, "prediction_id", "unknown_prediction"),
    ("/models/reload/other", b"{}", 404, "model_name", "unknown_model"),
    ("/models/reload/triage", b"{}", 422, "model_uri", "invalid"),
])
def test_rejections(client: TestClient, path: str, body: bytes, status: int, field: str, code: str) -> None:
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    payload = r.json()
    assert (payload["field"], payload["code"]) == (field, code)
    assert payload["error"].startswith(f"{field}: ")
    assert NOTES[-1].outcome == code  # what the request's audit record will say


def test_the_error_names_the_field_not_the_value() -> None:
    exc = ClinicalError("clinical_data.age", "must be a number, not a string")
    assert (exc.status, exc.code, str(exc)) == (422, "invalid", "clinical_data.age: must be a number, not a string")
