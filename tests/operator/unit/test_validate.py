"""`medserve validate`: exit codes, the problem line format, malformed manifests, and every example valid.

The command runs both in-process (`main()`) and as a real subprocess of the `medserve` entry point.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from medserve_operator.tools import crdgen
from medserve_operator.tools.validate import main, validate_document

ROOT = crdgen.repo_root()
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in {".yaml", ".yml"})

LINE = re.compile(r"^(?P<file>[^:]+): (?P<kind>[A-Za-z]+)/(?P<name>[^:]+): (?P<path>[A-Za-z0-9_.\[\]]+): (?P<msg>.+)$")

MD: dict[str, Any] = {
    "apiVersion": "medserve.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "triage"},
    "spec": {"model": {"name": "triage-classifier", "alias": "champion"}},
}
AB: dict[str, Any] = {
    "apiVersion": "medserve.io/v1alpha1",
    "kind": "ABTest",
    "metadata": {"name": "triage-ab"},
    "spec": {"control": {"modelDeployment": "triage"}, "treatment": {"modelDeployment": "triage-challenger"}},
}
RP: dict[str, Any] = {
    "apiVersion": "medserve.io/v1alpha1",
    "kind": "RetrainPolicy",
    "metadata": {"name": "triage-retrain"},
    "spec": {"modelDeployment": "triage", "schedule": "0 3 * * 0", "job": {"image": "ghcr.io/medserve/training:0.1.0"}},
}
SECRET: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a": "b"}}


def write(tmp_path: Path, name: str, *docs: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def edit(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with the dotted `path` set to `value`, or deleted when value is DELETE."""
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()


# --- exit codes and output ------------------------------------------------------------------------------------


def test_valid_files_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "all.yaml", MD, SECRET, AB, RP)
    code, out, err = run([str(path)], capsys)
    assert (code, err) == (0, "")
    assert out == f"{path}: 3 documents valid, 1 skipped (not medserve kinds)\n"


def test_invalid_file_exits_1_with_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = edit(edit(MD, "spec.model.version", "3"), "spec.scaling", {"minReplicas": "2", "target": 0})
    path = write(tmp_path, "bad.yaml", MD, bad)
    code, out, err = run([str(path)], capsys)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines == [
        f"{path}: ModelDeployment/triage: spec.model: exactly one of version or alias must be set",
        f'{path}: ModelDeployment/triage: spec.scaling.minReplicas: must be an integer (got "2")',
        f"{path}: ModelDeployment/triage: spec.scaling.target: must be greater than or equal to 1 (got 0)",
    ]
    for line in lines:
        assert LINE.match(line), line


def test_quiet_prints_only_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", MD)
    bad = write(tmp_path, "bad.yaml", edit(AB, "spec.trafficSplit", {"treatmentPercent": 100}))
    code, out, _ = run(["-q", str(good), str(bad)], capsys)
    assert code == 1
    assert (
        out
        == f"{bad}: ABTest/triage-ab: spec.trafficSplit.treatmentPercent: must be less than or equal to 99 (got 100)\n"
    )


def test_missing_file_exits_2_but_others_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.yaml", edit(MD, "spec.bogus", 1))
    code, out, err = run([str(tmp_path / "nope.yaml"), str(bad)], capsys)
    assert code == 2
    assert err == f"{tmp_path / 'nope.yaml'}: no such file or directory\n"
    assert out == f"{bad}: ModelDeployment/triage: spec.bogus: unknown field\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2 and "usage" in err
    code, _, err = run(["--frobnicate", "x.yaml"], capsys)
    assert code == 2 and "usage" in err
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "exit status" in out


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: medserve.io/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: [unclosed\n")
    code, out, err = run([str(path)], capsys)
    assert (code, out) == (2, "")
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: YAML syntax error: .+\n", err), err


def test_duplicate_keys_are_yaml_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("apiVersion: medserve.io/v1alpha1\nkind: ModelDeployment\nkind: ABTest\n")
    code, _, err = run([str(path)], capsys)
    assert code == 2
    assert err == f"{path}:3: YAML syntax error: found duplicate key 'kind'\n"


def test_unreadable_and_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run([str(binary)], capsys)
    assert code == 2 and err.startswith(f"{binary}: cannot read")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run([str(empty)], capsys)
    assert code == 2 and "no *.yaml or *.yml files" in err


def test_directories_are_recursed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    one = write(tmp_path / "a", "one.yml", MD)
    two = write(tmp_path / "a" / "b", "two.yaml", edit(RP, "spec.cooldown", "soon"))
    (tmp_path / "a" / "notes.txt").write_text("not yaml: [")
    code, out, _ = run([str(tmp_path)], capsys)
    assert code == 1
    # Sorted by path: a/b/two.yaml comes before a/one.yml.
    assert out.splitlines() == [
        f"{two}: RetrainPolicy/triage-retrain: spec.cooldown: must be a duration such as 90s, 5m or 1h30m "
        '(units ms, s, m, h, d) (got "soon")',
        f"{one}: 1 document valid",
    ]


def test_lists_empty_documents_and_non_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.yaml"
    items = {"apiVersion": "v1", "kind": "List", "items": [MD, edit(AB, "metadata.name", "AB")]}
    path.write_text("---\n---\n" + yaml.safe_dump(items) + "---\n- just\n- a list\n")
    code, out, _ = run([str(path)], capsys)
    assert code == 1
    assert out.splitlines() == [
        f"{path}: ABTest/AB: metadata.name: metadata.name must be a DNS-1035 label: lower-case letters, digits "
        "and '-', starting with a letter and ending with a letter or digit",
        f"{path}: <document 3>: (root): must be a mapping with apiVersion, kind and metadata",
    ]


def test_validate_document_for_reuse() -> None:
    assert validate_document(MD) == []
    assert validate_document(SECRET) == []
    assert validate_document({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"bogus": 1}}) == []
    assert validate_document(edit(MD, "spec.model.name", "")) == [
        (
            "spec.model.name",
            "must be an MLflow registered model name: letters, digits, '.', '_' or '-', starting with a letter or "
            'digit, at most 128 characters (got "")',
        )
    ]


# --- malformed manifests: each reports the right field path ---------------------------------------------------

MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown spec field", edit(MD, "spec.replicas", 3), "spec.replicas"),
    ("unknown nested field", edit(MD, "spec.model.stage", "Production"), "spec.model.stage"),
    ("snake_case key", edit(MD, "spec.scaling", {"max_replicas": 2}), "spec.scaling.max_replicas"),
    ("version and alias", edit(MD, "spec.model.version", "2"), "spec.model"),
    ("unquoted version", edit(edit(MD, "spec.model.alias", DELETE), "spec.model.version", 7), "spec.model.version"),
    ("missing model", edit(MD, "spec.model", DELETE), "spec.model"),
    ("missing spec", edit(MD, "spec", DELETE), "spec"),
    ("string for integer", edit(MD, "spec.scaling", {"maxReplicas": "10"}), "spec.scaling.maxReplicas"),
    ("min above max", edit(MD, "spec.scaling", {"minReplicas": 5, "maxReplicas": 2}), "spec.scaling.minReplicas"),
    (
        "canary out of range",
        edit(MD, "spec.rollout", {"canaryTrafficPercent": 150}),
        "spec.rollout.canaryTrafficPercent",
    ),
    ("bad enum", edit(MD, "spec.runtime", {"device": "tpu"}), "spec.runtime.device"),
    ("bad duration", edit(MD, "spec.monitoring", {"interval": "5 minutes"}), "spec.monitoring.interval"),
    ("zero duration", edit(MD, "spec.monitoring", {"drift": {"window": "0s"}}), "spec.monitoring.drift.window"),
    ("alpha zero", edit(MD, "spec.monitoring", {"drift": {"alpha": 0}}), "spec.monitoring.drift.alpha"),
    (
        "accuracy above 1",
        edit(MD, "spec.monitoring", {"alerts": {"minAccuracy": 1.5}}),
        "spec.monitoring.alerts.minAccuracy",
    ),
    (
        "secret ref name",
        edit(MD, "spec.security", {"apiKeySecretRef": {"name": "Keys!"}}),
        "spec.security.apiKeySecretRef.name",
    ),
    (
        "bad quantity",
        edit(MD, "spec.runtime", {"resources": {"limits": {"memory": "lots"}}}),
        "spec.runtime.resources.limits.memory",
    ),
    ("name too long", edit(MD, "metadata.name", "m" * 46), "metadata.name"),
    ("name not dns-1035", edit(MD, "metadata.name", "2fast"), "metadata.name"),
    ("missing name", edit(MD, "metadata", {"labels": {"a": "b"}}), "metadata.name"),
    ("wrong api version", edit(MD, "apiVersion", "medserve.io/v1beta1"), "apiVersion"),
    ("unknown medserve kind", edit(MD, "kind", "ModelDeploy"), "kind"),
    (
        "control equals treatment",
        edit(AB, "spec.treatment.modelDeployment", "triage"),
        "spec.treatment.modelDeployment",
    ),
    ("split 0", edit(AB, "spec.trafficSplit", {"treatmentPercent": 0}), "spec.trafficSplit.treatmentPercent"),
    ("promql missing", edit(AB, "spec.metric", {"source": "promql"}), "spec.metric.promql"),
    ("bad hypothesis", edit(AB, "spec.hypothesis", "inferiority"), "spec.hypothesis"),
    (
        "samples min above max",
        edit(AB, "spec.statistics", {"minSamplesPerArm": 10, "maxSamplesPerArm": 5}),
        "spec.statistics.minSamplesPerArm",
    ),
    ("arm not dns-1035", edit(AB, "spec.control.modelDeployment", "Triage"), "spec.control.modelDeployment"),
    ("abtest name too long", edit(AB, "metadata.name", "a" * 46), "metadata.name"),
    ("bad cron", edit(RP, "spec.schedule", "0 3 * *"), "spec.schedule"),
    ("cron out of range", edit(RP, "spec.schedule", "0 24 * * *"), "spec.schedule"),
    ("no trigger", edit(RP, "spec.schedule", DELETE), "spec"),
    ("missing job image", edit(RP, "spec.job", {"command": ["python"]}), "spec.job.image"),
    ("backoff too big", edit(RP, "spec.job.backoffLimit", 11), "spec.job.backoffLimit"),
    ("env item field", edit(RP, "spec.job.env", [{"name": "A", "valueFrom": {}}]), "spec.job.env[0].valueFrom"),
    ("command not a list", edit(RP, "spec.job.command", "python train.py"), "spec.job.command"),
    ("bad strategy", edit(RP, "spec.promotion", {"strategy": "yolo"}), "spec.promotion.strategy"),
    ("retrain name too long", edit(RP, "metadata.name", "r" * 41), "metadata.name"),
    ("bad time zone", edit(RP, "spec.timeZone", "Nowhere/Special"), "spec.timeZone"),
    (
        "performance missing below",
        edit(RP, "spec.triggers", {"performance": {"metric": "accuracy"}}),
        "spec.triggers.performance.below",
    ),
]


@pytest.mark.parametrize(("case", "doc", "path"), MALFORMED, ids=[c for c, _, _ in MALFORMED])
def test_malformed_manifest_reports_field_path(
    case: str, doc: dict[str, Any], path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(tmp_path, "m.yaml", SECRET, doc)
    code, out, err = run([str(file)], capsys)
    assert (code, err) == (1, ""), case
    [line] = out.splitlines()
    match = LINE.match(line)
    assert match is not None, line
    assert (match["file"], match["kind"], match["path"]) == (str(file), doc["kind"], path), line
    assert match["msg"].strip()


def test_malformed_cases_are_distinct_and_many() -> None:
    assert len(MALFORMED) >= 20
    assert len({yaml.safe_dump(d) for _, d, _ in MALFORMED}) == len(MALFORMED)


# --- examples and the real command --------------------------------------------------------------------------------


def test_there_are_examples_of_every_kind() -> None:
    kinds = {
        doc.get("kind")
        for path in EXAMPLE_FILES
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict)
    }
    assert {"ModelDeployment", "ABTest", "RetrainPolicy", "Secret"} <= kinds


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_is_valid(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([str(path)], capsys)
    assert (code, err) == (0, ""), out
    assert re.fullmatch(rf"{re.escape(str(path))}: \d+ documents? valid(, \d+ skipped \(not medserve kinds\))?\n", out)


def medserve(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medserve_operator.cli", "validate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_cli_subprocess_examples_directory() -> None:
    result = medserve("examples")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "examples/01-model-deployment/model-deployment.yaml: 1 document valid" in result.stdout
    assert "examples/02-abtest/abtest.yaml: 2 documents valid" in result.stdout


def test_cli_subprocess_stdin_and_exit_codes() -> None:
    bad = yaml.safe_dump(edit(RP, "spec.cooldown", "-1h"))
    result = medserve("-", stdin=bad)
    assert result.returncode == 1
    assert result.stdout.startswith("<stdin>: RetrainPolicy/triage-retrain: spec.cooldown: must be a duration")
    assert medserve("-", stdin=yaml.safe_dump(AB)).stdout == "<stdin>: 1 document valid\n"
    result = medserve("-", stdin="kind: [")
    assert result.returncode == 2 and result.stderr.startswith("<stdin>:1: YAML syntax error")
    assert medserve().returncode == 2
