"""The route table: every route the server answers, with its gate policy, in one place.

Each row is a route template and method, the permission an API key needs for it (None: open, no
key and no audit record), whether it is inference (readiness checked, counted as arriving at a
batcher, per-version statistics), the `endpoint` label its audit records and metrics carry, and
the `ClinicalApi` method serving it. Rows without a handler are KServe's own V1/V2 routes, which
`kserve.ModelServer` adds itself (kserve/protocol/rest/v1_endpoints.py, v2_endpoints.py); they are
here for their policy. `register()` adds the clinical rows to the app; the gate's `classify()`
reads the same rows, so a route cannot exist without a policy or a policy without a route.

Templates are matched as Starlette's router matches them (`{param}` is one path segment, `[^/]+`,
`{param:path}` the rest of the path), in table order, the first match winning as in the router.
Open routes answer GET and HEAD. A path matching no row needs any valid key ("other").
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response

from medserve_runtime.api import ClinicalApi

ANY_KEY = "any"
"""The permission of routes that need a valid key but no particular permission."""

Handler = Callable[..., Awaitable[Response]]

_PARAM = re.compile(r"\{(\w+)(:path)?\}")


def _compile(template: str) -> re.Pattern[str]:
    pattern, at = "", 0
    for param in _PARAM.finditer(template):
        pattern += re.escape(template[at:param.start()]) + (".*" if param[2] else "[^/]+")
        at = param.end()
    return re.compile(f"^{pattern}{re.escape(template[at:])}$")


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    method: str | None
    """GET, POST, ...; None: any method."""
    path: str
    """The route template, as the router matches it."""
    permission: str | None
    """predict, feedback, admin, ANY_KEY (any valid key) or None (open: no key, no audit)."""
    inference: bool = False
    handler: Handler | None = None
    """The ClinicalApi method serving the route; None for KServe's own routes."""
    label: str | None = None
    """The endpoint label when it is not `path` (one label for a route's variants)."""
    pattern: re.Pattern[str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.path))

    @property
    def endpoint(self) -> str:
        """The `endpoint` of audit records and metrics: a route template, never a raw path."""
        return self.label or self.path

    def matches(self, method: str, path: str) -> bool:
        if self.permission is None:
            method_ok = method in ("GET", "HEAD") and self.method == "GET"
        else:
            method_ok = self.method is None or self.method == method
        return method_ok and self.pattern.match(path) is not None


_V1_PREDICT = "/v1/models/{name}:predict"
_V2_INFER = "/v2/models/{name}/infer"

ROUTES: tuple[Route, ...] = (
    # Probes and scrapers: no patient data.
    Route("GET", "/", None),
    Route("GET", "/health", None, handler=ClinicalApi.health),
    Route("GET", "/metrics", None, handler=ClinicalApi.prometheus),
    Route("GET", "/v2", None),
    Route("GET", "/v2/health/live", None),
    Route("GET", "/v2/health/ready", None),
    Route("GET", "/v1/models", None),
    Route("GET", "/v1/models/{model_name}", None),
    Route("GET", "/v2/models", None),
    Route("GET", "/v2/models/{model_name}", None),
    Route("GET", "/v2/models/{model_name}/versions/{model_version}", None),
    Route("GET", "/v2/models/{model_name}/ready", None),
    Route("GET", "/v2/models/{model_name}/versions/{model_version}/ready", None),
    # Inference: the clinical API and KServe's data plane.
    Route("POST", "/predict", "predict", inference=True, handler=ClinicalApi.predict),
    Route("POST", "/batch_predict", "predict", inference=True, handler=ClinicalApi.batch_predict),
    Route("POST", "/v1/models/{model_name}:predict", "predict", inference=True, label=_V1_PREDICT),
    Route("POST", "/v1/models/{model_name}:explain", "predict", inference=True,
          label="/v1/models/{name}:explain"),
    Route("POST", "/v2/models/{model_name}/infer", "predict", inference=True, label=_V2_INFER),
    Route("POST", "/v2/models/{model_name}/versions/{model_version}/infer", "predict", inference=True,
          label=_V2_INFER),
    # Ground truth, operations, administration.
    Route("POST", "/feedback", "feedback", handler=ClinicalApi.feedback),
    Route("POST", "/models/reload/{model_name}", "admin", handler=ClinicalApi.reload),
    Route(None, "/v2/repository", "admin"),
    Route(None, "/v2/repository/{rest:path}", "admin", label="/v2/repository"),
    Route("GET", "/models", ANY_KEY, handler=ClinicalApi.models),
)
OTHER = Route(None, "other", ANY_KEY)
"""Any path no row matches (unknown routes, wrong methods): a valid key, audited as `other`."""


def classify(method: str, path: str) -> Route:
    """The first row matching the request, as the router would pick it; else OTHER."""
    for route in ROUTES:
        if route.matches(method, path):
            return route
    return OTHER


def register(app: FastAPI, api: ClinicalApi) -> None:
    """Add the clinical rows to `app` (KServe adds its own rows when the server starts)."""
    for route in ROUTES:
        if route.handler is not None:
            assert route.method is not None  # every clinical route has one method
            endpoint: Any = types.MethodType(route.handler, api)
            app.add_api_route(route.path, endpoint, methods=[route.method], response_model=None)
