"""The access log, and the request deadline: two ASGI middlewares around the gate.

One access line per request, on the `medserve_runtime.access` logger, made only of values the
runtime chose, never of text the client sent:

    access POST /v1/models/{name}:predict 404 1.204ms key=clinician request_id=5f0c9a3e1b2d4c67

the method (one of the HTTP methods, else OTHER), the route template (routes.classify; `other` for
a path no route has), the status, the latency, the API key's id (written by the gate, `-` for open
routes or no key) and a request id generated here, which the response carries as `x-request-id`
(a client's own X-Request-Id is never logged or echoed: it is client text). No path, query string,
header value or client address: HIPAA counts IP addresses among the identifiers, and any part of a
URL may carry a patient id. uvicorn's access log and KServe's trace lines, which print the raw
request line and X-Request-Id, are off (serving.py, `quiet_third_party_loggers`).

The lines are not formatted by `logging` one by one: each is one f-string of those values, and the
lines of one event-loop iteration are written to stderr together, in KServe's log format (one
timestamp per write), when the `medserve_runtime.access` logger is enabled for INFO. The access log
is the one per-request log stream; `logging`'s per-record formatting and the PHI scrub filter (there is
nothing client-written to scrub in these lines) cost more than the rest of the log line's life.

`Deadline` bounds the time a request spends in the application (`--request_deadline_s`): past it
the request is cancelled and answered 503 (`deadline_exceeded`, with Retry-After) if nothing was
sent yet. It sits inside the gate, so the gate's audit record and metrics see that 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time

import orjson

from medserve_runtime.asgi import ASGIApp, Message, Receive, Scope, Send
from medserve_runtime.routes import classify
from medserve_runtime.schemas import error_body

SCOPE_KEY = "medserve.access"
"""Where the access facts of a request live in its ASGI scope (the gate adds the key id)."""
ROUTE_KEY = "medserve.route"
"""The request's row of the route table, once the gate has classified it."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})

access_logger = logging.getLogger("medserve_runtime.access")


class AccessFacts:
    __slots__ = ("key_id", "request_id")

    def __init__(self) -> None:
        self.request_id = os.urandom(8).hex()
        self.key_id: str | None = None


def request_id(scope: Scope) -> str | None:
    """The runtime's id of this request (its access line's and `x-request-id`'s), for its audit record."""
    facts = scope.get(SCOPE_KEY)
    return facts.request_id if isinstance(facts, AccessFacts) else None


def note_key(scope: Scope, key_id: str | None) -> None:
    """The gate's one call: the authenticated key's id, for the access line."""
    facts = scope.get(SCOPE_KEY)
    if isinstance(facts, AccessFacts):
        facts.key_id = key_id


class _Lines:
    """Access lines of the current event-loop iteration, written together at its end."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.scheduled = False
        self.pid = os.getpid()

    def add(self, line: str) -> None:
        self.pending.append(line)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        lines, self.pending = self.pending, []
        if not lines or not access_logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        prefix = (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d} "
                  f"{self.pid} medserve_runtime.access INFO [accesslog.py:access():0] ")
        with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to log to
            sys.stderr.write("".join(prefix + line for line in lines))
            sys.stderr.flush()


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.lines = _Lines()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        facts = AccessFacts()
        scope[SCOPE_KEY] = facts
        status = 499  # the client left before any answer (nginx's code)
        request_id = facts.request_id.encode()

        async def send_noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id)]}
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        except BaseException:
            if status == 499:
                status = 500
            raise
        finally:
            method = scope.get("method", "")
            route = scope.get(ROUTE_KEY) or classify(method, scope.get("path", ""))
            self.lines.add(f"access {method if method in METHODS else 'OTHER'} {route.endpoint} {status} "
                           f"{(time.perf_counter() - started) * 1000:.3f}ms key={facts.key_id or '-'} "
                           f"request_id={facts.request_id}\n")


class Deadline:
    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, send_noting)
        except TimeoutError:
            if started:
                raise
            body = orjson.dumps(error_body(f"request deadline of {self.seconds:g} s exceeded", None,
                                           "deadline_exceeded"))
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})


def quiet_third_party_loggers() -> None:
    """Silence the loggers that print raw request lines, paths or client request ids."""
    for name in ("uvicorn.access", "kserve.trace", "access"):
        third = logging.getLogger(name)
        third.handlers.clear()
        third.propagate = False
        third.disabled = True
