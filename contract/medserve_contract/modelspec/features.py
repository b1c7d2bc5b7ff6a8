"""`feature_spec.json`: how a request's `clinical_data` becomes the model's input tensor.

The ordered features, each numeric (standardised with the training mean/std), categorical (one-hot
over a vocabulary) or multi_hot (a list of strings over a vocabulary), and the class labels the
model's outputs stand for. Validation names the offending key path, never the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, StringConstraints, model_validator

from medserve_contract.modelspec._base import Category, FeatureName, Frozen, check_unique

Raw = float | str | list[str] | None
"""A feature's raw value after validation: a number, a category, a list of categories, or missing."""


class FeatureError(ValueError):
    """A record does not fit the feature spec; `path` is the dotted key path inside the record."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class _FeatureBase(Frozen):
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


class _VocabularyFeature(_FeatureBase):
    type: Literal["categorical", "multi_hot"]
    vocabulary: list[Category] = Field(min_length=1, description="The allowed values, in column order.")

    @model_validator(mode="after")
    def _unique(self) -> _VocabularyFeature:
        check_unique(self.vocabulary, f"feature {self.name}: vocabulary")
        return self

    @property
    def width(self) -> int:
        return len(self.vocabulary)


class CategoricalFeature(_VocabularyFeature):
    """One-hot over `vocabulary`. A missing optional value encodes as all zeros."""

    type: Literal["categorical"] = "categorical"


class MultiHotFeature(_VocabularyFeature):
    """A list of strings from `vocabulary`, one 0/1 column per entry. Missing optional = empty list."""

    type: Literal["multi_hot"] = "multi_hot"


Feature = Annotated[NumericFeature | CategoricalFeature | MultiHotFeature, Field(discriminator="type")]


class FeatureSpec(Frozen):
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
        check_unique(self.labels, "labels")
        check_unique([f.name for f in self.features], "feature names")
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
