"""Request and response shapes of the clinical API, and the error body every rejection uses.

`clinical_data` is an object whose keys depend on the model (its feature spec says which it reads,
e.g. age, sex, symptoms, vital_signs.heart_rate); the runtime validates it against the spec, so one
schema serves the triage model and any other. Everything else is fixed here. Unknown top-level fields
are rejected, so that a misspelt `model_version` is an error rather than silently ignored.

Error body (400, 401, 403, 404, 409, 413, 422, 429, 503): {"error": message, "field": dotted path or
null, "code": short machine-readable reason}. Messages never contain a patient identifier.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

MAX_BATCH_RECORDS = 1000



def _printable_utf8(value: str) -> str:
    # The id is echoed in the response; a lone surrogate could not be encoded there, a control
    # character would corrupt whatever displays it.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


Printable = AfterValidator(_printable_utf8)
PatientId = Annotated[str, StringConstraints(min_length=1, max_length=128), Printable]
Version = Annotated[str, StringConstraints(min_length=1, max_length=64), Printable]
Priority = Literal["routine", "urgent", "emergency"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Strict):
    patient_id: PatientId = Field(description="The caller's patient identifier; echoed, hashed elsewhere.")
    clinical_data: dict[str, Any] = Field(description="The patient's findings, as the model's feature spec "
                                                      "reads them (e.g. age, sex, symptoms, vital_signs).")
    model_version: Version | None = Field(default=None, description="Answer only with this version.")
    priority: Priority = Field(default="routine", description="urgent and emergency requests jump the queue.")


class BatchPredictRequest(_Strict):
    requests: list[PredictRequest] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)
    model_version: Version | None = Field(default=None, description="Applies to every record.")


class FeedbackRequest(_Strict):
    prediction_id: Annotated[str, StringConstraints(min_length=1, max_length=128), Printable]
    outcome: Annotated[str, StringConstraints(min_length=1, max_length=128), Printable] = Field(
        description="The observed ground truth: one of the model's labels (e.g. the confirmed diagnosis).")


class ReloadRequest(_Strict):
    model_uri: Annotated[str, StringConstraints(min_length=1, max_length=1024), Printable] | None = Field(
        default=None, description="models:/NAME/VERSION, models:/NAME@ALIAS, or a model directory.")
    version: Version | None = Field(default=None, description="A version of the registered model now served.")


class Prediction(TypedDict):
    primary_diagnosis: str
    confidence_level: Literal["high", "moderate", "low"]
    recommended_actions: list[str]
    probabilities: dict[str, float]


class PredictResponse(TypedDict):
    """One prediction. processing_time is in milliseconds; timestamp is UTC ISO 8601."""

    prediction_id: str
    patient_id: str
    model_name: str
    model_version: str
    prediction: Prediction
    confidence: float
    processing_time: float
    timestamp: str
    clinical_insights: list[str]


class BatchPredictResponse(TypedDict):
    predictions: list[PredictResponse]
    count: int
    model_version: str
    processing_time: float


def error_body(message: str, field: str | None = None, code: str = "invalid") -> dict[str, Any]:
    return {"error": message, "field": field, "code": code}


def first_error(exc: ValidationError, *, prefix: str = "") -> tuple[str, str]:
    """(dotted field path, message) of a pydantic error, without echoing the offending value."""
    err = exc.errors(include_url=False, include_input=False)[0]
    parts: list[str] = []
    for loc in err["loc"]:
        if isinstance(loc, int):
            parts.append(f"[{loc}]")
        else:
            parts.append(f".{loc}" if parts else str(loc))
    path = "".join(parts)
    if prefix:
        path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
    message = str(err["msg"])
    if err["type"] == "extra_forbidden":
        message = "is not a known field"
    elif err["type"] == "missing":
        message = "is required"
    return path or (prefix or "body"), message
