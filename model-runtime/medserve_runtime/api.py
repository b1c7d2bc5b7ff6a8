"""The clinical API: /predict, /batch_predict, /feedback, /health, /models, /models/reload, /metrics.

The routes are added to KServe's own FastAPI application (`kserve.model_server.app`) before
`kserve.ModelServer.start()` adds the V1/V2 routes to it, so that one server on one port answers
both, and so that `/metrics` here (the runtime's registry followed by KServe's default one) takes
precedence over KServe's. Authentication, rate limits, body size and the audit record are the
gate's job (gate.py), which routes exist and what they need is the route table's (routes.py), and
every rejection is an error type of errors.py, answered in one place; handlers validate, answer or
raise, and note what the audit record needs.

Handlers read the raw body and validate it with pydantic themselves rather than through FastAPI's
body parameters: one pass from bytes to model, and every rejection a ClinicalError naming the
offending field's path, never the offending value.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from kserve.errors import ModelNotReady
from prometheus_client import REGISTRY, generate_latest
from pydantic import BaseModel, ValidationError

from medserve_runtime import loader
from medserve_runtime.arms import Peers
from medserve_runtime.context import current_note
from medserve_runtime.errors import ClinicalError, DuplicateFeedback, LoadFailed, UnknownPrediction, json_response
from medserve_runtime.insights import clinical_insights, confidence_level
from medserve_runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from medserve_runtime.model import Classified, ClinicalModel
from medserve_runtime.phi import PhiHasher
from medserve_runtime.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    FeedbackRequest,
    PredictRequest,
    PredictResponse,
    ReloadRequest,
    first_error,
)
from medserve_runtime.stats import PredictionLog, VersionStats

logger = logging.getLogger(__name__)


class ClinicalApi:
    def __init__(self, model: ClinicalModel, *, hasher: PhiHasher, metrics: RuntimeMetrics,
                 stats: VersionStats, predictions: PredictionLog,
                 dependencies: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
                 metrics_token: str | None = None, peers: Peers | None = None) -> None:
        self.model = model
        self.peers = peers
        """The other arms of an A/B test, which take feedback for their own predictions (arms.py)."""
        # (can requests be served, details): the audit trail and the rate limiter, for /health
        self.dependencies = dependencies or (lambda: (True, {}))
        self.metrics_token = metrics_token
        """When set, GET /metrics needs `Authorization: Bearer <it>` (metrics.py says why)."""
        self.hasher = hasher
        self.metrics = metrics
        self.stats = stats
        self.predictions = predictions
        self.started = time.monotonic()

    # --- prediction ------------------------------------------------------------------------------

    async def predict(self, request: Request) -> Response:
        parsed = await _parse(request, PredictRequest)
        note = current_note()
        note.patient_hash = self.hasher.remember(parsed.patient_id)
        note.extra["priority"] = parsed.priority
        result = await self.model.classify([parsed.clinical_data], version=parsed.model_version,
                                           urgent=parsed.priority != "routine", field="clinical_data")
        return json_response(self._response(parsed, result, 0, note.started, _now()))

    async def batch_predict(self, request: Request) -> Response:
        parsed = await _parse(request, BatchPredictRequest)
        version = parsed.model_version
        for i, item in enumerate(parsed.requests):
            if item.model_version is not None and version is not None and item.model_version != version:
                raise ClinicalError(f"requests[{i}].model_version", "differs from the batch's model_version")
            version = version or item.model_version
        note = current_note()
        note.patient_hash = ",".join(self.hasher.remember(item.patient_id) for item in parsed.requests)
        urgent = any(item.priority != "routine" for item in parsed.requests)
        note.extra["records"] = len(parsed.requests)
        result = await self.model.classify([item.clinical_data for item in parsed.requests],
                                           version=version, urgent=urgent,
                                           field="requests[{index}].clinical_data")
        note.extra["prediction_ids"] = ",".join(result.prediction_ids)
        timestamp = _now()
        predictions = [self._response(item, result, i, note.started, timestamp)
                       for i, item in enumerate(parsed.requests)]
        body: BatchPredictResponse = {"predictions": predictions, "count": len(predictions),
                                      "model_version": result.bundle.version,
                                      "processing_time": _ms_since(note.started)}
        return json_response(body)

    def _response(self, req: PredictRequest, result: Classified, i: int, started: float,
                  timestamp: str) -> PredictResponse:
        bundle = result.bundle
        spec = bundle.spec
        label, confidence = result.labels[i], result.confidences[i]
        probs = result.probabilities[i]
        return {
            "prediction_id": result.prediction_ids[i],
            "patient_id": req.patient_id,
            "model_name": self.model.name,
            "model_version": bundle.version,
            "prediction": {
                "primary_diagnosis": label,
                "confidence_level": confidence_level(confidence),  # type: ignore[typeddict-item]
                "recommended_actions": spec.recommended_actions.get(label, []),
                "probabilities": {lab: round(float(p), 6) for lab, p in zip(spec.labels, probs, strict=True)},
            },
            "confidence": round(confidence, 6),
            "processing_time": _ms_since(started),
            "timestamp": timestamp,
            "clinical_insights": clinical_insights(spec, bundle.profile, result.raws[i], probs.tolist()),
        }

    # --- feedback --------------------------------------------------------------------------------

    async def feedback(self, request: Request) -> Response:
        parsed = await _parse(request, FeedbackRequest)
        note = current_note()
        record = self.predictions.find(parsed.prediction_id)
        if record is None and self.peers is not None:
            forwarded = await self.peers.forward_feedback(parsed.prediction_id, request, await request.body())
            if forwarded is not None:
                return forwarded
        if record is None:
            # Not noted for the audit record: an id this process never issued is client text, and the
            # audit log's hash chain would make it impossible to redact.
            raise UnknownPrediction("prediction_id", "no such prediction here (unknown, or older than the "
                                    f"last {self.predictions.capacity} predictions)")
        note.prediction_id = parsed.prediction_id  # one this process issued: a uuid, no client text
        note.model_version = record.version
        labels = self.model.labels_of(record.version)
        if parsed.outcome not in labels:
            raise ClinicalError("outcome", f"must be one of the model's labels: {', '.join(labels)}")
        if not self.predictions.mark_scored(parsed.prediction_id):
            raise DuplicateFeedback("prediction_id", "feedback for this prediction was already recorded")
        correct = parsed.outcome == record.label
        self.metrics.observe_feedback(record.version, correct)
        self.stats.record_feedback(record.version, correct=correct)
        note.extra["correct"] = int(correct)
        return json_response({"prediction_id": parsed.prediction_id, "model_version": record.version,
                               "predicted": record.label, "outcome": parsed.outcome, "correct": correct})

    # --- operations ------------------------------------------------------------------------------

    async def health(self) -> Response:
        try:
            bundle = self.model.serving.bundle
        except ModelNotReady:
            return json_response({"status": "unavailable", "model": self.model.name, "ready": False},
                                  status_code=503)
        usable, details = self.dependencies()
        return json_response({"status": "healthy" if usable else "unavailable", "ready": usable,
                              "model": self.model.name, "model_version": bundle.version,
                              "device": self.model.device, "optimization": self.model.optimization,
                              "uptime_seconds": round(time.monotonic() - self.started, 3), **details},
                             status_code=200 if usable else 503)

    async def models(self) -> Response:
        serving = self.model.serving.bundle
        return json_response({"models": [{
            "name": self.model.name,
            "registered_model": serving.name,
            "serving_version": serving.version,
            "source": serving.source,
            "device": self.model.device,
            "optimization": self.model.optimization,
            "max_batch_size": self.model.max_batch_size,
            "max_latency_ms": self.model.max_latency_ms,
            "versions": self.stats.snapshot(current=serving.version),
        }]})

    async def reload(self, model_name: str, request: Request) -> Response:
        if model_name != self.model.name:
            raise ClinicalError("model_name", f"this server serves {self.model.name!r}", status=404,
                                code="unknown_model")
        parsed = await _parse(request, ReloadRequest)
        if (parsed.model_uri is None) == (parsed.version is None):
            raise ClinicalError("model_uri", "give exactly one of model_uri and version")
        field = "model_uri" if parsed.model_uri is not None else "version"
        if parsed.model_uri is not None:
            source = parsed.model_uri
        elif loader.is_registry_uri(self.model.source):
            source = f"models:/{self.model.serving.bundle.name}/{parsed.version}"
        else:
            raise ClinicalError("version", "this server loads a model directory, not a registry version: "
                                "give model_uri")
        started = time.monotonic()
        try:
            previous, bundle = await self.model.reload(source)
        except loader.ModelLoadError as exc:
            # The field depends on which of the two the request gave; the message names the file.
            raise LoadFailed(field, str(exc)) from exc
        current_note().model_version = bundle.version
        return json_response({"model": self.model.name, "previous_version": previous,
                              "version": bundle.version, "source": bundle.source,
                              "seconds": round(time.monotonic() - started, 3)})

    async def prometheus(self, request: Request) -> Response:
        if self.metrics_token is not None:
            presented = request.headers.get("authorization", "")
            if not hmac.compare_digest(presented.encode(), f"Bearer {self.metrics_token}".encode()):
                raise ClinicalError("authorization", "a valid scrape token is required", status=401,
                                    code="unauthenticated")
        # The runtime's metrics, then KServe's and the process's from the default registry.
        return Response(self.metrics.render() + generate_latest(REGISTRY), media_type=CONTENT_TYPE)


M = TypeVar("M", bound=BaseModel)


async def _parse(request: Request, schema: type[M]) -> M:
    body = await request.body()
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ClinicalError("body", "is not valid JSON", status=400, code="invalid_json") from None
        field, message = first_error(exc)
        raise ClinicalError(field, message) from None


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
