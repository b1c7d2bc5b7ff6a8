"""The RetrainPolicy controller: schedule → CronJob, triggers → Job, finished Job → new model version → promotion.

- `handlers`: the thin kopf handlers (`register`);
- `reconcile`: `Runtime` and `reconcile`, as named steps;
- `triggers`: the triggers and their gating (running Job, running ABTest, cooldown);
- `jobs`: the Jobs and the CronJob;
- `promotion`: the manual, direct and abtest strategies, and following the ABTest;
- `status`: the status, serialised in one place from the reconciliation's `Outcome`;
- `render`: the pure CronJob, Job, challenger and ABTest builders.
"""

from medserve_operator.controllers.retrainpolicy.handlers import register
from medserve_operator.controllers.retrainpolicy.jobs import job_finish, job_name
from medserve_operator.controllers.retrainpolicy.reconcile import KIND, Runtime, reconcile
from medserve_operator.controllers.retrainpolicy.render import derived_name, render_abtest, render_challenger
from medserve_operator.controllers.retrainpolicy.status import Outcome, compute_status, next_schedule_time
from medserve_operator.controllers.retrainpolicy.triggers import (
    QueryValue,
    cooldown_until,
    evaluate_triggers,
    feedback_queries,
    in_cooldown,
)

__all__ = ["KIND", "Outcome", "QueryValue", "Runtime", "compute_status", "cooldown_until", "derived_name",
           "evaluate_triggers", "feedback_queries", "in_cooldown", "job_finish", "job_name", "next_schedule_time",
           "reconcile", "register", "render_abtest", "render_challenger"]
