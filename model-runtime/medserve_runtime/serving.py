"""The HTTP server under the runtime: KServe's REST server with limits, no raw-path logging, one error shape.

KServe's `ModelServer.start` (kserve/model_server.py) builds a `RESTServer`
(kserve/protocol/rest/server.py) whose `uvicorn.Config` has no header limits, no header or body
read timeout, no connection limit, trusts X-Forwarded-For from 127.0.0.1, and logs every request
line raw (uvicorn's access log, and KServe's TimingMiddleware on the `kserve.trace` logger, which
prints the path and, with latency logging, the client's X-Request-Id). `RuntimeServer` is
`ModelServer` with `start` doing what KServe's does for one worker without gRPC, but on
`RuntimeRestServer`, which differs from KServe's in three places only:

- its uvicorn config: `LimitedHttpProtocol` (below), the keep-alive timeout, uvicorn's access log
  off, proxy headers trusted only from `--forwarded_allow_ips` (none by default);
- its middlewares: none of KServe's (no TimingMiddleware, no asgi-logger access log); the runtime's
  access log (accesslog.py) says what a request was in route templates;
- its exception handlers: errors.add_kserve_exception_handlers, so KServe's routes answer bad input
  in the clinical `{error, field, code}` shape without an ERROR traceback.

`LimitedHttpProtocol` is uvicorn's httptools protocol (uvicorn/protocols/http/httptools_impl.py,
`HttpToolsProtocol`) plus, per connection: a deadline for the request line and headers counted
from the connection's start or the previous response (so a connection that sends nothing, or
trickles its headers, is closed with 408), a cap on header bytes (counted as they arrive, before
httptools buffers them) and header count (431), a deadline for the whole body (408), and a cap on
open connections (503 to the one over it). Refusals are written by the protocol itself, in the
clinical error shape, with `connection: close`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import httptools
import kserve
import orjson
import uvicorn
from kserve.protocol.rest.server import RESTServer
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from medserve_runtime import registry
from medserve_runtime.errors import add_kserve_exception_handlers
from medserve_runtime.loader import ModelLoadError
from medserve_runtime.schemas import error_body

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024
    """Request line plus headers, in bytes (431 beyond)."""
    max_headers: int = 100
    """Header fields per request (431 beyond)."""
    header_timeout_s: float = 10.0
    """From a connection's start (or its previous response) to the end of the headers (408 after)."""
    body_timeout_s: float = 30.0
    """From the end of the headers to the end of the body (408 after)."""
    keep_alive_s: int = 65
    """An idle keep-alive connection is closed after this (KServe's default: above proxies' 60 s)."""
    max_connections: int = 1024
    """Open connections at once; the one over it gets 503 and is closed."""
    request_deadline_s: float = 30.0
    """Longest a request may be inside the application (accesslog.Deadline; 503 after)."""
    forwarded_allow_ips: str = ""
    """Comma-separated addresses whose X-Forwarded-For/-Proto is believed; "" trusts no one."""


def limits_from_args(args: Any) -> ServerLimits:
    """The limits of `medserve-runtime`'s command line (__main__.py)."""
    return ServerLimits(max_header_bytes=args.max_header_bytes, max_headers=args.max_headers,
                        header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                        keep_alive_s=args.timeout_keep_alive, max_connections=args.max_connections,
                        request_deadline_s=args.request_deadline_s, forwarded_allow_ips=args.forwarded_allow_ips)


def load_within(load: Callable[[], object], seconds: float, what: str) -> None:
    """Run `load` (the first model load), giving up after `seconds` with a ModelLoadError.

    A registry that accepts connections but never answers would otherwise keep start-up waiting for
    MLflow's timeouts and retries; the abandoned load thread is a daemon and dies with the process."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            load()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="model-load", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ModelLoadError(f"{what} did not load within {seconds:g} s (--startup_timeout_s); is the "
                             "registry reachable?")
    if failure:
        raise failure[0]


def _refusal(status: int, reason: bytes, message: str, field: str | None, code: str) -> bytes:
    body = orjson.dumps(error_body(message, field, code))
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (status, reason), b"content-type: application/json\r\n",
                     b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body])


HEADERS_TOO_LARGE = _refusal(431, b"Request Header Fields Too Large", "headers: too large or too many",
                             "headers", "headers_too_large")
HEADERS_TIMEOUT = _refusal(408, b"Request Timeout", "headers: not received in time", "headers",
                           "request_timeout")
BODY_TIMEOUT = _refusal(408, b"Request Timeout", "body: not received in time", "body", "request_timeout")
TOO_MANY_CONNECTIONS = _refusal(503, b"Service Unavailable", "too many connections; retry later", None,
                                "too_many_connections")


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; `data_received` writes the refusal."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """See the module docstring. `protocol_class(limits)` makes the class uvicorn instantiates."""

    limits: ServerLimits = ServerLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._refusal: bytes | None = None

    # --- timers ----------------------------------------------------------------------------------

    def _arm(self, seconds: float, refusal: bytes) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, refusal)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, refusal: bytes) -> None:
        self._timer = None
        self._refuse(refusal)

    def _refuse(self, refusal: bytes) -> None:
        if self.transport.is_closing():
            return
        logger.info("refused a connection: %s", refusal[9:refusal.index(b"\r")].decode())
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(refusal)
        if cycle is not None:
            # The application (if it runs) now reads a disconnect and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    # --- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(TOO_MANY_CONNECTIONS)
            return
        self._arm(self.limits.header_timeout_s, HEADERS_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the header byte count and the refusals (uvicorn would answer 400).
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._in_headers:
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(HEADERS_TOO_LARGE)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")

    # --- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_count = 0
        if self._timer is None:  # a keep-alive connection's next request: its headers' deadline
            self._arm(self.limits.header_timeout_s, HEADERS_TIMEOUT)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = HEADERS_TOO_LARGE
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._arm(self.limits.body_timeout_s, BODY_TIMEOUT)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def protocol_class(limits: ServerLimits) -> type[LimitedHttpProtocol]:
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


class RuntimeRestServer(RESTServer):  # type: ignore[misc]  # kserve ships no type information
    """KServe's RESTServer with the runtime's uvicorn config, middlewares and exception handlers."""

    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        old: uvicorn.Config = getattr(self, "config")  # noqa: B009 - an attribute of an untyped base
        trusted = [ip.strip() for ip in limits.forwarded_allow_ips.split(",") if ip.strip()]
        self.config = uvicorn.Config(
            old.app, host=old.host, port=old.port, workers=1, log_config=None, access_log=False,
            timeout_graceful_shutdown=old.timeout_graceful_shutdown, timeout_keep_alive=limits.keep_alive_s,
            loop=old.loop, ssl_certfile=old.ssl_certfile, ssl_keyfile=old.ssl_keyfile,
            http=protocol_class(limits), proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None,
            server_header=False)
        base: type[uvicorn.Server] = type(getattr(self, "_server"))  # noqa: B009 - as above

        class Server(base):  # type: ignore[valid-type,misc]  # KServe's uvicorn.Server subclass
            async def shutdown(self, sockets: Any = None) -> None:
                # Before uvicorn waits (up to the grace period) for in-flight requests: a reload's
                # registry download is killed, so that reload answers now instead of holding the stop.
                registry.cancel_all()
                await super().shutdown(sockets)

        self._server = Server(self.config)

    def _add_middlewares(self, app: Any) -> None:
        """None of KServe's: its TimingMiddleware and asgi-logger print raw paths and request ids."""

    def _add_exception_handlers(self, app: Any) -> None:
        add_kserve_exception_handlers(app)


class RuntimeServer(kserve.ModelServer):  # type: ignore[misc]  # kserve ships no type information
    """kserve.ModelServer whose REST server is RuntimeRestServer (one worker, no gRPC)."""

    def __init__(self, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(workers=1, enable_grpc=False, enable_latency_logging=False, access_log_format=None,
                         timeout_keep_alive=limits.keep_alive_s, **kwargs)
        self.limits = limits

    def start(self, models: list[Any]) -> None:
        # kserve.ModelServer.start for workers == 1 and enable_grpc False, on RuntimeRestServer.
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RuntimeRestServer(
            "kserve.model_server:app", self.dataplane, self.model_repository_extension, self.http_port,
            workers=1, grace_period=self.grace_period, event_loop=self.event_loop,
            timeout_keep_alive=self.limits.keep_alive_s, ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile, limits=self.limits)
        self.servers.append(self._rest_server.start())
        with asyncio.Runner(loop_factory=event_loop_factory(self.event_loop)) as runner:
            # KServe's start runs asyncio.run(), which ignores --event-loop for one worker (only
            # uvicorn's Server.run reads it); here `auto` and `uvloop` mean uvloop, as its help says.
            runner.get_loop()
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for `auto` (when installed) and `uvloop`; None (asyncio's) for `asyncio`."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop
