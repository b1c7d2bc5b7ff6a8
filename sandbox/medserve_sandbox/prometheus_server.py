"""A real Prometheus server on loopback (Debian's `prometheus` binary), for the sandbox and the tests.

It scrapes every model-runtime process every second. The targets come from a `file_sd_configs` JSON
file (`targets.json` in the work directory) that the KServe stand-in rewrites whenever a predictor
revision becomes ready or goes away, with the labels a Kubernetes scrape would add (`namespace`,
`pod`, `inferenceservice`). Prometheus watches that file, so new predictors are scraped within about
a second, as a ServiceMonitor would have them in a cluster.

The TSDB lives in the work directory too: the same `workdir` can be stopped and started again with
its data, which is how a test takes Prometheus down and brings it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from medserve_sandbox import procs

TARGETS_FILE = "targets.json"
SCRAPE_INTERVAL = "1s"
JOB_NAME = "medserve-runtime"
OPERATOR_JOB_NAME = "medserve-operator"


class PrometheusNotInstalled(procs.ProcessStartError):
    """No `prometheus` binary on PATH."""


def prometheus_executable() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusNotInstalled("the `prometheus` binary is not on PATH (Debian/Ubuntu: apt-get install "
                                     "prometheus)")
    return found


def render_config(targets_file: Path, *, scrape_interval: str = SCRAPE_INTERVAL,
                  operator_target: str | None = None) -> dict[str, object]:
    """prometheus.yml: one job scraping the runtime processes listed in `targets_file`, and one scraping
    the operator's own /metrics at `operator_target` (HOST:PORT) when given, with honor_labels as the
    chart's ServiceMonitor has it: the operator's series keep their objects' `namespace`."""
    jobs: list[dict[str, object]] = [{
        "job_name": JOB_NAME,
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "metrics_path": "/metrics",
        # inotify picks up a rewrite at once; the refresh is the fallback where it is not delivered.
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
    }]
    if operator_target is not None:
        jobs.append({"job_name": OPERATOR_JOB_NAME, "scrape_interval": scrape_interval,
                     "scrape_timeout": scrape_interval, "honor_labels": True,
                     "static_configs": [{"targets": [operator_target]}]})
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": jobs,
    }


def write_targets(path: Path, targets: list[tuple[str, dict[str, str]]]) -> None:
    """Atomically replace the file_sd `path` with `targets`: (host:port, labels) pairs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = [{"targets": [address], "labels": labels} for address, labels in targets]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(groups, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # a rename: Prometheus never reads a half-written file


class PrometheusServer(procs.LoopbackServer):
    """`with PrometheusServer(workdir) as prom: prom.url` — a running server, stopped on exit.

    `port=None` picks a free port; a restart (`stop()` then `start()`) keeps the port and the data.
    """

    name = "Prometheus"
    health_path = "/-/ready"
    default_log = "prometheus.log"
    operator_target: str | None = None
    """HOST:PORT of the operator's /metrics (MEDSERVE_METRICS_ADDRESS), scraped too when set before start."""

    @property
    def targets_file(self) -> Path:
        return self.workdir / TARGETS_FILE

    @property
    def config_file(self) -> Path:
        return self.workdir / "prometheus.yml"

    def command(self) -> list[str]:
        return [
            prometheus_executable(),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def prepare(self) -> None:
        config = render_config(self.targets_file, operator_target=self.operator_target)
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        if not self.targets_file.exists():
            write_targets(self.targets_file, [])
        return None
