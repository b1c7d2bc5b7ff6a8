"""The names and labels of the series the model runtime exports and the operator queries.

Prometheus client libraries add `_total` to counters and `_bucket`/`_sum`/`_count` to histograms; the
names here are the series names as Prometheus stores them, with the family name beside each where the
runtime declares a family.
"""

from __future__ import annotations

MODEL_LABEL = "model"
"""The ModelDeployment's name (the runtime's --model_name)."""
VERSION_LABEL = "version"
"""The registry version that answered."""
NAMESPACE_LABEL = "namespace"
"""Added by the scrape (the pod's namespace); absent when a runtime is scraped outside Kubernetes."""

ENDPOINT_LABEL = "endpoint"
"""A route template (the runtime's route table), never a raw path."""
CODE_LABEL = "code"
"""The HTTP status code answered (499: the client went away first)."""
CLASS_LABEL = "class"
"""A predicted class label."""
SOURCE_LABEL = "source"
DEVICE_LABEL = "device"
OPTIMIZATION_LABEL = "optimization"

REQUEST_DURATION = "medserve_request_duration_seconds"
"""Histogram {model, version, endpoint, code}: wall time per request; endpoint is a route template."""
PREDICTIONS = "medserve_predictions"
"""Counter family {model, version, class}: one per predicted record."""
PREDICTIONS_TOTAL = f"{PREDICTIONS}_total"
PREDICTION_CONFIDENCE = "medserve_prediction_confidence"
"""Histogram {model, version}: the top-class probability."""
FEEDBACK = "medserve_feedback"
"""Counter family {model, version, outcome}: ground truth posted to /feedback."""
FEEDBACK_TOTAL = f"{FEEDBACK}_total"
OUTCOME_LABEL = "outcome"
OUTCOME_CORRECT = "correct"
OUTCOME_INCORRECT = "incorrect"
BATCH_SIZE = "medserve_batch_size"
"""Histogram {model, version}: rows per forward pass."""
FEATURE_VALUE = "medserve_feature_value"
"""Histogram {model, version, feature}: bucket edges are the reference profile's quantile edges."""
FEATURE_VALUE_BUCKET = f"{FEATURE_VALUE}_bucket"
FEATURE_CATEGORY = "medserve_feature_category"
"""Counter family {model, version, feature, category}."""
FEATURE_CATEGORY_TOTAL = f"{FEATURE_CATEGORY}_total"
FEATURE_LABEL = "feature"
CATEGORY_LABEL = "category"
MODEL_INFO = "medserve_model_info"
"""Gauge {model, version, source, device, optimization}: 1 for the version serving now."""
