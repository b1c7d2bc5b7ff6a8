"""KServe's data-plane wire formats: V1 `{"instances": [...]}` and V2 (open inference protocol) tensors.

KServe parses the HTTP body into a dict (V1) or an `InferRequest` (V2) and hands it to
`Model.predict`; what the payload must hold for this model, and how its answer is written back, is
decided here, so that the model class only classifies (as KServe's sklearnserver keeps its
`predict` to input, model, output with `kserve.utils.utils.get_predict_input/_response`).
Rejections are `WireError`s: clinical errors (400, code `invalid_input`) naming the offending field and
never its value, answered with the clinical API's `{error, field, code}` shape by the one handler in
errors.py, like every other rejection on these routes.

V1: each instance is one clinical_data record (the clinical API's validation, batching and
prediction ids); the answer lists label, confidence and probabilities per instance. V2: one FP32
(or FP64) tensor [N, D] already encoded as the feature spec's columns; the outputs are
`probabilities` [N, C], `label` [N] and `prediction_id` [N].
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from medserve_runtime.errors import ClinicalError

if TYPE_CHECKING:
    from medserve_runtime.model import Classified

MAX_INSTANCES = 1000
V1_RECORD_FIELD = "instances[{index}]"
"""Where a bad V1 record is: the `field` template for ClinicalModel.classify."""


class WireError(ClinicalError):
    """A V1/V2 request body that does not fit this model's wire format."""

    status = 400
    code = "invalid_input"


def v1_instances(payload: Any) -> list[dict[str, Any]]:
    """The clinical_data records of a V1 request body."""
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise WireError("instances", "is required, a list of clinical_data objects")
    instances: list[Any] = payload["instances"]
    if not 1 <= len(instances) <= MAX_INSTANCES:
        raise WireError("instances", f"must hold 1 to {MAX_INSTANCES} records, got {len(instances)}")
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise WireError(f"instances[{i}]", "must be an object (clinical_data)")
    return instances


def v1_response(model_name: str, result: Classified) -> dict[str, Any]:
    labels = result.bundle.spec.labels
    return {
        "model_name": model_name,
        "model_version": result.bundle.version,
        "predictions": [
            {"prediction_id": pid, "label": label, "confidence": round(conf, 6),
             "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)}}
            for pid, label, conf, row in zip(result.prediction_ids, result.labels, result.confidences,
                                             result.probabilities, strict=True)
        ],
    }


def v2_rows(request: InferRequest, dim: int) -> npt.NDArray[np.float32]:
    """The [N, dim] float32 input of a V2 request: exactly one finite FP32/FP64 tensor of that shape."""
    if len(request.inputs) != 1:
        raise WireError("inputs", f"expected exactly one FP32 tensor of shape [N, {dim}]")
    tensor = request.inputs[0]
    if tensor.datatype not in ("FP32", "FP64") or len(tensor.shape) != 2 or tensor.shape[1] != dim:
        raise WireError("inputs[0]", f"expected datatype FP32 and shape [N, {dim}], got "
                        f"{_short(tensor.datatype)} {_short(tensor.shape)}")
    if not 1 <= tensor.shape[0] <= MAX_INSTANCES:
        raise WireError("inputs[0].shape", f"N must be 1 to {MAX_INSTANCES}")
    try:
        x = np.ascontiguousarray(tensor.as_numpy(), dtype=np.float32).reshape(-1, dim)
    except (ValueError, TypeError, OverflowError):
        # Not the exception's text: numpy's names the offending value ("could not convert string to
        # float: '<value>'"), which may be anything the client put in the tensor.
        raise WireError("inputs[0].data", f"must be {tensor.shape[0]}x{dim} numbers") from None
    if len(x) != tensor.shape[0] or not np.isfinite(x).all():
        raise WireError("inputs[0].data", f"must be {tensor.shape[0]}x{dim} finite numbers")
    return x


def _short(value: object) -> str:
    # The datatype and shape are the client's, echoed to the client only; kept short.
    return str(value)[:40]


def v2_response(request: InferRequest, model_name: str, result: Classified) -> InferResponse:
    n, classes = result.probabilities.shape
    return InferResponse(
        response_id=request.id or uuid.uuid4().hex, model_name=model_name,
        model_version=result.bundle.version,
        infer_outputs=[
            InferOutput("probabilities", [n, classes], "FP32", data=result.probabilities.ravel().tolist()),
            InferOutput("label", [n], "BYTES", data=result.labels),
            InferOutput("prediction_id", [n], "BYTES", data=result.prediction_ids),
        ],
    )


def v2_input_types(dim: int) -> list[dict[str, Any]]:
    return [{"name": "input", "datatype": "FP32", "shape": [-1, dim]}]


def v2_output_types(classes: int) -> list[dict[str, Any]]:
    return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}]
