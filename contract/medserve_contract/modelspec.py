"""The two files stored beside every model version: the feature spec and the reference profile.

- `feature_spec.json` (`FeatureSpec`) says how a request's `clinical_data` becomes the model's input
  tensor: the ordered features, each numeric (standardised with the training mean/std), categorical
  (one-hot over a vocabulary) or multi_hot (a list of strings over a vocabulary), and the class labels
  the model's outputs stand for.
- `reference_profile.json` (`ReferenceProfile`) is the training population, binned: for each numeric
  feature the quantile bin edges and the share of training samples in each bin; for each categorical
  or multi-hot feature the share of each category. The runtime exports one histogram per feature
  with exactly these edges, and the operator compares live counts with these proportions (drift).

One definition serves the training job, the runtime and the operator, so this module imports only
pydantic, numpy and the standard library (no torch: the operator imports it too).

Bins are right-closed, as Prometheus histogram buckets are (`le`): with interior edges e1 < ... < ek,
bin 0 is (-inf, e1], bin i is (e_i, e_{i+1}], bin k is (e_k, +inf).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
FEATURE_SPEC_FILE = "feature_spec.json"
REFERENCE_PROFILE_FILE = "reference_profile.json"
PROPORTION_TOLERANCE = 1e-6

FeatureName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
"""Feature names become Prometheus label values and metric name parts: lower snake case."""

Category = Annotated[str, StringConstraints(min_length=1, max_length=128)]

Raw = float | str | list[str] | None
"""A feature's raw value after validation: a number, a category, a list of categories, or missing."""


class FeatureError(ValueError):
    """A record does not fit the feature spec; `path` is the dotted key path inside the record."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FeatureBase(_Model):
    name: FeatureName = Field(description="Feature name, unique in the spec (lower snake case).")
    path: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=list,
        description="Keys leading to the value inside clinical_data; empty means [name].",
    )
    description: str = Field(default="", description="What the feature is, for people.")
    required: bool = Field(default=True, description="Reject records without it; else impute (see type).")

    @property
    def key_path(self) -> list[str]:
        return self.path or [self.name]

    @property
    def dotted_path(self) -> str:
        return ".".join(self.key_path)


class NumericFeature(_FeatureBase):
    """One column: (value - mean) / std. A missing optional value is imputed with the mean (0)."""

    type: Literal["numeric"] = "numeric"
    unit: str = Field(default="", description="Unit of the raw value, e.g. 'bpm' or 'mmHg'.")
    mean: float = Field(description="Training mean, subtracted before scaling.")
    std: float = Field(gt=0, description="Training standard deviation, the scale.")
    minimum: float | None = Field(default=None, description="Lowest plausible raw value; below is rejected.")
    maximum: float | None = Field(default=None, description="Highest plausible raw value; above is rejected.")

    @model_validator(mode="after")
    def _range(self) -> NumericFeature:
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"feature {self.name}: minimum {self.minimum} > maximum {self.maximum}")
        return self

    @property
    def width(self) -> int:
        return 1


class CategoricalFeature(_FeatureBase):
    """One-hot over `vocabulary`. A missing optional value encodes as all zeros."""

    type: Literal["categorical"] = "categorical"
    vocabulary: list[Category] = Field(min_length=1, description="The allowed values, in column order.")

    @model_validator(mode="after")
    def _unique(self) -> CategoricalFeature:
        _check_unique(self.vocabulary, f"feature {self.name}: vocabulary")
        return self

    @property
    def width(self) -> int:
        return len(self.vocabulary)


class MultiHotFeature(_FeatureBase):
    """A list of strings from `vocabulary`, one 0/1 column per entry. Missing optional = empty list."""

    type: Literal["multi_hot"] = "multi_hot"
    vocabulary: list[Category] = Field(min_length=1, description="The allowed values, in column order.")

    @model_validator(mode="after")
    def _unique(self) -> MultiHotFeature:
        _check_unique(self.vocabulary, f"feature {self.name}: vocabulary")
        return self

    @property
    def width(self) -> int:
        return len(self.vocabulary)


Feature = Annotated[NumericFeature | CategoricalFeature | MultiHotFeature, Field(discriminator="type")]


class FeatureSpec(_Model):
    """How clinical_data becomes the model's input tensor, and what the model's outputs mean."""

    format_version: Literal[1] = Field(default=1, description="Version of this file format.")
    model_name: str = Field(min_length=1, description="The registered model this spec was trained for.")
    framework: Literal["torchscript"] = Field(
        default="torchscript", description="How model.pt is stored: a TorchScript module taking float32 [N, D]."
    )
    output: Literal["logits"] = Field(
        default="logits", description="What the model returns per class: logits (the runtime applies softmax)."
    )
    target: str = Field(min_length=1, description="What is predicted, e.g. primary_diagnosis.")
    labels: list[Category] = Field(min_length=2, description="Class labels in the model's output order.")
    features: list[Feature] = Field(min_length=1, description="Input features in tensor column order.")
    recommended_actions: dict[str, list[str]] = Field(
        default_factory=dict, description="Per label, the actions shown with a prediction of that label."
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        _check_unique(self.labels, "labels")
        _check_unique([f.name for f in self.features], "feature names")
        unknown = sorted(set(self.recommended_actions) - set(self.labels))
        if unknown:
            raise ValueError(f"recommended_actions: {unknown} are not labels")
        return self

    @property
    def input_dim(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def columns(self) -> list[str]:
        """One name per tensor column: `age`, `sex=female`, `symptoms=fever`, ..."""
        cols: list[str] = []
        for f in self.features:
            if isinstance(f, NumericFeature):
                cols.append(f.name)
            else:
                cols.extend(f"{f.name}={v}" for v in f.vocabulary)
        return cols

    def feature(self, name: str) -> NumericFeature | CategoricalFeature | MultiHotFeature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def raw_values(self, record: Mapping[str, Any]) -> dict[str, Raw]:
        """Validate `record` against the spec and return each feature's raw value, by feature name.

        Raises FeatureError naming the first offending key path. Extra keys in `record` are allowed
        (clinical_data may carry fields the model does not use).
        """
        if not isinstance(record, Mapping):
            raise FeatureError("", f"must be an object, not {_type_name(record)}")
        return {f.name: _raw_value(f, record) for f in self.features}

    def encode(self, record: Mapping[str, Any]) -> npt.NDArray[np.float32]:
        """The float32 input row (length `input_dim`) for one record."""
        return self.encode_raw(self.raw_values(record))

    def encode_raw(self, raw: Mapping[str, Raw]) -> npt.NDArray[np.float32]:
        """The input row for already validated raw values (as returned by `raw_values`)."""
        row = np.zeros(self.input_dim, dtype=np.float32)
        col = 0
        for f in self.features:
            value = raw.get(f.name)
            if isinstance(f, NumericFeature):
                if isinstance(value, float | int):
                    row[col] = (float(value) - f.mean) / f.std
            elif isinstance(f, CategoricalFeature):
                if isinstance(value, str):
                    row[col + f.vocabulary.index(value)] = 1.0
            elif isinstance(value, list):
                for item in value:
                    row[col + f.vocabulary.index(item)] = 1.0
            col += f.width
        return row

    def encode_batch(self, records: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float32]:
        """The [N, input_dim] float32 matrix for `records`; a FeatureError path starts with `[i].`."""
        out = np.zeros((len(records), self.input_dim), dtype=np.float32)
        for i, record in enumerate(records):
            try:
                out[i] = self.encode(record)
            except FeatureError as exc:
                raise FeatureError(f"[{i}].{exc.path}".rstrip("."), exc.message) from None
        return out


class NumericProfile(_Model):
    """The reference distribution of one numeric feature over its quantile bins."""

    type: Literal["numeric"] = "numeric"
    name: FeatureName
    bin_edges: list[float] = Field(
        min_length=1, description="Interior bin edges, strictly increasing; bins are right-closed."
    )
    proportions: list[float] = Field(description="Share of reference samples per bin (len(bin_edges) + 1).")

    @model_validator(mode="after")
    def _consistent(self) -> NumericProfile:
        if any(not math.isfinite(e) for e in self.bin_edges):
            raise ValueError(f"feature {self.name}: bin_edges must be finite")
        if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
            raise ValueError(f"feature {self.name}: bin_edges must be strictly increasing")
        if len(self.proportions) != len(self.bin_edges) + 1:
            raise ValueError(f"feature {self.name}: {len(self.bin_edges)} edges need "
                             f"{len(self.bin_edges) + 1} proportions, got {len(self.proportions)}")
        _check_proportions(self.proportions, self.name)
        return self

    def counts(self, values: Iterable[float]) -> npt.NDArray[np.int64]:
        """How many of `values` fall in each bin (same right-closed rule as the reference)."""
        return bin_counts(self.bin_edges, np.asarray(list(values), dtype=np.float64))


class CategoricalProfile(_Model):
    """The reference share of each category (for multi_hot: the share of all mentions)."""

    type: Literal["categorical", "multi_hot"]
    name: FeatureName
    categories: list[Category] = Field(min_length=1, description="The feature's vocabulary, in order.")
    proportions: list[float] = Field(description="Share of each category, same order as categories.")

    @model_validator(mode="after")
    def _consistent(self) -> CategoricalProfile:
        _check_unique(self.categories, f"feature {self.name}: categories")
        if len(self.proportions) != len(self.categories):
            raise ValueError(f"feature {self.name}: {len(self.categories)} categories need as many "
                             f"proportions, got {len(self.proportions)}")
        _check_proportions(self.proportions, self.name)
        return self

    def counts(self, values: Iterable[str]) -> npt.NDArray[np.int64]:
        """How many of `values` are each category; values outside the vocabulary are not counted."""
        index = {c: i for i, c in enumerate(self.categories)}
        out = np.zeros(len(self.categories), dtype=np.int64)
        for v in values:
            if v in index:
                out[index[v]] += 1
        return out


Profile = Annotated[NumericProfile | CategoricalProfile, Field(discriminator="type")]


class ReferenceProfile(_Model):
    """The binned training population the operator compares live traffic with."""

    format_version: Literal[1] = Field(default=1, description="Version of this file format.")
    samples: int = Field(ge=1, description="How many reference (training) records the proportions come from.")
    features: list[Profile] = Field(min_length=1, description="One profile per monitored feature.")

    @model_validator(mode="after")
    def _unique(self) -> ReferenceProfile:
        _check_unique([f.name for f in self.features], "feature names")
        return self

    def feature(self, name: str) -> NumericProfile | CategoricalProfile:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


def bin_counts(edges: Sequence[float], values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Counts per right-closed bin: value v goes to the first bin whose upper edge is >= v."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def quantile_edges(values: npt.NDArray[np.float64], bins: int) -> list[float]:
    """Interior edges at the 1/bins, 2/bins, ... quantiles, duplicates merged (so fewer bins on ties)."""
    if values.size == 0:
        raise ValueError("no values to take quantiles of")
    qs = np.quantile(values, np.arange(1, bins) / bins)
    return [float(e) for e in np.unique(qs)]


def build_reference_profile(spec: FeatureSpec, records: Sequence[Mapping[str, Any]], *,
                            bins: int = 10) -> ReferenceProfile:
    """Profile `records` (the training population) feature by feature, as the spec reads them."""
    if not records:
        raise ValueError("a reference profile needs at least one record")
    raws = [spec.raw_values(r) for r in records]
    profiles: list[NumericProfile | CategoricalProfile] = []
    for f in spec.features:
        column = [raw[f.name] for raw in raws if raw[f.name] is not None]
        if isinstance(f, NumericFeature):
            values = np.asarray(column, dtype=np.float64)
            edges = quantile_edges(values, bins)
            counts = bin_counts(edges, values)
            profiles.append(NumericProfile(name=f.name, bin_edges=edges,
                                           proportions=_proportions(counts, f.name)))
        else:
            mentions = Counter(m for v in column for m in (v if isinstance(v, list) else [str(v)]))
            counts = np.asarray([mentions[c] for c in f.vocabulary], dtype=np.int64)
            profiles.append(CategoricalProfile(type=f.type, name=f.name, categories=list(f.vocabulary),
                                               proportions=_proportions(counts, f.name)))
    return ReferenceProfile(samples=len(records), features=profiles)


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


def _raw_value(f: NumericFeature | CategoricalFeature | MultiHotFeature, record: Mapping[str, Any]) -> Raw:
    value: Any = record
    for depth, key in enumerate(f.key_path):
        if not isinstance(value, Mapping):
            parent = ".".join(f.key_path[:depth])
            raise FeatureError(parent, f"must be an object, not {_type_name(value)}")
        if key not in value or value[key] is None:
            if f.required:
                raise FeatureError(f.dotted_path, "is required")
            return None
        value = value[key]
    where = f.dotted_path
    if isinstance(f, NumericFeature):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FeatureError(where, f"must be a number, not {_type_name(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the range of a float
            raise FeatureError(where, "must be a finite number") from None
        if not math.isfinite(number):
            raise FeatureError(where, "must be a finite number")
        if f.minimum is not None and number < f.minimum:
            raise FeatureError(where, f"must be at least {f.minimum:g}{_unit(f)}, got {number:g}")
        if f.maximum is not None and number > f.maximum:
            raise FeatureError(where, f"must be at most {f.maximum:g}{_unit(f)}, got {number:g}")
        return number
    if isinstance(f, CategoricalFeature):
        if not isinstance(value, str):
            raise FeatureError(where, f"must be a string, not {_type_name(value)}")
        if value not in f.vocabulary:
            raise FeatureError(where, f"must be one of {', '.join(f.vocabulary)}")
        return value
    if not isinstance(value, list):
        raise FeatureError(where, f"must be a list of strings, not {_type_name(value)}")
    items: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise FeatureError(f"{where}[{i}]", f"must be a string, not {_type_name(item)}")
        if item not in f.vocabulary:
            raise FeatureError(f"{where}[{i}]", f"must be one of {', '.join(f.vocabulary)}")
        if item not in items:  # a symptom listed twice is still one symptom
            items.append(item)
    return items


def _unit(f: NumericFeature) -> str:
    return f" {f.unit}" if f.unit else ""


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _check_unique(values: Sequence[str], what: str) -> None:
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dupes)}")


def _check_proportions(proportions: Sequence[float], name: str) -> None:
    if any(not math.isfinite(p) or p < 0 or p > 1 for p in proportions):
        raise ValueError(f"feature {name}: proportions must lie in [0, 1]")
    if abs(sum(proportions) - 1.0) > PROPORTION_TOLERANCE:
        raise ValueError(f"feature {name}: proportions must sum to 1, got {sum(proportions):.9f}")


def _proportions(counts: npt.NDArray[np.int64], name: str) -> list[float]:
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"feature {name}: no reference values to profile")
    return [float(c) / total for c in counts]
