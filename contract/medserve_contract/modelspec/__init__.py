"""The two files stored beside every model version: the feature spec and the reference profile.

- `feature_spec.json` (`FeatureSpec`) says how a request's `clinical_data` becomes the model's input
  tensor: the ordered features, each numeric (standardised with the training mean/std), categorical
  (one-hot over a vocabulary) or multi_hot (a list of strings over a vocabulary), and the class labels
  the model's outputs stand for.
- `reference_profile.json` (`ReferenceProfile`) is the training population, binned: for each numeric
  feature the quantile bin edges and the share of training samples in each bin; for each categorical
  or multi-hot feature the share of each category. The runtime exports one histogram per feature
  with exactly these edges, and the operator compares live counts with these proportions (drift).

One definition serves the training job, the runtime and the operator, so this package imports only
pydantic, numpy and the standard library (no torch: the operator imports it too). `features` holds
the feature spec, `profile` the reference profile; every public name is importable from here, with
the file names and the readers and writer of the two files.

Bins are right-closed, as Prometheus histogram buckets are (`le`): with interior edges e1 < ... < ek,
bin 0 is (-inf, e1], bin i is (e_i, e_{i+1}], bin k is (e_k, +inf).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from medserve_contract.modelspec._base import Category, FeatureName
from medserve_contract.modelspec.features import (
    CategoricalFeature,
    Feature,
    FeatureError,
    FeatureSpec,
    MultiHotFeature,
    NumericFeature,
    Raw,
)
from medserve_contract.modelspec.profile import (
    PROPORTION_TOLERANCE,
    CategoricalProfile,
    NumericProfile,
    Profile,
    ReferenceProfile,
    bin_counts,
    build_reference_profile,
    quantile_edges,
)

__all__ = [
    "FEATURE_SPEC_FILE", "FORMAT_VERSION", "MODEL_FILE", "PROPORTION_TOLERANCE", "REFERENCE_PROFILE_FILE",
    "CategoricalFeature", "CategoricalProfile", "Category", "Feature", "FeatureError", "FeatureName",
    "FeatureSpec", "MultiHotFeature", "NumericFeature", "NumericProfile", "Profile", "Raw", "ReferenceProfile",
    "bin_counts", "build_reference_profile", "load_feature_spec", "load_reference_profile", "quantile_edges",
    "write_json",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
FEATURE_SPEC_FILE = "feature_spec.json"
REFERENCE_PROFILE_FILE = "reference_profile.json"


def load_feature_spec(path: Path) -> FeatureSpec:
    """Read a feature spec from a file, or from FEATURE_SPEC_FILE inside a directory."""
    path = path / FEATURE_SPEC_FILE if path.is_dir() else path
    return FeatureSpec.model_validate_json(path.read_text(encoding="utf-8"))


def load_reference_profile(path: Path) -> ReferenceProfile:
    """Read a reference profile from a file, or from REFERENCE_PROFILE_FILE inside a directory."""
    path = path / REFERENCE_PROFILE_FILE if path.is_dir() else path
    return ReferenceProfile.model_validate_json(path.read_text(encoding="utf-8"))


def write_json(model: BaseModel, path: Path) -> None:
    """Write `model` as indented JSON (stable key order, so versions diff cleanly)."""
    path.write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
