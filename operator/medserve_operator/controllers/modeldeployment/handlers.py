"""The ModelDeployment's kopf handlers: thin, each hands the object to `reconcile`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from medserve_operator.api import modeldeployment as md
from medserve_operator.clients.mlflow import ModelNotFound
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.modeldeployment import render
from medserve_operator.controllers.modeldeployment.reconcile import KIND, Runtime, reconcile
from medserve_operator.controllers.modeldeployment.status import Outcome
from medserve_operator.kit import Logger
from medserve_operator.kit.manifest import MODEL_DEPLOYMENT_LABEL
from medserve_operator.kit.reconciler import managed, reconcile_parent, register_kind

MEMO_KEY = "runtime"


async def changed(rt: Runtime, body: kopf.Body, logger: Logger, retry: int) -> Outcome:
    """A creation, a spec change or the operator's resume; a model that cannot be resolved is retried."""
    outcome = await reconcile(rt, body, logger, periodic=False)
    if outcome.spec_error is None and outcome.resolved is None and outcome.resolution_error is not None:
        if isinstance(outcome.resolution_error, ModelNotFound):
            raise kopf.PermanentError(str(outcome.resolution_error))
        raise kopf.TemporaryError(str(outcome.resolution_error), delay=min(300.0, 2.0 * 2 ** retry))
    return outcome


async def resync(rt: Runtime, body: Mapping[str, Any], logger: Logger) -> Outcome:
    """The periodic look (and a child's event): drift and accuracy are evaluated on this path."""
    return await reconcile(rt, body, logger, periodic=True)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the ModelDeployment handlers into `registry` (nothing is registered at import time)."""
    register_kind(registry, config, KIND, memo_key=MEMO_KEY, prefix="md", reconcile=resync, changed=changed,
                  forget=Runtime.forget)
    group, version = render.INFERENCE_SERVICE.api_version.split("/")

    @kopf.on.event(group, version, render.INFERENCE_SERVICE.plural, registry=registry,
                   labels=managed(**{MODEL_DEPLOYMENT_LABEL: kopf.PRESENT}))
    async def isvc_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger,
                           **_: Any) -> None:
        owner = next((ref for ref in body.metadata.get("ownerReferences", [])
                      if ref.get("kind") == md.KIND and ref.get("apiVersion") == KIND.resource.api_version), None)
        if owner is None:
            return
        if type == "DELETED" or body.get("status"):
            # Only a status change (KServe reporting) or a deletion needs the parent looked at now; spec drift
            # is corrected by the periodic resync.
            await reconcile_parent(memo[MEMO_KEY], KIND, resync, str(body.metadata.namespace), owner["name"], logger,
                                   uid=owner.get("uid"))
