"""A weighted HTTP proxy on 127.0.0.1: the sandbox's stand-in for a Knative route or a Gateway API HTTPRoute.

Each request goes to one backend, drawn with probability weight / sum(weights), at the same method, path,
query, headers and body, as an L7 ingress forwards them (hop-by-hop headers aside, RFC 9110 7.6.1), and the
backend's answer comes back as it came. The weights are replaced in place (`route()`), so a traffic change
takes effect on the next request on the same port, as a route update does. With no backend it answers
503, as an ingress with no ready endpoint does.

What it stands in for: Knative Serving's route traffic split across revisions (pkg/reconciler/route,
`traffic.BuildTrafficConfiguration`) in Serverless mode, and the weighted backendRefs KServe writes into
the HTTPRoute for `spec.canary` in Standard mode (kserve pkg/controller/v1beta1/inferenceservice/reconcilers/
ingress/httproute_reconciler.go `applyCanaryWeights`). Not a production proxy: bodies are buffered whole.
"""

from __future__ import annotations

import abc
import logging
import random
from dataclasses import dataclass

import httpx
from aiohttp import web
from multidict import CIMultiDict

from medserve_sandbox import procs

logger = logging.getLogger("medserve.loopback-proxy")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})
NOT_RETURNED = HOP_BY_HOP | {"content-encoding"}  # httpx hands back the decoded body


async def serve_on_a_free_port(runner: web.AppRunner) -> int:
    """Set `runner` up and listen on a free loopback port; the port. Another process may take the port
    between the pick and the bind: then pick again (three tries)."""
    await runner.setup()
    for attempt in range(3):
        port = procs.free_port()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError:
            if attempt == 2:
                await runner.cleanup()
                raise
            continue
        return port
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Backend:
    """Where a share of the traffic goes: `name` (a revision or a Deployment) at `url`, with `weight`."""

    name: str
    url: str
    weight: int


class LoopbackListener(abc.ABC):
    """An HTTP listener on a free loopback port whose every request goes to `handle`."""

    def __init__(self) -> None:
        self.port = 0
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.port = await serve_on_a_free_port(self.runner)

    async def close(self) -> None:
        await self.runner.cleanup()

    @abc.abstractmethod
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request."""


class WeightedProxy(LoopbackListener):
    """One listener; `route()` sets its backends."""

    def __init__(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        super().__init__()
        self.http, self.rng = http, rng
        self.backends: list[Backend] = []

    def route(self, backends: list[Backend]) -> bool:
        """Send traffic by these weights from the next request on; True when that changed anything."""
        kept = [b for b in backends if b.weight > 0]
        changed = kept != self.backends
        self.backends = kept
        return changed

    async def handle(self, request: web.Request) -> web.StreamResponse:
        backends = self.backends
        if not backends:
            return web.json_response({"error": "no healthy upstream"}, status=503)
        backend = self.rng.choices(backends, weights=[b.weight for b in backends])[0]
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        body = await request.read()
        try:
            upstream = await self.http.request(request.method, backend.url + request.raw_path, content=body or None,
                                               headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("backend %s (%s) failed: %s", backend.name, backend.url, type(exc).__name__)
            return web.json_response({"error": "upstream connect error or disconnect/reset before headers"},
                                     status=503)
        returned = CIMultiDict((k, v) for k, v in upstream.headers.multi_items() if k.lower() not in NOT_RETURNED)
        return web.Response(body=upstream.content, status=upstream.status_code, headers=returned)
