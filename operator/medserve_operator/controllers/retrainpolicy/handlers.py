"""The RetrainPolicy's kopf handlers: thin, each hands the policy to `reconcile`."""

from __future__ import annotations

from typing import Any

import kopf

from medserve_operator.api import abtest as ab
from medserve_operator.api.common import GROUP, VERSION
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.retrainpolicy import render
from medserve_operator.controllers.retrainpolicy.reconcile import KIND, Runtime, reconcile
from medserve_operator.controllers.retrainpolicy.status import Outcome
from medserve_operator.kit import Logger
from medserve_operator.kit.manifest import RETRAIN_POLICY_LABEL
from medserve_operator.kit.reconciler import live_parent, managed, register_kind

MEMO_KEY = "retrain"


async def changed(rt: Runtime, body: kopf.Body, logger: Logger, retry: int) -> Outcome:
    return await reconcile(rt, body, logger)


async def resync(rt: Runtime, body: kopf.Body, logger: Logger) -> Outcome:
    return await reconcile(rt, body, logger)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the RetrainPolicy handlers into `registry` (nothing is registered at import time)."""
    register_kind(registry, config, KIND, memo_key=MEMO_KEY, prefix="rtp", changed=changed, resync=resync,
                  forget=Runtime.forget)
    group, version = render.JOBS.api_version.split("/")

    @kopf.on.event(group, version, render.JOBS.plural, registry=registry,
                   labels=managed(**{RETRAIN_POLICY_LABEL: kopf.PRESENT}))
    @kopf.on.event(GROUP, VERSION, ab.PLURAL, registry=registry,
                   labels=managed(**{RETRAIN_POLICY_LABEL: kopf.PRESENT}))
    async def child_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        # The label, not the owner: a Job the CronJob started is owned by the CronJob.
        rt: Runtime = memo[MEMO_KEY]
        parent = await live_parent(rt.kube, KIND, str(body.metadata.namespace),
                                   str(body.metadata.labels.get(RETRAIN_POLICY_LABEL)))
        if parent is not None:
            await reconcile(rt, parent, logger)
