"""The periodic resync: every object looked at again about once per interval, without kopf timers.

A kopf timer per object would do the same with three costs that grow with N: kopf puts a finalizer on
every object a timer serves (`kopf.timer` registers with `requires_finalizer=True`: one PATCH on
creation and one on deletion, and a deletion then waits for the operator), all timers of one interval
fire in the same second after a mass `kubectl apply` (1,000 objects at 30 s are a burst of 1,000
reconciles, each several requests, every 30 s), and a timer fires even when a watch event reconciled
the object a moment ago.

`Resyncer` keeps the latest body of each object from the watch stream, less its managedFields (`observe`,
fed by a kopf `on.event` handler, which needs no finalizer) and the time each object was last reconciled by any path
(`reconciled`, called by `reconcile_object`). One loop picks the objects whose last reconciliation is
older than their interval (the interval with ±10 % jitter, drawn anew each time, so a burst spreads
out) and reconciles them, oldest first, at most `concurrency` at once: when N objects cannot be seen
each interval at that concurrency, each is seen as often as the concurrency allows instead of the
requests queueing in the HTTP pool. An object the watch reconciled recently is not due. A failed
resync is logged and the object is due again one interval later, as kopf's timer would retry it.

Each resync runs in a copy of the context of the watch handler that last observed an object: kopf sets
the variables its Event poster reads (`kopf.event`) per object-processing task, not operator-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from medserve_operator.kit import Logger

logger = logging.getLogger("medserve.resync")

JITTER = 0.1
"""Each interval is drawn from [interval * (1 - JITTER), interval * (1 + JITTER)]."""

Reconcile = Callable[[Mapping[str, Any], Logger], Awaitable[object]]


class ObjectLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Log lines of one object's resync, prefixed with its namespace/name as kopf's object logger does."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['namespace']}/{self.extra['name']}] {msg}" if self.extra else msg, kwargs


class Resyncer:
    """Due-time scheduling of periodic reconciliations for one kind (see the module docstring)."""

    def __init__(self, kind: str, interval: float, *, concurrency: int,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.kind = kind
        self.interval = interval
        self.concurrency = concurrency
        self._clock = clock
        self._rng = rng or random.Random()
        self._bodies: dict[str, Mapping[str, Any]] = {}
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._wake = asyncio.Event()
        self._context: contextvars.Context | None = None

    def __len__(self) -> int:
        return len(self._bodies)

    def _next(self, now: float) -> float:
        return now + self.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)

    def observe(self, body: Mapping[str, Any], event_type: str | None) -> None:
        """The watch's latest body of an object (DELETED forgets it). A new object is first due one
        interval after it is seen: its creation is reconciled by the creation handler."""
        self._context = contextvars.copy_context()
        uid = str(body["metadata"]["uid"])
        if event_type == "DELETED":
            self._bodies.pop(uid, None)
            self._due.pop(uid, None)
            return
        # Kept without managedFields, which no reconciliation reads: they are the largest part of a body.
        self._bodies[uid] = {**body, "metadata": {k: v for k, v in body["metadata"].items() if k != "managedFields"}}
        self._due.setdefault(uid, self._next(self._clock()))

    def reconciled(self, uid: str) -> None:
        """`uid` was just reconciled (by any path): it is due again one interval from now."""
        if uid in self._bodies:
            self._due[uid] = self._next(self._clock())
            self._wake.set()

    def due(self) -> list[str]:
        """The objects due now and not being resynced, oldest first."""
        now = self._clock()
        ready = [(at, uid) for uid, at in self._due.items() if at <= now and uid not in self._running]
        return [uid for _, uid in sorted(ready)]

    def next_due_in(self) -> float:
        """Seconds until the next object not being resynced falls due (the interval when none is known)."""
        pending = [at for uid, at in self._due.items() if uid not in self._running]
        return max(0.0, min(pending) - self._clock()) if pending else self.interval

    async def run(self, reconcile: Reconcile) -> None:
        """Resync due objects forever, at most `concurrency` at once (cancel to stop)."""
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                for uid in self.due():
                    await slots.acquire()
                    body = self._bodies.get(uid)
                    if body is None:  # deleted while waiting for a slot
                        slots.release()
                        continue
                    self._running.add(uid)
                    context = self._context.copy() if self._context is not None else None
                    task = asyncio.create_task(self._one(reconcile, uid, body, slots), context=context)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, self.next_due_in()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, reconcile: Reconcile, uid: str, body: Mapping[str, Any], slots: asyncio.Semaphore) -> None:
        meta = body["metadata"]
        object_logger = ObjectLogger(logger, {"namespace": meta.get("namespace"), "name": meta.get("name")})
        try:
            await reconcile(body, object_logger)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next interval tries again; status already says what failed
            object_logger.warning("resync of %s failed: %s: %s", self.kind, type(exc).__name__, exc)
        finally:
            self._running.discard(uid)
            if uid in self._bodies:
                self._due[uid] = self._next(self._clock())
            slots.release()
            self._wake.set()
