"""What KServe's InferenceGraph router does with a graph, read from KServe 0.20's source (pure: no I/O).

Two questions the ABTest reconciler asks of the router, and where KServe answers them:

- **Does the router forward the arms' API key?** The router copies to each step only the request headers
  whose (Go-canonical) name matches one of its `PROPAGATE_HEADERS` patterns (`cmd/router/main.go`: `main`
  compiles `strings.Split($PROPAGATE_HEADERS, ",")` with `regexp.Compile`, unanchored; `callService`
  matches each header name against them). The graph controller sets that env from the `router` entry of
  the `inferenceservice-config` ConfigMap, `headers.propagate`, and only when that key is present
  (`pkg/controller/v1alpha1/inferencegraph/raw_ig.go` `createInferenceGraphPodSpec`,
  `knative_reconciler.go` `createKnativeService`). KServe 0.20's default config has no `headers` key, so no
  header but Content-Type reaches the arms; an empty list makes the env the empty string, whose one empty
  pattern matches every header. `forwards(patterns, header)` is that rule.
- **Has the router stopped routing to an arm?** The router takes its graph from its `--graph-json`
  argument at start (`cmd/router/main.go` `main`), so a changed graph takes effect only when KServe has
  rolled out new router pods: a Deployment named after the graph in Standard mode (`raw_ig.go`
  `createInferenceGraphPodSpec`, `handleInferenceGraphRawDeployment`), a Knative Service in Serverless
  mode (`createKnativeService`). The InferenceGraph's own status does not say when that is done: in
  Standard mode `PropagateRawStatus` copies the Deployment's `status.observedGeneration` (the Deployment's
  generation, not the graph's) and sets Ready once the Deployment has an `Available` condition at all; in
  Serverless mode `Reconcile` copies the Knative Service's conditions and no observedGeneration. So
  `router_rolled_out` reads the router's workload itself: its pod template's `--graph-json` names none of
  the arms being released, and the rollout is complete — for a Deployment as `kubectl rollout status`
  judges it (k8s.io/kubectl `polymorphichelpers/rollout_status.go`, `DeploymentStatusViewer.Status`:
  observedGeneration caught up, every replica updated and available, no old replica left), for a Knative
  Service when its observedGeneration caught up, it is Ready and all traffic goes to the latest ready
  revision (knative.dev/serving `pkg/apis/serving/v1/service_lifecycle.go`). A router pod told to stop
  still answers for `drainSleepDuration` (30 s, `handleSignals`), which the reconciler waits out after this.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from medserve_operator.kit.apply import ChildKind

DEPLOYMENT: Final = ChildKind("apps/v1", "deployments")
KNATIVE_SERVICE: Final = ChildKind("serving.knative.dev/v1", "services")
DEPLOYMENT_MODE_ANNOTATION: Final = "serving.kserve.io/deploymentMode"
STANDARD_MODES: Final = frozenset({"Standard", "RawDeployment"})
SERVERLESS_MODES: Final = frozenset({"Serverless", "Knative"})
KEY_HEADERS: Final = ("Authorization", "X-Api-Key")
"""The headers an arm's API key travels in (the runtime's gate accepts either), Go-canonical."""
ROUTER_DRAIN_SECONDS: Final = 30.0
"""`drainSleepDuration` of KServe's router: how long a router pod told to stop keeps answering."""


def forwards(patterns: Sequence[str] | None, header: str) -> bool:
    """Whether the router forwards `header` (Go-canonical) given `router.headers.propagate` (None: no key)."""
    if patterns is None:
        return False
    for pattern in ",".join(patterns).split(","):
        try:
            if re.search(pattern, header):
                return True
        except re.error:
            continue  # the router logs a pattern it cannot compile and goes on without it
    return False


def forwarded_key_header(patterns: Sequence[str] | None) -> str | None:
    """The first header carrying an API key that the router forwards; None when it forwards none."""
    return next((h for h in KEY_HEADERS if forwards(patterns, h)), None)


def router_workloads(graph: Mapping[str, Any]) -> list[ChildKind]:
    """Where the graph's router runs, by the graph's deployment mode annotation; both kinds when unsaid."""
    mode = ((graph.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if mode in STANDARD_MODES:
        return [DEPLOYMENT]
    if mode in SERVERLESS_MODES:
        return [KNATIVE_SERVICE]
    return [DEPLOYMENT, KNATIVE_SERVICE]


def graph_services(workload: Mapping[str, Any]) -> set[str] | None:
    """The InferenceService names the router's pod template routes to (its `--graph-json`); None if unread."""
    containers = (((workload.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    args: list[str] = list((containers[0] if containers else {}).get("args") or [])
    for flag, value in itertools.pairwise(args):
        if flag == "--graph-json":
            try:
                spec = json.loads(value)
            except ValueError:
                return None
            return {str(step.get("serviceName")) for node in (spec.get("nodes") or {}).values()
                    for step in (node.get("steps") or []) if step.get("serviceName")}
    return None


def router_rolled_out(workload: Mapping[str, Any] | None, *, released: Iterable[str]) -> tuple[bool, str]:
    """(done, why): whether every router pod now runs a graph that routes to none of `released`."""
    if workload is None:
        return False, "KServe has not created the router's Deployment or Knative Service yet"
    kind = str(workload.get("kind") or "")
    name = str((workload.get("metadata") or {}).get("name"))
    services = graph_services(workload)
    if services is None:
        return False, f"the router's {kind} {name} has no --graph-json the operator can read"
    still = sorted(set(released) & services)
    if still:
        return False, f"the router's {kind} {name} still routes to {', '.join(still)}"
    meta, status = workload.get("metadata") or {}, workload.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return False, f"the router's {kind} {name} has not observed its latest generation yet"
    if kind == "Deployment":
        wanted = int((workload.get("spec") or {}).get("replicas", 1))
        replicas, updated = int(status.get("replicas") or 0), int(status.get("updatedReplicas") or 0)
        available = int(status.get("availableReplicas") or 0)
        if updated < wanted or replicas > updated or available < updated:
            return False, (f"the router's Deployment {name} is rolling out ({updated} of {wanted} updated, "
                           f"{replicas - updated} old, {available} available)")
        return True, f"every pod of the router's Deployment {name} runs the new graph"
    ready: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    latest = status.get("latestReadyRevisionName")
    if ready.get("status") != "True" or latest is None or latest != status.get("latestCreatedRevisionName"):
        return False, f"the router's Knative Service {name} has not made its latest revision ready yet"
    if any(t.get("revisionName") != latest and t.get("percent") for t in status.get("traffic") or []):
        return False, f"the router's Knative Service {name} still sends traffic to an older revision"
    return True, f"all traffic of the router's Knative Service {name} goes to revision {latest}"
