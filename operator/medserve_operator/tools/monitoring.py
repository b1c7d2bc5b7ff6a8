"""The chart's alert rules and Grafana dashboards, generated from this one source.

`python -m medserve_operator.tools.monitoring` (`make monitoring`) writes, under charts/medserve/:
`files/prometheus-rules.yaml` (the PrometheusRule's groups, also what `promtool check rules` reads), one
plain Grafana dashboard JSON per dashboard in `files/dashboards/` (the chart puts each in a ConfigMap
labelled for Grafana's sidecar), and `argocd/argocd-cm.yaml`, the ArgoCD health checks of the three kinds
(`argocd/medserve.io/KIND/health.lua`, in ArgoCD's resource_customizations layout) as an argocd-cm patch.
`--check` fails when the committed files differ. Every series name comes from `medserve_contract.metrics`,
the names the runtime and the operator export.

Per-object thresholds reach PromQL as the operator's series (`medserve_operator.state_metrics`): the
latency alert compares each deployment's p95 with its own `medserve_deployment_alert_latency_p95_seconds`
by `on (namespace, model)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from medserve_contract import metrics as m

CHART = Path(__file__).resolve().parents[3] / "charts" / "medserve"
RULES_FILE = "files/prometheus-rules.yaml"
DASHBOARD_DIR = "files/dashboards"
HEALTH_DIR = "argocd/medserve.io"
ARGOCD_CM = "argocd/argocd-cm.yaml"
KINDS = ("ModelDeployment", "ABTest", "RetrainPolicy")
RUNTIME_JOB = "medserve-runtime"
"""The `job` of the runtimes' targets: the chart's PodMonitor sets it, as the sandbox's Prometheus does."""
INFERENCE = f'{m.ENDPOINT_LABEL}=~".*predict|.*infer"'
"""The request routes that run the model (the clinical API and KServe's V1/V2), not health or metrics."""
BY = "namespace, model"
SELECT = 'namespace=~"$namespace", model=~"$model"'
"""Grafana template variables; `concrete()` replaces them for a query outside Grafana."""


def _feedback(outcome: str | None, window: str, select: str = "") -> str:
    matchers = ", ".join(x for x in (select, f'{m.OUTCOME_LABEL}="{outcome}"' if outcome else "") if x)
    selector = f"{{{matchers}}}" if matchers else ""
    return f"sum by ({BY}) (increase({m.FEEDBACK_TOTAL}{selector}[{window}]))"


def accuracy(window: str, select: str = "") -> str:
    """Accuracy from ground truth; 0, not absent, when no feedback was correct (no `correct` series yet)."""
    total = _feedback(None, window, select)
    return f"(({_feedback(m.OUTCOME_CORRECT, window, select)} or {total} * 0) / {total})"


def latency_p95(window: str, select: str = "") -> str:
    matchers = ", ".join(x for x in (select, INFERENCE) if x)
    return (f"histogram_quantile(0.95, sum by ({BY}, le) "
            f"(rate({m.REQUEST_DURATION}_bucket{{{matchers}}}[{window}])))")


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    duration: str
    severity: str
    summary: str
    description: str

    def rule(self) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": self.duration,
                "labels": {"severity": self.severity, "system": "medserve"},
                "annotations": {"summary": self.summary, "description": self.description}}


ALERTS = (
    Alert("MedserveLatencyP95High",
          f"{latency_p95('5m')} > on ({BY}) group_left() {m.DEPLOYMENT_LATENCY_P95_THRESHOLD}",
          "5m", "warning",
          "p95 latency of {{ $labels.namespace }}/{{ $labels.model }} over its alerts.latencyP95Ms",
          "The p95 inference latency has been {{ $value | humanizeDuration }} for 5 minutes, above the "
          "ModelDeployment's spec.monitoring.alerts.latencyP95Ms."),
    Alert("MedserveAccuracyBelowMinimum",
          f"{accuracy('1h')} < on ({BY}) group_left() {m.DEPLOYMENT_MIN_ACCURACY}"
          f" and on ({BY}) {_feedback(None, '1h')} >= 20",
          "10m", "critical",
          "Accuracy of {{ $labels.namespace }}/{{ $labels.model }} below its alerts.minAccuracy",
          "Ground truth posted to /feedback over the last hour puts accuracy at {{ $value | humanizePercentage }}, "
          "below spec.monitoring.alerts.minAccuracy (at least 20 outcomes)."),
    Alert("MedserveDriftDetected", f"{m.DEPLOYMENT_DRIFT_DETECTED} == 1", "5m", "warning",
          "Input drift on {{ $labels.namespace }}/{{ $labels.model }}",
          "The operator's drift test finds the inputs no longer match the model's reference population "
          "(kubectl describe md {{ $labels.model }} -n {{ $labels.namespace }} names the features)."),
    Alert("MedserveRetrainingJobFailed", f"{m.RETRAIN_LAST_JOB_FAILED} == 1", "0m", "warning",
          "Retraining Job of {{ $labels.namespace }}/{{ $labels.policy }} failed",
          "The last retraining Job of RetrainPolicy {{ $labels.policy }} (model {{ $labels.model }}) failed; "
          "status.lastJob says why. No new version was registered."),
    Alert("MedserveABTestStalled",
          f"{m.ABTEST_OPEN} == 1 and on (namespace, {m.ABTEST_LABEL}) "
          f"sum by (namespace, {m.ABTEST_LABEL}) (delta({m.ABTEST_SAMPLES}[1h])) <= 0",
          "30m", "warning",
          "A/B test {{ $labels.namespace }}/{{ $labels.abtest }} gains no samples",
          "The ABTest {{ $labels.abtest }} ({{ $labels.control }} vs {{ $labels.treatment }}) is open but has "
          "gained no samples for an hour: no traffic through its split, no feedback, or an arm not ready."),
    Alert("MedserveRuntimeDown", f'up{{job="{RUNTIME_JOB}"}} == 0', "5m", "critical",
          "Model runtime {{ $labels.namespace }}/{{ $labels.pod }} is down",
          "Prometheus cannot scrape the model-runtime pod {{ $labels.pod }}; it serves no predictions."),
    Alert("MedserveDeploymentNotReady", f"{m.DEPLOYMENT_READY} == 0", "10m", "critical",
          "ModelDeployment {{ $labels.namespace }}/{{ $labels.model }} not Ready",
          "The ModelDeployment has not been Ready for 10 minutes (kubectl describe md shows the condition)."),
)


def rule_groups() -> dict[str, Any]:
    return {"groups": [{"name": "medserve", "rules": [alert.rule() for alert in ALERTS]}]}


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    thresholds: list[float] = field(default_factory=list)


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    variables: tuple[str, ...] = ("namespace", "model")


LEGEND = "{{namespace}}/{{model}}"
DASHBOARDS = (
    Dashboard("medserve-model-performance", "Model Performance Overview",
              "Per ModelDeployment: latency against its alert threshold, traffic, accuracy, confidence.", [
                  Panel("p95 inference latency", [
                      (latency_p95("5m", SELECT), LEGEND),
                      (f"{m.DEPLOYMENT_LATENCY_P95_THRESHOLD}{{{SELECT}}}", "threshold " + LEGEND)], unit="s"),
                  Panel("Requests per second by status code", [
                      (f"sum by ({BY}, {m.CODE_LABEL}) (rate({m.REQUEST_DURATION}_count{{{SELECT}, {INFERENCE}}}[5m]))",
                       LEGEND + " {{code}}")], unit="reqps"),
                  Panel("Accuracy from ground truth (1h)", [
                      (accuracy("1h", SELECT), LEGEND),
                      (f"{m.DEPLOYMENT_MIN_ACCURACY}{{{SELECT}}}", "minimum " + LEGEND)], unit="percentunit"),
                  Panel("Median prediction confidence", [
                      (f"histogram_quantile(0.5, sum by ({BY}, le) "
                       f"(rate({m.PREDICTION_CONFIDENCE}_bucket{{{SELECT}}}[5m])))", LEGEND)],
                        unit="percentunit"),
                  Panel("Mean batch size", [
                      (f"sum by ({BY}) (rate({m.BATCH_SIZE}_sum{{{SELECT}}}[5m])) / "
                       f"sum by ({BY}) (rate({m.BATCH_SIZE}_count{{{SELECT}}}[5m]))", LEGEND)]),
              ]),
    Dashboard("medserve-abtest-results", "A/B Test Results",
              "Per ABTest: samples per arm, the estimates and their difference, the always-valid p-value.", [
                  Panel("Samples per arm", [(f'{m.ABTEST_SAMPLES}{{namespace=~"$namespace", abtest=~"$abtest"}}',
                                             "{{abtest}} {{arm}}")]),
                  Panel("Estimate per arm and difference", [
                      (f'{m.ABTEST_ESTIMATE}{{namespace=~"$namespace", abtest=~"$abtest"}}', "{{abtest}} {{arm}}")]),
                  Panel("Always-valid p-value", [
                      (f'{m.ABTEST_P_VALUE}{{namespace=~"$namespace", abtest=~"$abtest"}}', "{{abtest}}")],
                        thresholds=[0.05]),
                  Panel("Open tests", [(f'{m.ABTEST_OPEN}{{namespace=~"$namespace", abtest=~"$abtest"}}',
                                        "{{abtest}}: {{control}} vs {{treatment}}")], kind="stat"),
              ], variables=("namespace", "abtest")),
    Dashboard("medserve-system-health", "System Health",
              "Runtimes scraped, deployments Ready, errors, retraining Jobs.", [
                  Panel("Runtime pods up", [(f'sum by (namespace) (up{{job="{RUNTIME_JOB}", '
                                             f'namespace=~"$namespace"}})', "{{namespace}}")], kind="stat"),
                  Panel("ModelDeployments Ready", [(f"{m.DEPLOYMENT_READY}{{{SELECT}}}", LEGEND)], kind="stat"),
                  Panel("Error responses per second (4xx, 5xx)", [
                      (f"sum by ({BY}, {m.CODE_LABEL}) "
                       f'(rate({m.REQUEST_DURATION}_count{{{SELECT}, {m.CODE_LABEL}=~"4..|5.."}}[5m]))',
                       LEGEND + " {{code}}")], unit="reqps"),
                  Panel("Serving version", [(f"max by ({BY}, {m.VERSION_LABEL}) ({m.MODEL_INFO}{{{SELECT}}})",
                                             LEGEND + " v{{version}}")], kind="stat"),
                  Panel("Retraining Jobs", [
                      (f'{m.RETRAIN_JOB_ACTIVE}{{namespace=~"$namespace", model=~"$model"}}', "{{policy}} running"),
                      (f'{m.RETRAIN_LAST_JOB_FAILED}{{namespace=~"$namespace", model=~"$model"}}',
                       "{{policy}} last failed")]),
              ]),
    Dashboard("medserve-clinical-outcomes", "Clinical Outcomes",
              "What the models predict, how often they are right, and whether the patients still look like "
              "the training population.", [
                  Panel("Predictions per second by class", [
                      (f"sum by ({BY}, {m.CLASS_LABEL}) (rate({m.PREDICTIONS_TOTAL}{{{SELECT}}}[5m]))",
                       LEGEND + " {{class}}")], unit="reqps"),
                  Panel("Ground truth by outcome (1h)", [
                      (f"sum by ({BY}, {m.OUTCOME_LABEL}) (increase({m.FEEDBACK_TOTAL}{{{SELECT}}}[1h]))",
                       LEGEND + " {{outcome}}")]),
                  Panel("Accuracy from ground truth (1h)", [(accuracy("1h", SELECT), LEGEND)],
                        unit="percentunit"),
                  Panel("Drift score (largest feature)", [(f"{m.DEPLOYMENT_DRIFT_SCORE}{{{SELECT}}}", LEGEND)]),
                  Panel("Drift detected", [(f"{m.DEPLOYMENT_DRIFT_DETECTED}{{{SELECT}}}", LEGEND)], kind="stat"),
              ]),
)


def _variable(name: str) -> dict[str, Any]:
    source = {"namespace": f"{m.MODEL_INFO}", "model": f'{m.MODEL_INFO}{{namespace=~"$namespace"}}',
              "abtest": f'{m.ABTEST_OPEN}{{namespace=~"$namespace"}}'}[name]
    return {"name": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": f"label_values({source}, {name})", "refId": name},
            "definition": f"label_values({source}, {name})",
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    """A Grafana dashboard (schemaVersion 39) with a Prometheus datasource variable."""
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels = []
    for i, panel in enumerate(dashboard.panels):
        steps = [{"color": "green", "value": None}] + [{"color": "red", "value": t} for t in panel.thresholds]
        panels.append({
            "id": i + 1, "type": panel.kind, "title": panel.title, "description": panel.description,
            "datasource": datasource,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": panel.unit,
                                         "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
            "targets": [{"refId": chr(ord("A") + j), "datasource": datasource, "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(panel.exprs)],
        })
    variables = [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
                  "current": {}}]
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["medserve"], "schemaVersion": 39, "version": 1, "editable": False,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "1m", "timezone": "utc",
        "templating": {"list": variables + [_variable(v) for v in dashboard.variables]},
        "panels": panels,
    }


def concrete(expr: str) -> str:
    """`expr` with Grafana's variables replaced by match-all, to run it against Prometheus directly."""
    for variable in ("namespace", "model", "abtest"):
        expr = expr.replace(f'=~"${variable}"', '=~".*"')
    return expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, PromQL) of every panel target."""
    return [(d.title, p.title, expr) for d in DASHBOARDS for p in d.panels for expr, _ in p.exprs]


def argocd_cm(chart: Path = CHART) -> str:
    """A merge patch for ArgoCD's argocd-cm adding the health checks (`resource.customizations.health.*`)."""
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: argocd-cm", "  namespace: argocd",
             "  labels:", "    app.kubernetes.io/part-of: argocd", "data:"]
    for kind in KINDS:
        lua = (chart / HEALTH_DIR / kind / "health.lua").read_text()
        lines.append(f"  resource.customizations.health.medserve.io_{kind}: |")
        lines.extend(f"    {line}" if line else "" for line in lua.rstrip("\n").split("\n"))
    return "\n".join(lines) + "\n"


def rendered(chart: Path = CHART) -> dict[str, str]:
    """Path under the chart -> content, for every generated file."""
    header = "# Generated by `python -m medserve_operator.tools.monitoring` (make monitoring); do not edit.\n"
    out = {RULES_FILE: header + yaml.safe_dump(rule_groups(), sort_keys=False, width=100),
           ARGOCD_CM: "# " + header[2:].replace("do not edit.", "edit argocd/medserve.io/*/health.lua.")
           + "# Apply: kubectl -n argocd patch configmap argocd-cm --type merge --patch-file argocd-cm.yaml\n"
           + argocd_cm(chart)}
    for dashboard in DASHBOARDS:
        slug = dashboard.uid.removeprefix("medserve-")
        out[f"{DASHBOARD_DIR}/{slug}.json"] = json.dumps(dashboard_json(dashboard), indent=2) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medserve_operator.tools.monitoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the committed files differ")
    parser.add_argument("--chart", type=Path, default=CHART, help="the chart's folder")
    args = parser.parse_args(argv)
    stale = []
    for name, content in rendered(args.chart).items():
        path = args.chart / name
        if args.check:
            if not path.exists() or path.read_text() != content:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if stale:
        sys.stderr.write("out of date (run `make monitoring`): " + ", ".join(stale) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
