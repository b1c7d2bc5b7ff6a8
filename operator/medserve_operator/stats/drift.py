"""Drift detection's statistical core: bin counts from Prometheus, drift statistics, the alarm rule.

Pure (numpy, scipy, the standard library): the reconciler queries Prometheus and patches status; this
module only turns numbers into a decision, so `medserve drift simulate` runs exactly the same code
on simulated windows (see `judge`, which both `evaluate` and the simulator call).

Counts. The runtime exports, per numeric feature, a histogram whose `le` edges are the reference
profile's bin edges, and per categorical feature a counter per category. `window_increase` is the
increase of one series over a window from its raw samples, with counter resets handled as Prometheus'
`increase()` does (without its extrapolation to the window edges, so counts stay exact integers);
`histogram_window_counts` applies it to every bucket with resets detected once, on the `+Inf` series,
for all buckets. `counts_from_cumulative` turns cumulative `le` buckets (from that, or directly from
`increase(medserve_feature_value_bucket[w])`) into per-bin counts.

Statistics. Each compares window counts `c` (n = sum c) with reference proportions `p` over k bins and
returns (score, p_value), vectorised over leading axes. Under no drift the reference is itself an
estimate from m training samples, so the noise of every statistic scales with v = 1/n + 1/m (1/n when
m is unknown; with m >> n the reference is effectively exact):

- psi: Σ (q - p)·ln(q/p). Empty window bins would make ln(q/p) infinite, so q is smoothed with a
  pseudocount of 0.5 per bin (Jeffreys' prior), q = (c + 0.5)/(n + 0.5k); reference bins with zero
  share (a category never seen in training) are floored at 1e-6. Both changes are negligible at the
  window sizes judged (min_samples). Null: PSI/v ≈ χ²(k-1) (a second-order expansion of the log
  gives Pearson's χ²), so p = χ²_{k-1}.sf(PSI/v).
- chi2: Pearson's goodness of fit, scipy.stats.chisquare(c, n·p). The score is the effect size X²/n
  (Pearson's χ² divergence, on PSI's scale, so one threshold means the same for both); the p-value
  is χ²_{k-1}.sf(X²·(1/n)/v), which is chisquare's own p-value when m is unknown.
- js: the Jensen-Shannon distance (scipy.spatial.distance.jensenshannon, base 2, in [0, 1]). For small
  shifts JSD (in nats) ≈ (1/8)·Σ (q - p)²/p, so the null is 8·ln2·distance²/v ≈ χ²(k-1).
- ks: the maximum distance between the window's and the reference's CDFs at the k-1 bin edges, with
  the two-sample Kolmogorov distribution at the effective sample size n·m/(n + m) (n when m is
  unknown), as scipy.stats.ks_2samp's asymptotic mode does. Approximation: the CDFs are compared only
  at the bin edges, so the distance is at most the raw-data KS distance and the p-value is
  conservative (fewer false alarms, a little less power than KS on raw values).

The alarm rule (`judge`). A feature is drifted when BOTH
  1. its p-value, adjusted for the number of features judged (Bonferroni by default, which bounds the
     chance of any false alarm in a window by alpha; Benjamini-Hochberg optionally, which bounds the
     expected share of false discoveries), is at most `alpha`; and
  2. its score exceeds `threshold`, a practical-significance floor.
The test is what controls false alarms at every window size: a fixed PSI cut-off alone alarms
constantly on small windows (at n = 100, k = 10 the null mean of PSI is already ≈ 9/100). The floor
is what keeps huge windows from alarming on drift too small to matter (at n = 10⁶ the test alone
rejects a PSI of 10⁻⁴). The window alarms when any feature is drifted. `DEFAULT_THRESHOLD` (0.05) is
the floor that meets the design goals at n = 1,000 and k = 10 (no-drift ARL ≥ 1,000 windows and ≥ 99%
of windows alarmed at a true PSI of 0.1): at that size the floor dominates the test (PSI > 0.05 under
no drift is a χ²₉ > 50 event, p ≈ 10⁻⁷) and still sits ~3 noise standard deviations under the
observed PSI of a true 0.1 shift. A floor of 0.2 deliberately ignores a true PSI of 0.1: it says drift
below 0.2 does not matter.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

Statistic = Literal["psi", "ks", "chi2", "js"]
Correction = Literal["bonferroni", "bh"]
State = Literal["Drifted", "NoDrift", "InsufficientData"]
FloatArray = npt.NDArray[np.float64]
Sample = tuple[float | str, float | str]
"""One (timestamp, value) pair as the Prometheus HTTP API returns it (values are strings there)."""

STATISTICS: tuple[str, ...] = get_args(Statistic)
CORRECTIONS: tuple[str, ...] = get_args(Correction)
DEFAULT_STATISTIC: Statistic = "psi"
DEFAULT_THRESHOLD = 0.05
DEFAULT_ALPHA = 0.001
DEFAULT_MIN_SAMPLES = 200
DEFAULT_CORRECTION: Correction = "bonferroni"
PSEUDOCOUNT = 0.5
REFERENCE_FLOOR = 1e-6
MONOTONE_TOLERANCE = 1e-9


class DriftDataError(ValueError):
    """Counts or samples that cannot be turned into a window's bin counts (names what is wrong)."""


class FeatureReference(Protocol):
    """What the rule needs of a reference feature profile (modelspec's NumericProfile/CategoricalProfile)."""

    @property
    def name(self) -> str: ...

    @property
    def proportions(self) -> Sequence[float]: ...


# ---------------------------------------------------------------------------------------------------
# Counts from Prometheus


def window_increase(samples: Sequence[Sample], *, reset_at: Collection[float] = ()) -> float:
    """The increase of a counter over its samples, counter resets handled as Prometheus does.

    A drop in value is a reset: the step then counts the value after the reset (the counter restarted
    from zero). `reset_at` names timestamps known to be resets even without a visible drop (see
    `histogram_window_counts`). Fewer than two samples (a missing series, or one that appeared at the
    window's end) show no increase: 0.0. Unlike `increase()`, nothing is extrapolated to the window's
    edges, so counters of whole events give whole numbers.
    """
    points = sorted((float(t), float(v)) for t, v in samples)
    if any(not (math.isfinite(t) and math.isfinite(v)) or v < 0 for t, v in points):
        raise DriftDataError("samples: timestamps and values must be finite, values non-negative")
    if len(points) < 2:
        return 0.0
    times = np.array([t for t, _ in points])
    values = np.array([v for _, v in points])
    steps = np.diff(values)
    reset = (steps < 0) | np.isin(times[1:], np.fromiter(reset_at, dtype=np.float64))
    return float(np.where(reset, values[1:], steps).sum())


def counts_from_cumulative(edges: Sequence[float], cumulative: Mapping[str, float] | Mapping[float, float],
                           *, tolerance: float = MONOTONE_TOLERANCE) -> FloatArray:
    """Per-bin counts (len(edges) + 1) from cumulative `le` buckets keyed by their `le` label.

    `cumulative` holds one value per edge plus `+Inf`; keys are `le` strings ("0.5", "+Inf") or floats
    and are matched to `edges` by value. No buckets at all (a missing series) gives zero counts; some
    but not all, a bucket that is not an edge (another version's histogram), a negative value, or a
    bucket below the previous one by more than `tolerance` (relative to the total) is a DriftDataError.
    """
    if not cumulative:
        return np.zeros(len(edges) + 1)
    want = [float(e) for e in edges] + [math.inf]
    found: dict[int, float] = {}
    for key, value in cumulative.items():
        try:
            le = float(key)
        except ValueError:
            raise DriftDataError(f"bucket le={key!r}: not a number") from None
        index = next((i for i, w in enumerate(want) if le == w or math.isclose(le, w, rel_tol=1e-9)), None)
        if index is None:
            raise DriftDataError(f"bucket le={key}: not one of the profile's bin edges "
                                 "(another model version?)")
        if not math.isfinite(value) or value < 0:
            raise DriftDataError(f"bucket le={key}: value must be finite and non-negative, got {value}")
        found[index] = float(value)
    missing = [_le(want[i]) for i in range(len(want)) if i not in found]
    if missing:
        raise DriftDataError(f"buckets missing for le={', '.join(missing)}")
    cum = np.array([found[i] for i in range(len(want))])
    counts = np.diff(cum, prepend=0.0)
    drop = counts < -tolerance * max(1.0, float(cum.max()))
    if drop.any():
        i = int(np.argmax(drop))
        raise DriftDataError(f"cumulative buckets are not monotone: le={_le(want[i])} holds {cum[i]:g}, "
                             f"less than le={_le(want[i - 1])} with {cum[i - 1]:g}")
    return np.clip(counts, 0.0, None)


def histogram_window_counts(edges: Sequence[float],
                            samples_by_le: Mapping[str, Sequence[Sample]] | Mapping[float, Sequence[Sample]]
                            ) -> FloatArray:
    """Per-bin counts over a window from the raw samples of each `le` bucket of one histogram.

    All buckets of a histogram reset together (a process restart), but a bucket whose count regrew past
    its old value shows no drop; so resets are found on the `+Inf` bucket (which counts everything) and
    applied to every bucket. Sum the result over instances for a deployment's total.
    """
    inf = next((s for k, s in samples_by_le.items() if math.isinf(float(k))), [])
    points = sorted((float(t), float(v)) for t, v in inf)
    resets = {t1 for (_, v0), (t1, v1) in itertools.pairwise(points) if v1 < v0}
    cumulative = {k: window_increase(s, reset_at=resets) for k, s in samples_by_le.items()}
    return counts_from_cumulative(edges, cumulative)  # type: ignore[arg-type]


def category_counts(categories: Sequence[str], increases: Mapping[str, float]) -> FloatArray:
    """Counts in the profile's category order from per-category increases; a missing category counts 0."""
    unknown = sorted(set(increases) - set(categories))
    if unknown:
        raise DriftDataError(f"categories {unknown} are not in the profile (another model version?)")
    counts = np.array([float(increases.get(c, 0.0)) for c in categories])
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise DriftDataError("category counts must be finite and non-negative")
    return counts


def _le(edge: float) -> str:
    return "+Inf" if math.isinf(edge) else repr(edge)


# ---------------------------------------------------------------------------------------------------
# Statistics: counts (..., k) against reference proportions (k,) -> (score (...), p_value (...))


def _inputs(counts: npt.ArrayLike, reference: npt.ArrayLike,
            reference_samples: int | None) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Counts, per-window n, the floored reference, and the null variance factor v = 1/n + 1/m."""
    c = np.asarray(counts, dtype=np.float64)
    p = np.asarray(reference, dtype=np.float64)
    if p.ndim != 1 or p.size < 2 or c.shape[-1:] != p.shape:
        raise ValueError(f"counts of shape {c.shape} do not match {p.size} reference proportions (need >= 2)")
    p = np.maximum(p, REFERENCE_FLOOR)
    p = p / p.sum()
    n = c.sum(axis=-1)
    with np.errstate(divide="ignore"):
        v = 1.0 / n + (1.0 / reference_samples if reference_samples else 0.0)
    return c, n, p, v


def _chi2_pvalue(statistic: FloatArray, k: int) -> FloatArray:
    # scipy is imported where it is used: scipy.stats alone would double the operator's memory, and an
    # operator without Prometheus never evaluates drift at all.
    from scipy.special import chdtrc

    return np.asarray(chdtrc(k - 1, statistic), dtype=np.float64)


def psi(counts: npt.ArrayLike, reference: npt.ArrayLike,
        reference_samples: int | None = None) -> tuple[FloatArray, FloatArray]:
    """Population stability index of the window against the reference, and its asymptotic p-value."""
    c, n, p, v = _inputs(counts, reference, reference_samples)
    k = p.size
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (c + PSEUDOCOUNT) / (n[..., None] + PSEUDOCOUNT * k)
        score = np.sum((q - p) * np.log(q / p), axis=-1)
        score = np.where(n > 0, score, np.nan)
        return score, _chi2_pvalue(score / v, k)


def chi2(counts: npt.ArrayLike, reference: npt.ArrayLike,
         reference_samples: int | None = None) -> tuple[FloatArray, FloatArray]:
    """Pearson's χ² divergence X²/n of the window from the reference, and the goodness-of-fit p-value."""
    c, n, p, v = _inputs(counts, reference, reference_samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        x2 = np.sum((c - n[..., None] * p) ** 2 / (n[..., None] * p), axis=-1)
        score = x2 / n
        return score, _chi2_pvalue(score / v, p.size)


def js(counts: npt.ArrayLike, reference: npt.ArrayLike,
       reference_samples: int | None = None) -> tuple[FloatArray, FloatArray]:
    """Jensen-Shannon distance (base 2) of the window from the reference, and its asymptotic p-value."""
    c, n, p, v = _inputs(counts, reference, reference_samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = c / n[..., None]
        m = (q + p) / 2.0
        divergence = (np.sum(np.where(q > 0, q * np.log2(q / m), 0.0), axis=-1)
                      + np.sum(np.where(p > 0, p * np.log2(p / m), 0.0), axis=-1)) / 2.0
        score = np.sqrt(np.maximum(divergence, 0.0))
        score = np.where(n > 0, score, np.nan)
        return score, _chi2_pvalue(8.0 * math.log(2.0) * score**2 / v, p.size)


def ks(counts: npt.ArrayLike, reference: npt.ArrayLike,
       reference_samples: int | None = None) -> tuple[FloatArray, FloatArray]:
    """Kolmogorov-Smirnov distance between binned CDFs, and the two-sample p-value at n·m/(n + m)."""
    c, n, p, v = _inputs(counts, reference, reference_samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        q_cdf = np.cumsum(c, axis=-1)[..., :-1] / n[..., None]
        score = np.max(np.abs(q_cdf - np.cumsum(p)[:-1]), axis=-1)
        n_eff = np.where(n > 0, np.maximum(np.round(1.0 / v), 1.0), 1.0)
    # kstwo.sf is slow (~0.3 ms a call) but binned distances repeat: evaluate each (D, n) pair once.
    pairs = np.stack([np.nan_to_num(score).ravel(), n_eff.ravel()])
    unique, inverse = np.unique(pairs, axis=1, return_inverse=True)
    from scipy import stats  # only the ks statistic needs the exact Kolmogorov distribution

    p_value = np.asarray(stats.kstwo.sf(unique[0], unique[1]), dtype=np.float64)[inverse.ravel()]
    return score, np.where(n > 0, p_value.reshape(score.shape), np.nan)


STATISTIC_FUNCTIONS = {"psi": psi, "ks": ks, "chi2": chi2, "js": js}


def adjust_p_values(p_values: npt.ArrayLike, correction: Correction = DEFAULT_CORRECTION) -> FloatArray:
    """Adjusted p-values across the last axis (features): Bonferroni or Benjamini-Hochberg.

    A NaN p-value (no samples) counts as 1. Comparing the result with alpha controls, per window, the
    chance of any false alarm (Bonferroni) or the expected share of false discoveries (BH).
    """
    p = np.nan_to_num(np.asarray(p_values, dtype=np.float64), nan=1.0)
    f = p.shape[-1]
    if correction == "bonferroni":
        return np.asarray(np.minimum(p * f, 1.0), dtype=np.float64)
    if correction != "bh":
        raise ValueError(f"correction: must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1) * f / np.arange(1, f + 1)
    ranked = np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(p)
    np.put_along_axis(out, order, np.minimum(ranked, 1.0), axis=-1)
    return out


# ---------------------------------------------------------------------------------------------------
# The alarm rule


@dataclass(frozen=True)
class Judgement:
    """The rule applied to N windows of f features; every array is (N, f)."""

    scores: FloatArray
    p_values: FloatArray
    adjusted_p_values: FloatArray
    drifted: npt.NDArray[np.bool_]
    samples: FloatArray

    @property
    def alarms(self) -> npt.NDArray[np.bool_]:
        """Per window: whether any feature drifted."""
        return np.asarray(self.drifted.any(axis=-1))


def judge(counts: Sequence[npt.ArrayLike], references: Sequence[npt.ArrayLike], *,
          statistic: Statistic = DEFAULT_STATISTIC, threshold: float = DEFAULT_THRESHOLD,
          alpha: float = DEFAULT_ALPHA, correction: Correction = DEFAULT_CORRECTION,
          reference_samples: int | None = None) -> Judgement:
    """The alarm rule (see the module docstring) on N windows at once: counts[j] is (N, k_j) for feature j."""
    if statistic not in STATISTIC_FUNCTIONS:
        raise ValueError(f"statistic: must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold: must be finite and >= 0, got {threshold}")
    if not counts or len(counts) != len(references):
        raise ValueError("need the same, non-zero number of count arrays and references")
    compute = STATISTIC_FUNCTIONS[statistic]
    pairs = [compute(np.atleast_2d(c), r, reference_samples) for c, r in zip(counts, references, strict=True)]
    scores = np.stack([s for s, _ in pairs], axis=-1)
    p_values = np.stack([p for _, p in pairs], axis=-1)
    adjusted = adjust_p_values(p_values, correction)
    with np.errstate(invalid="ignore"):
        drifted = (adjusted <= alpha) & (scores > threshold)
    samples = np.stack([np.atleast_2d(np.asarray(c, dtype=np.float64)).sum(axis=-1) for c in counts], axis=-1)
    return Judgement(scores, p_values, adjusted, drifted, samples)


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's figures in one window (None where there were too few samples to compute them)."""

    name: str
    samples: float
    score: float | None = None
    p_value: float | None = None
    adjusted_p_value: float | None = None
    drifted: bool = False


@dataclass(frozen=True)
class DriftResult:
    """The decision for one window: what goes into status.drift and the DriftDetected condition."""

    state: State
    statistic: Statistic
    score: float | None
    """The largest score over the features (None without enough data)."""
    p_value: float | None
    """The smallest adjusted p-value over the features (None without enough data)."""
    drifted_features: list[str]
    samples: int
    """The fewest samples any judged feature had in the window."""
    message: str
    features: list[FeatureDrift] = field(default_factory=list)


def evaluate(profile_features: Sequence[FeatureReference], counts_by_feature: Mapping[str, npt.ArrayLike], *,
             statistic: Statistic = DEFAULT_STATISTIC, threshold: float = DEFAULT_THRESHOLD,
             alpha: float = DEFAULT_ALPHA, min_samples: int = DEFAULT_MIN_SAMPLES,
             correction: Correction = DEFAULT_CORRECTION,
             reference_samples: int | None = None) -> DriftResult:
    """Judge one window: each profile feature's bin counts against its reference proportions.

    `counts_by_feature` maps feature names to counts in the profile's bin/category order; a feature
    without counts (a missing series) has no samples; names not in `profile_features` are ignored (the
    spec's `features` selects). If any feature has fewer than `min_samples` the state is
    InsufficientData and nothing is judged. `reference_samples` is the profile's `samples` (m).
    Bad input raises ValueError naming the feature or field.
    """
    if not profile_features:
        raise ValueError("features: no features to judge")
    if min_samples < 1:
        raise ValueError(f"min_samples: must be >= 1, got {min_samples}")
    counts: list[FloatArray] = []
    for f in profile_features:
        k = len(f.proportions)
        c = np.asarray(counts_by_feature.get(f.name, np.zeros(k)), dtype=np.float64)
        if c.shape != (k,):
            raise ValueError(f"feature {f.name}: expected {k} counts, got shape {c.shape}")
        if not np.all(np.isfinite(c)) or (c < 0).any():
            raise ValueError(f"feature {f.name}: counts must be finite and non-negative")
        counts.append(c)
    names = [f.name for f in profile_features]
    totals = [float(c.sum()) for c in counts]
    samples = round(min(totals))
    short = [f"{n} ({t:g})" for n, t in zip(names, totals, strict=True) if t < min_samples]
    if short:
        return DriftResult("InsufficientData", statistic, None, None, [], samples,
                           f"fewer than {min_samples} samples in the window for {', '.join(short)}",
                           [FeatureDrift(n, t) for n, t in zip(names, totals, strict=True)])
    j = judge([c[None, :] for c in counts], [f.proportions for f in profile_features], statistic=statistic,
              threshold=threshold, alpha=alpha, correction=correction, reference_samples=reference_samples)
    details = [FeatureDrift(n, totals[i], float(j.scores[0, i]), float(j.p_values[0, i]),
                            float(j.adjusted_p_values[0, i]), bool(j.drifted[0, i]))
               for i, n in enumerate(names)]
    drifted = [d.name for d in details if d.drifted]
    score, p_value = float(np.nanmax(j.scores[0])), float(np.min(j.adjusted_p_values[0]))
    if drifted:
        message = (f"{statistic} drift in {', '.join(drifted)} (score {score:.4g} > {threshold:g}, "
                   f"{correction}-adjusted p {p_value:.3g} <= {alpha:g})")
    else:
        message = f"no drift: max {statistic} {score:.4g}, min {correction}-adjusted p {p_value:.3g}"
    return DriftResult("Drifted" if drifted else "NoDrift", statistic, score, p_value, drifted, samples,
                       message, details)
