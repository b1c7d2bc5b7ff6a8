"""The KServe model: one served model version at a time, hot-swappable, behind a micro-batcher.

`ClinicalModel` is a `kserve.Model`, shaped like KServe's own servers: `load()` loads the version
named on the command line and sets `self.ready`; `predict()` answers the V1 and V2 data plane, the
wire formats being wire.py's. The clinical API (api.py) calls `classify()`, the same path V1 takes,
so validation, batching, metrics and prediction ids are shared by both.

Hot reload: `reload()` loads the new version in a worker thread beside the one serving, warms it
up, then swaps one reference. A request picks its version once, right before it is queued (no
await in between), so every request queued on the old version's batcher is answered by it: the
old batcher is closed only after the swap and drains its queue before stopping. No request fails
or is dropped by a swap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import kserve
import numpy as np
import numpy.typing as npt
from kserve.errors import ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferRequest, InferResponse
from medserve_contract.modelspec import FeatureError, Raw

from medserve_runtime import loader, registry, wire
from medserve_runtime.batching import Arrivals, BatcherClosed, MicroBatcher
from medserve_runtime.context import current_note
from medserve_runtime.errors import InvalidRecord, VersionUnavailable
from medserve_runtime.loader import Device, ModelBundle, Optimization
from medserve_runtime.metrics import RuntimeMetrics
from medserve_runtime.predcache import PredictionCache
from medserve_runtime.stats import PredictionLog, PredictionRecord, VersionStats

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True, slots=True)
class Serving:
    bundle: ModelBundle
    batcher: MicroBatcher


@dataclasses.dataclass(frozen=True, slots=True)
class Classified:
    bundle: ModelBundle
    prediction_ids: list[str]
    labels: list[str]
    confidences: list[float]
    probabilities: npt.NDArray[np.float32]
    raws: list[dict[str, Raw]]


class ClinicalModel(kserve.Model):  # type: ignore[misc]  # kserve ships no type information
    def __init__(self, name: str, source: str, *, device: Device, optimization: Optimization,
                 max_batch_size: int, max_latency_ms: float, metrics: RuntimeMetrics, stats: VersionStats,
                 predictions: PredictionLog, arrivals: Arrivals | None = None,
                 cache: PredictionCache | None = None,
                 fetch_timeout_s: float = loader.DEFAULT_FETCH_TIMEOUT_S) -> None:
        super().__init__(name)
        self.fetch_timeout_s = fetch_timeout_s
        """Longest a registry download may take (then it is killed: registry.py)."""
        self.cache = cache
        self.source = source
        self.device: Device = device
        self.optimization: Optimization = optimization
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.metrics = metrics
        self.stats = stats
        self.predictions = predictions
        self.id_prefix = ""
        """Before every prediction id: `<arm>.` when the runtime is an arm with peers (arms.py)."""
        self.arrivals = arrivals or Arrivals()
        self._serving: Serving | None = None
        self._labels: dict[str, list[str]] = {}
        self._reload_lock = asyncio.Lock()
        self.repository: ModelRepository | None = None
        """KServe's registry of served models, where a reload puts this model back after an unload."""

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self) -> bool:
        bundle = loader.load(self.source, device=self.device, optimization=self.optimization,
                             fetch_timeout_s=self.fetch_timeout_s)
        self._warm_up(bundle)
        self._serving = self._activate(bundle)
        self.ready = True
        return bool(self.ready)

    def stop(self) -> None:
        # Called by KServe on shutdown: new requests get 503, queued ones are still answered; a reload's
        # registry download is killed, so the reload fails at once rather than holding the stop.
        self.ready = False
        registry.cancel_all()

    async def reload(self, source: str) -> tuple[str | None, ModelBundle]:
        """Load `source` beside the serving version and swap to it; returns (old version, new bundle)."""
        async with self._reload_lock:
            # The download is cancelled with this task (the request deadline, shutdown): registry.py.
            bundle = await loader.aload(source, device=self.device, optimization=self.optimization,
                                        fetch_timeout_s=self.fetch_timeout_s)
            await asyncio.to_thread(self._warm_up, bundle)
            new = self._activate(bundle)
            old, self._serving = self._serving, new
            self.source = source
            self.ready = True
            if self.repository is not None and self.repository.get_model(self.name) is None:
                self.repository.update(self)  # it was unloaded through KServe's repository API
            logger.info("model %s now serves version %s (was %s)", self.name, bundle.version,
                        old.bundle.version if old else None)
            if old is not None:
                await old.batcher.close()
            return (old.bundle.version if old else None), bundle

    def _warm_up(self, bundle: ModelBundle) -> None:
        # TorchScript's profiling executor specialises on the first calls; do them before traffic does.
        for rows in (1, self.max_batch_size, 1, self.max_batch_size, 1):
            bundle.forward(np.zeros((rows, bundle.spec.input_dim), dtype=np.float32))

    def labels_of(self, version: str) -> list[str]:
        """The class labels of a version loaded at some point in this process."""
        return self._labels[version]

    def _activate(self, bundle: ModelBundle) -> Serving:
        self._labels[bundle.version] = list(bundle.spec.labels)
        self.metrics.register_version(bundle.version, bundle.profile, bundle.spec.labels)
        self.metrics.serving(bundle.version, source=bundle.source, device=self.device,
                             optimization=self.optimization)
        self.stats.add_version(bundle.version, source=bundle.source)
        batcher = MicroBatcher(bundle.forward, max_batch_size=self.max_batch_size,
                               max_latency_ms=self.max_latency_ms, arrivals=self.arrivals,
                               name=bundle.version,
                               on_batch=functools.partial(self.metrics.observe_batch, bundle.version))
        return Serving(bundle, batcher)

    @property
    def serving(self) -> Serving:
        if self._serving is None or not self.ready:
            raise ModelNotReady(self.name)
        return self._serving

    @property
    def version(self) -> str | None:
        """The version serving now (None before the first load), whether or not it is ready."""
        return self._serving.bundle.version if self._serving is not None else None

    def serving_for(self, version: str | None) -> Serving:
        serving = self.serving
        if version is not None and version != serving.bundle.version:
            raise VersionUnavailable(version, serving.bundle.version)
        return serving

    # --- inference -------------------------------------------------------------------------------

    async def classify(self, records: Sequence[Mapping[str, Any]], *, field: str, version: str | None = None,
                       urgent: bool = False) -> Classified:
        """Validate, encode and classify clinical_data records.

        A record that does not fit the feature spec raises InvalidRecord naming the offending key as
        `field` (formatted with the record's `index`) followed by its path inside the record.
        """
        serving = self.serving_for(version)
        spec = serving.bundle.spec
        raws: list[dict[str, Raw]] = []
        for i, record in enumerate(records):
            try:
                raws.append(spec.raw_values(record))
            except FeatureError as exc:
                where = field.format(index=i)
                raise InvalidRecord(f"{where}.{exc.path}" if exc.path else where, exc.message) from None
        if not raws:
            raise wire.WireError(field.format(index=0), "at least one record is needed")
        x = np.stack([spec.encode_raw(raw) for raw in raws])
        return await self._run(serving, x, raws, urgent=urgent)

    async def _run(self, serving: Serving, x: npt.NDArray[np.float32], raws: list[dict[str, Raw]], *,
                   urgent: bool = False) -> Classified:
        note = current_note()
        note.settled()
        try:
            if self.cache is None:
                # No await between picking `serving` and this call: a swap cannot close it in between.
                probs = await serving.batcher.enqueue(x, urgent=urgent)
            else:
                probs = await self._cached(serving, x, urgent=urgent)
        except BatcherClosed:
            raise ModelNotReady(self.name, "the server is stopping") from None
        bundle = serving.bundle
        top = probs.argmax(axis=1)
        labels = [bundle.spec.labels[i] for i in top]
        confidences = [float(c) for c in probs[np.arange(len(top)), top]]
        ids = [self.id_prefix + uuid.uuid4().hex for _ in labels]
        for prediction_id, label in zip(ids, labels, strict=True):
            self.predictions.remember(prediction_id, PredictionRecord(bundle.version, label))
        self.metrics.observe_predictions(bundle.version, labels, confidences, raws)
        note.model_version = bundle.version
        note.predictions += len(labels)
        note.prediction_id = ids[0] if len(ids) == 1 else None
        return Classified(bundle, ids, labels, confidences, probs, raws)

    async def _cached(self, serving: Serving, x: npt.NDArray[np.float32], *,
                      urgent: bool) -> npt.NDArray[np.float32]:
        """The prediction cache in front of the batcher: only the rows it misses run the model. The
        serving version is fixed before the lookup, so an answer is never another version's."""
        assert self.cache is not None
        version = serving.bundle.version
        rows = [row.tobytes() for row in x]
        found = await self.cache.get(version, rows)
        misses = [i for i, value in enumerate(found) if value is None]
        if not misses:
            return np.asarray(found, dtype=np.float32)
        computed = await serving.batcher.enqueue(x[misses], urgent=urgent)
        await self.cache.put(version, [rows[i] for i in misses], computed.tolist())
        if len(misses) == len(rows):
            return computed
        probs = np.empty((len(rows), computed.shape[1]), dtype=np.float32)
        probs[misses] = computed
        for i, value in enumerate(found):
            if value is not None:
                probs[i] = value
        return probs

    async def predict(self, payload: dict[str, Any] | InferRequest,
                      headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        """KServe data plane: V1 `{"instances": [clinical_data, ...]}` or a V2 FP32 [N, D] tensor."""
        if isinstance(payload, InferRequest):
            serving = self.serving_for(payload.model_version or None)
            x = wire.v2_rows(payload, serving.bundle.spec.input_dim)
            return wire.v2_response(payload, self.name, await self._run(serving, x, []))
        records = wire.v1_instances(payload)
        result = await self.classify(records, field=wire.V1_RECORD_FIELD)
        return wire.v1_response(self.name, result)

    def get_input_types(self) -> list[dict[str, Any]]:
        return wire.v2_input_types(self.serving.bundle.spec.input_dim)

    def get_output_types(self) -> list[dict[str, Any]]:
        return wire.v2_output_types(len(self.serving.bundle.spec.labels))
