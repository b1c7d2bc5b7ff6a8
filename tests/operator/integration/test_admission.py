"""What the API server (the emulator, with our generated CRDs) accepts and rejects, through the real kubectl.

Every example manifest applies cleanly, and twenty malformed ones are refused before the operator ever
sees them, each with a message that names the offending field.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from medserve_sandbox.emulator import EmulatorProcess

REPO = Path(__file__).resolve().parents[3]
# The ArgoCD Application example (examples/04-gitops) is for a cluster with Argo CD, whose CRD the emulator lacks.
EXAMPLES = sorted(p for p in (REPO / "examples").rglob("*.yaml") if "argoproj.io/" not in p.read_text())

MD = """\
apiVersion: medserve.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
{spec}
"""
ABT = """\
apiVersion: medserve.io/v1alpha1
kind: ABTest
metadata: {{name: {name}}}
spec:
{spec}
"""
RTP = """\
apiVersion: medserve.io/v1alpha1
kind: RetrainPolicy
metadata: {{name: {name}}}
spec:
{spec}
"""
OK_MODEL = "  model: {name: m, version: '1'}\n"
OK_JOB = "  job: {image: 'train:1'}\n  schedule: '0 3 * * 0'\n"

# (template, name, spec body, a field path the error must name)
MALFORMED = [
    (MD, "no-model", "  runtime: {protocol: v2}", "spec.model"),
    (MD, "both-ref", "  model: {name: m, version: '1', alias: champion}", "spec.model"),
    (MD, "no-ref", "  model: {name: m}", "spec.model"),
    (MD, "bad-version", "  model: {name: m, version: 'three'}", "spec.model.version"),
    (MD, "bad-protocol", OK_MODEL + "  runtime: {protocol: grpc}", "spec.runtime.protocol"),
    (MD, "bad-device", OK_MODEL + "  runtime: {device: tpu}", "spec.runtime.device"),
    (MD, "big-batch", OK_MODEL + "  runtime: {batching: {maxBatchSize: 5000}}", "spec.runtime.batching.maxBatchSize"),
    (MD, "replicas", OK_MODEL + "  scaling: {minReplicas: 5, maxReplicas: 2}", "spec.scaling"),
    (MD, "canary", OK_MODEL + "  rollout: {canaryTrafficPercent: 150}", "spec.rollout.canaryTrafficPercent"),
    (MD, "duration", OK_MODEL + "  monitoring: {interval: soon}", "spec.monitoring.interval"),
    (MD, "statistic", OK_MODEL + "  monitoring: {drift: {statistic: mean}}", "spec.monitoring.drift.statistic"),
    (MD, "accuracy", OK_MODEL + "  monitoring: {alerts: {minAccuracy: 1.5}}", "spec.monitoring.alerts.minAccuracy"),
    (MD, "unknown-field", OK_MODEL + "  replicas: 3", "spec.replicas"),
    (MD, "wrong-type", OK_MODEL + "  security: {rateLimitPerMinute: lots}", "spec.security.rateLimitPerMinute"),
    (MD, "a-name-that-is-far-too-long-for-the-inference-service-x", OK_MODEL, "metadata.name"),
    (ABT, "same-arms", "  control: {modelDeployment: a}\n  treatment: {modelDeployment: a}", "spec"),
    (ABT, "split", "  control: {modelDeployment: a}\n  treatment: {modelDeployment: b}\n"
                   "  trafficSplit: {treatmentPercent: 100}", "spec.trafficSplit.treatmentPercent"),
    (ABT, "alpha", "  control: {modelDeployment: a}\n  treatment: {modelDeployment: b}\n"
                   "  statistics: {alpha: 0.9}", "spec.statistics.alpha"),
    (RTP, "no-job", "  modelDeployment: m\n  schedule: '0 3 * * 0'", "spec.job"),
    (RTP, "strategy", "  modelDeployment: m\n" + OK_JOB + "  promotion: {strategy: yolo}", "spec.promotion.strategy"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    workdir = tmp_path_factory.mktemp("admission")
    crds = sorted((REPO / "crds").glob("*.yaml"))
    emulator = EmulatorProcess(workdir, crd_paths=crds, log_path=workdir / "emulator.log").start()
    yield emulator
    emulator.stop()


def test_there_are_twenty_distinct_malformed_manifests() -> None:
    assert len(MALFORMED) >= 20
    assert len({name for _, name, _, _ in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(("template", "name", "spec", "field"), MALFORMED, ids=[m[1][:20] for m in MALFORMED])
def test_malformed_manifest_is_rejected_naming_the_field(cluster: EmulatorProcess, template: str, name: str,
                                                        spec: str, field: str) -> None:
    manifest = template.format(name=name, spec=spec)
    yaml.safe_load(manifest)  # the YAML itself is well-formed: the API must be what refuses it
    result = cluster.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0, f"{name} was accepted:\n{manifest}"
    assert field in result.stderr, f"error for {name} does not name {field}:\n{result.stderr}"
    kind = yaml.safe_load(manifest)["kind"]
    assert cluster.kubectl("get", kind.lower(), name, check=False).returncode != 0


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO / "examples")) for p in EXAMPLES])
def test_every_example_applies(cluster: EmulatorProcess, path: Path) -> None:
    result = cluster.kubectl("apply", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            got = cluster.kubectl("get", f"{doc['kind'].lower()}", doc["metadata"]["name"], "-o", "name")
            assert doc["metadata"]["name"] in got.stdout


def test_printer_columns_and_category(cluster: EmulatorProcess) -> None:
    cluster.kubectl("apply", "-f", "-", input=textwrap.dedent("""\
        apiVersion: medserve.io/v1alpha1
        kind: ModelDeployment
        metadata: {name: columns}
        spec: {model: {name: m, alias: champion}}
        """))
    header = cluster.kubectl("get", "md", "columns").stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "VERSION", "PHASE", "READY", "DRIFT", "URL", "AGE"]
    listed = cluster.kubectl("get", "medserve", "-o", "name").stdout
    assert "modeldeployment.medserve.io/columns" in listed
