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


def _raising_app() -> FastAPI:
    """Routes raising what KServe's data plane raises (kserve/errors.py, v2_endpoints.py), with the
    handlers the runtime's REST server registers in place of KServe's."""
    from kserve import errors as kserve_errors
    from medserve_runtime.errors import add_exception_handlers, add_kserve_exception_handlers

    app = FastAPI()
    raised: dict[str, Exception] = {
        "invalid": kserve_errors.InvalidInput("Unrecognized request format: MRN-TAG"),
        "missing": kserve_errors.ModelNotFound("MRN-TAG"),
        "notready": kserve_errors.ModelNotReady("MRN-TAG"),
        "versions/1": NotImplementedError("Model versioning not supported yet."),
        "explain": NotImplementedError(),
        "overflow": OverflowError("Python int too large to convert to C long"),
        "bug": RuntimeError("MRN-TAG internal detail"),
    }

    def raiser(exc: Exception) -> Any:
        def route() -> None:
            raise exc
        return route

    for name, exc in raised.items():
        app.add_api_route(f"/x/{name}", raiser(exc), methods=["POST"])
    add_exception_handlers(app)
    add_kserve_exception_handlers(app)
    return app


@pytest.mark.parametrize(("path", "status", "field", "code"), [
    ("/x/invalid", 400, "body", "invalid_input"),
    ("/x/missing", 404, "model_name", "unknown_model"),
    ("/x/notready", 503, None, "not_ready"),
    ("/x/versions/1", 404, "model_version", "version_unavailable"),
    ("/x/explain", 404, "path", "not_supported"),
    ("/x/overflow", 400, "body", "invalid_input"),
    ("/x/bug", 500, None, "internal"),
    ("/nowhere", 404, "path", "not_found"),
])
def test_kserve_errors_answer_in_the_clinical_shape(path: str, status: int, field: str | None, code: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(_raising_app(), raise_server_exceptions=False)
    with caplog.at_level("DEBUG"):
        r = client.post(path)
    assert r.status_code == status, r.text
    assert (r.json()["field"], r.json()["code"]) == (field, code)
    if status != 500:
        assert "MRN-TAG" not in r.json()["error"] or code == "invalid_input"  # the client's own text, to it
        assert not [rec for rec in caplog.records if rec.levelno >= 40]  # a client's mistake is no ERROR
        assert "MRN-TAG" not in caplog.text
    else:  # a bug: logged at ERROR with its traceback (which the installed scrubber redacts)
        assert "MRN-TAG" not in r.text
        assert [rec for rec in caplog.records if rec.levelno >= 40]


def test_v2_value_errors_do_not_echo_the_value() -> None:
    from kserve.protocol.infer_type import InferInput, InferRequest
    from medserve_runtime.wire import WireError, v2_rows

    for data in (["MRN-TAG-7", 1.0], [10 ** 400, 1.0]):
        request = InferRequest("triage", [InferInput("input", [1, 2], "FP32", data=data)])
        with pytest.raises(WireError) as caught:
            v2_rows(request, 2)
        assert (caught.value.field, caught.value.status) == ("inputs[0].data", 400)
        assert "MRN" not in str(caught.value) and "999" not in str(caught.value)
