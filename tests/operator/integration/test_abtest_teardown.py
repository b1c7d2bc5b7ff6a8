"""A RetrainPolicy's A/B test ends without one failed request: continuous traffic through the split, across
the conclusion, the promotion and the removal of the challenger.

Real: the two arms are `python -m medserve_runtime` processes with API keys on, the ABTest and RetrainPolicy
reconcilers are the operator's own `reconcile` functions. Played by the test, in-process, from KServe 0.20's
source: the API server (tests/support/fakes.py FakeKube), KServe's InferenceGraph controller and router
(`KServeRouter`), the ModelDeployment reconciler's status and the kubelet (the challenger's process stops when
its ModelDeployment is deleted). The router keeps KServe's contract (kserve `cmd/router/main.go`): each
request goes to one Splitter step drawn by weight (`pickupRoute`), POSTed to the step's
`/v1/models/<name>:predict` whatever the client's path (`callService`, the URL from
`isvcutils.GetPredictorEndpoint`), with Content-Type and only the headers `router.headers.propagate` matches
(here `Authorization`); the answer is the step's status and body (`graphHandler`). A graph change takes
effect only when the router's pods are replaced (`--graph-json` is read at start), which takes a while, and
KServe's Deployment reports it; until then requests still go to the old graph's steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from aiohttp import web
from fakes import FakeKube, FakePrometheus, FakeRegistry, kopf_events
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers import abtest, retrainpolicy
from medserve_sandbox import procs
from runtime_kit import KEYS, RuntimeProcess, predict_body, trained_model

if TYPE_CHECKING:
    from medserve_operator.clients.kube import KubeClient
    from medserve_operator.clients.mlflow import MlflowRegistry
    from medserve_operator.clients.prometheus import PrometheusClient

API, IG_API, IG = "medserve.io/v1alpha1", "serving.kserve.io/v1alpha1", "inferencegraphs"
NS, MODEL, POLICY = "icu", "triage-classifier", "triage-on-drift"
CHAMPION, CHALLENGER, TEST = "triage", "triage-v2", "triage-on-drift-v2"
PROPAGATE = ("Authorization",)
ROLLOUT_S = 1.5
"""How long KServe takes to replace the router's pods after a graph change."""
LOG = logging.getLogger("test.abtest-teardown")


class KServeRouter:
    """KServe's graph controller and router for one InferenceGraph (see the module docstring)."""

    def __init__(self, kube: FakeKube, arms: dict[str, str]) -> None:
        self.kube, self.arms = kube, arms
        self.running: dict[str, Any] | None = None  # the graph the router's pods were started with
        self.desired: dict[str, Any] | None = None  # the graph's spec, the Deployment's template
        self.changed_at: float | None = None
        self.generation = 0
        self.rng = random.Random(11)
        self.http = httpx.AsyncClient(timeout=30)
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.running is None:
            return web.json_response({"error": "no router pod yet"}, status=503)
        steps = self.running["nodes"]["root"]["steps"]
        point, end, step = self.rng.randrange(100), 0, None
        for candidate in steps:
            end += int(candidate["weight"])
            if point < end:
                step = candidate
                break
        assert step is not None
        name = step["serviceName"]
        headers = {"Content-Type": "application/json"}
        headers.update({h: request.headers[h] for h in PROPAGATE if h in request.headers})
        try:
            answer = await self.http.post(f"{self.arms[name]}/v1/models/{name}:predict", content=body, headers=headers)
        except httpx.HTTPError as exc:  # the router answers 500 with its error JSON (prepareErrorResponse)
            return web.json_response({"error": "Failed to process request", "cause": str(exc)}, status=500)
        return web.Response(body=answer.content, status=answer.status_code, content_type="application/json")

    def sync(self) -> None:
        """The graph controller's reconcile: the router Deployment gets the graph's spec as --graph-json (a new
        generation); its pods are replaced ROLLOUT_S later, until when the old pod still routes."""
        spec = self.kube.obj(IG_API, IG, NS, TEST)["spec"]
        now = time.monotonic()
        if spec != self.desired:
            self.desired, self.changed_at, self.generation = spec, now, self.generation + 1
        if self.running != spec and (self.running is None or now - (self.changed_at or now) >= ROLLOUT_S):
            self.running = spec
        rolling = self.running != spec
        self.kube.put({"apiVersion": "apps/v1", "kind": "Deployment", "plural": "deployments",
                       "metadata": {"name": TEST, "namespace": NS, "generation": self.generation},
                       "spec": {"replicas": 1, "template": {"spec": {"containers": [
                           {"name": TEST, "args": ["--graph-json", json.dumps(spec)]}]}}},
                       "status": {"observedGeneration": self.generation, "replicas": 2 if rolling else 1,
                                  "updatedReplicas": 1, "availableReplicas": 1}})
        self.kube.set_status(IG_API, IG, NS, TEST, {"url": self.url, "observedGeneration": self.generation,
                                                    "conditions": [{"type": "Ready", "status": "True"}]})


@dataclasses.dataclass
class Traffic:
    answered: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    feedback: int = 0
    stop: bool = False


async def send_traffic(url: str, traffic: Traffic) -> None:
    """Predictions through the graph, and ground truth for half of them (through the graph too)."""
    headers = {"Authorization": f"Bearer {KEYS['clinician'][0]}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        i = 0
        while not traffic.stop:
            i += 1
            r = await client.post(url + "/", json=predict_body(f"patient-{i}"))
            if r.status_code != 200:
                traffic.failures.append(("predict", r.status_code, r.text[:200]))
                continue
            body = r.json()
            traffic.answered[body["model_name"]] += 1
            if i % 2 == 0:
                f = await client.post(url + "/", json={"prediction_id": body["prediction_id"],
                                                       "outcome": body["prediction"]["primary_diagnosis"]})
                if f.status_code != 200 or f.json().get("correct") is not True:
                    traffic.failures.append(("feedback", f.status_code, f.text[:200]))
                traffic.feedback += 1


class World:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.registry = FakeRegistry()
        self.prometheus = FakePrometheus()
        self.registry.add_version(MODEL)
        self.registry.move_alias(MODEL, "champion", "1")
        config = OperatorConfig(mlflow_uri="http://mlflow.fake", runtime_mlflow_uri="http://mlflow",
                                router_headers_propagate=PROPAGATE, graph_drain_seconds=1.0)
        kube, registry = cast("KubeClient", self.kube), cast("MlflowRegistry", self.registry)
        self.ab = abtest.Runtime(config=config, kube=kube, registry=registry,
                                 prometheus=cast("PrometheusClient", self.prometheus))
        self.rp = retrainpolicy.Runtime(config=config, kube=kube, registry=registry,
                                        query_value=self.prometheus.query_value)

    def md_reports(self, name: str, version: str) -> None:
        """The ModelDeployment reconciler's status: the model it serves, its InferenceService."""
        self.kube.set_status(API, "modeldeployments", NS, name, {"model": {"name": MODEL, "version": version},
                                                                 "inferenceService": name})

    async def reconcile(self) -> None:
        if self.kube.has(API, "abtests", NS, TEST):
            await abtest.reconcile(self.ab, self.kube.obj(API, "abtests", NS, TEST), LOG)
        await retrainpolicy.reconcile(self.rp, self.kube.obj(API, "retrainpolicies", NS, POLICY), LOG)

    async def retrain(self) -> None:
        """Drift starts a Job, which registers version 2: the policy creates the challenger and the ABTest."""
        self.kube.put({"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": CHAMPION, "namespace": NS},
                       "spec": {"model": {"name": MODEL, "alias": "champion"},
                                "security": {"apiKeySecretRef": {"name": "api-keys"}}},
                       "status": {"model": {"name": MODEL, "version": "1"}, "inferenceService": CHAMPION,
                                  "conditions": [{"type": "DriftDetected", "status": "True",
                                                  "reason": "DriftDetected", "message": "psi 0.31 on age"}]}})
        self.kube.put({"apiVersion": API, "kind": "RetrainPolicy", "metadata": {"name": POLICY, "namespace": NS},
                       "spec": {"modelDeployment": CHAMPION, "triggers": {"drift": {"enabled": True}},
                                "cooldown": "1h",
                                "job": {"image": "ghcr.io/medserve/training:0.1.0", "command": ["python", "t.py"]},
                                "promotion": {"strategy": "abtest",
                                              "abTest": {"statistics": {"interval": "1m"}}}}})
        await self.reconcile()
        [job] = self.kube.named("jobs")
        self.registry.add_version(MODEL, tags={"medserve.io/job-name": job})
        self.kube.set_status("batch/v1", "jobs", NS, job, {
            "completionTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "conditions": [{"type": "Complete", "status": "True"}]})
        await self.reconcile()
        assert self.kube.has(API, "modeldeployments", NS, CHALLENGER), self.kube.named("modeldeployments")
        self.md_reports(CHALLENGER, "2")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_model(tmp_path_factory)


@pytest.fixture
async def arms(model_dir: Path, tmp_path: Path) -> AsyncIterator[dict[str, RuntimeProcess]]:
    ports = {CHAMPION: procs.free_port(), CHALLENGER: procs.free_port()}
    runtimes: dict[str, RuntimeProcess] = {}
    try:
        for arm, other in ((CHAMPION, CHALLENGER), (CHALLENGER, CHAMPION)):
            runtimes[arm] = RuntimeProcess(tmp_path / arm, model_dir=model_dir, port=ports[arm], args=[
                f"--model_name={arm}", f"--peer={other}=http://127.0.0.1:{ports[other]}", "--peer_timeout_s=2"])
        await asyncio.gather(*(asyncio.to_thread(rt.start) for rt in runtimes.values()))
        yield runtimes
    finally:
        for rt in runtimes.values():
            await asyncio.to_thread(rt.stop)


async def test_continuous_traffic_through_the_split_sees_no_failure_across_the_conclusion(
        arms: dict[str, RuntimeProcess]) -> None:
    world = World()
    router = KServeRouter(world.kube, {name: rt.url for name, rt in arms.items()})
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", router.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = procs.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    router.url = f"http://127.0.0.1:{port}"
    traffic = Traffic()
    sender: asyncio.Task[None] | None = None
    challenger_stopped: float | None = None
    try:
        with kopf_events():
            await world.retrain()
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                await world.reconcile()
                if world.kube.has(IG_API, IG, NS, TEST):
                    router.sync()
                    if sender is None and router.running is not None:
                        sender = asyncio.create_task(send_traffic(router.url, traffic))
                if traffic.answered[CHAMPION] >= 20 and traffic.answered[CHALLENGER] >= 20 \
                        and not world.prometheus.rules:
                    # Enough through both arms: the feedback now decides for the challenger at the next look.
                    world.prometheus.feedback(deployment=CHAMPION, version="1", correct=600, incorrect=400)
                    world.prometheus.feedback(deployment=CHALLENGER, version="2", correct=900, incorrect=100)
                    world.ab.last_evaluation.clear()  # the statistics interval has passed
                if challenger_stopped is None and not world.kube.has(API, "modeldeployments", NS, CHALLENGER):
                    await asyncio.to_thread(arms[CHALLENGER].stop)  # the kubelet: its pods are gone
                    challenger_stopped = time.monotonic()
                    after = Counter(traffic.answered)
                if challenger_stopped is not None and time.monotonic() - challenger_stopped > 3:
                    break
                await asyncio.sleep(0.2)
    finally:
        traffic.stop = True
        if sender is not None:
            await sender
        await runner.cleanup()
        await router.http.aclose()

    assert challenger_stopped is not None, "the challenger was never removed"
    assert traffic.failures == []
    test_status = world.kube.obj(API, "abtests", NS, TEST)["status"]
    conditions = {c["type"]: c for c in test_status["conditions"]}
    assert test_status["decision"] == "TreatmentBetter"
    assert conditions["HeadersPropagated"]["reason"] == "KeyForwarded"
    assert conditions["TreatmentReleased"]["status"] == "True"
    policy = {c["type"]: c for c in world.kube.obj(API, "retrainpolicies", NS, POLICY)["status"]["conditions"]}
    assert policy["Promoted"]["reason"] == "ABTestWon"
    assert world.registry.aliases[(MODEL, "champion")] == "2"
    # Both arms answered through the split, and after the removal only the champion did.
    assert traffic.answered[CHALLENGER] >= 20 and traffic.feedback > 0
    assert traffic.answered[CHALLENGER] == after[CHALLENGER]
    assert traffic.answered[CHAMPION] > after[CHAMPION]
