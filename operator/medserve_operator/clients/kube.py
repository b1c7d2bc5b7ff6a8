"""A small async Kubernetes API client for the objects the operator owns.

kopf watches and patches the resources it handles; the operator still has to create and update the
children (InferenceServices, Jobs, ...) and write the status of a parent from a child's event. The
official client costs tens of MiB and a thread pool per call; this one is aiohttp (kopf's own HTTP client,
so nothing more is installed) over the same kubeconfig or in-cluster service account, and only knows the few
verbs the operator uses. aiohttp rather than httpx: a request costs the operator about 0.2 ms of CPU instead
of 1 ms (httpx's pool re-examines every connection per request), which at a thousand objects was a fifth of
the operator's CPU (benchmarks/operator_scale.py). A server that cannot be reached is an ApiError 503
(reason ServiceUnavailable), so callers handle it as any other API error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_IN_FLIGHT = 32
"""Requests under way at once (one connection each); the rest wait on a semaphore, in order. The wait is
outside aiohttp's request timeout, which would otherwise count the time spent queued for a connection."""


class ApiError(Exception):
    """A Kubernetes API error with its HTTP status and the Status reason/message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def resource_path(api_version: str, plural: str, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


@dataclass(frozen=True)
class Response:
    status_code: int
    reason: str
    content: bytes


class KubeClient:
    """Async access to the Kubernetes API over one pooled HTTP connection set."""

    def __init__(self, server: str, *, headers: dict[str, str] | None = None,
                 verify: ssl.SSLContext | bool = True, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._headers = headers or {}
        self._ssl: ssl.SSLContext | bool = verify
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None  # made on first use, on the loop that uses it
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        """In-cluster service account when running in a pod, else $KUBECONFIG / ~/.kube/config."""
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        if path is None and (SERVICE_ACCOUNT_DIR / "token").exists():
            host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
            context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
            token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
            return cls(f"https://{host}:{port}", headers={"Authorization": f"Bearer {token}"}, verify=context)
        return cls._from_kubeconfig(Path(path or Path.home() / ".kube" / "config"))

    @classmethod
    def _from_kubeconfig(cls, path: Path) -> KubeClient:
        config = yaml.safe_load(path.read_text()) or {}
        context_name = config.get("current-context")
        context = _named(config.get("contexts"), context_name, "context", path)
        cluster = _named(config.get("clusters"), context.get("cluster"), "cluster", path)
        user = _named(config.get("users"), context.get("user"), "user", path) if context.get("user") else {}
        server = str(cluster["server"])
        headers: dict[str, str] = {}
        if user.get("token"):
            headers["Authorization"] = f"Bearer {user['token']}"
        verify: ssl.SSLContext | bool = True
        if server.startswith("https://"):
            if cluster.get("insecure-skip-tls-verify"):
                verify = False
            else:
                ca = _materialise(cluster, "certificate-authority")
                verify = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
            cert, key = _materialise(user, "client-certificate"), _materialise(user, "client-key")
            if cert and isinstance(verify, ssl.SSLContext):
                verify.load_cert_chain(cert, key)
        return cls(server, headers=headers, verify=verify)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                    content_type: str = "application/json") -> Response:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, ssl=self._ssl)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, connector=connector)
        data = None if body is None else json.dumps(body)
        headers = None if data is None else {"Content-Type": content_type}
        try:
            async with self._slots, self._session.request(method, self.server + path, data=data, params=params,
                                                          headers=headers) as response:
                return Response(response.status, response.reason or "", await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, "ServiceUnavailable",
                           f"the Kubernetes API at {self.server} did not answer {method} {path}: "
                           f"{type(exc).__name__}: {exc}") from exc

    async def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        response = await self._send("GET", resource_path(api_version, plural, namespace, name))
        if response.status_code == 404:
            return None
        return _json(response)

    async def list(self, api_version: str, plural: str, namespace: str | None, *,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        response = await self._send("GET", resource_path(api_version, plural, namespace), params=params)
        items: list[dict[str, Any]] = _json(response).get("items", [])
        return items

    async def create(self, api_version: str, plural: str, namespace: str | None,
                     body: dict[str, Any]) -> dict[str, Any]:
        return _json(await self._send("POST", resource_path(api_version, plural, namespace), body=body))

    async def replace(self, api_version: str, plural: str, namespace: str | None,
                      body: dict[str, Any]) -> dict[str, Any]:
        path = resource_path(api_version, plural, namespace, body["metadata"]["name"])
        return _json(await self._send("PUT", path, body=body))

    async def patch(self, api_version: str, plural: str, namespace: str | None, name: str,
                    patch: dict[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        response = await self._send("PATCH", resource_path(api_version, plural, namespace, name, subresource),
                                    body=patch, content_type="application/merge-patch+json")
        return _json(response)

    async def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> bool:
        response = await self._send("DELETE", resource_path(api_version, plural, namespace, name),
                                    body={"propagationPolicy": "Background"})
        if response.status_code == 404:
            return False
        _json(response)
        return True


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The smallest JSON merge patch (RFC 7386) turning `old` into `new`: nested objects are patched key by
    key, removed keys become null, anything else that changed is replaced whole (lists included)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if key in old and before == value:
            continue
        patch[key] = merge_patch(before, value) if isinstance(before, dict) and isinstance(value, dict) else value
    patch.update({k: None for k in old if k not in new})
    return patch


def _json(response: Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    if response.status_code >= 400:
        raise ApiError(response.status_code, str(body.get("reason", response.reason)),
                       str(body.get("message", response.content[:500].decode(errors="replace"))))
    return body


def _named(entries: Any, name: Any, what: str, path: Path) -> dict[str, Any]:
    for entry in entries or []:
        if entry.get("name") == name:
            found: dict[str, Any] = entry.get(what) or {}
            return found
    raise ValueError(f"kubeconfig {path}: no {what} named {name!r}")


def _materialise(section: dict[str, Any], key: str) -> str | None:
    """A kubeconfig file reference, or its inline `-data` twin written to a private temp file."""
    if section.get(key):
        return str(section[key])
    data = section.get(f"{key}-data")
    if not data:
        return None
    handle = tempfile.NamedTemporaryFile(prefix="medserve-", suffix=".pem", delete=False)  # noqa: SIM115
    with handle:
        handle.write(base64.b64decode(data))
    os.chmod(handle.name, 0o600)
    return handle.name
