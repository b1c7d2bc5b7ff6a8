"""The chart's generated monitoring files: up to date, valid PromQL (the real `promtool`), contract names only.

promtool ships with Debian's prometheus package (.ci/system-deps installs it); the promtool tests skip
with that reason where it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from medserve_contract import metrics
from medserve_operator.tools import monitoring

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def test_committed_files_are_the_generated_ones() -> None:
    for name, content in monitoring.rendered().items():
        path = monitoring.CHART / name
        assert path.exists() and path.read_text() == content, f"run `make monitoring`: {name} differs"
    committed = {p.name for p in (monitoring.CHART / monitoring.DASHBOARD_DIR).glob("*.json")}
    assert committed == {"model-performance.json", "abtest-results.json", "system-health.json",
                         "clinical-outcomes.json"}, "a dashboard file no generator writes"


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(monitoring.CHART, chart)
    assert monitoring.main(["--chart", str(chart), "--check"]) == 0
    (chart / monitoring.RULES_FILE).write_text("groups: []\n")
    assert monitoring.main(["--chart", str(chart), "--check"]) == 1
    assert monitoring.main(["--chart", str(chart)]) == 0
    assert monitoring.main(["--chart", str(chart), "--check"]) == 0


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(monitoring.CHART / monitoring.RULES_FILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(monitoring.ALERTS)} rules found" in result.stdout


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's PromQL (Grafana's variables replaced) as a recording rule: promtool parses it."""
    assert PROMTOOL is not None
    queries = monitoring.dashboard_queries()
    rules = [{"record": f"medserve:panel_{i}", "expr": monitoring.concrete(expr)} for i, (_, _, expr) in
             enumerate(queries)]
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check above can fail: a rule with a syntax error is refused."""
    assert PROMTOOL is not None
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"alert": "Broken", "expr": f"{metrics.DEPLOYMENT_READY} ==", "for": "5m"}]}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0


def test_every_series_name_is_one_of_the_contract() -> None:
    known = {value for name, value in vars(metrics).items() if name.isupper() and isinstance(value, str)}
    exprs = [alert.expr for alert in monitoring.ALERTS] + [expr for _, _, expr in monitoring.dashboard_queries()]
    for expr in exprs:
        for name in re.findall(r"\bmedserve_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in known or base in known, f"{name} in {expr!r} is not in medserve_contract.metrics"


def test_the_issue_s_alerts_are_all_there() -> None:
    names = {alert.name for alert in monitoring.ALERTS}
    assert {"MedserveLatencyP95High", "MedserveAccuracyBelowMinimum", "MedserveDriftDetected",
            "MedserveRetrainingJobFailed", "MedserveABTestStalled", "MedserveRuntimeDown"} <= names
    latency = next(a for a in monitoring.ALERTS if a.name == "MedserveLatencyP95High")
    assert latency.duration == "5m" and metrics.DEPLOYMENT_LATENCY_P95_THRESHOLD in latency.expr


def test_dashboards_are_grafana_json_with_a_datasource_variable() -> None:
    titles = set()
    for path in sorted((monitoring.CHART / monitoring.DASHBOARD_DIR).glob("*.json")):
        board = json.loads(path.read_text())
        titles.add(board["title"])
        variables = [v["name"] for v in board["templating"]["list"]]
        assert variables[0] == "datasource"
        assert board["panels"] and all(p["targets"] for p in board["panels"])
        for panel in board["panels"]:
            for target in panel["targets"]:
                used = set(re.findall(r"\$([a-z_]+)", target["expr"]))
                assert used <= set(variables), f"{path.name}: {panel['title']} uses an undefined variable"
    assert titles == {"Model Performance Overview", "A/B Test Results", "System Health", "Clinical Outcomes"}
