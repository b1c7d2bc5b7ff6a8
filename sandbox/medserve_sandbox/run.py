"""`medserve sandbox`: the whole system on loopback, step by step — what `make demo` runs.

It starts the Kubernetes API emulator (with crds/ installed), a real MLflow server and a real
Prometheus (scraping every runtime process every second), trains and
registers the example triage model (version 1, alias `champion`), starts the real operator against
the emulator, local stand-ins for KServe's controller and the kubelet (each InferenceService runs
as a medserve-runtime process), for KServe's InferenceGraph router (a weighted splitter) and for the Job
controller (each Job runs as a local process in the repository), applies examples/01-model-deployment/
with the real kubectl, waits until the ModelDeployment is Ready, sends it real clinical requests with the
example API keys, and shows the responses, `/models` and the audit log. Then it runs the whole loop: drift
on a shifted population, a retraining Job, an A/B test of the new version against the champion on
ground-truth feedback, promotion of the winner; it prints the timeline from the Events and writes
`report.png` (drift score over time, the A/B difference with its confidence sequence). Then it stops
everything, or with `--keep` leaves it running for you to explore (`medserve sandbox --stop` ends it).

All state lives under the work directory (default `.sandbox/`): `cluster/` (the kubeconfig),
`mlflow/` (database and artifacts), `prometheus/` (its config, targets file and data), `predictors/`
(each runtime process's files, its audit log among them), `jobs/` (one log per Job attempt), `logs/`
(one log per process), `report.png` (with its figures in `report.json`) and `sandbox.json` (the
running processes, for `--stop`). Each run starts from a fresh cluster and registry.

The steps are a plain list (`Sandbox.steps`) so that later features add theirs in order.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx
import yaml
from medserve_operator.api import ModelDeploymentSpec, RetrainPolicySpec, parse_spec

from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from medserve_sandbox.prometheus_server import PrometheusServer
from medserve_sandbox.report import Recorder, write_report

MODEL_NAME = "triage-classifier"
MODEL_ALIAS = "champion"
NAMESPACE = "default"
DEPLOY_TIMEOUT = 180.0
"""Seconds to wait for each ModelDeployment to become Ready (the runtime loads the model from MLflow)."""
DEMO_KEYS = {"clinician": "msk_demo_clinician_7f3a9c2e4b1d", "admin": "msk_demo_admin_2c8e5a1f9d4b"}
"""The plaintext of the demo keys whose hashes are in examples/01-model-deployment/api-keys-secret.yaml."""
DEMO_PATIENTS = [
    ("MRN-0042117", {"age": 67, "sex": "male", "symptoms": ["fever", "cough", "shortness_of_breath"],
                     "vital_signs": {"heart_rate": 112, "systolic_bp": 98, "diastolic_bp": 61, "temperature": 39.1,
                                     "respiratory_rate": 26, "oxygen_saturation": 90}}),
    ("MRN-0042118", {"age": 34, "sex": "female", "symptoms": ["headache"],
                     "vital_signs": {"heart_rate": 72, "systolic_bp": 118, "diastolic_bp": 76, "temperature": 36.8,
                                     "respiratory_rate": 14, "oxygen_saturation": 99}}),
    ("MRN-0042119", {"age": 58, "sex": "male", "symptoms": ["chest_pain", "nausea"],
                     "vital_signs": {"heart_rate": 104, "systolic_bp": 162, "diastolic_bp": 95, "temperature": 37.0,
                                     "respiratory_rate": 20, "oxygen_saturation": 96}}),
]
OPERATOR_RESYNC_SECONDS = "1"
"""Much shorter than the operator's default, so that drift and alias moves show up within the demo."""
STATE_FILE = "sandbox.json"
DRIFT_TIMEOUT = 90.0
"""Seconds to wait for a drift evaluation to reach the expected verdict."""
RETRAIN_TIMEOUT = 240.0
"""Seconds to wait for the retraining Job to be created, to train and to register the new version."""
SHIFT = 2.0
"""The drifted population (train.py --shift); the example RetrainPolicy retrains on the same shift."""
AB_RECORDS = 8000
"""Most requests (each with its ground truth) sent through the A/B split before the test must have decided."""
AB_RATE = 60
"""Requests (each with its feedback) sent through the A/B split per second, at most."""
AB_TIMEOUT = 180.0
"""Seconds to wait for the ABTest to conclude once the traffic has been sent."""
POLICY = "triage-on-drift"


class SandboxError(Exception):
    """A step failed; the message says which and where to look."""


def find_repo() -> Path:
    """The source tree holding crds/ and examples/: beside this package (editable install), else the cwd."""
    for candidate in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (candidate / "crds").is_dir() and (candidate / "examples" / "01-model-deployment").is_dir():
            return candidate
    raise SandboxError("cannot find the medserve source tree (crds/ and examples/); run from the repository root")


class Console:
    """The sandbox's own output: numbered steps and command output, for a person reading along."""

    def __init__(self, stream: TextIO) -> None:
        self.stream: TextIO | None = stream

    def say(self, text: str = "") -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except OSError:
            # The reader went away (`| head`, a closed terminal): keep going quietly, so that the
            # teardown still runs and no process is left behind.
            self.stream = None

    @contextlib.contextmanager
    def step(self, number: int, total: int, title: str) -> Iterator[None]:
        self.say(f"\n[{number}/{total}] {title}")
        started = time.monotonic()
        yield
        self.say(f"      done in {time.monotonic() - started:.1f}s")

    def block(self, title: str, text: str) -> None:
        self.say(f"\n$ {title}")
        self.say(text.rstrip())


class Sandbox:
    """The sandbox's processes and the steps that start and use them."""

    def __init__(self, workdir: Path, repo: Path, console: Console) -> None:
        self.workdir = workdir.resolve()
        self.repo = repo
        self.console = console
        self.logs = self.workdir / "logs"
        self.emulator = EmulatorProcess(self.workdir / "cluster", crd_paths=[repo / "crds"],
                                        log_path=self.logs / "emulator.log")
        self.mlflow = MlflowServer(self.workdir / "mlflow", log_path=self.logs / "mlflow.log")
        # Its targets file is the one the KServe stand-in keeps (<workdir>/prometheus/targets.json).
        self.prometheus = PrometheusServer(self.workdir / "prometheus", log_path=self.logs / "prometheus.log")
        self.operator: subprocess.Popen[bytes] | None = None
        self.standin: subprocess.Popen[bytes] | None = None
        self.job_standin: subprocess.Popen[bytes] | None = None
        self.graph_standin: subprocess.Popen[bytes] | None = None
        self.recorder: Recorder | None = None
        self.abtest: dict[str, Any] = {}
        self.operator_health_port = procs.free_port()
        self.model: dict[str, Any] = {}
        self.deployments: list[str] = []
        self.new_version = ""

    @property
    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("Start MLflow and the Kubernetes API emulator (with crds/ installed)", self.start_services),
            (f"Train the example triage model and register it in MLflow (alias {MODEL_ALIAS})", self.train_model),
            ("Start the medserve operator against the emulator", self.start_operator),
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

    def start_services(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.mlflow.launch()  # it migrates a fresh database for a few seconds: start the emulator meanwhile
        self.emulator.start()
        self.console.say(f"      emulator  {self.emulator.url}  (kubeconfig {self.emulator.kubeconfig})")
        self.prometheus.start()
        self.console.say(f"      Prometheus {self.prometheus.url}  (scraping {self.prometheus.targets_file})")
        self.mlflow.wait_ready()
        self.console.say(f"      MLflow    {self.mlflow.url}")

    def train_model(self) -> None:
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.mlflow.url, "MEDSERVE_MODEL_NAME": MODEL_NAME}
        script = self.repo / "examples" / "training" / "train.py"
        cmd = [sys.executable, str(script), "--alias", MODEL_ALIAS, "--json"]
        log = self.logs / "train.log"
        self.console.say(f"      $ MLFLOW_TRACKING_URI={self.mlflow.url} python {script.relative_to(self.repo)} "
                         f"--alias {MODEL_ALIAS}")
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=300, check=False)
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SandboxError(f"training failed (exit {result.returncode}):\n{procs.log_tail(log)}")
        self.model = json.loads(result.stdout.strip().splitlines()[-1])
        self.console.say(f"      registered {self.model['name']} version {self.model['version']} "
                         f"(held-out accuracy {self.model['accuracy']:.3f}), alias {MODEL_ALIAS} -> "
                         f"version {self.model['version']}")

    def start_operator(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.emulator.kubeconfig), "MEDSERVE_MLFLOW_URI": self.mlflow.url,
               "MEDSERVE_RESYNC_SECONDS": OPERATOR_RESYNC_SECONDS, "MEDSERVE_PROMETHEUS_URL": self.prometheus.url}
        health = f"http://127.0.0.1:{self.operator_health_port}/healthz"
        log = self.logs / "operator.log"
        self.operator = procs.spawn([sys.executable, "-m", "medserve_operator.cli", "operator",
                                     "--liveness", health], log_path=log, env=env)
        procs.wait_until(lambda: procs.http_ok(health), proc=self.operator, log_path=log,
                         what="medserve operator", timeout=60)
        self.console.say(f"      operator pid {self.operator.pid}, registry {self.mlflow.url}, log {log}")

    def start_standin(self) -> None:
        log = self.logs / "kserve-standin.log"
        self.standin = procs.spawn([sys.executable, "-m", "medserve_sandbox.kserve_standin",
                                    "--kubeconfig", str(self.emulator.kubeconfig), "--workdir", str(self.workdir),
                                    "--mlflow-uri", self.mlflow.url], log_path=log)
        procs.wait_until(lambda: "KServe stand-in watching" in log.read_text(errors="replace"), proc=self.standin,
                         log_path=log, what="KServe stand-in", timeout=60)
        self.console.say(f"      stand-in pid {self.standin.pid}, predictors under {self.workdir / 'predictors'}")

    def start_graph_standin(self) -> None:
        log = self.logs / "graph-standin.log"
        self.graph_standin = procs.spawn([sys.executable, "-m", "medserve_sandbox.graph_standin",
                                          "--kubeconfig", str(self.emulator.kubeconfig)], log_path=log)
        procs.wait_until(lambda: "InferenceGraph stand-in watching" in log.read_text(errors="replace"),
                         proc=self.graph_standin, log_path=log, what="InferenceGraph stand-in", timeout=60)
        self.console.say(f"      InferenceGraph stand-in pid {self.graph_standin.pid}")

    def start_job_standin(self) -> None:
        log = self.logs / "job-standin.log"
        self.job_standin = procs.spawn([sys.executable, "-m", "medserve_sandbox.job_standin",
                                        "--kubeconfig", str(self.emulator.kubeconfig), "--workdir", str(self.workdir),
                                        "--cwd", str(self.repo), "--mlflow-uri", self.mlflow.url], log_path=log)
        procs.wait_until(lambda: "Job stand-in watching" in log.read_text(errors="replace"), proc=self.job_standin,
                         log_path=log, what="Job stand-in", timeout=60)
        self.console.say(f"      Job stand-in pid {self.job_standin.pid}, job logs under {self.workdir / 'jobs'}")

    def apply_examples(self) -> None:
        examples = self.repo / "examples" / "01-model-deployment"
        out = self.emulator.kubectl("apply", "-f", str(examples)).stdout
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
        self.console.block("kubectl get medserve", self.emulator.kubectl("get", "medserve").stdout)
        for name in self.deployments:
            md = self._get("modeldeployment", name) or {}
            isvc = (md.get("status") or {}).get("inferenceService") or name
            self.console.block(f"kubectl get inferenceservice {isvc} -o yaml",
                               self.emulator.kubectl("get", "inferenceservice", isvc, "-o", "yaml").stdout)

    def send_requests(self) -> None:
        for name in self.deployments:
            md = self._get("modeldeployment", name) or {}
            url = md["status"]["url"]
            clinician = {"Authorization": f"Bearer {DEMO_KEYS['clinician']}"}
            with httpx.Client(base_url=url, timeout=30) as client:
                predictions = []
                for patient_id, clinical_data in DEMO_PATIENTS:
                    response = client.post("/predict", headers=clinician,
                                           json={"patient_id": patient_id, "clinical_data": clinical_data})
                    self._expect(response, 200, "POST /predict")
                    predictions.append(response.json())
                self.console.block(f"POST {url}/predict (first of {len(predictions)})",
                                   json.dumps(predictions[0], indent=2))
                for result in predictions:
                    prediction = result["prediction"]
                    self.console.say(f"      {result['patient_id']}: {prediction['primary_diagnosis']} "
                                     f"(confidence {result['confidence']:.2f}, {prediction['confidence_level']}), "
                                     f"prediction_id {result['prediction_id']}")
                feedback = {"prediction_id": predictions[0]["prediction_id"],
                            "outcome": predictions[0]["prediction"]["primary_diagnosis"]}
                self._expect(client.post("/feedback", headers=clinician, json=feedback), 200, "POST /feedback")
                self.console.say("      ground truth for the first prediction sent to POST /feedback")
                denied = client.post("/predict", headers={"Authorization": "Bearer not-a-key"},
                                     json={"patient_id": "MRN-1", "clinical_data": DEMO_PATIENTS[0][1]})
                self.console.say(f"      a wrong API key is refused: {denied.status_code} {denied.json()}")
                models = client.get("/models", headers={"Authorization": f"Bearer {DEMO_KEYS['admin']}"})
                self._expect(models, 200, "GET /models")
                self.console.block(f"GET {url}/models", json.dumps(models.json(), indent=2))
            time.sleep(0.3)  # the runtime writes its audit log in the background, within 50 ms
            audit = sorted((self.workdir / "predictors").glob(f"{NAMESPACE}/{name}-predictor-*/audit.jsonl"))
            if audit:
                lines = audit[-1].read_text().splitlines()
                self.console.block(f"the audit log ({audit[-1]}, {len(lines)} records; patient ids hashed)",
                                   "\n".join(lines[:3]))

    def apply_retrain_policy(self) -> None:
        # The example monitors every minute over an hour of traffic; the demo cannot wait that long.
        patch = {"spec": {"monitoring": {"interval": "5s", "drift": {"window": "10m", "minSamples": 150}}}}
        for name in self.deployments:
            self.console.say(f"      $ kubectl patch md {name} --type merge -p '{json.dumps(patch)}'")
            self.emulator.kubectl("patch", "md", name, "--type", "merge", "-p", json.dumps(patch))
        policy = self.repo / "examples" / "03-retrain-policy" / "retrain-on-drift.yaml"
        self.console.say(f"      $ kubectl apply -f {policy.relative_to(self.repo)}")
        self.console.say("      " + self.emulator.kubectl("apply", "-f", str(policy)).stdout.strip())
        self.recorder = Recorder(self._get_any, self.deployments[0])
        self.recorder.start()

    def send_reference_traffic(self) -> None:
        self._send_population(shift=0.0, count=300, seed=101)
        self._wait_drift("False")

    def send_shifted_traffic(self) -> None:
        self._send_population(shift=SHIFT, count=600, seed=202)
        self._wait_drift("True")
        self._mark("drift detected")
        self.console.block("kubectl get md", self.emulator.kubectl("get", "md").stdout)

    def wait_retrained(self) -> None:
        status = self._wait_until(lambda: (self._get("retrainpolicy", POLICY) or {}).get("status", {}).get("lastJob"),
                                  f"RetrainPolicy {POLICY} to finish a Job", RETRAIN_TIMEOUT)
        if status.get("result") != "Succeeded":
            raise SandboxError(f"the retraining Job {status.get('name')} failed: {status.get('reason')}")
        self.new_version = str(status.get("modelVersion"))
        self._mark(f"version {self.new_version} registered")
        self.console.say(f"      Job {status['name']} succeeded and registered {MODEL_NAME} version {self.new_version}")
        self.console.block("kubectl get retrainpolicies,jobs",
                           self.emulator.kubectl("get", "retrainpolicies,jobs").stdout)

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
                           self.emulator.kubectl("get", "abtests,inferencegraphs,md").stdout)
        self.console.block(f"kubectl get inferencegraph {name} -o yaml",
                           self.emulator.kubectl("get", "inferencegraph", name, "-o", "yaml").stdout)

    def run_abtest(self) -> None:
        name, url = self.abtest["metadata"]["name"], self.abtest["status"]["url"]
        script = self.repo / "examples" / "training" / "train.py"
        labelled = json.loads(subprocess.run(
            [sys.executable, str(script), "--emit-records", str(AB_RECORDS), "--shift", str(SHIFT), "--seed", "303",
             "--with-labels"], capture_output=True, text=True, check=True, timeout=120,
            stdin=subprocess.DEVNULL).stdout)
        headers = {"Authorization": f"Bearer {DEMO_KEYS['clinician']}"}
        arms: dict[str, int] = {}
        sent, concluded = 0, None
        with httpx.Client(base_url=url, timeout=60, headers=headers) as client, \
                concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            def predict_and_feed_back(i: int) -> tuple[str, httpx.Response]:
                response = client.post("/predict", json={"patient_id": f"AB-{i}",
                                                         "clinical_data": labelled[i]["clinical_data"]})
                self._expect(response, 200, "POST /predict through the split")
                feedback = {"prediction_id": response.json()["prediction_id"], "outcome": labelled[i]["label"]}
                return str(response.headers.get("x-medserve-arm", "?")), client.post("/feedback", json=feedback)

            while sent < len(labelled) and concluded is None:
                # Paced at about AB_RATE a second, so that the report shows the test's path look by look.
                paced = time.monotonic() + 1.0
                answers = list(pool.map(predict_and_feed_back, range(sent, min(sent + AB_RATE, len(labelled)))))
                concluded = self._concluded(name)
                for arm, feedback in answers:
                    arms[arm] = arms.get(arm, 0) + 1
                    # Once the test has decided, the challenger may be gone before its last ground truth
                    # arrives (502 from the splitter): late feedback is lost, as it would be in a cluster.
                    if feedback.status_code != 200 and not (concluded and feedback.status_code == 502):
                        self._expect(feedback, 200, "POST /feedback through the split")
                sent = min(sent + AB_RATE, len(labelled))
                time.sleep(max(0.0, paced - time.monotonic()))
        self.console.say(f"      {sent} predictions with their ground truth sent through the split "
                         f"({', '.join(f'{arm} {n}' for arm, n in sorted(arms.items()))})")
        test = concluded or self._wait_until(lambda: self._concluded(name), f"ABTest {name} to conclude", AB_TIMEOUT)
        self._mark("A/B test decided")
        status = test["status"]
        estimates = status.get("estimates") or {}
        low, high = estimates.get("confidenceSequence") or (None, None)
        self.console.say(f"      decision {status['decision']}: accuracy {estimates.get('treatment'):.3f} (version "
                         f"{status['modelVersions']['treatment']}) vs {estimates.get('control'):.3f} (version "
                         f"{status['modelVersions']['control']}), always-valid interval of the difference "
                         f"[{low:+.3f}, {high:+.3f}], p = {status['alwaysValidPValue']:.3g}, after "
                         f"{status['samples']['control']} + {status['samples']['treatment']} samples")
        self.console.block("kubectl get abtests", self.emulator.kubectl("get", "abtests").stdout)

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
        self.console.block("kubectl get medserve", self.emulator.kubectl("get", "medserve").stdout)

    def report(self) -> None:
        events = (self._get_any("events") or {}).get("items") or []
        self.console.block("the timeline (from the Events of the medserve objects)", timeline(events))
        if self.recorder is not None:
            self.recorder.stop()
            self.recorder.sample()
            # The lines drawn are the ones the operator judged by: the specs' own threshold and MDE.
            md, rtp = self._get("modeldeployment", self.deployments[0]) or {}, self._get("retrainpolicy", POLICY) or {}
            deployment, policy = parse_spec("ModelDeployment", md["spec"]), parse_spec("RetrainPolicy", rtp["spec"])
            assert isinstance(deployment, ModelDeploymentSpec) and isinstance(policy, RetrainPolicySpec)
            path = write_report(self.workdir / "report.png", self.recorder,
                                threshold=deployment.monitoring.drift.threshold,
                                mde=policy.promotion.ab_test.statistics.minimum_detectable_effect,
                                title="medserve sandbox: drift -> retrain -> A/B test -> promote")
            self.console.say(f"\n      report: {path} ({len(self.recorder.drift)} drift evaluations, "
                             f"{len(self.recorder.abtest)} A/B evaluations; figures in {path.with_suffix('.json')})")

    def _running(self, name: str) -> dict[str, Any] | None:
        test = self._get("abtest", name) or {}
        return test if (test.get("status") or {}).get("phase") == "Running" and test["status"].get("url") else None

    def _concluded(self, name: str) -> dict[str, Any] | None:
        test = self._get("abtest", name) or {}
        return test if (test.get("status") or {}).get("phase") == "Concluded" else None

    def _condition(self, kind: str, name: str, type_: str, expected: str) -> dict[str, Any] | None:
        conds = ((self._get(kind, name) or {}).get("status") or {}).get("conditions") or []
        found = next((c for c in conds if c.get("type") == type_), None)
        return found if found and found.get("status") == expected else None

    def _mark(self, label: str) -> None:
        if self.recorder is not None:
            self.recorder.mark(label)

    def _scraped(self, name: str) -> dict[str, Any] | None:
        query = f'up{{inferenceservice="{name}"}} == 1'
        try:
            response = httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": query}, timeout=5)
            result = response.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return {"up": result} if result else None

    def _send_population(self, *, shift: float, count: int, seed: int) -> None:
        script = self.repo / "examples" / "training" / "train.py"
        records = json.loads(subprocess.run(
            [sys.executable, str(script), "--emit-records", str(count), "--shift", str(shift), "--seed", str(seed)],
            capture_output=True, text=True, check=True, timeout=120, stdin=subprocess.DEVNULL).stdout)
        for name in self.deployments:
            url = (self._get("modeldeployment", name) or {})["status"]["url"]
            headers = {"Authorization": f"Bearer {DEMO_KEYS['clinician']}"}
            with httpx.Client(base_url=url, timeout=60) as client:
                for start in range(0, len(records), 100):
                    chunk = records[start:start + 100]
                    body = {"requests": [{"patient_id": f"DEMO-{seed}-{start + i}", "clinical_data": record}
                                         for i, record in enumerate(chunk)]}
                    self._expect(client.post("/batch_predict", headers=headers, json=body), 200,
                                 "POST /batch_predict")
            self.console.say(f"      {count} predictions (population shift {shift}) sent to {name} via "
                             "POST /batch_predict")

    def _wait_drift(self, expected: str) -> None:
        for name in self.deployments:
            def drift(name: str = name) -> dict[str, Any] | None:
                md = self._get("modeldeployment", name) or {}
                condition = next((c for c in (md.get("status") or {}).get("conditions") or []
                                  if c.get("type") == "DriftDetected"), None)
                return condition if condition and condition.get("status") == expected else None

            def last_verdict(name: str = name) -> str:
                status = (self._get("modeldeployment", name) or {}).get("status") or {}
                return json.dumps(status.get("drift"))

            try:
                condition = self._wait_until(drift, f"{name} to report DriftDetected={expected}", DRIFT_TIMEOUT)
            except SandboxError as exc:
                raise SandboxError(f"{exc}\nlast drift status: {last_verdict()}") from None
            self.console.say(f"      {name}: DriftDetected={expected} ({condition.get('reason')}): "
                             f"{condition.get('message')}")

    def _wait_until(self, probe: Callable[[], dict[str, Any] | None], what: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.operator is not None and self.operator.poll() is not None:
                raise SandboxError(f"the operator exited with code {self.operator.returncode}:\n"
                                   f"{procs.log_tail(self.logs / 'operator.log')}")
            found = probe()
            if found:
                return found
            time.sleep(0.5)
        raise SandboxError(f"timed out after {timeout:.0f}s waiting for {what}.\n"
                           f"operator log tail:\n{procs.log_tail(self.logs / 'operator.log')}")

    def _expect(self, response: httpx.Response, status: int, what: str) -> None:
        if response.status_code != status:
            raise SandboxError(f"{what} answered {response.status_code}: {response.text[:500]}")

    # ------------------------------------------------------------------ helpers

    def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._get_any(f"{kind}/{name}")

    def _get_any(self, what: str) -> dict[str, Any] | None:
        """`kubectl get WHAT -o json` in the demo's namespace (one object, or a list), None if it fails."""
        result = self.emulator.kubectl("get", what, "-n", NAMESPACE, "-o", "json", check=False)
        if result.returncode != 0:
            return None
        obj: dict[str, Any] = json.loads(result.stdout)
        return obj

    def _wait_for(self, name: str) -> dict[str, Any]:
        """Poll until the ModelDeployment is Ready: model resolved, InferenceService serving."""
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        md: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.operator is not None and self.operator.poll() is not None:
                raise SandboxError(f"the operator exited with code {self.operator.returncode}:\n"
                                   f"{procs.log_tail(self.logs / 'operator.log')}")
            md = self._get("modeldeployment", name)
            status = (md or {}).get("status") or {}
            if status.get("phase") == "Ready" and status.get("url"):
                return md or {}
            time.sleep(0.5)
        conditions = ((md or {}).get("status") or {}).get("conditions") or []
        summary = "; ".join(f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}"
                            for c in conditions) or "no conditions yet"
        raise SandboxError(f"ModelDeployment {name} was not deployed within {DEPLOY_TIMEOUT:.0f}s ({summary}).\n"
                           f"operator log tail:\n{procs.log_tail(self.logs / 'operator.log')}")

    # ------------------------------------------------------------------ lifecycle

    def pids(self) -> dict[str, int]:
        found = {"operator": self.operator.pid if self.operator else None,
                 "kserve-standin": self.standin.pid if self.standin else None,
                 "job-standin": self.job_standin.pid if self.job_standin else None,
                 "graph-standin": self.graph_standin.pid if self.graph_standin else None, "mlflow": self.mlflow.pid,
                 "prometheus": self.prometheus.pid,
                 "emulator": self.emulator.proc.pid if self.emulator.proc else None}
        return {name: pid for name, pid in found.items() if pid is not None}

    def save_state(self) -> None:
        state = {"pids": self.pids(), "kubeconfig": str(self.emulator.kubeconfig), "mlflow": self.mlflow.url,
                 "prometheus": self.prometheus.url,
                 "emulator": self.emulator.url, "logs": str(self.logs)}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def stop(self) -> None:
        """Stop the operator first (so it does not log the API vanishing), then MLflow, then the emulator."""
        if self.operator is not None:
            self.console.say("      stopping the operator")
            procs.stop(self.operator)
            self.operator = None
        if self.standin is not None:
            self.console.say("      stopping the KServe stand-in and its predictors")
            procs.stop(self.standin, timeout=30)
            self.standin = None
        if self.job_standin is not None:
            self.console.say("      stopping the Job stand-in and its jobs")
            procs.stop(self.job_standin, timeout=30)
            self.job_standin = None
        if self.graph_standin is not None:
            self.console.say("      stopping the InferenceGraph stand-in")
            procs.stop(self.graph_standin)
            self.graph_standin = None
        if self.recorder is not None:
            self.recorder.stop()
        if self.prometheus.pid is not None:
            self.console.say("      stopping Prometheus")
            self.prometheus.stop()
        if self.mlflow.pid is not None:
            self.console.say("      stopping MLflow")
            self.mlflow.stop()
        if self.emulator.proc is not None:
            self.console.say("      stopping the emulator")
            self.emulator.stop()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)


def timeline(events: list[dict[str, Any]]) -> str:
    """One line per Event, oldest first, timed from the first: `+MM:SS Kind/name Reason: message` (pure)."""
    def when(event: dict[str, Any]) -> str:
        return str(event.get("eventTime") or event.get("firstTimestamp") or
                   event.get("metadata", {}).get("creationTimestamp") or "")

    ordered = sorted((e for e in events if when(e)), key=when)
    if not ordered:
        return "(no events)"
    start = datetime.datetime.fromisoformat(when(ordered[0]).replace("Z", "+00:00"))
    lines = []
    for event in ordered:
        seconds = int((datetime.datetime.fromisoformat(when(event).replace("Z", "+00:00")) - start).total_seconds())
        target = event.get("involvedObject") or {}
        message = " ".join(str(event.get("message", "")).split())
        lines.append(f"+{seconds // 60:02d}:{seconds % 60:02d} {target.get('kind')}/{target.get('name')} "
                     f"{event.get('reason')}: {message[:150]}{'...' if len(message) > 150 else ''}")
    return "\n".join(lines)


def prepare_workdir(workdir: Path) -> None:
    """Refuse to start over a running sandbox; otherwise clear what a previous run left."""
    running = alive_pids(workdir)
    if running:
        raise SandboxError(f"a sandbox is already running in {workdir} (pids "
                           f"{', '.join(map(str, running.values()))}); stop it with: "
                           f"medserve sandbox --stop --workdir {workdir}")
    for sub in ("cluster", "mlflow", "prometheus", "logs"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)


def alive_pids(workdir: Path) -> dict[str, int]:
    """The processes of a `--keep` sandbox in `workdir` that are still running."""
    try:
        state = json.loads((workdir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {name: int(pid) for name, pid in (state.get("pids") or {}).items() if _alive(int(pid))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_kept(workdir: Path, console: Console) -> int:
    """`--stop`: end the processes a `--keep` run left in `workdir` (SIGTERM, wait, SIGKILL)."""
    running = alive_pids(workdir)
    if not running:
        console.say(f"no sandbox is running in {workdir}")
        (workdir / STATE_FILE).unlink(missing_ok=True)
        return 0
    for name in ("operator", "kserve-standin", "job-standin", "graph-standin", "prometheus", "mlflow", "emulator"):
        pid = running.get(name)
        if pid is None:
            continue
        console.say(f"stopping {name} (pid {pid})")
        # Each was started as the leader of its own process group (procs.spawn), children included.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30  # the stand-in stops its predictors first
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    console.say("sandbox stopped")
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medserve sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".sandbox"),
                        help="where the sandbox keeps its state and logs (default: .sandbox/)")
    parser.add_argument("--keep", action="store_true",
                        help="leave everything running at the end and print how to use and stop it")
    parser.add_argument("--stop", action="store_true", help="stop a sandbox that --keep left running")
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

    console.say(f"medserve sandbox: everything on loopback, state and logs in {workdir}")
    sandbox = Sandbox(workdir, repo, console)
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
        console.say(f"  export KUBECONFIG={sandbox.emulator.kubeconfig}")
        console.say(f"  export MLFLOW_TRACKING_URI={sandbox.mlflow.url}")
        for name in sandbox.deployments:
            console.say(f"  kubectl get medserve; kubectl describe modeldeployment {name}; "
                        f"kubectl get inferenceservice {name} -o yaml")
        console.say(f"  logs: {sandbox.logs}/")
        console.say(f"Stop it with:\n  medserve sandbox --stop --workdir {workdir}")
    return 0
