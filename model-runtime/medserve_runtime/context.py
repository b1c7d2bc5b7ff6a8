"""What a handler tells the gate about the request it is serving, through a context variable.

The gate (an ASGI middleware) writes the one audit record of each request and observes its latency,
but only the handler knows which model version answered, the prediction ids and the hashed patient
id. The gate opens a `RequestNote` before calling the app; handlers (the clinical API and the KServe
V1/V2 predict path alike, which run in the same task) fill it in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import time

from medserve_runtime.batching import Arrivals

AuditValue = str | int | float | None


@dataclasses.dataclass(slots=True)
class RequestNote:
    started: float = dataclasses.field(default_factory=time.perf_counter)
    model_version: str | None = None
    prediction_id: str | None = None
    patient_hash: str | None = None
    outcome: str | None = None
    predictions: int = 0
    extra: dict[str, AuditValue] = dataclasses.field(default_factory=dict)
    _arrivals: Arrivals | None = None

    def arrived(self, arrivals: Arrivals) -> None:
        """Count this request as on its way to a batcher (see batching.Arrivals)."""
        arrivals.count += 1
        self._arrivals = arrivals

    def settled(self) -> None:
        """It has been enqueued, or will never be: stop counting it. Idempotent."""
        if self._arrivals is not None:
            self._arrivals.count -= 1
            self._arrivals = None


_note: contextvars.ContextVar[RequestNote | None] = contextvars.ContextVar("medserve_request_note",
                                                                          default=None)


def open_note() -> tuple[RequestNote, contextvars.Token[RequestNote | None]]:
    note = RequestNote()
    return note, _note.set(note)


def close_note(token: contextvars.Token[RequestNote | None]) -> None:
    _note.reset(token)


def current_note() -> RequestNote:
    """The note of the request being served; a throwaway one outside a request (e.g. warm-up)."""
    return _note.get() or RequestNote()
