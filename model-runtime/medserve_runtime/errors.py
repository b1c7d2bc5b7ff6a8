"""The runtime's error types, and the one place where each becomes a response.

Shaped like KServe's `RESTServer._add_exception_handlers` (kserve/protocol/rest/server.py), which
registers one FastAPI exception handler per `kserve.errors` type on the app, once. Here each
clinical error type carries its HTTP status and code (the classes below are the table), and
`add_exception_handlers(app)` registers one handler for their base class, once; route handlers
raise instead of building rejections themselves. Every clinical rejection has the body
`schemas.error_body` describes, names the offending field (never its value), and is noted on the
request for its audit record.

KServe's own routes answer in the same shape: `add_kserve_exception_handlers(app)` replaces the
handlers KServe registers when its REST server starts (which answer `{"error"}` and log an ERROR
traceback for every 4xx, kserve/errors.py) with ones that map each `kserve.errors` type to a
status, field and code; FastAPI's and Starlette's own rejections (a body that fails the V2
request model, an unknown route, a wrong method) too. A client's mistake is logged at DEBUG
without its text; only a 5xx is logged at ERROR, with the exception's type and a scrubbed
traceback (phi.PhiScrubFilter), never the request.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from kserve import errors as kserve_errors
from starlette.exceptions import HTTPException

from medserve_runtime.context import current_note
from medserve_runtime.phi import redact_secrets
from medserve_runtime.schemas import error_body

logger = logging.getLogger(__name__)


class ClinicalError(Exception):
    """A request the clinical API rejects: `status`, the offending `field` (dotted path), `code`."""

    status = 422
    code = "invalid"

    def __init__(self, field: str | None, message: str, *, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class InvalidRecord(ClinicalError):
    """A clinical_data record does not fit the feature spec; `field` is the full path to the bad key."""


class VersionUnavailable(ClinicalError):
    """A request asked for a model version other than the one serving."""

    status = 404
    code = "version_unavailable"

    def __init__(self, requested: str, serving: str) -> None:
        super().__init__("model_version", f"version {requested!r} is not served here (serving {serving!r})")


class UnknownPrediction(ClinicalError):
    """Feedback names a prediction this process does not remember."""

    status = 404
    code = "unknown_prediction"


class DuplicateFeedback(ClinicalError):
    """Feedback for this prediction was already recorded (one ground truth per prediction)."""

    status = 409
    code = "duplicate_feedback"


class LoadFailed(ClinicalError):
    """A reload's source cannot be loaded; the running version keeps serving."""

    code = "load_failed"


def json_response(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def _answer(status: int, message: str, field: str | None, code: str,
            headers: dict[str, str] | None = None) -> Response:
    current_note().outcome = code
    response = json_response(error_body(redact_secrets(message), field, code), status_code=status)
    response.headers.update(headers or {})
    return response


async def clinical_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClinicalError)  # registered for ClinicalError only
    if isinstance(exc, LoadFailed):
        # Not the message: it names the source the admin sent (client text); the response has it.
        logger.warning("reload failed (the %s given cannot be loaded); the previous version keeps serving",
                       exc.field)
    return _answer(exc.status, str(exc), exc.field, exc.code)


async def validation_error_handler(_: Request, exc: Exception) -> Response:
    """FastAPI's body validation (KServe's V2 `InferenceRequest` model): 422, the field, no value."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return _answer(422, "body: is not a valid request", "body", "invalid")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _answer(400, "body: is not valid JSON", "body", "invalid_json")
    loc = list(first.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    if loc and isinstance(loc[0], str) and loc[0][:1].isupper():
        loc = loc[1:]  # the body model's class name (an embedded body parameter), not a field
    path = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    field = path or "body"
    message = "is required" if first.get("type") == "missing" else str(first.get("msg", "is invalid"))
    return _answer(422, f"{field}: {message}", field, "invalid")


async def http_error_handler(_: Request, exc: Exception) -> Response:
    """Starlette's 404 (no such route) and 405 (wrong method), and any HTTPException a route raises."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _answer(404, "path: no such route", "path", "not_found")
    if exc.status_code == 405:
        return _answer(405, "method: not allowed on this route", "method", "method_not_allowed",
                       dict(exc.headers or {}))
    return _answer(exc.status_code, str(exc.detail)[:200], None, "rejected", dict(exc.headers or {}))


# kserve.errors type -> (status, field, code, message). Messages are fixed: KServe's name the model or
# version taken from the path, which may be anything a client typed.
_KSERVE: dict[type[Exception], tuple[int, str | None, str, str]] = {
    kserve_errors.ModelNotFound: (404, "model_name", "unknown_model", "model_name: no such model is served here"),
    kserve_errors.ModelNotReady: (503, None, "not_ready", "the model is not ready"),
    kserve_errors.ServerNotReady: (503, None, "not_ready", "the server is not ready"),
    kserve_errors.ServerNotLive: (503, None, "not_live", "the server is not live"),
    kserve_errors.UnsupportedProtocol: (404, "path", "not_supported", "path: this protocol is not served here"),
}


_QUOTED_FIELD = re.compile(r'"([a-z_]{1,40})"')


async def kserve_error_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, kserve_errors.InvalidInput):
        # KServe's decoding errors (a body that is no V1/V2 request); their text is the client's own
        # input echoed back to that client only, and never logged. They quote the field they mean
        # (kserve/utils/utils.py: 'Expected "instances" to be a list').
        message = str(exc)[:300]
        quoted = _QUOTED_FIELD.search(message)
        field = quoted[1] if quoted else "body"
        return _answer(400, f"{field}: {message}", field, "invalid_input")
    if isinstance(exc, NotImplementedError):
        # KServe's "Model versioning not supported yet." (versioned V2 routes) and a model without
        # explain(): a route this server has, for something it does not serve.
        if "/versions/" in request.url.path:
            return _answer(404, "model_version: versions are not addressable here; use "
                                "/v2/models/{name}/infer", "model_version", "version_unavailable")
        return _answer(404, "path: not served by this model", "path", "not_supported")
    if isinstance(exc, kserve_errors.ModelNotReady) and request.url.path.startswith("/v2/repository/"):
        # KServe's base ModelRepository.load loads nothing (kserve/model_repository.py), so its load
        # route answers "not ready" for any name: it is a route this server does not serve.
        return _answer(404, "path: the repository cannot load models here; use POST /models/reload/{name}",
                       "path", "not_supported")
    for kind, (status, field, code, message) in _KSERVE.items():
        if isinstance(exc, kind):
            return _answer(status, message, field, code, {"retry-after": "1"} if status == 503 else None)
    return await internal_error_handler(request, exc)


async def too_large_value_handler(_: Request, exc: Exception) -> Response:
    # Only client input gets these this far (a 400-digit integer, a deeply nested document).
    return _answer(400, "body: a value is too large or too deeply nested", "body", "invalid_input")


async def internal_error_handler(_: Request, exc: Exception) -> Response:
    """A bug or an outage, not the client's doing: 500, logged (scrubbed) with its traceback."""
    logger.error("internal error (%s)", type(exc).__name__, exc_info=exc)
    return _answer(500, "internal error", None, "internal")


def add_exception_handlers(app: FastAPI) -> None:
    """Register the clinical error handler and the shape of FastAPI's and Starlette's rejections."""
    app.add_exception_handler(ClinicalError, clinical_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)


def add_kserve_exception_handlers(app: FastAPI) -> None:
    """What KServe's `RESTServer._add_exception_handlers` registers, each type answered in our shape."""
    for kind in (kserve_errors.InvalidInput, kserve_errors.InferenceError, kserve_errors.ModelNotFound,
                 kserve_errors.ModelNotReady, NotImplementedError, kserve_errors.UnsupportedProtocol,
                 kserve_errors.ServerNotLive, kserve_errors.ServerNotReady):
        app.add_exception_handler(kind, kserve_error_handler)
    app.add_exception_handler(OverflowError, too_large_value_handler)
    app.add_exception_handler(RecursionError, too_large_value_handler)
    app.add_exception_handler(Exception, internal_error_handler)
