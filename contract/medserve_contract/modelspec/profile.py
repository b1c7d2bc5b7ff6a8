"""`reference_profile.json`: the training population, binned, that live traffic is compared with.

For each numeric feature the quantile bin edges and the share of training samples in each bin; for
each categorical or multi-hot feature the share of each category. The runtime exports one
histogram per feature with exactly these edges, and the operator compares live counts with these
proportions (drift).

Bins are right-closed, as Prometheus histogram buckets are (`le`): with interior edges e1 < ... < ek,
bin 0 is (-inf, e1], bin i is (e_i, e_{i+1}], bin k is (e_k, +inf).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from medserve_contract.modelspec._base import Category, FeatureName, Frozen, check_unique
from medserve_contract.modelspec.features import FeatureSpec, NumericFeature

PROPORTION_TOLERANCE = 1e-6


class NumericProfile(Frozen):
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


class CategoricalProfile(Frozen):
    """The reference share of each category (for multi_hot: the share of all mentions)."""

    type: Literal["categorical", "multi_hot"]
    name: FeatureName
    categories: list[Category] = Field(min_length=1, description="The feature's vocabulary, in order.")
    proportions: list[float] = Field(description="Share of each category, same order as categories.")

    @model_validator(mode="after")
    def _consistent(self) -> CategoricalProfile:
        check_unique(self.categories, f"feature {self.name}: categories")
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


class ReferenceProfile(Frozen):
    """The binned training population the operator compares live traffic with."""

    format_version: Literal[1] = Field(default=1, description="Version of this file format.")
    samples: int = Field(ge=1, description="How many reference (training) records the proportions come from.")
    features: list[Profile] = Field(min_length=1, description="One profile per monitored feature.")

    @model_validator(mode="after")
    def _unique(self) -> ReferenceProfile:
        check_unique([f.name for f in self.features], "feature names")
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
