"""Drift detection's statistical core (medserve_operator.stats.drift) and `medserve drift simulate`.

Bin counts are rebuilt from what the real runtime metrics (medserve_runtime.metrics) expose, scraped
as Prometheus text and parsed with prometheus_client's parser, and compared with modelspec.bin_counts
on the raw values; the statistics are checked against independent scipy/numpy computations; the
simulate goals are checked with fixed seeds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from medserve_contract.modelspec import CategoricalProfile, NumericProfile, ReferenceProfile, bin_counts
from medserve_operator.stats import drift, driftsim
from medserve_runtime.metrics import RuntimeMetrics
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats
from scipy.spatial.distance import jensenshannon

EDGES = [-1.0, 0.0, 0.5, 2.0, 7.25]
UNIFORM = np.full(10, 0.1)


# --- counts from Prometheus -------------------------------------------------------------------------


def _profile() -> ReferenceProfile:
    return ReferenceProfile(samples=1000, features=[
        NumericProfile(name="x", bin_edges=EDGES, proportions=[1 / 6] * 5 + [1 - 5 / 6])])


def _scrape(metrics: RuntimeMetrics) -> dict[str, float]:
    """The x histogram's cumulative buckets by `le`, from the runtime's /metrics text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == "medserve_feature_value_bucket" and s.labels["feature"] == "x":
                out[s.labels["le"]] = s.value
    return out


def _runtime() -> RuntimeMetrics:
    metrics = RuntimeMetrics("m")
    metrics.register_version("1", _profile(), ["a", "b"])
    return metrics


def test_window_increase_handles_resets_like_prometheus() -> None:
    samples = [(3, "2"), (0, "0"), (1, "5"), (2, "9"), (4, "6")]  # unsorted, string values as the API gives
    # Prometheus: last - first + the value before each drop = 6 - 0 + 9.
    assert drift.window_increase(samples) == 15.0
    assert drift.window_increase([]) == 0.0
    assert drift.window_increase([(0.0, 7.0)]) == 0.0
    assert drift.window_increase([(0, 1), (1, 4), (2, 6)], reset_at={2.0}) == 9.0
    with pytest.raises(drift.DriftDataError, match="non-negative"):
        drift.window_increase([(0, 1), (1, -2)])


def test_rebuilt_counts_equal_bin_counts_across_a_restart() -> None:
    rng = np.random.default_rng(3)
    # Bins (0, 0.5] and (2, 7.25] stay empty: values avoid them.
    pool = np.concatenate([rng.normal(-2, 0.5, 50), [-1.0, -0.5, 0.0, 2.0], rng.uniform(8, 9, 30)])
    before, window = rng.choice(pool, 40), [rng.choice(pool, 25) for _ in range(4)]
    samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
    metrics = _runtime()
    metrics.features.observe("1", [{"x": float(v)} for v in before])  # before the window: not counted
    for t, chunk in enumerate(window):
        if t == 2:  # the process restarts just after a scrape: every series starts again from zero
            metrics = _runtime()
        metrics.features.observe("1", [{"x": float(v)} for v in chunk])
        for le, value in _scrape(metrics).items():
            samples[le].append((float(t), value))
    expected = bin_counts(EDGES, np.concatenate(window[1:]))
    assert expected[2] == 0 and expected[4] == 0
    assert drift.histogram_window_counts(EDGES, samples).tolist() == expected.tolist()
    per_series = {le: drift.window_increase(s) for le, s in samples.items()}
    assert drift.counts_from_cumulative(EDGES, per_series).tolist() == expected.tolist()


def test_reset_hidden_in_one_bucket_is_found_on_inf() -> None:
    # le=0 goes 4 -> 6 across a restart (no visible drop) while +Inf drops 10 -> 8: 6 new, not 2.
    samples = {"0.0": [(0.0, 1.0), (1.0, 4.0), (2.0, 6.0)], "+Inf": [(0.0, 2.0), (1.0, 10.0), (2.0, 8.0)]}
    assert drift.histogram_window_counts([0.0], samples).tolist() == [9.0, 7.0]


def test_counts_from_cumulative_validates() -> None:
    assert drift.counts_from_cumulative(EDGES, {}).tolist() == [0.0] * 6  # a missing series
    full = {"-1.0": 1.0, "0.0": 3.0, "0.5": 3.0, "2.0": 7.5, "7.25": 8.0, "+Inf": 10.0}
    assert drift.counts_from_cumulative(EDGES, full).tolist() == [1.0, 2.0, 0.0, 4.5, 0.5, 2.0]
    by_float = {float(k): v for k, v in full.items()}
    assert drift.counts_from_cumulative(EDGES, by_float).tolist() == [1.0, 2.0, 0.0, 4.5, 0.5, 2.0]
    with pytest.raises(drift.DriftDataError, match=r"le=0\.5 holds 2, less than le=0\.0 with 3"):
        drift.counts_from_cumulative(EDGES, {**full, "0.5": 2.0})
    with pytest.raises(drift.DriftDataError, match=r"missing for le=2\.0, \+Inf"):
        drift.counts_from_cumulative(EDGES, {k: v for k, v in full.items() if k not in {"2.0", "+Inf"}})
    with pytest.raises(drift.DriftDataError, match=r"le=3\.0: not one of the profile's bin edges"):
        drift.counts_from_cumulative(EDGES, {**full, "3.0": 1.0})
    with pytest.raises(drift.DriftDataError, match="le='abc': not a number"):
        drift.counts_from_cumulative(EDGES, {**full, "abc": 1.0})


def test_category_counts() -> None:
    assert drift.category_counts(["a", "b", "c"], {"c": 2.0, "a": 1.0}).tolist() == [1.0, 0.0, 2.0]
    with pytest.raises(drift.DriftDataError, match=r"\['z'\] are not in the profile"):
        drift.category_counts(["a"], {"z": 1.0})


# --- statistics -------------------------------------------------------------------------------------


def _window(n: int, seed: int, psi: float = 0.05) -> np.ndarray[Any, np.dtype[np.int64]]:
    q = driftsim.shifted_distribution(UNIFORM, psi)
    return np.random.default_rng(seed).multinomial(n, q, size=3)


@pytest.mark.parametrize("m", [None, 5000])
def test_psi_matches_a_plain_loop(m: int | None) -> None:
    counts = _window(400, 1)
    counts[0, 3] = 0  # an empty bin: the pseudocount keeps ln(q/p) finite
    score, p_value = drift.psi(counts, UNIFORM, m)
    for row, s, pv in zip(counts, score, p_value, strict=True):
        n, k = int(row.sum()), len(row)
        q = [(c + 0.5) / (n + 0.5 * k) for c in row]
        expected = sum((qi - 0.1) * math.log(qi / 0.1) for qi in q)
        assert s == pytest.approx(expected, rel=1e-12)
        assert pv == pytest.approx(stats.chi2.sf(expected / (1 / n + (1 / m if m else 0)), k - 1), rel=1e-9)


def test_chi2_matches_scipy_chisquare() -> None:
    counts = _window(500, 2)
    reference = np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum()
    score, p_value = drift.chi2(counts, reference)
    for row, s, pv in zip(counts, score, p_value, strict=True):
        expected = stats.chisquare(row, row.sum() * reference)
        assert s == pytest.approx(expected.statistic / row.sum(), rel=1e-12)
        assert pv == pytest.approx(expected.pvalue, rel=1e-9)
    _, with_m = drift.chi2(counts, reference, 500)  # a reference as noisy as the window halves X²
    assert with_m == pytest.approx(stats.chi2.sf(score * 500 / 2, 9), rel=1e-9)


def test_js_matches_scipy_jensenshannon() -> None:
    counts = _window(300, 3)
    score, p_value = drift.js(counts, UNIFORM)
    for row, s, pv in zip(counts, score, p_value, strict=True):
        expected = jensenshannon(row / row.sum(), UNIFORM, base=2)
        assert s == pytest.approx(expected, rel=1e-12)
        assert pv == pytest.approx(stats.chi2.sf(8 * math.log(2) * expected**2 * row.sum(), 9), rel=1e-9)


def test_ks_equals_two_sample_ks_when_binning_loses_nothing() -> None:
    # Integer data with edges between the integers: the binned CDFs are the empirical CDFs.
    rng = np.random.default_rng(4)
    reference_values = rng.integers(0, 10, 3000)
    window_values = rng.integers(0, 10, 700) + (rng.random(700) < 0.1)
    edges = [i + 0.5 for i in range(9)]
    proportions = bin_counts(edges, reference_values.astype(float)) / 3000
    score, p_value = drift.ks(bin_counts(edges, window_values.astype(float)), proportions, 3000)
    expected = stats.ks_2samp(reference_values, window_values, method="asymp")
    assert float(score) == pytest.approx(expected.statistic, rel=1e-12)
    assert float(p_value) == pytest.approx(expected.pvalue, rel=1e-9)


@pytest.mark.parametrize("statistic", drift.STATISTICS)
def test_p_values_are_calibrated_under_no_drift(statistic: str) -> None:
    counts = np.random.default_rng(5).multinomial(1000, UNIFORM, size=20_000)
    _, p_value = drift.STATISTIC_FUNCTIONS[statistic](counts, UNIFORM)
    rate = float((p_value < 0.01).mean())
    assert rate <= 0.0125  # binned KS is conservative; the others sit at the nominal 1%
    if statistic != "ks":
        assert rate >= 0.0075


def test_empty_window_gives_nan_not_an_error() -> None:
    for compute in drift.STATISTIC_FUNCTIONS.values():
        score, p_value = compute(np.zeros((1, 10)), UNIFORM)
        assert np.isnan(score[0]) and np.isnan(p_value[0])


# --- the alarm rule ---------------------------------------------------------------------------------


def test_adjusted_p_values() -> None:
    p = np.array([[0.01, 0.0001, 0.04, np.nan, 0.03], [0.5, 0.2, 0.001, 0.9, 0.0004]])
    bonferroni = drift.adjust_p_values(p, "bonferroni")
    np.testing.assert_allclose(bonferroni, np.minimum(np.nan_to_num(p, nan=1.0) * 5, 1), rtol=1e-12)
    bh = drift.adjust_p_values(p, "bh")
    for row, adjusted in zip(p, bh, strict=True):
        expected = stats.false_discovery_control(np.nan_to_num(row, nan=1.0), method="bh")
        np.testing.assert_allclose(adjusted, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="correction: must be one of bonferroni, bh"):
        drift.adjust_p_values(p, "holm")  # type: ignore[arg-type]


def _features() -> list[NumericProfile | CategoricalProfile]:
    return [NumericProfile(name=f"f{i}", bin_edges=[float(e) for e in range(9)], proportions=UNIFORM.tolist())
            for i in range(2)] + [CategoricalProfile(type="categorical", name="sex", categories=["f", "m"],
                                                     proportions=[0.5, 0.5])]


def test_evaluate_flags_only_the_drifted_feature() -> None:
    rng = np.random.default_rng(6)
    counts = {"f0": rng.multinomial(1000, UNIFORM), "f1": rng.multinomial(1000, driftsim.shifted_distribution(
        UNIFORM, 0.3)), "sex": np.array([480, 520]), "ignored": np.array([1])}
    result = drift.evaluate(_features(), counts)
    assert (result.state, result.drifted_features, result.samples) == ("Drifted", ["f1"], 1000)
    scores = [f.score for f in result.features]
    adjusted = [f.adjusted_p_value for f in result.features]
    assert result.score == max(s for s in scores if s is not None)
    assert result.p_value == min(p for p in adjusted if p is not None)
    p_values = [f.p_value for f in result.features]
    assert adjusted == pytest.approx([min(1.0, 3 * p) for p in p_values if p is not None])
    assert "f1" in result.message
    calm = drift.evaluate(_features(), {**counts, "f1": rng.multinomial(1000, UNIFORM)})
    assert (calm.state, calm.drifted_features) == ("NoDrift", [])


def test_bonferroni_and_bh_differ_where_they_should() -> None:
    # Two features with the same p-value p0 in (alpha/2, alpha]: Bonferroni adjusts to 2·p0 > alpha,
    # BH to p0 <= alpha.
    for t in np.linspace(0.01, 0.2, 400):
        row = np.round(400 * driftsim.shifted_distribution(UNIFORM, float(t)))
        p0 = float(drift.psi(row, UNIFORM)[1])
        if 0.0006 < p0 < 0.0009:
            break
    else:
        pytest.fail("no window with p in (0.0006, 0.0009)")
    features, counts = _features()[:2], {"f0": row, "f1": row}
    bonferroni = drift.evaluate(features, counts, threshold=0.0, correction="bonferroni")
    bh = drift.evaluate(features, counts, threshold=0.0, correction="bh")
    assert bonferroni.state == "NoDrift" and bonferroni.p_value == pytest.approx(2 * p0)
    assert (bh.state, bh.drifted_features) == ("Drifted", ["f0", "f1"]) and bh.p_value == pytest.approx(p0)


def test_threshold_is_a_floor_on_a_significant_score() -> None:
    shifted = driftsim.shifted_distribution(UNIFORM, 0.01)
    counts = {"f0": np.random.default_rng(7).multinomial(100_000, shifted)}
    features = _features()[:1]
    assert drift.evaluate(features, counts, threshold=0.0).state == "Drifted"  # p ≈ 0, PSI ≈ 0.01
    assert drift.evaluate(features, counts).state == "NoDrift"  # below the 0.05 floor


def test_insufficient_data() -> None:
    counts = {"f0": np.full(10, 50), "f1": np.full(10, 15), "sex": np.array([100, 100])}
    result = drift.evaluate(_features(), counts)
    assert (result.state, result.score, result.p_value) == ("InsufficientData", None, None)
    assert result.samples == 150
    assert result.message == "fewer than 200 samples in the window for f1 (150)"
    missing = drift.evaluate(_features(), {"f0": np.full(10, 50), "sex": np.array([100, 100])})
    assert missing.state == "InsufficientData" and "f1 (0)" in missing.message


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"counts_by_feature": {"f0": np.ones(3)}}, r"feature f0: expected 10 counts, got shape \(3,\)"),
    ({"counts_by_feature": {"f0": -np.ones(10)}}, "feature f0: counts must be finite and non-negative"),
    ({"statistic": "wasserstein"}, "statistic: must be one of psi, ks, chi2, js"),
    ({"alpha": 0.0}, r"alpha: must lie in \(0, 1\)"),
    ({"threshold": -1.0}, "threshold: must be finite and >= 0"),
    ({"min_samples": 0}, "min_samples: must be >= 1"),
])
def test_evaluate_rejects_bad_input(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"counts_by_feature": {"f0": np.full(10, 100)}, **kwargs}
    with pytest.raises(ValueError, match=message):
        drift.evaluate(_features()[:1], **args)


# --- simulate ---------------------------------------------------------------------------------------


def test_shifted_distribution_has_the_requested_psi() -> None:
    for psi in (0.0, 0.01, 0.1, 2.0):
        q = driftsim.shifted_distribution(UNIFORM, psi)
        assert driftsim.population_psi(UNIFORM, q) == pytest.approx(psi, abs=1e-12)
        assert q.sum() == pytest.approx(1.0)


def _simulate(**kwargs: Any) -> dict[str, Any]:
    return driftsim.simulate(**{"windows": 20_000, "samples_per_window": 1000, "bins": 10, "features": 1,
                                "seed": 11, **kwargs})


def test_simulate_goals_with_the_default_rule() -> None:
    null = _simulate(true_psi=0.0)
    assert null["alarm_rate"] <= 0.001  # ARL0 >= 1,000 windows
    assert null["mean_delay_windows"] is None or null["mean_delay_windows"] >= 1000
    drifted = _simulate(true_psi=0.1)
    assert drifted["alarm_rate"] >= 0.99
    assert drifted["mean_delay_windows"] <= 1.01
    many = _simulate(true_psi=0.0, features=10, windows=5000)  # Bonferroni keeps ten features calm too
    assert many["alarm_rate"] <= 0.001


def test_naive_rule_alarms_on_small_windows_and_misses_at_its_own_threshold() -> None:
    small = _simulate(true_psi=0.0, samples_per_window=100)
    assert small["naive_alarm_rate"] > 0.25  # PSI's null mean at n = 100 is ≈ 0.09
    assert small["alarm_rate"] <= 0.003  # the test keeps false alarms near alpha
    assert _simulate(true_psi=0.1)["naive_alarm_rate"] < 0.8


def test_main_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--true-psi", "0.1", "--windows", "2000", "--samples-per-window", "1000",
            "--bins", "10", "--features", "2", "--seed", "1", "--statistic", "js", "--json"]
    assert driftsim.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    keys = {"alarm_rate", "mean_delay_windows", "windows", "naive_alarm_rate", "naive_mean_delay_windows"}
    assert keys <= set(out)
    assert out["windows"] == 2000 and out["statistic"] == "js"
    assert driftsim.main(["simulate", "--true-psi", "-1", "--json"]) == 2
    assert "true_psi: must be finite and >= 0" in capsys.readouterr().err
