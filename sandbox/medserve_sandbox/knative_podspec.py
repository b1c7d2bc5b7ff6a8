"""Knative Serving's pod-spec field masks: which pod and container fields a Knative Service may set (pure).

In Serverless mode KServe puts the predictor's pod spec into a Knative Service, and Knative's validating
webhook refuses any field its masks do not carry over (knative/serving at 98e5ef90,
pkg/apis/serving/fieldmask.go `PodSpecMask`, `ContainerMask`, `PodSecurityContextMask`,
`SecurityContextMask`, `CapabilitiesMask`; pkg/apis/serving/k8s_validation.go `ValidatePodSpec`,
`ValidatePodSecurityContext`, `validateSecurityContext`, which compare each struct with its mask through
knative.dev/pkg `apis.CheckDisallowedFields`). The feature flags are the `config-features` ConfigMap's, with
the defaults of pkg/apis/config/features.go `defaultFeaturesConfig` (every `kubernetes.podspec-*` flag and
`secure-pod-defaults` disabled, so a pod-level `securityContext` is refused outright; a container-level one
is allowed, minus seLinuxOptions, procMount, windowsOptions, appArmorProfile, `privileged: true` and
`capabilities.add`).

`disallowed_fields()` answers with the paths as Knative reports them on the Service
(`spec.template.spec.<field>`); `knative_denial()` with the whole refusal as the Knative webhook words it.
Not masked here: volume sources, env sources, probes and ports (the masks below them).
Knative's queue-proxy sidecar is not a user field: at this commit its securityContext
(pkg/reconciler/revision/resources/queue.go `queueSecurityContext`) always carries
`seccompProfile: RuntimeDefault`, whatever `secure-pod-defaults` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KNATIVE_WEBHOOK = "validation.webhook.serving.knative.dev"
DISABLED, ENABLED, ALLOW_ROOT_BOUNDED = "disabled", "enabled", "allowed-root-bounded"
SERVICE_PATH = "spec.template.spec"

# PodSpecMask's feature-gated fields: flag -> the PodSpec fields it lets through.
FEATURE_FIELDS: dict[str, tuple[str, ...]] = {
    "kubernetes.podspec-affinity": ("affinity",),
    "kubernetes.podspec-topologyspreadconstraints": ("topologySpreadConstraints",),
    "kubernetes.podspec-hostaliases": ("hostAliases",),
    "kubernetes.podspec-nodeselector": ("nodeSelector",),
    "kubernetes.podspec-runtimeclassname": ("runtimeClassName",),
    "kubernetes.podspec-tolerations": ("tolerations",),
    "kubernetes.podspec-shareprocessnamespace": ("shareProcessNamespace",),
    "kubernetes.podspec-priorityclassname": ("priorityClassName",),
    "kubernetes.podspec-schedulername": ("schedulerName",),
    "kubernetes.podspec-init-containers": ("initContainers",),
    "kubernetes.podspec-dnspolicy": ("dnsPolicy",),
    "kubernetes.podspec-dnsconfig": ("dnsConfig",),
    "kubernetes.podspec-hostipc": ("hostIPC",),
    "kubernetes.podspec-hostpid": ("hostPID",),
    "kubernetes.podspec-hostnetwork": ("hostNetwork",),
}
FEATURE_DEFAULTS: dict[str, str] = {flag: DISABLED for flag in FEATURE_FIELDS} | {
    "kubernetes.podspec-securitycontext": DISABLED,
    "kubernetes.containerspec-addcapabilities": DISABLED,
    "secure-pod-defaults": DISABLED,
}
POD_ALLOWED = frozenset({"serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks"})
# Every field of core/v1 PodSpec (Kubernetes 1.32): what a predictor may carry inline, masked or not.
POD_SPEC_FIELDS = frozenset({
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers",
    "hostname", "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
    "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext", "serviceAccount",
    "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds",
    "tolerations", "topologySpreadConstraints", "volumes",
})
CONTAINER_ALLOWED = frozenset({
    "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy", "livenessProbe", "ports",
    "readinessProbe", "resources", "securityContext", "startupProbe", "terminationMessagePath",
    "terminationMessagePolicy", "volumeMounts",
})
CONTAINER_SECURITY_ALLOWED = frozenset({"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup",
                                        "runAsNonRoot", "allowPrivilegeEscalation", "seccompProfile", "privileged"})
POD_SECURITY_ALLOWED = frozenset({"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups",
                                  "seccompProfile"})


def _set(value: Any) -> bool:
    """Go's non-zero test, as CheckDisallowedFields applies it to a JSON value."""
    return value not in (None, "", 0, False, [], {})


def _features(overrides: Mapping[str, str] | None) -> dict[str, str]:
    return {**FEATURE_DEFAULTS, **(overrides or {})}


def _pod_security(security: Mapping[str, Any], features: Mapping[str, str], path: str) -> list[str]:
    """PodSecurityContextMask, when PodSpecMask has let `securityContext` through."""
    allowed: set[str] = set()
    if features["kubernetes.podspec-securitycontext"] != DISABLED:
        allowed |= POD_SECURITY_ALLOWED
    elif features["secure-pod-defaults"] in (ENABLED, ALLOW_ROOT_BOUNDED):
        seccomp = security.get("seccompProfile") or {}
        if isinstance(seccomp, dict) and seccomp.get("type") in ("RuntimeDefault", "Unconfined"):
            allowed.add("seccompProfile")
    return [f"{path}.{key}" for key, value in security.items() if _set(value) and key not in allowed]


def _container(container: Mapping[str, Any], features: Mapping[str, str], path: str) -> list[str]:
    found = [f"{path}.{key}" for key, value in container.items() if _set(value) and key not in CONTAINER_ALLOWED]
    security = container.get("securityContext")
    if isinstance(security, dict):
        for key, value in security.items():
            if not _set(value):
                continue
            if key not in CONTAINER_SECURITY_ALLOWED or (key == "privileged" and value is True):
                found.append(f"{path}.securityContext.{key}")
        capabilities = security.get("capabilities")
        if isinstance(capabilities, dict) and _set(capabilities.get("add")):
            add_ok = features["kubernetes.containerspec-addcapabilities"] == ENABLED or (
                features["secure-pod-defaults"] in (ENABLED, ALLOW_ROOT_BOUNDED)
                and capabilities["add"] == ["NET_BIND_SERVICE"])
            if not add_ok:
                found.append(f"{path}.securityContext.capabilities.add")
    return found


def disallowed_fields(pod_spec: Mapping[str, Any], features: Mapping[str, str] | None = None) -> list[str]:
    """The fields Knative refuses in this pod spec (PodSpec keys; others are ignored), sorted as Knative does."""
    flags = _features(features)
    allowed = set(POD_ALLOWED)
    for flag, fields in FEATURE_FIELDS.items():
        if flags[flag] != DISABLED:
            allowed |= set(fields)
    pod_security_passes = (flags["kubernetes.podspec-securitycontext"] != DISABLED
                           or flags["secure-pod-defaults"] != DISABLED)
    if pod_security_passes:
        allowed.add("securityContext")
    found: list[str] = []
    for key, value in pod_spec.items():
        if key not in POD_SPEC_FIELDS or not _set(value):
            continue
        if key == "automountServiceAccountToken":
            if value is not False:
                found.append(f"{SERVICE_PATH}.{key}")  # PodSpecMask: only `false` may be set
        elif key not in allowed:
            found.append(f"{SERVICE_PATH}.{key}")
    security = pod_spec.get("securityContext")
    if pod_security_passes and isinstance(security, dict):
        found += _pod_security(security, flags, f"{SERVICE_PATH}.securityContext")
    for i, container in enumerate(pod_spec.get("containers") or []):
        if isinstance(container, dict):
            found += _container(container, flags, f"{SERVICE_PATH}.containers[{i}]")
    return sorted(found)


def knative_denial(pod_spec: Mapping[str, Any], features: Mapping[str, str] | None = None) -> str | None:
    """The error a create of the Knative Service gets from Knative's webhook, or None when it is allowed."""
    fields = disallowed_fields(pod_spec, features)
    if not fields:
        return None
    return (f'admission webhook "{KNATIVE_WEBHOOK}" denied the request: validation failed: '
            f"must not set the field(s): {', '.join(fields)}")
