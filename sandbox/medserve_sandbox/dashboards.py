"""The chart's Grafana dashboards drawn as PNGs from a real Prometheus, with the dashboards' own PromQL.

No Grafana server runs here, so `make demo` draws each dashboard of `medserve_operator.tools.monitoring`
(the source of the chart's dashboard JSON) from the demo's Prometheus: one PNG per dashboard, one subplot
per panel, one line per series of each target's query (`query_range` over the run, Grafana's variables
set to match all, legends from the targets' `legendFormat`). A panel whose queries return nothing says
"no data", as Grafana does.

`python -m medserve_sandbox.dashboards --prometheus URL --out DIR [--minutes N]` draws them from any
Prometheus.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any

import httpx
from medserve_operator.tools import monitoring


@dataclasses.dataclass(frozen=True)
class Drawn:
    """One PNG: the dashboard, its file and how many series each panel drew."""

    title: str
    path: Path
    series: dict[str, int]


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: `{{label}}` replaced by the series' label value."""
    return re.sub(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def query_range(client: httpx.Client, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    response = client.get("/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step})
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error') or response.text[:200]}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def draw(prometheus_url: str, out_dir: Path, *, start: float, end: float) -> list[Drawn]:
    """Draw every dashboard over [start, end] (Unix seconds) into out_dir/dashboard-<name>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    step = max(1.0, (end - start) / 240)
    drawn: list[Drawn] = []
    with httpx.Client(base_url=prometheus_url, timeout=30) as client:
        for dashboard in monitoring.DASHBOARDS:
            board = monitoring.dashboard_json(dashboard)
            panels = board["panels"]
            rows = math.ceil(len(panels) / 2)
            fig, axes = plt.subplots(rows, 2, figsize=(14, 3.6 * rows), squeeze=False)
            fig.suptitle(f"{dashboard.title} (medserve sandbox, from its Prometheus)")
            counts: dict[str, int] = {}
            for ax, panel in zip(axes.flat, panels, strict=False):
                count = 0
                for target in panel["targets"]:
                    for series in query_range(client, monitoring.concrete(target["expr"]), start, end, step):
                        points = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                        if not points:
                            continue
                        xs, ys = zip(*points, strict=True)
                        ax.plot(xs, ys, lw=1.2, label=legend(target["legendFormat"], series["metric"])[:60] or "value")
                        count += 1
                counts[panel["title"]] = count
                ax.set_title(panel["title"], fontsize=10)
                ax.set_xlabel("seconds", fontsize=8)
                unit = panel["fieldConfig"]["defaults"]["unit"]
                if unit != "short":
                    ax.set_ylabel(unit, fontsize=8)
                ax.tick_params(labelsize=8)
                if count:
                    ax.legend(fontsize=7, loc="best")
                else:
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
            for ax in list(axes.flat)[len(panels):]:
                ax.set_visible(False)
            fig.tight_layout()
            path = out_dir / f"dashboard-{dashboard.uid.removeprefix('medserve-')}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            drawn.append(Drawn(dashboard.title, path, counts))
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medserve_sandbox.dashboards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="the Prometheus URL")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the PNGs go (default: here)")
    parser.add_argument("--minutes", type=float, default=15.0, help="how far back to draw (default: 15)")
    args = parser.parse_args(argv)
    end = time.time()
    for result in draw(args.prometheus, args.out, start=end - 60 * args.minutes, end=end):
        empty = [title for title, n in result.series.items() if not n]
        note = f"; no data: {', '.join(empty)}" if empty else ""
        print(f"{result.path}: {result.title}, {sum(result.series.values())} series{note}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
