"""The ModelDeployment controller: MLflow registry → KServe InferenceService → status, drift and accuracy.

- `handlers`: the thin kopf handlers (`register`);
- `reconcile`: `Runtime` and `reconcile`, as named steps (resolve → decide_rollout → apply → evaluate);
- `status`: the status, serialised in one place from the reconciliation's `Outcome`;
- `render`: the pure InferenceService builder;
- `monitoring`: drift and accuracy of the served version, from Prometheus and the reference profile.
"""

from medserve_operator.controllers.modeldeployment.handlers import register
from medserve_operator.controllers.modeldeployment.reconcile import KIND, Rollout, Runtime, decide_rollout, reconcile
from medserve_operator.controllers.modeldeployment.status import Outcome, compute_status

__all__ = ["KIND", "Outcome", "Rollout", "Runtime", "compute_status", "decide_rollout", "reconcile", "register"]
