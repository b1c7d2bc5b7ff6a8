"""A/B test statistics report: the issue-5 goals side by side with naive peeking, and a plot of p-value paths.

Runs `medserve abtest simulate`'s engine (`abtestsim.simulate`, the reconciler's decision function
vectorised over runs) for each goal with the sequential method and with naive peeking, prints a
table (or JSON), and draws always-valid p-value paths of a few A/A and A/B runs next to the naive
z-test's p-values, to `benchmarks/abtest-pvalue-paths.png` by default.

    python benchmarks/abtest_report.py                 # table + plot, 10,000 runs per goal
    python benchmarks/abtest_report.py --json --runs 2000 --plot /tmp/paths.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and the sandbox have no display
import matplotlib.pyplot as plt
import numpy as np
from medserve_operator.stats import abtestsim
from medserve_operator.stats.sequential import Design

HERE = Path(__file__).resolve().parent

# (label, control rate, treatment rate, max samples per arm, goal)
GOALS = [
    ("A/A, 10,000/arm", 0.80, 0.80, 10_000, "sequential false conclusions <= 5%, naive >= 25%"),
    ("0.80 vs 0.82, 6,029/arm", 0.80, 0.82, 6_029, "power >= 75%"),
    ("0.80 vs 0.84, 6,029/arm", 0.80, 0.84, 6_029, "median stop <= 40% of N"),
]


def run_goals(runs: int, seed: int, peek_every: int) -> list[dict[str, Any]]:
    rows = []
    for label, p, q, n, goal in GOALS:
        for method in abtestsim.METHODS:
            started = time.perf_counter()
            design = Design(max_samples=n)
            sim = abtestsim.simulate(design, control_rate=p, treatment_rate=q, peek_every=peek_every,
                                     runs=runs, method=method, seed=seed)
            summary = abtestsim.summarize(sim, design, control_rate=p, treatment_rate=q)
            rows.append({"case": label, "goal": goal, "method": method, **summary,
                         "seconds": round(time.perf_counter() - started, 2)})
    return rows


def plot(path: Path, *, seed: int, peek_every: int, paths_per_case: int = 15) -> None:
    cases = [
        ("A/A (0.80 vs 0.80), always-valid p", 0.80, 0.80, 10_000, "sequential"),
        ("A/A (0.80 vs 0.80), naive z-test p at each look", 0.80, 0.80, 10_000, "naive"),
        ("A/B (0.80 vs 0.82 and 0.84), always-valid p", 0.80, 0.82, 6_029, "sequential"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), sharey=True)
    for ax, (title, p, q, n, method) in zip(axes, cases, strict=True):
        treatments = [(q, "tab:blue")] + ([(0.84, "tab:green")] if q != p else [])
        for rate, colour in treatments:
            design = Design(max_samples=n)
            sim = abtestsim.simulate(design, control_rate=p, treatment_rate=rate, peek_every=peek_every,
                                     runs=paths_per_case, method=method, seed=seed, keep_paths=True)
            assert sim.paths is not None
            for k in range(paths_per_case):
                # Draw each run up to where it stopped.
                upto = sim.looks <= sim.stop[k]
                ax.plot(sim.looks[upto], np.maximum(sim.paths[upto, k], 1e-4), color=colour, alpha=0.6, lw=1)
            if q != p:
                ax.plot([], [], color=colour, label=f"treatment {rate:.2f}")
        ax.axhline(design.alpha, color="tab:red", ls="--", lw=1, label="alpha = 0.05")
        ax.axvline(n, color="grey", ls=":", lw=1, label=f"max samples N = {n:,}")
        ax.set(title=title, xlabel="samples per arm", yscale="log", ylim=(1e-4, 1.5))
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("p-value")
    fig.suptitle(f"p-value paths, a look every {peek_every} samples per arm (seed {seed}); "
                 "a run stops where its path ends")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--peek-every", type=int, default=100)
    parser.add_argument("--plot", type=Path, default=HERE / "abtest-pvalue-paths.png")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run_goals(args.runs, args.seed, args.peek_every)
    plot(args.plot, seed=args.seed, peek_every=args.peek_every)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'case':<26}{'method':<12}{'conclusions':>12}{'power':>8}{'median stop':>13}{'mean stop':>11}{'s':>7}")
    for r in rows:
        power = f"{r['power']:.3f}" if "power" in r else "-"
        print(f"{r['case']:<26}{r['method']:<12}{r['conclusion_rate']:>12.4f}{power:>8}"
              f"{r['median_stop']:>13.0f}{r['mean_stop']:>11.0f}{r['seconds']:>7.2f}")
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
