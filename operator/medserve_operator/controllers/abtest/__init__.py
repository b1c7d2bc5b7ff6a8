"""The ABTest controller: two ModelDeployments → a KServe InferenceGraph → an always-valid decision → promotion.

- `handlers`: the thin kopf handlers (`register`);
- `reconcile`: `Runtime` and `reconcile`, as named steps (observe arms → apply graph → start → evaluate →
  promote);
- `evaluate`: Prometheus → the sequential test's typed `Evaluation`;
- `promote`: promotion of a winner from the typed decision;
- `status`: the status, serialised in one place from the reconciliation's `Outcome`;
- `render`: the pure InferenceGraph builder.
"""

from medserve_operator.controllers.abtest.evaluate import arm_data, promql_queries, summary
from medserve_operator.controllers.abtest.handlers import register
from medserve_operator.controllers.abtest.promote import Arm, promote
from medserve_operator.controllers.abtest.reconcile import KIND, Runtime, check_arms, reconcile
from medserve_operator.controllers.abtest.status import (
    Outcome,
    compute_status,
    evaluation_status,
    running_state,
    status_figures,
)

__all__ = ["KIND", "Arm", "Outcome", "Runtime", "arm_data", "check_arms", "compute_status", "evaluation_status",
           "promote", "promql_queries", "reconcile", "register", "running_state", "status_figures", "summary"]
