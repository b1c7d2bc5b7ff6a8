"""Knative Serving's podspec field masks: which fields of a predictor's pod Knative refuses, per feature flag.

Written from knative/serving 1.23 `pkg/apis/serving/fieldmask.go` (`PodSpecMask`, `ContainerMask`,
`SecurityContextMask`, `PodSecurityContextMask`, `CapabilitiesMask`, `VolumeMask`/`VolumeSourceMask`,
`VolumeMountMask`, `ContainerPortMask`, `EnvVarMask`/`EnvVarSourceMask`, `ResourceRequirementsMask`,
`LocalObjectReferenceMask`) and the defaults of `pkg/apis/config/features.go` (`defaultFeaturesConfig`).
`pkg/apis/serving/k8s_validation.go` (`ValidatePodSpec`, `ValidateContainer`, ...) rejects a Revision whose
pod sets a field the mask zeroes ("must not set the field(s)"); that is what `disallowed` returns, as
field paths. KServe's Serverless mode turns `spec.predictor` into the Knative Service's pod spec
(`reconcilers/knative/ksvc_reconciler.go`, `createKnativeService`), less KServe's own fields
(`ComponentExtensionSpec` in `pkg/apis/serving/v1beta1/component.go`, and `name`).

Used by the render tests (the sandbox has its own stand-in; this is the test's independent reading).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_FEATURES: dict[str, str] = {
    "kubernetes.podspec-affinity": "disabled",
    "kubernetes.podspec-topologyspreadconstraints": "disabled",
    "kubernetes.podspec-hostaliases": "disabled",
    "kubernetes.podspec-fieldref": "disabled",
    "kubernetes.podspec-nodeselector": "disabled",
    "kubernetes.podspec-runtimeclassname": "disabled",
    "kubernetes.podspec-securitycontext": "disabled",
    "kubernetes.podspec-shareprocessnamespace": "disabled",
    "kubernetes.podspec-priorityclassname": "disabled",
    "kubernetes.podspec-schedulername": "disabled",
    "kubernetes.containerspec-addcapabilities": "disabled",
    "kubernetes.podspec-tolerations": "disabled",
    "kubernetes.podspec-volumes-emptydir": "enabled",
    "kubernetes.podspec-volumes-hostpath": "disabled",
    "kubernetes.podspec-volumes-mount-propagation": "disabled",
    "kubernetes.podspec-volumes-csi": "disabled",
    "kubernetes.podspec-persistent-volume-claim": "disabled",
    "kubernetes.podspec-init-containers": "disabled",
    "kubernetes.podspec-dnspolicy": "disabled",
    "kubernetes.podspec-dnsconfig": "disabled",
    "kubernetes.podspec-hostipc": "disabled",
    "kubernetes.podspec-hostpid": "disabled",
    "kubernetes.podspec-hostnetwork": "disabled",
    "secure-pod-defaults": "disabled",
}
"""features.go `defaultFeaturesConfig` (config-features ConfigMap keys)."""

KSERVE_COMPONENT_FIELDS = frozenset({
    "name", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType", "autoScaling",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
    "deploymentStrategy", "storageUris", "workerSpec", "model"})
"""Fields of KServe's PredictorSpec that are not the pod's (`ComponentExtensionSpec`, name, model...)."""

POD_ALLOWED = frozenset({"serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks"})
POD_FEATURES = {
    "affinity": "kubernetes.podspec-affinity", "topologySpreadConstraints":
    "kubernetes.podspec-topologyspreadconstraints", "hostAliases": "kubernetes.podspec-hostaliases",
    "nodeSelector": "kubernetes.podspec-nodeselector", "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "tolerations": "kubernetes.podspec-tolerations", "shareProcessNamespace":
    "kubernetes.podspec-shareprocessnamespace", "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername", "initContainers": "kubernetes.podspec-init-containers",
    "dnsPolicy": "kubernetes.podspec-dnspolicy", "dnsConfig": "kubernetes.podspec-dnsconfig",
    "hostIPC": "kubernetes.podspec-hostipc", "hostPID": "kubernetes.podspec-hostpid",
    "hostNetwork": "kubernetes.podspec-hostnetwork"}
POD_SECURITY_FIELDS = frozenset({"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups",
                                 "seccompProfile"})
CONTAINER_ALLOWED = frozenset({
    "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy", "livenessProbe", "ports",
    "readinessProbe", "resources", "securityContext", "startupProbe", "terminationMessagePath",
    "terminationMessagePolicy", "volumeMounts"})
CONTAINER_SECURITY_ALLOWED = frozenset({"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup",
                                        "runAsNonRoot", "allowPrivilegeEscalation", "seccompProfile"})
VOLUME_SOURCES = {"secret": None, "configMap": None, "projected": None,
                  "emptyDir": "kubernetes.podspec-volumes-emptydir",
                  "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
                  "hostPath": "kubernetes.podspec-volumes-hostpath", "csi": "kubernetes.podspec-volumes-csi"}
MOUNT_ALLOWED = frozenset({"name", "readOnly", "mountPath", "subPath"})
PORT_ALLOWED = frozenset({"containerPort", "name", "protocol"})


def _on(features: Mapping[str, str], flag: str | None) -> bool:
    return flag is None or features.get(flag, DEFAULT_FEATURES.get(flag, "disabled")) != "disabled"


def disallowed(predictor: Mapping[str, Any], features: Mapping[str, str] | None = None) -> list[str]:
    """The field paths of `predictor`'s pod that Knative's masks refuse under `features` (default: Knative's)."""
    flags = {**DEFAULT_FEATURES, **(features or {})}
    bad: list[str] = []
    for key, value in predictor.items():
        if key in KSERVE_COMPONENT_FIELDS or key in POD_ALLOWED:
            continue
        if key == "automountServiceAccountToken":
            if value is not False:
                bad.append(key)  # only false may be set
        elif key == "securityContext":
            bad.extend(_pod_security(value, flags))
        elif key not in POD_FEATURES or not _on(flags, POD_FEATURES[key]):
            bad.append(key)
    for i, container in enumerate(predictor.get("containers") or []):
        bad.extend(f"containers[{i}].{path}" for path in _container(container, flags))
    for i, volume in enumerate(predictor.get("volumes") or []):
        for key in volume:
            if key != "name" and (key not in VOLUME_SOURCES or not _on(flags, VOLUME_SOURCES[key])):
                bad.append(f"volumes[{i}].{key}")
    return bad


def _pod_security(context: Mapping[str, Any], flags: Mapping[str, str]) -> list[str]:
    if _on(flags, "kubernetes.podspec-securitycontext"):
        return [f"securityContext.{k}" for k in context if k not in POD_SECURITY_FIELDS]
    seccomp_ok = flags.get("secure-pod-defaults") in ("enabled", "allowrootbounded") and \
        (context.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Unconfined")
    return [f"securityContext.{k}" for k in context if not (k == "seccompProfile" and seccomp_ok)]


def _container(container: Mapping[str, Any], flags: Mapping[str, str]) -> list[str]:
    bad = [k for k in container if k not in CONTAINER_ALLOWED]
    security = container.get("securityContext") or {}
    for key, value in security.items():
        if key == "privileged" and value is False:
            continue
        if key == "capabilities":
            if (value or {}).get("add") and not _on(flags, "kubernetes.containerspec-addcapabilities"):
                bad.append("securityContext.capabilities.add")
            continue
        if key not in CONTAINER_SECURITY_ALLOWED:
            bad.append(f"securityContext.{key}")
    for i, port in enumerate(container.get("ports") or []):
        bad.extend(f"ports[{i}].{k}" for k in port if k not in PORT_ALLOWED)
    for i, mount in enumerate(container.get("volumeMounts") or []):
        bad.extend(f"volumeMounts[{i}].{k}" for k in mount
                   if k not in MOUNT_ALLOWED and not (k == "mountPropagation" and
                                                      _on(flags, "kubernetes.podspec-volumes-mount-propagation")))
    for i, env in enumerate(container.get("env") or []):
        bad.extend(f"env[{i}].{k}" for k in env if k not in ("name", "value", "valueFrom"))
        source = env.get("valueFrom") or {}
        for key in source:
            field_ref = key in ("fieldRef", "resourceFieldRef")
            if key not in ("configMapKeyRef", "secretKeyRef") and not (field_ref and
                                                                       _on(flags, "kubernetes.podspec-fieldref")):
                bad.append(f"env[{i}].valueFrom.{key}")
    bad.extend(f"resources.{k}" for k in container.get("resources") or {} if k not in ("limits", "requests"))
    return bad
