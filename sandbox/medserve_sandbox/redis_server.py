"""A real Redis server on loopback (Debian's `redis-server`), for the sandbox, the tests and benchmarks.

In-memory only (no RDB snapshots, no AOF): rate-limit buckets and the prediction cache are soft state,
and a test that stops Redis wants it to come back empty, as a restarted cache pod would. `stop()` then
`start()` keeps the port.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Mapping

from medserve_sandbox import procs


class RedisNotInstalled(procs.ProcessStartError):
    """No `redis-server` on PATH."""


def redis_executable() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RedisNotInstalled("`redis-server` is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
    return found


def ping(port: int, *, timeout: float = 1.0) -> bool:
    """True when a Redis server on 127.0.0.1:`port` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(procs.LoopbackServer):
    """`with RedisServer(workdir) as redis: redis.url` — a running server, stopped on exit."""

    name = "Redis"
    default_log = "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes",
                "--logfile", ""]

    def prepare(self) -> Mapping[str, str] | None:
        return None

    def wait_ready(self) -> RedisServer:
        if self._proc is None:
            raise RuntimeError("RedisServer.wait_ready() before launch()")
        try:
            procs.wait_until(lambda: ping(self.port), proc=self._proc, log_path=self.log_path,
                             what=f"Redis on port {self.port}", timeout=self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self
