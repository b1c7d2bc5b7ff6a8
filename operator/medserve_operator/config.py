"""The operator's own configuration, read once from the environment at start-up."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import cast

from medserve_operator.api.modeldeployment import DEPLOYMENT_MODES, DeploymentMode

DEFAULT_RUNTIME_IMAGE = "ghcr.io/medserve/model-runtime:0.1.0"
DEFAULT_DEPLOYMENT_MODE: DeploymentMode = "Serverless"


class ConfigError(ValueError):
    """A setting of the operator's environment that it cannot run with."""


def deployment_mode(value: str) -> DeploymentMode:
    """A deployment mode as the configuration names it (Serverless or Standard)."""
    if value not in DEPLOYMENT_MODES:
        raise ConfigError(f"deployment mode {value!r}: must be one of {', '.join(DEPLOYMENT_MODES)}")
    return cast("DeploymentMode", value)


DEFAULT_SPOOL_SIZE = "1Gi"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecretKey:
    """A Secret (by name, in each ModelDeployment's own namespace) and one of its keys."""

    name: str
    key: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditDefaults:
    """What a ModelDeployment whose `spec.security` names none gets: the Secrets with the audit database's
    URL, the audit chains' HMAC key and the shared Redis' URL (each looked up in the ModelDeployment's own
    namespace, as a pod can only use Secrets of its own), and the audit spool's volume."""

    dsn_secret: SecretKey | None = None
    key_secret: SecretKey | None = None
    redis_secret: SecretKey | None = None
    spool_persistent: bool = False
    """Whether a ModelDeployment without `spec.security.audit.spool` gets a persistent spool anyway."""
    spool_storage_class: str | None = None
    spool_size: str = DEFAULT_SPOOL_SIZE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuditDefaults:
        def secret(prefix: str, default_key: str) -> SecretKey | None:
            name = env.get(prefix)
            return SecretKey(name=name, key=env.get(prefix + "_KEY") or default_key) if name else None

        return cls(
            dsn_secret=secret("MEDSERVE_AUDIT_DSN_SECRET", "dsn"),
            key_secret=secret("MEDSERVE_AUDIT_KEY_SECRET", "key"),
            redis_secret=secret("MEDSERVE_REDIS_SECRET", "url"),
            spool_persistent=(env.get("MEDSERVE_AUDIT_SPOOL_PERSISTENT") or "").lower() in {"1", "true", "yes"},
            spool_storage_class=env.get("MEDSERVE_AUDIT_SPOOL_STORAGE_CLASS") or None,
            spool_size=env.get("MEDSERVE_AUDIT_SPOOL_SIZE") or DEFAULT_SPOOL_SIZE,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorConfig:
    mlflow_uri: str
    """Where the operator reaches the MLflow registry."""
    runtime_mlflow_uri: str
    """Where model-runtime pods reach MLflow (often an in-cluster Service, unlike the operator's)."""
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    resync_seconds: float = 30.0
    """How often each object is looked at again without an event (alias moves, registry retries)."""
    resync_concurrency: int = 8
    """At most this many resyncs of one kind at once (`kit/resync.py`): with more objects than that
    concurrency gets through in `resync_seconds`, each is looked at as often as it allows."""
    registry_timeout: float = 5.0
    prometheus_url: str | None = None
    """Where the operator queries Prometheus for drift and accuracy; None turns that evaluation off (the
    DriftDetected condition then says PrometheusNotConfigured)."""
    metrics_address: str | None = None
    """HOST:PORT where the operator serves its own /metrics (`state_metrics`); None serves none."""
    deployment_mode: DeploymentMode = DEFAULT_DEPLOYMENT_MODE
    """The KServe deployment mode of ModelDeployments whose spec.runtime.deploymentMode is unset."""
    router_headers_propagate: tuple[str, ...] | None = None
    """The cluster's KServe `router.headers.propagate` (inferenceservice-config ConfigMap), mirrored so that
    an ABTest can say whether the arms' API keys reach them (HeadersPropagated); None: the key is absent,
    as in KServe's default config, and the router forwards no header."""
    graph_drain_seconds: float = 30.0
    """How long a router pod keeps answering after it is told to stop (KServe's router: drainSleepDuration);
    an arm is removed only this long after every router pod routes away from it."""
    runtime_peer_url_template: str = "http://{arm}-predictor.{namespace}.svc.cluster.local"
    """Where one arm reaches another for feedback on its predictions: KServe's in-cluster predictor
    Service of the InferenceService named {arm} (the ModelDeployment), in the same namespace."""
    audit: AuditDefaults = dataclasses.field(default_factory=AuditDefaults)
    """Audit database, audit key, Redis and spool for ModelDeployments that name none."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        mlflow_uri = env.get("MEDSERVE_MLFLOW_URI") or env.get("MLFLOW_TRACKING_URI") or "http://mlflow:5000"
        return cls(
            mlflow_uri=mlflow_uri,
            runtime_mlflow_uri=env.get("MEDSERVE_RUNTIME_MLFLOW_URI") or mlflow_uri,
            runtime_image=env.get("MEDSERVE_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
            resync_seconds=float(env.get("MEDSERVE_RESYNC_SECONDS") or 30.0),
            resync_concurrency=int(env.get("MEDSERVE_RESYNC_CONCURRENCY") or 8),
            registry_timeout=float(env.get("MEDSERVE_REGISTRY_TIMEOUT") or 5.0),
            prometheus_url=env.get("MEDSERVE_PROMETHEUS_URL") or None,
            metrics_address=env.get("MEDSERVE_METRICS_ADDRESS") or None,
            deployment_mode=deployment_mode(env.get("MEDSERVE_DEPLOYMENT_MODE") or DEFAULT_DEPLOYMENT_MODE),
            router_headers_propagate=_patterns(env.get("MEDSERVE_ROUTER_HEADERS_PROPAGATE")),
            graph_drain_seconds=float(env.get("MEDSERVE_GRAPH_DRAIN_SECONDS") or 30.0),
            runtime_peer_url_template=env.get("MEDSERVE_RUNTIME_PEER_URL_TEMPLATE")
            or "http://{arm}-predictor.{namespace}.svc.cluster.local",
            audit=AuditDefaults.from_env(env),
        )


def _patterns(value: str | None) -> tuple[str, ...] | None:
    """MEDSERVE_ROUTER_HEADERS_PROPAGATE: comma-separated, as KServe joins them; unset: no propagate key."""
    return None if value is None else tuple(value.split(",")) if value else ()
