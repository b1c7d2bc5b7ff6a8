"""The KServe stand-ins' contract, held to KServe 0.20's and Knative's source (pure functions, no servers).

Each test names the upstream function it follows: kserve/kserve at aaac4e29 (0.20.0), knative/serving at
98e5ef90. The integration tier (tests/sandbox/integration/test_kserve_standin.py) runs the same behaviour
through the emulated API with real runtime processes.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from medserve_sandbox import knative_podspec, kserve_status, kserve_webhooks
from medserve_sandbox.kserve_standin import merge_patch, merged_canary_predictor, resolve_mode
from medserve_sandbox.store import ApiError, Store

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def isvc(name: str = "sepsis", *, annotations: dict[str, str] | None = None, **predictor: Any) -> dict[str, Any]:
    container = {"name": "kserve-container", "image": "medserve/runtime:1",
                 "args": ["--model_name=sepsis"], "env": [{"name": "STORAGE_URI", "value": "models:/sepsis/3"}]}
    body = {"containers": [container], **predictor}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
            "spec": {"predictor": body}}


def arm(name: str = "", **fields: Any) -> dict[str, Any]:
    """A canary's predictor: a PredictorSpec, so it needs its own implementation (validateExactlyOneImplementation)."""
    return {**({"name": name} if name else {}), "containers": [{"name": "kserve-container", "image": "x"}], **fields}


# --- the validating webhooks (inference_service_validation.go, inference_graph_validation.go) -------------------


def test_isvc_name_pattern_is_kserve_regexp() -> None:
    """validateInferenceServiceName: IsvcNameFmt `[a-z]([-a-z0-9]*[a-z0-9])?` (a leading digit is refused)."""
    assert kserve_webhooks.validate_inference_service(isvc("sepsis-v2"), None) is None
    message = kserve_webhooks.validate_inference_service(isvc("2sepsis"), None)
    assert message is not None and message.startswith('the InferenceService "2sepsis" is invalid: a InferenceService')
    assert "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?'" in message


def test_denial_is_answered_as_kube_apiserver_words_a_webhook_refusal() -> None:
    """apiserver webhook/errors/statuserror.go ToStatusErr + controller-runtime admission.Denied: 403 Forbidden."""
    with pytest.raises(kserve_webhooks.WebhookDenied) as caught:
        kserve_webhooks.admit(isvc("2sepsis"), None)
    body = caught.value.status_body()
    assert (body["code"], body["reason"], body["status"]) == (403, "Forbidden", "Failure")
    assert body["message"].startswith(
        'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: the InferenceService')


def test_emulator_store_refuses_through_the_webhook_after_the_schema() -> None:
    """The emulator's admission runs KServe's webhook on the main resource, not on /status."""
    from medserve_sandbox.schemas import SchemaRegistry, find_kserve_crds_dir

    crds = find_kserve_crds_dir()
    if crds is None:
        pytest.skip("KServe's CRDs (shared/upstream/kserve) are not on this machine")
    from medserve_sandbox.emulator import install_crd
    from medserve_sandbox.schemas import _load_crd_file

    store = Store(SchemaRegistry())
    for path in sorted(crds.glob("serving.kserve.io_*.yaml")):
        for crd in _load_crd_file(path):
            install_crd(store, crd, source=str(path))
    rtype = store.lookup("serving.kserve.io", "v1beta1", "inferenceservices")
    bad = isvc("Sepsis")
    with pytest.raises(ApiError) as caught:
        store.create(rtype, "v1beta1", "default", copy.deepcopy(bad), field_validation="Strict")
    assert caught.value.code in (403, 422)  # an upper-case name: the CRD schema may refuse it first
    good = store.create(rtype, "v1beta1", "default", isvc("sepsis"), field_validation="Strict").obj
    status = {**good, "status": {"deploymentMode": "Standard"}}
    store.update(rtype, "v1beta1", "default", "sepsis", status, subresource="status", dry_run=False,
                 field_validation="Strict")
    changed = copy.deepcopy(store.get(rtype, "default", "sepsis"))
    changed["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "Serverless"}
    with pytest.raises(ApiError) as refused:
        store.update(rtype, "v1beta1", "default", "sepsis", changed, subresource=None, dry_run=False,
                     field_validation="Strict")
    assert refused.value.code == 403
    assert "deploymentMode cannot be changed from 'Standard' to 'Knative'" in refused.value.message


def test_deployment_mode_change_is_refused_but_the_legacy_spelling_is_not() -> None:
    """validateDeploymentMode, after the defaulter's RawDeployment -> Standard (DefaultInferenceService)."""
    old = isvc(annotations={"serving.kserve.io/deploymentMode": "RawDeployment"})
    old["status"] = {"deploymentMode": "Standard"}
    same = isvc(annotations={"serving.kserve.io/deploymentMode": "RawDeployment"})
    assert kserve_webhooks.validate_inference_service(same, old) is None
    other = isvc(annotations={"serving.kserve.io/deploymentMode": "Serverless"})
    assert kserve_webhooks.validate_inference_service(other, old) == \
        "update rejected: deploymentMode cannot be changed from 'Standard' to 'Knative'"


@pytest.mark.parametrize(("canary", "annotations", "message"), [
    ([{"predictor": arm("b"), "trafficPercent": 10}], {"serving.kserve.io/deploymentMode": "Serverless"},
     "canary is only supported in Standard deployment mode"),
    ([{"predictor": arm(), "trafficPercent": 10}], {}, "canary[0] predictor.name is required"),
    ([{"predictor": arm("b"), "trafficPercent": 60}, {"predictor": arm("b"), "trafficPercent": 10}], {},
     'canary predictor.name "b" is duplicated'),
    ([{"predictor": arm("b"), "trafficPercent": 101}], {},
     'canary "b" trafficPercent must be between 0 and 100, got 101'),
    ([{"predictor": arm("b"), "trafficPercent": 60}, {"predictor": arm("c"), "trafficPercent": 50}], {},
     "sum of canary trafficPercent values (110) must be <= 100"),
    ([{"predictor": arm("b", maxReplicas=3), "trafficPercent": 10}], {},
     'canary "b" must not set maxReplicas (canary uses fixed replicas)'),
    ([{"predictor": arm("b", minReplicas=2), "trafficPercent": 10}], {},
     'canary "b" minReplicas (2) must not exceed stable predictor minReplicas (1)'),
])
def test_canary_rules(canary: list[dict[str, Any]], annotations: dict[str, str], message: str) -> None:
    """validateCanarySpecs, in its order; no annotation means the cluster default (Standard) was defaulted in."""
    obj = isvc(annotations=annotations)
    obj["spec"]["canary"] = canary
    assert kserve_webhooks.validate_inference_service(obj, None) == message


def test_canary_in_standard_with_a_model_is_allowed_and_needs_a_model() -> None:
    """validateCanarySpecs: a custom predictor's model is its STORAGE_URI env (predictor_custom.go GetStorageUri)."""
    obj = isvc(annotations={"serving.kserve.io/deploymentMode": "Standard"})
    obj["spec"]["canary"] = [{"predictor": arm("challenger"), "trafficPercent": 20}]
    assert kserve_webhooks.validate_inference_service(obj, None) is None
    obj["spec"]["canary"] = [{"predictor": {"name": "challenger"}, "trafficPercent": 20}]
    assert kserve_webhooks.validate_inference_service(obj, None) == (
        'canary "challenger" predictor: exactly one of [Name, SKLearn, XGBoost, Tensorflow, PyTorch, Triton, ONNX, '
        "HuggingFace, PMML, LightGBM, Paddle, Model, StorageUris, StorageContainerName, WorkerSpec, PodSpec] must be "
        "specified in PredictorSpec")
    obj["spec"]["predictor"]["containers"][0]["env"] = []
    assert kserve_webhooks.validate_inference_service(obj, None) == \
        "canary requires a stable predictor with a model (multi-model serving is not supported with canary)"
    assert kserve_webhooks.validate_inference_service(obj, None, default_mode="Knative") == \
        "canary requires a stable predictor with a model (multi-model serving is not supported with canary)"


def test_protocol_env_and_replicas() -> None:
    """predictor_custom.go validateCustomProtocol (its two arguments swapped, as KServe has them);
    component.go validateReplicas."""
    obj = isvc()
    obj["spec"]["predictor"]["containers"][0]["env"].append({"name": "PROTOCOL", "value": "v3"})
    assert kserve_webhooks.validate_inference_service(obj, None) == "invalid protocol v1, v2. Must be one of [v3]"
    assert kserve_webhooks.validate_inference_service(isvc(minReplicas=3, maxReplicas=2), None) == \
        "'MinReplicas' cannot be greater than MaxReplicas"
    assert kserve_webhooks.validate_inference_service(isvc(maxReplicas=0, minReplicas=4), None) is None


def test_scaling_fields_per_mode() -> None:
    """validateAutoScalingCompExtension: Knative's KPA takes concurrency or rps only; Standard without an
    autoscalerClass annotation checks nothing; Standard with hpa takes cpu or memory."""
    knative = {"serving.kserve.io/deploymentMode": "Serverless"}
    assert kserve_webhooks.validate_inference_service(isvc(annotations=knative, scaleMetric="cpu"), None) == \
        "[cpu] is not a supported metric"
    assert kserve_webhooks.validate_inference_service(isvc(annotations=knative, scaleMetric="rps", scaleTarget=5),
                                                      None) is None
    assert kserve_webhooks.validate_inference_service(isvc(scaleMetric="cpu", scaleTarget=70), None) is None
    hpa = {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "hpa"}
    assert kserve_webhooks.validate_inference_service(isvc(annotations=hpa, scaleMetric="concurrency"), None) == \
        "[concurrency] is not a supported metric"


def graph(steps: list[dict[str, Any]], name: str = "ab", router: str = "Splitter") -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodes": {"root": {"routerType": router, "steps": steps}}}}


def test_graph_splitter_weights_must_sum_to_100() -> None:
    """inference_graph_validation.go validateInferenceGraphSplitterWeight (InvalidWeightError, WeightNotProvided)."""
    ok = [{"name": "a", "serviceName": "a", "weight": 70}, {"name": "b", "serviceName": "b", "weight": 30}]
    assert kserve_webhooks.validate_inference_graph(graph(ok)) is None
    short = [{"name": "a", "serviceName": "a", "weight": 70}, {"name": "b", "serviceName": "b", "weight": 20}]
    assert kserve_webhooks.validate_inference_graph(graph(short)) == \
        "InferenceGraph[ab] Node[root] splitter node: the sum of traffic weights for all routing targets should be 100"
    missing = [{"name": "a", "serviceName": "a", "weight": 100}, {"name": "b", "serviceName": "b"}]
    assert kserve_webhooks.validate_inference_graph(graph(missing)) == \
        "InferenceGraph[ab] Node[root] Route[b] missing the 'Weight'"


def test_graph_root_targets_and_step_names() -> None:
    """validateInferenceGraphRouterRoot, ...StepNameUniqueness, ...SingleStepTargets."""
    no_root = graph([])
    no_root["spec"]["nodes"] = {"first": no_root["spec"]["nodes"]["root"]}
    assert kserve_webhooks.validate_inference_graph(no_root) == \
        "root node not found, InferenceGraph needs a node with name 'root' as the root node of the graph"
    twice = [{"name": "a", "serviceName": "a", "weight": 50}, {"name": "a", "serviceName": "b", "weight": 50}]
    assert kserve_webhooks.validate_inference_graph(graph(twice)) == \
        'Node "root" of InferenceGraph "ab" contains more than one step with name "a"'
    both = [{"name": "a", "serviceName": "a", "serviceUrl": "http://a", "weight": 100}]
    assert kserve_webhooks.validate_inference_graph(graph(both)) == \
        'Step 0 ("a") in node "root" of InferenceGraph "ab" specifies more than one of nodeName, serviceName, ' \
        "serviceUrl"


# --- Knative's field masks (fieldmask.go, k8s_validation.go) ------------------------------------------------


def test_pod_security_context_is_refused_with_default_features() -> None:
    """PodSpecMask: securityContext only with kubernetes.podspec-securitycontext or secure-pod-defaults."""
    pod = {"containers": [{"name": "kserve-container", "image": "x"}],
           "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000}}
    assert knative_podspec.disallowed_fields(pod) == ["spec.template.spec.securityContext"]
    assert knative_podspec.knative_denial(pod) == (
        'admission webhook "validation.webhook.serving.knative.dev" denied the request: validation failed: '
        "must not set the field(s): spec.template.spec.securityContext")
    assert knative_podspec.disallowed_fields(pod, {"kubernetes.podspec-securitycontext": "enabled"}) == []


def test_secure_pod_defaults_lets_only_seccomp_through_at_pod_level() -> None:
    """PodSecurityContextMask: with secure-pod-defaults alone, only seccompProfile RuntimeDefault/Unconfined."""
    pod = {"containers": [], "securityContext": {"runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}}
    assert knative_podspec.disallowed_fields(pod, {"secure-pod-defaults": "enabled"}) == \
        ["spec.template.spec.securityContext.runAsUser"]


def test_container_security_context_is_allowed_minus_its_masked_fields() -> None:
    """SecurityContextMask and CapabilitiesMask: drop is allowed, add and privileged: true are not."""
    allowed = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
               "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}}
    pod = {"containers": [{"name": "c", "securityContext": allowed}]}
    assert knative_podspec.disallowed_fields(pod) == []
    pod["containers"][0]["securityContext"] = {**allowed, "privileged": True, "capabilities": {"add": ["NET_ADMIN"]},
                                               "seLinuxOptions": {"level": "s0"}}
    assert knative_podspec.disallowed_fields(pod) == [
        "spec.template.spec.containers[0].securityContext.capabilities.add",
        "spec.template.spec.containers[0].securityContext.privileged",
        "spec.template.spec.containers[0].securityContext.seLinuxOptions"]


def test_scheduling_fields_need_their_feature_flags() -> None:
    """PodSpecMask: nodeSelector, tolerations, affinity are feature-gated; serviceAccountName and
    imagePullSecrets are always allowed; automountServiceAccountToken only as false."""
    pod = {"containers": [], "serviceAccountName": "sa", "imagePullSecrets": [{"name": "r"}],
           "nodeSelector": {"gpu": "a100"}, "tolerations": [{"key": "gpu"}], "automountServiceAccountToken": True}
    assert knative_podspec.disallowed_fields(pod) == ["spec.template.spec.automountServiceAccountToken",
                                                      "spec.template.spec.nodeSelector",
                                                      "spec.template.spec.tolerations"]
    assert knative_podspec.disallowed_fields(
        {**pod, "automountServiceAccountToken": False},
        {"kubernetes.podspec-nodeselector": "enabled", "kubernetes.podspec-tolerations": "enabled"}) == []


# --- the deployment mode (utils.go GetDeploymentMode) -------------------------------------------------------------


@pytest.mark.parametrize(("annotation", "recorded", "default", "mode"), [
    (None, None, "Standard", "Standard"),
    (None, None, "Serverless", "Knative"),
    ("RawDeployment", None, "Knative", "Standard"),
    ("Serverless", None, "Standard", "Knative"),
    ("nonsense", None, "Standard", "Standard"),
    ("Knative", "Standard", "Standard", "Standard"),  # the recorded mode wins
])
def test_mode_resolution(annotation: str | None, recorded: str | None, default: str, mode: str) -> None:
    obj = isvc(annotations={"serving.kserve.io/deploymentMode": annotation} if annotation else {})
    if recorded:
        obj["status"] = {"deploymentMode": recorded}
    assert resolve_mode(obj, default) == mode


# --- the status (inference_service_status.go) ----------------------------------------------------------------------


def deployment(generation: int = 1, ready: int = 1, new_ready: bool = True) -> kserve_status.DeploymentView:
    return kserve_status.DeploymentView(name="sepsis-predictor", generation=generation,
                                        replica_set="sepsis-predictor-ab", ready_pods=ready, new_ready=new_ready,
                                        url="http://127.0.0.1:9001")


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", "")) for c in status["conditions"]}


def test_standard_status_follows_the_deployment() -> None:
    """PropagateRawStatus (PredictorReady from Available/Progressing, observedGeneration from the Deployment)
    and kube_ingress_reconciler createRawIngress (IngressReady False until the predictor is ready)."""
    starting = kserve_status.standard_status({}, stable=deployment(ready=0, new_ready=False), canaries=[],
                                             ingress_url="http://127.0.0.1:9000", running_pods=1, now=NOW)
    assert conditions(starting) == {"IngressReady": ("False", "Predictor ingress not created"),
                                    "PredictorReady": ("False", "MinimumReplicasUnavailable"),
                                    "Ready": ("False", "MinimumReplicasUnavailable")}
    assert "url" not in starting and starting["observedGeneration"] == 1 and starting["deploymentMode"] == "Standard"
    ready = kserve_status.standard_status(starting, stable=deployment(), canaries=[],
                                          ingress_url="http://127.0.0.1:9000", running_pods=1, now=LATER)
    assert conditions(ready) == {"IngressReady": ("True", ""), "PredictorReady": ("True", "NewReplicaSetAvailable"),
                                 "Ready": ("True", "")}
    assert ready["url"] == "http://127.0.0.1:9000" and ready["address"] == {"url": "http://127.0.0.1:9001"}
    assert ready["components"] == {"predictor": {"url": "http://127.0.0.1:9001"}}
    # A rolling update: the old pod still serves, so Ready stays True while the generation moves on.
    rolling = kserve_status.standard_status(ready, stable=deployment(generation=2, ready=1, new_ready=False),
                                            canaries=[], ingress_url="http://127.0.0.1:9000", running_pods=2, now=LATER)
    assert conditions(rolling)["PredictorReady"] == ("True", "MinimumReplicasAvailable")
    assert rolling["observedGeneration"] == 2


def test_observed_generation_is_the_childs_not_the_inference_services() -> None:
    """PropagateRawStatus: `ss.ObservedGeneration = deploymentList[0].Status.ObservedGeneration`."""
    status = kserve_status.standard_status({}, stable=deployment(generation=1), canaries=[], ingress_url="u",
                                           running_pods=1, now=NOW)
    assert status["observedGeneration"] == 1  # whatever the InferenceService's metadata.generation is


def test_canary_statuses_and_weights_in_standard() -> None:
    """reconcileCanaryDeployments (canaryStatuses, CanaryPredictorReady) and applyCanaryWeights."""
    canary = kserve_status.CanaryView("challenger", 20, kserve_status.DeploymentView(
        name="sepsis-challenger-predictor", generation=1, replica_set="x", ready_pods=0, new_ready=False, url="c"))
    status = kserve_status.standard_status({}, stable=deployment(), canaries=[canary], ingress_url="u",
                                           running_pods=1, now=NOW)
    assert status["canaryStatuses"] == [{"name": "challenger", "ready": False, "trafficPercent": 20}]
    assert conditions(status)["CanaryPredictorReady"] == ("False", "CanariesNotReady")
    assert conditions(status)["Ready"] == ("True", "")  # CanaryPredictorReady is not one of Ready's dependents
    assert kserve_status.canary_backends(deployment(), [canary]) == [("sepsis-predictor", "http://127.0.0.1:9001", 100)]
    ready = kserve_status.CanaryView("challenger", 20, kserve_status.DeploymentView(
        name="sepsis-challenger-predictor", generation=1, replica_set="x", ready_pods=1, new_ready=True, url="c"))
    assert kserve_status.canary_backends(deployment(), [ready]) == [
        ("sepsis-predictor", "http://127.0.0.1:9001", 80), ("sepsis-challenger-predictor", "c", 20)]


def ksvc(**fields: Any) -> kserve_status.KnativeServiceView:
    return kserve_status.KnativeServiceView(url="http://127.0.0.1:9100", **fields)


def test_serverless_status_copies_the_knative_service() -> None:
    """PropagateStatus + PropagateCrossComponentStatus + ingress_reconciler (IngressReady once a URL exists)."""
    first = ksvc(generation=1, latest_created="sepsis-predictor-00001")
    status = kserve_status.serverless_status({}, first, running_pods=1, ready_pods=0, now=NOW)
    assert conditions(status) == {
        "IngressReady": ("Unknown", ""), "LatestDeploymentReady": ("Unknown", "PredictorConfigurationReady not ready"),
        "PredictorConfigurationReady": ("Unknown", "OutOfDate"), "PredictorReady": ("Unknown", "OutOfDate"),
        "PredictorRouteReady": ("Unknown", "OutOfDate"), "Ready": ("Unknown", "OutOfDate"),
        "RoutesReady": ("Unknown", "PredictorRouteReady not ready")}
    assert status["components"]["predictor"] == {"latestCreatedRevision": "sepsis-predictor-00001"}
    traffic = kserve_status.resolve_traffic(kserve_status.desired_traffic(None, ""), "sepsis-predictor-00001")
    ready = ksvc(generation=1, latest_created="sepsis-predictor-00001", latest_ready="sepsis-predictor-00001",
                 traffic=traffic)
    status = kserve_status.serverless_status(status, ready, running_pods=1, ready_pods=1, now=LATER)
    assert {t: s for t, (s, _) in conditions(status).items()} == dict.fromkeys(
        ("IngressReady", "LatestDeploymentReady", "PredictorConfigurationReady", "PredictorReady",
         "PredictorRouteReady", "Ready", "RoutesReady"), "True")
    assert status["components"]["predictor"] == {
        "latestCreatedRevision": "sepsis-predictor-00001", "latestReadyRevision": "sepsis-predictor-00001",
        "latestRolledoutRevision": "sepsis-predictor-00001", "url": "http://127.0.0.1:9100",
        "address": {"url": "http://127.0.0.1:9100"},
        "traffic": [{"revisionName": "sepsis-predictor-00001", "latestRevision": True, "percent": 100}]}
    assert status["observedGeneration"] == 1 and status["deploymentMode"] == "Knative"
    severities = {c["type"]: c.get("severity") for c in status["conditions"]}
    assert severities["LatestDeploymentReady"] == "Info" and severities["PredictorReady"] is None


def test_serverless_canary_traffic_and_rollout_bookkeeping() -> None:
    """ksvc_reconciler.go traffic (latest gets canaryTrafficPercent, `prev` the rest) and PropagateStatus's
    latestRolledoutRevision/previousRolledoutRevision, moved only at 100 percent."""
    desired = kserve_status.desired_traffic(10, "sepsis-predictor-00001")
    assert desired == [{"latestRevision": True, "percent": 10},
                       {"revisionName": "sepsis-predictor-00001", "latestRevision": False, "percent": 90,
                        "tag": "prev"}]
    # The new revision is not ready yet: Knative's route sends `latestRevision: true` to the latest ready one.
    assert kserve_status.resolve_traffic(desired, "sepsis-predictor-00001") == [
        {"revisionName": "sepsis-predictor-00001", "latestRevision": True, "percent": 10},
        {"revisionName": "sepsis-predictor-00001", "latestRevision": False, "percent": 90, "tag": "prev"}]
    old = {"components": {"predictor": {"latestRolledoutRevision": "sepsis-predictor-00001"}}}
    split = kserve_status.resolve_traffic(desired, "sepsis-predictor-00002")
    view = ksvc(generation=2, latest_created="sepsis-predictor-00002", latest_ready="sepsis-predictor-00002",
                traffic=split)
    status = kserve_status.serverless_status(old, view, running_pods=2, ready_pods=2, now=NOW)
    assert status["components"]["predictor"]["latestRolledoutRevision"] == "sepsis-predictor-00001"
    promoted = kserve_status.resolve_traffic(kserve_status.desired_traffic(None, "sepsis-predictor-00001"),
                                             "sepsis-predictor-00002")
    view = ksvc(generation=3, latest_created="sepsis-predictor-00002", latest_ready="sepsis-predictor-00002",
                traffic=promoted)
    status = kserve_status.serverless_status(status, view, running_pods=1, ready_pods=1, now=LATER)
    predictor = status["components"]["predictor"]
    assert (predictor["latestRolledoutRevision"], predictor["previousRolledoutRevision"]) == \
        ("sepsis-predictor-00002", "sepsis-predictor-00001")
    assert status["observedGeneration"] == 3


def test_serverless_refused_by_knative_never_becomes_ready() -> None:
    """predictor.go: a failed reconcileKnativeDeployment -> PropagateRawStatusWithMessages(ReconcileFailed)."""
    denial = knative_podspec.knative_denial({"containers": [], "securityContext": {"runAsUser": 1}})
    status = kserve_status.serverless_status({}, kserve_status.KnativeServiceView(denial=denial), running_pods=0,
                                             ready_pods=0, now=NOW)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReconcileFailed")
    assert "must not set the field(s): spec.template.spec.securityContext" in ready["message"]
    assert "url" not in status


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    """knative.dev/pkg ConditionManager.SetCondition: an equal condition keeps lastTransitionTime."""
    first = kserve_status.standard_status({}, stable=deployment(), canaries=[], ingress_url="u", running_pods=1,
                                          now=NOW)
    again = kserve_status.standard_status(first, stable=deployment(), canaries=[], ingress_url="u", running_pods=1,
                                          now=LATER)
    assert again == first and merge_patch(first, again) == {}


def test_canary_predictor_is_the_stable_one_with_the_canarys_fields_over_it() -> None:
    """predictor.go buildCanaryPredictor: mergo.WithOverride, autoscaling fields zeroed."""
    stable = {"containers": [{"name": "kserve-container", "args": ["--model_version=3"]}], "maxReplicas": 4,
              "volumes": [{"name": "keys"}]}
    canary = {"name": "challenger", "containers": [{"name": "kserve-container", "args": ["--model_version=4"]}]}
    merged = merged_canary_predictor(stable, canary)
    assert merged == {"containers": canary["containers"], "volumes": [{"name": "keys"}], "name": "challenger"}
