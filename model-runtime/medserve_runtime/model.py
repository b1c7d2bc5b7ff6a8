"""The KServe model: one served model version at a time, hot-swappable, behind a micro-batcher.

`ClinicalModel` is a `kserve.Model`, shaped like KServe's own servers: `load()` loads the version
named on the command line and sets `self.ready`; `predict()` answers the V1 (`{"instances": [...]}`)
and V2 (open inference protocol tensors) data plane. The clinical API (api.py) calls `classify()`,
the same path V1 takes, so validation, batching, metrics and prediction ids are shared by both.

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
from kserve.errors import InvalidInput, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from medserve_contract.modelspec import FeatureError, Raw

from medserve_runtime import loader
from medserve_runtime.batching import Arrivals, BatcherClosed, MicroBatcher
from medserve_runtime.context import current_note
from medserve_runtime.loader import Device, ModelBundle, Optimization
from medserve_runtime.metrics import RuntimeMetrics
from medserve_runtime.stats import PredictionLog, PredictionRecord, VersionStats

logger = logging.getLogger(__name__)

MAX_V1_INSTANCES = 1000


class VersionUnavailable(LookupError):
    """A request asked for a model version other than the one serving."""

    def __init__(self, requested: str, serving: str) -> None:
        super().__init__(f"version {requested!r} is not served here (serving {serving!r})")
        self.message = str(self.args[0])


class InvalidRecord(ValueError):
    """Record `index` does not fit the feature spec; `path` is the key path inside that record."""

    def __init__(self, index: int, exc: FeatureError) -> None:
        super().__init__(f"[{index}].{exc.path}: {exc.message}")
        self.index, self.path, self.message = index, exc.path, exc.message


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
                 predictions: PredictionLog, arrivals: Arrivals | None = None) -> None:
        super().__init__(name)
        self.source = source
        self.device: Device = device
        self.optimization: Optimization = optimization
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.metrics = metrics
        self.stats = stats
        self.predictions = predictions
        self.arrivals = arrivals or Arrivals()
        self._serving: Serving | None = None
        self._labels: dict[str, list[str]] = {}
        self._reload_lock = asyncio.Lock()
        self.repository: ModelRepository | None = None
        """KServe's registry of served models, where a reload puts this model back after an unload."""

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self) -> bool:
        bundle = loader.load(self.source, device=self.device, optimization=self.optimization)
        self._warm_up(bundle)
        self._serving = self._activate(bundle)
        self.ready = True
        return bool(self.ready)

    def stop(self) -> None:
        # Called by KServe on shutdown: new requests get 503, queued ones are still answered.
        self.ready = False

    async def reload(self, source: str) -> tuple[str | None, ModelBundle]:
        """Load `source` beside the serving version and swap to it; returns (old version, new bundle)."""
        async with self._reload_lock:
            bundle = await asyncio.to_thread(self._load_and_warm, source)
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

    def _load_and_warm(self, source: str) -> ModelBundle:
        bundle = loader.load(source, device=self.device, optimization=self.optimization)
        self._warm_up(bundle)
        return bundle

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

    async def classify(self, records: Sequence[Mapping[str, Any]], *, version: str | None = None,
                       urgent: bool = False) -> Classified:
        """Validate, encode and classify clinical_data records (InvalidRecord names the bad one)."""
        serving = self.serving_for(version)
        spec = serving.bundle.spec
        raws: list[dict[str, Raw]] = []
        for i, record in enumerate(records):
            try:
                raws.append(spec.raw_values(record))
            except FeatureError as exc:
                raise InvalidRecord(i, exc) from None
        if not raws:
            raise InvalidInput("at least one record is needed")
        x = np.stack([spec.encode_raw(raw) for raw in raws])
        return await self._run(serving, x, raws, urgent=urgent)

    async def _run(self, serving: Serving, x: npt.NDArray[np.float32], raws: list[dict[str, Raw]], *,
                   urgent: bool = False) -> Classified:
        note = current_note()
        note.settled()
        try:
            # No await between picking `serving` and this call: a swap cannot close it in between.
            probs = await serving.batcher.enqueue(x, urgent=urgent)
        except BatcherClosed:
            raise ModelNotReady(self.name, "the server is stopping") from None
        bundle = serving.bundle
        top = probs.argmax(axis=1)
        labels = [bundle.spec.labels[i] for i in top]
        confidences = [float(c) for c in probs[np.arange(len(top)), top]]
        ids = [uuid.uuid4().hex for _ in labels]
        for prediction_id, label in zip(ids, labels, strict=True):
            self.predictions.remember(prediction_id, PredictionRecord(bundle.version, label))
        self.metrics.observe_predictions(bundle.version, labels, confidences, raws)
        note.model_version = bundle.version
        note.predictions += len(labels)
        note.prediction_id = ids[0] if len(ids) == 1 else None
        return Classified(bundle, ids, labels, confidences, probs, raws)

    async def predict(self, payload: dict[str, Any] | InferRequest,
                      headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        """KServe data plane: V1 `{"instances": [clinical_data, ...]}` or a V2 FP32 [N, D] tensor."""
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput("instances: is required, a list of clinical_data objects")
        instances: list[Any] = payload["instances"]
        if not 1 <= len(instances) <= MAX_V1_INSTANCES:
            raise InvalidInput(f"instances: must hold 1 to {MAX_V1_INSTANCES} records, got {len(instances)}")
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise InvalidInput(f"instances[{i}]: must be an object (clinical_data)")
        try:
            result = await self.classify(instances)
        except InvalidRecord as exc:
            raise InvalidInput(f"instances[{exc.index}].{exc.path}: {exc.message}") from None
        labels = result.bundle.spec.labels
        return {
            "model_name": self.name,
            "model_version": result.bundle.version,
            "predictions": [
                {"prediction_id": pid, "label": label, "confidence": round(conf, 6),
                 "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)}}
                for pid, label, conf, row in zip(result.prediction_ids, result.labels, result.confidences,
                                                 result.probabilities, strict=True)
            ],
        }

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        try:
            serving = self.serving_for(request.model_version or None)
        except VersionUnavailable as exc:
            raise InvalidInput(f"model_version: {exc.message}") from None
        dim = serving.bundle.spec.input_dim
        if len(request.inputs) != 1:
            raise InvalidInput(f"inputs: expected exactly one FP32 tensor of shape [N, {dim}]")
        tensor = request.inputs[0]
        if tensor.datatype not in ("FP32", "FP64") or len(tensor.shape) != 2 or tensor.shape[1] != dim:
            raise InvalidInput(f"inputs[0]: expected datatype FP32 and shape [N, {dim}], got "
                               f"{tensor.datatype} {list(tensor.shape)}")
        if not 1 <= tensor.shape[0] <= MAX_V1_INSTANCES:
            raise InvalidInput(f"inputs[0].shape: N must be 1 to {MAX_V1_INSTANCES}")
        try:
            x = np.ascontiguousarray(tensor.as_numpy(), dtype=np.float32).reshape(-1, dim)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"inputs[0].data: not {tensor.shape[0]}x{dim} numbers ({exc})") from None
        if len(x) != tensor.shape[0] or not np.isfinite(x).all():
            raise InvalidInput(f"inputs[0].data: must be {tensor.shape[0]}x{dim} finite numbers")
        result = await self._run(serving, x, [])
        n, classes = result.probabilities.shape
        return InferResponse(
            response_id=request.id or uuid.uuid4().hex, model_name=self.name,
            model_version=result.bundle.version,
            infer_outputs=[
                InferOutput("probabilities", [n, classes], "FP32",
                            data=result.probabilities.ravel().tolist()),
                InferOutput("label", [n], "BYTES", data=result.labels),
                InferOutput("prediction_id", [n], "BYTES", data=result.prediction_ids),
            ],
        )

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": "input", "datatype": "FP32", "shape": [-1, self.serving.bundle.spec.input_dim]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        classes = len(self.serving.bundle.spec.labels)
        return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}]
