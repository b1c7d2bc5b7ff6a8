"""The runtime's Prometheus metrics, in their own registry, served at GET /metrics.

Series and label names are the contract's (`medserve_contract.metrics`), where the operator reads
them too. Every series carries `model` (the served model's name, `--model_name`) and `version`
(the model version that answered; for requests turned away before reaching a model, the version
serving then):

  request duration{model,version,endpoint,code}   histogram, buckets from 100 µs: wall time inside
                                                  the server per request (endpoint: a route template)
  predictions{model,version,class}                counter, one per predicted record
  prediction confidence{model,version}            histogram of the top-class probability
  feedback{model,version,outcome}                 counter, outcome = correct | incorrect
  batch size{model,version}                       histogram of rows per forward pass
  feature value{model,version,feature}            histogram per numeric feature
      Its bucket edges (`le`) are exactly the reference profile's quantile edges for that version, so
      that drift (PSI, chi-square) needs nothing but Prometheus: the live share of bin i over a window
      is increase(bucket le=e_i) - increase(bucket le=e_{i-1}) divided by increase(_count), to be
      compared with the profile's proportions[i]. Missing optional values are not observed.
  feature category{model,version,feature,category}  counter per categorical / multi-hot category (for
      multi-hot, one count per mention), against the profile's category proportions.
  model info{model,version,source,device,optimization}  gauge, 1 for the version serving now

Different versions have different edges; prometheus_client's Histogram fixes its buckets per metric,
so the feature histograms are a custom collector holding numpy counts per (version, feature).

Metrics that identify no one: whoever can scrape twice would otherwise read one patient's findings
off the difference (the reviewer's differential scrape: a `_sum` delta is the exact age, a category
counter the sex, the class counter the diagnosis). So
- the feature histograms have no `_sum` (drift needs buckets and `_count` only), and
- every per-record series (features, categories, predicted class, confidence) is released in
  cohorts: a version's records are held back until at least `min_cohort` (`--metrics_min_cohort`,
  default 10) have arrived, then published together, so any change between two scrapes mixes at
  least that many patients. At most min_cohort - 1 records per version are unpublished at a time.
- the feedback series (correct / incorrect) and the request-duration histogram are released the same
  way, per version: a feedback or a request's latency is held until its version has `min_cohort` of
  them, so a scrape difference never shows whether one prediction was right, nor one request's
  latency, endpoint or status. (Rare series, a lone 500 say, show up in steps of the cohort.)
  The held observations are plain list appends on the event loop (the only writer): no lock and no
  prometheus_client call per request, which is also what keeps them off the hot path.
- `/metrics` can require a scrape token (`--metrics_token_file`; api.py), so that only the
  Prometheus holding it reads even these.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from medserve_contract import metrics as names
from medserve_contract.modelspec import NumericProfile, Raw, ReferenceProfile
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_MIN_COHORT = 10
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MODEL_VERSION = [names.MODEL_LABEL, names.VERSION_LABEL]


class _VersionFeatures:
    """Counts per bin / category for one model version, written from the event loop, read by scrapes."""

    def __init__(self, profile: ReferenceProfile) -> None:
        self.numeric: dict[str, tuple[list[float], npt.NDArray[np.int64]]] = {}
        self.categorical: dict[str, tuple[dict[str, int], npt.NDArray[np.int64]]] = {}
        for f in profile.features:
            if isinstance(f, NumericProfile):
                self.numeric[f.name] = (list(f.bin_edges), np.zeros(len(f.bin_edges) + 1, np.int64))
            else:
                self.categorical[f.name] = ({c: i for i, c in enumerate(f.categories)},
                                            np.zeros(len(f.categories), np.int64))

    def observe(self, raw: Mapping[str, Raw]) -> None:
        for name, (edges, counts) in self.numeric.items():
            value = raw.get(name)
            if isinstance(value, float | int):
                # bisect_left: a value equal to an edge belongs to the bin that edge closes (le).
                counts[bisect.bisect_left(edges, value)] += 1
        for name, (index, counts) in self.categorical.items():
            value = raw.get(name)
            for item in value if isinstance(value, list) else [value]:
                i = index.get(item) if isinstance(item, str) else None
                if i is not None:
                    counts[i] += 1


class FeatureCollector(Collector):
    """medserve_feature_value and medserve_feature_category_total for every registered version."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._versions: dict[str, _VersionFeatures] = {}
        self._lock = threading.Lock()

    def register(self, version: str, profile: ReferenceProfile) -> None:
        with self._lock:
            self._versions.setdefault(version, _VersionFeatures(profile))

    def observe(self, version: str, raws: Iterable[Mapping[str, Raw]]) -> None:
        features = self._versions.get(version)
        if features is None:
            return
        with self._lock:
            for raw in raws:
                features.observe(raw)

    def collect(self) -> Iterable[Metric]:
        hist = HistogramMetricFamily(names.FEATURE_VALUE,
                                     "Monitored numeric feature values, bucketed at the reference profile's "
                                     "quantile edges.", labels=[*_MODEL_VERSION, names.FEATURE_LABEL])
        cats = CounterMetricFamily(names.FEATURE_CATEGORY, "Monitored categorical feature values.",
                                   labels=[*_MODEL_VERSION, names.FEATURE_LABEL, names.CATEGORY_LABEL])
        with self._lock:
            for version, features in self._versions.items():
                for name, (edges, counts) in features.numeric.items():
                    cumulative = np.cumsum(counts)
                    buckets = [(_le(e), float(c)) for e, c in zip(edges, cumulative[:-1], strict=True)]
                    buckets.append(("+Inf", float(cumulative[-1])))
                    labels = [self._model, version, name]
                    hist.add_metric(labels, buckets, None)  # no sum: it would give away values
                    hist.samples.append(Sample(names.FEATURE_VALUE + "_count",
                                               dict(zip(hist._labelnames, labels, strict=True)),
                                               float(cumulative[-1])))
                for name, (index, counts) in features.categorical.items():
                    for category, i in index.items():
                        cats.add_metric([self._model, version, name, category], float(counts[i]))
        return [hist, cats]


def _le(edge: float) -> str:
    return repr(float(edge))


@dataclasses.dataclass(slots=True)
class _Cohort:
    """Records of one version not yet published (see the module docstring)."""

    labels: list[str] = dataclasses.field(default_factory=list)
    confidences: list[float] = dataclasses.field(default_factory=list)
    raws: list[Mapping[str, Raw]] = dataclasses.field(default_factory=list)


class RuntimeMetrics:
    """All metrics of one runtime process; `render()` is the /metrics body."""

    def __init__(self, model: str, *, min_cohort: int = DEFAULT_MIN_COHORT) -> None:
        if min_cohort < 1:
            raise ValueError(f"min_cohort must be at least 1, got {min_cohort}")
        self.model = model
        self.min_cohort = min_cohort
        self._cohorts: dict[str, _Cohort] = {}
        self._cohort_lock = threading.Lock()
        # Per version: held request durations (endpoint, code, seconds) and feedback outcomes.
        self._held_requests: dict[str, list[tuple[str, int, float]]] = {}
        self._held_feedback: dict[str, list[bool]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        labels = _MODEL_VERSION
        self.request_duration = Histogram(
            names.REQUEST_DURATION, "Time spent in the server per request.",
            [*labels, names.ENDPOINT_LABEL, names.CODE_LABEL], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter(names.PREDICTIONS, "Predicted records by class.",
                                   [*labels, names.CLASS_LABEL], registry=self.registry)
        self.confidence = Histogram(names.PREDICTION_CONFIDENCE, "Probability of the predicted class.",
                                    labels, buckets=CONFIDENCE_BUCKETS, registry=self.registry)
        self.feedback = Counter(names.FEEDBACK, "Ground-truth feedback by outcome.",
                                [*labels, names.OUTCOME_LABEL], registry=self.registry)
        self.batch_size = Histogram(names.BATCH_SIZE, "Rows per forward pass.", labels,
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.model_info = Gauge(names.MODEL_INFO, "1 for the model version serving now.",
                                [*labels, names.SOURCE_LABEL, names.DEVICE_LABEL, names.OPTIMIZATION_LABEL],
                                registry=self.registry)
        self.features = FeatureCollector(model)
        self.registry.register(self.features)
        self.audit_writable = Gauge(names.AUDIT_WRITABLE, "1 while an audit record can be made durable.",
                                    [names.MODEL_LABEL], registry=self.registry)
        self.rate_limit_degraded = Gauge(names.RATE_LIMIT_DEGRADED, "1 while Redis is unreachable and the "
                                         "local share of the rate limit applies.", [names.MODEL_LABEL],
                                         registry=self.registry)
        self.cache_lookups = Counter(names.PREDICTION_CACHE_LOOKUPS, "Prediction cache lookups per record.",
                                     [names.MODEL_LABEL, names.RESULT_LABEL], registry=self.registry)

    def observe_cache(self, hit: bool) -> None:
        self.cache_lookups.labels(self.model, "hit" if hit else "miss").inc()

    def watch(self, *, audit_writable: Callable[[], bool], rate_limit_degraded: Callable[[], bool]) -> None:
        """Read the two dependency gauges at scrape time."""
        self.audit_writable.labels(self.model).set_function(lambda: float(audit_writable()))
        self.rate_limit_degraded.labels(self.model).set_function(lambda: float(rate_limit_degraded()))

    def register_version(self, version: str, profile: ReferenceProfile, labels: Iterable[str]) -> None:
        """Make a version's series exist at zero, so rates and drift queries start from a known point."""
        self.features.register(version, profile)
        for label in labels:
            self.predictions.labels(self.model, version, label)
        for outcome in (names.OUTCOME_CORRECT, names.OUTCOME_INCORRECT):
            self.feedback.labels(self.model, version, outcome)
        self.confidence.labels(self.model, version)

    def serving(self, version: str, *, source: str, device: str, optimization: str) -> None:
        self.model_info.clear()
        self.model_info.labels(self.model, version, source, device, optimization).set(1)

    def observe_request(self, version: str, endpoint: str, code: int, seconds: float) -> None:
        """Hold the request's duration until its version has a cohort of them (event loop only)."""
        held = self._held_requests.get(version)
        if held is None:
            held = self._held_requests[version] = []
        held.append((endpoint, code, seconds))
        if len(held) < self.min_cohort:
            return
        self._held_requests[version] = []
        series: dict[tuple[str, int], Any] = {}
        for endpoint_, code_, seconds_ in held:
            child = series.get((endpoint_, code_))
            if child is None:
                child = series[endpoint_, code_] = self.request_duration.labels(self.model, version, endpoint_,
                                                                               str(code_))
            child.observe(seconds_)

    def observe_predictions(self, version: str, labels: Iterable[str], confidences: Iterable[float],
                            raws: Iterable[Mapping[str, Raw]]) -> None:
        """Hold the records back until the version has a cohort of min_cohort, then publish it."""
        with self._cohort_lock:
            cohort = self._cohorts.setdefault(version, _Cohort())
            cohort.labels.extend(labels)
            cohort.confidences.extend(confidences)
            cohort.raws.extend(raws)
            # V2 requests carry no raw values, callers outside a request may carry no labels.
            if max(len(cohort.labels), len(cohort.raws)) < self.min_cohort:
                return
            del self._cohorts[version]
        self._publish(version, cohort.labels, cohort.confidences, cohort.raws)

    def _publish(self, version: str, labels: Iterable[str], confidences: Iterable[float],
                 raws: Iterable[Mapping[str, Raw]]) -> None:
        for label in labels:
            self.predictions.labels(self.model, version, label).inc()
        hist = self.confidence.labels(self.model, version)
        for c in confidences:
            hist.observe(c)
        self.features.observe(version, raws)

    def observe_batch(self, version: str, rows: int) -> None:
        self.batch_size.labels(self.model, version).observe(rows)

    def observe_feedback(self, version: str, correct: bool) -> None:
        """Hold the outcome until its version has a cohort of them (event loop only)."""
        held = self._held_feedback.setdefault(version, [])
        held.append(correct)
        if len(held) < self.min_cohort:
            return
        del self._held_feedback[version]
        right = sum(held)
        if right:
            self.feedback.labels(self.model, version, names.OUTCOME_CORRECT).inc(right)
        if len(held) - right:
            self.feedback.labels(self.model, version, names.OUTCOME_INCORRECT).inc(len(held) - right)

    def render(self) -> bytes:
        return generate_latest(self.registry)
