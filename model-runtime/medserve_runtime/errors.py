"""The runtime's error types, and the one place where each becomes a response.

Shaped like KServe's `RESTServer._add_exception_handlers` (kserve/protocol/rest/server.py), which
registers one FastAPI exception handler per `kserve.errors` type on the app, once. Here each
clinical error type carries its HTTP status and code (the classes below are the table), and
`add_exception_handlers(app)` registers one handler for their base class, once; route handlers
raise instead of building rejections themselves. Every clinical rejection has the body
`schemas.error_body` describes, names the offending field (never its value), and is noted on the
request for its audit record.

KServe registers its own handlers (InvalidInput 400, ModelNotFound 404, ModelNotReady 503, ...)
on the same app when the server starts; the types here are distinct from those, so neither set
replaces the other. The V1/V2 data plane keeps KServe's error shape: wire.py turns the clinical
errors raised under it into `InvalidInput`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from medserve_runtime.context import current_note
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


async def clinical_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClinicalError)  # registered for ClinicalError only
    current_note().outcome = exc.code
    if isinstance(exc, LoadFailed):
        logger.warning("reload failed: %s", exc.message)
    return json_response(error_body(str(exc), exc.field, exc.code), status_code=exc.status)


def add_exception_handlers(app: FastAPI) -> None:
    """Register the clinical error handler (KServe adds its own for kserve.errors when it starts)."""
    app.add_exception_handler(ClinicalError, clinical_error_handler)
