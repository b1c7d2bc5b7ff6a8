"""A real PostgreSQL server on loopback (Debian's `postgresql`), for the sandbox, the tests and benchmarks.

`initdb` creates a cluster in its own data directory with one password-authenticated superuser; the
server (`postgres`, from /usr/lib/postgresql/*/bin) listens on 127.0.0.1 only, with its Unix socket in
the data directory. PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres`
system user, in a directory of its own under the system temporary directory (pytest's directories are
private to root); as anyone else it lives in `workdir`. `stop()` is a fast shutdown (SIGINT: clients are
disconnected, the data is kept), `kill()` an immediate one (SIGQUIT) for fault tests; `start()` after
either brings the same cluster back on the same port.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from medserve_sandbox import procs

USER = "medserve"
DATABASE = "medserve"


class PostgresNotInstalled(procs.ProcessStartError):
    """No PostgreSQL server binaries under /usr/lib/postgresql/*/bin."""


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise PostgresNotInstalled("PostgreSQL is not installed (Debian/Ubuntu: apt-get install postgresql)")
    return Path(found[-1]).parent


class PostgresServer:
    """`with PostgresServer(workdir) as pg: pg.dsn` — a running cluster, stopped (data kept) on exit."""

    name = "PostgreSQL"

    def __init__(self, workdir: Path, *, port: int | None = None, startup_timeout: float = 60.0) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or procs.free_port()
        self.log_path = self.workdir / "postgres.log"
        self.startup_timeout = startup_timeout
        self.password = secrets.token_urlsafe(16)
        self.bindir = postgres_bindir()
        self._as_root = os.geteuid() == 0
        self._owner = pwd.getpwnam("postgres") if self._as_root else None
        if self._owner is not None:
            self.datadir = Path(tempfile.mkdtemp(prefix="medserve-pg-")) / "data"
        else:
            self.datadir = self.workdir / "data"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _popen(self, cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        user = {"user": self._owner.pw_uid, "group": self._owner.pw_gid} if self._owner is not None else {}
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **user, **kwargs)  # type: ignore[call-overload,no-any-return]

    def _initdb(self) -> None:
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        pwfile = self.datadir.parent / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._owner is not None:
            os.chown(self.datadir.parent, self._owner.pw_uid, self._owner.pw_gid)
            os.chown(pwfile, self._owner.pw_uid, self._owner.pw_gid)
        with self.log_path.open("ab") as log:
            init = self._popen([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", USER,
                                f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=peer",
                                "--encoding=UTF8", "--no-instructions"], stdout=log, stderr=subprocess.STDOUT)
            code = init.wait(timeout=120)
        pwfile.unlink()
        if code != 0:
            raise procs.ProcessStartError(f"initdb failed ({code}):\n{procs.log_tail(self.log_path)}")
        (self.datadir.parent / "password").write_text(self.password)

    def start(self) -> Self:
        if self.running:
            return self
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
            fresh = True
        else:
            self.password = (self.datadir.parent / "password").read_text()
            fresh = False
        with self.log_path.open("ab") as log:
            self._proc = self._popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.datadir}",
                 "-c", "fsync=on", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            procs.wait_until(self._accepts, proc=self._proc, log_path=self.log_path,
                             what=f"PostgreSQL on port {self.port}", timeout=self.startup_timeout)
            if fresh:
                self._psql("postgres", f"CREATE DATABASE {DATABASE}")
        except BaseException:
            self.kill()
            raise
        return self

    def _accepts(self) -> bool:
        ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                               check=False, timeout=10)
        return ready.returncode == 0

    def _psql(self, database: str, sql: str) -> str:
        """Run SQL as the superuser over TCP (the password in the environment, never on a command line)."""
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                              "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str) -> None:
        """Another database in the same cluster (MLflow's backend store beside the audit records)."""
        if not name.isidentifier():
            raise ValueError(f"not a plain database name: {name!r}")
        self._psql("postgres", f"CREATE DATABASE {name}")

    def sql(self, sql: str) -> str:
        """Run SQL in the medserve database (tests edit the audit table by hand with it)."""
        return self._psql(DATABASE, sql)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._proc = None
        # The port must be free before a restart can bind it again.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, the data stays for the next start()."""
        self._signal(signal.SIGINT, 30)

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT): like a crash; the next start() recovers from the WAL."""
        self._signal(signal.SIGQUIT, 10)

    def remove(self) -> None:
        """Stop and delete the cluster (its data directory)."""
        self.stop()
        target = self.datadir.parent if self._owner is not None else self.datadir
        shutil.rmtree(target, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
