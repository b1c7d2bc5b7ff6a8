"""`medserve operator`: run the medserve operator (kopf) against the current kubeconfig or in-cluster.

Configuration comes from the environment (see `OperatorConfig`); the clients are built at start-up,
never at import, and handed to the handlers through kopf's memo.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any, cast

import kopf

from medserve_operator import state_metrics
from medserve_operator.clients.kube import KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry
from medserve_operator.clients.prometheus import PrometheusClient
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers import abtest, modeldeployment, retrainpolicy
from medserve_operator.controllers.modeldeployment.monitoring import Monitor

logger = logging.getLogger("medserve.operator")


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's AnnotationsDiffBaseStorage, its essence built from the parts it keeps.

    kopf's `DiffBaseStorage.build` (kopf/_cogs/configs/diffbase.py) deep-copies the whole body, then
    deletes `metadata` and `status` and copies labels and annotations back, on every event of every
    object. At N = 1,000 ModelDeployments that copy of status and managedFields, only to drop them, was a
    tenth of the operator's CPU (benchmarks/operator_scale.py under py-spy). Handed the body without them,
    kopf's own build makes the same essence (test_diffbase holds the two equal).
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        fields = list(extra_fields or ())  # the handlers' `field=`s: "spec" or ("spec",) for ours
        if any((field.split(".")[0] if isinstance(field, str) else field[0]) in ("metadata", "status")
               for field in fields):
            return super().build(body=body, extra_fields=fields)  # a handler on one of their fields
        metadata = body.get("metadata") or {}
        slim = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        # labels and annotations are kept; ownerReferences name the annotation key (kopf's mark_key)
        slim["metadata"] = {key: metadata[key] for key in ("labels", "annotations", "ownerReferences")
                            if key in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, slim)), extra_fields=fields)


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A kopf registry holding every medserve handler plus the start-up settings."""
    registry = kopf.OperatorRegistry()
    collector = state_metrics.StateCollector()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="medserve.io")
        settings.persistence.diffbase_storage = DiffBaseStorage(prefix="medserve.io",
                                                                key="last-handled-configuration")
        settings.persistence.finalizer = "medserve.io/finalizer"
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        if config.metrics_address:
            state_metrics.serve(collector, config.metrics_address)
        # The clients, built once and shared by the three controllers (closed at cleanup).
        kube = KubeClient.from_environment()
        registry_client = MlflowRegistry(config.mlflow_uri, timeout=config.registry_timeout)
        prometheus = PrometheusClient(config.prometheus_url) if config.prometheus_url else None
        memo.clients = (kube, registry_client, prometheus)
        memo.runtime = modeldeployment.Runtime(
            config=config, kube=kube, registry=registry_client,
            monitor=Monitor(prometheus, registry_client) if prometheus is not None else None,
        )
        memo.retrain = retrainpolicy.Runtime(
            config=config, kube=kube, registry=registry_client,
            query_value=prometheus.value if prometheus is not None else None,
        )
        memo.abtest = abtest.Runtime(config=config, kube=kube, registry=registry_client, prometheus=prometheus)
        logger.info("medserve operator started: registry %s, prometheus %s, resync every %ss, metrics %s",
                    config.mlflow_uri, config.prometheus_url or "(none: drift is not evaluated)",
                    config.resync_seconds, config.metrics_address or "(not served)")

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # kopf's own loaders: no Kubernetes client library needed (and none is loaded).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    modeldeployment.register(registry, config)
    retrainpolicy.register(registry, config)
    abtest.register(registry, config)
    state_metrics.register(registry, collector)

    # Registered after the kinds: their resync loops stop (cleanup handlers run in order) before this closes
    # the clients they use.
    @kopf.on.cleanup(registry=registry)
    async def close(memo: kopf.Memo, **_: Any) -> None:
        kube, registry_client, prometheus = memo.get("clients") or (None, None, None)
        for client in (kube, registry_client, prometheus):
            if client is not None:
                await client.aclose()
    return registry


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medserve operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all namespaces")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per HTTP request would drown the operator's own log (and cost CPU at scale).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    config = OperatorConfig.from_env()
    asyncio.run(kopf.operator(
        registry=build_registry(config),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(),
    ))
    return 0
