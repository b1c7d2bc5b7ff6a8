"""The sandbox's report: what the operator saw during `make demo`, drawn from the statuses it wrote.

`Recorder` polls the ModelDeployment and the ABTests through kubectl while the demo runs and keeps each
new evaluation (`status.drift.evaluatedAt`, `status.evaluatedAt`); `write_report` draws them as a PNG:
the drift score over time (with the threshold and the moments the loop moved on), and the A/B
difference over samples with its always-valid confidence sequence, the band the test decides on.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class DriftPoint:
    seconds: float
    score: float
    drifted: bool


@dataclasses.dataclass(frozen=True)
class ABPoint:
    samples: int
    """Samples of the smaller arm."""
    difference: float
    low: float
    high: float
    p_value: float


@dataclasses.dataclass
class Recorder:
    """Samples `get(kind)` (parsed `kubectl get KIND -o json`) every `interval` s in a background thread."""

    get: Callable[[str], dict[str, Any] | None]
    deployment: str
    interval: float = 1.0
    started: float = dataclasses.field(default_factory=time.monotonic)
    drift: list[DriftPoint] = dataclasses.field(default_factory=list)
    abtest: list[ABPoint] = dataclasses.field(default_factory=list)
    marks: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _seen: set[tuple[str, str]] = dataclasses.field(default_factory=set)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="report-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def mark(self, label: str) -> None:
        """A moment to show on the drift plot (e.g. "drift detected")."""
        self.marks.append((time.monotonic() - self.started, label))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        md = self.get(f"modeldeployment/{self.deployment}") or {}
        drift = (md.get("status") or {}).get("drift") or {}
        if drift.get("score") is not None and ("drift", str(drift.get("evaluatedAt"))) not in self._seen:
            self._seen.add(("drift", str(drift.get("evaluatedAt"))))
            self.drift.append(DriftPoint(time.monotonic() - self.started, float(drift["score"]),
                                         bool(drift.get("driftedFeatures"))))
        for test in (self.get("abtests") or {}).get("items") or []:
            status = test.get("status") or {}
            bounds = (status.get("estimates") or {}).get("confidenceSequence")
            key = ("abtest", f"{test['metadata']['name']}/{status.get('evaluatedAt')}")
            if not bounds or key in self._seen or (bounds[0] <= -1.0 and bounds[1] >= 1.0):
                continue  # nothing known yet (fewer than minSamplesPerArm): no point to draw
            self._seen.add(key)
            samples = status.get("samples") or {}
            self.abtest.append(ABPoint(min(int(samples.get("control", 0)), int(samples.get("treatment", 0))),
                                       float(status["estimates"].get("difference", 0.0)), float(bounds[0]),
                                       float(bounds[1]), float(status.get("alwaysValidPValue", 1.0))))


def write_report(path: Path, recorder: Recorder, *, threshold: float, mde: float, title: str) -> Path:
    """Draw the recorded evaluations into a PNG at `path` (and their figures into `path` with .json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8.5))
    fig.suptitle(title)
    if recorder.drift:
        xs = [p.seconds for p in recorder.drift]
        top.plot(xs, [p.score for p in recorder.drift], "-", color="0.4", lw=1)
        for drifted, color, label in ((False, "tab:green", "no drift"), (True, "tab:red", "drift detected")):
            points = [p for p in recorder.drift if p.drifted == drifted]
            top.scatter([p.seconds for p in points], [p.score for p in points], color=color, s=18, label=label,
                        zorder=3)
    top.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
    for seconds, label in recorder.marks:
        top.axvline(seconds, color="0.75", lw=1)
        top.annotate(label, (seconds, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                     fontsize=8, color="0.3")
    top.set(xlabel="seconds since the demo started", ylabel="drift score (PSI, largest feature)",
            title="Drift of the served population, as the operator evaluated it")
    top.legend(loc="center left", fontsize=8)

    if recorder.abtest:
        ns = [p.samples for p in recorder.abtest]
        bottom.fill_between(ns, [p.low for p in recorder.abtest], [p.high for p in recorder.abtest],
                            alpha=0.25, color="tab:blue", label="always-valid confidence sequence")
        bottom.plot(ns, [p.difference for p in recorder.abtest], "o-", ms=3, color="tab:blue",
                    label="difference (treatment - control)")
    bottom.axhline(0.0, color="black", lw=1)
    bottom.axhline(mde, color="0.6", ls=":", lw=1, label="± minimum detectable effect")
    bottom.axhline(-mde, color="0.6", ls=":", lw=1)
    bottom.set(xlabel="samples per arm (smaller arm)", ylabel="accuracy difference",
               title="A/B test: retrained version vs champion; it stops once the band leaves 0")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    figures = {"drift": [dataclasses.asdict(p) for p in recorder.drift],
               "abtest": [dataclasses.asdict(p) for p in recorder.abtest],
               "marks": [{"seconds": s, "label": label} for s, label in recorder.marks]}
    path.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    return path
