"""Group commit for audit records: many requests, one durable write, each request told when it is safe.

`submit()` (any thread) queues a record and returns a Future that resolves once the record is durable, or
fails with `AuditUnavailable` when it cannot be made durable; `submit_async()` (on an event loop) returns
an asyncio Future instead, and a batch's asyncio Futures are settled by one callback per loop (one wake-up
of the loop per batch, not one per record as `asyncio.wrap_future` would cost). The gate awaits that Future
before it sends the response, so every answered request has its record. One writer thread
takes everything queued since its last write, seals it into the chain in arrival order and hands the
batch to the destination (`Sink.persist`): one fsync or one transaction per batch, however many
requests are waiting, so durability costs latency (about one write) rather than throughput.

A batch that fails is rewound out of the chain, so the records that follow reuse its numbers and the
chain never has a hole or a duplicate; its requests get 503. `writable()` is what the gate and the
readiness probe ask: false from a failed write until the destination answers again (`Sink.idle`, which
the thread calls while nothing is queued, probes it), so the runtime fails closed and recovers by itself.
"""

from __future__ import annotations

import asyncio
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


_Pending = tuple[str, float, Mapping[str, Any], "concurrent.futures.Future[None] | asyncio.Future[None]"]


class GroupCommit:
    """See the module docstring. `start_fields` go into the session's `writer_start` record."""

    def __init__(self, chain: Chain, sink: Sink, *, start_fields: Mapping[str, Any] | None = None) -> None:
        self.chain = chain
        self.sink = sink
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._commit_lock = threading.Lock()
        self._progress = threading.Condition()
        self._submitted = 0
        self._settled = 0
        """Records queued and records whose batch was settled (durable or failed): what flush() waits on."""
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
        self._queue((event, time.time(), fields, future))
        return future

    def submit_async(self, event: str, fields: Mapping[str, Any]) -> asyncio.Future[None]:
        """`submit` for a caller on an event loop: an asyncio Future of that loop."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue((event, time.time(), fields, future))
        return future

    def _queue(self, item: _Pending) -> None:
        with self._cond:
            self._submitted += 1
            closed = self._closed
            if not closed:
                self._pending.append(item)
                self._cond.notify()
        if closed:  # a request finishing after close(): write it here, the thread is gone
            self._commit([item])

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
                self._settle(batch, AuditUnavailable(f"no audit record can be made durable now: {exc}"))
                return
            self.committed += len(batch)
            if not self._healthy:
                logger.warning("audit destination writable again")
            self._healthy = True
        self._settle(batch, None)

    def _settle(self, batch: list[_Pending], error: AuditUnavailable | None) -> None:
        on_loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for *_, future in batch:
            if isinstance(future, asyncio.Future):
                on_loops.setdefault(future.get_loop(), []).append(future)
            elif error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        for loop, futures in on_loops.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle_on_loop, futures, error)
        with self._progress:
            self._settled += len(batch)
            self._progress.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        """Block until everything submitted so far is durable or has failed."""
        with self._cond:
            target = self._submitted
        with self._progress:
            self._progress.wait_for(lambda: self._settled >= target, timeout)

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


def request_record(*, request_id: str | None = None, key_id: str | None, endpoint: str, status: int,
                   outcome: str, latency_ms: float, model_version: str | None = None,
                   prediction_id: str | None = None, patient_hash: str | None = None,
                   **extra: str | int | float | None) -> dict[str, Any]:
    """A request's audit fields (auditchain.FIELDS, then any `extra` that is not a reserved name)."""
    if extra and not RESERVED.isdisjoint(extra):
        raise ValueError(f"audit fields {sorted(RESERVED & extra.keys())} are reserved")
    values = (request_id, key_id, endpoint, status, outcome, latency_ms, model_version, prediction_id, patient_hash)
    return {**dict(zip(FIELDS, values, strict=True)), **extra}


def _settle_on_loop(futures: list[asyncio.Future[None]], error: AuditUnavailable | None) -> None:
    for future in futures:
        if future.done():  # its request was cancelled (the client left, the deadline passed)
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class AuditTrail:
    """What the gate and the server use, whatever the destination: `record()` a request (a Future that
    resolves once it is durable; `record_durable()` awaits it on the event loop), `writable()` (fail
    closed), `health()`, `flush()`, `close()`. `AuditTrail(None, None)` is the disabled trail: records are
    dropped."""

    def __init__(self, commit: GroupCommit | None, sink: Sink | None) -> None:
        self._commit = commit
        self._sink = sink

    def record(self, **fields: Any) -> concurrent.futures.Future[None]:
        """Queue one request's record (`request_record`'s fields); the Future resolves when it is durable
        (AuditUnavailable if not)."""
        return self.event(REQUEST, request_record(**fields))

    async def record_durable(self, **fields: Any) -> None:
        """`record` on the event loop: returns once the record is durable, raises AuditUnavailable if not."""
        record = request_record(**fields)
        if self._commit is not None:
            await self._commit.submit_async(REQUEST, record)

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
