"""Spawning, awaiting and stopping the sandbox's helper processes (MLflow, the operator, the emulator).

Every process is started in its own session (its own process group), so that a Ctrl-C in the terminal
reaches only the sandbox driver, which then stops its children in order; and so that stopping one
child also stops whatever it spawned (MLflow's server forks uvicorn workers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
from medserve_operator.clients.kube import ApiError, KubeClient

logger = logging.getLogger(__name__)


class ProcessStartError(RuntimeError):
    """A helper process exited or did not become ready in time; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note that it is empty or missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def spawn(
    cmd: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `cmd` in a new session with stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # The child keeps its own copy of the descriptor; ours can be closed at once.
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    logger.debug("started pid %d: %s (log %s)", proc.pid, " ".join(cmd), log_path)
    return proc


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> int | None:
    """SIGTERM the process group of `proc`, wait up to `timeout` seconds, then SIGKILL it.

    Returns the exit code (None only if even SIGKILL did not reap it, which would be a kernel problem).
    """
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d did not stop within %.0fs of SIGTERM; killing it", proc.pid, timeout)
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
    # Children of the group leader (e.g. uvicorn workers) may outlive it; make sure none is left.
    _signal_group(proc, signal.SIGKILL)
    return proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def wait_until(
    ready: Callable[[], bool],
    *,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path | None,
    what: str,
    timeout: float,
    interval: float = 0.2,
) -> None:
    """Poll `ready()` until it is true; fail with the log tail if `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise ProcessStartError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        if time.monotonic() > deadline:
            tail = log_tail(log_path) if log_path else ""
            raise ProcessStartError(f"{what} was not ready within {timeout:.0f}s:\n{tail}")
        time.sleep(interval)


def http_ok(url: str, *, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 2xx (connection errors and other statuses are False)."""
    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


class LoopbackServer:
    """A server process on 127.0.0.1 with a health URL: `with Server(workdir) as s: s.url`.

    Subclasses name the server, its command and its health path, and may prepare files or an
    environment in `prepare()`. `port=None` picks a free port; a restart (`stop()` then `start()`) keeps
    the port and whatever the server keeps in `workdir`.
    """

    name = "server"
    health_path = "/"
    default_log = "server.log"

    def __init__(self, workdir: Path, *, port: int | None = None, log_path: Path | None = None,
                 startup_timeout: float = 120.0) -> None:
        # 120 s: a first MLflow start migrates a fresh SQLite database, slow on a busy machine.
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.log_path = log_path or self.workdir / self.default_log
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        raise TypeError(f"{type(self).__name__} must define command()")

    def prepare(self) -> Mapping[str, str] | None:
        """Write what the server needs before it starts; return its environment (None: inherit ours)."""
        return None

    def start(self) -> Self:
        """Start the server and block until it is healthy; raises ProcessStartError with the log tail."""
        return self.launch().wait_ready()

    def launch(self) -> Self:
        """Start the process without waiting (call `wait_ready` later), so a caller can start other things."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self.prepare()
        logger.info("starting %s on %s (log %s)", self.name, self.url, self.log_path)
        self._proc = spawn(self.command(), log_path=self.log_path, env=env, cwd=self.workdir)
        return self

    def wait_ready(self) -> Self:
        """Block until the health URL answers; on failure stop the process and raise ProcessStartError."""
        if self._proc is None:
            raise RuntimeError(f"{type(self).__name__}.wait_ready() before launch()")
        try:
            wait_until(lambda: http_ok(f"{self.url}{self.health_path}"), proc=self._proc, log_path=self.log_path,
                       what=f"{self.name} on port {self.port}", timeout=self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); what it keeps in `workdir` stays."""
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Controller(Protocol):
    """A sandbox stand-in: `sync()` brings the local processes in line with the API, `close()` stops them."""

    async def sync(self) -> None: ...

    async def close(self) -> None: ...


def run_controller(kubeconfig: Path, banner: str, make: Callable[[KubeClient], Controller],
                   *, interval: float = 0.5) -> None:
    """Run a sandbox stand-in against the emulator, syncing every `interval` s, until SIGTERM or SIGINT.

    `banner` is logged once the client exists; the sandbox waits for that line before going on. A sync
    that fails on the API is logged and tried again at the next tick. Logging goes to stderr at INFO.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        kube = KubeClient.from_environment(str(kubeconfig))
        controller = make(kube)
        logger.info("%s", banner)
        try:
            while not stop.is_set():
                try:
                    await controller.sync()
                except (ApiError, httpx.HTTPError) as exc:
                    logger.warning("sync failed, retrying: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
        finally:
            await controller.close()
            await kube.aclose()

    asyncio.run(serve())


def controller_parser(module: str, description: str | None) -> argparse.ArgumentParser:
    """The command line every stand-in starts with: `python -m MODULE --kubeconfig PATH ...`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", required=True, type=Path)
    return parser


async def patch_status(kube: KubeClient, api: str, plural: str, obj: dict[str, Any], status: dict[str, Any]) -> None:
    """Write `status` through the object's status subresource; an object deleted meanwhile is no error."""
    meta = obj["metadata"]
    try:
        await kube.patch(api, plural, meta["namespace"], meta["name"], {"status": status}, subresource="status")
    except ApiError as exc:
        if exc.status != 404:
            raise
