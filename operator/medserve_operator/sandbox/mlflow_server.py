"""A real MLflow tracking server on loopback, for the sandbox and the integration tests.

SQLite backend store and a local artifact folder under one working directory, artifacts proxied by
the server itself (`--serve-artifacts`), so that clients only ever need the tracking URL, exactly as a
model-runtime pod or a training Job in a cluster would.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from medserve_operator.sandbox import procs

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 120.0
"""Seconds to wait for /health: the first start migrates a fresh SQLite database, slow on a busy machine."""


def mlflow_executable() -> list[str]:
    """The `mlflow` command of the running interpreter's environment (works without an activated venv)."""
    beside = Path(sys.executable).with_name("mlflow")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlflow")
    if found:
        return [found]
    return [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """`with MlflowServer(workdir) as mlflow: mlflow.url` — a running server, stopped on exit.

    `port=None` picks a free port. The same `workdir` can be reused: the database and the artifacts
    persist, which is how a test stops the server and starts it again ("MLflow down and back").
    """

    def __init__(self, workdir: Path, *, port: int | None = None, log_path: Path | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port or procs.free_port()
        self.log_path = log_path or self.workdir / "mlflow.log"
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            *mlflow_executable(), "server",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
        ]

    def start(self) -> MlflowServer:
        """Start the server and block until `/health` answers; raises ProcessStartError with the log tail."""
        return self.launch().wait_ready()

    def launch(self) -> MlflowServer:
        """Start the server process without waiting for it (call `wait_ready` later): lets a caller start
        other things while MLflow migrates its database."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # The server must not inherit a client-side tracking URI pointing at some other server.
        env.pop("MLFLOW_TRACKING_URI", None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        logger.info("starting MLflow on %s (log %s)", self.url, self.log_path)
        self._proc = procs.spawn(self.command(), log_path=self.log_path, env=env, cwd=self.workdir)
        return self

    def wait_ready(self) -> MlflowServer:
        """Block until `/health` answers; on failure stop the process and raise ProcessStartError."""
        if self._proc is None:
            raise RuntimeError("MlflowServer.wait_ready() before launch()")
        try:
            procs.wait_until(lambda: procs.http_ok(f"{self.url}/health"), proc=self._proc,
                             log_path=self.log_path, what=f"MLflow server on port {self.port}",
                             timeout=self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the database and artifacts stay in `workdir`."""
        if self._proc is not None:
            procs.stop(self._proc)
            self._proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
