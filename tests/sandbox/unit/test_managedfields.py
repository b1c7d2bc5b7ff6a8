"""Server-side apply and managedFields (sandbox/medserve_sandbox/managedfields.py) on plain dicts.

The expected sets and messages are what a real kube-apiserver answers for the same writes (the
recorded ones are in tests/sandbox/data/apiserver/answers.json; these cover what the recording does
not: associative lists, sets, pruning on re-apply, Update ownership, several conflicts).
"""

from __future__ import annotations

from typing import Any

import pytest
from medserve_sandbox import managedfields as mf

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "size": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "flags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "ports": {
                    "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                               "port": {"type": "integer"}}},
                },
                "extra": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}
SCOPE = mf.Scope(mf.Shape.for_custom(SCHEMA), "x.io/v1", status_reset=True)
EMPTY = {"apiVersion": "x.io/v1", "kind": "Thing"}


def thing(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "x.io/v1", "kind": "Thing", "metadata": {"name": "t", "labels": {"app": "a"}},
            "spec": spec}


def fields_of(obj: dict[str, Any], manager: str) -> dict[str, Any]:
    [entry] = [e for e in obj["metadata"]["managedFields"] if e["manager"] == manager]
    fields: dict[str, Any] = entry["fieldsV1"]
    return fields


def applied(live: dict[str, Any] | None, config: dict[str, Any], manager: str, *,
            force: bool = False) -> dict[str, Any]:
    result = mf.apply(live, config, manager, SCOPE, force=force, empty=EMPTY)
    obj = result.obj
    obj["metadata"]["managedFields"] = result.managed_fields
    return obj


def test_apply_owns_what_it_sets_with_keys_and_set_values() -> None:
    obj = applied(None, thing(size=1, flags=["b", "a"], ports=[{"name": "http", "port": 80}]), "a")
    assert fields_of(obj, "a") == {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {"f:flags": {'v:"a"': {}, 'v:"b"': {}}, "f:size": {},
                   "f:ports": {'k:{"name":"http"}': {".": {}, "f:name": {}, "f:port": {}}}},
    }


def test_associative_lists_merge_by_key_and_keep_live_items() -> None:
    live = applied(None, thing(ports=[{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]), "a")
    obj = applied(live, thing(ports=[{"name": "grpc", "port": 81}]), "b")
    assert [p["name"] for p in obj["spec"]["ports"]] == ["http", "metrics", "grpc"]
    assert set(fields_of(obj, "b")["f:spec"]["f:ports"]) == {'k:{"name":"grpc"}'}


def test_reapply_removes_what_the_manager_no_longer_applies() -> None:
    live = applied(None, thing(size=1, tags=["x"]), "a")
    obj = applied(live, thing(size=1), "a")
    assert "tags" not in obj["spec"]
    assert fields_of(obj, "a")["f:spec"] == {"f:size": {}}


def test_a_field_another_manager_still_owns_is_not_removed() -> None:
    live = applied(None, thing(size=1, tags=["x"]), "a")
    shared = applied(live, thing(tags=["x"]), "b")  # same value: shared ownership, no conflict
    obj = applied(shared, thing(size=1), "a")
    assert obj["spec"]["tags"] == ["x"]


def test_several_conflicts_are_listed_by_manager() -> None:
    live = applied(None, thing(size=1, tags=["x"]), "a")
    with pytest.raises(mf.ApplyConflict) as caught:
        applied(live, thing(size=2, tags=["y"]), "b")
    assert str(caught.value) == ('Apply failed with 2 conflicts: conflicts with "a":\n- .spec.size\n- .spec.tags')
    assert mf.conflict_causes(caught.value.conflicts)[0] == {
        "reason": "FieldManagerConflict", "message": 'conflict with "a"', "field": ".spec.size"}


def test_conflict_with_an_update_manager_names_its_version() -> None:
    created = thing(size=1)
    created["metadata"]["managedFields"] = mf.record_update(None, created, "kubectl-create", SCOPE)
    with pytest.raises(mf.ApplyConflict) as caught:
        applied(created, thing(size=2), "b")
    assert str(caught.value).startswith('Apply failed with 1 conflict: conflict with "kubectl-create" using x.io/v1')


def test_an_update_takes_the_fields_it_changes_and_keys_are_shown_in_paths() -> None:
    live = applied(None, thing(size=1, ports=[{"name": "http", "port": 80}]), "a")
    new = thing(size=5, ports=[{"name": "http", "port": 8080}], extra={"k": "v"})
    new["metadata"]["managedFields"] = live["metadata"]["managedFields"]
    entries = mf.record_update(live, new, "kopf", SCOPE)
    assert entries is not None
    by_manager = {(e["manager"], e["operation"]): e["fieldsV1"] for e in entries}
    assert by_manager[("kopf", "Update")]["f:spec"] == {
        "f:size": {}, "f:ports": {'k:{"name":"http"}': {"f:port": {}}}, "f:extra": {".": {}, "f:k": {}}}
    assert "f:size" not in by_manager[("a", "Apply")]["f:spec"]
    assert [e["operation"] for e in entries] == ["Apply", "Update"]
    assert mf.path_string(("f:spec", "f:ports", 'k:{"name":"http"}', "f:port")) == '.spec.ports[name="http"].port'


def test_status_is_never_owned_through_the_main_resource() -> None:
    obj = applied(None, {**thing(size=1), "status": {"phase": "Ready"}}, "a")
    assert "f:status" not in fields_of(obj, "a")


def test_fields_v1_round_trip() -> None:
    fields = mf.field_set(thing(size=1, ports=[{"name": "h", "port": 1}]), SCOPE.shape)
    assert mf.from_fields_v1(mf.to_fields_v1(fields)) == fields


def test_a_list_item_without_its_key_is_refused() -> None:
    with pytest.raises(mf.ManagedFieldsError, match="omits key field 'name'"):
        mf.apply(None, thing(ports=[{"port": 80}]), "a", SCOPE, force=False, empty=EMPTY)


def test_manager_from_user_agent() -> None:
    assert mf.manager_from_user_agent("kopf/1.37.2 (python)") == "kopf"
    assert mf.manager_from_user_agent("") == ""
