"""Train the example triage model: clinical_data (age, sex, symptoms, vital signs) -> primary_diagnosis.

The data is synthetic, generated with a seed from a small generative model of an emergency
department's triage population: a diagnosis is drawn first, then the patient's age, sex, symptoms
and vital signs depend on it, with enough overlap that the classes are not trivially separable.
`--shift S` moves the population (older patients, more sepsis and pneumonia, faster hearts, lower
oxygen saturation) while keeping how each diagnosis presents, which is what drift looks like to the
operator: S=0 is the reference population, S=1 a clearly shifted one.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python examples/training/train.py --alias champion
    python examples/training/train.py --output-dir /tmp/triage      # files only, no MLflow

See README.md beside this file for the environment a RetrainPolicy Job passes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import trainlib
from medserve_contract.modelspec import (
    CategoricalFeature,
    FeatureSpec,
    MultiHotFeature,
    NumericFeature,
    build_reference_profile,
)

MODEL_NAME = "triage-classifier"
LABELS = ["upper_respiratory_infection", "pneumonia", "sepsis", "acute_coronary_syndrome"]
SEXES = ["female", "male"]
SYMPTOMS = ["fever", "cough", "sore_throat", "shortness_of_breath", "chest_pain", "fatigue", "confusion",
            "chills", "headache", "nausea", "sweating", "dizziness"]

# How often each diagnosis arrives in the reference population, and how --shift tilts it (log-odds).
PRIORS = np.array([0.40, 0.25, 0.18, 0.17])
PRIOR_SHIFT = np.array([-0.6, 0.4, 0.8, 0.3])

# Per diagnosis (rows in LABELS order): mean and spread of age and each vital sign.
AGE = np.array([[38, 16], [58, 17], [66, 15], [63, 12]], dtype=float)
P_MALE = np.array([0.45, 0.50, 0.52, 0.64])
VITALS: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float, int]] = {
    # name: (means per class, sd per class, minimum, maximum, decimals)
    "heart_rate": (np.array([86.0, 102, 118, 96]), np.array([11.0, 13, 15, 18]), 35, 200, 0),
    "systolic_bp": (np.array([122.0, 120, 96, 146]), np.array([12.0, 15, 16, 22]), 60, 230, 0),
    "temperature": (np.array([37.7, 38.4, 38.7, 36.9]), np.array([0.6, 0.6, 1.0, 0.4]), 34.0, 42.0, 1),
    "respiratory_rate": (np.array([16.0, 24, 25, 20]), np.array([2.5, 4, 4.5, 3]), 8, 50, 0),
    "oxygen_saturation": (np.array([97.5, 92.5, 93.5, 95.5]), np.array([1.2, 2.8, 3.0, 2.0]), 70, 100, 0),
}
# --shift S adds S times this to each vital sign (and AGE_SHIFT years): a sicker, older population.
VITAL_SHIFT = {"heart_rate": 6.0, "systolic_bp": -4.0, "temperature": 0.25, "respiratory_rate": 1.5,
               "oxygen_saturation": -1.2}
AGE_SHIFT = 9.0

# Probability of each symptom (columns in SYMPTOMS order) given the diagnosis (rows in LABELS order).
SYMPTOM_P = np.array([
    # fev  cough throat sob  chest fatig conf chill head naus sweat dizzy
    [0.45, 0.75, 0.65, 0.10, 0.05, 0.50, 0.01, 0.25, 0.45, 0.10, 0.05, 0.05],  # upper respiratory
    [0.80, 0.90, 0.15, 0.65, 0.25, 0.55, 0.08, 0.45, 0.20, 0.10, 0.15, 0.08],  # pneumonia
    [0.70, 0.25, 0.05, 0.35, 0.08, 0.65, 0.45, 0.60, 0.15, 0.30, 0.30, 0.35],  # sepsis
    [0.05, 0.10, 0.03, 0.50, 0.85, 0.35, 0.05, 0.05, 0.10, 0.40, 0.60, 0.30],  # acute coronary syndrome
])

RECOMMENDED_ACTIONS = {
    "upper_respiratory_infection": ["Supportive care and fluids", "Return if breathing worsens"],
    "pneumonia": ["Chest X-ray", "Blood cultures before antibiotics", "Start empiric antibiotics per protocol"],
    "sepsis": ["Activate the sepsis pathway", "Lactate and blood cultures", "IV fluids and antibiotics within 1 hour"],
    "acute_coronary_syndrome": ["12-lead ECG within 10 minutes", "High-sensitivity troponin",
                                "Aspirin unless contraindicated"],
}


def generate(n: int, *, seed: int, shift: float = 0.0) -> tuple[list[dict[str, Any]], npt.NDArray[np.int64]]:
    """`n` clinical_data records and their diagnosis indices (into LABELS)."""
    rng = np.random.default_rng(seed)
    logits = np.log(PRIORS) + shift * PRIOR_SHIFT
    priors = np.exp(logits) / np.exp(logits).sum()
    y = rng.choice(len(LABELS), size=n, p=priors).astype(np.int64)
    age = np.clip(rng.normal(AGE[y, 0] + AGE_SHIFT * shift, AGE[y, 1]), 18, 95).round()
    male = rng.random(n) < P_MALE[y]
    symptoms = rng.random((n, len(SYMPTOMS))) < SYMPTOM_P[y]
    vitals: dict[str, npt.NDArray[np.float64]] = {}
    for name, (mean, sd, lo, hi, decimals) in VITALS.items():
        raw = rng.normal(mean[y] + VITAL_SHIFT[name] * shift, sd[y])
        vitals[name] = np.clip(raw, lo, hi).round(decimals)
    # Diastolic pressure tracks systolic; drawing it separately would make implausible pairs.
    vitals["diastolic_bp"] = np.clip(vitals["systolic_bp"] * 0.62 + rng.normal(4, 6, n), 35, 140).round()
    records = [
        {
            "age": int(age[i]),
            "sex": SEXES[int(male[i])],
            "symptoms": [s for s, present in zip(SYMPTOMS, symptoms[i], strict=True) if present],
            "vital_signs": {
                "heart_rate": int(vitals["heart_rate"][i]),
                "systolic_bp": int(vitals["systolic_bp"][i]),
                "diastolic_bp": int(vitals["diastolic_bp"][i]),
                "temperature": float(vitals["temperature"][i]),
                "respiratory_rate": int(vitals["respiratory_rate"][i]),
                "oxygen_saturation": int(vitals["oxygen_saturation"][i]),
            },
        }
        for i in range(n)
    ]
    return records, y


def feature_spec(records: Sequence[dict[str, Any]], *, model_name: str) -> FeatureSpec:
    """The spec for clinical_data, with each numeric feature's mean and std taken from `records`."""
    numeric = [
        ("age", [], "Age", "years", 0.0, 120.0),
        ("heart_rate", ["vital_signs", "heart_rate"], "Heart rate", "bpm", 20.0, 250.0),
        ("systolic_bp", ["vital_signs", "systolic_bp"], "Systolic blood pressure", "mmHg", 40.0, 280.0),
        ("diastolic_bp", ["vital_signs", "diastolic_bp"], "Diastolic blood pressure", "mmHg", 20.0, 180.0),
        ("temperature", ["vital_signs", "temperature"], "Body temperature", "°C", 30.0, 44.0),
        ("respiratory_rate", ["vital_signs", "respiratory_rate"], "Respiratory rate", "breaths/min", 4.0, 70.0),
        ("oxygen_saturation", ["vital_signs", "oxygen_saturation"], "Peripheral oxygen saturation (SpO2)", "%",
         50.0, 100.0),
    ]

    def column(path: list[str], name: str) -> npt.NDArray[np.float64]:
        values = []
        for r in records:
            v: Any = r
            for key in path or [name]:
                v = v[key]
            values.append(float(v))
        return np.asarray(values)

    numeric_features = []
    for name, path, description, unit, lo, hi in numeric:
        values = column(path, name)
        numeric_features.append(NumericFeature(name=name, path=path, description=description, unit=unit,
                                               mean=float(values.mean()), std=float(values.std()) or 1.0,
                                               minimum=lo, maximum=hi))
    return FeatureSpec(
        model_name=model_name,
        target="primary_diagnosis",
        labels=LABELS,
        features=[
            numeric_features[0],
            CategoricalFeature(name="sex", description="Sex recorded at triage", vocabulary=SEXES),
            MultiHotFeature(name="symptoms", description="Presenting symptoms", vocabulary=SYMPTOMS,
                            required=False),
            *numeric_features[1:],
        ],
        recommended_actions=RECOMMENDED_ACTIONS,
    )


def main(argv: list[str] | None = None) -> int:
    trainlib.configure_logging()
    p = trainlib.parser("Train the example triage model and register it in MLflow.", default_model_name=MODEL_NAME)
    p.add_argument("--samples", type=int, default=4000, help="records to generate (default: %(default)s)")
    p.add_argument("--shift", type=float, default=0.0,
                   help="population shift: 0 = reference population, 1 = clearly drifted (default: 0)")
    p.add_argument("--emit-records", type=int, default=0, metavar="N",
                   help="print N records of the (shifted) population as a JSON list and exit: traffic for demos")
    p.add_argument("--with-labels", action="store_true",
                   help="with --emit-records: print {clinical_data, label} pairs, the label being the ground truth")
    args = p.parse_args(argv)
    if args.emit_records > 0:
        records, y = generate(args.emit_records, seed=args.seed, shift=args.shift)
        if args.with_labels:
            print(json.dumps([{"clinical_data": r, "label": LABELS[int(k)]} for r, k in zip(records, y, strict=True)]))
        else:
            print(json.dumps(records))
        return 0
    if args.samples < 50:
        p.error("--samples must be at least 50")

    records, y = generate(args.samples, seed=args.seed, shift=args.shift)
    train_idx, test_idx = trainlib.split(len(records), seed=args.seed)
    train_records = [records[i] for i in train_idx]
    spec = feature_spec(train_records, model_name=args.model_name)
    profile = build_reference_profile(spec, train_records)
    x = spec.encode_batch(records)
    model, result = trainlib.fit(x, y, n_classes=len(LABELS), seed=args.seed, epochs=args.epochs,
                                 train_idx=train_idx, test_idx=test_idx)
    params = {"samples": args.samples, "seed": args.seed, "shift": args.shift, "epochs": args.epochs,
              "hidden": "64,32", "input_dim": spec.input_dim, "data": "synthetic triage population"}
    return trainlib.run(args, spec=spec, profile=profile, model=model, result=result, params=params,
                        description="Emergency triage: primary diagnosis from age, sex, symptoms and vital signs "
                                    "(synthetic example model).")


if __name__ == "__main__":
    sys.exit(main())
