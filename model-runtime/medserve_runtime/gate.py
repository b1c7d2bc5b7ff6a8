"""The gate: an ASGI middleware in front of every route (clinical API and KServe V1/V2 alike).

Per request, in this order: classify the route (routes.classify, the one route table); for
protected routes refuse a client address that has used up its failed authentications (429), check
the API key (401/403), the declared body size (413) and, for inference, readiness and whether an audit
record can be made durable now (503); then read the body with the size limit enforced on the bytes
actually received (413 for a chunked body that lies or declares nothing), charge the key's rate limit
what the request costs (one token, one per record for a batch; 429 + Retry-After), and hand it to the
app. Afterwards, whatever happened (including a crash in the app), write exactly one audit record and
observe the request's latency.

The response is held until its audit record is durable (committed to PostgreSQL or fsynced to the
spool or the file log): a request that was answered has its record, even if the process is killed
the next instant. When the record cannot be made durable the held response is replaced by a 503. Failed
authentications are the exception: they are counted per client address and audited in aggregate
(ratelimit.FailedAuthLimiter), not one record per guess. Readiness (`/v2/health/ready` and the
per-model ready routes) is 503 while no audit record can be made durable, so traffic moves elsewhere.

Which routes are open (neither authenticated nor audited: probes, scrapers, KServe's model listing,
readiness and metadata) and which permission each other route needs is the route table's
(routes.py); a path it does not know needs any valid key. Without `--api_keys_file` nothing is
checked and the key id in audit records is null.

A pure ASGI middleware rather than Starlette's BaseHTTPMiddleware: the latter adds a task and a
stream per request, measurable at sub-millisecond latencies.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from medserve_runtime.accesslog import ROUTE_KEY, note_key, request_id
from medserve_runtime.asgi import ASGIApp, Message, Receive, Scope, Send
from medserve_runtime.batching import Arrivals
from medserve_runtime.context import RequestNote, close_note, open_note
from medserve_runtime.groupcommit import AuditTrail, AuditUnavailable
from medserve_runtime.metrics import RuntimeMetrics
from medserve_runtime.ratelimit import FailedAuthLimiter, SharedLimiter, request_cost
from medserve_runtime.routes import ANY_KEY, classify
from medserve_runtime.schemas import error_body
from medserve_runtime.security import AuthError, KeyStore
from medserve_runtime.stats import VersionStats

logger = logging.getLogger(__name__)


CLIENT_CLOSED = 499  # nginx's code for "client went away before the answer"; only ever in audit/metrics
# KServe's readiness routes: V2 server and model readiness, V1 model status.
READINESS = re.compile(r"^/(?:v2/health/ready|v2/models/[^/]+(?:/versions/[^/]+)?/ready|v1/models/[^/:]+)$")


class Gate:
    """See the module docstring. `version` returns the version serving now (labels for rejections)."""

    def __init__(self, app: ASGIApp, *, keys: KeyStore | None, limiter: SharedLimiter | None,
                 audit: AuditTrail, metrics: RuntimeMetrics, stats: VersionStats, max_request_bytes: int,
                 ready: Callable[[], bool], version: Callable[[], str], arrivals: Arrivals,
                 auth_failures: FailedAuthLimiter | None = None) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.auth_failures = auth_failures
        self.audit = audit
        self.metrics = metrics
        self.stats = stats
        self.max_request_bytes = max_request_bytes
        self.ready = ready
        self.version = version
        self.arrivals = arrivals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = classify(scope["method"], scope["path"])
        scope[ROUTE_KEY] = route  # for the access line
        if route.permission is None:
            if not self.audit.writable() and READINESS.match(scope["path"]):
                await _reply(send, 503, error_body("no audit record can be made durable now", None,
                                                   "audit_unavailable"))
                return
            await self.app(scope, receive, send)
            return
        note, token = open_note()
        status = CLIENT_CLOSED
        key_id: str | None = None
        held: list[Message] = []
        aggregated = False  # a failed authentication: counted, audited in aggregate

        async def send_capturing(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            held.append(message)  # sent once the audit record is durable

        try:
            headers = _headers(scope)
            if self.keys is not None:
                address = _client(scope, headers)
                if self.auth_failures is not None:
                    wait = await self.auth_failures.blocked(address)
                    if wait is not None:
                        aggregated = True
                        await self._throttled(send_capturing, note, wait)
                        return
                try:
                    presented = _presented_key(headers)
                    key_id = self.keys.authenticate(presented).id  # known before a 403, for the audit
                    note_key(scope, key_id)
                    if route.permission != ANY_KEY:
                        self.keys.authorize(presented, route.permission)
                except AuthError as exc:
                    note.outcome = exc.code
                    if exc.status == 401 and self.auth_failures is not None:
                        aggregated = True
                        wait = await self.auth_failures.failed(address)
                        if wait is not None:
                            await self._throttled(send_capturing, note, wait)
                            return
                    extra = [(b"www-authenticate", b'Bearer realm="medserve"')] if exc.status == 401 else []
                    rejection = error_body(exc.message, "authorization", exc.code)
                    await _reply(send_capturing, exc.status, rejection, extra)
                    return
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_request_bytes:
                await self._too_large(send_capturing, note)
                return
            if route.inference and not self.ready():
                note.outcome = "unavailable"
                await _reply(send_capturing, 503, error_body("the model is not ready", None, "not_ready"),
                             [(b"retry-after", b"1")])
                return
            if route.inference and not self.audit.writable():
                note.outcome = "audit_unavailable"
                await _reply(send_capturing, 503, error_body("no audit record can be made durable now", None,
                                                             "audit_unavailable"), [(b"retry-after", b"1")])
                return
            try:
                body = await self._read_body(receive)
            except _ClientGone:
                note.outcome = "client_closed"
                return
            if body is None:
                await self._too_large(send_capturing, note)
                return
            if self.limiter is not None:
                decision = await self.limiter.acquire(key_id or "anonymous", request_cost(route.endpoint, body))
                if decision.retry_after is not None:
                    note.outcome = "rate_limited"
                    seconds = str(int(decision.retry_after))
                    text = decision.reason or f"rate limit exceeded; retry after {seconds} s"
                    await _reply(send_capturing, 429, error_body(text, None, "rate_limited"),
                                 [(b"retry-after", seconds.encode())])
                    return
            if route.inference:
                note.arrived(self.arrivals)  # from here to its batcher it is only CPU work, no waiting
            await self.app(scope, _replay(body, receive), send_capturing)
        except BaseException:
            if status == CLIENT_CLOSED:
                status = 500
            note.outcome = note.outcome or "error"
            raise
        finally:
            note.settled()
            close_note(token)
            elapsed = time.perf_counter() - note.started
            version = note.model_version or self.version()
            self.metrics.observe_request(version, route.endpoint, status, elapsed)
            if route.inference and status == 200 and note.model_version is not None:
                self.stats.record_request(note.model_version, predictions=note.predictions, seconds=elapsed)
            if not aggregated:
                try:
                    await self.audit.record_durable(
                        request_id=request_id(scope), key_id=key_id, endpoint=route.endpoint, status=status,
                        outcome=note.outcome or _outcome(status), latency_ms=round(elapsed * 1000, 3),
                        model_version=note.model_version, prediction_id=note.prediction_id,
                        patient_hash=note.patient_hash, **note.extra)
                except AuditUnavailable:
                    held = []
                    if status != CLIENT_CLOSED:
                        await _reply(send, 503, error_body("no audit record can be made durable now", None,
                                                           "audit_unavailable"), [(b"retry-after", b"1")])
            for message in held:
                await send(message)

    async def _throttled(self, send: Send, note: RequestNote, wait: float) -> None:
        note.outcome = "auth_throttled"
        seconds = str(int(wait))
        await _reply(send, 429, error_body(f"too many failed authentications from this address; retry after "
                                           f"{seconds} s", "authorization", "rate_limited"),
                     [(b"retry-after", seconds.encode())])

    async def _too_large(self, send: Send, note: RequestNote) -> None:
        note.outcome = "too_large"
        await _reply(send, 413, error_body(f"request body exceeds {self.max_request_bytes} bytes", "body",
                                           "too_large"))

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body; None when it exceeds the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _client(scope: Scope, headers: dict[str, str]) -> str:
    """The client's address: behind KServe's ingress and queue-proxy every connection comes from the
    proxy, which puts the client first in X-Forwarded-For; else the connection's peer."""
    forwarded = headers.get("x-forwarded-for", "").split(",", 1)[0].strip()
    if forwarded:
        return forwarded[:64]
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _presented_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def _outcome(status: int) -> str:
    return "ok" if status < 400 else "rejected" if status < 500 else "error"


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body, only a disconnect can come

    return replay


async def _reply(send: Send, status: int, body: dict[str, Any],
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})
