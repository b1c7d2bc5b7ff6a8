"""KServe 0.20's validating admission webhooks for InferenceService and InferenceGraph (pure: no networking).

A cluster with KServe installed sends every create and update of these kinds to KServe's webhook server
after the CRD schema has passed; a refusal comes back to the client as kube-apiserver words it
(k8s.io/apiserver pkg/admission/plugin/webhook/errors/statuserror.go `ToStatusErr`): HTTP 403, reason
Forbidden (controller-runtime pkg/webhook/admission/response.go `Denied` -> `ValidationResponse`), and the
message `admission webhook "<name>" denied the request: <the validator's error>`. The emulator calls
`admit()` from schemas.SchemaRegistry.admit, after its schema checks, as that order is the real one.

Followed, each in KServe's own words (kserve/kserve at aaac4e29, 0.20.0):
- pkg/apis/serving/v1beta1/inference_service_validation.go: `ValidateUpdate` (`validateDeploymentMode`:
  the mode cannot change once in status; `validatePredictorNameChange`), `validateInferenceService` in its
  order: `validateInferenceServiceName` (IsvcNameFmt), `validateInferenceServiceAutoscaler`, `validatePredictor`,
  the exactly-one-implementation rule (component.go `validateExactlyOneImplementation`,
  `ExactlyOneErrorFor`), the custom predictor's `PROTOCOL` env (predictor_custom.go `validateCustomProtocol`),
  the component extension's replica bounds (component.go `ComponentExtensionSpec.Validate`), the scaling
  fields per mode (`validateAutoScalingCompExtension`: in Standard with autoscalerClass hpa,
  `validateScalingHPACompExtension`; otherwise, unless Knative's class annotation says HPA,
  `validateScalingKPACompExtension`: metric concurrency or rps, no deploymentStrategy), and
  `validateCanarySpecs` (`spec.canary` needs the Standard annotation, a model, unique names, 0..100 each,
  sum <= 100, fixed replicas).
- pkg/apis/serving/v1alpha1/inference_graph_validation.go `validateInferenceGraph`: name, the `root` node,
  step-name uniqueness, exactly one target per step, Splitter weights present and summing to 100.

Not followed: KServe's mutating webhook (inference_service_defaults.go `DefaultInferenceService`, which
rewrites `RawDeployment`/`Serverless` to `Standard`/`Knative`, adds the cluster's default mode as the
annotation and names a lone custom container `kserve-container`); the emulator stores objects as sent. Where
the validator reads the annotation that defaulter would have written (the canary rule), `admit()` takes the
cluster default in its place, as the defaulter would have. Also not followed: the blocked env vars, the
multi-node, storage-URI, confidential and HPA/KEDA/KPA metric rules (medserve renders none of those fields).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

ISVC_WEBHOOK = "inferenceservice.kserve-webhook-server.validator"
GRAPH_WEBHOOK = "inferencegraph.kserve-webhook-server.validator"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
# pkg/constants/constants.go: DeploymentModeType and AutoscalerAllowedClassList.
STANDARD, KNATIVE, MODELMESH = "Standard", "Knative", "ModelMesh"
LEGACY_MODES = {"RawDeployment": STANDARD, "Serverless": KNATIVE}
AUTOSCALER_CLASSES = ("hpa", "external", "none", "keda")
NAME_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
NAME_RE = re.compile(f"^{NAME_FMT}$")
# pkg/apis/serving/v1beta1/predictor.go PredictorImplementations, in PredictorSpec's field order (what
# ExactlyOneErrorFor lists), then the PodSpec that makes a custom predictor.
PREDICTOR_IMPLEMENTATIONS = ("sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
                             "lightgbm", "paddle", "model")
# ExactlyOneErrorFor names every PredictorSpec field but the last (ComponentExtensionSpec), Name included.
PREDICTOR_TYPE_NAMES = ("Name, SKLearn, XGBoost, Tensorflow, PyTorch, Triton, ONNX, HuggingFace, PMML, LightGBM, "
                        "Paddle, Model, StorageUris, StorageContainerName, WorkerSpec, PodSpec")
PROTOCOLS = ("v1", "v2")


class WebhookDenied(Exception):
    """A refusal by one of KServe's webhooks; `status_body()` is the Status kube-apiserver answers with."""

    def __init__(self, webhook: str, message: str) -> None:
        super().__init__(f'admission webhook "{webhook}" denied the request: {message}')
        self.webhook, self.reason_message = webhook, message

    def status_body(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": str(self), "reason": "Forbidden", "code": 403}


def normalise_mode(mode: str) -> str:
    """pkg/constants/constants.go `ParseDeploymentMode`: the legacy names mapped to today's."""
    return LEGACY_MODES.get(mode, mode)


def admit(obj: Mapping[str, Any], old: Mapping[str, Any] | None, *, default_mode: str = STANDARD) -> None:
    """Raise WebhookDenied when KServe's validating webhook would refuse this create (old None) or update."""
    kind, api_version = obj.get("kind"), str(obj.get("apiVersion", ""))
    if not api_version.startswith("serving.kserve.io/"):
        return
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return  # ValidateUpdate: an object being deleted is let through
    if kind == "InferenceService":
        message = validate_inference_service(obj, old, default_mode=default_mode)
        if message is not None:
            raise WebhookDenied(ISVC_WEBHOOK, message)
    elif kind == "InferenceGraph":
        message = validate_inference_graph(obj)
        if message is not None:
            raise WebhookDenied(GRAPH_WEBHOOK, message)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _env(container: Mapping[str, Any], name: str) -> str | None:
    for item in container.get("env") or []:
        if isinstance(item, dict) and item.get("name") == name:
            return str(item.get("value", ""))
    return None


def _storage_uri(predictor: Mapping[str, Any]) -> str:
    """inference_service_validation.go `getPredictorStorageURI` (a custom container: its STORAGE_URI env)."""
    model = _dict(predictor.get("model"))
    if model.get("storageUri"):
        return str(model["storageUri"])
    for name in PREDICTOR_IMPLEMENTATIONS:
        if _dict(predictor.get(name)).get("storageUri"):
            return str(predictor[name]["storageUri"])
    for container in predictor.get("containers") or []:
        if isinstance(container, dict) and container.get("name") == "kserve-container":
            return _env(container, "STORAGE_URI") or ""
    return ""


def _implementations(predictor: Mapping[str, Any]) -> list[str]:
    found = [name for name in PREDICTOR_IMPLEMENTATIONS if predictor.get(name) is not None]
    if predictor.get("containers"):
        found.append("containers")
    return found


def _validate_extension(extension: Mapping[str, Any]) -> str | None:
    """component.go `ComponentExtensionSpec.Validate`: the replica bounds."""
    raw_min, raw_max = extension.get("minReplicas"), extension.get("maxReplicas")
    min_replicas = raw_min if isinstance(raw_min, int) else 1  # `validateReplicas`: DefaultMinReplicas
    max_replicas = raw_max if isinstance(raw_max, int) else 0
    if min_replicas < 0:
        return "'MinReplicas' cannot be less than 0"
    if max_replicas < 0:
        return "'MaxReplicas' cannot be less than 0"
    if min_replicas > max_replicas != 0:
        return "'MinReplicas' cannot be greater than MaxReplicas"
    return None


def _validate_autoscaling(annotations: Mapping[str, Any], extension: Mapping[str, Any]) -> str | None:
    """inference_service_validation.go `validateAutoScalingCompExtension` (the annotation as the defaulter left
    it: the cluster default when there is none)."""
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    metric, target = extension.get("scaleMetric"), extension.get("scaleTarget")
    if mode == STANDARD:
        if annotations.get(AUTOSCALER_CLASS_ANNOTATION) != "hpa":
            return None
        metric = metric or "cpu"
        if metric not in ("cpu", "memory"):
            return f"[{metric}] is not a supported metric"
        if isinstance(target, int):
            if (metric == "cpu" and target < 1) or target > 100:
                return "the target utilization percentage should be a [1-100] integer"
            if metric == "memory" and target < 1:
                return "the target memory should be greater than 1 MiB"
        return None
    if annotations.get("autoscaling.knative.dev/class") == "hpa.autoscaling.knative.dev":
        return None if (metric or "cpu") in ("cpu", "memory") else f"[{metric}] is not a supported metric"
    if extension.get("deploymentStrategy") is not None:
        return "customizing deploymentStrategy is only supported for raw deployment mode"
    metric = metric or "concurrency"
    if metric not in ("concurrency", "rps"):
        return f"[{metric}] is not a supported metric"
    if metric == "rps" and isinstance(target, int) and target < 1:
        return "the target for rps should be greater than 1"
    return None


def _validate_component(predictor: Mapping[str, Any]) -> str | None:
    if len(_implementations(predictor)) != 1:
        return f"exactly one of [{PREDICTOR_TYPE_NAMES}] must be specified in PredictorSpec"
    containers = predictor.get("containers") or []
    if containers and isinstance(containers[0], dict):
        protocol = _env(containers[0], "PROTOCOL")
        if protocol is not None and protocol not in PROTOCOLS:
            # predictor_custom.go validateCustomProtocol: InvalidProtocol's two arguments come in this order.
            return f"invalid protocol {', '.join(PROTOCOLS)}. Must be one of [{protocol}]"
    return _validate_extension(predictor)


def validate_inference_service(obj: Mapping[str, Any], old: Mapping[str, Any] | None, *,
                               default_mode: str = STANDARD) -> str | None:
    """The error KServe's InferenceService validator returns for this object, or None when it is allowed."""
    meta = _dict(obj.get("metadata"))
    name = str(meta.get("name") or "")
    annotations = _dict(meta.get("annotations"))
    spec = _dict(obj.get("spec"))
    predictor = _dict(spec.get("predictor"))
    if old is not None:
        old_status_mode = str(_dict(old.get("status")).get("deploymentMode") or "")
        if old_status_mode and DEPLOYMENT_MODE_ANNOTATION in annotations:
            current = normalise_mode(old_status_mode)
            # Compared after the defaulter's normalisation (RawDeployment -> Standard), as in a real cluster.
            wanted = normalise_mode(str(annotations[DEPLOYMENT_MODE_ANNOTATION]))
            if wanted != current:
                return f"update rejected: deploymentMode cannot be changed from '{current}' to '{wanted}'"
        old_predictor = _dict(_dict(old.get("spec")).get("predictor"))
        renamed = old_predictor.get("name") != predictor.get("name")
        if renamed and _storage_uri(old_predictor) == _storage_uri(predictor):
            return "predictor.name change requires a model change (e.g. storageUri)"
    if not NAME_RE.match(name):
        return (f'the InferenceService "{name}" is invalid: a InferenceService name must consist of lower case '
                "alphanumeric characters or '-', and must start with alphabetical character. "
                f'(e.g. "my-name" or "abc-123", regex used for validation is \'{NAME_FMT}\')')
    autoscaler = annotations.get(AUTOSCALER_CLASS_ANNOTATION)
    if autoscaler is not None and autoscaler not in AUTOSCALER_CLASSES:
        return f"[{autoscaler}] is not a supported autoscaler class type"
    for implementation in PREDICTOR_IMPLEMENTATIONS:
        if _dict(predictor.get(implementation)).get("name"):
            return "the 'name' field is not allowed in standard predictor"
    if (error := _validate_component(predictor)) is not None:
        return error
    defaulted = dict(annotations)
    if DEPLOYMENT_MODE_ANNOTATION in defaulted:
        defaulted[DEPLOYMENT_MODE_ANNOTATION] = normalise_mode(str(defaulted[DEPLOYMENT_MODE_ANNOTATION]))
    elif normalise_mode(default_mode) == STANDARD:
        defaulted[DEPLOYMENT_MODE_ANNOTATION] = STANDARD  # DefaultInferenceService writes only Standard/ModelMesh
    if (error := _validate_autoscaling(defaulted, predictor)) is not None:
        return error
    return _validate_canaries(spec, predictor, annotations, default_mode=default_mode)


def _validate_canaries(spec: Mapping[str, Any], predictor: Mapping[str, Any], annotations: Mapping[str, Any], *,
                       default_mode: str) -> str | None:
    """inference_service_validation.go `validateCanarySpecs`."""
    canaries = spec.get("canary") or []
    if not canaries:
        return None
    # The defaulter (not emulated) has written the cluster default, normalised, before this runs.
    mode = normalise_mode(str(annotations.get(DEPLOYMENT_MODE_ANNOTATION) or default_mode))
    if mode != STANDARD:
        return f"canary is only supported in {STANDARD} deployment mode"
    if not _storage_uri(predictor) and predictor.get("model") is None:
        return "canary requires a stable predictor with a model (multi-model serving is not supported with canary)"
    names: set[str] = set()
    total = 0
    raw_stable_min = predictor.get("minReplicas")
    stable_min = raw_stable_min if isinstance(raw_stable_min, int) else 1
    for i, raw in enumerate(canaries):
        canary = _dict(raw)
        canary_predictor = _dict(canary.get("predictor"))
        canary_name = str(canary_predictor.get("name") or "")
        if not canary_name:
            return f"canary[{i}] predictor.name is required"
        if canary_name in names:
            return f'canary predictor.name "{canary_name}" is duplicated'
        names.add(canary_name)
        if canary_name == predictor.get("name"):
            return f'canary predictor.name "{canary_name}" conflicts with stable predictor name'
        percent = canary.get("trafficPercent", 0)
        if not isinstance(percent, int) or percent < 0 or percent > 100:
            return f'canary "{canary_name}" trafficPercent must be between 0 and 100, got {percent}'
        total += percent
        if (error := _validate_component(canary_predictor)) is not None:
            return f'canary "{canary_name}" predictor: {error}'
        if canary_predictor.get("workerSpec") is not None:
            return f'canary "{canary_name}" must not set workerSpec (multi-node is not yet supported for canary)'
        for field in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
            value = canary_predictor.get(field)
            if value is not None and (field != "maxReplicas" or (isinstance(value, int) and value > 0)):
                return f'canary "{canary_name}" must not set {field} (canary uses fixed replicas)'
        canary_min = canary_predictor.get("minReplicas")
        if isinstance(canary_min, int) and canary_min > stable_min:
            return (f'canary "{canary_name}" minReplicas ({canary_min}) must not exceed stable predictor minReplicas '
                    f"({stable_min})")
    if total > 100:
        return f"sum of canary trafficPercent values ({total}) must be <= 100"
    return None


def validate_inference_graph(obj: Mapping[str, Any]) -> str | None:
    """The error KServe's InferenceGraph validator returns for this object, or None when it is allowed."""
    name = str(_dict(obj.get("metadata")).get("name") or "")
    nodes = _dict(_dict(obj.get("spec")).get("nodes"))
    if not NAME_RE.match(name):
        return (f'The InferenceGraph "{name}" is invalid: a InferenceGraph name must consist of lower case '
                "alphanumeric characters or '-', and must start with alphabetical character. "
                f'(e.g. "my-name" or "abc-123", regex used for validation is \'{NAME_FMT}\')')
    if "root" not in nodes:
        return "root node not found, InferenceGraph needs a node with name 'root' as the root node of the graph"
    # Go ranges over a map in random order; with one bad node (the usual case) the message is the same.
    for node_name, node in nodes.items():
        seen: set[str] = set()
        for step in _dict(node).get("steps") or []:
            step_name = str(_dict(step).get("name") or "")
            if step_name:
                if step_name in seen:
                    return f'Node "{node_name}" of InferenceGraph "{name}" contains more than one step with name ' \
                           f'"{step_name}"'
                seen.add(step_name)
    for node_name, node in nodes.items():
        for i, raw in enumerate(_dict(node).get("steps") or []):
            step = _dict(raw)
            count = sum(1 for key in ("nodeName", "serviceName", "serviceUrl") if step.get(key))
            step_name = str(step.get("name") or "")
            if count == 0:
                return f'Step {i} ("{step_name}") in node "{node_name}" of InferenceGraph "{name}" does not specify ' \
                       "an inference target"
            if count != 1:
                return f'Step {i} ("{step_name}") in node "{node_name}" of InferenceGraph "{name}" specifies more ' \
                       "than one of nodeName, serviceName, serviceUrl"
    for node_name, node in nodes.items():
        if _dict(node).get("routerType") != "Splitter":
            continue
        weight = 0
        for raw in _dict(node).get("steps") or []:
            step = _dict(raw)
            if step.get("weight") is None:
                return f"InferenceGraph[{name}] Node[{node_name}] Route[{step.get('serviceName') or ''}] missing the " \
                       "'Weight'"
            weight += int(step["weight"])
        if weight != 100:
            return f"InferenceGraph[{name}] Node[{node_name}] splitter node: the sum of traffic weights for all " \
                   "routing targets should be 100"
    return None
