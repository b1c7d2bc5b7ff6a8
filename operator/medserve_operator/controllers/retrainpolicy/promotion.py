"""How a retrained model version reaches production: the three promotion strategies, and following the ABTest.

`manual` only records the version (Event `NewVersionAvailable`); `direct` pins the ModelDeployment's
`spec.model` to it (the ModelDeployment reconciler then rolls it out as a canary); `abtest` closes the loop
through an A/B test: it creates a challenger ModelDeployment on the new version (the champion's spec, pinned
to it) and an ABTest champion vs challenger from `promotion.abTest` with `onConclusion.promote`, both owned by
the policy, and records them in `status.abTest` (`Promoted=False reason=ABTestRunning`). When the ABTest has
concluded and acted, `follow_abtest` records the outcome — `Promoted=True reason=ABTestWon` (the ABTest moved
the champion to the new version), or `Promoted=False reason=ABTestLost`/`ABTestInconclusive` with the
ABTest's statistics — and removes the challenger. The concluded ABTest stays as the record (its graph sends
all traffic to the champion). While an ABTest runs, no trigger starts another Job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from medserve_operator.api import abtest as ab
from medserve_operator.api import modeldeployment as md
from medserve_operator.api import retrainpolicy as rp
from medserve_operator.api.common import API_VERSION, MODEL_DEPLOYMENT_NOT_FOUND
from medserve_operator.api.retrainpolicy import RetrainPolicySpec
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.controllers.retrainpolicy import render
from medserve_operator.controllers.retrainpolicy.status import Outcome
from medserve_operator.kit import conditions
from medserve_operator.kit.apply import ChildKind, create_child, get_child
from medserve_operator.kit.reconciler import Context

MODEL_DEPLOYMENTS = ChildKind(API_VERSION, md.PLURAL)
ABTESTS = ChildKind(API_VERSION, ab.PLURAL)

Strategy = Callable[[KubeClient, Context, RetrainPolicySpec, dict[str, Any], str, str, str, Outcome],
                    Awaitable[None]]
"""(kube, ctx, spec, deployment, model name, version, job, outcome): promote `version` of the deployment's model."""


async def promote(kube: KubeClient, ctx: Context, spec: RetrainPolicySpec, deployment: dict[str, Any] | None,
                  model_name: str, version: str, job: str, outcome: Outcome) -> None:
    """Promote the version a Job registered, as `spec.promotion.strategy` says."""
    strategy, target = spec.promotion.strategy, spec.model_deployment
    if strategy == "manual":
        outcome.promoted = ("False", rp.MANUAL_PROMOTION,
                            f"version {version} of {model_name} awaits promotion by hand: set spec.model.version "
                            f'to "{version}" on ModelDeployment {target}')
        outcome.event(rp.NEW_VERSION_AVAILABLE,
                      f"Job {job} registered version {version} of {model_name}; promotion is manual")
        return
    if deployment is None:
        outcome.promoted = ("False", MODEL_DEPLOYMENT_NOT_FOUND,
                            f"version {version} cannot be deployed: ModelDeployment {target} does not exist")
        return
    await STRATEGIES[strategy](kube, ctx, spec, deployment, model_name, version, job, outcome)


async def promote_directly(kube: KubeClient, ctx: Context, spec: RetrainPolicySpec, deployment: dict[str, Any],
                           model_name: str, version: str, job: str, outcome: Outcome) -> None:
    target = spec.model_deployment
    current = (deployment.get("spec") or {}).get("model") or {}
    if current.get("name") != model_name or current.get("version") != version or current.get("alias"):
        # A merge patch replaces the version and removes an alias in one write.
        await kube.patch(MODEL_DEPLOYMENTS.api_version, MODEL_DEPLOYMENTS.plural, deployment["metadata"]["namespace"],
                         target, {"spec": {"model": {"name": model_name, "version": version, "alias": None}}})
    outcome.promoted = ("True", rp.DIRECT_PROMOTION,
                        f"ModelDeployment {target} pinned to version {version} of {model_name} (rolled out as a "
                        "canary)")
    outcome.event(rp.PROMOTED_EVENT, f"ModelDeployment {target} now deploys version {version} of {model_name} "
                                     f"(from Job {job})")


async def start_abtest(kube: KubeClient, ctx: Context, spec: RetrainPolicySpec, deployment: dict[str, Any],
                       model_name: str, version: str, job: str, outcome: Outcome) -> None:
    challenger = render.render_challenger(policy=ctx.name, uid=ctx.uid, deployment=deployment,
                                          model_name=model_name, version=version)
    name = challenger["metadata"]["name"]
    test = render.render_abtest(policy=ctx.name, uid=ctx.uid, namespace=ctx.namespace, spec=spec,
                                challenger=name, version=version)
    try:
        # Already there (None): an earlier reconciliation created it.
        await create_child(kube, MODEL_DEPLOYMENTS, challenger)
        await create_child(kube, ABTESTS, test)
    except ApiError as exc:
        outcome.promoted = ("False", rp.ABTEST_FAILED, f"version {version} cannot be A/B tested: {exc}")
        return
    outcome.ab_test = {"name": test["metadata"]["name"], "challenger": name, "modelVersion": version}
    outcome.promoted = ("False", rp.ABTEST_RUNNING,
                        f"ABTest {test['metadata']['name']} compares version {version} of {model_name} "
                        f"(ModelDeployment {name}) with {spec.model_deployment}")
    outcome.event(rp.ABTEST_STARTED, f"created ModelDeployment {name} on version {version} and ABTest "
                                     f"{test['metadata']['name']} ({spec.model_deployment} vs {name})")


STRATEGIES: dict[str, Strategy] = {"direct": promote_directly, "abtest": start_abtest}


async def follow_abtest(kube: KubeClient, ctx: Context, record: Mapping[str, Any] | None, outcome: Outcome) -> bool:
    """Record the outcome of the policy's ABTest once it has concluded and acted; True while it runs."""
    if not record or record.get("promoted") is not None:
        return False
    test = await get_child(kube, ABTESTS, ctx.namespace, str(record["name"]))
    test_status = (test or {}).get("status") or {}
    acted = conditions.find(test_status.get("conditions"), ab.PROMOTED)
    if test is not None and (acted is None or acted.get("reason") in ab.RETRY_PROMOTION):
        return True
    version, decision = record.get("modelVersion"), test_status.get("decision")
    if test is None:
        won, reason, message = False, rp.ABTEST_DELETED, f"ABTest {record['name']} was deleted before it decided"
    elif acted is not None and acted.get("status") == "True":
        won, reason = True, rp.ABTEST_WON
        message = f"version {version} won ABTest {record['name']}: {acted['message']}"
    else:
        concluded = conditions.find(test_status.get("conditions"), ab.CONCLUDED) or {}
        won, reason = False, rp.ABTEST_LOST if decision == ab.CONTROL_BETTER else rp.ABTEST_INCONCLUSIVE
        message = f"version {version} is not promoted: ABTest {record['name']} decided {concluded.get('message')}"
    outcome.promoted = ("True" if won else "False", reason, message)
    outcome.ab_test = {**record, "promoted": won, **({"decision": decision} if decision else {})}
    outcome.event(rp.PROMOTED_EVENT if won else rp.NOT_PROMOTED_EVENT, message)
    if await kube.delete(MODEL_DEPLOYMENTS.api_version, MODEL_DEPLOYMENTS.plural, ctx.namespace,
                         str(record["challenger"])):
        outcome.event(rp.CHALLENGER_REMOVED, f"ModelDeployment {record['challenger']} deleted")
    return False
