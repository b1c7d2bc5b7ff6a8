"""`medserve abtest simulate`: Monte Carlo check of the A/B test's error rates, power and stopping time.

Every run draws Bernoulli outcomes for both arms, `--peek-every` samples per arm between looks, up
to `--max-samples` per arm, and looks at each step exactly as the ABTest reconciler does: through
`sequential.evaluate_batch`, vectorised over all runs. `--method naive` instead repeats a
fixed-horizon two-sided z-test at alpha at every look and stops at the first "significant" one, to
show why that is wrong.

    medserve abtest simulate --control-rate 0.8 --treatment-rate 0.8 --peek-every 100 \\
        --max-samples 10000 --runs 10000 --method sequential --seed 1 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from medserve_operator.stats import sequential
from medserve_operator.stats.sequential import ArmData, Design

log = logging.getLogger(__name__)

METHODS = ("sequential", "naive")


@dataclasses.dataclass(frozen=True, slots=True)
class Simulation:
    """Per-run outcomes of a simulation; `paths` (looks x runs p-values) only when asked for."""

    looks: npt.NDArray[np.int64]
    stop: npt.NDArray[np.float64]
    decision: npt.NDArray[np.int8]
    paths: npt.NDArray[np.float64] | None


def look_schedule(peek_every: int, max_samples: int) -> npt.NDArray[np.int64]:
    """Samples per arm at each look: every `peek_every`, and always a last look at `max_samples`."""
    looks = np.arange(peek_every, max_samples + 1, peek_every, dtype=np.int64)
    return looks if looks.size and looks[-1] == max_samples else np.append(looks, max_samples)


def simulate(
    design: Design,
    *,
    control_rate: float,
    treatment_rate: float,
    peek_every: int,
    runs: int,
    method: str = "sequential",
    seed: int = 0,
    keep_paths: bool = False,
) -> Simulation:
    """Simulate `runs` A/B tests with equal allocation; a run stops at its first conclusion."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    rng = np.random.default_rng(seed)
    looks = look_schedule(peek_every, design.max_samples)
    xc = np.zeros(runs)
    xt = np.zeros(runs)
    stop = np.full(runs, float(design.max_samples))
    decision = np.zeros(runs, np.int8)
    concluded = np.zeros(runs, np.bool_)
    paths = np.ones((looks.size, runs)) if keep_paths else None
    state: sequential.Batch | None = None
    z_crit = sequential.normal_quantile(1.0 - design.alpha / 2.0)
    previous_n = 0
    for i, n in enumerate(looks):
        step = int(n) - previous_n
        previous_n = int(n)
        # Concluded runs keep drawing (cheap, and keeps every run's random stream independent of stopping).
        xc += rng.binomial(step, control_rate, runs)
        xt += rng.binomial(step, treatment_rate, runs)
        control, treatment = ArmData.proportion(xc, n, arm="control"), ArmData.proportion(xt, n, arm="treatment")
        if method == "sequential":
            state = sequential.evaluate_batch(design, control, treatment, previous=state)
            new = state.concluded & ~concluded
            decision = state.decision
        else:
            # The textbook z-test with pooled variance, at full alpha, as if this look were the only one.
            pooled = (xc + xt) / (2.0 * n)
            se = np.sqrt(np.maximum(pooled * (1.0 - pooled), 1e-12) * 2.0 / n)
            z = (xt - xc) / n / se
            significant = (np.abs(z) > z_crit) & (n >= design.min_samples)
            new = significant & ~concluded
            decision = np.where(new, np.where(z > 0, sequential.TREATMENT_BETTER, sequential.CONTROL_BETTER),
                                decision).astype(np.int8)
        stop[new] = n
        concluded |= new
        if paths is not None:
            p = state.p_value if state is not None else sequential.two_sided_p(z)
            paths[i] = p if i == 0 else np.where(concluded & ~new, paths[i - 1], p)
        if concluded.all():
            if paths is not None:
                paths[i + 1:] = paths[i]
            break
    return Simulation(looks=looks, stop=stop, decision=decision, paths=paths)


def summarize(sim: Simulation, design: Design, *, control_rate: float, treatment_rate: float) -> dict[str, Any]:
    """The figures the README quotes.

    `conclusion_rate` counts every decision that claims something (a winner, or non-inferiority).
    Where the null hypothesis is true (A/A for superiority; a treatment worse by at least the margin
    for non-inferiority) the claim's rate is `false_positive_rate`, otherwise it is `power`.
    """
    runs = sim.stop.size
    counts: dict[str, int] = {name: int(np.sum(sim.decision == code)) for code, name in enumerate(sequential.DECISIONS)}
    rate = (counts["TreatmentBetter"] + counts["ControlBetter"] + counts["NonInferior"]) / runs
    # Wilson 95% interval: how far the Monte Carlo estimate can be from the true rate.
    z = 1.959963984540054
    centre = (rate + z * z / (2 * runs)) / (1 + z * z / runs)
    half = z * np.sqrt(rate * (1 - rate) / runs + z * z / (4 * runs * runs)) / (1 + z * z / runs)
    out: dict[str, Any] = {
        "runs": runs,
        "conclusion_rate": rate,
        "conclusion_rate_95ci": [round(float(centre - half), 5), round(float(centre + half), 5)],
        "decisions": counts,
        "median_stop": float(np.median(sim.stop)),
        "mean_stop": float(np.mean(sim.stop)),
        "median_stop_fraction": float(np.median(sim.stop)) / design.max_samples,
    }
    if design.hypothesis == "non-inferiority":
        sign = 1.0 if design.higher_is_better else -1.0
        null_true = sign * (treatment_rate - control_rate) <= -design.margin
        out["false_positive_rate" if null_true else "power"] = counts["NonInferior"] / runs
    elif control_rate == treatment_rate:
        out["false_positive_rate"] = (counts["TreatmentBetter"] + counts["ControlBetter"]) / runs
    else:
        better = "TreatmentBetter" if treatment_rate > control_rate else "ControlBetter"
        out["power"] = counts[better] / runs
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medserve abtest", description="A/B test statistics tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="Monte Carlo error rates, power and stopping time of the A/B test.",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("--control-rate", type=float, required=True, help="true success rate of the control")
    sim.add_argument("--treatment-rate", type=float, required=True, help="true success rate of the treatment")
    sim.add_argument("--peek-every", type=int, default=100, help="samples per arm between looks (default 100)")
    sim.add_argument("--max-samples", type=int, default=10000, help="samples per arm at the final look")
    sim.add_argument("--runs", type=int, default=10000, help="simulated A/B tests (default 10000)")
    sim.add_argument("--method", choices=METHODS, default="sequential", help="sequential (default) or naive")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--alpha", type=float, default=0.05, help="false-positive rate (default 0.05)")
    sim.add_argument("--mde", type=float, default=0.02, help="minimum detectable effect (default 0.02)")
    sim.add_argument("--min-samples", type=int, default=100, help="samples per arm before any decision")
    sim.add_argument("--hypothesis", choices=("superiority", "non-inferiority"), default="superiority")
    sim.add_argument("--margin", type=float, default=0.02, help="non-inferiority margin (default 0.02)")
    sim.add_argument("--boundary-share", type=float, default=sequential.BOUNDARY_SHARE,
                     help="share of alpha spent on the always-valid boundary, the rest on the final look "
                     f"(default {sequential.BOUNDARY_SHARE}; 0.999 is a plain truncated mSPRT)")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def _check(args: argparse.Namespace) -> list[str]:
    problems = []
    for name in ("control_rate", "treatment_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            problems.append(f"--{name.replace('_', '-')} must be between 0 and 1")
    for name in ("peek_every", "max_samples", "runs"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    return problems


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    problems = _check(args)
    try:
        design = Design(alpha=args.alpha, mde=args.mde, min_samples=min(args.min_samples, args.max_samples),
                        max_samples=args.max_samples, hypothesis=args.hypothesis, margin=args.margin,
                        boundary_share=args.boundary_share)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        sys.stderr.write("medserve abtest simulate: " + "; ".join(problems) + "\n")
        return 2
    started = time.perf_counter()
    sim = simulate(design, control_rate=args.control_rate, treatment_rate=args.treatment_rate,
                   peek_every=args.peek_every, runs=args.runs, method=args.method, seed=args.seed)
    summary = summarize(sim, design, control_rate=args.control_rate, treatment_rate=args.treatment_rate)
    result = {
        "method": args.method, "control_rate": args.control_rate, "treatment_rate": args.treatment_rate,
        "peek_every": args.peek_every, "max_samples": args.max_samples, "alpha": args.alpha, "seed": args.seed,
        "hypothesis": args.hypothesis, **summary, "seconds": round(time.perf_counter() - started, 3),
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write("".join(f"{key:>22}: {value}\n" for key, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
