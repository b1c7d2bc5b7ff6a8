"""Two runtimes as the arms of an A/B test, called over HTTP exactly as KServe's InferenceGraph router calls them.

KServe's router (kserve `cmd/router/main.go`, `callService`) POSTs the client's body to the step's
`serviceUrl` — `/v1/models/<model_name>:predict`, or `/v2/models/<model_name>/infer` under protocol v2
(`pkg/constants/constants.go`, `PredictPath`) — whatever path the client used, with `Content-Type` and only
the headers its `router.headers.propagate` patterns match (here `Authorization`, the documented setting).
So each request here is exactly that: the router's path, the body, Content-Type and Authorization, nothing
else. Real `python -m medserve_runtime` processes; arm-a and arm-b name each other with `--peer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from medserve_sandbox import procs
from runtime_kit import KEYS, RuntimeProcess, predict_body, trained_model


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RuntimeProcess]]:
    model_dir = trained_model(tmp_path_factory)
    ports = {"arm-a": procs.free_port(), "arm-b": procs.free_port()}
    runtimes: dict[str, RuntimeProcess] = {}
    try:
        for arm, other in (("arm-a", "arm-b"), ("arm-b", "arm-a")):
            rt = RuntimeProcess(tmp_path_factory.mktemp(arm), model_dir=model_dir, port=ports[arm],
                                args=[f"--model_name={arm}", f"--peer={other}=http://127.0.0.1:{ports[other]}",
                                      "--peer_timeout_s=2"])
            runtimes[arm] = rt.start()
        yield runtimes
    finally:
        for rt in runtimes.values():
            rt.stop()


def router(rt: RuntimeProcess, arm: str, body: dict[str, object], *, key: str = "clinician",
           protocol: str = "v1", extra: dict[str, str] | None = None) -> httpx.Response:
    """One call as KServe's router makes it: the step's URL, the body, Content-Type and the propagated key."""
    path = f"/v1/models/{arm}:predict" if protocol == "v1" else f"/v2/models/{arm}/infer"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEYS[key][0]}", **(extra or {})}
    return httpx.post(rt.url + path, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_clinical_request_at_the_routers_path_is_answered_and_names_its_arm(
        arms: dict[str, RuntimeProcess], protocol: str) -> None:
    r = router(arms["arm-a"], "arm-a", predict_body("patient-router"), protocol=protocol)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "arm-a" and body["model_version"].startswith("local-")
    assert body["prediction"]["primary_diagnosis"] in body["prediction"]["probabilities"]
    assert body["prediction_id"].startswith("arm-a.")
    assert r.headers["x-medserve-arm"] == f"arm-a/{body['model_version']}"
    record = arms["arm-a"].audit_records()[-1]
    assert (record["endpoint"], record["status"]) == ("/predict", 200)


def test_kserve_v1_bodies_at_that_path_stay_kserves(arms: dict[str, RuntimeProcess]) -> None:
    record = predict_body()["clinical_data"]
    r = router(arms["arm-a"], "arm-a", {"instances": [record]})
    assert r.status_code == 200, r.text
    assert [set(p) for p in r.json()["predictions"]] == [{"prediction_id", "label", "confidence", "probabilities"}]
    assert arms["arm-a"].audit_records()[-1]["endpoint"] == "/v1/models/{name}:predict"


def test_feedback_at_the_other_arm_reaches_the_arm_that_predicted(arms: dict[str, RuntimeProcess]) -> None:
    predicted = router(arms["arm-a"], "arm-a", predict_body("patient-fb")).json()
    outcome = predicted["prediction"]["primary_diagnosis"]
    # The router's split sends the ground truth to arm-b.
    r = router(arms["arm-b"], "arm-b", {"prediction_id": predicted["prediction_id"], "outcome": outcome})
    assert r.status_code == 200, r.text
    assert r.json() == {"prediction_id": predicted["prediction_id"], "model_version": predicted["model_version"],
                        "predicted": outcome, "outcome": outcome, "correct": True}
    at_b, at_a = arms["arm-b"].audit_records()[-1], arms["arm-a"].audit_records()[-1]
    assert (at_b["endpoint"], at_b["outcome"], at_b["forwarded_to"]) == ("/feedback", "forwarded", "arm-a")
    assert (at_a["endpoint"], at_a["status"], at_a["prediction_id"]) == ("/feedback", 200, predicted["prediction_id"])
    assert "prediction_id" not in at_b or at_b["prediction_id"] is None  # client text at arm-b
    # One ground truth per prediction, whichever arm it arrives at.
    again = router(arms["arm-b"], "arm-b", {"prediction_id": predicted["prediction_id"], "outcome": outcome})
    assert (again.status_code, again.json()["code"]) == (409, "duplicate_feedback")
    for rt in arms.values():
        assert "patient-fb" not in rt.log() and predicted["prediction_id"] not in rt.log()


def test_feedback_needs_the_feedback_permission_at_the_routers_path(arms: dict[str, RuntimeProcess]) -> None:
    predicted = router(arms["arm-a"], "arm-a", predict_body()).json()
    r = router(arms["arm-a"], "arm-a", {"prediction_id": predicted["prediction_id"], "outcome": "sepsis"},
               key="predictor")
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")


def test_a_forwarded_request_is_never_forwarded_again(arms: dict[str, RuntimeProcess]) -> None:
    predicted = router(arms["arm-a"], "arm-a", predict_body()).json()
    r = router(arms["arm-b"], "arm-b", {"prediction_id": predicted["prediction_id"], "outcome": "sepsis"},
               extra={"X-Medserve-Forwarded-By": "arm-a"})
    assert (r.status_code, r.json()["code"]) == (404, "unknown_prediction")


def test_an_unreachable_arm_is_a_503_within_the_timeout(tmp_path: Path,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    gone = procs.free_port()  # nothing listens there: the challenger was deleted
    with RuntimeProcess(tmp_path, model_dir=trained_model(tmp_path_factory),
                        args=["--model_name=arm-c", f"--peer=arm-gone=http://127.0.0.1:{gone}",
                              "--peer_timeout_s=1"]) as rt:
        r = router(rt, "arm-c", {"prediction_id": "arm-gone.0123456789abcdef", "outcome": "sepsis"})
        assert r.status_code == 503
        assert r.json() == {"error": "prediction_id: the prediction was made by arm arm-gone, which did not "
                                     "answer within 1 s; retry later", "field": "prediction_id",
                            "code": "peer_unavailable"}
        record = rt.audit_records()[-1]
        assert (record["outcome"], record["forwarded_to"], record["status"]) == ("peer_unavailable", "arm-gone", 503)
