"""arms.py's pure parts: which route a body at KServe's router path is for, peers, prediction-id owners."""

from __future__ import annotations

import pytest
from medserve_runtime.arms import Peers, clinical_route, parse_peers, router_paths


def test_router_paths_are_kserves_predict_paths_for_the_model_name() -> None:
    # kserve pkg/constants/constants.go PredictPath: v1 and v2.
    assert router_paths("sepsis") == {"/v1/models/sepsis:predict", "/v2/models/sepsis/infer"}


@pytest.mark.parametrize(("body", "route"), [
    (b'{"patient_id": "p", "clinical_data": {}}', "/predict"),
    (b'{"requests": [{"patient_id": "p", "clinical_data": {}}]}', "/batch_predict"),
    (b'{"prediction_id": "a.1", "outcome": "sepsis"}', "/feedback"),
    (b'{"instances": [{}]}', None),  # KServe V1
    (b'{"inputs": [], "clinical_data": {}}', None),  # KServe V2, whatever else it holds
    (b'[1, 2]', None),
    (b'not json', None),
    (b'{"outcome": "x"}', None),  # neither: KServe answers it
])
def test_clinical_bodies_are_told_from_kserve_bodies(body: bytes, route: str | None) -> None:
    assert clinical_route(body) == route


def test_peers_parse_and_reject_what_is_not_name_equals_url() -> None:
    assert parse_peers(["arm-b=http://127.0.0.1:9/"]) == {"arm-b": "http://127.0.0.1:9"}
    for bad in ["arm-b", "Arm_B=http://x", "arm-b=ftp://x", "=http://x"]:
        with pytest.raises(ValueError, match="--peer"):
            parse_peers([bad])


def test_an_id_names_its_arm_and_only_other_known_arms_are_forwarded_to() -> None:
    peers = Peers("arm-a", peers={"arm-b": "http://b"}, url_template=None, timeout_s=1)
    assert peers.id_prefix == "arm-a."
    assert peers.owner("arm-b.0123abcd") == "arm-b"
    assert peers.owner("arm-a.0123abcd") is None  # our own
    assert peers.owner("arm-c.0123abcd") is None  # no URL for it
    assert peers.owner("0123abcd") is None  # an id of a runtime without arms
    assert peers.owner("Not_A_Label.0123") is None
    templated = Peers("arm-a", peers={}, url_template="http://{arm}-predictor.icu.svc.cluster.local",
                      timeout_s=1)
    assert templated.owner("arm-c.0123") == "arm-c"
    assert templated.url_of("arm-c") == "http://arm-c-predictor.icu.svc.cluster.local"
    with pytest.raises(ValueError, match=r"\{arm\}"):
        Peers("arm-a", peers={}, url_template="http://x", timeout_s=1)
