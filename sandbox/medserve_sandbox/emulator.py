"""A Kubernetes API server emulator on loopback, for the sandbox, the demo and the integration tests.

`medserve emulator` serves plain HTTP on 127.0.0.1 in one asyncio process and writes a kubeconfig, so
that the real `kubectl` (v1.32) and the real operator (kopf) talk to it as to a cluster. It serves the
same API over TLS too (a throw-away CA; the `TLS URL CA` line on stdout), for clients that send a bearer
token over https only (kubectl).

It is built on kmock's `KubernetesEmulator` (the handler and `kmock.Server` run the HTTP side), but
overrides its request handling and its storage: kmock parses some core paths wrongly (a list of
namespaces), scans every object on every request, and has no resourceVersion, generation, status
subresource or validation semantics. The store (store.py) and the routes (apiserver.py) replace them.

What it emulates:
- discovery (/api, /apis, /apis/G, /apis/G/V; the legacy documents, which kubectl falls back to
  after asking for aggregated discovery), /version, /openapi/v3 that tells kubectl to leave field
  validation to the server (kubectl then sends `fieldValidation=Strict`, honoured here) and, with
  /openapi/v2, publishes the custom resources' schemas (`kubectl explain`);
- core/v1 namespaces, configmaps, secrets, persistentvolumeclaims, events, serviceaccounts, services, pods; apps/v1
  deployments (stored, never rolled out); batch/v1 jobs and cronjobs; events.k8s.io/v1 events;
  coordination.k8s.io/v1 leases; rbac.authorization.k8s.io/v1;
  apiextensions.k8s.io/v1 customresourcedefinitions, whose create/update/delete add and remove the
  custom resources they define (ours, medserve.io; KServe's InferenceService and InferenceGraph);
- the defaults of Jobs, Deployments, Pods and their pod templates, and conditions' unset times as
  null, as the real server fills them in (defaults.py);
- uid, one global monotonically increasing resourceVersion, generation (bumped only when something
  other than metadata and status changes), creationTimestamp, generateName, namespaces that must
  exist (default, kube-system, kube-public and kube-node-lease are pre-created), List kinds with
  metadata.resourceVersion, label selectors (=, ==, !=, in, notin, exists, !exists), field selectors;
- the status subresource (main-resource writes keep status; /status writes change only status),
  finalizers and deletionTimestamp, ownerReference garbage collection (Background, Foreground and
  Orphan propagation, recursive; dangling owners are collected too), namespace termination, CRD
  deletion removing its objects first;
- 409 AlreadyExists, 409 Conflict on a stale resourceVersion or failed preconditions, 404/400/422
  as `Status` objects; PUT, merge patch, JSON patch, an approximated strategic merge patch (see
  patches.py), `dryRun=All`;
- server-side apply (`application/apply-patch+yaml`, `fieldManager` required, field-manager
  conflicts answered 409 with their causes, `force=true`, an apply creating a missing object) and
  managedFields kept per manager on every write (Update entries for creates, updates and patches,
  named by `fieldManager` or the User-Agent), as managedfields.py says, with what it leaves out;
- watch streams from a resourceVersion (410 Expired when it is older than the kept history or than
  the resource itself), with
  selectors, ADDED/MODIFIED/DELETED (and ADDED/DELETED when an object enters or leaves a selector),
  BOOKMARKs when asked, `sendInitialEvents`, `timeoutSeconds`;
- server-side Table output from the CRDs' printer columns, so `kubectl get` prints them; categories
  and short names for `kubectl get medserve` / `kubectl get md`;
- the structural-schema rules a CRD's schemas are refused for (a described root `metadata`, a
  default its CEL rules fail on; crdschema.py);
- authentication and RBAC (rbac.py): ServiceAccount tokens from the TokenRequest API (`kubectl create
  token`), 401 for an unknown token, every request authorized against the stored ClusterRoles, Roles
  and their bindings plus the bootstrap discovery and basic-user bindings, 403s worded as
  kube-apiserver's, access and rules reviews (`kubectl auth can-i`) answered by the same rules, and
  OwnerReferencesPermissionEnforcement (blockOwnerDeletion needs `update` on the owner's finalizers);
  the emulator's own kubeconfig (or no credentials) is the cluster admin;
- apiserver_request_total on /metrics, labelled as kube-apiserver labels it;
- admission of every write through schemas.SchemaRegistry (defaulting, pruning, validation against
  the CRD schema with its CEL rules; KServe's schemas; core kinds with kubernetes-validate), its
  warnings returned as `Warning` headers.

What it does NOT emulate:
- client certificates, OIDC, impersonation, ClusterRole aggregation, RBAC escalation checks (see
  rbac.py); tokens are opaque, not JWTs;
- admission webhooks, conversion webhooks (multi-version CRDs are served without conversion),
  validating admission policies, resource quotas, limit ranges;
- strategic merge patch beyond a table of well-known list merge keys (see patches.py);
- consistent pagination (`limit`/`continue` page in key order with the real token format and
  `remainingItemCount`, but later pages show objects as they are now), aggregated discovery, protobuf
  responses (answers are JSON; protobuf request bodies are decoded only for the kinds that
  `kubectl create namespace|configmap|secret|serviceaccount|job|token|role|clusterrole|rolebinding|
  clusterrolebinding` send — the Job's pod spec without probes, lifecycle hooks, affinity and the rarer
  volume types, refused with 415 rather than dropped — the DeleteOptions of typed clients' deletes and
  `kubectl auth can-i`'s reviews, see protobuf.py);
- controllers other than garbage collection and namespace/CRD cleanup: no scheduler, no kubelet, no
  Job or CronJob controller, no Service endpoints (the sandbox's stand-ins do that through the API);
- per-kind field selector restrictions (any dotted path is accepted), graceful pod termination,
  the namespace's "kubernetes" finalizer (its effect happens directly; Foreground and Orphan
  deletes show their foregroundDeletion/orphan finalizers until collection, as on the real server);
- one storage for core/v1 and events.k8s.io/v1 Events (they are two separate resources here), and
  metadata.generation on built-in kinds other than Deployments, Jobs, CronJobs and CRDs.

Held against a real kube-apiserver: tests/sandbox/integration/test_recorded_answers.py replays a
scripted set of requests (tests/support/apiscript.py) and compares with the answers recorded from
v1.36.2 (tests/sandbox/data/apiserver/answers.json). It reproduces every recorded answer but two, strict
xfails there (KNOWN_GAPS), where v1.36 words a custom resource's validation errors differently from
v1.32, the version the emulator answers as (the order of schema errors, a null value unquoted, a CEL
rule's error without the value's type). The status rules of Jobs are held as v1.36 holds them
(jobstatus.py): the recording caught the emulator accepting Complete=True without SuccessCriteriaMet.
When KServe's CRD files are not found, InferenceService and InferenceGraph are still served, with a
schema that accepts anything (a warning says so at startup).

This module is `medserve emulator` itself: it builds the store, installs the CRDs, serves the API
(apiserver.py, discovery.py) and writes the kubeconfig; emulator_process.py runs it for tests and demo.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import logging
import signal
import ssl
import sys
from collections.abc import Iterable
from pathlib import Path

import aiohttp.web
import yaml
from kmock import Server

from medserve_sandbox import rbac
from medserve_sandbox.apiserver import ApiServer, ResourcePath, parse_resource_path
from medserve_sandbox.emulator_process import KUBECTL, EmulatorProcess, KubectlError
from medserve_sandbox.resources import KNATIVE_SERVICE_CRD
from medserve_sandbox.store import (
    CRD_KEY,
    EVENT_HISTORY,
    Admission,
    ApiError,
    Obj,
    Store,
)

__all__ = ["KUBECTL", "ApiServer", "EmulatorProcess", "KubectlError", "ResourcePath", "build_parser", "main",
           "parse_resource_path", "serve"]

logger = logging.getLogger(__name__)


def _load_documents(path: Path) -> list[Obj]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as stream:
        return [doc for doc in yaml.load_all(stream, Loader=loader) if isinstance(doc, dict)]


def _crd_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml", ".json"}))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"--crds {path}: no such file or directory")
    return files


def find_kserve_crds(explicit: Path | None) -> Path | None:
    """--kserve-crds, else $MEDSERVE_KSERVE_CRDS, else the first `<ancestor>/shared/upstream/kserve`."""
    if explicit is not None:
        return explicit
    from medserve_sandbox.schemas import find_kserve_crds_dir

    return find_kserve_crds_dir()


def install_crd(store: Store, crd: Obj, *, source: str) -> None:
    """Install one CRD exactly as a POST of it would (create, or update when it already exists)."""
    rtype = store.types[CRD_KEY]
    name = (crd.get("metadata") or {}).get("name", "")
    try:
        existing = store.find(rtype, None, name)
        if existing is None:
            store.create(rtype, "v1", None, crd, field_validation="Strict")
        else:
            crd.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
            store.update(rtype, "v1", None, name, crd, field_validation="Strict")
    except ApiError as exc:
        raise ValueError(f"{source}: CustomResourceDefinition {name!r} was rejected: {exc.message}") from exc


def build_admission(validate: bool) -> Admission | None:
    if not validate:
        logger.warning("schema validation is OFF (--no-validation): every write is stored as sent")
        return None
    from medserve_sandbox.schemas import SchemaRegistry

    registry: Admission = SchemaRegistry()
    return registry


def write_kubeconfig(path: Path, server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "medserve-emulator", "cluster": {"server": server}}],
        "users": [{"name": "medserve-emulator", "user": {"token": rbac.ADMIN_TOKEN}}],
        "contexts": [{"name": "medserve-emulator",
                      "context": {"cluster": "medserve-emulator", "user": "medserve-emulator",
                                  "namespace": "default"}}],
        "current-context": "medserve-emulator",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


async def serve(args: argparse.Namespace) -> int:
    store = Store(build_admission(not args.no_validation), watch_history=args.watch_history)
    for path in _crd_files(args.crds):
        for doc in _load_documents(path):
            if doc.get("kind") == "CustomResourceDefinition":
                install_crd(store, doc, source=str(path))
    kserve_dir = find_kserve_crds(args.kserve_crds)
    if kserve_dir is not None and kserve_dir.is_dir():
        for path in sorted(kserve_dir.glob("serving.kserve.io_*.yaml")):
            for doc in _load_documents(path):
                if doc.get("kind") == "CustomResourceDefinition":
                    install_crd(store, doc, source=str(path))
    else:
        logger.warning(
            "KServe CRDs not found (%s): InferenceService and InferenceGraph are served WITHOUT schema "
            "validation. Pass --kserve-crds DIR or set MEDSERVE_KSERVE_CRDS.",
            kserve_dir or "no --kserve-crds, no $MEDSERVE_KSERVE_CRDS, no shared/upstream/kserve above here",
        )
        _install_unvalidated_kserve(store)
    _install_knative_services(store)

    app = ApiServer(store=store, host=args.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app, Server(app, host=args.host, port=args.port) as server:
        app.port = server.port
        url = f"http://{args.host}:{server.port}"
        write_kubeconfig(args.kubeconfig, url)
        # The same API over TLS, for clients that send a bearer token only over https (kubectl does):
        # a ServiceAccount's kubeconfig (EmulatorProcess.service_account_kubeconfig) points there.
        ca, context = tls_context(args.kubeconfig.parent / f"{args.kubeconfig.name}.tls")
        tls = await loop.create_server(aiohttp.web.Server(app), args.host, 0, ssl=context)
        tls_url = f"https://{args.host}:{tls.sockets[0].getsockname()[1]}"
        logger.info("serving the Kubernetes API on %s and %s (kubeconfig %s)", url, tls_url, args.kubeconfig)
        # The lines on stdout: EmulatorProcess and scripts wait for READY.
        sys.stdout.write(f"TLS {tls_url} {ca}\nREADY {url}\n")
        sys.stdout.flush()
        await stop.wait()
        logger.info("stopping")
        tls.close()
        store.close_all_watches()
        await asyncio.sleep(0)
    return 0


def tls_context(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A throw-away CA (written to folder/ca.crt, for kubeconfigs) and a serving certificate for 127.0.0.1
    and localhost signed by it (EC P-256: instant to make, unlike RSA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                    *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=7))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("medserve-emulator-ca", ca_key, "medserve-emulator-ca", ca_key, ca=True)
    server_cert = certificate("medserve-emulator", server_key, "medserve-emulator-ca", ca_key, ca=False)
    (folder / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.crt").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "server.key").chmod(0o600)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.crt", folder / "server.key")
    return folder / "ca.crt", context


def _install_unvalidated_kserve(store: Store) -> None:
    """Serve KServe's kinds with schemas that accept anything, when KServe's CRDs are not available."""
    for kind, plural, version, short in (("InferenceService", "inferenceservices", "v1beta1", "isvc"),
                                         ("InferenceGraph", "inferencegraphs", "v1alpha1", "ig")):
        crd = {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.serving.kserve.io"},
            "spec": {
                "group": "serving.kserve.io", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "shortNames": [short],
                          "listKind": f"{kind}List"},
                "versions": [{
                    "name": version, "served": True, "storage": True, "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    "additionalPrinterColumns": [
                        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
                        {"name": "Ready", "type": "string",
                         "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    ],
                }],
            },
        }
        install_crd(store, crd, source="built-in KServe stand-in")


def _install_knative_services(store: Store) -> None:
    install_crd(store, KNATIVE_SERVICE_CRD, source="built-in Knative Serving stand-in")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medserve emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: any free port)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig")
    parser.add_argument("--crds", type=Path, action="append", default=[], metavar="DIR_OR_FILE",
                        help="CRD manifests to install at startup (repeatable)")
    parser.add_argument("--kserve-crds", type=Path, default=None, metavar="DIR",
                        help="KServe's serving.kserve.io_*.yaml (default: $MEDSERVE_KSERVE_CRDS, else "
                             "the first shared/upstream/kserve above the current dir or this file)")
    parser.add_argument("--no-validation", action="store_true",
                        help="store writes without schema validation (for debugging the emulator itself)")
    parser.add_argument("--watch-history", type=int, default=EVENT_HISTORY, metavar="N",
                        help="watch events kept per resource; a watch from an older resourceVersion gets "
                             f"410 Gone (default {EVENT_HISTORY})")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("celpy").setLevel(logging.WARNING)  # it logs every transpiled CEL rule at INFO
    try:
        return asyncio.run(serve(args))
    except (FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"medserve emulator: {exc}\n")
        return 2
