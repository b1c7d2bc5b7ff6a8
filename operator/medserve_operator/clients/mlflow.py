"""The operator's one MLflow client: resolve a model version or alias, move an alias, find the version a Job
registered, and fetch a version's reference profile from its artifacts.

Talks to MLflow's REST API with httpx rather than importing `mlflow` — the operator stays small
(one import of mlflow costs more memory than the whole operator). Versions are immutable in MLflow,
so a resolved version (and its reference profile) is cached; aliases move, so they are always asked again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import httpx
import pydantic

if TYPE_CHECKING:
    # The profile format loads when drift is first evaluated, not with the operator.
    from medserve_contract.modelspec import ReferenceProfile

logger = logging.getLogger(__name__)


class RegistryError(Exception):
    """Base of the registry errors; `reason` is the condition reason the reconciler reports."""

    reason = "RegistryError"


class RegistryUnavailable(RegistryError):
    """MLflow could not be reached or answered with a server error: retry with backoff."""

    reason = "RegistryUnavailable"


class ModelNotFound(RegistryError):
    """The model, version or alias does not exist: retrying at once will not help."""

    reason = "ModelNotFound"


class ModelNotReady(RegistryError):
    """The version exists but MLflow has not finished registering it (PENDING_REGISTRATION)."""

    reason = "ModelNotReady"


class ProfileError(Exception):
    """The reference profile could not be fetched; `reason` is the condition reason."""

    reason = "ReferenceProfileUnavailable"


class InvalidProfile(ProfileError):
    """The stored reference profile is not a valid `reference_profile.json`."""

    reason = "InvalidReferenceProfile"


ARTIFACT_FOLDER = "model"
"""Where the training job logs a version's files inside its run (examples/training: ARTIFACT_PATH)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResolvedModel:
    """A model version as resolved in the MLflow registry (the one type for it; status.py serialises it)."""

    name: str
    version: str
    source: str
    run_id: str
    alias: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class MlflowRegistry:
    """Resolves registered model versions over MLflow's REST API (`/api/2.0/mlflow/...`)."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, version_ttl: float = 600.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._version_ttl = version_ttl
        self._versions: dict[tuple[str, str], tuple[float, ResolvedModel]] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Future[ResolvedModel]] = {}
        self._profiles: dict[tuple[str, str], ReferenceProfile] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, name: str, *, version: str | None = None, alias: str | None = None) -> ResolvedModel:
        """Resolve exactly one of `version` or `alias` to an immutable, READY model version.

        Concurrent lookups of the same thing share one request: a thousand ModelDeployments applied at
        once that name one model cost MLflow one call, not a thousand.
        """
        if (version is None) == (alias is None):
            raise ValueError("exactly one of version or alias must be given")
        key = (name, version or "", alias or "")
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ResolvedModel] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._resolve(name, version=version, alias=alias)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _resolve(self, name: str, *, version: str | None, alias: str | None) -> ResolvedModel:
        if version is not None:
            cached = self._versions.get((name, version))
            if cached and time.monotonic() - cached[0] < self._version_ttl:
                return cached[1]
            data = await self._get("model-versions/get", {"name": name, "version": version},
                                   what=f"version {version} of model {name!r}")
        else:
            data = await self._get("registered-models/alias", {"name": name, "alias": str(alias)},
                                   what=f"alias {alias!r} of model {name!r}")
        resolved = self._parse(data, alias=alias)
        self._versions[(resolved.name, resolved.version)] = (time.monotonic(), dataclasses.replace(resolved,
                                                                                                    alias=None))
        return resolved

    async def find_versions_by_tag(self, name: str, key: str, value: str) -> list[ResolvedModel]:
        """Versions of `name` carrying the tag `key=value`, newest first (how a retraining Job is traced)."""
        filter_ = f"name = '{_quote(name)}' and tag.`{key}` = '{_quote(value)}'"
        data = await self._get("model-versions/search", {"filter": filter_, "max_results": "50"},
                               what=f"versions of model {name!r} tagged {key}")
        versions = [self._parse({"model_version": mv}, alias=None) for mv in data.get("model_versions", [])]
        return sorted(versions, key=lambda mv: int(mv.version), reverse=True)

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` of model `name` at `version` (how an ABTest promotes a winner to an aliased control)."""
        await self._request("POST", "registered-models/alias", {"name": name, "alias": alias, "version": version},
                            what=f"version {version} of model {name!r}")

    async def reference_profile(self, model: ResolvedModel) -> ReferenceProfile:
        """The version's `reference_profile.json`, from the server's artifact endpoints, cached per version.

        The version's `source` says where its files are: `mlflow-artifacts:/...` (artifacts proxied by the
        server) is read through `/api/2.0/mlflow-artifacts/artifacts/`, anything else through the run's
        `/get-artifact` endpoint. Raises ProfileError (InvalidProfile for a file that does not validate).
        """
        key = (model.name, model.version)
        cached = self._profiles.get(key)
        if cached is not None:
            return cached
        from medserve_contract import modelspec

        what = f"the reference profile of {model.name} version {model.version}"
        for url, params in artifact_locations(self.base_url, model):
            try:
                response = await self._client.get(url, params=params)
            except httpx.HTTPError as exc:
                raise ProfileError(f"MLflow at {self.base_url} is unreachable while fetching {what}: "
                                   f"{type(exc).__name__}") from exc
            if response.status_code == 404 or (response.status_code == 400 and "get-artifact" in url):
                continue  # not at this place: try the next candidate
            if response.status_code >= 400:
                raise ProfileError(f"MLflow answered {response.status_code} while fetching {what}")
            try:
                profile = modelspec.ReferenceProfile.model_validate_json(response.content)
            except pydantic.ValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
                where = ".".join(str(p) for p in first["loc"]) or "(root)"
                raise InvalidProfile(f"{what} is not a valid {modelspec.REFERENCE_PROFILE_FILE}: {where}: "
                                     f"{first['msg']}") \
                    from exc
            self._profiles[key] = profile
            return profile
        raise ProfileError(f"{what} was not found in MLflow ({modelspec.REFERENCE_PROFILE_FILE} beside source "
                           f"{model.source or '(none)'}, run {model.run_id or '(none)'})")

    async def _get(self, endpoint: str, params: dict[str, str], *, what: str) -> dict[str, Any]:
        return await self._request("GET", endpoint, params, what=what)

    async def _request(self, method: str, endpoint: str, params: dict[str, str], *, what: str) -> dict[str, Any]:
        url = f"{self.base_url}/api/2.0/mlflow/{endpoint}"
        try:
            if method == "GET":
                response = await self._client.get(url, params=params)
            else:
                response = await self._client.request(method, url, json=params)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"MLflow at {self.base_url} is unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise RegistryUnavailable(f"MLflow at {self.base_url} answered {response.status_code}")
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise RegistryUnavailable(f"MLflow at {self.base_url} answered non-JSON ({response.status_code})") \
                from exc
        if response.status_code in (400, 404) and body.get("error_code") in {
            "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND",
        }:
            raise ModelNotFound(f"{what} is not in the MLflow registry")
        if response.status_code >= 400:
            raise RegistryUnavailable(
                f"MLflow rejected the request for {what}: {response.status_code} {body.get('error_code', '')}"
            )
        return body

    @staticmethod
    def _parse(data: dict[str, Any], *, alias: str | None) -> ResolvedModel:
        mv = data.get("model_version") or {}
        if mv.get("status", "READY") != "READY":
            raise ModelNotReady(f"version {mv.get('version')} of model {mv.get('name')!r} is {mv.get('status')}")
        return ResolvedModel(
            name=str(mv["name"]),
            version=str(mv["version"]),
            source=str(mv.get("source", "")),
            run_id=str(mv.get("run_id", "")),
            alias=alias,
            tags={t["key"]: t.get("value", "") for t in mv.get("tags", [])},
        )


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def artifact_locations(base_url: str, model: ResolvedModel) -> list[tuple[str, dict[str, str]]]:
    """The (url, query params) pairs to try, in order, for a version's reference profile."""
    from medserve_contract.modelspec import REFERENCE_PROFILE_FILE as file

    base_url = base_url.rstrip("/")
    found: list[tuple[str, dict[str, str]]] = []
    source = model.source or ""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "mlflow-artifacts":
        folder = parsed.path.strip("/")
        for path in (f"{folder}/{file}", f"{folder}/{ARTIFACT_FOLDER}/{file}"):
            found.append((f"{base_url}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}", {}))
    elif parsed.scheme == "runs":
        run_id, _, folder = parsed.path.strip("/").partition("/")
        for path in (f"{folder}/{file}".lstrip("/"), f"{folder}/{ARTIFACT_FOLDER}/{file}".lstrip("/")):
            found.append((f"{base_url}/get-artifact", {"run_uuid": run_id, "path": path}))
    if model.run_id:
        found.append((f"{base_url}/get-artifact", {"run_uuid": model.run_id, "path": f"{ARTIFACT_FOLDER}/{file}"}))
    return found
