"""What GET /models reports per model version, and the memory that matches feedback to predictions.

`VersionStats` counts requests, predictions and latency per version and keeps a one-minute sliding
window for throughput; accuracy comes from ground-truth feedback. `PredictionLog` remembers the
last `capacity` predictions (id -> version and predicted label, nothing about the patient), so that
`POST /feedback` can score the version that made the prediction, even after a hot swap.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

WINDOW_SECONDS = 60
DEFAULT_CAPACITY = 100_000


@dataclasses.dataclass(slots=True)
class _Counts:
    loaded_at: float
    source: str
    requests: int = 0
    predictions: int = 0
    latency_total: float = 0.0
    feedback_correct: int = 0
    feedback_incorrect: int = 0
    window: collections.deque[tuple[int, int]] = dataclasses.field(default_factory=collections.deque)


class VersionStats:
    """Per-version request statistics; safe to update from the event loop and read from anywhere."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._versions: dict[str, _Counts] = {}
        self._lock = threading.Lock()

    def add_version(self, version: str, *, source: str) -> None:
        with self._lock:
            self._versions.setdefault(version, _Counts(loaded_at=self._clock(), source=source))

    def record_request(self, version: str, *, predictions: int, seconds: float) -> None:
        now = int(self._clock())
        with self._lock:
            counts = self._versions.get(version)
            if counts is None:
                return
            counts.requests += 1
            counts.predictions += predictions
            counts.latency_total += seconds
            window = counts.window
            if window and window[-1][0] == now:
                window[-1] = (now, window[-1][1] + 1)
            else:
                window.append((now, 1))
            while window and window[0][0] <= now - WINDOW_SECONDS:
                window.popleft()

    def record_feedback(self, version: str, *, correct: bool) -> None:
        with self._lock:
            counts = self._versions.get(version)
            if counts is not None:
                if correct:
                    counts.feedback_correct += 1
                else:
                    counts.feedback_incorrect += 1

    def snapshot(self, *, current: str) -> list[dict[str, Any]]:
        """One entry per version, the one serving now first."""
        now = self._clock()
        out = []
        with self._lock:
            for version, c in self._versions.items():
                span = min(WINDOW_SECONDS, max(now - c.loaded_at, 1.0))
                recent = sum(n for second, n in c.window if second > now - WINDOW_SECONDS)
                scored = c.feedback_correct + c.feedback_incorrect
                out.append({
                    "version": version,
                    "serving": version == current,
                    "source": c.source,
                    "request_count": c.requests,
                    "prediction_count": c.predictions,
                    "average_latency_ms": (round(c.latency_total / c.requests * 1000, 3)
                                           if c.requests else None),
                    "throughput_rps": round(recent / span, 3),
                    "feedback_count": scored,
                    "accuracy": round(c.feedback_correct / scored, 6) if scored else None,
                })
        out.sort(key=lambda v: not v["serving"])
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class PredictionRecord:
    version: str
    label: str


class PredictionLog:
    """The last `capacity` predictions by id (least recently made evicted first); thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be a positive integer")
        self.capacity = capacity
        self._records: collections.OrderedDict[str, PredictionRecord] = collections.OrderedDict()
        self._scored: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, prediction_id: str, record: PredictionRecord) -> None:
        with self._lock:
            self._records[prediction_id] = record
            while len(self._records) > self.capacity:
                old, _ = self._records.popitem(last=False)
                self._scored.discard(old)

    def find(self, prediction_id: str) -> PredictionRecord | None:
        """The remembered prediction; None if unknown or evicted."""
        with self._lock:
            return self._records.get(prediction_id)

    def mark_scored(self, prediction_id: str) -> bool:
        """Record that feedback arrived for it; False the second time (one ground truth each)."""
        with self._lock:
            if prediction_id in self._scored:
                return False
            self._scored.add(prediction_id)
            return True

    def __len__(self) -> int:
        return len(self._records)
