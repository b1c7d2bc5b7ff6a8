"""Plain-language notes shown with a prediction, derived from the feature spec and reference profile only.

They tell a clinician where the model is on thin ice: findings outside the range most of the
training population had, inputs the model had to assume, and near ties between diagnoses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medserve_contract.modelspec import (
    FeatureSpec,
    MultiHotFeature,
    NumericFeature,
    NumericProfile,
    Raw,
    ReferenceProfile,
)

NEAR_TIE = 0.15
"""Top-two probabilities closer than this are reported as a differential."""
TAIL = 0.12
"""A value in an outer reference bin holding at most this share of the population is called unusual."""


def confidence_level(confidence: float) -> str:
    return "high" if confidence >= 0.8 else "moderate" if confidence >= 0.5 else "low"


def clinical_insights(spec: FeatureSpec, profile: ReferenceProfile, raw: Mapping[str, Raw],
                      probabilities: Sequence[float]) -> list[str]:
    notes: list[str] = []
    profiles = {p.name: p for p in profile.features if isinstance(p, NumericProfile)}
    for f in spec.features:
        value = raw.get(f.name)
        if value is None:
            if isinstance(f, MultiHotFeature):
                notes.append(f"{_label(f.description, f.name)} not given: the model assumed none.")
            elif isinstance(f, NumericFeature):
                notes.append(f"{_label(f.description, f.name)} not given: the model assumed a typical value.")
            continue
        p = profiles.get(f.name)
        if isinstance(f, NumericFeature) and p is not None and isinstance(value, float):
            unit = f" {f.unit}" if f.unit else ""
            if value <= p.bin_edges[0] and p.proportions[0] <= TAIL:
                notes.append(f"{_label(f.description, f.name)} {value:g}{unit} is lower than in "
                              f"{100 * (1 - p.proportions[0]):.0f}% of the training population.")
            elif value > p.bin_edges[-1] and p.proportions[-1] <= TAIL:
                notes.append(f"{_label(f.description, f.name)} {value:g}{unit} is higher than in "
                              f"{100 * (1 - p.proportions[-1]):.0f}% of the training population.")
    ranked = sorted(range(len(probabilities)), key=lambda i: probabilities[i], reverse=True)
    if len(ranked) > 1:
        first, second = ranked[0], ranked[1]
        if probabilities[first] - probabilities[second] < NEAR_TIE:
            notes.append(f"Differential: {_readable(spec.labels[first])} ({probabilities[first]:.2f}) and "
                         f"{_readable(spec.labels[second])} ({probabilities[second]:.2f}) are close; "
                         "consider both.")
    return notes


def _label(description: str, name: str) -> str:
    return description or _readable(name).capitalize()


def _readable(name: str) -> str:
    return name.replace("_", " ")
