"""The RetrainPolicy's kopf handlers: thin, each hands the policy to `reconcile`."""

from __future__ import annotations

from typing import Any

import kopf

from medserve_operator.api import abtest as ab
from medserve_operator.api.common import GROUP, VERSION
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.retrainpolicy import render
from medserve_operator.controllers.retrainpolicy.reconcile import KIND, Runtime, reconcile
from medserve_operator.kit.manifest import RETRAIN_POLICY_LABEL
from medserve_operator.kit.reconciler import managed, reconcile_parent, register_kind

MEMO_KEY = "retrain"


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the RetrainPolicy handlers into `registry` (nothing is registered at import time)."""
    register_kind(registry, config, KIND, memo_key=MEMO_KEY, prefix="rtp", reconcile=reconcile,
                  forget=Runtime.forget)
    group, version = render.JOBS.api_version.split("/")
    children = managed(**{RETRAIN_POLICY_LABEL: kopf.PRESENT})

    @kopf.on.event(group, version, render.JOBS.plural, registry=registry, labels=children)
    @kopf.on.event(GROUP, VERSION, ab.PLURAL, registry=registry, labels=children)
    async def child_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        # The label, not the owner: a Job the CronJob started is owned by the CronJob.
        await reconcile_parent(memo[MEMO_KEY], KIND, reconcile, str(body.metadata.namespace),
                               str(body.metadata.labels.get(RETRAIN_POLICY_LABEL)), logger)
