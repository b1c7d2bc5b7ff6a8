"""A local stand-in for KServe's controller and the kubelet: every InferenceService becomes a process.

It watches the InferenceServices in the emulated API (polling, every half second) and, for each one
whose predictor runs the medserve runtime, starts `python -m medserve_runtime` with the container's own
args and env, its volumes, env and paths materialised as the kubelet would (kubelet_volumes.py: Secrets
as files, emptyDirs, a PersistentVolumeClaim as a directory shared by the revisions; a missing Secret or
key fails the start with the kubelet's message, which the status carries), waits for KServe's
readiness endpoint, and writes the status as KServe's controller does: `url`, `address`, the `Ready`,
`PredictorReady` and `IngressReady` conditions, `observedGeneration` and
`components.predictor.{url, latestCreatedRevision, latestReadyRevision, traffic}`.

A spec change is a new revision: the new process starts beside the old one, and the old one stops once
the new one is ready (or, for a canary, once the canary is promoted). What it does NOT do: route a
canary's traffic split (the URL always points at the latest ready revision), scale replicas, run
arbitrary images, or apply resources limits. The operator never knows it is talking to a stand-in.

For Prometheus it keeps `<workdir>/prometheus/targets.json` (file_sd format) listing every ready
revision's `127.0.0.1:PORT` with the labels a Kubernetes scrape would add (`namespace`, `pod`,
`inferenceservice`); the sandbox's Prometheus (sandbox/prometheus_server.py) scrapes what it lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from medserve_operator.clients.kube import KubeClient
from medserve_operator.kit.conditions import now_rfc3339

from medserve_sandbox import kubelet_volumes, procs
from medserve_sandbox.prometheus_server import TARGETS_FILE, write_targets

logger = logging.getLogger("medserve.kserve-standin")

ISVC_API, ISVC_PLURAL = "serving.kserve.io/v1beta1", "inferenceservices"


class Revision:
    """One running predictor process: a revision of an InferenceService."""

    def __init__(self, name: str, number: int, port: int, proc: subprocess.Popen[bytes], log_path: Path,
                 spec_hash: str) -> None:
        self.name, self.number, self.port, self.proc, self.log_path = name, number, port, proc, log_path
        self.spec_hash = spec_hash
        self.ready = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Standin:
    def __init__(self, kube: KubeClient, workdir: Path, *, mlflow_uri: str | None) -> None:
        self.kube, self.workdir, self.mlflow_uri = kube, workdir, mlflow_uri
        self.revisions: dict[tuple[str, str], list[Revision]] = {}
        self.http = httpx.AsyncClient(timeout=2.0)
        self.targets_path = workdir / "prometheus" / TARGETS_FILE
        self._targets: list[tuple[str, dict[str, str]]] | None = None
        self.start_errors: dict[tuple[str, str], str] = {}
        """Why the latest start of each InferenceService's predictor failed (the kubelet's message)."""

    async def close(self) -> None:
        for revisions in self.revisions.values():
            for revision in revisions:
                procs.stop(revision.proc)
        await self.http.aclose()

    async def sync(self) -> None:
        items = await self.kube.list(ISVC_API, ISVC_PLURAL, None)
        seen = set()
        for isvc in items:
            key = (isvc["metadata"]["namespace"], isvc["metadata"]["name"])
            seen.add(key)
            if isvc["metadata"].get("deletionTimestamp"):
                continue
            await self.reconcile(key, isvc)
        for key in [k for k in self.revisions if k not in seen]:
            logger.info("InferenceService %s/%s is gone: stopping its predictor", *key)
            for revision in self.revisions.pop(key):
                procs.stop(revision.proc)
        self.publish_targets()

    def publish_targets(self) -> None:
        """Rewrite the Prometheus targets file when the set of ready, running revisions changed."""
        targets = sorted((f"127.0.0.1:{r.port}", {"namespace": namespace, "inferenceservice": name, "pod": r.name})
                         for (namespace, name), revisions in self.revisions.items()
                         for r in revisions if r.ready and r.proc.poll() is None)
        if targets != self._targets:
            write_targets(self.targets_path, targets)
            self._targets = targets

    async def reconcile(self, key: tuple[str, str], isvc: dict[str, Any]) -> None:
        predictor = isvc["spec"].get("predictor", {})
        # A traffic change alone is no new revision (as in KServe): promoting a canary keeps its process.
        revision_spec = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
        spec_hash = hashlib.sha256(json.dumps(revision_spec, sort_keys=True).encode()).hexdigest()[:12]
        revisions = self.revisions.setdefault(key, [])
        for revision in [r for r in revisions if r.proc.poll() is not None]:
            logger.warning("predictor %s exited with %s (log %s)", revision.name, revision.proc.returncode,
                           revision.log_path)
            revisions.remove(revision)
        latest = revisions[-1] if revisions else None
        if latest is None or latest.spec_hash != spec_hash:
            number = (latest.number + 1) if latest else 1
            started = await self.start(key, isvc, number, spec_hash)
            if started is None:
                await self.write_status(isvc, revisions, failed=self.start_errors.get(
                    key, "the predictor container could not be started"))
                return
            revisions.append(started)
            latest = started
        if not latest.ready:
            latest.ready = await self.probe(latest)
        canary = "canaryTrafficPercent" in predictor
        if latest.ready and not canary:
            for old in revisions[:-1]:
                logger.info("revision %s replaced by %s: stopping it", old.name, latest.name)
                procs.stop(old.proc)
            del revisions[:-1]
        await self.write_status(isvc, revisions)

    async def start(self, key: tuple[str, str], isvc: dict[str, Any], number: int,
                    spec_hash: str) -> Revision | None:
        namespace, name = key
        containers = isvc["spec"].get("predictor", {}).get("containers") or []
        if not containers:
            logger.warning("InferenceService %s/%s has no predictor container", namespace, name)
            return None
        container = containers[0]
        revision_name = f"{name}-predictor-{number:05d}"
        home = self.workdir / "predictors" / namespace / revision_name
        home.mkdir(parents=True, exist_ok=True)
        port = procs.free_port()
        try:
            local = await kubelet_volumes.materialise(
                self.kube, namespace=namespace, pod_name=revision_name, container=container,
                volumes=isvc["spec"]["predictor"].get("volumes") or [], pod_dir=home / "volumes",
                shared_dir=self.workdir / "volumes")
        except kubelet_volumes.ContainerConfigError as exc:
            logger.warning("predictor %s of %s/%s cannot start: %s", revision_name, namespace, name, exc)
            self.start_errors[key] = f"{exc.reason}: {exc.message}"
            return None
        self.start_errors.pop(key, None)
        args = [a for a in local.args if not a.startswith("--http_port")]
        args.append(f"--http_port={port}")
        env = {**os.environ, **local.env}
        if self.mlflow_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        env.setdefault("MEDSERVE_PHI_HASH_KEY", hashlib.sha256(f"sandbox/{namespace}/{name}".encode()).hexdigest())
        log_path = home / "runtime.log"
        logger.info("starting revision %s on port %d", revision_name, port)
        proc = procs.spawn([sys.executable, "-m", "medserve_runtime", *args], log_path=log_path, env=env, cwd=home)
        return Revision(revision_name, number, port, proc, log_path, spec_hash)

    async def probe(self, revision: Revision) -> bool:
        try:
            response = await self.http.get(f"{revision.url}/v2/health/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def write_status(self, isvc: dict[str, Any], revisions: list[Revision], failed: str | None = None) -> None:
        ready = [r for r in revisions if r.ready]
        latest, serving = (revisions[-1] if revisions else None), (ready[-1] if ready else None)
        old = isvc.get("status") or {}
        when = now_rfc3339()

        def condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
            before: dict[str, Any] = next((c for c in old.get("conditions", []) if c.get("type") == type_), {})
            status = "True" if ok else "False"
            changed = before.get("status") != status
            return {"type": type_, "status": status, "reason": "" if ok else reason, "message": "" if ok else message,
                    "lastTransitionTime": when if changed else before.get("lastTransitionTime", when)}

        is_ready = failed is None and latest is not None and latest.ready
        message = failed or "the predictor has not passed its readiness probe yet"
        status: dict[str, Any] = {
            "observedGeneration": isvc["metadata"].get("generation", 1),
            "conditions": [condition("IngressReady", serving is not None, "RevisionMissing", message),
                           condition("PredictorReady", is_ready, "RevisionMissing", message),
                           condition("Ready", is_ready, "RevisionMissing", message)],
        }
        if serving is not None:
            status["url"] = serving.url
            status["address"] = {"url": serving.url}
            traffic = [{"revisionName": serving.name, "percent": 100, "latestRevision": serving is latest}]
            status["components"] = {"predictor": {"url": serving.url, "latestReadyRevision": serving.name,
                                                  "latestCreatedRevision": latest.name if latest else serving.name,
                                                  "traffic": traffic}}
        if status == {k: old.get(k) for k in status} and set(old) <= set(status):
            return
        await procs.patch_status(self.kube, ISVC_API, ISVC_PLURAL, isvc, status)


def main(argv: list[str]) -> int:
    parser = procs.controller_parser("medserve_sandbox.kserve_standin", __doc__)
    parser.add_argument("--workdir", required=True, type=Path, help="where predictor processes keep their files")
    parser.add_argument("--mlflow-uri", default=None, help="MLflow URL for the predictors (overrides the pod env)")
    args = parser.parse_args(argv)

    procs.run_controller(args.kubeconfig, f"KServe stand-in watching {args.kubeconfig}",
                         lambda kube: Standin(kube, args.workdir, mlflow_uri=args.mlflow_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
