"""`medserve sandbox` end to end, as `make demo` runs it: a subprocess, real emulator, MLflow and operator.

In the envtest tier (MEDSERVE_ENVTEST=1) the same story runs on a real kube-apiserver, etcd and
kube-controller-manager from $KUBEBUILDER_ASSETS (`--control-plane envtest`), skipped where they are missing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from medserve_sandbox.controlplane import MissingAssets, find_assets
from medserve_sandbox.emulator import KUBECTL as DEFAULT_KUBECTL

TIMEOUT = int(os.environ.get("MEDSERVE_SANDBOX_TEST_TIMEOUT") or 480)  # a loaded machine needs longer
KUBECTL = shutil.which("kubectl") or DEFAULT_KUBECTL
# The whole demo runs inside one test: its own limit, past the sandbox's, so the session is stopped first.
pytestmark = pytest.mark.timeout(TIMEOUT + 60)
ENVTEST = os.environ.get("MEDSERVE_ENVTEST") == "1"
CLUSTER_PIDS = {"etcd", "kube-apiserver", "kube-controller-manager"} if ENVTEST else {"emulator"}


@pytest.fixture(autouse=True)
def _control_plane_binaries() -> None:
    if ENVTEST:
        try:
            find_assets()
        except MissingAssets as exc:
            pytest.skip(f"envtest tier: {exc}")


def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `medserve sandbox` in a session of its own; on a timeout (or the test's own) the whole session is
    stopped, so no emulator, MLflow, operator or runtime outlives the test."""
    env = {k: v for k, v in os.environ.items() if k not in {"KUBECONFIG", "MLFLOW_TRACKING_URI"}}
    if ENVTEST and "--stop" not in args:
        args = (*args, "--control-plane", "envtest")
    proc = subprocess.Popen([sys.executable, "-m", "medserve_operator.cli", "sandbox", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except BaseException:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=20)
                break
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def table_after(output: str, command: str) -> list[list[str]]:
    """The rows (split on whitespace) printed under `$ command`, up to the next blank line."""
    block = output.split(f"$ {command}\n", 1)[1].split("\n\n", 1)[0]
    return [line.split() for line in block.strip().splitlines()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited but still answers kill(0); its parent (the sandbox) is gone and init reaps it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


@pytest.mark.parametrize(("mode", "annotation", "pods"), [
    ("Serverless", "Knative", "triage-predictor-"),  # Knative revisions: <isvc>-predictor-0000N-deployment-...
    ("Standard", "Standard", "triage-v1-predictor-"),  # a Deployment per named predictor: <isvc>-v1-predictor-...
])
def test_demo_deploys_the_example_and_cleans_up(tmp_path: Path, mode: str, annotation: str, pods: str) -> None:
    """The whole story in each KServe deployment mode: `make demo` runs Serverless, the flag picks Standard."""
    result = sandbox("--workdir", str(tmp_path), "--deployment-mode", mode)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"KServe's {mode} mode" in out

    rows = table_after(out, "kubectl get medserve")
    assert rows[0][:4] == ["NAME", "MODEL", "VERSION", "PHASE"]
    assert ["modeldeployment.medserve.io/triage", "triage-classifier", "1", "Ready", "True"] in \
        [row[:5] for row in rows[1:]]
    isvc = out.split("$ kubectl get inferenceservice triage -o yaml\n", 1)[1]
    assert "kind: InferenceService" in isvc
    assert "--model_uri=models:/triage-classifier/1" in isvc
    assert f"serving.kserve.io/deploymentMode: {annotation}\n" in isvc

    # The runtime answered real predictions, refused a wrong key, and audited with hashed patient ids.
    assert re.search(r"MRN-0042117: \w+ \(confidence [01]\.\d\d", out)
    assert "a wrong API key is refused: 401" in out
    models = json.loads(out.split("/models\n", 1)[1].split("\n\n", 1)[0])
    assert models["models"][0]["versions"][0]["request_count"] >= 3
    audit = out.split("the audit log (", 1)[1].split("\n\n", 1)[0]
    records = [json.loads(line) for line in audit.splitlines() if line.startswith("{")]
    assert records and all(r["patient_hash"].startswith("pt_") for r in records)
    assert all(r["writer"].startswith(pods) for r in records)  # from PostgreSQL: POD_NAME/...
    assert "MRN-" not in audit
    assert "PostgreSQL audit_records" in audit

    # The loop closed: no drift on reference traffic, drift on the shifted population, a retraining Job
    # that registered version 2, an A/B test of version 2 against the champion on ground-truth feedback
    # through the splitter, version 2 promoted and rolled out to all traffic, the challenger removed.
    assert "DriftDetected=False (NoDrift)" in out
    assert "DriftDetected=True (DriftDetected)" in out
    assert re.search(r"Job triage-on-drift-\S+ succeeded and registered triage-classifier version 2", out)
    listing = out.split("$ kubectl get retrainpolicies,jobs\n", 1)[1].split("done in", 1)[0]
    jobs = [line.split() for line in listing.splitlines() if line.startswith("job.batch/")]
    assert len(jobs) == 1 and jobs[0][1] == "Complete"  # one trigger, one Job, however long drift persisted
    assert "ABTest triage-on-drift-v2: triage (champion) vs triage-v2 (version 2)" in out
    graph = out.split("$ kubectl get inferencegraph triage-on-drift-v2 -o yaml\n", 1)[1]
    assert "routerType: Splitter" in graph and "serviceName: triage-v2" in graph
    split = re.search(r"(\d+) predictions with their ground truth sent through the split \(control (\d+), "
                      r"treatment (\d+)\)", out)
    assert split and int(split[2]) > 0 and int(split[3]) > 0
    decided = re.search(r"decision (\w+): accuracy ([\d.]+) \(version 2\) vs ([\d.]+) \(version 1\), always-valid "
                        r"interval of the difference \[([-+][\d.]+), ([-+][\d.]+)\]", out)
    assert decided and decided[1] == "TreatmentBetter", out[-3000:]
    assert float(decided[4]) >= 0 and float(decided[2]) > float(decided[3])
    assert "Promoted=True (ABTestWon)" in out and "alias champion of triage-classifier now points at version 2" in out
    assert "the challenger triage-v2 is removed" in out
    listing = out.rsplit("[17/18]", 1)[1].split("$ kubectl get medserve\n", 1)[1].split("done in", 1)[0]
    final = [line.split() for line in listing.splitlines()]  # one table per kind: ABTests, MDs, policies
    assert ["modeldeployment.medserve.io/triage", "triage-classifier", "2", "Ready", "True"] in \
        [row[:5] for row in final]
    assert ["modeldeployment.medserve.io/triage-v2"] not in [row[:1] for row in final]
    assert "RolloutComplete" in out

    # The timeline tells the story in order, and the report drew it.
    timeline = out.split("$ the timeline (from the Events of the medserve objects)\n", 1)[1].split("\n\n", 1)[0]
    story = ["DriftDetected", "RetrainingTriggered", "RetrainingSucceeded", "ABTestStarted", "ABTestConcluded",
             "ChallengerRemoved", "RolloutComplete"]
    firsts = [next(i for i, line in enumerate(timeline.splitlines()) if f" {reason}: " in line) for reason in story]
    assert firsts == sorted(firsts), timeline
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert any(p["drifted"] for p in report["drift"]) and any(not p["drifted"] for p in report["drift"])
    # At least the concluding evaluation, its interval clear of zero: a large effect can conclude at the first
    # evaluation (seen on a real control plane, Standard mode: one evaluation at 116 samples).
    assert report["abtest"] and report["abtest"][-1]["low"] >= 0

    # Every runtime audited into PostgreSQL, and at the end every chain verified (the password never printed).
    verified = out.split("$ medserve audit verify --dsn ", 1)[1].split("\n\n", 1)[0]
    assert re.match(r"postgresql://medserve:\*\*\*@127\.0\.0\.1:\d+/medserve\n", verified), verified
    counted = re.search(r": ok, (\d+) records in (\d+) chains, intact", verified)
    assert counted and int(counted[1]) > len(records) and int(counted[2]) >= 2, verified
    assert "(exit 0)" in verified
    assert set(re.findall(r"postgresql://medserve:([^@\s]*)@", out)) == {"***"}

    # Every process it started is gone, and no state claims otherwise.
    pids = [int(p) for p in re.findall(r"(?:operator|stand-in) pid (\d+)", out)]
    assert pids and not any(alive(pid) for pid in pids)
    assert not (tmp_path / "sandbox.json").exists()
    assert out.rstrip().endswith("Done.")


def test_keep_leaves_it_running_until_stop(tmp_path: Path) -> None:
    result = sandbox("--workdir", str(tmp_path), "--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    kubeconfig = tmp_path / "cluster" / "kubeconfig"
    assert f"export KUBECONFIG={kubeconfig}" in result.stdout
    state = json.loads((tmp_path / "sandbox.json").read_text())
    try:
        assert set(state["pids"]) == {"operator", "kserve-standin", "job-standin", "graph-standin", "prometheus",
                                      "mlflow", "postgres", "redis", *CLUSTER_PIDS}
        assert all(alive(pid) for pid in state["pids"].values())
        got = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), "get", "md", "triage", "-o",
                              "jsonpath={.status.model.version}"], capture_output=True, text=True, timeout=60,
                             check=True)
        assert got.stdout == "2"  # the demo ends after the A/B test promoted version 2

        again = sandbox("--workdir", str(tmp_path))
        assert again.returncode == 1
        assert "already running" in again.stdout
    finally:
        stopped = sandbox("--workdir", str(tmp_path), "--stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "sandbox stopped" in stopped.stdout
    assert not any(alive(pid) for pid in state["pids"].values())
    assert not (tmp_path / "sandbox.json").exists()
