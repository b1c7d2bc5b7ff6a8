"""The reconciler base: the locked prologue and epilogue every reconciliation runs, and kopf registration.

Every path into a controller — a spec change, the operator's restart, the periodic resync (`resync.py`), an
event on a child — runs one idempotent function, `reconcile_object`, which

1. takes the object's lock (the resync and a watch event never reconcile one object at once),
2. reads the status as last written (`ObjectMemory`), not the possibly older one in the body,
3. parses the spec with the kind's model; an invalid spec skips the steps and is reported by the status,
4. runs the controller's named steps, which record what they found on the kind's Outcome,
5. computes the new status from it (pure, the kind's `status.py`) and writes it when it changed,
6. posts the Events the steps and the condition transitions produced, and
7. re-raises an error a step recorded for kopf's retry (`Outcome.retry`), now that status says what it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

import kopf
from pydantic import BaseModel

from medserve_operator.api.common import GROUP, VERSION
from medserve_operator.api.parsing import SpecError, parse_spec
from medserve_operator.clients.kube import KubeClient
from medserve_operator.config import OperatorConfig
from medserve_operator.kit import Logger
from medserve_operator.kit.conditions import Event
from medserve_operator.kit.manifest import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from medserve_operator.kit.resync import Resyncer
from medserve_operator.kit.status import ObjectMemory, Resource, write_status

S = TypeVar("S", bound=BaseModel)


@dataclasses.dataclass(kw_only=True)
class Outcome:
    """What one reconciliation found and did, before it becomes status; each kind extends it."""

    spec_error: SpecError | None = None
    events: list[Event] = dataclasses.field(default_factory=list)
    retry: Exception | None = None
    """An error to hand kopf (for its retry with backoff) once the status recording it is written."""

    def event(self, reason: str, message: str, *, type_: str = "Normal") -> None:
        self.events.append((type_, reason, message))


OutcomeT = TypeVar("OutcomeT", bound=Outcome)


@dataclasses.dataclass(frozen=True)
class Kind(Generic[S]):
    """A kind the operator reconciles: where it lives, its conditions, and its spec model."""

    resource: Resource
    spec: type[S]

    @property
    def plural(self) -> str:
        return self.resource.plural


@dataclasses.dataclass
class Context:
    """One reconciliation of one object: who it is, the status as last written, and where to log."""

    body: Mapping[str, Any]
    logger: Logger
    status: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def generation(self) -> int:
        return int(self.body["metadata"].get("generation", 1))


class HasClients(Protocol):
    """What `reconcile_object` needs of a controller's Runtime."""

    @property
    def kube(self) -> KubeClient: ...
    @property
    def memory(self) -> ObjectMemory: ...


async def reconcile_object(rt: HasClients, kind: Kind[S], body: Mapping[str, Any], logger: Logger, outcome: OutcomeT, *,
                           steps: Callable[[Context, S, OutcomeT], Awaitable[None]],
                           status: Callable[[Context, OutcomeT], dict[str, Any]]) -> OutcomeT:
    """Run `steps` on the object `body` under its lock and write the status `status` computes (see above)."""
    uid = str(body["metadata"]["uid"])
    async with rt.memory.lock(uid):
        ctx = Context(body=body, logger=logger, status=rt.memory.status(uid, body))
        try:
            spec = parse_spec(kind.spec, dict(body.get("spec") or {}))
        except SpecError as exc:
            outcome.spec_error = exc
        else:
            await steps(ctx, spec, outcome)
        await write_status(rt.kube, rt.memory, kind.resource, body, ctx.status, status(ctx, outcome),
                           events=outcome.events)
    if rt.memory.on_reconciled is not None:
        rt.memory.on_reconciled(uid)
    post_events(body, outcome.events)
    if outcome.retry is not None:
        raise outcome.retry
    return outcome


def post_events(body: Mapping[str, Any], events: list[Event]) -> None:
    for type_, reason, message in events:
        kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type_, reason=reason, message=message)


# --- kopf registration ---------------------------------------------------------------------------------------

Reconcile = Callable[[Any, Mapping[str, Any], Logger], Awaitable[Outcome]]
"""A controller's reconciliation: (runtime, body, logger) -> Outcome."""
Changed = Callable[[Any, kopf.Body, Logger, int], Awaitable[Outcome]]
"""A spec change, a creation or the operator's resume: (runtime, body, logger, retry) -> Outcome."""


def handler_id(prefix: str, what: str) -> str:
    """The kopf handler id, as the handlers were first registered (kopf keeps progress under it)."""
    return f"register.<locals>.{prefix}_{what}"


def register_kind(registry: kopf.OperatorRegistry, config: OperatorConfig, kind: Kind[Any], *, memo_key: str,
                  prefix: str, reconcile: Reconcile, forget: Callable[[Any, str], None],
                  changed: Changed | None = None) -> None:
    """The handlers every kind has: create/update(spec)/resume, the watch feeding the periodic resync (a
    `Resyncer`, run from start-up to clean-up), and forgetting a deleted object.

    The runtime is `memo[memo_key]`; `reconcile` serves the resync and, without `changed`, the spec changes.
    An invalid spec is a permanent error for kopf (status says why). No handler needs a finalizer, so kopf
    puts none on the objects (and takes off the one earlier versions' timers put there).
    """
    resource = (GROUP, VERSION, kind.plural)
    changed_id = handler_id(prefix, "changed")
    resyncer = Resyncer(kind.plural, config.resync_seconds, concurrency=config.resync_concurrency)

    @kopf.on.resume(*resource, registry=registry, id=changed_id)
    @kopf.on.create(*resource, registry=registry, id=changed_id)
    @kopf.on.update(*resource, field="spec", registry=registry, id=changed_id)
    async def spec_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any) -> None:
        rt = memo[memo_key]
        outcome = await (changed(rt, body, logger, retry) if changed is not None else reconcile(rt, body, logger))
        if outcome.spec_error is not None:
            raise kopf.PermanentError(f"invalid spec: {outcome.spec_error}")

    @kopf.on.event(*resource, registry=registry, id=handler_id(prefix, "observed"))
    async def observed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        resyncer.observe(body, type)
        if type == "DELETED" and memo_key in memo:
            forget(memo[memo_key], str(body.metadata.uid))

    @kopf.on.startup(registry=registry, id=handler_id(prefix, "resync"))
    async def start_resync(memo: kopf.Memo, **_: Any) -> None:
        if memo_key not in memo:  # made by the operator's configure handler, registered (so run) before this one
            raise kopf.TemporaryError(f"the {kind.plural} runtime is not built yet", delay=1)
        rt = memo[memo_key]
        rt.memory.on_reconciled = resyncer.reconciled
        memo[f"{prefix}_resync"] = asyncio.create_task(
            resyncer.run(lambda body, logger: reconcile(rt, body, logger)), name=f"resync {kind.plural}")

    @kopf.on.cleanup(registry=registry, id=handler_id(prefix, "resync_stop"))
    async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
        task = memo.get(f"{prefix}_resync")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def managed(**labels: Any) -> dict[str, Any]:
    """A kopf label filter for children the operator manages, with `labels` on top."""
    return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, **labels}


async def reconcile_parent(rt: HasClients, kind: Kind[Any], reconcile: Reconcile, namespace: str, name: str,
                           logger: Logger, *, uid: str | None = None) -> None:
    """Reconcile the parent `name` of a child that changed, if it still exists (with `uid`, when given) and is
    not being deleted."""
    parent = await rt.kube.get(kind.resource.api_version, kind.plural, namespace, name)
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return
    if uid is not None and parent["metadata"].get("uid") != uid:
        return
    await reconcile(rt, parent, logger)
