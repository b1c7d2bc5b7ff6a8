"""What the sandbox prints: numbered steps, command output and the timeline of Events; its error class.

The demo is read by a person following along, so its output is a story: `Console` numbers the steps
and quotes command output, `timeline` turns the medserve objects' Events into one line each.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Iterator
from typing import Any, TextIO


class SandboxError(Exception):
    """A step failed; the message says which and where to look."""


class Console:
    """The sandbox's own output: numbered steps and command output, for a person reading along."""

    def __init__(self, stream: TextIO) -> None:
        self.stream: TextIO | None = stream

    def say(self, text: str = "") -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except OSError:
            # The reader went away (`| head`, a closed terminal): keep going quietly, so that the
            # teardown still runs and no process is left behind.
            self.stream = None

    @contextlib.contextmanager
    def step(self, number: int, total: int, title: str) -> Iterator[None]:
        self.say(f"\n[{number}/{total}] {title}")
        started = time.monotonic()
        yield
        self.say(f"      done in {time.monotonic() - started:.1f}s")

    def block(self, title: str, text: str) -> None:
        self.say(f"\n$ {title}")
        self.say(text.rstrip())


def timeline(events: list[dict[str, Any]]) -> str:
    """One line per Event, oldest first, timed from the first: `+MM:SS Kind/name Reason: message` (pure)."""
    def when(event: dict[str, Any]) -> str:
        return str(event.get("eventTime") or event.get("firstTimestamp") or
                   event.get("metadata", {}).get("creationTimestamp") or "")

    ordered = sorted((e for e in events if when(e)), key=when)
    if not ordered:
        return "(no events)"
    start = datetime.datetime.fromisoformat(when(ordered[0]).replace("Z", "+00:00"))
    lines = []
    for event in ordered:
        seconds = int((datetime.datetime.fromisoformat(when(event).replace("Z", "+00:00")) - start).total_seconds())
        target = event.get("involvedObject") or {}
        message = " ".join(str(event.get("message", "")).split())
        lines.append(f"+{seconds // 60:02d}:{seconds % 60:02d} {target.get('kind')}/{target.get('name')} "
                     f"{event.get('reason')}: {message[:150]}{'...' if len(message) > 150 else ''}")
    return "\n".join(lines)

