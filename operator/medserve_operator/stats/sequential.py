"""The A/B test's statistics: a sequential test that stays valid however often it is looked at.

An ABTest is evaluated every `statistics.interval`, so a fixed-horizon z-test repeated at every look
would "find" differences between identical models far more often than `alpha` says. This module
decides instead with a two-part design, valid under continuous monitoring (Bonferroni over the two
parts):

1. A mixture sequential probability ratio test (mSPRT; Johari, Koomen, Pekelis & Walsh, "Always
   valid inference", Operations Research 2022) on the difference `d = treatment - control`, with a
   normal mixture `N(theta0, tau^2)` over the effect. Its likelihood ratio against `theta0`, given
   the estimate `d` with variance `V`, is

       Lambda = sqrt(V / (V + tau^2)) * exp((d - theta0)^2 tau^2 / (2 V (V + tau^2)))

   and by Ville's inequality `P(ever Lambda >= 1/a) <= a` under `theta0`. It is spent at
   `a1 = BOUNDARY_SHARE * alpha`. Inverting it gives a confidence sequence (every `theta0` the
   test does not reject), and its running intersection is the always-valid interval. `tau` is tuned
   to the minimum detectable effect (`TAU_PER_MDE`), which makes the boundary tightest when an
   effect of about twice the MDE becomes visible, so large effects stop early.
2. A fixed-horizon z-test at the final look (max samples per arm, or max duration), at
   `a2 = alpha - a1`. A plain mSPRT truncated at N loses about a third of the power of the
   fixed-horizon test it replaces; the final look restores most of it (see README, "A/B tests").

The reported p-value is the weighted-Bonferroni combination `min(1, p_mix / w, p_final / (1 - w))`
(with `w = a1 / alpha`): rejecting when it is <= alpha is exactly the design above, and it never
increases, so a status that shows it is always honest. Both arms' variances are plugged in
(asymptotic confidence sequences; `min_samples_per_arm` guards the small-sample regime).

Hypotheses (d is oriented so that positive means "treatment better", see `higher_is_better`):
- superiority: `TreatmentBetter` / `ControlBetter` once the interval excludes 0; `NoDifference` once
  it lies within (-MDE, +MDE), or at max samples without a significant final look.
- non-inferiority: `NonInferior` once the lower bound exceeds `-margin` (the clinical convention
  of a two-sided interval's lower bound); `ControlBetter` once the upper bound is below `-margin`.
`Inconclusive` while running, and as the outcome when max duration ends a test first.

Everything works on numpy arrays of many runs at once (`evaluate_batch`), which is how the
simulator (`medserve abtest simulate`) checks the guarantees; `evaluate` is the one-test view the
reconciler uses. Pure: numpy and the standard library only.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

Decision = Literal["TreatmentBetter", "ControlBetter", "NoDifference", "NonInferior", "Inconclusive"]
#: Decision codes used in the arrays: `DECISIONS[code]` is the name.
DECISIONS: tuple[Decision, ...] = ("Inconclusive", "TreatmentBetter", "ControlBetter", "NoDifference", "NonInferior")
INCONCLUSIVE, TREATMENT_BETTER, CONTROL_BETTER, NO_DIFFERENCE, NON_INFERIOR = range(5)

#: Share of alpha spent on the always-valid boundary; the rest goes to the final look at max samples.
#: Tuned by simulation (README): 0.2 keeps ~78% power at the fixed-horizon N (80% is the most any
#: test can have there) while a twice-the-MDE effect still stops at about a third of N.
BOUNDARY_SHARE = 0.2
#: Mixture standard deviation in units of the minimum detectable effect (tuned with BOUNDARY_SHARE).
TAU_PER_MDE = 2.0


class _StatisticsLike(Protocol):
    @property
    def alpha(self) -> float: ...
    @property
    def minimum_detectable_effect(self) -> float: ...
    @property
    def min_samples_per_arm(self) -> int: ...
    @property
    def max_samples_per_arm(self) -> int: ...


class _MetricLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def higher_is_better(self) -> bool: ...


class ABTestSpecLike(Protocol):
    """The parts of `api.ABTestSpec` (or `api.ABTestTemplate`) the statistics read."""

    @property
    def hypothesis(self) -> str: ...
    @property
    def non_inferiority_margin(self) -> float: ...
    @property
    def statistics(self) -> _StatisticsLike: ...
    @property
    def metric(self) -> _MetricLike: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Design:
    """What the test decides and how; `Design.from_spec(spec)` reads it from an ABTestSpec.

    For `kind="mean"`, `mde` and `margin` are in the metric's units.
    """

    kind: Literal["proportion", "mean"] = "proportion"
    hypothesis: Literal["superiority", "non-inferiority"] = "superiority"
    margin: float = 0.02
    alpha: float = 0.05
    mde: float = 0.02
    min_samples: int = 100
    max_samples: int = 20000
    higher_is_better: bool = True
    boundary_share: float = BOUNDARY_SHARE
    tau_per_mde: float = TAU_PER_MDE

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("kind", self.kind in ("proportion", "mean"), "must be 'proportion' or 'mean'"),
            ("hypothesis", self.hypothesis in ("superiority", "non-inferiority"),
             "must be 'superiority' or 'non-inferiority'"),
            ("alpha", 0 < self.alpha <= 0.5, "must be in (0, 0.5]"),
            ("minimumDetectableEffect", self.mde > 0 and math.isfinite(self.mde), "must be positive"),
            ("nonInferiorityMargin", self.margin >= 0 and math.isfinite(self.margin), "must be >= 0"),
            ("minSamplesPerArm", self.min_samples >= 1, "must be >= 1"),
            ("maxSamplesPerArm", self.max_samples >= max(2, self.min_samples),
             "must be >= 2 and >= minSamplesPerArm"),
            ("boundary_share", 0 < self.boundary_share < 1, "must be in (0, 1)"),
            ("tau_per_mde", self.tau_per_mde > 0, "must be positive"),
        ]
        problems = [f"{name}: {message} (got {getattr(self, _ATTR.get(name, name))!r})"
                    for name, ok, message in checks if not ok]
        if problems:
            raise ValueError("invalid A/B test design: " + "; ".join(problems))

    @classmethod
    def from_spec(cls, spec: ABTestSpecLike) -> Design:
        """The design of an `api.ABTestSpec` (already validated by pydantic)."""
        stats = spec.statistics
        kind: Literal["proportion", "mean"] = "mean" if spec.metric.kind == "mean" else "proportion"
        hypothesis: Literal["superiority", "non-inferiority"] = (
            "non-inferiority" if spec.hypothesis == "non-inferiority" else "superiority"
        )
        return cls(
            kind=kind, hypothesis=hypothesis, margin=spec.non_inferiority_margin, alpha=stats.alpha,
            mde=stats.minimum_detectable_effect, min_samples=stats.min_samples_per_arm,
            max_samples=stats.max_samples_per_arm, higher_is_better=spec.metric.higher_is_better,
        )

    @property
    def boundary_alpha(self) -> float:
        """alpha spent on the always-valid mixture boundary."""
        return self.alpha * self.boundary_share

    @property
    def final_alpha(self) -> float:
        """alpha spent on the fixed-horizon final look."""
        return self.alpha - self.boundary_alpha

    @property
    def theta0(self) -> float:
        """The null difference (oriented: positive = treatment better) the p-value is computed against."""
        return -self.margin if self.hypothesis == "non-inferiority" else 0.0


_ATTR = {"minimumDetectableEffect": "mde", "nonInferiorityMargin": "margin", "minSamplesPerArm": "min_samples",
         "maxSamplesPerArm": "max_samples"}


@dataclasses.dataclass(frozen=True, slots=True)
class ArmData:
    """Sufficient statistics of one arm: count, sum and sum of squares of its outcomes (arrays or scalars).

    For a proportion the outcomes are 0/1, so `total == total_sq == successes`.
    """

    count: FloatArray
    total: FloatArray
    total_sq: FloatArray

    @classmethod
    def proportion(cls, successes: npt.ArrayLike, trials: npt.ArrayLike, *, arm: str = "arm") -> ArmData:
        x, n = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
        _require(np.all(np.isfinite(n) & (n >= 0)), f"{arm}.trials must be finite and >= 0")
        _require(np.all(np.isfinite(x) & (x >= 0) & (x <= n)), f"{arm}.successes must be between 0 and trials")
        n, x = np.broadcast_arrays(n, x)
        return cls(n, x, x)

    @classmethod
    def mean(cls, count: npt.ArrayLike, total: npt.ArrayLike, total_sq: npt.ArrayLike, *, arm: str = "arm") -> ArmData:
        n = np.asarray(count, dtype=np.float64)
        s, ss = np.asarray(total, dtype=np.float64), np.asarray(total_sq, dtype=np.float64)
        _require(np.all(np.isfinite(n) & (n >= 0)), f"{arm}.count must be finite and >= 0")
        _require(np.all(np.isfinite(s)), f"{arm}.sum must be finite")
        # Cauchy-Schwarz: sum^2 <= n * sum of squares (with a little slack for float rounding).
        _require(np.all(np.isfinite(ss) & (s * s <= n * ss * (1 + 1e-9) + 1e-12)),
                 f"{arm}.sum_of_squares must be finite and >= sum^2 / count")
        n, s, ss = np.broadcast_arrays(n, s, ss)
        return cls(n, s, ss)

    def estimate(self) -> FloatArray:
        """The arm's mean (NaN with no samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)

    def variance_of_mean(self, kind: str) -> FloatArray:
        """Variance of the arm's mean; NaN where it cannot be estimated."""
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            if kind == "proportion":
                # Shrunk towards 1/2 so that 0/n and n/n do not claim zero variance.
                p = (self.total + 0.5) / (n + 1.0)
                return np.where(n > 0, p * (1.0 - p) / n, np.nan)
            mean = self.total / n
            var = np.maximum(self.total_sq - n * mean * mean, 0.0) / (n - 1.0)
            return np.where(n >= 2, var / n, np.nan)


def _require(ok: bool | np.bool_, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """The state of many tests after a look (one entry per run); also the running state for the next look.

    `low`/`high` is the always-valid interval of `treatment - control`; `p_value` the always-valid,
    Bonferroni-combined p-value; `decision` codes index `DECISIONS`.
    """

    n_control: FloatArray
    n_treatment: FloatArray
    control: FloatArray
    treatment: FloatArray
    difference: FloatArray
    low: FloatArray
    high: FloatArray
    p_value: FloatArray
    decision: IntArray
    concluded: BoolArray

    def decisions(self) -> list[Decision]:
        return [DECISIONS[int(code)] for code in self.decision.ravel()]


@dataclasses.dataclass(frozen=True, slots=True)
class RunningState:
    """What the next look needs from the previous one (the ABTest controller keeps it in status)."""

    p_value: float = 1.0
    low: float = -math.inf
    high: float = math.inf


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """One A/B test after a look, typed (the ABTest controller's status.py serialises it)."""

    samples_control: int
    samples_treatment: int
    control: float
    treatment: float
    difference: float
    confidence_sequence: tuple[float, float]
    always_valid_p_value: float
    decision: Decision
    concluded: bool

    @property
    def state(self) -> RunningState:
        return RunningState(self.always_valid_p_value, *self.confidence_sequence)


def mixture_log_lr(d: FloatArray, var: FloatArray, theta0: float, tau2: float) -> FloatArray:
    """log of the normal-mixture likelihood ratio of `d ~ N(theta, var)` against `theta = theta0`."""
    return 0.5 * np.log(var / (var + tau2)) + (d - theta0) ** 2 * tau2 / (2.0 * var * (var + tau2))


def confidence_radius(var: FloatArray, tau2: float, alpha: float) -> FloatArray:
    """Half-width of the mixture confidence sequence at level `alpha` (the inversion of `mixture_log_lr`)."""
    return np.sqrt(var * (var + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log((var + tau2) / var)))


_erfc = np.frompyfunc(math.erfc, 1, 1)


def two_sided_p(z: npt.ArrayLike) -> FloatArray:
    """Two-sided normal p-value of a z statistic: erfc(|z| / sqrt 2)."""
    return np.asarray(_erfc(np.abs(np.asarray(z, dtype=np.float64)) / math.sqrt(2.0)), dtype=np.float64)


def normal_quantile(p: float) -> float:
    """The standard normal quantile (`z` with `P(Z <= z) = p`)."""
    return statistics.NormalDist().inv_cdf(p)


def evaluate_batch(
    design: Design,
    control: ArmData,
    treatment: ArmData,
    *,
    previous: Batch | RunningState | None = None,
    final: bool | BoolArray = False,
) -> Batch:
    """One look at many tests at once; `previous` is the last look (its concluded runs stay as they were).

    `final` marks a last look for another reason than max samples (max duration reached).
    """
    shape = np.broadcast(control.count, treatment.count).shape
    nc = np.broadcast_to(control.count, shape).astype(np.float64)
    nt = np.broadcast_to(treatment.count, shape).astype(np.float64)
    if isinstance(previous, Batch):
        prev_p, prev_low, prev_high = previous.p_value, previous.low, previous.high
        prev_decision, prev_concluded = previous.decision, previous.concluded
    else:
        state = previous or RunningState()
        prev_p, prev_low, prev_high = (np.full(shape, v) for v in (state.p_value, state.low, state.high))
        prev_decision, prev_concluded = np.zeros(shape, np.int8), np.zeros(shape, np.bool_)

    # Orient so that positive means "treatment better"; report in the metric's own direction.
    sign = 1.0 if design.higher_is_better else -1.0
    est_c, est_t = control.estimate(), treatment.estimate()
    raw_diff = np.broadcast_to(est_t - est_c, shape)
    d = sign * raw_diff
    var = np.broadcast_to(control.variance_of_mean(design.kind) + treatment.variance_of_mean(design.kind), shape)
    o_low, o_high = (prev_low, prev_high) if sign > 0 else (-prev_high, -prev_low)

    ready = (np.minimum(nc, nt) >= design.min_samples) & np.isfinite(var) & (var > 0)
    at_max = np.maximum(nc, nt) >= design.max_samples
    last = np.asarray(final, dtype=np.bool_) | at_max
    safe_var = np.where(ready, var, 1.0)
    safe_d = np.where(ready, d, 0.0)
    tau2 = (design.tau_per_mde * design.mde) ** 2
    w = design.boundary_share

    # The always-valid part: running minimum of the mixture p-value, running intersection of the sequence.
    with np.errstate(over="ignore"):
        p_mix = np.exp(-np.maximum(mixture_log_lr(safe_d, safe_var, design.theta0, tau2), 0.0))
    radius = confidence_radius(safe_var, tau2, design.boundary_alpha)
    p = np.where(ready, np.minimum(prev_p, np.minimum(1.0, p_mix / w)), prev_p)
    low = np.where(ready, np.maximum(o_low, safe_d - radius), o_low)
    high = np.where(ready, np.minimum(o_high, safe_d + radius), o_high)

    # The final fixed-horizon look, at the alpha the boundary left over.
    final_look = last & ready
    se = np.sqrt(safe_var)
    p_final = np.ones(shape)
    if final_look.any():  # erfc is a Python-level ufunc: only pay for it at final looks
        p_final[final_look] = two_sided_p((safe_d[final_look] - design.theta0) / se[final_look])
    z2 = normal_quantile(1.0 - design.final_alpha / 2.0)
    p = np.where(final_look, np.minimum(p, np.minimum(1.0, p_final / (1.0 - w))), p)
    low = np.where(final_look, np.maximum(low, safe_d - z2 * se), low)
    high = np.where(final_look, np.minimum(high, safe_d + z2 * se), high)
    # Disjoint pieces (probability <= alpha): keep a point rather than an empty interval.
    empty = low > high
    with np.errstate(invalid="ignore"):  # (-inf + inf) where nothing is known yet; never empty there
        mid = (low + high) / 2.0
    low, high = np.where(empty, mid, low), np.where(empty, mid, high)
    if design.kind == "proportion":
        low, high = np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)

    decision = np.full(shape, INCONCLUSIVE, np.int8)
    if design.hypothesis == "superiority":
        decision[(low > -design.mde) & (high < design.mde)] = NO_DIFFERENCE
        decision[last & ready & at_max & (decision == INCONCLUSIVE)] = NO_DIFFERENCE
        decision[low > 0] = TREATMENT_BETTER
        decision[high < 0] = CONTROL_BETTER
    else:
        decision[low > -design.margin] = NON_INFERIOR
        decision[high < -design.margin] = CONTROL_BETTER
    decision[~ready] = INCONCLUSIVE
    concluded = last | (decision != INCONCLUSIVE)

    r_low, r_high = (low, high) if sign > 0 else (-high, -low)
    keep = prev_concluded
    return Batch(
        n_control=nc, n_treatment=nt,
        control=np.broadcast_to(est_c, shape).astype(np.float64),
        treatment=np.broadcast_to(est_t, shape).astype(np.float64),
        difference=raw_diff.astype(np.float64),
        low=np.where(keep, prev_low, r_low), high=np.where(keep, prev_high, r_high),
        p_value=np.where(keep, prev_p, p), decision=np.where(keep, prev_decision, decision).astype(np.int8),
        concluded=keep | concluded,
    )


def evaluate(
    design: Design,
    control: ArmData,
    treatment: ArmData,
    *,
    previous: RunningState | None = None,
    final: bool = False,
) -> Evaluation:
    """One look at one A/B test (what the reconciler calls every interval).

    `previous` carries the running p-value and interval from the last look (`Evaluation.state`);
    `final=True` when max duration has run out.
    """
    batch = evaluate_batch(design, control, treatment, previous=previous, final=final)
    if batch.p_value.size != 1:
        raise ValueError(f"evaluate() takes one test, got {batch.p_value.size}; use evaluate_batch()")
    return Evaluation(
        samples_control=int(batch.n_control.item()), samples_treatment=int(batch.n_treatment.item()),
        control=float(batch.control.item()), treatment=float(batch.treatment.item()),
        difference=float(batch.difference.item()),
        confidence_sequence=(float(batch.low.item()), float(batch.high.item())),
        always_valid_p_value=float(batch.p_value.item()), decision=DECISIONS[int(batch.decision.item())],
        concluded=bool(batch.concluded.item()),
    )
