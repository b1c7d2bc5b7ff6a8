"""The sandbox's processes: starting, watching and stopping the cluster (the API emulator, or with
`--control-plane envtest` a real kube-apiserver from $KUBEBUILDER_ASSETS), MLflow, Prometheus, PostgreSQL,
Redis, the operator and the stand-ins, reading the cluster with kubectl, and the `--keep` / `--stop` state
file.

PostgreSQL holds the runtimes' audit records (and, with `--mlflow-backend postgresql`, MLflow's backend
store, in a database of its own); Redis the runtimes' shared rate limits. The runtimes find both through
Secrets the sandbox creates in the demo namespace, which the operator names in every ModelDeployment it
renders as its defaults (the chart's `audit.*` and `redis.*` values), with a persistent spool.

`SandboxProcesses` holds the processes and the helpers every step uses (waiting on the cluster,
querying it); demo_traffic.py adds the requests the demo sends, run.py the steps of the story.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from medserve_operator.api.modeldeployment import DEPLOYMENT_MODES
from medserve_operator.config import DEFAULT_DEPLOYMENT_MODE

from medserve_sandbox import procs
from medserve_sandbox.controlplane import ControlPlane, MissingAssets
from medserve_sandbox.emulator import EmulatorProcess
from medserve_sandbox.mlflow_server import MlflowServer
from medserve_sandbox.postgres_server import USER, PostgresServer
from medserve_sandbox.prometheus_server import PrometheusServer
from medserve_sandbox.redis_server import RedisServer
from medserve_sandbox.report import Recorder
from medserve_sandbox.schemas import find_kserve_crds_dir
from medserve_sandbox.story import Console, SandboxError

MODEL_NAME = "triage-classifier"
MODEL_ALIAS = "champion"
NAMESPACE = "default"
ROUTER_HEADERS_PROPAGATE = "Authorization"  # the cluster's router.headers.propagate (README: A/B through KServe)
DEPLOY_TIMEOUT = 180.0
"""Seconds to wait for each ModelDeployment to become Ready (the runtime loads the model from MLflow)."""
OPERATOR_RESYNC_SECONDS = "1"
"""Much shorter than the operator's default, so that drift and alias moves show up within the demo."""
STATE_FILE = "sandbox.json"
DRIFT_TIMEOUT = 90.0
"""Seconds to wait for a drift evaluation to reach the expected verdict."""
MLFLOW_BACKENDS = ("sqlite", "postgresql")
CONTROL_PLANES = ("emulator", "envtest")
AUDIT_DB_SECRET, AUDIT_KEY_SECRET, REDIS_SECRET = "medserve-audit-db", "medserve-audit-key", "medserve-redis"
"""The Secrets the sandbox creates and the operator uses as its defaults (MEDSERVE_*_SECRET)."""


def redacted(dsn: str) -> str:
    """`dsn` with its password shown as ***, for what is printed."""
    head, sep, tail = dsn.rpartition("@")
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{tail}" if sep and ":" in userinfo else dsn


def find_repo() -> Path:
    """The source tree holding crds/ and examples/: beside this package (editable install), else the cwd."""
    for candidate in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (candidate / "crds").is_dir() and (candidate / "examples" / "01-model-deployment").is_dir():
            return candidate
    raise SandboxError("cannot find the medserve source tree (crds/ and examples/); run from the repository root")


class SandboxProcesses:
    """The sandbox's processes, how each is started and stopped, and the waits and reads on the cluster."""

    def __init__(self, workdir: Path, repo: Path, console: Console, *, mlflow_backend: str = "sqlite",
                 deployment_mode: str = DEFAULT_DEPLOYMENT_MODE, control_plane: str = "emulator") -> None:
        self.workdir = workdir.resolve()
        self.repo = repo
        self.console = console
        self.logs = self.workdir / "logs"
        self.cluster: EmulatorProcess | ControlPlane
        if control_plane == "envtest":
            # A real kube-apiserver (and kube-controller-manager) from $KUBEBUILDER_ASSETS; the stand-ins play
            # KServe's controllers, the Job controller and the kubelet against it as they do against the emulator.
            try:
                self.cluster = ControlPlane(self.workdir / "cluster", crd_paths=[repo / "crds"],
                                            log_path=self.logs / "controlplane.log", kserve_crds=find_kserve_crds_dir())
            except MissingAssets as exc:
                raise SandboxError(f"--control-plane envtest: {exc}") from None
        elif control_plane == "emulator":
            self.cluster = EmulatorProcess(self.workdir / "cluster", crd_paths=[repo / "crds"],
                                           log_path=self.logs / "emulator.log")
        else:
            raise SandboxError(f"--control-plane {control_plane!r}: choose one of {', '.join(CONTROL_PLANES)}")
        self.cluster_started = False
        self.postgres = PostgresServer(self.workdir / "postgres")
        self.redis = RedisServer(self.workdir / "redis", log_path=self.logs / "redis.log")
        self.audit_key = secrets.token_hex(32)
        self.mlflow = MlflowServer(self.workdir / "mlflow", log_path=self.logs / "mlflow.log")
        if mlflow_backend not in MLFLOW_BACKENDS:
            raise SandboxError(f"--mlflow-backend {mlflow_backend!r}: choose one of {', '.join(MLFLOW_BACKENDS)}")
        self.mlflow_backend = mlflow_backend
        if deployment_mode not in DEPLOYMENT_MODES:
            raise SandboxError(f"--deployment-mode {deployment_mode!r}: choose one of {', '.join(DEPLOYMENT_MODES)}")
        # The operator's default mode (MEDSERVE_DEPLOYMENT_MODE) and the cluster's (the stand-ins'
        # deploy.defaultDeploymentMode): the examples name none, so every InferenceService gets this one.
        self.deployment_mode = deployment_mode
        if mlflow_backend == "postgresql":
            # libpq reads the password from the environment: it stays off MLflow's command line.
            self.mlflow.backend_store_uri = f"postgresql+psycopg2://{USER}@127.0.0.1:{self.postgres.port}/mlflow"
            self.mlflow.backend_env = {"PGPASSWORD": self.postgres.password}
        # Its targets file is the one the KServe stand-in keeps (<workdir>/prometheus/targets.json).
        self.prometheus = PrometheusServer(self.workdir / "prometheus", log_path=self.logs / "prometheus.log")
        # The operator's own /metrics, scraped beside the runtimes: the dashboards drawn at the end need both.
        self.operator_metrics = f"127.0.0.1:{procs.free_port()}"
        self.prometheus.operator_target = self.operator_metrics
        self.operator: subprocess.Popen[bytes] | None = None
        self.standin: subprocess.Popen[bytes] | None = None
        self.job_standin: subprocess.Popen[bytes] | None = None
        self.graph_standin: subprocess.Popen[bytes] | None = None
        self.directory_port = procs.free_port()
        self.recorder: Recorder | None = None
        self.abtest: dict[str, Any] = {}
        self.operator_health_port = procs.free_port()
        self.model: dict[str, Any] = {}
        self.deployments: list[str] = []
        self.new_version = ""

    @property
    def cluster_name(self) -> str:
        return "the Kubernetes API emulator" if isinstance(self.cluster, EmulatorProcess) else \
            "a real kube-apiserver, etcd and kube-controller-manager"

    def start_services(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.mlflow_backend == "postgresql" and importlib.util.find_spec("psycopg2") is None:
            raise SandboxError("--mlflow-backend postgresql needs MLflow's PostgreSQL driver, psycopg2, in this "
                               "environment (pip install psycopg2-binary); or use --mlflow-backend sqlite")
        if self.mlflow_backend == "sqlite":
            self.mlflow.launch()  # it migrates a fresh database for a few seconds: start the others meanwhile
        self.postgres.start()
        self.redis.start()
        self.console.say(f"      PostgreSQL {redacted(self.postgres.dsn)}  (audit records"
                         f"{'; MLflow database mlflow' if self.mlflow_backend == 'postgresql' else ''})")
        self.console.say(f"      Redis     {self.redis.url}  (rate limits shared by the runtimes)")
        if self.mlflow_backend == "postgresql":
            self.postgres.create_database("mlflow")
            self.mlflow.launch()
        self.cluster.start()
        self.cluster_started = True
        what = "emulator " if isinstance(self.cluster, EmulatorProcess) else "kube-apiserver"
        self.console.say(f"      {what} {self.cluster.url}  (kubeconfig {self.cluster.kubeconfig})")
        self.create_secrets()
        self.prometheus.start()
        self.console.say(f"      Prometheus {self.prometheus.url}  (scraping {self.prometheus.targets_file})")
        self.mlflow.wait_ready()
        self.console.say(f"      MLflow    {self.mlflow.url}")

    def create_secrets(self) -> None:
        """The audit database's URL, the audit key and the Redis URL as Secrets in the demo namespace (from
        files, so that no secret is on a command line), as an administrator would create them."""
        folder = self.workdir / "secrets"
        folder.mkdir(mode=0o700, exist_ok=True)
        try:
            for name, key, value in ((AUDIT_DB_SECRET, "dsn", self.postgres.dsn),
                                     (AUDIT_KEY_SECRET, "key", self.audit_key), (REDIS_SECRET, "url", self.redis.url)):
                path = folder / key
                path.touch(mode=0o600)
                path.write_text(value)
                self.cluster.kubectl("create", "secret", "generic", name, f"--from-file={key}={path}",
                                      "-n", NAMESPACE)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.console.say(f"      Secrets {AUDIT_DB_SECRET} (dsn), {AUDIT_KEY_SECRET} (key), {REDIS_SECRET} (url) "
                         f"in namespace {NAMESPACE}")

    def verify_audit(self) -> None:
        """`medserve audit verify --dsn ...` over every runtime's chain, as printed (the password redacted)."""
        cmd = [sys.executable, "-m", "medserve_operator.cli", "audit", "verify"]  # the DSN and key from the env
        env = {**os.environ, "MEDSERVE_AUDIT_DSN": self.postgres.dsn, "MEDSERVE_AUDIT_KEY": self.audit_key}
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False,
                                stdin=subprocess.DEVNULL)
        self.console.block(f"medserve audit verify --dsn {redacted(self.postgres.dsn)}",
                           (result.stdout + result.stderr).replace(self.postgres.password, "***").rstrip()
                           + f"\n(exit {result.returncode})")

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
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "MEDSERVE_MLFLOW_URI": self.mlflow.url,
               "MEDSERVE_RESYNC_SECONDS": OPERATOR_RESYNC_SECONDS, "MEDSERVE_PROMETHEUS_URL": self.prometheus.url,
               "MEDSERVE_METRICS_ADDRESS": self.operator_metrics,
               # The graph stand-in switches routes in its own process: no router pod drains for 30 s.
               "MEDSERVE_GRAPH_DRAIN_SECONDS": "2",
               # The router forwards the API key (KServe's router.headers.propagate), and an arm reaches the
               # other through the KServe stand-in's service directory (the sandbox's cluster DNS).
               "MEDSERVE_ROUTER_HEADERS_PROPAGATE": ROUTER_HEADERS_PROPAGATE,
               "MEDSERVE_RUNTIME_PEER_URL_TEMPLATE": f"http://127.0.0.1:{self.directory_port}/{{namespace}}/{{arm}}",
               "MEDSERVE_AUDIT_DSN_SECRET": AUDIT_DB_SECRET, "MEDSERVE_AUDIT_KEY_SECRET": AUDIT_KEY_SECRET,
               "MEDSERVE_REDIS_SECRET": REDIS_SECRET, "MEDSERVE_AUDIT_SPOOL_PERSISTENT": "true",
               "MEDSERVE_DEPLOYMENT_MODE": self.deployment_mode}
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
                                    "--kubeconfig", str(self.cluster.kubeconfig), "--workdir", str(self.workdir),
                                    "--mlflow-uri", self.mlflow.url, "--default-deployment-mode", self.deployment_mode,
                                    "--service-directory-port", str(self.directory_port)], log_path=log)
        procs.wait_until(lambda: "KServe stand-in watching" in log.read_text(errors="replace"), proc=self.standin,
                         log_path=log, what="KServe stand-in", timeout=60)
        self.console.say(f"      stand-in pid {self.standin.pid}, predictors under {self.workdir / 'predictors'}")

    def start_graph_standin(self) -> None:
        log = self.logs / "graph-standin.log"
        self.graph_standin = procs.spawn([sys.executable, "-m", "medserve_sandbox.graph_standin",
                                          "--kubeconfig", str(self.cluster.kubeconfig),
                                          "--propagate-header", ROUTER_HEADERS_PROPAGATE,
                                          "--default-deployment-mode", self.deployment_mode], log_path=log)
        procs.wait_until(lambda: "InferenceGraph stand-in watching" in log.read_text(errors="replace"),
                         proc=self.graph_standin, log_path=log, what="InferenceGraph stand-in", timeout=60)
        self.console.say(f"      InferenceGraph stand-in pid {self.graph_standin.pid}")

    def start_job_standin(self) -> None:
        log = self.logs / "job-standin.log"
        self.job_standin = procs.spawn([sys.executable, "-m", "medserve_sandbox.job_standin",
                                        "--kubeconfig", str(self.cluster.kubeconfig), "--workdir", str(self.workdir),
                                        "--cwd", str(self.repo), "--mlflow-uri", self.mlflow.url], log_path=log)
        procs.wait_until(lambda: "Job stand-in watching" in log.read_text(errors="replace"), proc=self.job_standin,
                         log_path=log, what="Job stand-in", timeout=60)
        self.console.say(f"      Job stand-in pid {self.job_standin.pid}, job logs under {self.workdir / 'jobs'}")


    # ------------------------------------------------------------------ watching the cluster

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
        result = self.cluster.kubectl("get", what, "-n", NAMESPACE, "-o", "json", check=False)
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
                 "prometheus": self.prometheus.pid, "redis": self.redis.pid, "postgres": self.postgres.pid}
        if isinstance(self.cluster, ControlPlane):
            found.update(self.cluster.pids())
        else:
            found["emulator"] = self.cluster.proc.pid if self.cluster.proc else None
        return {name: pid for name, pid in found.items() if pid is not None}

    def save_state(self) -> None:
        state = {"pids": self.pids(), "kubeconfig": str(self.cluster.kubeconfig), "mlflow": self.mlflow.url,
                 "prometheus": self.prometheus.url, "postgres": redacted(self.postgres.dsn), "redis": self.redis.url,
                 "apiserver": self.cluster.url, "logs": str(self.logs)}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def stop(self) -> None:
        """Stop the operator first (so it does not log the API vanishing), then MLflow, then the cluster."""
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
        if self.redis.pid is not None:
            self.console.say("      stopping Redis")
            self.redis.stop()
        if self.postgres.running:
            self.console.say("      stopping PostgreSQL")
            self.postgres.remove()
        if self.cluster_started:
            self.console.say("      stopping the emulator" if isinstance(self.cluster, EmulatorProcess)
                             else "      stopping kube-controller-manager, kube-apiserver and etcd")
            self.cluster.stop()
            self.cluster_started = False
        (self.workdir / STATE_FILE).unlink(missing_ok=True)


def prepare_workdir(workdir: Path) -> None:
    """Refuse to start over a running sandbox; otherwise clear what a previous run left."""
    running = alive_pids(workdir)
    if running:
        raise SandboxError(f"a sandbox is already running in {workdir} (pids "
                           f"{', '.join(map(str, running.values()))}); stop it with: "
                           f"medserve sandbox --stop --workdir {workdir}")
    for sub in ("cluster", "mlflow", "prometheus", "logs", "postgres", "redis", "volumes"):
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
    for name in ("operator", "kserve-standin", "job-standin", "graph-standin", "prometheus", "mlflow", "redis",
                 "postgres", "emulator", "kube-controller-manager", "kube-apiserver", "etcd"):
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

