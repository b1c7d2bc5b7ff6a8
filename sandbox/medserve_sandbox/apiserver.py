"""The HTTP face of the emulator: an aiohttp handler that routes each request to discovery or the store.

Paths are parsed here (`/api/v1/...`, `/apis/G/V/...`), query parameters and bodies (JSON, YAML and
the protobuf that kubectl sends for a few kinds) are decoded, and the store's results and errors are
answered as the real API server does: objects, Lists, server-side Tables, `Status` errors, `Warning`
headers, and watch streams with BOOKMARKs and heartbeats. Discovery documents are in discovery.py,
the semantics of the objects in store.py; emulator.py starts it all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import yaml
from kmock import KubernetesEmulator

from medserve_sandbox import discovery, managedfields, protobuf, rbac
from medserve_sandbox.apierrors import error_details
from medserve_sandbox.resources import (
    ResourceType,
    api_group,
)
from medserve_sandbox.selectors import SelectorError, compile_filter, field_selector_name
from medserve_sandbox.store import (
    ApiError,
    Obj,
    Store,
    Watcher,
    WatchEvent,
    bad_request,
)

logger = logging.getLogger(__name__)

WATCH_HEARTBEAT_SECONDS = 20.0
PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
}
# Kinds whose storage answers a delete with the deleted object (ReturnDeletedObject in their registries).
RETURN_DELETED_OBJECT = frozenset({("", "pods"), ("", "services"), ("", "serviceaccounts")})
# The authorization API's reviews, answered (never stored) by ApiServer._review.
REVIEWS = {"selfsubjectaccessreviews": "SelfSubjectAccessReview", "subjectaccessreviews": "SubjectAccessReview",
           "localsubjectaccessreviews": "LocalSubjectAccessReview",
           "selfsubjectrulesreviews": "SelfSubjectRulesReview"}
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


def _field_manager(raw: aiohttp.web.BaseRequest, *, is_apply: bool, options_kind: str) -> str:
    """The write's field manager: `fieldManager`, else the User-Agent's prefix (k8s.io/apiserver handlers/
    rest.go, managerOrUserAgent); an apply must name one, and only an apply may `force`
    (k8s.io/apimachinery pkg/apis/meta/v1/validation, ValidatePatchOptions)."""
    query = raw.query
    given = query.get("fieldManager", "")
    causes: list[dict[str, str]] = []
    if is_apply and not given:
        causes.append({"reason": "FieldValueRequired", "message": "Required value: is required for apply patch",
                       "field": "fieldManager"})
    if not is_apply and "force" in query:
        causes.append({"reason": "FieldValueForbidden", "message": "Forbidden: may not be specified for "
                       "non-apply patch", "field": "force"})
    if len(given.encode()) > managedfields.MAX_MANAGER_LENGTH:
        causes.append({"reason": "FieldValueTooLong", "message": "Too long: must have at most 128 bytes",
                       "field": "fieldManager"})
    elif any(not ch.isprintable() for ch in given):
        causes.append({"reason": "FieldValueInvalid", "message": f"Invalid value: {json.dumps(given)}: must only "
                       "contain printable characters", "field": "fieldManager"})
    if causes:
        summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
        summary = summary if len(causes) == 1 else f"[{summary}]"
        raise ApiError(422, "Invalid", f'{options_kind}.meta.k8s.io "" is invalid: {summary}',
                       {"group": "meta.k8s.io", "kind": options_kind, "causes": causes})
    return given or managedfields.manager_from_user_agent(raw.headers.get("User-Agent", ""))


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list."
)


def _page(items: list[Obj], rv: str, query: Any, *, compacted_rv: int, selected: bool) -> tuple[list[Obj], Obj]:
    """`limit` and `continue` as the real server pages a list (k8s.io/apiserver pkg/storage/continue.go,
    EncodeContinue / DecodeContinue, and the etcd3 store's GetList): items in key order, an opaque token
    naming the resourceVersion of the first page and the key to start after, `remainingItemCount`
    when no selector filters the list, 410 Expired for a token older than the kept history.

    Unlike the real server, later pages show the objects as they are now, not as of the first page."""
    meta: Obj = {"resourceVersion": rv}
    token = query.get("continue")
    if token:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            token_rv = int(decoded["rv"])
            start = str(decoded["start"])
            if decoded.get("v") != "meta.k8s.io/v1" or not start.endswith("\x00"):
                raise ValueError("unknown continue token")
        except (ValueError, KeyError, TypeError) as exc:
            raise bad_request(f"continue key is not valid: {exc}") from exc
        if token_rv < compacted_rv:
            raise ApiError(410, "Expired", CONTINUE_EXPIRED)
        after = tuple(start[:-1].split("/", 1)) if "/" in start else ("", start[:-1])
        items = [obj for obj in items
                 if (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) > after]
        meta["resourceVersion"] = str(token_rv)
    limit_text = query.get("limit")
    if not limit_text:
        return items, meta
    try:
        limit = int(limit_text)
    except ValueError as exc:
        raise bad_request(f"limit {limit_text!r} is not a number") from exc
    if limit <= 0 or len(items) <= limit:
        return items, meta
    page, rest = items[:limit], items[limit:]
    last = page[-1]["metadata"]
    start = f"{last.get('namespace', '')}/{last['name']}\x00"
    encoded = json.dumps({"v": "meta.k8s.io/v1", "rv": int(meta["resourceVersion"]), "start": start},
                         separators=(",", ":"))
    meta["continue"] = base64.urlsafe_b64encode(encoded.encode()).decode().rstrip("=")
    if not selected:
        meta["remainingItemCount"] = len(rest)
    return page, meta


REQUEST_LABELS = ("verb", "dry_run", "group", "version", "resource", "subresource", "scope", "component", "code")


def request_labels(raw: aiohttp.web.BaseRequest, code: int, where: ResourcePath | None) -> tuple[str, ...]:
    """The labels kube-apiserver counts a request under in apiserver_request_total (k8s.io/apiserver
    pkg/endpoints/metrics/metrics.go: requestCounter, CleanVerb, CleanScope): GET on a collection is LIST,
    with ?watch WATCH, an apply patch APPLY; scope is resource for a named object or a create, namespace
    or cluster for a collection. A non-resource path (`where` None) counts under its verb with no resource."""
    dry_run = "All" if "All" in raw.query.getall("dryRun", []) else ""
    if where is None:
        return (raw.method, dry_run, "", "", "", "", "", "apiserver", str(code))
    verb = raw.method
    if raw.method == "GET":
        verb = "WATCH" if raw.query.get("watch") in {"true", "1"} else "GET" if where.name else "LIST"
    elif raw.method == "PATCH" and raw.content_type.startswith("application/apply-patch"):
        verb = "APPLY"
    elif raw.method == "DELETE" and where.name is None:
        verb = "DELETECOLLECTION"
    scope = "resource" if where.name or raw.method == "POST" else "namespace" if where.namespace else "cluster"
    return (verb, dry_run, where.group, where.version, where.plural, where.subresource or "", scope, "apiserver",
            str(code))


def render_request_metrics(requests: Counter[tuple[str, ...]]) -> str:
    """apiserver_request_total in the Prometheus text format, as kube-apiserver serves it on /metrics."""
    lines = ["# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, "
             "dry run value, group, version, resource, scope, component, and HTTP response code.",
             "# TYPE apiserver_request_total counter"]
    for values, count in sorted(requests.items()):
        labels = ",".join(f'{name}="{value}"' for name, value in zip(REQUEST_LABELS, values, strict=True))
        lines.append(f"apiserver_request_total{{{labels}}} {count}")
    return "\n".join(lines) + "\n"


def _wants_table(request: aiohttp.web.BaseRequest) -> bool:
    return "as=Table" in request.headers.get("Accept", "")

@attrs.define(kw_only=True)
class ApiServer(KubernetesEmulator):
    """The HTTP face of the emulator: routes requests to discovery, OpenAPI and the store."""

    store: Store
    host: str = "127.0.0.1"
    port: int = 0
    requests: Counter[tuple[str, ...]] = attrs.field(factory=Counter)
    """apiserver_request_total's series: label values (REQUEST_LABELS) -> count."""
    tokens: rbac.TokenIssuer = attrs.field(factory=rbac.TokenIssuer)

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's own entry point records every request and parses paths with its K8s parser;
        # a long-running emulator needs neither, so requests are routed here directly.
        user_token = None
        where = parse_resource_path(raw.path.rstrip("/") or "/")
        try:
            user = self.tokens.authenticate(self.store, raw.headers.get("Authorization"))
            user_token = rbac.CURRENT_USER.set(user)
            self._authorize(raw, user, where)
            response = await self._route(raw, where)
        except ApiError as exc:
            if exc.code >= 500:
                logger.error("%s %s: %s", raw.method, raw.path_qs, exc.message)
            response = _json_response(exc.status_body(), status=exc.code)
        except SelectorError as exc:
            response = _json_response(bad_request(str(exc)).status_body(), status=400)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s %s failed", raw.method, raw.path_qs)
            error = ApiError(500, "InternalError", f"the emulator failed on this request: {exc!r}")
            response = _json_response(error.status_body(), status=500)
        finally:
            if user_token is not None:
                rbac.CURRENT_USER.reset(user_token)
        self.requests[request_labels(raw, response.status, where)] += 1
        return response

    def _authorize(self, raw: aiohttp.web.BaseRequest, user: rbac.User, where: ResourcePath | None) -> None:
        """RBAC for the request (rbac.py); the emulator's own kubeconfig is the cluster admin."""
        if rbac.MASTERS in user.groups:
            return
        if where is None:
            attributes = rbac.request_attributes(user, raw.method, raw.path, raw.query, resource_request=False)
        else:
            attributes = rbac.request_attributes(
                user, raw.method, raw.path, raw.query, resource_request=True, group=where.group,
                namespace=where.namespace, plural=where.plural, name=where.name, subresource=where.subresource)
        rbac.require(self.store, attributes)

    async def _route(self, raw: aiohttp.web.BaseRequest,
                     resource_path: ResourcePath | None) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        if resource_path is not None and resource_path.group == "authorization.k8s.io" \
                and resource_path.plural in REVIEWS:
            return await self._review(raw, resource_path)
        if resource_path is not None:
            return await self._serve_resource(raw, resource_path)
        if raw.method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{raw.method} is not supported on {path}")
        if path == "/version":
            return _json_response(SERVER_VERSION)
        if path in {"/healthz", "/readyz", "/livez"}:
            return aiohttp.web.Response(text="ok", content_type="text/plain")
        if path == "/metrics":
            return aiohttp.web.Response(text=render_request_metrics(self.requests), content_type="text/plain")
        if path == "/api":
            return _json_response({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"},
                ],
            })
        if path == "/apis":
            return _json_response(discovery.group_list(self.store))
        if path == "/openapi/v3":
            return _json_response(discovery.openapi_index(self.store))
        if path == "/openapi/v2":
            return _json_response(discovery.openapi_v2(self.store))
        if path.startswith("/openapi/v3/"):
            return _json_response(discovery.openapi_group_version(self.store, path.removeprefix("/openapi/v3/")))
        segments = path.strip("/").split("/")
        if segments[0] == "api" and len(segments) == 2:
            return _json_response(discovery.resource_list(self.store, "", segments[1]))
        if segments[0] == "apis" and len(segments) == 2:
            versions = discovery.group_versions(self.store).get(segments[1])
            if not versions:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json_response(api_group(segments[1], versions))
        if segments[0] == "apis" and len(segments) == 3:
            return _json_response(discovery.resource_list(self.store, segments[1], segments[2]))
        if path == "/":
            return _json_response({"paths": sorted(discovery.root_paths(self.store))})
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    async def _review(self, raw: aiohttp.web.BaseRequest, where: ResourcePath) -> aiohttp.web.Response:
        """The authorization API, answered by the emulator's RBAC (rbac.py) for the requester (self reviews) or
        for spec.user/groups (SubjectAccessReview); the review is echoed, never stored."""
        if raw.method != "POST" or where.name is not None or where.version != "v1":
            raise ApiError(405 if raw.method != "POST" else 404, "MethodNotAllowed" if raw.method != "POST"
                           else "NotFound", "the server could not find the requested resource")
        body = await self._read_body(raw)
        kind = REVIEWS[where.plural]
        if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
            raise ApiError(422, "Invalid", f'{kind}.authorization.k8s.io "" is invalid: spec: Required value',
                           {"group": "authorization.k8s.io", "kind": kind, "causes": [
                               {"reason": "FieldValueRequired", "message": "Required value", "field": "spec"}]})
        spec = body["spec"]
        user = rbac.CURRENT_USER.get()
        if kind in {"SubjectAccessReview", "LocalSubjectAccessReview"}:
            user = rbac.User(str(spec.get("user") or ""), tuple(spec.get("groups") or ()))
        status: Obj
        if kind == "SelfSubjectRulesReview":
            status = self._rules_review(user, str(spec.get("namespace") or ""))
        else:
            resource = spec.get("resourceAttributes")
            if isinstance(resource, dict):
                namespace = where.namespace if kind == "LocalSubjectAccessReview" else resource.get("namespace")
                attributes = rbac.Attributes(
                    user=user, verb=str(resource.get("verb") or ""), resource_request=True,
                    namespace=str(namespace or ""), api_group=str(resource.get("group") or ""),
                    resource=str(resource.get("resource") or ""),
                    subresource=str(resource.get("subresource") or ""), name=str(resource.get("name") or ""))
            else:
                other = spec.get("nonResourceAttributes") if isinstance(spec.get("nonResourceAttributes"), dict) else {}
                attributes = rbac.Attributes(user=user, verb=str(other.get("verb") or ""), resource_request=False,
                                             path=str(other.get("path") or ""))
            allowed, reason = rbac.authorize(self.store, attributes)
            status = {"allowed": allowed, **({"reason": reason} if reason else {})}
        return _json_response({"kind": kind, "apiVersion": "authorization.k8s.io/v1",
                               "metadata": {"creationTimestamp": None}, "spec": spec, "status": status},
                              status=201)

    def _rules_review(self, user: rbac.User, namespace: str) -> Obj:
        """SelfSubjectRulesReview's status: the rules bound to `user` in `namespace`."""
        if rbac.MASTERS in user.groups:  # cluster-admin, bound to system:masters in every cluster
            return {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": False}
        rules, errors = rbac.visible_rules(self.store, user, namespace)
        resource_rules = [{key: list(rule[key]) for key in ("verbs", "apiGroups", "resources", "resourceNames")
                           if rule.get(key)} for _, rule in rules if not rule.get("nonResourceURLs")]
        non_resource = [{"verbs": list(rule["verbs"]), "nonResourceURLs": list(rule["nonResourceURLs"])}
                        for _, rule in rules if rule.get("nonResourceURLs")]
        status: Obj = {"resourceRules": resource_rules, "nonResourceRules": non_resource, "incomplete": bool(errors)}
        if errors:
            status["evaluationError"] = "; ".join(errors)
        return status

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
            items, list_meta = _page(items, rv, query, compacted_rv=store.logs[rtype.key].compacted_rv,
                                     selected=bool(query.get("labelSelector") or query.get("fieldSelector")))
            if rtype.custom:
                # Unstructured lists always carry `continue` (UnstructuredList.SetContinue), "" on the last page.
                list_meta.setdefault("continue", "")
            items = [self._present(rtype, version, obj) for obj in items]
            if _wants_table(raw):
                table = self._render_table(rtype, version, items, store.rv)
                table["metadata"] = list_meta
                return _json_response(table, content_type="application/json;as=Table;v=v1;g=meta.k8s.io")
            return _json_response({
                "apiVersion": rtype.api_version(version), "kind": f"{rtype.kind}List",
                "metadata": list_meta, "items": items,
            })
        body = await self._read_body(raw)
        field_validation = query.get("fieldValidation", "Warn")
        if field_validation not in {"Strict", "Warn", "Ignore"}:
            raise bad_request(f"fieldValidation {field_validation!r} must be one of Strict, Warn, Ignore")
        is_apply = method == "PATCH" and raw.content_type.startswith("application/apply-patch")
        field_manager = _field_manager(raw, is_apply=is_apply, options_kind="PatchOptions" if method == "PATCH"
                                       else "UpdateOptions" if method == "PUT" else "CreateOptions")
        if method == "POST" and rtype.key == ("", "serviceaccounts") and where.subresource == "token" and where.name:
            return self._token_request(namespace, where.name, body)
        if method == "POST":
            if where.name is not None:
                raise ApiError(405, "MethodNotAllowed", "POST is only allowed on a collection")
            result = store.create(rtype, version, namespace, body, dry_run=dry_run,
                                  field_validation=field_validation, field_manager=field_manager)
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
            if obj["metadata"].get("deletionTimestamp") or rtype.key in RETURN_DELETED_OBJECT:
                return _json_response(self._present(rtype, version, obj))
            # Deleted at once: a Status, as k8s.io/apiserver registry/generic/registry/store.go
            # finalizeDelete answers unless the kind's storage sets ReturnDeletedObject.
            return _json_response({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": error_details(rtype, where.name) | {"uid": obj["metadata"].get("uid")},
            })
        if where.name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} needs an object name")
        if method == "PUT":
            result = store.update(rtype, version, namespace, where.name, body, subresource=where.subresource,
                                  dry_run=dry_run, field_validation=field_validation, field_manager=field_manager)
        elif is_apply:
            result = store.apply(rtype, version, namespace, where.name, body, field_manager=field_manager,
                                 force=query.get("force") in {"true", "1"}, subresource=where.subresource,
                                 dry_run=dry_run, field_validation=field_validation)
            if result.created:
                return _json_response(self._present(rtype, version, result.obj), status=201,
                                      warnings=result.warnings)
        elif method == "PATCH":
            content_type = raw.content_type
            patch_type = PATCH_TYPES.get(content_type)
            if patch_type is None:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch content type {content_type!r}")
            result = store.patch(rtype, version, namespace, where.name, patch_type, body,
                                 subresource=where.subresource, dry_run=dry_run, field_validation=field_validation,
                                 field_manager=field_manager)
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
        return _json_response(self._present(rtype, version, result.obj), warnings=result.warnings)

    def _token_request(self, namespace: str | None, name: str, body: Any) -> aiohttp.web.Response:
        """POST serviceaccounts/NAME/token (the TokenRequest API, `kubectl create token`): a bearer token of the
        ServiceAccount (rbac.TokenIssuer), valid for spec.expirationSeconds (default one hour)."""
        account = self.store.get(self.store.types[("", "serviceaccounts")], namespace, name)
        spec: Obj = body["spec"] if isinstance(body, dict) and isinstance(body.get("spec"), dict) else {}
        seconds = spec.get("expirationSeconds")
        if seconds is not None and (not isinstance(seconds, int) or seconds < 600):
            raise ApiError(422, "Invalid", f'TokenRequest.authentication.k8s.io "{name}" is invalid: '
                           "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
                           {"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest"})
        token, expiry = self.tokens.issue(account, seconds)
        return _json_response({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"],
                     "expirationSeconds": seconds or rbac.TOKEN_SECONDS, "boundObjectRef": None},
            "status": {"token": token, "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }, status=201)

    @staticmethod
    async def _read_body(raw: aiohttp.web.BaseRequest) -> Any:
        data = await raw.read()
        if not data:
            return None
        if raw.content_type == "application/vnd.kubernetes.protobuf":
            try:
                return protobuf.decode(data)
            except protobuf.UnsupportedField as exc:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the medserve emulator cannot decode {exc} from protobuf (it would be lost): "
                               f"write the object as YAML and use `kubectl apply -f`") from exc
            except protobuf.UnsupportedKind as exc:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the medserve emulator decodes protobuf only for Namespace, ConfigMap, Secret, "
                               f"ServiceAccount, Job, DeleteOptions, TokenRequest, RBAC roles and bindings and the "
                               f"authorization reviews, not {exc}: write it as YAML and use `kubectl apply -f`",
                               ) from exc
            except protobuf.ProtobufError as exc:
                raise bad_request(f"the request body is not valid Kubernetes protobuf: {exc}") from exc
        declared = "Content-Type" in raw.headers
        if declared and "json" not in raw.content_type and "yaml" not in raw.content_type:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format ({raw.content_type}) - accepted "
                           f"media types include: application/json, application/yaml")
        try:
            if "yaml" in raw.content_type:
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

