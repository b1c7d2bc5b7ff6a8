"""The operator's Prometheus client: instant PromQL queries over the HTTP API (`/api/v1/query`).

Async, over httpx, like the MLflow registry client: the reconcilers run on kopf's event loop, and a
blocking client (`prometheus-api-client` is built on requests) would have to be pushed into a thread
per call for two small GETs. Every request has a timeout (5 s by default), so a Prometheus that hangs
costs one evaluation at most that long and never stalls the operator.

Errors: `PrometheusUnavailable` when the server cannot be reached, times out, or answers a server error
(retry at the next evaluation); `PrometheusQueryError` when it rejects the query itself (a bug in the
query or a limit on the server, not an outage). Both carry the condition `reason` to report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import httpx

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


class PrometheusError(Exception):
    """Base of the Prometheus errors; `reason` is the condition reason the reconciler reports."""

    reason = "PrometheusError"


class PrometheusUnavailable(PrometheusError):
    """Prometheus could not be reached, timed out, or answered a server error."""

    reason = "PrometheusUnavailable"


class PrometheusQueryError(PrometheusError):
    """Prometheus answered but refused the query (bad PromQL, too many samples, ...)."""

    reason = "PrometheusQueryFailed"


@dataclasses.dataclass(frozen=True)
class VectorSample:
    """One element of an instant vector: the series' labels and its value at the query time."""

    labels: dict[str, str]
    value: float


class PrometheusClient:
    """Runs instant queries against one Prometheus server (`base_url`, e.g. http://prometheus:9090)."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def query(self, promql: str, *, at: float | None = None) -> list[VectorSample]:
        """Evaluate `promql` as an instant query (now, or at the Unix time `at`); it must give a vector.

        A NaN or infinite value (e.g. a ratio over an empty window) is left out, as if the series
        were missing.
        """
        data = await self._fetch(promql, at=at)
        if data.get("resultType") != "vector":
            raise PrometheusQueryError(f"the query {promql!r} gave a {data.get('resultType')}, not a vector")
        samples: list[VectorSample] = []
        for item in data.get("result") or []:
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise PrometheusQueryError(f"the query {promql!r} returned a malformed sample: {item!r}") from exc
            if math.isfinite(value):
                samples.append(VectorSample({str(k): str(v) for k, v in (item.get("metric") or {}).items()},
                                            value))
        return samples

    async def value(self, promql: str) -> float | None:
        """Evaluate `promql` to one number: a scalar or a one-series vector; None when there is no data."""
        return instant_value(await self._fetch(promql, at=None), promql)

    async def _fetch(self, promql: str, *, at: float | None) -> dict[str, Any]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.base_url}/api/v1/query"
        try:
            response = await self._client.post(url, data=params)
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.base_url} is unreachable: "
                                        f"{type(exc).__name__}") from exc
        if response.status_code >= 500:
            # Prometheus answers 503 while starting or overloaded and 5xx on query timeouts: an outage.
            raise PrometheusUnavailable(f"Prometheus at {self.base_url} answered {response.status_code}")
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.base_url} answered non-JSON "
                                        f"({response.status_code})") from exc
        if response.status_code >= 400 or body.get("status") != "success":
            raise PrometheusQueryError(f"Prometheus rejected the query {promql!r}: "
                                       f"{body.get('errorType', response.status_code)}: {body.get('error', '')}")
        data: dict[str, Any] = body.get("data") or {}
        return data


def instant_value(data: Mapping[str, Any], promql: str) -> float | None:
    """The one number in an instant query's `data` (pure); None for no series or NaN (e.g. 0/0)."""
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar" and isinstance(result, list):
            value = float(result[1])
        elif kind == "vector" and isinstance(result, list):
            if not result:
                return None
            if len(result) > 1:
                raise PrometheusQueryError(f"{promql!r} returned {len(result)} series; it must return one number "
                                           "(aggregate it, e.g. with sum(...))")
            value = float(result[0]["value"][1])
        else:
            raise PrometheusQueryError(f"{promql!r} returned a {kind}; it must return one number")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PrometheusQueryError(f"the query {promql!r} returned a malformed result") from exc
    return None if math.isnan(value) else value

