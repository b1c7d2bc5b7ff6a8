"""A real MLflow tracking server on loopback, for the sandbox and the integration tests.

SQLite backend store (or `backend_store_uri`, e.g. the sandbox's PostgreSQL, its password in the
environment as $PGPASSWORD rather than on the command line) and a local artifact folder under one working
directory, artifacts proxied by the server itself (`--serve-artifacts`), so that clients only ever need the
tracking URL, exactly as a model-runtime pod or a training Job in a cluster would.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from medserve_sandbox import procs


def mlflow_executable() -> list[str]:
    """The `mlflow` command of the running interpreter's environment (works without an activated venv)."""
    beside = Path(sys.executable).with_name("mlflow")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlflow")
    if found:
        return [found]
    return [sys.executable, "-m", "mlflow"]


class MlflowServer(procs.LoopbackServer):
    """`with MlflowServer(workdir) as mlflow: mlflow.url` — a running server, stopped on exit.

    `port=None` picks a free port. The same `workdir` can be reused: the database and the artifacts
    persist, which is how a test stops the server and starts it again ("MLflow down and back").
    """

    name = "MLflow server"
    health_path = "/health"
    default_log = "mlflow.log"
    backend_store_uri: str | None = None
    backend_env: dict[str, str] | None = None

    def command(self) -> list[str]:
        return [
            *mlflow_executable(), "server",
            "--backend-store-uri", self.backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
        ]

    def prepare(self) -> dict[str, str]:
        env = dict(os.environ)
        # The server must not inherit a client-side tracking URI pointing at some other server.
        env.pop("MLFLOW_TRACKING_URI", None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.backend_env or {})
        return env
