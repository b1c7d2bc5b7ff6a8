"""`medserve render`: the children the operator would create, from the operator's own renderers, as YAML.

The example ModelDeployment renders to an InferenceService that Knative's default podspec field masks accept
in Serverless mode (tests/support/knative_masks.py, from knative/serving `pkg/apis/serving/fieldmask.go`)
and that KServe's real CRD schema accepts in both modes; exit codes follow `medserve validate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import knative_masks
import pytest
import yaml
from medserve_operator import cli

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "01-model-deployment" / "model-deployment.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = cli.main(["render", *argv])
    out, err = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(out) if d is not None], err


def with_metric(tmp_path: Path, metric: str) -> Path:
    """The example with spec.scaling.metric set."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["scaling"]["metric"] = metric
    path = tmp_path / f"{metric}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_example_passes_knatives_default_masks_in_serverless(capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, err = run(capsys, str(EXAMPLE), "--mode", "Serverless", "--model-version", "3")
    assert code == 0, err
    assert [d["kind"] for d in docs] == ["InferenceService"]
    isvc = docs[0]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc["metadata"]["labels"]["medserve.io/model-version"] == "3"
    assert knative_masks.disallowed(isvc["spec"]["predictor"]) == []


def test_example_passes_kserves_schema_in_both_modes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    schemas = pytest.importorskip("medserve_sandbox.schemas")
    directory = schemas.find_kserve_crds_dir()
    if directory is None:
        pytest.skip("KServe CRD schemas not found (../shared/upstream/kserve)")
    registry = schemas.SchemaRegistry()
    registry.add_kserve_crds(directory)
    for mode in ("Serverless", "Standard"):
        code, docs, err = run(capsys, str(EXAMPLE), "--mode", mode, "--model-version", "3", "--canary-from", "2")
        assert code == 0, err
        registry.admit(docs[0], old=None, field_validation="Strict")
        code, docs, err = run(capsys, str(EXAMPLE), "--mode", mode, "--model-version", "3")
        assert code == 0, err
        registry.admit(docs[0], old=None, field_validation="Strict")


def test_the_scaling_metric_defaults_per_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """The example names no metric: Knative's concurrency (target 8) in Serverless, the HPA's cpu in Standard
    (no scaleTarget: KServe's DefaultCPUUtilization, 80%)."""
    picked = {}
    for mode in ("Serverless", "Standard"):
        code, docs, err = run(capsys, str(EXAMPLE), "--mode", mode, "--model-version", "3")
        assert code == 0, err
        predictor = docs[0]["spec"]["predictor"]
        picked[mode] = (predictor["scaleMetric"], predictor.get("scaleTarget"))
    assert picked == {"Serverless": ("concurrency", 8), "Standard": ("cpu", None)}


def test_standard_mode_says_why_a_knative_metric_cannot_scale(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    code, docs, err = run(capsys, str(with_metric(tmp_path, "concurrency")), "--mode", "Standard")
    assert (code, docs) == (1, [])
    assert "ModelDeployment/triage: spec.scaling.metric: 'concurrency' needs Knative" in err


def test_an_unresolved_alias_is_rendered_as_mlflows_alias_uri(capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, err = run(capsys, str(EXAMPLE))
    assert code == 0
    assert "--model_uri=models:/triage-classifier@champion" in docs[0]["spec"]["predictor"]["containers"][0]["args"]
    assert "alias 'champion' not resolved" in err


def test_every_example_renders_its_children(capsys: pytest.CaptureFixture[str]) -> None:
    code, docs, err = run(capsys, str(ROOT / "examples"), "--runtime-image", "registry.local/runtime:1",
                          "--runtime-mlflow-uri", "http://mlflow.svc:5000")
    assert code == 0, err
    kinds = {d["kind"] for d in docs}
    assert {"InferenceService", "InferenceGraph", "CronJob", "Job"} <= kinds
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["image"] == "registry.local/runtime:1"
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.svc:5000"} in container["env"]


def test_exit_codes_follow_validate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: medserve.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\nspec: {}\n")
    code, docs, err = run(capsys, str(bad))
    assert (code, docs) == (1, []) and "spec.model" in err
    assert run(capsys, str(tmp_path / "missing.yaml"))[0] == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [")
    assert run(capsys, str(broken))[0] == 2
    assert run(capsys, str(EXAMPLE), "--mode", "Sideways")[0] == 2
    assert run(capsys, str(EXAMPLE), "--model-version", "latest")[0] == 2
    policy_only = tmp_path / "policy.yaml"
    policy_only.write_text((ROOT / "examples" / "03-retrain-policy" / "retrain-policy.yaml").read_text())
    code, docs, err = run(capsys, str(policy_only))
    assert code == 1 and "spec.modelDeployment" in err
