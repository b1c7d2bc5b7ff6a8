"""A local stand-in for KServe's InferenceGraph router: every Splitter graph becomes a local HTTP listener.

It watches the InferenceGraphs in the emulated API (polling, every half second) and gives each one its own
listener on 127.0.0.1 (one port per graph, all served by this one process), then writes the status as
KServe's controller does: `url`, `observedGeneration` and the `Ready` condition. The root node must be a
`Splitter`; each of its steps names a `serviceUrl` (used as is) or a `serviceName`, the InferenceService of
that name in the graph's namespace, reached at its `status.url` (which the sandbox's KServe stand-in writes).
A graph whose service has no URL yet is not Ready (`ServiceNotReady`); its `url` is written all the same,
since its listener is up and answers 503 (with a JSON error) until the graph can route.

Routing keeps the URL contract of KServe's router: each request goes to one step, drawn with probability
weight / sum(weights), at the same path and query (`POST /`, the graph root, goes to the step's
`/v1/models/<serviceName>:predict`, or to its serviceUrl as is), and the step's answer comes back unchanged
plus an `X-Medserve-Arm: <step name>` header. A weight change takes effect on the next request, on the same
port. One thing KServe's router cannot do and this one must: the runtime's `POST /feedback` is only
understood by the arm that made the prediction, so the prediction ids seen in `/predict` and
`/batch_predict` answers are remembered (a bounded LRU) and their feedback goes to that arm, even once the
graph no longer routes to it (a concluded A/B test still gets its late ground truth); an id it never
saw (e.g. after a restart) is offered to each step in turn until one does not answer 404.

What it does NOT emulate: the router Deployment and its scaling (minReplicas, resources, affinity), the
Sequence, Ensemble and Switch routers (a graph using one is `UnsupportedRouter`), steps that point at other
nodes, step conditions and header-based routing, routerTimeouts, TLS, or authentication between router and
services. Nothing here is a production proxy: bodies are buffered whole, and nothing is retried.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web
from medserve_operator.clients.kube import KubeClient
from medserve_operator.kit.conditions import now_rfc3339
from multidict import CIMultiDict

from medserve_sandbox import procs

logger = logging.getLogger("medserve.graph-standin")

GRAPH_API, GRAPH_PLURAL = "serving.kserve.io/v1alpha1", "inferencegraphs"
ISVC_API, ISVC_PLURAL = "serving.kserve.io/v1beta1", "inferenceservices"
DEPLOYMENT_API, DEPLOYMENTS = "apps/v1", "deployments"
GRAPH_LABEL = "serving.kserve.io/inferencegraph"
ARM_HEADER = "X-Medserve-Arm"
REMEMBERED_PREDICTIONS = 100_000
STICKY_PATHS = ("/predict", "/batch_predict")
# RFC 9110 section 7.6.1, plus what the proxy itself recomputes: the body length, and its encoding (httpx
# hands back the decoded body).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
NOT_RETURNED = HOP_BY_HOP | {"content-length", "content-encoding"}


@dataclass(frozen=True)
class Step:
    """One Splitter step, resolved to where its traffic goes."""

    name: str
    weight: int
    base_url: str  # other paths are appended to it
    root_url: str  # where `POST /`, the graph root, goes


class NotReady(Exception):
    """The graph cannot route: `reason` and `message` become its Ready=False condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def parse_steps(graph: dict[str, Any], service_urls: dict[tuple[str, str], str]) -> list[Step]:
    """The root Splitter's steps with their targets resolved; NotReady when the graph cannot route."""
    namespace = graph["metadata"]["namespace"]
    root = (graph.get("spec", {}).get("nodes") or {}).get("root")
    if not isinstance(root, dict):
        raise NotReady("InvalidGraph", "spec.nodes.root is missing: the graph has no entry node")
    router_type = root.get("routerType")
    if router_type != "Splitter":
        raise NotReady("UnsupportedRouter", f"routerType {router_type} is not emulated by the sandbox "
                       "(only Splitter is)")
    steps: list[Step] = []
    for i, raw in enumerate(root.get("steps") or []):
        name = str(raw.get("name") or raw.get("serviceName") or f"step-{i}")
        weight = raw.get("weight", 0)
        if not isinstance(weight, int) or weight < 0:
            raise NotReady("InvalidGraph", f"spec.nodes.root.steps[{i}].weight must be a non-negative integer")
        if service_url := raw.get("serviceUrl"):
            steps.append(Step(name, weight, service_url.rstrip("/"), service_url))
        elif service := raw.get("serviceName"):
            url = service_urls.get((namespace, service))
            if not url:
                raise NotReady("ServiceNotReady", f"step {name}: InferenceService {namespace}/{service} "
                               "does not exist or has no status.url yet")
            base = url.rstrip("/")
            steps.append(Step(name, weight, base, f"{base}/v1/models/{service}:predict"))
        else:
            raise NotReady("InvalidGraph", f"spec.nodes.root.steps[{i}] has neither serviceName nor serviceUrl "
                           "(steps that point at other nodes are not emulated)")
    if not steps or sum(s.weight for s in steps) <= 0:
        raise NotReady("InvalidGraph", "a Splitter needs at least one step with a positive weight")
    return steps


def error_response(status: int, code: str, message: str, *, arm: str | None = None) -> web.Response:
    headers = {ARM_HEADER: arm} if arm else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class GraphRouter:
    """One graph's listener on 127.0.0.1: its routes follow the graph's spec, replaced in place on change."""

    def __init__(self, key: tuple[str, str], http: httpx.AsyncClient, rng: random.Random) -> None:
        self.key, self.http, self.rng = key, http, rng
        self.steps: list[Step] = []
        self.not_ready: NotReady | None = NotReady("Initializing", "the graph has not been read yet")
        self.arms: OrderedDict[str, Step] = OrderedDict()  # prediction_id -> the step that made it, oldest first
        self.port = 0
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.runner.setup()
        for attempt in range(3):
            # free_port() hands out a port that another process may take before we bind it: pick again.
            port = procs.free_port()
            try:
                await web.TCPSite(self.runner, "127.0.0.1", port).start()
            except OSError:
                if attempt < 2:
                    continue
                await self.runner.cleanup()
                raise
            self.port = port
            return

    async def close(self) -> None:
        await self.runner.cleanup()

    def update(self, steps: list[Step], not_ready: NotReady | None) -> bool:
        """Route by `steps` from the next request on (or answer 503 while `not_ready`); True if that changed."""
        changed = (steps, describe(not_ready)) != (self.steps, describe(self.not_ready))
        self.steps, self.not_ready = steps, not_ready
        return changed

    async def handle(self, request: web.Request) -> web.StreamResponse:
        steps, not_ready = self.steps, self.not_ready
        if not_ready is not None:
            return error_response(503, "graph_not_ready", f"InferenceGraph {'/'.join(self.key)} is not ready: "
                                  f"{not_ready.reason}: {not_ready.message}")
        body = await request.read()
        if request.method == "POST" and request.path == "/feedback":
            return await self.feedback(request, body, steps)
        step = self.rng.choices(steps, weights=[s.weight for s in steps])[0]
        response = await self.forward(request, body, step)
        if request.method == "POST" and request.path in STICKY_PATHS and 200 <= response.status < 300:
            self.remember(response, step)
        return response

    async def feedback(self, request: web.Request, body: bytes, steps: list[Step]) -> web.Response:
        """Feedback goes to the arm that made the prediction: the one remembered, else the one that knows it."""
        pid = prediction_id(body)
        remembered = self.arms.get(pid) if pid is not None else None
        if remembered is not None:
            # Even when the graph no longer routes to it (a concluded A/B test): ground truth that arrives late
            # still belongs to the model that made the prediction.
            return await self.forward(request, body, remembered)
        # An id not seen here (made before a restart, or straight at an arm): only its arm answers other than 404.
        not_found: web.Response | None = None
        failed: web.Response | None = None
        for step in steps:
            response = await self.send(request, body, step)
            if isinstance(response, Failed):
                failed = response.response
            elif response.status != 404:
                if pid is not None:
                    self.note(pid, step)
                return response
            else:
                not_found = response
        if not_found is not None:
            return not_found
        return failed if failed is not None else error_response(503, "graph_not_ready", "the graph has no steps")

    async def forward(self, request: web.Request, body: bytes, step: Step) -> web.Response:
        response = await self.send(request, body, step)
        return response.response if isinstance(response, Failed) else response

    async def send(self, request: web.Request, body: bytes, step: Step) -> web.Response | Failed:
        """The step's answer to the request, or Failed (502/504) when no answer came."""
        root = request.method == "POST" and request.path == "/"
        url = step.root_url if root else step.base_url + request.raw_path
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED]
        where = f"step {step.name} ({step.base_url})"
        try:
            upstream = await self.http.request(request.method, url, content=body or None, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return Failed(error_response(502, "upstream_unreachable", f"{where} is unreachable: "
                                         f"{type(exc).__name__}", arm=step.name))
        except httpx.TimeoutException as exc:
            return Failed(error_response(504, "upstream_timeout", f"{where} did not answer in time: "
                                         f"{type(exc).__name__}", arm=step.name))
        except httpx.HTTPError as exc:
            return Failed(error_response(502, "upstream_unreachable", f"{where} failed: {type(exc).__name__}: "
                                         f"{exc}", arm=step.name))
        returned = CIMultiDict((k, v) for k, v in upstream.headers.multi_items() if k.lower() not in NOT_RETURNED)
        returned[ARM_HEADER] = step.name
        return web.Response(body=upstream.content, status=upstream.status_code, headers=returned)

    def remember(self, response: web.Response, step: Step) -> None:
        if not (response.content_type or "").endswith("json") or not isinstance(response.body, bytes):
            return
        try:
            parsed = json.loads(response.body)
        except ValueError:
            return  # passed through as it came; nothing to remember
        for pid in prediction_ids(parsed):
            self.note(pid, step)

    def note(self, pid: str, step: Step) -> None:
        self.arms[pid] = step
        self.arms.move_to_end(pid)
        while len(self.arms) > REMEMBERED_PREDICTIONS:
            self.arms.popitem(last=False)


@dataclass(frozen=True)
class Failed:
    """No answer from a step: the error response to give in its place."""

    response: web.Response


def describe(not_ready: NotReady | None) -> tuple[str, str] | None:
    return None if not_ready is None else (not_ready.reason, not_ready.message)


def prediction_ids(parsed: Any) -> Iterable[str]:
    """The ids in a `/predict` answer (top-level `prediction_id`) or a `/batch_predict` one (`predictions[*]`)."""
    if not isinstance(parsed, dict):
        return
    if isinstance(parsed.get("prediction_id"), str):
        yield parsed["prediction_id"]
    predictions = parsed.get("predictions")
    if isinstance(predictions, list):
        for item in predictions:
            if isinstance(item, dict) and isinstance(item.get("prediction_id"), str):
                yield item["prediction_id"]


def prediction_id(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    pid = parsed.get("prediction_id") if isinstance(parsed, dict) else None
    return pid if isinstance(pid, str) else None


class GraphStandin:
    def __init__(self, kube: KubeClient, *, seed: int | None) -> None:
        self.kube = kube
        self.rng = random.Random(seed)
        self.routers: dict[tuple[str, str], GraphRouter] = {}
        # Long enough for a batch prediction on a busy machine; connecting is local, so fails fast.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))

    async def close(self) -> None:
        for router in self.routers.values():
            await router.close()
        await self.http.aclose()

    async def sync(self) -> None:
        graphs = await self.kube.list(GRAPH_API, GRAPH_PLURAL, None)
        service_urls = await self.service_urls(graphs)
        seen = set()
        for graph in graphs:
            key = (graph["metadata"]["namespace"], graph["metadata"]["name"])
            seen.add(key)
            if graph["metadata"].get("deletionTimestamp"):
                continue
            await self.reconcile(key, graph, service_urls)
        for key in [k for k in self.routers if k not in seen]:
            router = self.routers.pop(key)
            logger.info("InferenceGraph %s/%s is gone: closing its listener on port %d", *key, router.port)
            await router.close()

    async def service_urls(self, graphs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
        """status.url of every InferenceService, by (namespace, name); listed only when a graph names one."""
        names_services = any(step.get("serviceName") for graph in graphs
                             for node in ((graph.get("spec") or {}).get("nodes") or {}).values()
                             if isinstance(node, dict) for step in node.get("steps") or [])
        if not names_services:
            return {}
        return {(s["metadata"]["namespace"], s["metadata"]["name"]): s["status"]["url"]
                for s in await self.kube.list(ISVC_API, ISVC_PLURAL, None)
                if (s.get("status") or {}).get("url")}

    async def reconcile(self, key: tuple[str, str], graph: dict[str, Any],
                        service_urls: dict[tuple[str, str], str]) -> None:
        router = self.routers.get(key)
        if router is None:
            router = GraphRouter(key, self.http, self.rng)
            try:
                await router.start()
            except OSError as exc:
                logger.warning("InferenceGraph %s/%s: no port to listen on, retrying: %s", *key, exc)
                return
            self.routers[key] = router
            logger.info("InferenceGraph %s/%s listens on %s", *key, router.url)
        try:
            steps, not_ready = parse_steps(graph, service_urls), None
        except NotReady as exc:
            steps, not_ready = [], exc
        if router.update(steps, not_ready):
            routes = ", ".join(f"{s.name}={s.weight}" for s in steps)
            logger.info("InferenceGraph %s/%s routes %s", *key,
                        f"by weight to {routes}" if not_ready is None else f"nowhere: {not_ready.reason}")
        await self.write_router_deployment(graph)
        await self.write_status(graph, router)

    async def write_router_deployment(self, graph: dict[str, Any]) -> None:
        """The router's Deployment as KServe's graph controller makes it in Standard mode: named after the graph,
        its pod template carrying the graph's spec as `--graph-json` (kserve
        pkg/controller/v1alpha1/inferencegraph/raw_ig.go `createInferenceGraphPodSpec`), owned by the graph.
        This process routes by the new steps at once, so the Deployment is reported rolled out (every replica
        updated and available at its generation) as soon as its template changes: that is what the operator
        waits for before it removes an arm (controllers/abtest/router.py)."""
        meta = graph["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        template = {"metadata": {"labels": {GRAPH_LABEL: name}},
                    "spec": {"containers": [{"name": name, "image": "kserve/router:sandbox-stand-in",
                                             "args": ["--graph-json", json.dumps(graph.get("spec") or {})]}]}}
        current = await self.kube.get(DEPLOYMENT_API, DEPLOYMENTS, namespace, name)
        desired: dict[str, Any] = {"apiVersion": DEPLOYMENT_API, "kind": "Deployment",
                   "metadata": {"name": name, "namespace": namespace, "labels": {GRAPH_LABEL: name},
                                "ownerReferences": [{"apiVersion": GRAPH_API, "kind": "InferenceGraph", "name": name,
                                                     "uid": meta["uid"], "controller": True}]},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {GRAPH_LABEL: name}}, "template": template}}
        if current is None:
            current = await self.kube.create(DEPLOYMENT_API, DEPLOYMENTS, namespace, desired)
        elif (current.get("spec") or {}).get("template") != template:
            desired["metadata"] = {**desired["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
            current = await self.kube.replace(DEPLOYMENT_API, DEPLOYMENTS, namespace, desired)
        status = {"observedGeneration": current["metadata"].get("generation", 1), "replicas": 1,
                  "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                  "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}
        if current.get("status") != status:
            await procs.patch_status(self.kube, DEPLOYMENT_API, DEPLOYMENTS, current, status)

    async def write_status(self, graph: dict[str, Any], router: GraphRouter) -> None:
        old = graph.get("status") or {}
        before: dict[str, Any] = next((c for c in old.get("conditions", []) if c.get("type") == "Ready"), {})
        reason, message = describe(router.not_ready) or ("", "")
        status_value = "True" if router.not_ready is None else "False"
        when = now_rfc3339()
        if before.get("status") == status_value:
            when = before.get("lastTransitionTime", when)
        status: dict[str, Any] = {
            "url": router.url,
            "observedGeneration": graph["metadata"].get("generation", 1),
            "conditions": [{"type": "Ready", "status": status_value, "reason": reason, "message": message,
                            "lastTransitionTime": when}],
        }
        if status == {k: old.get(k) for k in status}:
            return
        await procs.patch_status(self.kube, GRAPH_API, GRAPH_PLURAL, graph, status)


def main(argv: list[str]) -> int:
    parser = procs.controller_parser("medserve_sandbox.graph_standin", __doc__)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random draw that picks each request's step (tests: reproducible splits)")
    args = parser.parse_args(argv)

    procs.run_controller(args.kubeconfig, f"InferenceGraph stand-in watching {args.kubeconfig}",
                         lambda kube: GraphStandin(kube, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
