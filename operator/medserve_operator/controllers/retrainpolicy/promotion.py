"""How a retrained model version reaches production: the three promotion strategies, and following the ABTest.

`manual` only records the version (Event `NewVersionAvailable`); `direct` deploys it at once: a
ModelDeployment that follows an MLflow alias gets the alias moved to it (`AliasMoved`; its reconciler follows
the alias, its spec is not touched). One that pins a version is owned by Git, where a GitOps tool (ArgoCD
self-heal) would revert an edit: by default the policy records what to change (`status.recommendation`,
`Promoted=False reason=PromotionRecommended`, an Event); with `promotion.pinVersion` it pins the
ModelDeployment's `spec.model` to the version (`DirectPromotion`; its reconciler rolls it out as a canary).

`abtest` closes the loop through an A/B test: it creates a challenger ModelDeployment on the new version (the
champion's spec, pinned to it) and an ABTest champion vs challenger from `promotion.abTest` with
`onConclusion.promote` and `onConclusion.pinVersion` as `promotion.pinVersion` says, both owned by the policy
(the operator's own objects, not Git's), and records them in `status.abTest` (`Promoted=False
reason=ABTestRunning`). When the ABTest has concluded and acted, `follow_abtest` records the outcome —
`Promoted=True reason=ABTestWon` (the ABTest moved the champion to the new version), `Promoted=False
reason=PromotionRecommended` with the ABTest's recommendation (the champion pins a version and the policy did
not opt in), or `Promoted=False reason=ABTestLost`/`ABTestInconclusive` with the ABTest's statistics — and
removes the challenger, in this order: the ABTest routes all traffic to the champion, waits until every
pod of KServe's router does (its Deployment or Knative Service, not the graph's status, says so), then for
the router's drain time, and reports `TreatmentReleased=True`; only then is the challenger deleted, so
that no request through the split reaches an arm that is gone. The concluded ABTest stays as the record (its graph sends
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
from medserve_operator.clients.mlflow import MlflowRegistry
from medserve_operator.controllers.retrainpolicy import render
from medserve_operator.controllers.retrainpolicy.status import Outcome
from medserve_operator.kit import conditions
from medserve_operator.kit.apply import ChildKind, create_child, get_child
from medserve_operator.kit.reconciler import Context

MODEL_DEPLOYMENTS = ChildKind(API_VERSION, md.PLURAL)
ABTESTS = ChildKind(API_VERSION, ab.PLURAL)

Strategy = Callable[[KubeClient, MlflowRegistry, Context, RetrainPolicySpec, dict[str, Any], str, str, str, Outcome],
                    Awaitable[None]]
"""(kube, registry, ctx, spec, deployment, model name, version, job, outcome): promote `version` of the
deployment's model."""


async def promote(kube: KubeClient, registry: MlflowRegistry, ctx: Context, spec: RetrainPolicySpec,
                  deployment: dict[str, Any] | None, model_name: str, version: str, job: str,
                  outcome: Outcome) -> None:
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
    await STRATEGIES[strategy](kube, registry, ctx, spec, deployment, model_name, version, job, outcome)


async def promote_directly(kube: KubeClient, registry: MlflowRegistry, ctx: Context, spec: RetrainPolicySpec,
                           deployment: dict[str, Any], model_name: str, version: str, job: str,
                           outcome: Outcome) -> None:
    target = spec.model_deployment
    current = (deployment.get("spec") or {}).get("model") or {}
    alias = current.get("alias")
    if alias and current.get("name") == model_name:
        # A RegistryError goes to kopf's retry: the status is not written, so the next try finds the Job again.
        await registry.set_alias(model_name, str(alias), version)
        outcome.promoted = ("True", rp.ALIAS_MOVED, f"alias {alias} of {model_name} now points at version "
                                                    f"{version}, which ModelDeployment {target} serves next")
        outcome.event(rp.PROMOTED_EVENT, f"alias {alias} of {model_name} moved to version {version} (from Job {job}); "
                                         f"ModelDeployment {target} follows it")
        return
    if not spec.promotion.pin_version:
        message = (f"version {version} of {model_name} (from Job {job}) is ready: set spec.model to name "
                   f'{model_name}, version "{version}" on ModelDeployment {target} in Git (the operator does not '
                   "edit a pinned ModelDeployment unless promotion.pinVersion is true)")
        outcome.promoted = ("False", rp.PROMOTION_RECOMMENDED, message)
        outcome.recommendation = {"modelDeployment": target, "model": model_name, "version": version,
                                  "reason": f"Job {job} registered it (promotion strategy direct)"}
        outcome.event(rp.PROMOTION_RECOMMENDED, message)
        return
    if current.get("name") != model_name or current.get("version") != version or alias:
        # A merge patch replaces the version and removes an alias in one write.
        await kube.patch(MODEL_DEPLOYMENTS.api_version, MODEL_DEPLOYMENTS.plural, deployment["metadata"]["namespace"],
                         target, {"spec": {"model": {"name": model_name, "version": version, "alias": None}}})
    outcome.promoted = ("True", rp.DIRECT_PROMOTION,
                        f"ModelDeployment {target} pinned to version {version} of {model_name} (promotion.pinVersion; "
                        "rolled out as a canary)")
    outcome.event(rp.PROMOTED_EVENT, f"ModelDeployment {target} now deploys version {version} of {model_name} "
                                     f"(from Job {job})")


async def start_abtest(kube: KubeClient, registry: MlflowRegistry, ctx: Context, spec: RetrainPolicySpec,
                       deployment: dict[str, Any], model_name: str, version: str, job: str, outcome: Outcome) -> None:
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
    if test is not None and not conditions.is_true(test_status.get("conditions"), ab.TREATMENT_RELEASED):
        # The graph may still send requests to the challenger: deleting it now answers them 502.
        return True
    version, decision = record.get("modelVersion"), test_status.get("decision")
    if test is None:
        won, reason, message = False, rp.ABTEST_DELETED, f"ABTest {record['name']} was deleted before it decided"
    elif acted is not None and acted.get("status") == "True":
        won, reason = True, rp.ABTEST_WON
        message = f"version {version} won ABTest {record['name']}: {acted['message']}"
    elif acted is not None and acted.get("reason") == ab.PROMOTION_RECOMMENDED:
        won, reason = False, rp.PROMOTION_RECOMMENDED
        message = f"version {version} won ABTest {record['name']}: {acted['message']}"
        outcome.recommendation = test_status.get("recommendation")
    else:
        concluded = conditions.find(test_status.get("conditions"), ab.CONCLUDED) or {}
        won, reason = False, rp.ABTEST_LOST if decision == ab.CONTROL_BETTER else rp.ABTEST_INCONCLUSIVE
        message = f"version {version} is not promoted: ABTest {record['name']} decided {concluded.get('message')}"
    outcome.promoted = ("True" if won else "False", reason, message)
    outcome.ab_test = {**record, "promoted": won, **({"decision": decision} if decision else {})}
    outcome.event(rp.PROMOTED_EVENT if won else rp.PROMOTION_RECOMMENDED if reason == rp.PROMOTION_RECOMMENDED
                  else rp.NOT_PROMOTED_EVENT, message)
    if await kube.delete(MODEL_DEPLOYMENTS.api_version, MODEL_DEPLOYMENTS.plural, ctx.namespace,
                         str(record["challenger"])):
        outcome.event(rp.CHALLENGER_REMOVED, f"ModelDeployment {record['challenger']} deleted")
    return False
