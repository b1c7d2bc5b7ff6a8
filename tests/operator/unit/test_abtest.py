"""The ABTest reconciler's pure parts: the InferenceGraph render (validated against KServe's real schema),
the arm checks, the PromQL it asks, the status it writes, and the closed loop's challenger and ABTest."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from medserve_operator.api import ABTestSpec, RetrainPolicySpec, parse_spec
from medserve_operator.controllers import abtest, retrainpolicy
from medserve_operator.controllers.abtest import Arm, Outcome, render
from medserve_operator.kit import manifest
from medserve_operator.stats import sequential

NOW = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=datetime.UTC)


def ab_spec(**overrides: Any) -> ABTestSpec:
    parsed = parse_spec(ABTestSpec, {"control": {"modelDeployment": "triage"},
                                   "treatment": {"modelDeployment": "triage-v2"}, **overrides})
    assert isinstance(parsed, ABTestSpec)
    return parsed


def graph(treatment: str | None = "triage-v2", percent: int = 30) -> dict[str, Any]:
    return render.render_inference_graph(name="ab", namespace="icu", uid="uid-ab", control_service="triage",
                                         treatment_service=treatment, treatment_percent=percent)


def arm(role: str, name: str, version: str | None, *, model: str = "triage-classifier",
        service: bool = True) -> Arm:
    status: dict[str, Any] = {"model": {"name": model, "version": version}} if version else {}
    if service:
        status["inferenceService"] = name
    return Arm(role, name, {"metadata": {"name": name}, "spec": {}, "status": status})


def test_graph_is_a_weighted_splitter_owned_by_the_abtest() -> None:
    ig = graph()
    assert (ig["apiVersion"], ig["kind"]) == ("serving.kserve.io/v1alpha1", "InferenceGraph")
    assert ig["metadata"]["ownerReferences"][0]["kind"] == "ABTest"
    assert ig["metadata"]["labels"][render.ABTEST_LABEL] == "ab"
    root = ig["spec"]["nodes"]["root"]
    assert root["routerType"] == "Splitter"
    assert [(s["name"], s["serviceName"], s["weight"]) for s in root["steps"]] == \
        [("control", "triage", 70), ("treatment", "triage-v2", 30)]
    concluded = graph(treatment=None)["spec"]["nodes"]["root"]["steps"]
    assert [(s["serviceName"], s["weight"]) for s in concluded] == [("triage", 100)]


def test_graph_valid_against_kserve_schema() -> None:
    schemas = pytest.importorskip("medserve_sandbox.schemas")
    directory = schemas.find_kserve_crds_dir()
    if directory is None:
        pytest.skip("KServe CRD schemas not found (../shared/upstream/kserve); cannot validate the render")
    registry = schemas.SchemaRegistry()
    registry.add_kserve_crds(directory)
    for treatment in ("triage-v2", None):
        registry.admit(graph(treatment), old=None, field_validation="Strict")


def test_owned_differs_sees_weights_and_ignores_server_additions() -> None:
    desired = graph()
    actual = {**desired, "metadata": {**desired["metadata"], "uid": "x", "resourceVersion": "7"},
              "status": {"url": "http://ab"}}
    assert not manifest.owned_differs(desired, actual)
    assert manifest.owned_differs(graph(percent=50), actual)
    assert manifest.owned_differs(graph(treatment=None), actual)


def test_arm_checks_name_what_is_wrong() -> None:
    control, treatment = arm("control", "triage", "1"), arm("treatment", "triage-v2", "2")
    assert abtest.check_arms(control, treatment, None)[:2] == ("True", "ArmsReady")
    missing = Arm("treatment", "triage-v2", None)
    state, reason, message = abtest.check_arms(control, missing, None)
    assert (state, reason) == ("False", "ModelDeploymentNotFound") and "triage-v2" in message
    assert abtest.check_arms(control, arm("treatment", "triage-v2", None), None)[1] == "ArmNotReady"
    assert abtest.check_arms(control, arm("treatment", "triage-v2", "1"), None)[1] == "IdenticalArms"
    # The same version of another registered model is a real comparison.
    assert abtest.check_arms(control, arm("treatment", "triage-v2", "1", model="other"), None)[0] == "True"
    paused = abtest.check_arms(control, treatment, {"control": "1", "treatment": "3"})
    assert paused[1] == "VersionChanged" and "version 3" in paused[2]


def test_promql_template_is_filled_per_arm_and_sampled_over_the_window() -> None:
    count, total, squares = abtest.promql_queries('error_rate{model="{arm_model}",version="{arm_version}"}',
                                                  "triage-v2", "2", 600, 30.0)
    assert count == 'count_over_time((error_rate{model="triage-v2",version="2"})[600s:30s])'
    assert total == 'sum_over_time((error_rate{model="triage-v2",version="2"})[600s:30s])'
    assert squares == 'sum_over_time(((error_rate{model="triage-v2",version="2"}) ^ 2)[600s:30s])'


def evaluation(decision: str = "Inconclusive", concluded: bool = False) -> sequential.Evaluation:
    result = sequential.Evaluation(samples_control=400, samples_treatment=410, control=0.88, treatment=0.94,
                                   difference=0.06, confidence_sequence=(0.01, 0.11), always_valid_p_value=0.004,
                                   decision=decision, concluded=concluded)  # type: ignore[arg-type]
    return result


def ready_graph() -> dict[str, Any]:
    return {**graph(), "status": {"url": "http://127.0.0.1:9000", "conditions": [{"type": "Ready", "status": "True"}]}}


def test_status_runs_then_concludes_and_records_the_promotion() -> None:
    outcome = Outcome(now=NOW, spec=ab_spec(), arms=("True", "ArmsReady", "ok"), graph=ready_graph(),
                      started={"startedAt": "2026-11-27T11:50:00Z",
                               "modelVersions": {"control": "1", "treatment": "2"}},
                      metrics=("True", "MetricsAvailable", "400 and 410"), evaluation=evaluation())
    running = abtest.compute_status({}, outcome, name="ab", generation=1)
    assert running["phase"] == "Running" and running["url"] == "http://127.0.0.1:9000"
    assert running["samples"] == {"control": 400, "treatment": 410}
    assert running["estimates"]["confidenceSequence"] == [0.01, 0.11]
    assert {c["type"]: c["status"] for c in running["conditions"]}["Ready"] == "True"

    done = Outcome(now=NOW, spec=ab_spec(), arms=("True", "ArmsReady", "ok"), graph=ready_graph(),
                   metrics=("True", "MetricsAvailable", "ok"), evaluation=evaluation("TreatmentBetter", True),
                   concluded="TreatmentBetter (the sequential boundary was crossed): ...",
                   promoted=("True", "AliasMoved", "alias champion now points at version 2"))
    concluded = abtest.compute_status(running, done, name="ab", generation=1)
    by_type = {c["type"]: c for c in concluded["conditions"]}
    assert concluded["phase"] == "Concluded" and concluded["concludedAt"] == "2026-11-27T12:00:00Z"
    assert concluded["decision"] == "TreatmentBetter"
    assert (by_type["Concluded"]["status"], by_type["Concluded"]["reason"]) == ("True", "TreatmentBetter")
    assert (by_type["Promoted"]["status"], by_type["Promoted"]["reason"]) == ("True", "AliasMoved")
    assert concluded["modelVersions"] == {"control": "1", "treatment": "2"}  # kept from the start


def test_status_says_why_it_cannot_start() -> None:
    outcome = Outcome(now=NOW, spec=ab_spec(), arms=("False", "ModelDeploymentNotFound", "the treatment ..."))
    status = abtest.compute_status({}, outcome, name="ab", generation=2)
    by_type = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Pending"
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "ModelDeploymentNotFound")
    assert by_type["GraphReady"]["reason"] == "InferenceGraphMissing"


def test_summary_carries_statistics_and_window() -> None:
    result = sequential.Evaluation(400, 410, 0.88, 0.94, 0.06, (0.01, 0.11), 0.004, "TreatmentBetter", True)
    line = abtest.summary(ab_spec(), result, "2026-11-27T11:50:00Z", NOW)
    for part in ("treatment 0.9400 vs control 0.8800", "+0.0600", "95% interval [+0.0100, +0.1100]", "p = 0.004",
                 "400 control and 410 treatment samples", "from 2026-11-27T11:50:00Z to 2026-11-27T12:00:00Z"):
        assert part in line


def policy_spec() -> RetrainPolicySpec:
    parsed = parse_spec(RetrainPolicySpec, {
        "modelDeployment": "triage", "triggers": {"drift": {"enabled": True}}, "job": {"image": "train:1"},
        "promotion": {"strategy": "abtest", "abTest": {"trafficSplit": {"treatmentPercent": 20},
                                                       "statistics": {"interval": "5s", "minSamplesPerArm": 50}}}})
    assert isinstance(parsed, RetrainPolicySpec)
    return parsed


def test_closed_loop_renders_a_challenger_and_a_valid_abtest() -> None:
    champion: dict[str, Any] = {"metadata": {"name": "triage", "namespace": "icu"},
                                "spec": {"model": {"name": "triage-classifier", "alias": "champion"},
                                         "security": {"apiKeySecretRef": {"name": "keys"}}}}
    challenger = retrainpolicy.render_challenger(policy="retrain", uid="uid-p", deployment=champion,
                                                 model_name="triage-classifier", version="7")
    assert challenger["metadata"]["name"] == "triage-v7"
    assert challenger["spec"]["model"] == {"name": "triage-classifier", "version": "7"}
    assert challenger["spec"]["security"] == champion["spec"]["security"]
    assert challenger["metadata"]["ownerReferences"][0]["kind"] == "RetrainPolicy"
    assert champion["spec"]["model"] == {"name": "triage-classifier", "alias": "champion"}  # not mutated
    test = retrainpolicy.render_abtest(policy="retrain", uid="uid-p", namespace="icu", spec=policy_spec(),
                                       challenger="triage-v7", version="7")
    parsed = parse_spec(ABTestSpec, test["spec"])
    assert isinstance(parsed, ABTestSpec)
    assert (parsed.control.model_deployment, parsed.treatment.model_deployment) == ("triage", "triage-v7")
    assert parsed.traffic_split.treatment_percent == 20 and parsed.statistics.interval == "5s"
    assert parsed.on_conclusion.promote
    assert test["metadata"]["labels"][manifest.RETRAIN_POLICY_LABEL] == "retrain"


def test_derived_names_fit_the_limit() -> None:
    name = retrainpolicy.derived_name("a" * 45, "-v123", 45)
    assert len(name) == 45 and name.endswith("-v123")
    assert retrainpolicy.derived_name("x" * 41 + "-yyy", "-v1", 45) == "x" * 41 + "-v1"  # no "--" at the cut


def test_status_figures_round_outwards_so_the_next_look_stays_valid() -> None:
    result = sequential.Evaluation(400, 410, 0.884449, 0.940151, 0.055702, (0.0123456, 0.0987654),
                                   0.016801239390168865, "Inconclusive", False)
    figures = abtest.status_figures(result)
    assert figures["alwaysValidPValue"] == 0.01681  # up, 4 significant digits
    assert figures["estimates"]["confidenceSequence"] == [0.0123, 0.0988]  # wider, 4 decimals
    assert figures["estimates"]["difference"] == 0.0557
    exact = sequential.Evaluation(400, 410, 0.8, 0.9, 0.1, (-0.0168, 0.0168), 0.0168, "Inconclusive", False)
    assert abtest.status_figures(exact)["alwaysValidPValue"] == 0.0168  # no spurious step up
    assert abtest.status_figures(exact)["estimates"]["confidenceSequence"] == [-0.0168, 0.0168]


def test_the_operator_starts_without_numpy() -> None:
    """numpy and scipy cost the operator ~20 MiB; they load with the first drift or A/B evaluation, not before."""
    import subprocess
    import sys

    code = ("import sys; from medserve_operator import main; from medserve_operator.config import OperatorConfig; "
            "main.build_registry(OperatorConfig.from_env({})); "
            "print(sorted(m for m in ('numpy', 'scipy', 'torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
