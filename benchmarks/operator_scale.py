"""Operator scale: N ModelDeployments applied at once, against a minimal kopf operator as the baseline.

Both operators run as real processes against their own fresh API emulator, with the same real MLflow
server. The clock starts when the first ModelDeployment is posted and stops when every one has its
InferenceService and `status.observedGeneration == metadata.generation`. The operator's peak RSS is
sampled throughout, and its API requests are counted from the emulator's apiserver_request_total (as
kube-apiserver serves it), less the benchmark's own, per ModelDeployment and by verb and resource
(watches left out), and the CPU seconds the operator and its emulator used meanwhile. The baseline (below,
`baseline` mode) is kopf doing only the essential: create the same child object and write observedGeneration
(it does not ask MLflow). A warm-up pair at N = 20 goes first, unreported; `--repeat` runs the pair that many
times, alternating which goes first.

    python benchmarks/operator_scale.py --n 1000 --repeat 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
MD_PATH = "/apis/medserve.io/v1alpha1/namespaces/default/modeldeployments"
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"


def baseline_operator() -> None:
    """The baseline: a minimal kopf operator creating the same child and writing observedGeneration."""
    import logging

    import kopf
    from medserve_operator.api import ModelDeploymentSpec, parse_spec
    from medserve_operator.clients.kube import KubeClient
    from medserve_operator.controllers.modeldeployment.render import render_inference_service

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = kopf.OperatorRegistry()
    state: dict[str, KubeClient] = {}

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="baseline.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="baseline.io")
        state["kube"] = KubeClient.from_environment()
        print("baseline operator started", flush=True)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("medserve.io", "v1alpha1", "modeldeployments", registry=registry)
    async def create(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        spec = parse_spec(ModelDeploymentSpec, dict(body.spec))
        child = render_inference_service(
            name=body.metadata.name, namespace=str(body.metadata.namespace), uid=str(body.metadata.uid),
            spec=spec, model_name=spec.model.name, model_version=str(spec.model.version), image="img",
            mlflow_uri="http://mlflow")
        await state["kube"].create("serving.kserve.io/v1beta1", "inferenceservices", body.metadata.namespace, child)
        patch.status["observedGeneration"] = body.metadata["generation"]

    asyncio.run(kopf.operator(registry=registry, standalone=True, clusterwide=True))


class PeakRss:
    """Samples a process's resident memory every 100 ms in a thread; `peak` in MiB."""

    def __init__(self, pid: int) -> None:
        self.process, self.peak = psutil.Process(pid), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            except psutil.Error:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def manifest(i: int) -> dict[str, Any]:
    return {"apiVersion": "medserve.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": f"model-{i:05d}", "namespace": "default"},
            "spec": {"model": {"name": "bench-model", "version": "1"}}}


Requests = Counter[str]
"""API requests by "VERB resource[/subresource]"."""


async def api_requests(client: httpx.AsyncClient) -> Requests:
    """apiserver_request_total summed by verb and resource, watches left out."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: Requests = Counter()
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "apiserver_request_total" and labels["resource"] and labels["verb"] != "WATCH":
                what = labels["resource"] + (f"/{labels['subresource']}" if labels["subresource"] else "")
                counts[f"{labels['verb']} {what}"] += int(sample.value)
    return counts


async def event_reasons(client: httpx.AsyncClient) -> Counter[str]:
    """The Events posted so far, by reason."""
    return Counter(str(event.get("reason")) for event in (await client.get("/api/v1/events")).json()["items"])


async def apply_and_wait(server: str, n: int, timeout: float) -> tuple[float, Requests, Counter[str]]:
    """Seconds until all N are reconciled, the operator's API requests meanwhile, and its Events by reason."""
    async with httpx.AsyncClient(base_url=server, timeout=60) as client:
        before = await api_requests(client)
        own: Requests = Counter({"POST modeldeployments": n})
        start = time.perf_counter()
        semaphore = asyncio.Semaphore(16)

        async def post(i: int) -> None:
            async with semaphore:
                response = await client.post(MD_PATH, json=manifest(i))
                response.raise_for_status()

        await asyncio.gather(*(post(i) for i in range(n)))
        while time.perf_counter() - start < timeout:
            mds = (await client.get(MD_PATH)).json()["items"]
            done = sum(1 for md in mds
                       if (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"])
            children = len((await client.get(ISVC_PATH)).json()["items"])
            own.update(["LIST modeldeployments", "LIST inferenceservices"])
            if done == n and children == n:
                seconds = time.perf_counter() - start
                return seconds, (await api_requests(client)) - before - own, await event_reasons(client)
            await asyncio.sleep(0.5)
        raise TimeoutError(f"{done}/{n} reconciled and {children}/{n} InferenceServices after {timeout:.0f}s")


@dataclass
class Run:
    seconds: float
    rss_mib: float
    requests: Requests
    events: Counter[str]
    cpu_s: float
    """The operator's CPU seconds (user + system) from the first post to the last reconcile."""
    apiserver_cpu_s: float
    """The emulator's, over the same span: both share the machine's cores."""


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def image_only_path(folder: Path) -> str:
    """A PYTHONPATH entry hiding the client libraries kopf imports when they are installed.

    The operator image installs the project's dependencies only (.ci/image-requirements); this venv also has
    pykube-ng and kubernetes (for the tests), which kopf loads when present (kopf/_cogs/helpers/thirdparty.py),
    adding about 20 MiB to either operator. Both operators run without them, as in the image.
    """
    shim = folder / "image-only"
    for package in ("pykube", "kubernetes"):
        (shim / package).mkdir(parents=True, exist_ok=True)
        (shim / package / "__init__.py").write_text('raise ImportError("not in the operator image")\n')
    return str(shim)


def run_one(kind: str, n: int, mlflow_url: str, workdir: Path, timeout: float, pythonpath: str) -> Run:
    from medserve_sandbox import procs
    from medserve_sandbox.emulator import EmulatorProcess

    crds = sorted((REPO / "crds").glob("*.yaml"))
    with EmulatorProcess(workdir / kind, crd_paths=crds, log_path=workdir / f"{kind}-emulator.log") as cluster:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "MEDSERVE_MLFLOW_URI": mlflow_url,
               "PYTHONPATH": pythonpath}
        if kind == "medserve":
            command = [sys.executable, "-m", "medserve_operator.cli", "operator"]
            ready = "medserve operator started"
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "--baseline-operator"]
            ready = "baseline operator started"
        log = workdir / f"{kind}-operator.log"
        proc = procs.spawn(command, log_path=log, env=env)
        try:
            procs.wait_until(lambda: ready in log.read_text(errors="replace"), proc=proc, log_path=log,
                             what=f"{kind} operator", timeout=60)
            rss = PeakRss(proc.pid)
            assert cluster.proc is not None
            cpu, apiserver_cpu = cpu_seconds(proc.pid), cpu_seconds(cluster.proc.pid)
            seconds, requests, events = asyncio.run(apply_and_wait(cluster.url, n, timeout))
            return Run(seconds, rss.stop(), requests, events, cpu_seconds(proc.pid) - cpu,
                       cpu_seconds(cluster.proc.pid) - apiserver_cpu)
        finally:
            procs.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="ModelDeployments to apply (default 200)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run is declared failed")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the pair, alternating (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--baseline-operator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_operator:
        baseline_operator()
        return 0

    from medserve_sandbox.mlflow_server import MlflowServer
    from mlflow import MlflowClient

    runs = []
    with tempfile.TemporaryDirectory(prefix="medserve-bench-") as tmp, MlflowServer(Path(tmp) / "mlflow") as mlflow:
        client = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
        client.create_registered_model("bench-model")
        run = client.create_run(experiment_id="0")
        client.create_model_version("bench-model", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        pythonpath = os.pathsep.join(filter(None, [image_only_path(Path(tmp)), os.environ.get("PYTHONPATH")]))
        warmup = Path(tmp) / "warmup"
        warmup.mkdir()
        for kind in ("baseline", "medserve"):  # neither measured run pays the first start's cold file cache
            run_one(kind, min(args.n, 20), mlflow.url, warmup, args.timeout, pythonpath)
        for i in range(args.repeat):
            workdir = Path(tmp) / f"run{i}"
            workdir.mkdir()
            order = ("baseline", "medserve") if i % 2 == 0 else ("medserve", "baseline")
            done = {kind: run_one(kind, args.n, mlflow.url, workdir, args.timeout, pythonpath) for kind in order}
            base, ours = done["baseline"], done["medserve"]
            runs.append({
                "seconds": round(ours.seconds, 2), "baseline_seconds": round(base.seconds, 2),
                "ratio": round(ours.seconds / base.seconds, 3),
                "rss_mib": round(ours.rss_mib, 1), "baseline_rss_mib": round(base.rss_mib, 1),
                "requests_per_object": round(ours.requests.total() / args.n, 2),
                "baseline_requests_per_object": round(base.requests.total() / args.n, 2),
                "requests": dict(ours.requests.most_common()), "baseline_requests": dict(base.requests.most_common()),
                "events": dict(ours.events.most_common()),
                "cpu_s": round(ours.cpu_s, 2), "baseline_cpu_s": round(base.cpu_s, 2),
                "apiserver_cpu_s": round(ours.apiserver_cpu_s, 2),
                "baseline_apiserver_cpu_s": round(base.apiserver_cpu_s, 2),
            })
            if not args.json:
                print(f"run {i + 1} ({' then '.join(order)}): medserve {ours.seconds:.2f} s, {ours.rss_mib:.1f} MiB, "
                      f"{ours.requests.total() / args.n:.2f} requests/object, CPU {ours.cpu_s:.1f} s (emulator "
                      f"{ours.apiserver_cpu_s:.1f} s); minimal kopf {base.seconds:.2f} s, {base.rss_mib:.1f} MiB, "
                      f"{base.requests.total() / args.n:.2f}, CPU {base.cpu_s:.1f} s (emulator "
                      f"{base.apiserver_cpu_s:.1f} s); ratio {ours.seconds / base.seconds:.3f}; events "
                      f"{dict(ours.events.most_common())}", flush=True)
    worst = max(runs, key=lambda r: r["ratio"])
    result = {"n": args.n, "runs": runs, "worst_ratio": worst["ratio"],
              "max_rss_mib": max(r["rss_mib"] for r in runs)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.n} ModelDeployments, {len(runs)} run(s): worst time ratio {result['worst_ratio']:.3f} "
              f"(goal <= 1.5), peak RSS {result['max_rss_mib']:.1f} MiB (goal <= 150)")
        for label, key in (("medserve", "requests"), ("minimal kopf", "baseline_requests")):
            per = ", ".join(f"{what} {count / args.n:.2f}" for what, count in worst[key].items())
            print(f"  {label} requests per object: {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
