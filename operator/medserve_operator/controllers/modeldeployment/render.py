"""Pure builders of the ModelDeployment's child: the KServe v1beta1 InferenceService running the model runtime.

A parsed spec in, a manifest (a plain dict) out; nothing here talks to a cluster. Tests assert on the dicts
and validate them against KServe's real schemas.
"""

from __future__ import annotations

from typing import Any, Final

from medserve_operator.api.modeldeployment import KIND, ModelDeploymentSpec
from medserve_operator.kit.apply import ChildKind
from medserve_operator.kit.manifest import (
    MODEL_DEPLOYMENT_LABEL,
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    app_labels,
    label_value,
    owned_differs,
    owner_reference,
)

INFERENCE_SERVICE: Final = ChildKind("serving.kserve.io/v1beta1", "inferenceservices")
RUNTIME_PORT = 8080
API_KEYS_DIR = "/etc/medserve/api-keys"
AUDIT_DIR = "/var/log/medserve"
MODEL_VERSION_LABEL: Final = "medserve.io/model-version"


def model_deployment_labels(name: str, model_name: str, model_version: str) -> dict[str, str]:
    return app_labels("medserve-model", name, **{
        MODEL_DEPLOYMENT_LABEL: name,
        "medserve.io/model-name": label_value(model_name),
        MODEL_VERSION_LABEL: label_value(model_version),
    })


def runtime_args(name: str, spec: ModelDeploymentSpec, model_uri: str) -> list[str]:
    """The model-runtime command line carrying the ModelDeployment's runtime and security settings."""
    runtime, security = spec.runtime, spec.security
    args = [
        f"--model_name={name}",
        f"--model_uri={model_uri}",
        f"--http_port={RUNTIME_PORT}",
        f"--protocol={runtime.protocol}",
        f"--device={runtime.device}",
        f"--optimization={runtime.optimization}",
        f"--max_batch_size={runtime.batching.max_batch_size}",
        f"--max_latency_ms={runtime.batching.max_latency_ms}",
        f"--rate_limit_per_minute={security.rate_limit_per_minute}",
        f"--max_request_bytes={security.max_request_bytes}",
    ]
    if security.api_key_secret_ref is not None:
        args.append(f"--api_keys_file={API_KEYS_DIR}/keys.json")
    if security.audit_log:
        args.append(f"--audit_log={AUDIT_DIR}/audit.jsonl")
    return args


def render_inference_service(
    *,
    name: str,
    namespace: str,
    uid: str,
    spec: ModelDeploymentSpec,
    model_name: str,
    model_version: str,
    image: str,
    mlflow_uri: str,
    canary: bool = False,
    peer_url_template: str | None = None,
) -> dict[str, Any]:
    """A KServe v1beta1 InferenceService whose predictor runs the medserve model runtime.

    `canary` keeps the previous revision serving and sends `rollout.canaryTrafficPercent` of the
    traffic to this one, which is how KServe rolls out a new model version. `peer_url_template` (with
    `{arm}`) is where this runtime, as an A/B test's arm, forwards feedback for another arm's predictions
    (model-runtime arms.py): the same for every ModelDeployment, so no ABTest writes into an arm.
    """
    model_uri = f"models:/{model_name}/{model_version}"
    scaling, runtime = spec.scaling, spec.runtime
    resources: dict[str, Any] = {k: dict(v) for k, v in runtime.resources.model_dump(by_alias=True).items() if v}
    if runtime.device == "gpu":
        limits = resources.setdefault("limits", {})
        limits.setdefault("nvidia.com/gpu", 1)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.security.audit_log:
        volumes.append({"name": "audit", "emptyDir": {}})
        mounts.append({"name": "audit", "mountPath": AUDIT_DIR})
    if spec.security.api_key_secret_ref is not None:
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.security.api_key_secret_ref.name,
                                                        "defaultMode": 0o440}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": image,
        "args": runtime_args(name, spec, model_uri),
        "env": [
            {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri},
            {"name": "MEDSERVE_MODEL_DEPLOYMENT", "value": name},
            {"name": "MEDSERVE_MODEL_VERSION", "value": model_version},
            *([{"name": "MEDSERVE_PEER_URL_TEMPLATE", "value": peer_url_template}] if peer_url_template else []),
        ],
        "ports": [{"containerPort": RUNTIME_PORT, "name": "http1", "protocol": "TCP"}],
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "volumeMounts": mounts,
    }
    if resources:
        container["resources"] = resources
    predictor: dict[str, Any] = {
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "scaleMetric": scaling.metric,
        "scaleTarget": scaling.target,
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }
    if canary and spec.rollout.canary_traffic_percent > 0:
        predictor["canaryTrafficPercent"] = spec.rollout.canary_traffic_percent
    return {
        "apiVersion": INFERENCE_SERVICE.api_version,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": model_deployment_labels(name, model_name, model_version),
            "annotations": {
                "medserve.io/model-uri": model_uri,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(RUNTIME_PORT),
                "prometheus.io/path": "/metrics",
            },
            "ownerReferences": [owner_reference(kind=KIND, name=name, uid=uid)],
        },
        "spec": {"predictor": predictor},
    }


def inference_service_differs(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """`owned_differs`, and a canary setting that should be gone (a subset check cannot see a removal)."""
    canary_left = "canaryTrafficPercent" in ((actual.get("spec") or {}).get("predictor") or {}) and \
        "canaryTrafficPercent" not in desired["spec"]["predictor"]
    return canary_left or owned_differs(desired, actual)
