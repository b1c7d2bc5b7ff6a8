"""Group commit for audit records: many requests, one durable write, each request told when it is safe.

`submit()` (any thread, the event loop included) queues a record and returns a Future that resolves once
the record is durable, or fails with `AuditUnavailable` when it cannot be made durable. The gate awaits
that Future before it sends the response, so every answered request has its record. One writer thread
takes everything queued since its last write, seals it into the chain in arrival order and hands the
batch to the destination (`Sink.persist`): one fsync or one transaction per batch, however many
requests are waiting, so durability costs latency (about one write) rather than throughput.

A batch that fails is rewound out of the chain, so the records that follow reuse its numbers and the
chain never has a hole or a duplicate; its requests get 503. `writable()` is what the gate and the
readiness probe ask: false from a failed write until the destination answers again (`Sink.idle`, which
the thread calls while nothing is queued, probes it), so the runtime fails closed and recovers by itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from medserve_runtime.auditchain import FIELDS, REQUEST, RESERVED, START, STOP, Chain

logger = logging.getLogger(__name__)

IDLE_INTERVAL_S = 0.5
MAX_BATCH = 2000


class AuditUnavailable(Exception):
    """No audit record could be made durable: the request must not be answered (503)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sealed:
    seq: int
    epoch: float
    line: str
    hash: str
    event: str


class Sink(Protocol):
    def prepare(self, chain: Chain) -> None:
        """Before a batch is sealed: bring `chain` in line with the destination (after a reconnect)."""

    def persist(self, batch: list[Sealed], chain: Chain) -> None:
        """Make `batch` durable or raise (then nothing of it may be kept)."""

    def idle(self, chain: Chain) -> bool:
        """Called when nothing is queued: recover (reconnect, drain, probe); True when writes can succeed."""

    def close(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


_Pending = tuple[str, float, Mapping[str, Any], "concurrent.futures.Future[None]"]


class GroupCommit:
    """See the module docstring. `start_fields` go into the session's `writer_start` record."""

    def __init__(self, chain: Chain, sink: Sink, *, start_fields: Mapping[str, Any] | None = None) -> None:
        self.chain = chain
        self.sink = sink
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._commit_lock = threading.Lock()
        self._healthy = True
        self._closed = False
        self._stopping = False
        self.committed = 0
        self.failed = 0
        self._started = self.submit(START, dict(start_fields or {}))
        self._thread = threading.Thread(target=self._run, name="audit-group-commit", daemon=True)
        self._thread.start()

    def submit(self, event: str, fields: Mapping[str, Any]) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        item = (event, time.time(), fields, future)
        with self._cond:
            closed = self._closed
            if not closed:
                self._pending.append(item)
                self._cond.notify()
        if closed:  # a request finishing after close(): write it here, the thread is gone
            self._commit([item])
        return future

    def writable(self) -> bool:
        return self._healthy

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    self._cond.wait(IDLE_INTERVAL_S)
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                stopping = self._stopping and not self._pending
            if batch:
                self._commit(batch)
            elif not stopping:
                self._idle()
            if stopping and not batch:
                return

    def _idle(self) -> None:
        with self._commit_lock:
            try:
                healthy = self.sink.idle(self.chain)
            except Exception as exc:  # a probe that fails in an unexpected way is still "not writable"
                logger.error("audit destination check failed: %s", exc)
                healthy = False
        if healthy != self._healthy:
            logger.warning("audit destination %s", "writable again" if healthy else "NOT writable")
        self._healthy = healthy

    def _commit(self, batch: list[_Pending]) -> None:
        with self._commit_lock:
            try:
                self.sink.prepare(self.chain)
            except Exception as exc:
                logger.warning("audit destination not prepared: %s", exc)
            mark = self.chain.mark()
            sealed = []
            for event, epoch, fields, _ in batch:
                seq, line, digest = self.chain.seal(event, epoch, fields)
                sealed.append(Sealed(seq, epoch, line, digest, event))
            try:
                self.sink.persist(sealed, self.chain)
            except Exception as exc:
                self.chain.rewind(mark)
                self.failed += len(batch)
                if self._healthy:
                    logger.error("audit records could not be made durable (requests get 503): %s", exc)
                self._healthy = False
                error = AuditUnavailable(f"no audit record can be made durable now: {exc}")
                for *_, future in batch:
                    future.set_exception(error)
                return
            self.committed += len(batch)
            if not self._healthy:
                logger.warning("audit destination writable again")
            self._healthy = True
        for *_, future in batch:
            future.set_result(None)

    def flush(self, timeout: float = 60.0) -> None:
        """Block until everything submitted so far is durable or has failed."""
        with self._cond:
            last = self._pending[-1][3] if self._pending else None
        if last is not None:
            with contextlib.suppress(Exception):
                last.result(timeout=timeout)
        with self._commit_lock:  # a batch the thread has taken but not yet resolved
            pass

    def close(self, stop_fields: Mapping[str, Any] | None = None, *, timeout: float = 30.0) -> None:
        """Write the session's `writer_stop` record after everything queued, then stop the thread."""
        if self._closed:
            return
        stop = self.submit(STOP, dict(stop_fields or {}))
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            self._closed = True
            left, self._pending = self._pending, []
        if left:  # submitted between the thread's last look and the flag
            self._commit(left)
        try:
            stop.result(timeout=0)
        except (AuditUnavailable, concurrent.futures.TimeoutError) as exc:
            logger.error("audit session closed without its shutdown record: %s", exc)
        self.sink.close()


class AuditTrail:
    """What the gate and the server use, whatever the destination: `record()` a request (a Future that
    resolves once it is durable), `writable()` (fail closed), `health()`, `flush()`, `close()`.
    `AuditTrail(None, None)` is the disabled trail: records are dropped."""

    def __init__(self, commit: GroupCommit | None, sink: Sink | None) -> None:
        self._commit = commit
        self._sink = sink

    def record(self, *, request_id: str | None = None, key_id: str | None,
               endpoint: str, status: int, outcome: str, latency_ms: float,
               model_version: str | None = None, prediction_id: str | None = None,
               patient_hash: str | None = None,
               **extra: str | int | float | None) -> concurrent.futures.Future[None]:
        """Queue one request's record; the Future resolves when it is durable (AuditUnavailable if not)."""
        if extra and not RESERVED.isdisjoint(extra):
            raise ValueError(f"audit fields {sorted(RESERVED & extra.keys())} are reserved")
        values = (request_id, key_id, endpoint, status, outcome, latency_ms, model_version, prediction_id, patient_hash)
        return self.event(REQUEST, {**dict(zip(FIELDS, values, strict=True)), **extra})

    def event(self, event: str, fields: Mapping[str, Any]) -> concurrent.futures.Future[None]:
        if self._commit is None:
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        return self._commit.submit(event, fields)

    @property
    def enabled(self) -> bool:
        return self._commit is not None

    def writable(self) -> bool:
        return self._commit is None or self._commit.writable()

    def health(self) -> dict[str, Any]:
        if self._commit is None or self._sink is None:
            return {"destination": "off"}
        return {**self._sink.health(), "writable": self._commit.writable()}

    def flush(self) -> None:
        """Block until everything recorded so far is durable (or has failed)."""
        if self._commit is not None:
            self._commit.flush()

    def close(self, stop_fields: Mapping[str, Any] | None = None) -> None:
        if self._commit is not None:
            self._commit.close(stop_fields)

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
