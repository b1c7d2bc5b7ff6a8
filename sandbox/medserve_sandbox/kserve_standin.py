"""A local stand-in for KServe's InferenceService controller, its children's controllers and the kubelet.

It watches the InferenceServices in the emulated API (polling, every half second) and runs each predictor
that uses the medserve runtime as local processes (`python -m medserve_runtime` with the container's own
args and env; the port mapped onto the local machine, volumes and env materialised as the kubelet would
by kubelet_volumes.py: Secrets as files, emptyDirs, a PersistentVolumeClaim as a shared directory), in the deployment
mode KServe would pick (kserve pkg/controller/v1beta1/inferenceservice/utils/utils.go `GetDeploymentMode`:
`status.deploymentMode` once recorded, else the `serving.kserve.io/deploymentMode` annotation when it is
Standard, Knative or ModelMesh (the legacy RawDeployment and Serverless mapped to them), else the cluster
default, `--default-deployment-mode`, KServe's inferenceservice-config `deploy.defaultDeploymentMode`):

- Standard: a Deployment `<name>-predictor` (controller-runtime's rolling update: a spec change starts a
  new pod beside the old one, which stops once the new one is Ready), one Deployment per `spec.canary`
  entry, `<name>-<canary>-predictor`, running the stable predictor with the canary's fields over it
  (components/predictor.go `reconcileCanaryDeployments`, `buildCanaryPredictor`), a Service per Deployment
  (a loopback proxy over its Ready pods) and the ingress: `status.url` is a loopback proxy that splits by
  `applyCanaryWeights`. Only the fields that make the Deployment's pod template are its spec: replica counts
  and autoscaling go to the HPA, `canaryTrafficPercent` is read by nobody, `spec.canary` makes other
  Deployments; so changing only those leaves the Deployment's generation, hence the InferenceService's
  `observedGeneration`, where it was.
- Knative ("Serverless"): a Knative Service `<name>-predictor` whose pod spec must pass Knative's field masks
  (knative_podspec.py, features from `--knative-feature`); if it does not, the Knative Service is never
  created and the InferenceService says why (PredictorReady False, ReconcileFailed, Knative's denial). Every
  change of the predictor but `canaryTrafficPercent` is a new revision `<name>-predictor-0000N`, a process;
  the traffic KServe asks for (`canaryTrafficPercent` to the latest revision, the rest to the last rolled-out
  one) is served by the route, a loopback proxy behind `status.url`; revisions no route target names stop
  (scale to zero).

The status is written as KServe writes it, from those children: kserve_status.py says exactly what and from
which KServe functions. For Prometheus it keeps `<workdir>/prometheus/targets.json` (file_sd format) listing
every Ready pod's `127.0.0.1:PORT` with the labels a Kubernetes scrape would add (`namespace`, `pod`,
`inferenceservice`); the sandbox's Prometheus (sandbox/prometheus_server.py) scrapes what it lists.

What it does NOT do: run arbitrary images (a predictor that is not the medserve runtime never gets a pod),
scale replicas (one pod per Deployment or revision), apply resource limits, ModelMesh, transformers,
explainers, scale-from-zero, or KServe's mutating webhook (kserve_webhooks.py says what that leaves out).
The operator never knows it is talking to a stand-in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from medserve_operator.clients.kube import KubeClient
from medserve_operator.kit.conditions import now_rfc3339

from medserve_sandbox import knative_podspec, kserve_status, kubelet_volumes, procs
from medserve_sandbox.kserve_webhooks import DEPLOYMENT_MODE_ANNOTATION, KNATIVE, MODELMESH, STANDARD, normalise_mode
from medserve_sandbox.loopback_proxy import Backend, WeightedProxy
from medserve_sandbox.prometheus_server import TARGETS_FILE, write_targets

logger = logging.getLogger("medserve.kserve-standin")

ISVC_API, ISVC_PLURAL = "serving.kserve.io/v1beta1", "inferenceservices"
# What the HPA, not the Deployment, holds in Standard mode; and what no child reads at all.
NOT_IN_DEPLOYMENT = frozenset({"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling",
                               "canaryTrafficPercent", "name"})
RESTART_BACKOFF_SECONDS = 5.0


def resolve_mode(isvc: dict[str, Any], default_mode: str) -> str:
    """utils.go `GetDeploymentMode`: the recorded mode, else a valid annotation, else the cluster default."""
    recorded = str((isvc.get("status") or {}).get("deploymentMode") or "")
    if recorded:
        return normalise_mode(recorded)
    annotation = normalise_mode(str(((isvc.get("metadata") or {}).get("annotations") or {})
                                    .get(DEPLOYMENT_MODE_ANNOTATION, "")))
    if annotation in (STANDARD, KNATIVE, MODELMESH):
        return annotation
    return normalise_mode(default_mode)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def merged_canary_predictor(stable: dict[str, Any], canary: dict[str, Any]) -> dict[str, Any]:
    """predictor.go `buildCanaryPredictor`: mergo.WithOverride of the canary's set fields over the stable's."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items() if v not in (None, "", [], {})}}
        return over if over not in (None, "", [], {}) else base

    result = merge(stable, canary)
    for key in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
        result.pop(key, None)
    return dict(result)


@dataclass
class Pod:
    """One running predictor process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    template: str  # the hash of the pod template it runs
    ready: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Deployment:
    """A Deployment and its Service, as the Deployment controller and kube-proxy would keep them."""

    name: str
    service: WeightedProxy
    generation: int = 0
    template: str = ""
    pods: list[Pod] = field(default_factory=list)
    restart_after: float = 0.0

    def view(self) -> kserve_status.DeploymentView:
        current = [p for p in self.pods if p.template == self.template]
        return kserve_status.DeploymentView(
            name=self.name, generation=self.generation, replica_set=f"{self.name}-{self.template}",
            ready_pods=sum(p.ready and p.running for p in self.pods),
            new_ready=any(p.ready and p.running for p in current), url=self.service.url)


@dataclass
class Revision:
    number: int
    name: str
    template: str
    pod: Pod | None = None
    failed: str | None = None


@dataclass
class KnativeService:
    """A Knative Service, its Configuration's revisions and its route (the proxy behind its URL)."""

    route: WeightedProxy
    generation: int = 0
    desired: str = ""  # hash of (revision template, traffic): what bumps its generation
    revisions: list[Revision] = field(default_factory=list)
    traffic: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Service:
    """Everything the stand-in runs for one InferenceService."""

    mode: str
    ingress: WeightedProxy
    deployments: dict[str, Deployment] = field(default_factory=dict)
    knative: KnativeService | None = None

    def pods(self) -> list[Pod]:
        found = [p for d in self.deployments.values() for p in d.pods]
        if self.knative is not None:
            found += [r.pod for r in self.knative.revisions if r.pod is not None]
        return found

    def proxies(self) -> list[WeightedProxy]:
        return [self.ingress, *(d.service for d in self.deployments.values())]


class ServiceDirectory:
    """Cluster DNS for the predictors: `http://127.0.0.1:PORT/<namespace>/<name>/<path>` reaches the
    InferenceService <name>'s ingress, as `http://<name>-predictor.<namespace>.svc.cluster.local/<path>` reaches
    its predictor in a cluster (what an A/B arm forwards feedback to, model-runtime arms.py). The sandbox gives
    the operator `MEDSERVE_RUNTIME_PEER_URL_TEMPLATE=http://127.0.0.1:PORT/{namespace}/{arm}`."""

    def __init__(self, services: dict[tuple[str, str], Service], http: httpx.AsyncClient, port: int) -> None:
        self.services, self.http, self.port = services, http, port
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{namespace}/{name}/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["namespace"], request.match_info["name"])
        service = self.services.get(key)
        if service is None:
            return web.json_response({"error": f"no Service {key[1]} in namespace {key[0]}"}, status=503)
        tail = request.raw_path.split("/", 3)[3] if request.raw_path.count("/") >= 3 else ""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("host", "content-length")]
        try:
            upstream = await self.http.request(request.method, f"{service.ingress.url}/{tail}",
                                               content=await request.read() or None, headers=headers)
        except httpx.HTTPError as exc:
            return web.json_response({"error": f"{key[1]}: {type(exc).__name__}"}, status=503)
        return web.Response(body=upstream.content, status=upstream.status_code,
                            content_type=upstream.headers.get("content-type", "application/json").split(";")[0])


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: removed keys become null."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old or old[key] != value:
            patch[key] = merge_patch(old.get(key), value)
    return patch


class Standin:
    def __init__(self, kube: KubeClient, workdir: Path, *, mlflow_uri: str | None, default_mode: str = STANDARD,
                 knative_features: dict[str, str] | None = None, seed: int | None = None,
                 directory_port: int | None = None) -> None:
        self.kube, self.workdir, self.mlflow_uri = kube, workdir, mlflow_uri
        self.default_mode = default_mode
        self.knative_features = knative_features or {}
        self.services: dict[tuple[str, str], Service] = {}
        self.rng = random.Random(seed)
        self.http = httpx.AsyncClient(timeout=2.0)
        # The proxies' upstream calls: as long as a batch prediction may take on a busy machine.
        self.proxy_http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))
        self.targets_path = workdir / "prometheus" / TARGETS_FILE
        self._targets: list[tuple[str, dict[str, str]]] | None = None
        self.start_errors: dict[tuple[str, str], str] = {}
        """Why the latest start of each InferenceService's pod failed (the kubelet's message)."""
        self.directory = ServiceDirectory(self.services, self.proxy_http, directory_port) if directory_port else None
        self._directory_started = False

    async def close(self) -> None:
        if self.directory is not None and self._directory_started:
            await self.directory.close()
        for key in list(self.services):
            await self.remove(key)
        await self.http.aclose()
        await self.proxy_http.aclose()

    async def remove(self, key: tuple[str, str]) -> None:
        service = self.services.pop(key)
        for pod in service.pods():
            procs.stop(pod.proc)
        for proxy in service.proxies():  # the Knative route is the ingress proxy: closed with it
            await proxy.close()

    async def sync(self) -> None:
        if self.directory is not None and not self._directory_started:
            await self.directory.start()
            self._directory_started = True
        items = await self.kube.list(ISVC_API, ISVC_PLURAL, None)
        seen = set()
        for isvc in items:
            key = (isvc["metadata"]["namespace"], isvc["metadata"]["name"])
            seen.add(key)
            if isvc["metadata"].get("deletionTimestamp"):
                continue
            await self.reconcile(key, isvc)
        for key in [k for k in self.services if k not in seen]:
            logger.info("InferenceService %s/%s is gone: stopping its predictors", *key)
            await self.remove(key)
        self.publish_targets()

    def publish_targets(self) -> None:
        """Rewrite the Prometheus targets file when the set of ready, running pods changed."""
        targets = sorted((f"127.0.0.1:{p.port}", {"namespace": namespace, "inferenceservice": name, "pod": p.name})
                         for (namespace, name), service in self.services.items()
                         for p in service.pods() if p.ready and p.running)
        if targets != self._targets:
            write_targets(self.targets_path, targets)
            self._targets = targets

    async def new_proxy(self) -> WeightedProxy:
        proxy = WeightedProxy(self.proxy_http, self.rng)
        await proxy.start()
        return proxy

    async def reconcile(self, key: tuple[str, str], isvc: dict[str, Any]) -> None:
        mode = resolve_mode(isvc, self.default_mode)
        if mode not in (STANDARD, KNATIVE):
            logger.warning("InferenceService %s/%s: deployment mode %s is not emulated", *key, mode)
            return
        service = self.services.get(key)
        if service is not None and service.mode != mode:
            await self.remove(key)  # only reachable by deleting the recorded mode; start over
            service = None
        if service is None:
            service = Service(mode=mode, ingress=await self.new_proxy())
            self.services[key] = service
        old = isvc.get("status") or {}
        if mode == STANDARD:
            status = await self.reconcile_standard(key, isvc, service, old)
        else:
            status = await self.reconcile_knative(key, isvc, service, old)
        patch = merge_patch(old, status)
        if patch:
            await procs.patch_status(self.kube, ISVC_API, ISVC_PLURAL, isvc, patch)

    # ---------------------------------------------------------------- Standard

    async def reconcile_standard(self, key: tuple[str, str], isvc: dict[str, Any], service: Service,
                                 old: dict[str, Any]) -> dict[str, Any]:
        namespace, name = key
        spec = isvc.get("spec") or {}
        predictor = spec.get("predictor") or {}
        stable_name = f"{name}-{predictor['name']}-predictor" if predictor.get("name") else f"{name}-predictor"
        wanted: dict[str, dict[str, Any]] = {stable_name: predictor}
        percents: dict[str, tuple[str, int]] = {}
        for canary in spec.get("canary") or []:
            canary_predictor = canary.get("predictor") or {}
            canary_name = str(canary_predictor.get("name") or "")
            deployment_name = f"{name}-{canary_name}-predictor"
            wanted[deployment_name] = merged_canary_predictor(predictor, canary_predictor)
            percents[deployment_name] = (canary_name, int(canary.get("trafficPercent") or 0))
        for gone in [n for n in service.deployments if n not in wanted]:
            deployment = service.deployments.pop(gone)
            logger.info("Deployment %s/%s is no longer wanted: deleting it", namespace, gone)
            for pod in deployment.pods:
                procs.stop(pod.proc)
            await deployment.service.close()
        for deployment_name, pod_spec in wanted.items():
            if deployment_name not in service.deployments:
                service.deployments[deployment_name] = Deployment(deployment_name, await self.new_proxy())
            await self.roll(key, isvc, service.deployments[deployment_name], pod_spec)
        stable = service.deployments[stable_name].view()
        canaries = [kserve_status.CanaryView(percents[n][0], percents[n][1], service.deployments[n].view())
                    for n in percents]
        backends = kserve_status.canary_backends(stable, canaries)
        if service.ingress.route([Backend(n, u, w) for n, u, w in backends]):
            logger.info("InferenceService %s/%s ingress routes %s", *key, ", ".join(f"{n}={w}" for n, _, w in backends))
        running = sum(p.running for p in service.deployments[stable_name].pods)
        return kserve_status.standard_status(old, stable=stable, canaries=canaries, ingress_url=service.ingress.url,
                                             running_pods=running, now=now_rfc3339())

    async def roll(self, key: tuple[str, str], isvc: dict[str, Any], deployment: Deployment,
                   pod_spec: dict[str, Any]) -> None:
        """The Deployment controller's rolling update, with one replica: surge one, then retire the old."""
        template = spec_hash({k: v for k, v in pod_spec.items() if k not in NOT_IN_DEPLOYMENT})
        if template != deployment.template:
            deployment.generation += 1
            deployment.template = template
        self.reap(deployment.pods)
        current = [p for p in deployment.pods if p.template == template]
        if not current and time.monotonic() >= deployment.restart_after:
            pod_name = f"{deployment.name}-{template}-{self.rng.randrange(16 ** 5):05x}"
            pod = await self.start(key, isvc, pod_spec, pod_name, template)
            if pod is None:
                deployment.restart_after = time.monotonic() + RESTART_BACKOFF_SECONDS
            else:
                deployment.pods.append(pod)
                current = [pod]
        for pod in current:
            if not pod.ready:
                pod.ready = await self.probe(pod)
        if any(p.ready for p in current):
            for old_pod in [p for p in deployment.pods if p.template != template]:
                logger.info("pod %s replaced by %s: stopping it", old_pod.name, current[0].name)
                procs.stop(old_pod.proc)
                deployment.pods.remove(old_pod)
        deployment.service.route([Backend(p.name, p.url, 1) for p in deployment.pods if p.ready and p.running])

    def reap(self, pods: list[Pod]) -> None:
        for pod in [p for p in pods if not p.running]:
            logger.warning("predictor %s exited with %s (log %s)", pod.name, pod.proc.returncode, pod.log_path)
            pods.remove(pod)

    # ---------------------------------------------------------------- Knative

    async def reconcile_knative(self, key: tuple[str, str], isvc: dict[str, Any], service: Service,
                                old: dict[str, Any]) -> dict[str, Any]:
        namespace, name = key
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        pod_spec = {k: v for k, v in predictor.items() if k in knative_podspec.POD_SPEC_FIELDS}
        denial = knative_podspec.knative_denial(pod_spec, self.knative_features)
        if denial is not None and service.knative is None:
            if not old.get("conditions"):
                logger.warning("Knative Service %s/%s-predictor refused: %s", namespace, name, denial)
            return kserve_status.serverless_status(old, kserve_status.KnativeServiceView(denial=denial),
                                                   running_pods=0, ready_pods=0, now=now_rfc3339())
        if service.knative is None:
            service.knative = KnativeService(route=service.ingress)
        ksvc = service.knative
        if denial is not None:
            # An update Knative refuses leaves the Knative Service as it was; KServe reports the refusal.
            view = kserve_status.KnativeServiceView(denial=denial)
            return kserve_status.serverless_status(old, view, running_pods=0, ready_pods=0, now=now_rfc3339())
        template = spec_hash({k: v for k, v in predictor.items() if k != "canaryTrafficPercent"})
        rolled_out = str(((old.get("components") or {}).get("predictor") or {}).get("latestRolledoutRevision") or "")
        percent = predictor.get("canaryTrafficPercent")
        traffic = kserve_status.desired_traffic(percent if isinstance(percent, int) else None, rolled_out)
        desired = spec_hash({"template": template, "traffic": traffic})
        if desired != ksvc.desired:
            ksvc.generation += 1
            ksvc.desired, ksvc.traffic = desired, traffic
        latest = ksvc.revisions[-1] if ksvc.revisions else None
        if latest is None or latest.template != template:
            number = latest.number + 1 if latest else 1
            latest = Revision(number, f"{name}-predictor-{number:05d}", template)
            ksvc.revisions.append(latest)
        if latest.pod is not None and not latest.pod.running:
            latest.failed = (f'Revision "{latest.name}" failed with message: Container failed with: exit code '
                             f"{latest.pod.proc.returncode}.")
            logger.warning("revision %s exited (log %s)", latest.name, latest.pod.log_path)
            latest.pod = None
        if latest.pod is None and latest.failed is None:
            latest.pod = await self.start(key, isvc, predictor, f"{latest.name}-deployment", template)
            if latest.pod is None and key in self.start_errors:
                latest.failed = f'Revision "{latest.name}" failed with message: {self.start_errors[key]}.'
        if latest.pod is not None and not latest.pod.ready:
            latest.pod.ready = await self.probe(latest.pod)
        ready = [r for r in ksvc.revisions if r.pod is not None and r.pod.ready and r.pod.running]
        latest_ready = ready[-1].name if ready else None
        resolved = kserve_status.resolve_traffic(ksvc.traffic, latest_ready)
        by_name = {r.name: r for r in ksvc.revisions}
        backends: list[Backend] = []
        for target in resolved or []:
            revision = by_name.get(target["revisionName"])
            if revision is not None and revision.pod is not None:
                backends.append(Backend(revision.name, revision.pod.url, int(target["percent"])))
        if ksvc.route.route(backends):
            logger.info("Knative route %s/%s-predictor sends %s", namespace, name,
                        ", ".join(f"{b.name}={b.weight}%" for b in backends) or "nothing")
        referenced = {b.name for b in backends} | {latest.name}
        for revision in ksvc.revisions:
            if revision.name not in referenced and revision.pod is not None:
                logger.info("revision %s has no traffic: scaling it to zero", revision.name)
                procs.stop(revision.pod.proc)
                revision.pod = None
        ksvc.revisions = [r for r in ksvc.revisions if r.pod is not None or r is latest or r.name in referenced]
        view = kserve_status.KnativeServiceView(
            generation=ksvc.generation, latest_created=latest.name, latest_ready=latest_ready, failed=latest.failed,
            traffic=resolved, url=ksvc.route.url)
        running = sum(1 for r in ksvc.revisions if r.pod is not None and r.pod.running)
        return kserve_status.serverless_status(old, view, running_pods=running, ready_pods=len(ready),
                                               now=now_rfc3339())

    # ---------------------------------------------------------------- pods

    async def start(self, key: tuple[str, str], isvc: dict[str, Any], pod_spec: dict[str, Any], pod_name: str,
                    template: str) -> Pod | None:
        """The kubelet: the pod's volumes and env materialised (kubelet_volumes.py), then the runtime process.
        None when it cannot start; `start_errors[key]` says why, in the kubelet's words."""
        namespace, name = key
        containers = pod_spec.get("containers") or []
        if not containers:
            logger.warning("InferenceService %s/%s has no predictor container", namespace, name)
            return None
        container = containers[0]
        home = self.workdir / "predictors" / namespace / pod_name
        home.mkdir(parents=True, exist_ok=True)
        try:
            local = await kubelet_volumes.materialise(
                self.kube, namespace=namespace, pod_name=pod_name, container=container,
                volumes=pod_spec.get("volumes") or [], pod_dir=home / "volumes", shared_dir=self.workdir / "volumes")
        except kubelet_volumes.ContainerConfigError as exc:
            logger.warning("pod %s of %s/%s cannot start: %s", pod_name, namespace, name, exc)
            self.start_errors[key] = f"{exc.reason}: {exc.message}"
            return None
        self.start_errors.pop(key, None)
        port = procs.free_port()
        args = [a for a in local.args if not a.startswith("--http_port")]
        args.append(f"--http_port={port}")
        env = {**os.environ, **local.env}
        if self.mlflow_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        env.setdefault("MEDSERVE_PHI_HASH_KEY", hashlib.sha256(f"sandbox/{namespace}/{name}".encode()).hexdigest())
        log_path = home / "runtime.log"
        logger.info("starting pod %s on port %d", pod_name, port)
        proc = procs.spawn([sys.executable, "-m", "medserve_runtime", *args], log_path=log_path, env=env, cwd=home)
        return Pod(pod_name, port, proc, log_path, template)

    async def probe(self, pod: Pod) -> bool:
        try:
            response = await self.http.get(f"{pod.url}/v2/health/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def parse_features(pairs: list[str]) -> dict[str, str]:
    features: dict[str, str] = {}
    for pair in pairs:
        flag, sep, value = pair.partition("=")
        if not sep or flag not in knative_podspec.FEATURE_DEFAULTS:
            raise SystemExit(f"--knative-feature {pair!r}: expected FLAG=enabled|disabled|allowed, FLAG one of "
                             f"{', '.join(sorted(knative_podspec.FEATURE_DEFAULTS))}")
        features[flag] = value
    return features


def main(argv: list[str]) -> int:
    parser = procs.controller_parser("medserve_sandbox.kserve_standin", __doc__)
    parser.add_argument("--workdir", required=True, type=Path, help="where predictor processes keep their files")
    parser.add_argument("--mlflow-uri", default=None, help="MLflow URL for the predictors (overrides the pod env)")
    parser.add_argument("--default-deployment-mode", default=STANDARD,
                        choices=[STANDARD, KNATIVE, "RawDeployment", "Serverless"],
                        help="the cluster's default (inferenceservice-config deploy.defaultDeploymentMode)")
    parser.add_argument("--knative-feature", action="append", default=[], metavar="FLAG=VALUE",
                        help="a Knative config-features flag, e.g. kubernetes.podspec-securitycontext=enabled")
    parser.add_argument("--seed", type=int, default=None, help="seed of the traffic split's draws (tests)")
    parser.add_argument("--service-directory-port", type=int, default=None,
                        help="serve the predictors by name on this loopback port (the sandbox's cluster DNS)")
    args = parser.parse_args(argv)
    features = parse_features(args.knative_feature)

    procs.run_controller(args.kubeconfig, f"KServe stand-in watching {args.kubeconfig}",
                         lambda kube: Standin(kube, args.workdir, mlflow_uri=args.mlflow_uri,
                                              default_mode=args.default_deployment_mode,
                                              knative_features=features, seed=args.seed,
                                              directory_port=args.service_directory_port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
