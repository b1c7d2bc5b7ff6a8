"""Promotion of a concluded ABTest's winner, from the test's typed decision.

With `onConclusion.promote` a winning treatment (`TreatmentBetter`, or `NonInferior` under the
non-inferiority hypothesis) is promoted: a control that follows an MLflow alias gets the alias moved to the
treatment's version (the control's spec is not touched; its reconciler follows the alias). A control that
pins a version is owned by Git, where a GitOps tool (ArgoCD self-heal) would revert any edit the operator
made: by default the test only records what to change (`status.recommendation`, `Promoted=False
reason=PromotionRecommended`, an Event); with `onConclusion.pinVersion` it patches the control's
`spec.model` (the ModelDeployment reconciler then rolls it out as a canary). The `Promoted` condition and
an Event record the decision and the data window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from medserve_operator.api import abtest as ab
from medserve_operator.api import modeldeployment as md
from medserve_operator.api.abtest import ABTestSpec
from medserve_operator.api.common import API_VERSION, MODEL_DEPLOYMENT_NOT_FOUND
from medserve_operator.clients.kube import ApiError, KubeClient
from medserve_operator.clients.mlflow import MlflowRegistry, RegistryError
from medserve_operator.kit.conditions import Check
from medserve_operator.kit.reconciler import Context


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm as its ModelDeployment reports it."""

    role: str
    deployment: str
    body: dict[str, Any] | None

    @property
    def status(self) -> dict[str, Any]:
        return dict((self.body or {}).get("status") or {})

    @property
    def service(self) -> str | None:
        return self.status.get("inferenceService")

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.status.get("model") or {})


@dataclasses.dataclass(frozen=True)
class Promotion:
    """What promotion decided: the Promoted condition, and the change left to Git when it made none."""

    condition: Check
    recommendation: dict[str, str] | None = None
    """status.recommendation (camelCase keys), with reason PromotionRecommended."""


async def promote(kube: KubeClient, registry: MlflowRegistry, ctx: Context, spec: ABTestSpec, control: Arm,
                  treatment: Arm, decision: ab.Decision | None, versions: Mapping[str, Any],
                  window: str) -> Promotion:
    """The Promoted condition for `decision`, after acting on it when the treatment won and may be promoted."""
    if decision not in ab.WINNING:
        return Promotion(("False", ab.CONTROL_KEPT, f"decision {decision}: {control.deployment} keeps version "
                                                    f"{versions.get('control')} ({window})"))
    if not spec.on_conclusion.promote:
        return Promotion(("False", ab.PROMOTION_DISABLED,
                          f"decision {decision}, but onConclusion.promote is false: {control.deployment} keeps "
                          f"version {versions.get('control')}"))
    if control.body is None or treatment.body is None:
        missing = control if control.body is None else treatment
        return Promotion(("False", MODEL_DEPLOYMENT_NOT_FOUND,
                          f"decision {decision}, but the {missing.role} ModelDeployment {missing.deployment} does "
                          "not exist: promotion waits for it"))
    return await _apply_promotion(kube, registry, ctx, spec, control, treatment, str(versions.get("treatment")),
                                  decision, window)


async def _apply_promotion(kube: KubeClient, registry: MlflowRegistry, ctx: Context, spec: ABTestSpec, control: Arm,
                           treatment: Arm, version: str, decision: str, window: str) -> Promotion:
    control_model = ((control.body or {}).get("spec") or {}).get("model") or {}
    model_name = str(treatment.model.get("name") or control_model.get("name"))
    alias = control_model.get("alias")
    follows_alias = bool(alias) and control_model.get("name") == model_name
    if not follows_alias and not spec.on_conclusion.pin_version:
        return Promotion(
            ("False", ab.PROMOTION_RECOMMENDED,
             f"decision {decision}: promote {control.deployment} to version {version} of {model_name} by setting "
             f'its spec.model to name {model_name}, version "{version}" in Git (the operator does not edit a '
             "pinned ModelDeployment unless onConclusion.pinVersion is true)"),
            {"modelDeployment": control.deployment, "model": model_name, "version": version,
             "reason": f"decision {decision} of ABTest {ctx.name} ({window})"})
    try:
        if follows_alias:
            await registry.set_alias(model_name, str(alias), version)
            return Promotion(("True", ab.ALIAS_MOVED,
                              f"decision {decision}: alias {alias} of {model_name} now points at version "
                              f"{version}, which {control.deployment} serves next ({window})"))
        await kube.patch(API_VERSION, md.PLURAL, ctx.namespace, control.deployment,
                         {"spec": {"model": {"name": model_name, "version": version, "alias": None}}})
    except (RegistryError, ApiError) as exc:
        ctx.logger.warning("Promotion of version %s failed: %s", version, exc)
        return Promotion(("False", ab.PROMOTION_FAILED, f"decision {decision}; promoting version {version} failed, "
                                                        f"retrying: {exc}"))
    return Promotion(("True", ab.VERSION_PINNED,
                      f"decision {decision}: {control.deployment} pinned to version {version} of {model_name} "
                      f"(onConclusion.pinVersion), rolled out as a canary ({window})"))
