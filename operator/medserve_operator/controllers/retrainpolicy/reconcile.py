"""The RetrainPolicy reconciler: schedule → CronJob, triggers → Job, finished Job → new model version → promotion.

`reconcile` runs, under the kit's locked prologue and epilogue (`kit.reconciler.reconcile_object`), the
named steps: read the ModelDeployment and the policy's Jobs; record a finished Job and promote the version
it registered (jobs.py, promotion.py); follow the policy's ABTest; note an active Job, or else gate and
evaluate the triggers and start a Job when one fires (triggers.py); apply (or delete) the CronJob. A spec
change, the operator's restart, the periodic resync and every event on one of the policy's Jobs or ABTests
run the same idempotent function.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from medserve_operator.api import retrainpolicy as rp
from medserve_operator.api.retrainpolicy import RetrainPolicySpec
from medserve_operator.clients.kube import KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry
from medserve_operator.config import OperatorConfig
from medserve_operator.controllers.retrainpolicy import jobs, promotion
from medserve_operator.controllers.retrainpolicy.status import Outcome, compute_status, had_schedule
from medserve_operator.controllers.retrainpolicy.triggers import QueryValue, evaluate_triggers
from medserve_operator.kit import Logger
from medserve_operator.kit.apply import get_child
from medserve_operator.kit.reconciler import Context, Kind, reconcile_object
from medserve_operator.kit.status import ObjectMemory, Resource

KIND = Kind(Resource(rp.PLURAL, rp.CONDITIONS), RetrainPolicySpec)


@dataclasses.dataclass
class Runtime:
    """What the handlers share: configuration, API/registry/Prometheus clients, per-object bookkeeping."""

    config: OperatorConfig
    kube: KubeClient
    registry: MlflowRegistry
    query_value: QueryValue | None
    """None when no Prometheus is configured: the performance and query triggers cannot be evaluated."""
    memory: ObjectMemory = dataclasses.field(default_factory=ObjectMemory)

    def forget(self, uid: str) -> None:
        self.memory.forget(uid)


async def reconcile(rt: Runtime, body: Mapping[str, Any], logger: Logger) -> Outcome:
    """Bring the CronJob, the Jobs and the status in line with the RetrainPolicy `body`."""

    async def steps(ctx: Context, spec: RetrainPolicySpec, outcome: Outcome) -> None:
        outcome.spec = spec
        deployment = await get_child(rt.kube, promotion.MODEL_DEPLOYMENTS, ctx.namespace, spec.model_deployment)
        outcome.deployment_found = deployment is not None
        model_name = str(((deployment or {}).get("spec") or {}).get("model", {}).get("name") or "")
        mlflow_uri = rt.config.runtime_mlflow_uri

        found = await jobs.list_jobs(rt.kube, ctx)
        registered = await jobs.record_finished(rt.registry, ctx, found, outcome)
        if registered is not None:
            await promotion.promote(rt.kube, rt.registry, ctx, spec, deployment, *registered, outcome)
        ab_running = await promotion.follow_abtest(rt.kube, ctx, outcome.ab_test or ctx.status.get("abTest"),
                                                   outcome)
        if not jobs.note_active(found, ctx, outcome) and not ab_running:
            result = await evaluate_triggers(spec, deployment, ctx.namespace, ctx.status.get("lastTriggered"),
                                             outcome.now, rt.query_value)
            outcome.triggers = result.condition
            if result.fired is not None and model_name:
                await jobs.start_job(rt.kube, ctx, spec, model_name, mlflow_uri, result.fired, outcome)
            elif result.fired is not None:
                outcome.job_error = f"ModelDeployment {spec.model_deployment} names no model: cannot retrain it"

        if spec.schedule is not None and deployment is not None:
            await jobs.apply_cronjob(rt.kube, ctx, spec, model_name, mlflow_uri,
                                     suspend=outcome.active_job is not None, outcome=outcome)
        elif spec.schedule is None and had_schedule(ctx.status):
            await jobs.delete_cronjob(rt.kube, ctx, outcome)

    return await reconcile_object(
        rt, KIND, body, logger, Outcome(now=datetime.datetime.now(datetime.UTC).replace(microsecond=0)),
        steps=steps, status=lambda ctx, outcome: compute_status(ctx.status, outcome, generation=ctx.generation))
