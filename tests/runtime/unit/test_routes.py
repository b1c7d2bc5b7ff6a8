"""The route table against the routes the server really has: KServe's own (registered by KServe's
real `RESTServer._register_endpoints` on a fresh app) and the clinical API's (`routes.register`).
No server runs: the app's route list is what FastAPI's router dispatches on."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from medserve_runtime import routes
from medserve_runtime.routes import ANY_KEY, OTHER, classify

DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _served(app: FastAPI) -> list[tuple[str, str]]:
    """(method, template) of every API route of `app`, routers included."""
    out = []
    for route in app.routes:
        # FastAPI 0.165 keeps an included router's routes (full paths) behind `original_router`.
        inner: Any = getattr(route, "original_router", None)
        for r in inner.routes if inner is not None else [route]:
            if r.path not in DOCS:
                out.extend((method, r.path) for method in sorted(r.methods))
    return out


def _concrete(template: str) -> str:
    return re.sub(r"\{\w+(:path)?\}", "triage", template)


@pytest.fixture(scope="module")
def kserve_app() -> FastAPI:
    repo = ModelRepository()
    server = RESTServer("kserve.model_server:app", DataPlane(repo), ModelRepositoryExtension(repo), http_port=0)
    app = FastAPI()
    server._register_endpoints(app)
    return app


def test_every_kserve_route_has_a_policy(kserve_app: FastAPI) -> None:
    served = _served(kserve_app)
    assert ("POST", "/v2/models/{model_name}/infer") in served  # the registration did run
    for method, template in served:
        route = classify(method, _concrete(template))
        assert route is not OTHER, (method, template)
        assert route.handler is None or template in ("/metrics",), (method, template)


def test_the_clinical_routes_are_the_table_rows_with_handlers(clinical_app: FastAPI) -> None:
    expected = sorted((r.method or "", r.path) for r in routes.ROUTES if r.handler is not None)
    assert sorted(_served(clinical_app)) == expected
    for method, template in expected:
        route = classify(method, _concrete(template))
        assert route.path == template and route.handler is not None


@pytest.mark.parametrize(("method", "path", "permission", "endpoint", "inference"), [
    ("GET", "/", None, "/", False),
    ("HEAD", "/health", None, "/health", False),
    ("GET", "/v2/models/triage/versions/3/ready", None, "/v2/models/{model_name}/versions/{model_version}/ready",
     False),
    ("POST", "/predict", "predict", "/predict", True),
    ("POST", "/v1/models/triage:predict", "predict", "/v1/models/{name}:predict", True),
    ("POST", "/v2/models/triage/versions/3/infer", "predict", "/v2/models/{name}/infer", True),
    ("POST", "/feedback", "feedback", "/feedback", False),
    ("POST", "/models/reload/triage", "admin", "/models/reload/{model_name}", False),
    ("DELETE", "/v2/repository/models/triage/unload", "admin", "/v2/repository", False),
    ("GET", "/v2/repository", "admin", "/v2/repository", False),
    ("GET", "/models", ANY_KEY, "/models", False),
    ("HEAD", "/models", ANY_KEY, "other", False),
    ("GET", "/predict", ANY_KEY, "other", False),
    ("POST", "/health", ANY_KEY, "other", False),
    ("GET", "/v2/repositoryx", ANY_KEY, "other", False),
    ("GET", "/nowhere/at/all", ANY_KEY, "other", False),
])
def test_classify(method: str, path: str, permission: str | None, endpoint: str, inference: bool) -> None:
    route = classify(method, path)
    assert (route.permission, route.endpoint, route.inference) == (permission, endpoint, inference)
