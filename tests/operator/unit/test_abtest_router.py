"""KServe's router, as the ABTest reconciler reads it (controllers/abtest/router.py), and the conditions it
derives (HeadersPropagated, TreatmentRoutedAway, TreatmentReleased): plain dicts in, checks out."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from medserve_operator.controllers.abtest.router import (
    DEPLOYMENT,
    KNATIVE_SERVICE,
    forwarded_key_header,
    forwards,
    graph_services,
    router_rolled_out,
    router_workloads,
)
from medserve_operator.controllers.abtest.status import headers_check, release_checks

NOW = datetime.datetime(2026, 12, 2, 5, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(("patterns", "header", "forwarded"), [
    (None, "Authorization", False),  # KServe 0.20's default config: no headers.propagate key
    (("Authorization",), "Authorization", True),
    (("authorization",), "Authorization", False),  # Go canonical names, case-sensitive regexps
    (("X-Api-.*",), "X-Api-Key", True),
    (("Auth",), "Authorization", True),  # unanchored, as regexp.MatchString
    ((), "Authorization", True),  # "propagate": [] → PROPAGATE_HEADERS="" → one empty pattern: every header
    (("[", "Authorization"), "Authorization", True),  # a pattern that does not compile is skipped
])
def test_forwards_follows_the_routers_pattern_matching(patterns: tuple[str, ...] | None, header: str,
                                                       forwarded: bool) -> None:
    assert forwards(patterns, header) is forwarded


def test_headers_condition_reports_keys_the_router_drops() -> None:
    assert headers_check(None, [])[:2] == ("True", "NoKeysRequired")
    status, reason, message = headers_check(None, ["triage", "triage-v2"])
    assert (status, reason) == ("False", "KeyNotForwarded")
    assert "router.headers.propagate" in message and "401" in message
    assert headers_check(("X-Api-Key",), ["triage"])[:2] == ("True", "KeyForwarded")
    assert forwarded_key_header(("Authorization", "X-Api-Key")) == "Authorization"


def router_deployment(services: list[str], *, generation: int = 2, observed: int = 2, replicas: int = 1,
                      updated: int = 1, available: int = 1, old: int = 0) -> dict[str, Any]:
    """The router Deployment as KServe's raw_ig.go renders it and the Deployment controller reports it."""
    graph = {"nodes": {"root": {"routerType": "Splitter",
                                "steps": [{"serviceName": s, "weight": 100 // len(services)} for s in services]}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ab", "generation": generation},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "ab", "args": ["--graph-json", json.dumps(graph)]}]}}},
            "status": {"observedGeneration": observed, "replicas": updated + old, "updatedReplicas": updated,
                       "availableReplicas": available}}


@pytest.mark.parametrize(("workload", "done", "why"), [
    (None, False, "has not created"),
    (router_deployment(["triage", "triage-v2"]), False, "still routes to triage-v2"),
    (router_deployment(["triage"], observed=1), False, "latest generation"),
    (router_deployment(["triage"], old=1), False, "rolling out (1 of 1 updated, 1 old"),
    (router_deployment(["triage"], replicas=2, updated=1), False, "rolling out"),
    (router_deployment(["triage"], available=0), False, "rolling out"),
    (router_deployment(["triage"]), True, "every pod"),
])
def test_a_router_deployment_has_routed_away_once_rolled_out(workload: dict[str, Any] | None, done: bool,
                                                             why: str) -> None:
    result = router_rolled_out(workload, released=["triage-v2"])
    assert result[0] is done and why in result[1]


def test_a_router_knative_service_has_routed_away_when_all_traffic_is_on_the_latest_revision() -> None:
    ksvc = router_deployment(["triage"])
    ksvc.update(kind="Service", status={
        "observedGeneration": 2, "latestCreatedRevisionName": "ab-00002", "latestReadyRevisionName": "ab-00002",
        "conditions": [{"type": "Ready", "status": "True"}],
        "traffic": [{"revisionName": "ab-00002", "percent": 100, "latestRevision": True}]})
    assert router_rolled_out(ksvc, released=["triage-v2"])[0] is True
    ksvc["status"]["traffic"].append({"revisionName": "ab-00001", "percent": 10})
    assert router_rolled_out(ksvc, released=["triage-v2"]) == \
        (False, "the router's Knative Service ab still sends traffic to an older revision")
    ksvc["status"]["latestReadyRevisionName"] = "ab-00001"
    assert "latest revision ready" in router_rolled_out(ksvc, released=["triage-v2"])[1]


def test_the_workload_kind_follows_the_graphs_deployment_mode() -> None:
    def graph(mode: str | None) -> dict[str, Any]:
        return {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": mode} if mode else {}}}

    assert router_workloads(graph("Standard")) == [DEPLOYMENT]
    assert router_workloads(graph("RawDeployment")) == [DEPLOYMENT]
    assert router_workloads(graph("Serverless")) == [KNATIVE_SERVICE]
    assert router_workloads(graph(None)) == [DEPLOYMENT, KNATIVE_SERVICE]
    assert graph_services({"spec": {"template": {"spec": {"containers": [{"args": ["--graph-json", "{"]}]}}}}) is None


def test_released_only_after_the_drain_time_since_the_router_routed_away() -> None:
    switching = release_checks(None, (False, "rolling"), treatment="triage-v2", now=NOW, drain_seconds=30)
    assert [c[:2] for c in switching] == [("False", "RouterSwitching"), ("False", "RouterSwitching")]
    first = release_checks(None, (True, "done"), treatment="triage-v2", now=NOW, drain_seconds=30)
    assert [c[:2] for c in first] == [("True", "RouterSwitched"), ("False", "Draining")]
    since = [{"type": "TreatmentRoutedAway", "status": "True", "lastTransitionTime": "2026-12-02T04:59:40Z"}]
    assert release_checks(since, (True, "done"), treatment="triage-v2", now=NOW, drain_seconds=30)[1][:2] == \
        ("False", "Draining")
    since[0]["lastTransitionTime"] = "2026-12-02T04:59:30Z"
    released = release_checks(since, (True, "done"), treatment="triage-v2", now=NOW, drain_seconds=30)[1]
    assert released[:2] == ("True", "Released") and "30 s" in released[2]
    assert release_checks(None, (True, "done"), treatment="t", now=NOW, drain_seconds=0)[1][0] == "True"
