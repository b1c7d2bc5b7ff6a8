"""Spawning, awaiting and stopping the sandbox's helper processes (MLflow, the operator, the emulator).

Every process is started in its own session (its own process group), so that a Ctrl-C in the terminal
reaches only the sandbox driver, which then stops its children in order; and so that stopping one
child also stops whatever it spawned (MLflow's server forks uvicorn workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

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
