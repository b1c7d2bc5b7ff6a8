"""The A/B test statistics: fixed-seed checks of the guarantees issue 5 asks for, and the edge cases.

The Monte Carlo tests go through `abtestsim.simulate`, which looks at every run exactly as the
reconciler does (`sequential.evaluate_batch`). Seeds are fixed, so the results are deterministic;
run counts are chosen so that each goal holds with a margin of several Monte Carlo standard errors,
and the A/A check additionally bounds the true false-positive rate with a binomial upper bound.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from medserve_operator import api
from medserve_operator.controllers.abtest.status import evaluation_status, running_state
from medserve_operator.stats import abtestsim, sequential
from medserve_operator.stats.sequential import ArmData, Design, RunningState, evaluate


def wilson_upper(successes: int, n: int, z: float = 2.326) -> float:
    """One-sided 99% Wilson upper bound of a binomial proportion (a negative z gives the lower bound)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    return centre + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)


def wilson_lower(successes: int, n: int) -> float:
    return wilson_upper(successes, n, z=-2.326)


def run(design: Design, p: float, q: float, runs: int, *, method: str = "sequential", seed: int = 1,
        peek: int = 100) -> abtestsim.Simulation:
    return abtestsim.simulate(design, control_rate=p, treatment_rate=q, peek_every=peek, runs=runs,
                              method=method, seed=seed)


def rate(sim: abtestsim.Simulation, *decisions: str) -> float:
    codes = [sequential.DECISIONS.index(d) for d in decisions]
    return float(np.isin(sim.decision, codes).mean())


# --- issue 5, part 2: the goals --------------------------------------------------------------------------


def test_aa_sequential_false_conclusions_at_most_alpha() -> None:
    sim = run(Design(max_samples=10_000), 0.8, 0.8, runs=10_000)
    false = int(np.isin(sim.decision, [sequential.TREATMENT_BETTER, sequential.CONTROL_BETTER]).sum())
    assert false / 10_000 <= 0.05
    # Not just lucky: even the 99% upper bound on the true rate stays close to alpha.
    assert wilson_upper(false, 10_000) <= 0.055


def test_aa_naive_peeking_is_inflated_in_the_same_harness() -> None:
    sim = run(Design(max_samples=10_000), 0.8, 0.8, runs=2_000, method="naive")
    assert rate(sim, "TreatmentBetter", "ControlBetter") >= 0.25


def test_power_at_the_fixed_horizon_sample_size() -> None:
    # 6,029/arm gives a fixed-horizon z-test 80% power for 0.80 vs 0.82; plain mSPRT gets ~51%.
    sim = run(Design(max_samples=6_029), 0.80, 0.82, runs=10_000)
    wins = int((sim.decision == sequential.TREATMENT_BETTER).sum())
    assert wilson_lower(wins, 10_000) >= 0.75


def test_plain_truncated_msprt_is_underpowered_which_is_why_alpha_is_split() -> None:
    sim = run(Design(max_samples=6_029, boundary_share=0.999), 0.80, 0.82, runs=2_000)
    assert rate(sim, "TreatmentBetter") < 0.6


def test_twice_the_effect_stops_early() -> None:
    sim = run(Design(max_samples=6_029), 0.80, 0.84, runs=2_000)
    assert np.median(sim.stop) <= 0.4 * 6_029
    assert rate(sim, "TreatmentBetter") >= 0.99


def test_a_worse_treatment_is_found_worse() -> None:
    sim = run(Design(max_samples=6_029), 0.84, 0.80, runs=1_000)
    assert rate(sim, "ControlBetter") >= 0.95
    assert rate(sim, "TreatmentBetter") == 0.0


# --- non-inferiority -------------------------------------------------------------------------------------


def test_non_inferiority_is_shown_for_an_equal_treatment() -> None:
    design = Design(hypothesis="non-inferiority", margin=0.02, max_samples=10_000)
    sim = run(design, 0.80, 0.80, runs=1_000)
    assert rate(sim, "NonInferior") >= 0.85


def test_non_inferiority_is_rarely_claimed_for_a_treatment_worse_by_the_margin() -> None:
    design = Design(hypothesis="non-inferiority", margin=0.02, max_samples=10_000)
    sim = run(design, 0.80, 0.78, runs=4_000)
    claimed = int((sim.decision == sequential.NON_INFERIOR).sum())
    # One-sided test of the margin at alpha/2 (the lower bound of a two-sided interval).
    assert wilson_upper(claimed, 4_000) <= 0.05


def test_non_inferiority_single_look_decisions() -> None:
    design = Design(hypothesis="non-inferiority", margin=0.02, max_samples=50_000)
    same = evaluate(design, ArmData.proportion(16_000, 20_000), ArmData.proportion(16_000, 20_000))
    assert (same.decision, same.concluded) == ("NonInferior", True)
    assert same.confidence_sequence[0] > -0.02
    worse = evaluate(design, ArmData.proportion(16_000, 20_000), ArmData.proportion(14_000, 20_000))
    assert (worse.decision, worse.concluded) == ("ControlBetter", True)
    # The same "equal" data never claims superiority.
    sup = evaluate(Design(max_samples=50_000), ArmData.proportion(16_000, 20_000), ArmData.proportion(16_000, 20_000))
    assert sup.decision in ("NoDifference", "Inconclusive")
    # At the final look without evidence: concluded, Inconclusive.
    short = evaluate(design, ArmData.proportion(80, 100), ArmData.proportion(80, 100), final=True)
    assert (short.decision, short.concluded) == ("Inconclusive", True)


# --- means -----------------------------------------------------------------------------------------------


def mean_arm(rng: np.random.Generator, mu: float, sd: float, n: int, runs: int) -> ArmData:
    x = rng.normal(mu, sd, (runs, n))
    return ArmData.mean(n, x.sum(axis=1), (x * x).sum(axis=1))


def test_means_aa_false_positive_rate_and_power() -> None:
    rng = np.random.default_rng(3)
    design = Design(kind="mean", mde=0.1, max_samples=2_000)
    aa = sequential.evaluate_batch(design, mean_arm(rng, 1.0, 1.0, 2_000, 2_000), mean_arm(rng, 1.0, 1.0, 2_000, 2_000))
    false = int(np.isin(aa.decision, [sequential.TREATMENT_BETTER, sequential.CONTROL_BETTER]).sum())
    assert wilson_upper(false, 2_000) <= 0.065 and false / 2_000 <= 0.05
    ab = sequential.evaluate_batch(design, mean_arm(rng, 1.0, 1.0, 2_000, 500), mean_arm(rng, 1.15, 1.0, 2_000, 500))
    assert float((ab.decision == sequential.TREATMENT_BETTER).mean()) >= 0.9


def test_means_lower_is_better_reports_in_the_metric_direction() -> None:
    # Latency: the treatment is 20 ms faster.
    design = Design(kind="mean", mde=0.005, higher_is_better=False, max_samples=100_000)
    rng = np.random.default_rng(5)
    control, treatment = rng.normal(0.120, 0.03, 5_000), rng.normal(0.100, 0.03, 5_000)
    ev = evaluate(design, ArmData.mean(5_000, control.sum(), (control**2).sum()),
                  ArmData.mean(5_000, treatment.sum(), (treatment**2).sum()))
    assert ev.decision == "TreatmentBetter" and ev.concluded
    assert ev.difference == pytest.approx(-0.02, abs=0.003)
    low, high = ev.confidence_sequence
    assert low < ev.difference < high < 0


# --- single looks: edge cases and the final look ---------------------------------------------------------


def test_zero_samples_is_inconclusive_and_status_is_json_safe() -> None:
    ev = evaluate(Design(), ArmData.proportion(0, 0), ArmData.proportion(0, 0))
    assert (ev.decision, ev.concluded, ev.always_valid_p_value) == ("Inconclusive", False, 1.0)
    status = evaluation_status(ev)
    json.dumps(status, allow_nan=False)
    assert status["samples"] == {"control": 0, "treatment": 0}
    assert status["estimates"]["confidenceSequence"] == [-1.0, 1.0]
    means = evaluate(Design(kind="mean"), ArmData.mean(0, 0, 0), ArmData.mean(1, 2.0, 4.0))
    assert means.decision == "Inconclusive"
    json.dumps(evaluation_status(means), allow_nan=False)
    assert "confidenceSequence" not in evaluation_status(means)["estimates"]


def test_all_successes_has_a_finite_variance() -> None:
    ev = evaluate(Design(), ArmData.proportion(5_000, 5_000), ArmData.proportion(5_000, 5_000))
    assert ev.difference == 0.0 and all(math.isfinite(b) for b in ev.confidence_sequence)
    assert ev.decision == "NoDifference"
    better = evaluate(Design(), ArmData.proportion(4_000, 5_000), ArmData.proportion(5_000, 5_000))
    assert better.decision == "TreatmentBetter"


def test_below_min_samples_is_inconclusive_whatever_the_data() -> None:
    design = Design(min_samples=500)
    ev = evaluate(design, ArmData.proportion(100, 400), ArmData.proportion(400, 400))
    assert (ev.decision, ev.concluded, ev.always_valid_p_value) == ("Inconclusive", False, 1.0)
    # One arm short is enough to wait.
    ev = evaluate(design, ArmData.proportion(100, 1_000), ArmData.proportion(400, 400))
    assert ev.decision == "Inconclusive" and not ev.concluded


def test_max_samples_triggers_the_final_look() -> None:
    design = Design(max_samples=6_029)
    # z is about 2.3: beyond the final look's 2.05, well inside the mixture boundary (~3.6).
    control, treatment = (0.80, 0.8164)
    before = evaluate(design, ArmData.proportion(round(control * 6_000), 6_000),
                      ArmData.proportion(round(treatment * 6_000), 6_000))
    assert (before.decision, before.concluded) == ("Inconclusive", False)
    at_max = evaluate(design, ArmData.proportion(round(control * 6_029), 6_029),
                      ArmData.proportion(round(treatment * 6_029), 6_029), previous=before.state)
    assert (at_max.decision, at_max.concluded) == ("TreatmentBetter", True)
    assert at_max.always_valid_p_value <= design.alpha < before.always_valid_p_value
    assert at_max.confidence_sequence[0] > 0
    # A small, non-significant difference at max samples: concluded, no difference.
    flat = evaluate(design, ArmData.proportion(4_823, 6_029), ArmData.proportion(4_880, 6_029))
    assert (flat.decision, flat.concluded) == ("NoDifference", True)


def test_max_duration_ends_an_underpowered_test_inconclusive() -> None:
    design = Design(max_samples=20_000)
    ev = evaluate(design, ArmData.proportion(800, 1_000), ArmData.proportion(810, 1_000), final=True)
    assert (ev.decision, ev.concluded) == ("Inconclusive", True)


def test_equivalence_within_the_mde_concludes_no_difference_early() -> None:
    ev = evaluate(Design(max_samples=1_000_000), ArmData.proportion(80_000, 100_000),
                  ArmData.proportion(80_050, 100_000))
    assert (ev.decision, ev.concluded) == ("NoDifference", True)
    assert -0.02 < ev.confidence_sequence[0] < ev.confidence_sequence[1] < 0.02


def test_running_state_round_trips_through_status_and_never_loosens() -> None:
    design = Design(max_samples=100_000)
    rng = np.random.default_rng(11)
    state: RunningState | None = None
    xc = xt = n = 0
    p_values, widths = [], []
    for _ in range(30):
        n += 200
        xc += int(rng.binomial(200, 0.8))
        xt += int(rng.binomial(200, 0.8))
        ev = evaluate(design, ArmData.proportion(xc, n), ArmData.proportion(xt, n), previous=state)
        state = running_state(json.loads(json.dumps(evaluation_status(ev))))
        assert state == ev.state
        p_values.append(ev.always_valid_p_value)
        widths.append(ev.confidence_sequence[1] - ev.confidence_sequence[0])
    assert all(a >= b for a, b in itertools.pairwise(p_values))
    assert all(a >= b for a, b in itertools.pairwise(widths))


def test_batch_and_single_look_agree() -> None:
    design = Design(max_samples=5_000)
    xc, xt, n = np.array([400, 790, 3_000]), np.array([420, 900, 3_150]), np.array([500, 1_000, 5_000])
    batch = sequential.evaluate_batch(design, ArmData.proportion(xc, n), ArmData.proportion(xt, n))
    for i in range(3):
        one = evaluate(design, ArmData.proportion(xc[i], n[i]), ArmData.proportion(xt[i], n[i]))
        assert one.decision == batch.decisions()[i]
        assert one.always_valid_p_value == pytest.approx(batch.p_value[i])
        assert one.confidence_sequence == pytest.approx((batch.low[i], batch.high[i]))


def test_a_concluded_run_keeps_its_decision() -> None:
    design = Design(max_samples=100_000)
    first = sequential.evaluate_batch(design, ArmData.proportion(500, 1_000), ArmData.proportion(900, 1_000))
    assert first.decisions() == ["TreatmentBetter"]
    later = sequential.evaluate_batch(design, ArmData.proportion(1_800, 2_000), ArmData.proportion(1_000, 2_000),
                                      previous=first)
    assert later.decisions() == ["TreatmentBetter"] and later.p_value == first.p_value


# --- inputs ----------------------------------------------------------------------------------------------


def test_design_from_the_api_spec() -> None:
    spec = api.parse_spec(api.ABTestSpec, {
        "control": {"modelDeployment": "a"}, "treatment": {"modelDeployment": "b"},
        "hypothesis": "non-inferiority", "nonInferiorityMargin": 0.01,
        "metric": {"kind": "mean", "higherIsBetter": False},
        "statistics": {"alpha": 0.01, "minimumDetectableEffect": 0.05, "minSamplesPerArm": 50,
                       "maxSamplesPerArm": 900},
    })
    assert isinstance(spec, api.ABTestSpec)
    assert Design.from_spec(spec) == Design(kind="mean", hypothesis="non-inferiority", margin=0.01, alpha=0.01,
                                            mde=0.05, min_samples=50, max_samples=900, higher_is_better=False)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"alpha": 0.0}, "alpha"),
    ({"mde": -1.0}, "minimumDetectableEffect"),
    ({"min_samples": 10, "max_samples": 5}, "maxSamplesPerArm"),
    ({"margin": -0.1}, "nonInferiorityMargin"),
])
def test_bad_designs_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Design(**kwargs)  # type: ignore[arg-type]


def test_bad_arm_data_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"control\.successes"):
        ArmData.proportion(11, 10, arm="control")
    with pytest.raises(ValueError, match=r"treatment\.trials"):
        ArmData.proportion(1, -1, arm="treatment")
    with pytest.raises(ValueError, match=r"treatment\.sum_of_squares"):
        ArmData.mean(10, 100.0, 1.0, arm="treatment")


# --- the command -----------------------------------------------------------------------------------------


def test_cli_prints_the_summary_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--control-rate", "0.8", "--treatment-rate", "0.84", "--peek-every", "100",
            "--max-samples", "6029", "--runs", "500", "--method", "sequential", "--seed", "2", "--json"]
    assert abtestsim.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == 500 and out["method"] == "sequential"
    assert {"conclusion_rate", "median_stop", "mean_stop", "power", "seconds"} <= out.keys()
    assert out["median_stop"] <= 0.4 * 6029


def test_cli_rejects_bad_arguments_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert abtestsim.main(["simulate", "--control-rate", "1.5", "--treatment-rate", "0.8", "--runs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--control-rate" in err and "--runs" in err


def test_the_statistics_import_nothing_heavy() -> None:
    code = ("import sys, medserve_operator.stats.sequential, medserve_operator.stats.abtestsim; "
            "print(sorted(m for m in ('kopf', 'httpx', 'kubernetes', 'torch', 'mlflow', 'scipy', 'pydantic') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
