"""Helpers shared by the integration tests: the operator as a process, polling, kubectl JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medserve_sandbox import procs
from medserve_sandbox.emulator import EmulatorProcess


class OperatorProcess:
    """The real `medserve operator` in a subprocess, configured through its environment."""

    def __init__(self, kubeconfig: Path, mlflow_url: str, log_path: Path, *, namespace: str = "default",
                 prometheus_url: str | None = None) -> None:
        self.kubeconfig, self.mlflow_url, self.log_path = kubeconfig, mlflow_url, log_path
        self.namespace = namespace
        self.prometheus_url = prometheus_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "MEDSERVE_MLFLOW_URI": self.mlflow_url,
               "MEDSERVE_RESYNC_SECONDS": "1", "MEDSERVE_REGISTRY_TIMEOUT": "2",
               "MEDSERVE_GRAPH_DRAIN_SECONDS": "1"}  # the graph stand-in has no router pods to drain
        env.pop("MEDSERVE_PROMETHEUS_URL", None)
        if self.prometheus_url:
            env["MEDSERVE_PROMETHEUS_URL"] = self.prometheus_url
        self.proc = procs.spawn([sys.executable, "-m", "medserve_operator.cli", "operator", "--verbose",
                                 "--namespace", self.namespace],
                                log_path=self.log_path, env=env)
        procs.wait_until(lambda: "medserve operator started" in self.log(), proc=self.proc,
                         log_path=self.log_path, what="medserve operator", timeout=60)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until `predicate()` returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (subprocess.CalledProcessError, KeyError, TypeError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


def get_json(cluster: EmulatorProcess, *args: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed
