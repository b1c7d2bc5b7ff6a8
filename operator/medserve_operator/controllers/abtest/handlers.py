"""The ABTest's kopf handlers: thin, each hands the object to `reconcile`."""

from __future__ import annotations

from typing import Any

import kopf

from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.abtest import render
from medserve_operator.controllers.abtest.reconcile import KIND, Runtime, reconcile
from medserve_operator.kit.reconciler import managed, reconcile_parent, register_kind

MEMO_KEY = "abtest"


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the ABTest handlers into `registry` (nothing is registered at import time)."""
    register_kind(registry, config, KIND, memo_key=MEMO_KEY, prefix="ab", reconcile=reconcile, forget=Runtime.forget)
    group, version = render.INFERENCE_GRAPH.api_version.split("/")

    @kopf.on.event(group, version, render.INFERENCE_GRAPH.plural, registry=registry,
                   labels=managed(**{render.ABTEST_LABEL: kopf.PRESENT}))
    async def graph_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger,
                            **_: Any) -> None:
        if type != "DELETED" and not body.get("status"):
            return  # our own write; only KServe's report (or a deletion) needs the ABTest looked at now
        await reconcile_parent(memo[MEMO_KEY], KIND, reconcile, str(body.metadata.namespace),
                               str(body.metadata.labels.get(render.ABTEST_LABEL)), logger)
