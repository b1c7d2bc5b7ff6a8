"""In-process fakes of the operator's three outside parties: the Kubernetes API, the MLflow registry, Prometheus.

The unit tier drives the reconcilers' public entry points (`controllers.<kind>.reconcile`) through every
orchestration step — the canary decision, alias moves, promotion, trigger gating — without a subprocess
or a socket. The real servers (the API emulator and kubectl, MLflow, Prometheus) run only in the
integration tier; here each fake implements the client interface the controllers call and copies the
error semantics of the real client it stands in for (`clients/kube.py`, `clients/mlflow.py`,
`clients/prometheus.py`), and of the real server behind it where the client passes that through.

`kopf_events()` lets a test call `reconcile` outside a running operator: `kopf.event` reads the
operator's posting settings and event queue from context variables that only `kopf.operator` sets
(`kopf/_core/engines/posting.py`: `settings_var`, `event_queue_var`, `event_queue_loop_var`; unset, the
call raises LookupError). It sets them to default settings and a queue the test reads — the same
queue kopf's poster task would drain into the API — so events are asserted at kopf's own seam.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import dataclasses
import datetime
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import kopf
from kopf._core.engines import posting
from medserve_contract import metrics
from medserve_contract.promql import string_literal
from medserve_operator.clients.kube import ApiError
from medserve_operator.clients.mlflow import ModelNotFound, ModelNotReady, RegistryUnavailable, ResolvedModel
from medserve_operator.clients.prometheus import (
    PrometheusQueryError,
    PrometheusUnavailable,
    VectorSample,
    instant_value,
)

Key = tuple[str, str, str | None, str]
"""(apiVersion, plural, namespace, name) of a stored object."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null removes, anything else replaces whole."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Equality-based label selectors as `k8s.io/apimachinery/pkg/labels/selector.go` (Parse) reads them:
    comma-separated `k=v`, `k==v`, `k!=v`, `k` (exists) and `!k` (does not exist), all of which must hold."""
    for term in (t.strip() for t in (selector or "").split(",") if t.strip()):
        if " in " in term or " notin " in term or "(" in term:
            raise ValueError(f"FakeKube supports equality-based selectors only, not {term!r}")
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything but metadata and status: what bumps metadata.generation when it changes."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class FakeKube:
    """In-process fake of `medserve_operator.clients.kube.KubeClient` (same async methods and signatures).

    Used because the real API server (the sandbox's emulator, a kind cluster) runs only in the
    integration tier. It follows the API server's behaviour for the verbs the operator uses, as
    `k8s.io/apiserver/pkg/registry/generic/registry/store.go` (Create, Update, Delete) and the
    status-subresource strategies (`apiextensions-apiserver/pkg/registry/customresource/strategy.go`:
    PrepareForCreate / PrepareForUpdate, `statusStrategy.PrepareForUpdate`) implement it:
    - get: the object, or None on 404 (as `KubeClient.get`);
    - list: the namespace's objects of a resource matching an equality-based label selector;
    - create: 409 AlreadyExists when the name is taken; sets uid, resourceVersion, generation 1 and
      creationTimestamp; drops `status` (set only through the status subresource);
    - replace (PUT): 404 NotFound when missing; 409 Conflict when `metadata.resourceVersion` is stale;
      without one, 422 Invalid for a custom resource (its strategy's AllowUnconditionalUpdate is false),
      an unconditional update for a built-in kind (Jobs, CronJobs); keeps uid, creationTimestamp and the
      stored status (PUT on the main resource ignores it);
    - patch: an RFC 7386 JSON merge patch; `subresource="status"` changes only status, the main resource
      everything but status; 404 NotFound when missing;
    - delete: False on 404; with `cascade` (the default) the objects whose ownerReferences name the
      deleted uid go too (the garbage collector's Background propagation, done at once here);
    - generation bumps when anything outside metadata and status changes, never on a status write;
      resourceVersion bumps on every write that changes the object.
    Every call of a writing verb is counted in `writes` (`create`, `replace`, `patch`, `patch/status`,
    `delete`), whether or not it succeeded, as an API server's audit log would count requests.
    `before_write(verb, plural, name)`, when set, runs before each write is applied: a test plays a
    concurrent writer there (KServe reporting status between the operator's read and its PUT).
    """

    def __init__(self, *, cascade: bool = True, clock: Callable[[], datetime.datetime] = _utcnow) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []
        """(verb, plural, name) of every write, in order."""
        self.cascade = cascade
        self.clock = clock
        self.before_write: Callable[[str, str, str], None] | None = None
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)

    # The KubeClient interface ------------------------------------------------------------------------

    async def aclose(self) -> None:
        return None

    async def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objects.get((api_version, plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list(self, api_version: str, plural: str, namespace: str | None, *,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(obj) for (api, res, ns, _), obj in sorted(self.objects.items())
                if (api, res) == (api_version, plural) and (namespace is None or ns == namespace)
                and _selector_matches(label_selector, obj["metadata"].get("labels") or {})]

    async def create(self, api_version: str, plural: str, namespace: str | None,
                     body: dict[str, Any]) -> dict[str, Any]:
        self._count("create", plural, body["metadata"]["name"])
        key = (api_version, plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{key[3]}" already exists')
        obj = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
        meta = obj["metadata"]
        meta.update(namespace=namespace, uid=f"uid-{next(self._uids)}", resourceVersion=str(next(self._versions)),
                    generation=1, creationTimestamp=self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def replace(self, api_version: str, plural: str, namespace: str | None,
                      body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._count("replace", plural, name)
        stored = self._stored(api_version, plural, namespace, name)
        wanted = body["metadata"].get("resourceVersion")
        if wanted is None and "." in api_version.split("/")[0]:
            raise ApiError(422, "Invalid", f'{plural}.{api_version.split("/")[0]} "{name}" is invalid: '
                                           "metadata.resourceVersion: Invalid value: 0x0: must be specified for "
                                           "an update")
        if wanted is not None and wanted != stored["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has '
                                            "been modified; please apply your changes to the latest version and "
                                            "try again")
        new = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
        new["metadata"] = {**copy.deepcopy(body["metadata"]),
                           **{k: stored["metadata"][k] for k in ("uid", "creationTimestamp", "namespace",
                                                                 "generation", "resourceVersion")}}
        if "status" in stored:
            new["status"] = stored["status"]
        return self._store(api_version, plural, namespace, stored, new)

    async def patch(self, api_version: str, plural: str, namespace: str | None, name: str,
                    patch: dict[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        self._count("patch/status" if subresource == "status" else "patch", plural, name)
        if subresource not in (None, "status"):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({subresource})")
        stored = self._stored(api_version, plural, namespace, name)
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != stored["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has '
                                            "been modified; please apply your changes to the latest version and "
                                            "try again")
        if subresource == "status":
            new = {**stored, "status": merge(stored.get("status"), patch.get("status") or {})}
        else:
            new = merge(stored, {k: v for k, v in patch.items() if k != "status"})
            for kept in ("uid", "creationTimestamp", "namespace", "name", "generation", "resourceVersion"):
                new["metadata"][kept] = stored["metadata"][kept]
        return self._store(api_version, plural, namespace, stored, new)

    async def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> bool:
        self._count("delete", plural, name)
        obj = self.objects.pop((api_version, plural, namespace, name), None)
        if obj is None:
            return False
        if self.cascade:
            self._collect(obj["metadata"]["uid"])
        return True

    # What the tests use to play the other controllers (KServe, the Job controller) ------------------

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store `obj` as another writer (a person, KServe, a controller) would: status included, not counted."""
        meta = obj["metadata"]
        plural = obj.get("plural") or _PLURALS[obj["kind"]]
        stored = copy.deepcopy({k: v for k, v in obj.items() if k != "plural"})
        stored["metadata"] = {"uid": f"uid-{next(self._uids)}", "generation": 1,
                              "creationTimestamp": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"), **meta,
                              "resourceVersion": str(next(self._versions))}
        self.objects[(obj["apiVersion"], plural, meta.get("namespace"), meta["name"])] = stored
        return copy.deepcopy(stored)

    def set_status(self, api_version: str, plural: str, namespace: str | None, name: str,
                   status: dict[str, Any]) -> None:
        """Replace the object's status as its controller would (KServe, the Job controller); not counted."""
        stored = self._stored(api_version, plural, namespace, name)
        stored["status"] = copy.deepcopy(status)
        stored["metadata"]["resourceVersion"] = str(next(self._versions))

    def obj(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        """The stored object (a copy); KeyError when absent."""
        return copy.deepcopy(self.objects[(api_version, plural, namespace, name)])

    def has(self, api_version: str, plural: str, namespace: str | None, name: str) -> bool:
        return (api_version, plural, namespace, name) in self.objects

    def named(self, plural: str) -> builtins.list[str]:
        """The names of the stored objects of a resource (all namespaces), sorted."""
        return sorted(name for (_, res, _, name) in self.objects if res == plural)

    @property
    def total_writes(self) -> int:
        return sum(self.writes.values())

    # ---------------------------------------------------------------------------------------------

    def _count(self, verb: str, plural: str, name: str) -> None:
        self.writes[verb] += 1
        self.log.append((verb, plural, name))
        if self.before_write is not None:
            self.before_write(verb, plural, name)

    def _stored(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        stored = self.objects.get((api_version, plural, namespace, name))
        if stored is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return stored

    def _store(self, api_version: str, plural: str, namespace: str | None, old: dict[str, Any],
               new: dict[str, Any]) -> dict[str, Any]:
        if new != old:
            if _content(new) != _content(old):
                new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[(api_version, plural, namespace, new["metadata"]["name"])] = new
        return copy.deepcopy(new)

    def _collect(self, uid: str) -> None:
        owned = [key for key, obj in self.objects.items()
                 if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])]
        for key in owned:
            dependent = self.objects.pop(key, None)
            if dependent is not None:
                self._collect(dependent["metadata"]["uid"])


_PLURALS = {"ModelDeployment": "modeldeployments", "ABTest": "abtests", "RetrainPolicy": "retrainpolicies",
            "InferenceService": "inferenceservices", "InferenceGraph": "inferencegraphs", "Job": "jobs",
            "CronJob": "cronjobs"}


@dataclasses.dataclass
class FakeVersion:
    version: str
    source: str
    run_id: str
    status: str = "READY"
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


class FakeRegistry:
    """In-process fake of `medserve_operator.clients.mlflow.MlflowRegistry` (resolve, set_alias,
    find_versions_by_tag, aclose), used because a real MLflow server runs only in the integration tier.

    It raises what the real client raises for what a real MLflow answers: `ModelNotFound` for a model,
    version or alias MLflow does not have (its RESOURCE_DOES_NOT_EXIST), `ModelNotReady` for a version
    still PENDING_REGISTRATION, `RegistryUnavailable` while `down` (the client's error for an unreachable
    server or a 5xx), and ValueError unless exactly one of version and alias is given. The real client's
    version cache only saves requests, so the fake answers every call from its store; `calls` counts them.
    """

    def __init__(self) -> None:
        self.models: dict[str, dict[str, FakeVersion]] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.down = False
        self.base_url = "http://mlflow.fake"
        self.calls: Counter[str] = Counter()

    def add_version(self, name: str, *, tags: dict[str, str] | None = None, status: str = "READY") -> str:
        """Register the next version of `name` (as `mlflow.register_model` would) and return its number."""
        versions = self.models.setdefault(name, {})
        number = str(len(versions) + 1)
        versions[number] = FakeVersion(number, f"mlflow-artifacts:/1/run{number}/artifacts/model", f"run{number}",
                                       status, dict(tags or {}))
        return number

    def move_alias(self, name: str, alias: str, version: str) -> None:
        """Point an alias as a person would (not counted)."""
        self.aliases[(name, alias)] = version

    async def aclose(self) -> None:
        return None

    async def resolve(self, name: str, *, version: str | None = None, alias: str | None = None) -> ResolvedModel:
        self.calls["resolve"] += 1
        if (version is None) == (alias is None):
            raise ValueError("exactly one of version or alias must be given")
        self._reachable()
        if alias is not None:
            version = self.aliases.get((name, alias))
            if version is None or name not in self.models:
                raise ModelNotFound(f"alias {alias!r} of model {name!r} is not in the MLflow registry")
        assert version is not None
        found = self.models.get(name, {}).get(version)
        if found is None:
            raise ModelNotFound(f"version {version} of model {name!r} is not in the MLflow registry")
        return self._resolved(name, found, alias=alias)

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        self.calls["set_alias"] += 1
        self._reachable()
        if version not in self.models.get(name, {}):
            raise ModelNotFound(f"version {version} of model {name!r} is not in the MLflow registry")
        self.aliases[(name, alias)] = version

    async def find_versions_by_tag(self, name: str, key: str, value: str) -> list[ResolvedModel]:
        self.calls["find_versions_by_tag"] += 1
        self._reachable()
        found = [self._resolved(name, v, alias=None) for v in self.models.get(name, {}).values()
                 if v.tags.get(key) == value]
        return sorted(found, key=lambda mv: int(mv.version), reverse=True)

    def _reachable(self) -> None:
        if self.down:
            raise RegistryUnavailable(f"MLflow at {self.base_url} is unreachable: ConnectError")

    @staticmethod
    def _resolved(name: str, found: FakeVersion, *, alias: str | None) -> ResolvedModel:
        if found.status != "READY":
            raise ModelNotReady(f"version {found.version} of model {name!r} is {found.status}")
        return ResolvedModel(name=name, version=found.version, source=found.source, run_id=found.run_id,
                             alias=alias, tags=dict(found.tags))


Answer = list[VectorSample] | float | None


class FakePrometheus:
    """In-process fake of `medserve_operator.clients.prometheus.PrometheusClient` (`query`, `value`, and
    `query_value`, the callable RetrainPolicy's Runtime takes), used because a real Prometheus runs only
    in the integration tier.

    Not a PromQL engine: a query is answered by the first rule whose strings all appear in it (a metric
    name, `label="value"` matchers); a query no rule matches gets an empty vector, as a real Prometheus
    answers for series that do not exist. `value` goes through the real client's `instant_value`, so one
    number, no data (None) and several series (PrometheusQueryError) behave as against a real server.
    `down` raises PrometheusUnavailable and `rejecting` PrometheusQueryError, the real client's errors for
    an unreachable server and a refused query. `queries` records every query asked.
    """

    def __init__(self) -> None:
        self.rules: list[tuple[tuple[str, ...], Answer]] = []
        self.down = False
        self.rejecting = False
        self.base_url = "http://prometheus.fake"
        self.queries: list[str] = []

    def answer(self, contains: Sequence[str], result: Answer) -> None:
        """Answer queries containing every string in `contains` with `result` (newest rule first)."""
        self.rules.insert(0, (tuple(contains), result))

    def feedback(self, *, deployment: str, version: str, correct: float, incorrect: float) -> None:
        """The runtime's feedback counters of one served version, as `sum by (outcome) (increase(...))` gives."""
        self.answer((metrics.FEEDBACK_TOTAL, f"{metrics.MODEL_LABEL}={string_literal(deployment)}",
                     f"{metrics.VERSION_LABEL}={string_literal(version)}"),
                    [VectorSample({metrics.OUTCOME_LABEL: metrics.OUTCOME_CORRECT}, correct),
                     VectorSample({metrics.OUTCOME_LABEL: metrics.OUTCOME_INCORRECT}, incorrect)])

    async def aclose(self) -> None:
        return None

    async def query(self, promql: str, *, at: float | None = None) -> list[VectorSample]:
        answer = self._answer(promql)
        if not isinstance(answer, list):
            raise PrometheusQueryError(f"the query {promql!r} gave a scalar, not a vector")
        return list(answer)

    async def value(self, promql: str) -> float | None:
        answer = self._answer(promql)
        if isinstance(answer, list):
            data: dict[str, Any] = {"resultType": "vector",
                                    "result": [{"metric": s.labels, "value": [0, str(s.value)]} for s in answer]}
        else:
            data = {"resultType": "scalar", "result": [0, "NaN" if answer is None else str(answer)]}
        return instant_value(data, promql)

    async def query_value(self, promql: str) -> float | None:
        return await self.value(promql)

    def _answer(self, promql: str) -> Answer:
        self.queries.append(promql)
        if self.down:
            raise PrometheusUnavailable(f"Prometheus at {self.base_url} is unreachable: ConnectError")
        if self.rejecting:
            raise PrometheusQueryError(f"Prometheus rejected the query {promql!r}: bad_data: parse error")
        for contains, result in self.rules:
            if all(part in promql for part in contains):
                return result
        return []


@dataclasses.dataclass(frozen=True)
class Event:
    """One Event a reconciler asked kopf to post."""

    name: str
    type: str
    reason: str
    message: str


class Events:
    """The Events posted through `kopf.event` while `kopf_events()` is active, read off kopf's queue."""

    def __init__(self, queue: asyncio.Queue[posting.K8sEvent]) -> None:
        self._queue = queue
        self.seen: list[Event] = []

    def drain(self) -> list[Event]:
        """The Events posted since the last drain (and keeps them in `seen`)."""
        new: list[Event] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            new.append(Event(str(item.ref.get("name")), item.type, item.reason, item.message))
        self.seen.extend(new)
        return new

    def reasons(self) -> list[str]:
        return [e.reason for e in self.drain()]


@contextlib.contextmanager
def kopf_events() -> Iterator[Events]:
    """Give `kopf.event` what `kopf.operator` gives it (settings, the event queue, its loop), in this context.

    Must be entered inside the running event loop the reconcilers run on (an async test or fixture).
    """
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    tokens = (posting.settings_var.set(kopf.OperatorSettings()), posting.event_queue_var.set(queue),
              posting.event_queue_loop_var.set(asyncio.get_running_loop()))
    try:
        yield Events(queue)
    finally:
        posting.event_queue_loop_var.reset(tokens[2])
        posting.event_queue_var.reset(tokens[1])
        posting.settings_var.reset(tokens[0])


class Clock:
    """A monotonic clock the test moves forward: patched over `time.monotonic`, which the reconcilers read
    for `monitoring.interval` and `statistics.interval` (they take no clock argument). It is the real
    clock plus the time the test skipped, so it never stands still or runs backwards, and asyncio's loop
    (which reads it too) at worst sees time pass faster."""

    def __init__(self, real: Callable[[], float]) -> None:
        self.real = real
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
