"""What the real API server fills into the built-in kinds the emulator serves: defaults and Go's JSON shapes.

Defaulting, in the emulator's words, of:
- k8s.io/kubernetes pkg/apis/core/v1/defaults.go: `SetDefaults_PodSpec` (dnsPolicy, restartPolicy,
  terminationGracePeriodSeconds, schedulerName, securityContext), `SetDefaults_Container`
  (terminationMessagePath/-Policy, imagePullPolicy from the image's tag), `SetDefaults_ContainerPort`
  (protocol), and the always-present `resources` (ResourceRequirements is not a pointer in Go);
- pkg/apis/batch/v1/defaults.go `SetDefaults_Job` (completions, parallelism, backoffLimit,
  completionMode, suspend, podReplacementPolicy), `SetDefaults_CronJob` (concurrencyPolicy, suspend,
  the history limits; the job template's pod spec as a PodSpec), and pkg/registry/batch/job/strategy.go
  `generateSelector` (the template's controller-uid and job-name labels, in both the legacy and the
  batch.kubernetes.io/ forms since v1.27, and the selector on the batch.kubernetes.io/controller-uid);
- apps/v1 `SetDefaults_Deployment` (replicas, strategy, revisionHistoryLimit, progressDeadlineSeconds).

Go's JSON shape: a condition's `metav1.Time` fields are structs, which `omitempty` never omits, so the
real server echoes an unset lastProbeTime / lastTransitionTime as null; `conditions_as_go` does the same.

Not covered: the other kinds' defaults (Services, ...), volumes' and probes' defaults, env
`fieldRef.apiVersion`, and the feature-gated fields of versions other than the one the emulator reports.
"""

from __future__ import annotations

from typing import Any

from medserve_sandbox.objects import Obj

# The condition types' metav1.Time fields (k8s.io/api core/v1, batch/v1, apps/v1 types.go).
_CONDITION_TIMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("batch", "jobs"): ("lastProbeTime", "lastTransitionTime"),
    ("", "pods"): ("lastProbeTime", "lastTransitionTime"),
    ("apps", "deployments"): ("lastUpdateTime", "lastTransitionTime"),
}


def _container(container: Any) -> None:
    if not isinstance(container, dict):
        return
    image = str(container.get("image") or "")
    if "imagePullPolicy" not in container and image:
        tail = image.rsplit("/", 1)[-1]
        tag = tail.split(":", 1)[1] if ":" in tail and "@" not in tail else ""
        container["imagePullPolicy"] = "Always" if ("@" not in tail and tag in ("", "latest")) else "IfNotPresent"
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def pod_spec(spec: Any) -> None:
    """SetDefaults_PodSpec and SetDefaults_Container, in place."""
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            _container(container)


def _template(spec: Obj) -> Obj | None:
    template = spec.get("template")
    if not isinstance(template, dict):
        return None
    pod_spec(template.get("spec"))
    return template


def job(obj: Obj) -> None:
    """SetDefaults_Job, in place."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 2147483647 if spec.get("backoffLimitPerIndex") is not None else 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    _template(spec)


def job_selector(obj: Obj) -> None:
    """The Job create strategy's generated selector and template labels, in place."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    template = spec.get("template")
    meta = obj.get("metadata") or {}
    uid, name = meta.get("uid"), meta.get("name")
    if not isinstance(template, dict) or spec.get("manualSelector") or not uid:
        return
    labels = (template.setdefault("metadata", {})).setdefault("labels", {})
    for key, value in (("batch.kubernetes.io/controller-uid", uid), ("batch.kubernetes.io/job-name", name),
                       ("controller-uid", uid), ("job-name", name)):
        labels.setdefault(key, value)
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})


def deployment(obj: Obj) -> None:
    """apps/v1 SetDefaults_Deployment, in place."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if isinstance(rolling, dict):
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _template(spec)


def cronjob(obj: Obj) -> None:
    """SetDefaults_CronJob and, through SetObjectDefaults_CronJob, the job template's pod spec, in place
    (the template's JobSpec gets no SetDefaults_Job: that takes a Job, not a JobSpec)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)
    template = spec.get("jobTemplate")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        _template(template["spec"])


def on_create(key: tuple[str, str], obj: Obj) -> None:
    """What a create of this built-in kind gets: the defaults, and the create strategies' fields."""
    on_write(key, obj)
    if key == ("batch", "jobs"):
        job_selector(obj)


def on_write(key: tuple[str, str], obj: Obj) -> None:
    """The defaults of this built-in kind, which the real server applies when it decodes any write
    (create, update, patch): an update that drops a defaulted field gets it back."""
    match key:
        case ("batch", "jobs"):
            job(obj)
        case ("batch", "cronjobs"):
            cronjob(obj)
        case ("apps", "deployments"):
            deployment(obj)
        case ("", "pods"):
            pod_spec(obj.get("spec"))
            if isinstance(obj.get("spec"), dict):
                obj["spec"].setdefault("enableServiceLinks", True)


def conditions_as_go(key: tuple[str, str], obj: Obj) -> None:
    """Status conditions with their unset time fields as null, as the Go types serialise them."""
    times = _CONDITION_TIMES.get(key)
    status = obj.get("status")
    if times is None or not isinstance(status, dict):
        return
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict):
            for field in times:
                condition.setdefault(field, None)
