"""The shared conditions helper: transition times, derived Ready, transition events."""

from __future__ import annotations

from medserve_operator.kit import conditions

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_set_condition_appends_and_keeps_others() -> None:
    conds = conditions.set_condition([], "A", "True", "Ok", "fine", generation=1, now=T0)
    conds = conditions.set_condition(conds, "B", "False", "Bad", "broken", generation=1, now=T0)
    assert [c["type"] for c in conds] == ["A", "B"]
    assert conds[0] == {"type": "A", "status": "True", "reason": "Ok", "message": "fine",
                        "lastTransitionTime": T0, "observedGeneration": 1}


def test_transition_time_moves_only_when_status_flips() -> None:
    conds = conditions.set_condition([], "A", "False", "Waiting", "x", generation=1, now=T0)
    same = conditions.set_condition(conds, "A", "False", "OtherReason", "y", generation=2, now=T1)
    assert same[0]["lastTransitionTime"] == T0
    assert same[0]["reason"] == "OtherReason" and same[0]["observedGeneration"] == 2
    flipped = conditions.set_condition(same, "A", "True", "Ok", "z", generation=2, now=T1)
    assert flipped[0]["lastTransitionTime"] == T1


def test_derive_ready_true_only_when_all_required_true() -> None:
    conds = conditions.set_condition([], "A", "True", "Ok", "", generation=1, now=T0)
    conds = conditions.set_condition(conds, "B", "True", "Ok", "", generation=1, now=T0)
    ready = conditions.find(conditions.derive_ready(conds, ["A", "B"], generation=1, now=T0), "Ready")
    assert ready is not None and ready["status"] == "True"


def test_derive_ready_copies_the_blocking_reason() -> None:
    conds = conditions.set_condition([], "A", "True", "Ok", "", generation=1, now=T0)
    conds = conditions.set_condition(conds, "B", "False", "RegistryUnavailable", "mlflow down", generation=1, now=T0)
    ready = conditions.find(conditions.derive_ready(conds, ["A", "B"], generation=1, now=T0), "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "RegistryUnavailable")
    assert "B: mlflow down" in ready["message"]


def test_derive_ready_unknown_when_a_condition_is_missing_or_unknown() -> None:
    conds = conditions.set_condition([], "A", "True", "Ok", "", generation=1, now=T0)
    ready = conditions.find(conditions.derive_ready(conds, ["A", "B"], generation=1, now=T0), "Ready")
    assert ready is not None and ready["status"] == "Unknown"


def test_derive_ready_false_when_a_negative_condition_holds() -> None:
    conds = conditions.set_condition([], "A", "True", "Ok", "", generation=1, now=T0)
    conds = conditions.set_condition(conds, "Degraded", "True", "LowAccuracy", "0.7 < 0.8", generation=1, now=T0)
    ready = conditions.find(conditions.derive_ready(conds, ["A"], negative=["Degraded"], generation=1, now=T0),
                            "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "LowAccuracy")


def test_transitions_reports_flips_with_event_types() -> None:
    old = conditions.set_condition([], "A", "False", "Waiting", "", generation=1, now=T0)
    new = conditions.set_condition(old, "A", "True", "Ok", "done", generation=1, now=T1)
    new = conditions.set_condition(new, "DriftDetected", "True", "Drift", "psi high", generation=1, now=T1)
    events = conditions.transitions(old, new, negative=("DriftDetected",))
    assert ("Normal", "Ok", "A is True: done") in events
    assert ("Warning", "Drift", "DriftDetected is True: psi high") in events
    assert conditions.transitions(new, new, negative=()) == []


def test_transitions_skip_a_first_unknown() -> None:
    new = conditions.set_condition([], "A", "Unknown", "Pending", "", generation=1, now=T0)
    assert conditions.transitions([], new, negative=()) == []


def test_transitions_leave_ready_failures_to_the_sub_condition_and_waiting_is_normal() -> None:
    old = conditions.set_condition([], "A", "True", "Ok", "", generation=1, now=T0)
    old = conditions.derive_ready(old, ["A"], generation=1, now=T0)
    new = conditions.set_condition(old, "A", "Unknown", "Updating", "rolling out", generation=2, now=T1)
    new = conditions.derive_ready(new, ["A"], generation=2, now=T1)
    assert conditions.transitions(old, new, negative=()) == [("Normal", "Updating", "A is Unknown: rolling out")]
    back = conditions.derive_ready(conditions.set_condition(new, "A", "True", "Ok", "", generation=2, now=T1),
                                   ["A"], generation=2, now=T1)
    assert ("Normal", "Ready", "Ready is True: all conditions are satisfied") in \
        conditions.transitions(new, back, negative=())


def test_merge_patch_is_minimal_and_nulls_nested_removals() -> None:
    from medserve_operator.clients.kube import merge_patch

    old = {"phase": "Running", "estimates": {"control": 0.8, "difference": 0.1, "confidenceSequence": [0.0, 0.2]},
           "url": "http://a"}
    new = {"phase": "Running", "estimates": {"control": 0.81, "confidenceSequence": [0.01, 0.2]},
           "samples": {"control": 3}}
    assert merge_patch(old, new) == {"estimates": {"control": 0.81, "difference": None,
                                                   "confidenceSequence": [0.01, 0.2]},
                                     "samples": {"control": 3}, "url": None}
    assert merge_patch(new, new) == {}
