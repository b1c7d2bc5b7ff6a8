"""Train a classifier on scikit-learn's Wisconsin breast cancer set, in the same formats as the triage model.

This shows that the feature spec and the reference profile are not tied to the triage example: 30
numeric measurements of a fine-needle aspirate (clinical_data keys such as `mean_radius`), two labels
(malignant, benign). The data ships with scikit-learn; nothing is downloaded.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python examples/training/train_breast_cancer.py
    python examples/training/train_breast_cancer.py --output-dir /tmp/breast-cancer
"""

from __future__ import annotations

import re
import sys
from typing import Any

import numpy as np
import trainlib
from medserve_contract.modelspec import FeatureSpec, NumericFeature, build_reference_profile
from sklearn.datasets import load_breast_cancer

MODEL_NAME = "breast-cancer-classifier"
RECOMMENDED_ACTIONS = {
    "malignant": ["Refer to breast surgery / oncology", "Confirm with core needle biopsy"],
    "benign": ["Routine follow-up imaging as per guideline"],
}


def feature_name(raw: str) -> str:
    """'mean radius' -> 'mean_radius' (feature names are lower snake case)."""
    return re.sub(r"[^a-z0-9]+", "_", raw.lower()).strip("_")


def main(argv: list[str] | None = None) -> int:
    trainlib.configure_logging()
    p = trainlib.parser("Train a breast cancer classifier (Wisconsin diagnostic data set) and register it.",
                        default_model_name=MODEL_NAME)
    args = p.parse_args(argv)

    data = load_breast_cancer()
    names = [feature_name(n) for n in data.feature_names]
    labels = [str(t) for t in data.target_names]
    x_raw = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.int64)
    records: list[dict[str, Any]] = [dict(zip(names, (float(v) for v in row), strict=True)) for row in x_raw]

    train_idx, test_idx = trainlib.split(len(records), seed=args.seed)
    train_x = x_raw[train_idx]
    spec = FeatureSpec(
        model_name=args.model_name,
        target="diagnosis",
        labels=labels,
        features=[
            NumericFeature(name=name, description=raw, mean=float(train_x[:, i].mean()),
                           std=float(train_x[:, i].std()) or 1.0, minimum=0.0)
            for i, (name, raw) in enumerate(zip(names, data.feature_names, strict=True))
        ],
        recommended_actions=RECOMMENDED_ACTIONS,
    )
    profile = build_reference_profile(spec, [records[i] for i in train_idx])
    x = spec.encode_batch(records)
    model, result = trainlib.fit(x, y, n_classes=len(labels), seed=args.seed, epochs=args.epochs,
                                 train_idx=train_idx, test_idx=test_idx)
    params = {"samples": len(records), "seed": args.seed, "epochs": args.epochs, "hidden": "64,32",
              "input_dim": spec.input_dim, "data": "sklearn.datasets.load_breast_cancer"}
    return trainlib.run(args, spec=spec, profile=profile, model=model, result=result, params=params,
                        description="Breast mass diagnosis (malignant/benign) from fine-needle aspirate "
                                    "measurements, Wisconsin diagnostic data set.")


if __name__ == "__main__":
    sys.exit(main())
