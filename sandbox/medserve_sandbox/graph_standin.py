"""A local stand-in for KServe's InferenceGraph controller and its router: every graph gets a loopback listener.

It watches the InferenceGraphs in the emulated API (polling, every half second), resolves each step's
target as KServe's graph controller does, serves the graph as KServe's router does, and writes the status
as the controller writes it (kserve/kserve at aaac4e29, 0.20.0):

- Step URLs (pkg/controller/v1alpha1/inferencegraph/controller.go `Reconcile`, and pkg/controller/v1beta1/
  inferenceservice/utils/utils.go `GetPredictorEndpoint`): a step's `serviceUrl` is used as written; a
  `serviceName` becomes the InferenceService's `status.address.url` plus `/v1/models/<model>:predict`, or
  `/v2/models/<model>/infer` when the predictor's first container has env `PROTOCOL=v2` (predictor_custom.go
  `GetProtocol`), nothing when it has `MULTI_MODEL_SERVER=true` (`IsMMSPredictor`); `<model>` is the
  container's `--model_name` argument (`GetModelName`, `getModelNameFromArgs`), else the service's name.
  While a named InferenceService is missing or has no address the controller returns before writing any
  status, so the graph's status stays as it was, and its router is not (re)built.
- Routing (cmd/router/main.go): every request, whatever its method and path (but `/readyz`), runs the
  `root` node: a Splitter draws a step by weight (`pickupRoute`, a draw in 0..99 against the running sum),
  a step naming another node runs that node (`executeStep`); the step is called with POST at its URL and
  the client's body (`callService`): the client's path and query are NOT forwarded, and of its headers only
  those matching one of the `router.headers.propagate` patterns (`--propagate-header`, regular
  expressions, the router's `PROPAGATE_HEADERS`) are, plus `Content-Type: application/json` when none was
  propagated. The step's status code and body come back; of its headers none, the router sets
  `Content-Type: application/json` when the body is JSON (`graphHandler`). A failed call answers 500 with
  `{"error": "Failed to process request", "cause": ...}` (`prepareErrorResponse`). `GET /readyz` answers
  200 (`readyHandler`). Switch, Sequence and Ensemble nodes answer 500 here (not emulated).
- Status (controller.go `Reconcile`, raw_ig.go `PropagateRawStatus`): in Standard mode (the graph's mode
  by `GetDeploymentMode`, the cluster default from `--default-deployment-mode`) `url`, `observedGeneration`
  from the router Deployment (whose generation moves when the router's graph JSON, with the resolved URLs,
  changes), and the conditions `Ready` True and `Stopped` False; in Knative mode the router's Knative
  Service's conditions (`ConfigurationsReady`, `Ready`, `RoutesReady`) plus `Stopped` False, and `url` once
  Ready.

What it does NOT emulate: the router Deployment's pods and scaling, rolling the router (a change takes
effect on the next request, on the same port), routerTimeouts, TLS and the Istio-mesh check, step
conditions, `dependency: Hard`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import sys
from typing import Any

import httpx
from aiohttp import web
from medserve_operator.clients.kube import KubeClient
from medserve_operator.kit.conditions import now_rfc3339

from medserve_sandbox import procs
from medserve_sandbox.kserve_status import Conditions
from medserve_sandbox.kserve_webhooks import DEPLOYMENT_MODE_ANNOTATION, KNATIVE, STANDARD, normalise_mode
from medserve_sandbox.loopback_proxy import LoopbackListener

logger = logging.getLogger("medserve.graph-standin")

GRAPH_API, GRAPH_PLURAL = "serving.kserve.io/v1alpha1", "inferencegraphs"
ISVC_API, ISVC_PLURAL = "serving.kserve.io/v1beta1", "inferenceservices"
DEPLOYMENT_API, DEPLOYMENTS = "apps/v1", "deployments"
KSERVICE_API, KSERVICES = "serving.knative.dev/v1", "services"
GRAPH_LABEL = "serving.kserve.io/inferencegraph"
KIND_LABEL = "serving.kserve.io/kind"  # pkg/constants/constants.go KServeWorkloadKind
READINESS_PATH = "/readyz"  # pkg/constants/constants.go RouterReadinessEndpoint


class NotResolved(Exception):
    """A step's InferenceService is missing or has no address: the controller requeues, writing nothing."""


def model_name(isvc: dict[str, Any]) -> str:
    """utils.go `GetModelName` for a custom predictor: `--model_name` in the first container's args."""
    containers = ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or []
    args = [str(a) for a in (containers[0].get("args") or [])] if containers else []
    name = ""
    for i, arg in enumerate(args):
        if arg.startswith("--model_name"):
            parts = arg.split("=")
            if len(parts) == 2:
                name = parts[1]
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                name = args[i + 1]
    return name or str(isvc["metadata"]["name"])


def predictor_endpoint(isvc: dict[str, Any]) -> str:
    """utils.go `GetPredictorEndpoint` for a predictor of custom containers (medserve's)."""
    address = ((isvc.get("status") or {}).get("address") or {}).get("url")
    if not address:
        raise NotResolved(f"service {isvc['metadata']['name']} is not ready")
    containers = ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or []
    env = {e.get("name"): str(e.get("value", "")) for e in (containers[0].get("env") or [])} if containers else {}
    if env.get("MULTI_MODEL_SERVER") == "true":
        return str(address)
    protocol = env.get("PROTOCOL", "v1")
    name = model_name(isvc)
    if protocol == "v1":
        return f"{address}/v1/models/{name}:predict"
    if protocol == "v2":
        return f"{address}/v2/models/{name}/infer"
    return str(address)


def resolve_graph(graph: dict[str, Any], services: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The graph spec with every serviceName step's serviceUrl filled in, as the controller hands the router."""
    namespace = graph["metadata"]["namespace"]
    spec: dict[str, Any] = json.loads(json.dumps(graph.get("spec") or {}))
    for node in (spec.get("nodes") or {}).values():
        for step in node.get("steps") or []:
            service = step.get("serviceName")
            if not service:
                continue
            isvc = services.get((namespace, service))
            if isvc is None:
                raise NotResolved(f"Failed to find graph service {service}")
            if not step.get("serviceUrl"):
                step["serviceUrl"] = predictor_endpoint(isvc)
    return spec


def compile_patterns(patterns: list[str]) -> list[re.Pattern[str]]:
    """main.go `compilePatterns`: Go's regexp.MatchString finds a match anywhere, as re.search does."""
    return [re.compile(p) for p in patterns]


def propagated_headers(headers: Any, patterns: list[re.Pattern[str]]) -> list[tuple[str, str]]:
    """`callService`: each header (canonical name) matching some pattern, once; Content-Type defaulted."""
    out: list[tuple[str, str]] = []
    matched: set[str] = set()
    names = list(dict.fromkeys(headers.keys()))
    for pattern in patterns:
        for name in names:
            canonical = "-".join(part.capitalize() for part in name.split("-"))
            if canonical not in matched and pattern.search(canonical):
                matched.add(canonical)
                out += [(canonical, v) for v in headers.getall(name)]
    if not any(k.lower() == "content-type" for k, _ in out):
        out.append(("Content-Type", "application/json"))
    return out


class RoutingError(Exception):
    """The router could not answer from a step: `status` and `message` become its error response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class GraphRouter(LoopbackListener):
    """One graph's listener on 127.0.0.1, running the router's contract on the resolved graph spec."""

    def __init__(self, key: tuple[str, str], http: httpx.AsyncClient, rng: random.Random,
                 patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.key, self.http, self.rng, self.patterns = key, http, rng, patterns
        self.spec: dict[str, Any] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == READINESS_PATH:
            return web.Response(status=200)
        spec = self.spec
        body = await request.read()
        if spec is None:
            # No router pod exists before the controller could resolve the graph: the ingress has no endpoint.
            return web.json_response({"error": "no healthy upstream"}, status=503)
        headers = propagated_headers(request.headers, self.patterns)
        try:
            status, content = await self.route_node("root", spec, body, headers)
        except RoutingError as exc:
            return web.json_response({"error": "Failed to process request", "cause": exc.message},
                                     status=exc.status)
        try:
            json.loads(content)
        except ValueError:
            return web.Response(body=content, status=status, content_type="text/plain")
        return web.Response(body=content, status=status, content_type="application/json")

    async def route_node(self, node_name: str, spec: dict[str, Any], body: bytes,
                         headers: list[tuple[str, str]]) -> tuple[int, bytes]:
        """main.go `routeStep` for Splitter nodes."""
        node = (spec.get("nodes") or {}).get(node_name) or {}
        router_type = node.get("routerType")
        if router_type != "Splitter":
            raise RoutingError(500, f"routerType {router_type} is not emulated by the sandbox (only Splitter is)")
        point, end = self.rng.randrange(100), 0
        for step in node.get("steps") or []:
            end += int(step.get("weight") or 0)
            if point < end:
                if step.get("nodeName"):
                    return await self.route_node(str(step["nodeName"]), spec, body, headers)
                return await self.call_service(str(step["serviceUrl"]), body, headers)
        raise RoutingError(500, "no route was selected by the splitter")

    async def call_service(self, url: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
        try:
            upstream = await self.http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RoutingError(500, f"Post \"{url}\": {type(exc).__name__}: {exc}") from exc
        return upstream.status_code, upstream.content


def graph_mode(graph: dict[str, Any], default_mode: str) -> str:
    """utils.go `GetDeploymentMode`, as the graph controller calls it."""
    recorded = str((graph.get("status") or {}).get("deploymentMode") or "")
    if recorded:
        return normalise_mode(recorded)
    annotation = normalise_mode(str(((graph.get("metadata") or {}).get("annotations") or {})
                                    .get(DEPLOYMENT_MODE_ANNOTATION, "")))
    return annotation if annotation in (STANDARD, KNATIVE) else normalise_mode(default_mode)


class GraphStandin:
    def __init__(self, kube: KubeClient, *, seed: int | None, propagate: list[str] | None = None,
                 default_mode: str = STANDARD) -> None:
        self.kube = kube
        self.rng = random.Random(seed)
        self.patterns = compile_patterns(propagate or [])
        self.default_mode = default_mode
        self.routers: dict[tuple[str, str], GraphRouter] = {}
        self.generations: dict[tuple[str, str], tuple[int, str]] = {}  # the router Deployment's (generation, spec)
        # Long enough for a batch prediction on a busy machine; connecting is local, so fails fast.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))

    async def close(self) -> None:
        for router in self.routers.values():
            await router.close()
        await self.http.aclose()

    async def sync(self) -> None:
        graphs = await self.kube.list(GRAPH_API, GRAPH_PLURAL, None)
        services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s
                    for s in await self.kube.list(ISVC_API, ISVC_PLURAL, None)} if graphs else {}
        seen = set()
        for graph in graphs:
            key = (graph["metadata"]["namespace"], graph["metadata"]["name"])
            seen.add(key)
            if graph["metadata"].get("deletionTimestamp"):
                continue
            await self.reconcile(key, graph, services)
        for key in [k for k in self.routers if k not in seen]:
            router = self.routers.pop(key)
            self.generations.pop(key, None)
            logger.info("InferenceGraph %s/%s is gone: closing its listener on port %d", *key, router.port)
            await router.close()

    async def reconcile(self, key: tuple[str, str], graph: dict[str, Any],
                        services: dict[tuple[str, str], dict[str, Any]]) -> None:
        router = self.routers.get(key)
        if router is None:
            router = GraphRouter(key, self.http, self.rng, self.patterns)
            try:
                await router.start()
            except OSError as exc:
                logger.warning("InferenceGraph %s/%s: no port to listen on, retrying: %s", *key, exc)
                return
            self.routers[key] = router
            logger.info("InferenceGraph %s/%s listens on %s", *key, router.url)
        try:
            spec = resolve_graph(graph, services)
        except NotResolved as exc:
            if router.spec is None:
                logger.info("InferenceGraph %s/%s waits: %s", *key, exc)
            return  # controller.go: `return reconcile.Result{Requeue: true}` before any status write
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        generation, before = self.generations.get(key, (0, ""))
        if digest != before:
            generation += 1
            self.generations[key] = (generation, digest)
            router.spec = spec
            routes = [f"{s.get('name') or s.get('serviceName')}={s.get('weight')} -> {s.get('serviceUrl')}"
                      for s in ((spec.get("nodes") or {}).get("root") or {}).get("steps") or []]
            logger.info("InferenceGraph %s/%s routes %s", *key, ", ".join(routes))
        await self.write_router_workload(graph, spec, router)
        await self.write_status(graph, router, generation)

    async def write_router_workload(self, graph: dict[str, Any], spec: dict[str, Any], router: GraphRouter) -> None:
        """The router's workload as KServe's graph controller makes it, named after the graph, owned by it, its pod
        template carrying the resolved graph spec as `--graph-json`: a Deployment in Standard mode (kserve
        pkg/controller/v1alpha1/inferencegraph/raw_ig.go `createInferenceGraphPodSpec`), a Knative Service in
        Knative mode (knative_reconciler.go `createKnativeService`: the revision template labelled
        `serving.kserve.io/inferencegraph` and `serving.kserve.io/kind: InferenceGraph`). This process routes by
        the new steps at once, so the workload is reported rolled out as soon as its template changes — the
        Deployment with every replica updated and available at its generation, the Knative Service Ready with
        all traffic on its latest revision — which is what the operator waits for before it removes an arm
        (controllers/abtest/router.py)."""
        meta = graph["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        standard = graph_mode(graph, self.default_mode) == STANDARD
        labels = {GRAPH_LABEL: name} if standard else {GRAPH_LABEL: name, KIND_LABEL: "InferenceGraph"}
        template = {"metadata": {"labels": labels},
                    "spec": {"containers": [{"name": name, "image": "kserve/router:sandbox-stand-in",
                                             "args": ["--graph-json", json.dumps(spec)]}]}}
        api, plural, kind = (DEPLOYMENT_API, DEPLOYMENTS, "Deployment") if standard else \
            (KSERVICE_API, KSERVICES, "Service")
        body: dict[str, Any] = {"template": template}
        if standard:
            body = {"replicas": 1, "selector": {"matchLabels": {GRAPH_LABEL: name}}, **body}
        current = await self.kube.get(api, plural, namespace, name)
        desired: dict[str, Any] = {"apiVersion": api, "kind": kind,
                   "metadata": {"name": name, "namespace": namespace, "labels": {GRAPH_LABEL: name},
                                "ownerReferences": [{"apiVersion": GRAPH_API, "kind": "InferenceGraph", "name": name,
                                                     "uid": meta["uid"], "controller": True}]},
                   "spec": body}
        if current is None:
            current = await self.kube.create(api, plural, namespace, desired)
        elif (current.get("spec") or {}).get("template") != template:
            desired["metadata"] = {**desired["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
            current = await self.kube.replace(api, plural, namespace, desired)
        generation = current["metadata"].get("generation", 1)
        if standard:
            status: dict[str, Any] = {
                "observedGeneration": generation, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                "availableReplicas": 1,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}
        else:  # a revision per generation (<name>-0000N), all traffic on the latest (service_lifecycle.go)
            revision = f"{name}-{generation:05d}"
            status = {"observedGeneration": generation, "url": router.url, "latestCreatedRevisionName": revision,
                      "latestReadyRevisionName": revision,
                      "traffic": [{"revisionName": revision, "latestRevision": True, "percent": 100}],
                      "conditions": [{"type": t, "status": "True"}
                                     for t in ("ConfigurationsReady", "Ready", "RoutesReady")]}
        if current.get("status") != status:
            await procs.patch_status(self.kube, api, plural, current, status)

    async def write_status(self, graph: dict[str, Any], router: GraphRouter, generation: int) -> None:
        old = graph.get("status") or {}
        conditions = Conditions(old.get("conditions"), now_rfc3339(), dependents=(), severity=False)
        status: dict[str, Any] = {}
        if graph_mode(graph, self.default_mode) == STANDARD:
            conditions.items = {k: v for k, v in conditions.items.items() if k in ("Ready", "Stopped")}
            conditions.mark("Ready", "True")  # raw_ig.go PropagateRawStatus: SetConditions([Ready True])
            status["observedGeneration"] = generation
        else:
            for type_ in ("ConfigurationsReady", "Ready", "RoutesReady"):
                conditions.mark(type_, "True")  # the router's Knative Service, whose pod spec KServe writes
            # The Knative branch copies only the conditions and the URL: no observedGeneration.
        conditions.mark("Stopped", "False")
        status["url"] = router.url
        status["conditions"] = conditions.as_list()
        if all(old.get(k) == v for k, v in status.items()):
            return
        await procs.patch_status(self.kube, GRAPH_API, GRAPH_PLURAL, graph, status)


def main(argv: list[str]) -> int:
    parser = procs.controller_parser("medserve_sandbox.graph_standin", __doc__)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random draw that picks each request's step (tests: reproducible splits)")
    parser.add_argument("--propagate-header", action="append", default=[], metavar="REGEX",
                        help="a header pattern of inferenceservice-config router.headers.propagate (repeatable)")
    parser.add_argument("--default-deployment-mode", default=STANDARD,
                        choices=[STANDARD, KNATIVE, "RawDeployment", "Serverless"],
                        help="the cluster's default (inferenceservice-config deploy.defaultDeploymentMode)")
    args = parser.parse_args(argv)
    try:
        compile_patterns(args.propagate_header)
    except re.error as exc:
        parser.error(f"--propagate-header: {exc}")

    procs.run_controller(args.kubeconfig, f"InferenceGraph stand-in watching {args.kubeconfig}",
                         lambda kube: GraphStandin(kube, seed=args.seed, propagate=args.propagate_header,
                                                   default_mode=args.default_deployment_mode))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
