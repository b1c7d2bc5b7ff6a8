"""Fixtures of the runtime's unit tests."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from medserve_runtime import routes
from medserve_runtime.api import ClinicalApi
from medserve_runtime.errors import add_exception_handlers
from medserve_runtime.metrics import RuntimeMetrics
from medserve_runtime.model import ClinicalModel
from medserve_runtime.phi import PhiHasher
from medserve_runtime.stats import PredictionLog, VersionStats


@pytest.fixture(scope="session")
def clinical_app() -> FastAPI:
    """A FastAPI app with the clinical routes and error handler, as server.serve adds them, over a
    model that was never loaded: for requests turned away before they would need it."""
    metrics, stats, predictions = RuntimeMetrics("triage"), VersionStats(), PredictionLog(10)
    model = ClinicalModel("triage", "/nonexistent", device="cpu", optimization="none", max_batch_size=4,
                          max_latency_ms=1.0, metrics=metrics, stats=stats, predictions=predictions)
    app = FastAPI()
    routes.register(app, ClinicalApi(model, hasher=PhiHasher(b"k"), metrics=metrics, stats=stats,
                                     predictions=predictions))
    add_exception_handlers(app)
    return app
