"""The clinical routes' short way in: the route table's handler rows served without FastAPI's routing.

FastAPI wraps every endpoint in its request-response machinery: its exception middleware, the router's
linear match, dependency solving (for a handler that takes only the Request), query-parameter parsing
and a second exception wrapper per route; at sub-millisecond requests that was the largest component of
the profile (benchmarks/runtime_latency.py --profile). The clinical handlers need none of it: they
read the raw body and validate it themselves (api.py), and return a Response. So `FastPath`, the
innermost of the runtime's ASGI middlewares, serves a request whose method and path equal a handler
row's exactly (`/predict`, `/batch_predict`, `/feedback`, `/health`, `/metrics`, `/models`: rows without
path parameters) by calling the handler itself, and answers the exceptions it raises with the handlers
registered on the application (errors.py; looked up along the exception's MRO as Starlette does), so a
rejection is the same bytes either way. Everything else (KServe's V1/V2 routes, rows with parameters,
HEAD, unknown paths) goes on to the application. The routes stay registered on the FastAPI app too, so
the OpenAPI document and the fallback are unchanged.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from medserve_runtime.api import ClinicalApi
from medserve_runtime.asgi import ASGIApp, Receive, Scope, Send
from medserve_runtime.routes import ROUTES


def direct_routes(api: ClinicalApi) -> dict[tuple[str, str], tuple[Callable[..., Awaitable[Response]], bool]]:
    """(method, path) -> (bound handler, whether it takes the Request) for the rows FastPath serves."""
    out: dict[tuple[str, str], tuple[Callable[..., Awaitable[Response]], bool]] = {}
    for route in ROUTES:
        if route.handler is None or route.method is None or "{" in route.path:
            continue
        params = list(inspect.signature(route.handler).parameters)[1:]
        if params not in ([], ["request"]):
            continue  # anything else is FastAPI's to bind
        out[route.method, route.path] = (types.MethodType(route.handler, api), bool(params))
    return out


class FastPath:
    def __init__(self, app: ASGIApp, *, api: ClinicalApi, handlers_of: Callable[[], dict[Any, Any]]) -> None:
        self.app = app
        self.routes = direct_routes(api)
        self.handlers_of = handlers_of
        """The application's exception handlers (KServe adds some when the server starts: read per error)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.routes.get((scope.get("method", ""), scope.get("path", ""))) \
            if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        handler, takes_request = target
        request = Request(scope, receive)
        try:
            response = await (handler(request) if takes_request else handler())
        except Exception as exc:
            answer = self._handler_for(exc)
            if answer is None:
                raise  # as on the FastAPI path: the server-error middleware answers it
            answered = answer(request, exc)
            response = await answered if inspect.isawaitable(answered) else answered
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        handlers = self.handlers_of()
        for kind in type(exc).__mro__:
            if kind is Exception:
                return None
            if kind in handlers:
                handler: Callable[[Request, Exception], Any] = handlers[kind]
                return handler
        return None
