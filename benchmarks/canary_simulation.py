"""Error rates of the canary decision (components/evaluation/canary_decision.py) as the monitor uses it:
looking again after every batch of judged answers until it rolls back or promotes.

Live traffic model: every answer is a different prompt, quality 5.5 + N(0, QUESTION_SD) (issue 18's
question spread), plus the canary's shift in its category; the jury's score is
statistics.judge_scores (integer criteria, rounded, clipped to 1-10). Per look each category gains
`--step` canary answers and `--stable-ratio` times as many stable ones (the monitor samples stable
traces at that ratio); looks go on up to `--max-canary` canary answers per category. A run ends
at the first rollback or promotion; "wait" = still undecided at the last look.

    python benchmarks/canary_simulation.py                 # 400 runs per scenario
    python benchmarks/canary_simulation.py --quick         # 40 runs: the smoke test's setting

Prints one table row per scenario and a final RESULT line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


from selfguided.components.evaluation.canary_decision import (
    CANARY, PROMOTE, ROLLBACK, STABLE, WAIT, CanaryPolicy, CanaryScore, decide_canary,
)
from selfguided.components.evaluation.statistics import QUESTION_SD, judge_scores

CATEGORIES = ("brainstorming", "closed_qa", "generation", "rewrite", "summarization")
SCENARIOS = {
    "equal (no difference)": {},
    "one category -1.0": {"closed_qa": -1.0},
    "every category -0.25 (within tolerance)": {c: -0.25 for c in CATEGORIES},
    "one category -0.5 (at the tolerance)": {"closed_qa": -0.5},
}


def _answers(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    return judge_scores(rng, 5.5 + shift + rng.normal(0.0, QUESTION_SD, size=n))


def simulate_run(rng: np.random.Generator, shifts: dict[str, float], policy: CanaryPolicy, *, step: int,
                 max_canary: int, stable_ratio: int) -> tuple[str, int]:
    """(final action, canary answers per category when it was taken) of one canary rollout."""
    scores: list[CanaryScore] = []
    for looked in range(step, max_canary + 1, step):
        for category in CATEGORIES:
            scores += [CanaryScore(CANARY, category, s) for s in _answers(rng, step, shifts.get(category, 0.0))]
            scores += [CanaryScore(STABLE, category, s) for s in _answers(rng, step * stable_ratio, 0.0)]
        action = decide_canary(scores, policy).action
        if action != WAIT:
            return action, looked
    return WAIT, max_canary


def simulate(shifts: dict[str, float], *, reps: int, seed: int = 0, policy: CanaryPolicy | None = None,
             step: int = 10, max_canary: int = 100, stable_ratio: int = 5) -> dict[str, float]:
    """Share of runs ending in each action, and the mean canary answers per category at the decision."""
    policy = policy or CanaryPolicy()
    rng = np.random.default_rng(seed)
    ends = [simulate_run(rng, shifts, policy, step=step, max_canary=max_canary, stable_ratio=stable_ratio)
            for _ in range(reps)]
    out = {action: sum(a == action for a, _ in ends) / reps for action in (ROLLBACK, PROMOTE, WAIT)}
    out["mean_answers_at_end"] = float(np.mean([n for _, n in ends]))
    return out


def _ci(p: float, n: int) -> str:
    """Wilson 95% interval of a proportion, as text."""
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"[{100 * max(0.0, centre - half):.1f}, {100 * min(1.0, centre + half):.1f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=400, help="runs per scenario (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="40 runs per scenario (smoke test)")
    parser.add_argument("--random-seed", type=int, default=0, help="RNG seed (default: %(default)s)")
    parser.add_argument("--step", type=int, default=10, help="canary answers per category per look (default: %(default)s)")
    parser.add_argument("--max-canary", type=int, default=100,
                        help="canary answers per category at the last look (default: %(default)s)")
    parser.add_argument("--stable-ratio", type=int, default=5, help="stable answers per canary answer (default: %(default)s)")
    args = parser.parse_args(argv)
    reps = 40 if args.quick else args.reps
    policy = CanaryPolicy()
    print(f"canary decision, {len(CATEGORIES)} categories, looks every {args.step} canary answers per category "
          f"(stable x{args.stable_ratio}) up to {args.max_canary}; policy {policy}; {reps} runs per scenario, "
          f"seed {args.random_seed}\n")
    print("| scenario | rollback % [95% CI] | promote % [95% CI] | still waiting % | canary answers/category at the end |")
    print("|---|---|---|---|---|")
    started = time.perf_counter()
    figures = {}
    for i, (name, shifts) in enumerate(SCENARIOS.items()):
        r = simulate(shifts, reps=reps, seed=args.random_seed * 1000 + i, policy=policy, step=args.step,
                     max_canary=args.max_canary, stable_ratio=args.stable_ratio)
        figures[name] = r
        print(f"| {name} | {100 * r[ROLLBACK]:.1f} {_ci(r[ROLLBACK], reps)} | {100 * r[PROMOTE]:.1f} "
              f"{_ci(r[PROMOTE], reps)} | {100 * r[WAIT]:.1f} | {r['mean_answers_at_end']:.0f} |")
    equal, regressed = figures["equal (no difference)"], figures["one category -1.0"]
    print(f"\nRESULT false_rollback_when_equal={100 * equal[ROLLBACK]:.1f}% "
          f"regression_-1.0_promoted={100 * regressed[PROMOTE]:.1f}% "
          f"regression_-1.0_not_rolled_back_by_{args.max_canary}={100 * (regressed[WAIT] + regressed[PROMOTE]):.1f}% "
          f"reps={reps} seconds={time.perf_counter() - started:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
