"""`medserve emulator` in a subprocess, for the tests and the demo, with the real kubectl pointed at it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import yaml

from medserve_sandbox import procs

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run; unlike its base class, its message carries kubectl's stderr."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd[3:] if isinstance(self.cmd, list) else [self.cmd]))}: " \
               f"exit {self.returncode}: {(self.stderr or '').strip()}"


class EmulatorProcess:
    """`medserve emulator` in a subprocess, with the real kubectl pointed at it.

    Use it as a context manager (`with EmulatorProcess(tmp) as cluster: cluster.kubectl("get", "ns")`).
    """

    def __init__(self, workdir: Path, crd_paths: list[Path] | None = None, log_path: Path | None = None,
                 *, kserve_crds: Path | None = None, extra_args: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.crd_paths = list(crd_paths or [])
        self.log_path = log_path or self.workdir / "emulator.log"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kserve_crds = kserve_crds
        self.extra_args = list(extra_args or [])
        self.url = ""
        self.tls_url = ""
        self.tls_ca: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._stdout_path = self.workdir / "emulator.stdout"

    def start(self) -> EmulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "medserve_operator.cli", "emulator", "--host", "127.0.0.1", "--port", "0",
               "--kubeconfig", str(self.kubeconfig)]
        for path in self.crd_paths:
            cmd += ["--crds", str(path)]
        if self.kserve_crds is not None:
            cmd += ["--kserve-crds", str(self.kserve_crds)]
        cmd += self.extra_args
        self._stdout_path.write_bytes(b"")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._stdout_path.open("wb") as stdout, self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                                         start_new_session=True)

        def ready() -> bool:
            for line in self._stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("TLS "):
                    _, self.tls_url, ca = line.split(" ", 2)
                    self.tls_ca = Path(ca.strip())
                if line.startswith("READY "):
                    self.url = line.split(" ", 1)[1].strip()
                    return True
            return False

        try:
            procs.wait_until(ready, proc=self.proc, log_path=self.log_path, what="medserve emulator", timeout=30)
        except procs.ProcessStartError:
            self.stop()
            raise
        return self

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [KUBECTL, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.workdir / "kube-cache"),
               *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def service_account_kubeconfig(self, path: Path, namespace: str, name: str) -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` with a token from the emulator's
        TokenRequest API (`kubectl create token`), for running a process under that account's RBAC. It points
        at the emulator's TLS endpoint: kubectl sends a bearer token over https only."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=24h").stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        user = f"{namespace}-{name}"
        config["users"] = [{"name": user, "user": {"token": token}}]
        for cluster in config["clusters"]:
            cluster["cluster"] = {"server": self.tls_url, "certificate-authority": str(self.tls_ca)}
        for context in config["contexts"]:
            context["context"]["user"] = user
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

