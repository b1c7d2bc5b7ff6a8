"""`medserve sandbox`: the whole system on loopback, step by step — what `make demo` runs.

It starts the Kubernetes API emulator (or, with `--control-plane envtest`, a real kube-apiserver, etcd and
kube-controller-manager from $KUBEBUILDER_ASSETS) with crds/ installed, a real MLflow server, a real
Prometheus (scraping every runtime process every second), a real PostgreSQL (the runtimes' audit records;
MLflow's backend store too with `--mlflow-backend postgresql`) and a real Redis (rate limits the runtimes
share), trains and
registers the example triage model (version 1, alias `champion`), starts the real operator against
the emulator, local stand-ins for KServe's controller and the kubelet (each InferenceService runs
as a medserve-runtime process), for KServe's InferenceGraph router (a weighted splitter) and for the Job
controller (each Job runs as a local process in the repository), applies examples/01-model-deployment/
with the real kubectl, waits until the ModelDeployment is Ready, sends it real clinical requests with the
example API keys, and shows the responses, `/models` and the audit log. Then it runs the whole loop: drift
on a shifted population, a retraining Job, an A/B test of the new version against the champion on
ground-truth feedback, promotion of the winner; it prints the timeline from the Events and writes
`report.png` (drift score over time, the A/B difference with its confidence sequence), and checks every
audit chain in PostgreSQL with `medserve audit verify --dsn ...`. Then it stops
everything, or with `--keep` leaves it running for you to explore (`medserve sandbox --stop` ends it).

All state lives under the work directory (default `.sandbox/`): `cluster/` (the kubeconfig),
`mlflow/` (database and artifacts), `prometheus/` (its config, targets file and data), `postgres/`,
`redis/`, `predictors/` (each runtime process's files and volumes), `volumes/` (the PersistentVolumeClaims:
the audit spool the runtimes share), `jobs/` (one log per Job attempt), `logs/`
(one log per process), `report.png` (with its figures in `report.json`) and `sandbox.json` (the
running processes, for `--stop`). Each run starts from a fresh cluster and registry.

The steps are a plain list (`Sandbox.steps`) so that later features add theirs in order. This module
holds the story's steps and the command; the processes and the waits on the cluster are in
sandbox_processes.py, the requests the demo sends in demo_traffic.py, what it prints in story.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from medserve_operator.api import ModelDeploymentSpec, RetrainPolicySpec, parse_spec
from medserve_operator.api.modeldeployment import DEPLOYMENT_MODES
from medserve_operator.config import DEFAULT_DEPLOYMENT_MODE

from medserve_sandbox import dashboards, procs
from medserve_sandbox.demo_traffic import DemoTraffic
from medserve_sandbox.report import Recorder, write_report
from medserve_sandbox.sandbox_processes import (
    CONTROL_PLANES,
    DEPLOY_TIMEOUT,
    MLFLOW_BACKENDS,
    MODEL_ALIAS,
    MODEL_NAME,
    find_repo,
    prepare_workdir,
    stop_kept,
)
from medserve_sandbox.story import Console, SandboxError, timeline

RETRAIN_TIMEOUT = 240.0
"""Seconds to wait for the retraining Job to be created, to train and to register the new version."""
POLICY = "triage-on-drift"


class Sandbox(DemoTraffic):
    """The sandbox's processes and the steps that start and use them."""

    @property
    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            (f"Start MLflow, PostgreSQL, Redis and {self.cluster_name} (with crds/ installed)",
             self.start_services),
            (f"Train the example triage model and register it in MLflow (alias {MODEL_ALIAS})", self.train_model),
            (f"Start the medserve operator against {self.cluster_name}", self.start_operator),
            ("Start the local KServe stand-in (each InferenceService runs as a medserve-runtime process)",
             self.start_standin),
            ("Start the local InferenceGraph stand-in (each ABTest's graph is a weighted splitter on its own port)",
             self.start_graph_standin),
            ("Start the local Job stand-in (each Job runs as a local process in the repository)",
             self.start_job_standin),
            ("Apply examples/01-model-deployment/ with kubectl", self.apply_examples),
            ("Wait until the ModelDeployment is Ready (model resolved, runtime serving)", self.wait_deployed),
            ("Show what the operator made", self.show),
            ("Send real clinical requests with the example API keys", self.send_requests),
            ("Close the loop: evaluate drift every 5 s and apply a RetrainPolicy that retrains on drift and A/B "
             "tests the new version", self.apply_retrain_policy),
            ("Send traffic from the reference population: no drift", self.send_reference_traffic),
            ("Shift the population: drift is detected", self.send_shifted_traffic),
            ("The RetrainPolicy retrains: a Job trains and registers a new version", self.wait_retrained),
            ("The RetrainPolicy starts an A/B test: a challenger on the new version against the champion",
             self.wait_abtest_started),
            ("Send the shifted population through the split with ground-truth feedback until the test decides",
             self.run_abtest),
            ("The winner is promoted: the champion alias moves, the new version rolls out, the challenger goes",
             self.wait_rolled_out),
            ("The timeline of the loop, and the report", self.report),
        ]

    # ------------------------------------------------------------------ steps
    def apply_examples(self) -> None:
        examples = self.repo / "examples" / "01-model-deployment"
        out = self.cluster.kubectl("apply", "-f", str(examples)).stdout
        for line in out.strip().splitlines():
            self.console.say(f"      {line}")
        self.deployments = [
            doc["metadata"]["name"]
            for path in sorted(examples.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text())
            if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment"
        ]

    def wait_deployed(self) -> None:
        for name in self.deployments:
            md = self._wait_for(name)
            model = md["status"]["model"]
            self.console.say(f"      {name}: {model['name']} version {model['version']} "
                             f"({model.get('uri', '')}), InferenceService {md['status']['inferenceService']}, "
                             f"phase {md['status'].get('phase', '?')}, url {md['status'].get('url')}")
            # Prometheus' increase() cannot count what a series held at its first scrape, so traffic sent
            # before Prometheus has found the new predictor would be invisible to drift evaluation.
            self._wait_until(functools.partial(self._scraped, name), f"Prometheus to scrape {name}", DEPLOY_TIMEOUT)
            self.console.say(f"      Prometheus is scraping {name}'s runtime")

    def show(self) -> None:
        self.console.block("kubectl get medserve", self.cluster.kubectl("get", "medserve").stdout)
        for name in self.deployments:
            md = self._get("modeldeployment", name) or {}
            isvc = (md.get("status") or {}).get("inferenceService") or name
            self.console.block(f"kubectl get inferenceservice {isvc} -o yaml",
                               self.cluster.kubectl("get", "inferenceservice", isvc, "-o", "yaml").stdout)


    def apply_retrain_policy(self) -> None:
        # The example monitors every minute over an hour of traffic; the demo cannot wait that long.
        patch = {"spec": {"monitoring": {"interval": "5s", "drift": {"window": "10m", "minSamples": 150}}}}
        for name in self.deployments:
            self.console.say(f"      $ kubectl patch md {name} --type merge -p '{json.dumps(patch)}'")
            self.cluster.kubectl("patch", "md", name, "--type", "merge", "-p", json.dumps(patch))
        policy = self.repo / "examples" / "03-retrain-policy" / "retrain-on-drift.yaml"
        self.console.say(f"      $ kubectl apply -f {policy.relative_to(self.repo)}")
        self.console.say("      " + self.cluster.kubectl("apply", "-f", str(policy)).stdout.strip())
        self.recorder = Recorder(self._get_any, self.deployments[0])
        self.recorder.start()


    def wait_retrained(self) -> None:
        status = self._wait_until(lambda: (self._get("retrainpolicy", POLICY) or {}).get("status", {}).get("lastJob"),
                                  f"RetrainPolicy {POLICY} to finish a Job", RETRAIN_TIMEOUT)
        if status.get("result") != "Succeeded":
            raise SandboxError(f"the retraining Job {status.get('name')} failed: {status.get('reason')}")
        self.new_version = str(status.get("modelVersion"))
        self._mark(f"version {self.new_version} registered")
        self.console.say(f"      Job {status['name']} succeeded and registered {MODEL_NAME} version {self.new_version}")
        self.console.block("kubectl get retrainpolicies,jobs",
                           self.cluster.kubectl("get", "retrainpolicies,jobs").stdout)

    def wait_abtest_started(self) -> None:
        record = self._wait_until(lambda: (self._get("retrainpolicy", POLICY) or {}).get("status", {}).get("abTest"),
                                  f"RetrainPolicy {POLICY} to start an ABTest", DEPLOY_TIMEOUT)
        name, challenger = record["name"], record["challenger"]
        self.console.say(f"      ABTest {name}: {self.deployments[0]} (champion) vs {challenger} (version "
                         f"{record['modelVersion']})")
        self._wait_for(challenger)
        self._wait_until(functools.partial(self._scraped, challenger), f"Prometheus to scrape {challenger}",
                         DEPLOY_TIMEOUT)
        self.abtest = self._wait_until(lambda: self._running(name), f"ABTest {name} to split traffic", DEPLOY_TIMEOUT)
        self._mark("A/B test started")
        self.console.say(f"      the split answers at {self.abtest['status']['url']} (InferenceGraph {name})")
        self.console.block("kubectl get abtests,inferencegraphs,md",
                           self.cluster.kubectl("get", "abtests,inferencegraphs,md").stdout)
        self.console.block(f"kubectl get inferencegraph {name} -o yaml",
                           self.cluster.kubectl("get", "inferencegraph", name, "-o", "yaml").stdout)


    def wait_rolled_out(self) -> None:
        name = self.deployments[0]

        def rolled_out() -> dict[str, Any] | None:
            status = (self._get("modeldeployment", name) or {}).get("status") or {}
            done = (status.get("model") or {}).get("version") == self.new_version and \
                status.get("phase") == "Ready" and "previousModel" not in status
            return status if done else None

        self._wait_until(rolled_out, f"{name} to serve version {self.new_version}", DEPLOY_TIMEOUT)
        self._mark(f"version {self.new_version} promoted")
        promoted = self._wait_until(lambda: self._condition("retrainpolicy", POLICY, "Promoted", "True"),
                                    f"RetrainPolicy {POLICY} to record the promotion", DEPLOY_TIMEOUT)
        self.console.say(f"      RetrainPolicy {POLICY}: Promoted=True ({promoted['reason']}): {promoted['message']}")
        challenger = (self._get("retrainpolicy", POLICY) or {})["status"]["abTest"]["challenger"]
        self._wait_until(lambda: {"gone": True} if self._get("modeldeployment", challenger) is None else None,
                         f"the challenger {challenger} to be removed", DEPLOY_TIMEOUT)
        self.console.say(f"      the challenger {challenger} is removed")
        self.console.block("kubectl get medserve", self.cluster.kubectl("get", "medserve").stdout)

    def report(self) -> None:
        events = (self._get_any("events") or {}).get("items") or []
        self.console.block("the timeline (from the Events of the medserve objects)", timeline(events))
        if self.recorder is not None:
            self.recorder.stop()
            self.recorder.sample()
            # The lines drawn are the ones the operator judged by: the specs' own threshold and MDE.
            md, rtp = self._get("modeldeployment", self.deployments[0]) or {}, self._get("retrainpolicy", POLICY) or {}
            deployment, policy = parse_spec(ModelDeploymentSpec, md["spec"]), parse_spec(RetrainPolicySpec, rtp["spec"])
            path = write_report(self.workdir / "report.png", self.recorder,
                                threshold=deployment.monitoring.drift.threshold,
                                mde=policy.promotion.ab_test.statistics.minimum_detectable_effect,
                                title="medserve sandbox: drift -> retrain -> A/B test -> promote")
            self.console.say(f"\n      report: {path} ({len(self.recorder.drift)} drift evaluations, "
                             f"{len(self.recorder.abtest)} A/B evaluations; figures in {path.with_suffix('.json')})")
            # The chart's Grafana dashboards, drawn from this run's Prometheus with their own PromQL.
            end = time.time()
            start = end - (time.monotonic() - self.recorder.started)
            for drawn in dashboards.draw(self.prometheus.url, self.workdir, start=start, end=end):
                self.console.say(f"      dashboard: {drawn.path} ({drawn.title})")
        self.verify_audit()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medserve sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".sandbox"),
                        help="where the sandbox keeps its state and logs (default: .sandbox/)")
    parser.add_argument("--keep", action="store_true",
                        help="leave everything running at the end and print how to use and stop it")
    parser.add_argument("--stop", action="store_true", help="stop a sandbox that --keep left running")
    parser.add_argument("--mlflow-backend", choices=MLFLOW_BACKENDS, default="sqlite",
                        help="MLflow's backend store: a SQLite file (default) or a database in the sandbox's "
                             "PostgreSQL (needs psycopg2)")
    parser.add_argument("--control-plane", choices=CONTROL_PLANES, default="emulator",
                        help="the cluster: the API emulator (default), or envtest: a real kube-apiserver, etcd and "
                             "kube-controller-manager from $KUBEBUILDER_ASSETS (setup-envtest)")
    parser.add_argument("--deployment-mode", choices=DEPLOYMENT_MODES, default=DEFAULT_DEPLOYMENT_MODE,
                        help="KServe's deployment mode for the demo's InferenceServices and graphs: Serverless "
                             "(Knative revisions; the default, as the operator's) or Standard (Deployments, "
                             "spec.canary)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    console = Console(sys.stdout)
    workdir: Path = args.workdir.resolve()
    if args.stop:
        return stop_kept(workdir, console)
    # Ctrl-C, `kill` and a closed terminal all tear down cleanly. SIGINT is set explicitly because a
    # shell starts background jobs with it ignored, and Python then never raises KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        repo = find_repo()
        prepare_workdir(workdir)
    except SandboxError as exc:
        console.say(f"medserve sandbox: {exc}")
        return 1

    console.say(f"medserve sandbox: everything on loopback, KServe's {args.deployment_mode} mode, state and logs in "
                f"{workdir}")
    try:
        sandbox = Sandbox(workdir, repo, console, mlflow_backend=args.mlflow_backend,
                          deployment_mode=args.deployment_mode, control_plane=args.control_plane)
    except SandboxError as exc:
        console.say(f"medserve sandbox: {exc}")
        return 1
    steps = sandbox.steps
    keep = False
    try:
        for number, (title, action) in enumerate(steps, start=1):
            with console.step(number, len(steps), title):
                action()
        keep = args.keep
    except KeyboardInterrupt:
        console.say("\ninterrupted")
        return 130
    except (SandboxError, procs.ProcessStartError, subprocess.SubprocessError, OSError) as exc:
        console.say(f"\nmedserve sandbox: FAILED: {exc}\n(logs in {sandbox.logs})")
        return 1
    finally:
        if keep:
            sandbox.save_state()
        else:
            # A second Ctrl-C must not cut the teardown short and leave processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            console.say("\nShutting down")
            sandbox.stop()
    console.say("\nThe sandbox is still running. Explore it with:" if keep else "\nDone.")
    if keep:
        console.say(f"  export KUBECONFIG={sandbox.cluster.kubeconfig}")
        console.say(f"  export MLFLOW_TRACKING_URI={sandbox.mlflow.url}")
        for name in sandbox.deployments:
            console.say(f"  kubectl get medserve; kubectl describe modeldeployment {name}; "
                        f"kubectl get inferenceservice {name} -o yaml")
        console.say(f"  logs: {sandbox.logs}/")
        console.say(f"Stop it with:\n  medserve sandbox --stop --workdir {workdir}")
    return 0
