"""A Kubernetes API server emulator on loopback, for the sandbox, the demo and the integration tests.

`medserve emulator` serves plain HTTP on 127.0.0.1 in one asyncio process and writes a kubeconfig, so
that the real `kubectl` (v1.32) and the real operator (kopf) talk to it as to a cluster.

It is built on kmock's `KubernetesEmulator` (the handler and `kmock.Server` run the HTTP side), but
overrides its request handling and its storage: kmock parses some core paths wrongly (a list of
namespaces), scans every object on every request, and has no resourceVersion, generation, status
subresource or validation semantics. The store (store.py) and the routes below replace them.

What it emulates:
- discovery (/api, /apis, /apis/G, /apis/G/V; the legacy documents, which kubectl falls back to
  after asking for aggregated discovery), /version, a minimal /openapi/v3 that tells kubectl to leave
  field validation to the server (kubectl then sends `fieldValidation=Strict`, honoured here);
- core/v1 namespaces, configmaps, secrets, events, serviceaccounts, services, pods; batch/v1 jobs and
  cronjobs; events.k8s.io/v1 events; coordination.k8s.io/v1 leases; rbac.authorization.k8s.io/v1;
  apiextensions.k8s.io/v1 customresourcedefinitions, whose create/update/delete add and remove the
  custom resources they define (ours, medserve.io; KServe's InferenceService and InferenceGraph);
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
- watch streams from a resourceVersion (410 Gone when it is older than the kept history), with
  selectors, ADDED/MODIFIED/DELETED (and ADDED/DELETED when an object enters or leaves a selector),
  BOOKMARKs when asked, `sendInitialEvents`, `timeoutSeconds`;
- server-side Table output from the CRDs' printer columns, so `kubectl get` prints them; categories
  and short names for `kubectl get medserve` / `kubectl get md`;
- admission of every write through schemas.SchemaRegistry (defaulting, pruning, validation against
  the CRD schema with its CEL rules; KServe's schemas; core kinds with kubernetes-validate), its
  warnings returned as `Warning` headers.

What it does NOT emulate:
- authentication, authorization and RBAC (RBAC objects are stored, never enforced), TLS;
- admission webhooks, conversion webhooks (multi-version CRDs are served without conversion),
  validating admission policies, resource quotas, limit ranges;
- server-side apply and managedFields (`application/apply-patch+yaml` gets 415);
- strategic merge patch beyond a table of well-known list merge keys (see patches.py);
- pagination (`limit`/`continue` are ignored: lists are complete), aggregated discovery, protobuf
  responses (answers are JSON; protobuf request bodies are decoded only for the four kinds that
  `kubectl create namespace|configmap|secret|serviceaccount` send, see protobuf.py);
- controllers other than garbage collection and namespace/CRD cleanup: no scheduler, no kubelet, no
  Job or CronJob controller, no Service endpoints (the sandbox's stand-ins do that through the API);
- per-kind field selector restrictions (any dotted path is accepted), graceful pod termination,
  the "orphan" and "kubernetes" finalizers (their effects happen directly);
- one storage for core/v1 and events.k8s.io/v1 Events (they are two separate resources here), and
  metadata.generation on built-in kinds other than Jobs, CronJobs and CRDs.
When KServe's CRD files are not found, InferenceService and InferenceGraph are still served, with a
schema that accepts anything (a warning says so at startup).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp.web
import attrs
import yaml
from kmock import KubernetesEmulator, Server

from medserve_sandbox import procs, protobuf
from medserve_sandbox.resources import (
    ResourceType,
    api_group,
    api_resource_list,
    openapi_v3_group_version,
)
from medserve_sandbox.selectors import SelectorError, compile_filter, field_selector_name
from medserve_sandbox.store import (
    CRD_KEY,
    EVENT_HISTORY,
    Admission,
    ApiError,
    Obj,
    Store,
    Watcher,
    WatchEvent,
    bad_request,
)

logger = logging.getLogger(__name__)

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
WATCH_HEARTBEAT_SECONDS = 20.0
PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
}
SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "medserve-emulator",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class ResourcePath:
    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None


def parse_resource_path(path: str) -> ResourcePath | None:
    """Split `/api/v1/...` and `/apis/G/V/...` into their parts; None for any other path."""
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) >= 3 and segments[0] == "api":
        group, version, rest = "", segments[1], segments[2:]
    elif len(segments) >= 4 and segments[0] == "apis":
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        return None
    namespace: str | None = None
    # /api/v1/namespaces/NAME/status is the namespace's own subresource, not a resource inside it.
    namespace_subresource = group == "" and len(rest) == 3 and rest[2] in {"status", "finalize"}
    if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    return ResourcePath(
        group=group,
        version=version,
        namespace=namespace,
        plural=rest[0],
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def _json_response(body: Any, *, status: int = 200, content_type: str = "application/json",
                   warnings: Iterable[str] = ()) -> aiohttp.web.Response:
    response = aiohttp.web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status)
    response.headers["Content-Type"] = content_type
    for warning in warnings:
        text = warning.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        response.headers.add("Warning", f'299 - "{text}"')
    return response


def _wants_table(request: aiohttp.web.BaseRequest) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


@attrs.define(kw_only=True)
class ApiServer(KubernetesEmulator):
    """The HTTP face of the emulator: routes requests to discovery, OpenAPI and the store."""

    store: Store
    host: str = "127.0.0.1"
    port: int = 0

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's own entry point records every request and parses paths with its K8s parser;
        # a long-running emulator needs neither, so requests are routed here directly.
        try:
            return await self._route(raw)
        except ApiError as exc:
            if exc.code >= 500:
                logger.error("%s %s: %s", raw.method, raw.path_qs, exc.message)
            return _json_response(exc.status_body(), status=exc.code)
        except SelectorError as exc:
            return _json_response(bad_request(str(exc)).status_body(), status=400)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s %s failed", raw.method, raw.path_qs)
            error = ApiError(500, "InternalError", f"the emulator failed on this request: {exc!r}")
            return _json_response(error.status_body(), status=500)

    async def _route(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        resource_path = parse_resource_path(path)
        if resource_path is not None:
            return await self._serve_resource(raw, resource_path)
        if raw.method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported on {path}")
        if path == "/version":
            return _json_response(SERVER_VERSION)
        if path in {"/healthz", "/readyz", "/livez"}:
            return aiohttp.web.Response(text="ok", content_type="text/plain")
        if path == "/api":
            return _json_response({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"},
                ],
            })
        if path == "/apis":
            return _json_response(self._group_list())
        if path == "/openapi/v3":
            return _json_response(self._openapi_index())
        if path.startswith("/openapi/v3/"):
            return _json_response(self._openapi_group_version(path.removeprefix("/openapi/v3/")))
        segments = path.strip("/").split("/")
        if segments[0] == "api" and len(segments) == 2:
            return _json_response(self._resource_list("", segments[1]))
        if segments[0] == "apis" and len(segments) == 2:
            versions = self._group_versions().get(segments[1])
            if not versions:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json_response(api_group(segments[1], versions))
        if segments[0] == "apis" and len(segments) == 3:
            return _json_response(self._resource_list(segments[1], segments[2]))
        if path == "/":
            return _json_response({"paths": sorted(self._root_paths())})
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # ---------------------------------------------------------------- discovery and OpenAPI

    def _served(self) -> list[tuple[ResourceType, str]]:
        return [(rtype, version) for rtype in self.store.types.values() for version in rtype.versions]

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for rtype, version in self._served():
            versions = groups.setdefault(rtype.group, [])
            if version not in versions:
                versions.append(version)
        return groups

    def _group_list(self) -> Obj:
        groups = self._group_versions()
        groups.pop("", None)
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [api_group(group, versions) for group, versions in sorted(groups.items())]}

    def _resource_list(self, group: str, version: str) -> Obj:
        types = [(rtype, v) for rtype, v in self._served() if rtype.group == group and v == version]
        if not types:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        types.sort(key=lambda pair: pair[0].plural)
        return api_resource_list(f"{group}/{version}" if group else version, types)

    def _root_paths(self) -> set[str]:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/openapi/v3"}
        for group, versions in self._group_versions().items():
            if group:
                paths.add(f"/apis/{group}")
                paths.update(f"/apis/{group}/{version}" for version in versions)
        return paths

    def _openapi_index(self) -> Obj:
        digest = hashlib.sha256(str(self.store.types_generation).encode()).hexdigest()[:16].upper()
        paths: dict[str, Any] = {}
        for group, versions in self._group_versions().items():
            for version in versions:
                key = f"apis/{group}/{version}" if group else f"api/{version}"
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
        return {"paths": paths}

    def _openapi_group_version(self, key: str) -> Obj:
        segments = key.split("/")
        if segments[0] == "api" and len(segments) == 2:
            group, version = "", segments[1]
        elif segments[0] == "apis" and len(segments) == 3:
            group, version = segments[1], segments[2]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        types = [rtype for rtype, v in self._served() if rtype.group == group and v == version]
        if not types:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return openapi_v3_group_version(group, version, types)

    # ---------------------------------------------------------------- resources

    async def _serve_resource(self, raw: aiohttp.web.BaseRequest, where: ResourcePath) -> aiohttp.web.StreamResponse:
        store = self.store
        rtype = store.lookup(where.group, where.version, where.plural)
        version = where.version
        if where.namespace is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = where.namespace if rtype.namespaced else None
        query = raw.query
        dry_run = "All" in query.getall("dryRun", [])
        method = raw.method
        if method == "GET":
            if query.get("watch") in {"true", "1"}:
                return await self._watch_stream(raw, rtype, version, namespace, where.name)
            predicate = compile_filter(query.get("labelSelector"), query.get("fieldSelector"))
            if where.name is not None:
                if where.subresource not in (None, "status"):
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                obj = self._present(rtype, version, store.get(rtype, namespace, where.name))
                if _wants_table(raw):
                    return self._table(rtype, version, [obj], store.rv)
                return _json_response(obj)
            items, rv = store.list_objects(rtype, namespace, predicate, field_selector_name(query.get("fieldSelector")))
            items = [self._present(rtype, version, obj) for obj in items]
            if _wants_table(raw):
                return self._table(rtype, version, items, store.rv)
            return _json_response({
                "apiVersion": rtype.api_version(version), "kind": f"{rtype.kind}List",
                "metadata": {"resourceVersion": rv}, "items": items,
            })
        body = await self._read_body(raw)
        field_validation = query.get("fieldValidation", "Warn")
        if field_validation not in {"Strict", "Warn", "Ignore"}:
            raise bad_request(f"fieldValidation {field_validation!r} must be one of Strict, Warn, Ignore")
        if method == "POST":
            if where.name is not None:
                raise ApiError(405, "MethodNotAllowed", "POST is only allowed on a collection")
            result = store.create(rtype, version, namespace, body, dry_run=dry_run,
                                  field_validation=field_validation)
            return _json_response(self._present(rtype, version, result.obj), status=201, warnings=result.warnings)
        if method == "DELETE":
            options = body if isinstance(body, dict) else {}
            propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
            if propagation is None and options.get("orphanDependents") is not None:
                propagation = "Orphan" if options["orphanDependents"] else "Background"
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            if where.name is None:
                predicate = compile_filter(query.get("labelSelector"), query.get("fieldSelector"))
                deleted = store.delete_collection(rtype, namespace, predicate, propagation=propagation,
                                                  dry_run=dry_run)
                return _json_response({
                    "apiVersion": rtype.api_version(version), "kind": f"{rtype.kind}List",
                    "metadata": {"resourceVersion": str(store.rv)},
                    "items": [self._present(rtype, version, obj) for obj in deleted],
                })
            obj = store.delete(rtype, namespace, where.name, propagation=propagation,
                               preconditions=options.get("preconditions"), dry_run=dry_run)
            return _json_response(self._present(rtype, version, obj))
        if where.name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} needs an object name")
        if method == "PUT":
            result = store.update(rtype, version, namespace, where.name, body, subresource=where.subresource,
                                  dry_run=dry_run, field_validation=field_validation)
        elif method == "PATCH":
            content_type = raw.content_type
            if content_type.startswith("application/apply-patch"):
                raise ApiError(415, "UnsupportedMediaType",
                               "server-side apply is not supported by the medserve emulator: use "
                               "`kubectl apply` without --server-side")
            patch_type = PATCH_TYPES.get(content_type)
            if patch_type is None:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch content type {content_type!r}")
            result = store.patch(rtype, version, namespace, where.name, patch_type, body,
                                 subresource=where.subresource, dry_run=dry_run, field_validation=field_validation)
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
        return _json_response(self._present(rtype, version, result.obj), warnings=result.warnings)

    @staticmethod
    async def _read_body(raw: aiohttp.web.BaseRequest) -> Any:
        data = await raw.read()
        if not data:
            return None
        if raw.content_type == "application/vnd.kubernetes.protobuf":
            try:
                return protobuf.decode(data)
            except protobuf.UnsupportedKind as exc:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the medserve emulator decodes protobuf only for Namespace, ConfigMap, Secret and "
                               f"ServiceAccount, not {exc}: write it as YAML and use `kubectl apply -f`") from exc
            except protobuf.ProtobufError as exc:
                raise bad_request(f"the request body is not valid Kubernetes protobuf: {exc}") from exc
        declared = "Content-Type" in raw.headers
        if declared and "json" not in raw.content_type and "yaml" not in raw.content_type:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format ({raw.content_type}) - accepted "
                           f"media types include: application/json, application/yaml")
        try:
            if "yaml" in raw.content_type and not raw.content_type.startswith("application/apply-patch"):
                return yaml.safe_load(data)
            return json.loads(data)
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from exc

    @staticmethod
    def _present(rtype: ResourceType, version: str, obj: Obj) -> Obj:
        """The object as served at `version` (multi-version CRDs are served without conversion)."""
        api_version = rtype.api_version(version)
        return obj if obj.get("apiVersion") == api_version else dict(obj, apiVersion=api_version)

    @staticmethod
    def _render_table(rtype: ResourceType, version: str, items: list[Obj], rv: int) -> Obj:
        from medserve_sandbox.schemas import render_table

        table = render_table(items, printer_columns=rtype.versions[version].printer_columns, kind=rtype.kind)
        table.setdefault("metadata", {})["resourceVersion"] = str(rv)
        return table

    def _table(self, rtype: ResourceType, version: str, items: list[Obj], rv: int) -> aiohttp.web.Response:
        return _json_response(self._render_table(rtype, version, items, rv),
                              content_type="application/json;as=Table;v=v1;g=meta.k8s.io")

    # ---------------------------------------------------------------- watch

    def _encode_event(self, event_type: str, event: WatchEvent, rtype: ResourceType, version: str,
                      as_table: bool = False) -> bytes:
        obj = event.obj
        if as_table:
            # `kubectl get -w` asks for Table events: one row per event, as the real server sends.
            encoded = json.dumps(self._render_table(rtype, version, [self._present(rtype, version, obj)],
                                                    event.rv), separators=(",", ":")).encode()
        elif obj.get("apiVersion") == rtype.api_version(version):
            if event.encoded is None:
                event.encoded = json.dumps(obj, separators=(",", ":")).encode()
            encoded = event.encoded
        else:
            encoded = json.dumps(self._present(rtype, version, obj), separators=(",", ":")).encode()
        return b'{"type":"' + event_type.encode() + b'","object":' + encoded + b"}\n"

    def _bookmark(self, rtype: ResourceType, version: str, *, initial_end: bool = False) -> bytes:
        metadata: Obj = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": rtype.kind, "apiVersion": rtype.api_version(version), "metadata": metadata}
        return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"

    async def _watch_stream(self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, version: str,
                           namespace: str | None, name: str | None) -> aiohttp.web.StreamResponse:
        query = raw.query
        predicate = compile_filter(query.get("labelSelector"), query.get("fieldSelector"))
        bookmarks = query.get("allowWatchBookmarks") == "true"
        send_initial = query.get("sendInitialEvents") == "true"
        since = None if send_initial else query.get("resourceVersion")
        timeout: float | None = None
        if query.get("timeoutSeconds"):
            try:
                timeout = float(query["timeoutSeconds"])
            except ValueError as exc:
                raise bad_request(f"timeoutSeconds {query['timeoutSeconds']!r} is not a number") from exc
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            watcher, backlog = self.store.watch(rtype, namespace, name, predicate, since)
        except ApiError as exc:
            if exc.code != 410:
                raise
            # Like the real server: the stream opens, then says why it ends (clients re-list on 410).
            await response.prepare(raw)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status_body()}).encode() + b"\n")
            await response.write_eof()
            return response
        try:
            await response.prepare(raw)
            as_table = _wants_table(raw)
            chunk = b"".join(self._encode_event(t, event, rtype, version, as_table) for t, event in backlog)
            if send_initial:
                chunk += self._bookmark(rtype, version, initial_end=True)
            if chunk:
                await response.write(chunk)
            await self._stream_events(raw, response, watcher, rtype, version, timeout=timeout, bookmarks=bookmarks,
                                      as_table=as_table)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            self.store.unwatch(watcher)
        return response

    async def _stream_events(self, raw: aiohttp.web.BaseRequest, response: aiohttp.web.StreamResponse,
                             watcher: Watcher, rtype: ResourceType, version: str, *,
                             timeout: float | None, bookmarks: bool, as_table: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait = WATCH_HEARTBEAT_SECONDS if deadline is None else min(WATCH_HEARTBEAT_SECONDS,
                                                                         deadline - loop.time())
            if wait <= 0:
                return
            try:
                item = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if raw.transport is None or raw.transport.is_closing():
                    return
                if bookmarks and (deadline is None or deadline > loop.time()):
                    await response.write(self._bookmark(rtype, version))
                continue
            if item is None:
                return
            # Send everything already queued in one write: far fewer syscalls under load.
            chunks = [self._encode_event(item[0], item[1], rtype, version, as_table)]
            while not watcher.queue.empty():
                queued = watcher.queue.get_nowait()
                if queued is None:
                    await response.write(b"".join(chunks))
                    return
                chunks.append(self._encode_event(queued[0], queued[1], rtype, version, as_table))
            await response.write(b"".join(chunks))


# ------------------------------------------------------------------------- startup helpers


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
        "users": [{"name": "medserve-emulator", "user": {"token": "medserve-emulator"}}],
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

    app = ApiServer(store=store, host=args.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app, Server(app, host=args.host, port=args.port) as server:
        app.port = server.port
        url = f"http://{args.host}:{server.port}"
        write_kubeconfig(args.kubeconfig, url)
        logger.info("serving the Kubernetes API on %s (kubeconfig %s)", url, args.kubeconfig)
        # The one line on stdout: EmulatorProcess and scripts wait for it.
        sys.stdout.write(f"READY {url}\n")
        sys.stdout.flush()
        await stop.wait()
        logger.info("stopping")
        store.close_all_watches()
        await asyncio.sleep(0)
    return 0


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


# ------------------------------------------------------------------------- the test and demo helper


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

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

