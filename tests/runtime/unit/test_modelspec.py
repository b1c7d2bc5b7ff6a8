"""The feature spec and reference profile formats (medserve_contract.modelspec): encoding, errors, binning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from medserve_contract.modelspec import (
    CategoricalFeature,
    CategoricalProfile,
    FeatureError,
    FeatureSpec,
    MultiHotFeature,
    NumericFeature,
    NumericProfile,
    ReferenceProfile,
    bin_counts,
    build_reference_profile,
    load_feature_spec,
    load_reference_profile,
    write_json,
)
from pydantic import ValidationError


def make_spec() -> FeatureSpec:
    return FeatureSpec(
        model_name="triage-classifier",
        target="primary_diagnosis",
        labels=["a", "b", "c"],
        features=[
            NumericFeature(name="age", mean=50.0, std=10.0, minimum=0, maximum=120, unit="years"),
            CategoricalFeature(name="sex", vocabulary=["female", "male"]),
            MultiHotFeature(name="symptoms", vocabulary=["fever", "cough", "chest_pain"], required=False),
            NumericFeature(name="heart_rate", path=["vital_signs", "heart_rate"], mean=80.0, std=20.0),
        ],
        recommended_actions={"a": ["rest"]},
    )


RECORD: dict[str, Any] = {"age": 60, "sex": "male", "symptoms": ["cough", "fever", "cough"],
                          "vital_signs": {"heart_rate": 100}, "unused": "extra keys are allowed"}


def test_encode_orders_columns_as_the_spec_says() -> None:
    spec = make_spec()
    assert spec.input_dim == 7
    assert spec.columns == ["age", "sex=female", "sex=male", "symptoms=fever", "symptoms=cough",
                            "symptoms=chest_pain", "heart_rate"]
    row = spec.encode(RECORD)
    assert row.dtype == np.float32
    assert row.tolist() == pytest.approx([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])


def test_optional_feature_may_be_missing_and_encodes_as_zeros() -> None:
    record = {k: v for k, v in RECORD.items() if k != "symptoms"}
    assert make_spec().encode(record)[3:6].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("record", "path", "fragment"), [
    ({**RECORD, "age": "sixty"}, "age", "must be a number"),
    ({**RECORD, "age": True}, "age", "must be a number"),
    ({**RECORD, "age": 130}, "age", "at most 120 years"),
    ({**RECORD, "age": float("nan")}, "age", "finite"),
    ({k: v for k, v in RECORD.items() if k != "age"}, "age", "is required"),
    ({**RECORD, "sex": "unknown"}, "sex", "one of female, male"),
    ({**RECORD, "symptoms": "fever"}, "symptoms", "list of strings"),
    ({**RECORD, "symptoms": ["fever", "sneezing"]}, "symptoms[1]", "one of fever, cough, chest_pain"),
    ({**RECORD, "symptoms": [3]}, "symptoms[0]", "must be a string"),
    ({**RECORD, "vital_signs": 7}, "vital_signs", "must be an object"),
    ({**RECORD, "vital_signs": {}}, "vital_signs.heart_rate", "is required"),
])
def test_bad_records_name_the_field(record: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(FeatureError) as info:
        make_spec().encode(record)
    assert info.value.path == path
    assert fragment in info.value.message


def test_batch_errors_carry_the_record_index() -> None:
    with pytest.raises(FeatureError) as info:
        make_spec().encode_batch([RECORD, {**RECORD, "sex": "x"}])
    assert info.value.path == "[1].sex"


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"labels": ["a", "a"]}, "labels must be unique"),
    ({"recommended_actions": {"z": ["x"]}}, "not labels"),
    ({"features": [NumericFeature(name="x", mean=0, std=1), NumericFeature(name="x", mean=0, std=1)]},
     "feature names must be unique"),
])
def test_inconsistent_specs_are_rejected(kwargs: dict[str, Any], fragment: str) -> None:
    base = make_spec().model_dump()
    base.update(kwargs)
    with pytest.raises(ValidationError, match=fragment):
        FeatureSpec.model_validate(base)


def test_feature_names_must_be_label_friendly() -> None:
    with pytest.raises(ValidationError):
        NumericFeature(name="Heart Rate", mean=0, std=1)


def test_bins_are_right_closed_like_prometheus_buckets() -> None:
    counts = bin_counts([1.0, 2.0], np.array([0.5, 1.0, 1.5, 2.0, 2.5]))
    assert counts.tolist() == [2, 2, 1]  # (-inf, 1], (1, 2], (2, inf)


def test_profile_of_a_population() -> None:
    spec = make_spec()
    rng = np.random.default_rng(0)
    records = [{"age": int(a), "sex": ["female", "male"][i % 2], "symptoms": ["fever"] * (i % 3 == 0),
                "vital_signs": {"heart_rate": float(h)}}
               for i, (a, h) in enumerate(zip(rng.integers(18, 90, 500), rng.normal(80, 15, 500), strict=True))]
    profile = build_reference_profile(spec, records)
    assert profile.samples == 500
    heart = profile.feature("heart_rate")
    assert isinstance(heart, NumericProfile)
    assert len(heart.bin_edges) == 9 and len(heart.proportions) == 10
    assert all(p == pytest.approx(0.1, abs=0.01) for p in heart.proportions)
    for f in profile.features:
        assert sum(f.proportions) == pytest.approx(1.0)
    symptoms = profile.feature("symptoms")
    assert isinstance(symptoms, CategoricalProfile) and symptoms.type == "multi_hot"
    assert symptoms.proportions == [1.0, 0.0, 0.0]  # only fever is ever mentioned
    # The same bins count live values the way the reference was counted.
    assert heart.counts([h for r in records for h in [r["vital_signs"]["heart_rate"]]]).sum() == 500


def test_ties_merge_bins_instead_of_repeating_edges() -> None:
    spec = FeatureSpec(model_name="m", target="t", labels=["a", "b"],
                       features=[NumericFeature(name="x", mean=0, std=1)])
    profile = build_reference_profile(spec, [{"x": v} for v in [1, 1, 1, 1, 1, 1, 1, 2, 3, 3]])
    edges = profile.feature("x").bin_edges  # type: ignore[union-attr]
    assert edges == sorted(set(edges))
    assert sum(profile.feature("x").proportions) == pytest.approx(1.0)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"bin_edges": [2.0, 1.0], "proportions": [0.2, 0.3, 0.5]}, "strictly increasing"),
    ({"bin_edges": [1.0], "proportions": [0.5, 0.4]}, "sum to 1"),
    ({"bin_edges": [1.0], "proportions": [1.0]}, "need 2 proportions"),
])
def test_inconsistent_profiles_are_rejected(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        NumericProfile(name="x", **kwargs)


def test_files_round_trip(tmp_path: Path) -> None:
    spec = make_spec()
    profile = ReferenceProfile(samples=3, features=[
        CategoricalProfile(type="categorical", name="sex", categories=["female", "male"], proportions=[0.5, 0.5]),
    ])
    write_json(spec, tmp_path / "feature_spec.json")
    write_json(profile, tmp_path / "reference_profile.json")
    assert load_feature_spec(tmp_path) == spec
    assert load_reference_profile(tmp_path / "reference_profile.json") == profile
    assert json.loads((tmp_path / "feature_spec.json").read_text())["features"][0]["type"] == "numeric"


def test_importing_the_formats_does_not_import_torch() -> None:
    """The operator reads these files too and must not pay for torch (nor mlflow)."""
    code = ("import sys, medserve_contract.modelspec; "
            "print(sorted(m for m in ('torch', 'mlflow', 'kserve') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
