"""How often the promotion gate promotes noise, and how often it finds a real improvement.

Feeds the shipped gate (`evaluation.gate.evaluate_run`: challenger pick, paired comparison with the
champion row, decision) judge-like scores in the test-set layouts the pipeline produces, with no
true difference between the candidate arms and the champion (false promotion) and with a true
improvement of +0.5 and +1.0 points (power). The score model is issue 18's: question effect SD 1.2,
turn effect SD 0.5, answer noise SD 1.0, four integer criteria (each with its own noise SD 0.5)
averaged and clipped to 1-10 (`statistics.judge_scores`).

    python benchmarks/gate_simulation.py              # the README's table (2000 runs per cell)
    python benchmarks/gate_simulation.py --reps 50    # a smoke run

Prints the simulated coverage of the 95% intervals (one category of 2-40 questions; the overall of
each layout; twice --reps runs each), one line per (layout, arms, true difference), then the same with training-seed variance
(each training run's quality shifted by N(0, 0.3); the arm trained 1, 2 or 3 times, `--replicates`),
and a final line starting with RESULT: the largest false-promotion rate of the layouts and the upper
end of its 95% Clopper-Pearson interval, and the false-promotion rate under seed variance per number
of replicates.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np

from selfguided.components.evaluation.gate import PromotionGate, evaluate_run
from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.evaluation.statistics import QUESTION_SD, TURN_SD, judge_scores, simulated_coverage

LAYOUTS: dict[str, tuple[tuple[int, ...], int]] = {  # name: (questions per category, turns)
    "bundled sample questions, 6 x 7": ((7,) * 6, 1),
    "make run's hold-out, 14/14/3/2/3/5": ((14, 14, 3, 2, 3, 5), 1),
    "eval_fraction 0.1 on the bundled seed, 14/14/1/1/1": ((14, 14, 1, 1, 1), 1),
    "80 questions x 2 turns (8 x 10)": ((10,) * 8, 2),
}
JUDGE = "sim-judge/v1"


def simulate_rows(rng: np.random.Generator, layout: Sequence[int], turns: int, shifts: Sequence[float],
                  replicates: int = 1, seed_sd: float = 0.0) -> list[RowJudgments]:
    """The champion row and one trained row per arm (x replicates) on the same questions."""
    quality = [5.5 + rng.normal(0.0, QUESTION_SD, size=n)[:, None] + rng.normal(0.0, TURN_SD, size=(n, turns))
               for n in layout]

    def row(name: str, kind: str, shift: float, arm: str = "", replicate: int = 0) -> RowJudgments:
        judgments = []
        for c, q_turns in enumerate(quality):
            scores = judge_scores(rng, q_turns + shift)
            judgments += [{"question_id": f"c{c}-q{q}", "turn": t + 1, "category": f"cat{c}", "score": float(s)}
                          for q, per_turn in enumerate(scores) for t, s in enumerate(per_turn)]
        return RowJudgments(name, kind, judgments, base_model="sim", arm=arm, judge=JUDGE, replicate=replicate)

    rows = [row("champion", "champion", 0.0)]
    arms = ("self_guided", "unscored")
    for a, shift in enumerate(shifts):
        for r in range(replicates):
            seed_shift = rng.normal(0.0, seed_sd) if seed_sd else 0.0
            rows.append(row(f"sim/{arms[a]}" + (f"#{r}" if replicates > 1 else ""), "trained", shift + seed_shift,
                            arms[a], r))
    return rows


def promotion_rate(layout: Sequence[int], turns: int, shifts: Sequence[float], reps: int, seed: int,
                   gate: PromotionGate = PromotionGate(min_paired_questions=1), **kwargs) -> tuple[int, int]:
    """(promotions, runs): the shipped evaluate_run on `reps` simulated runs."""
    rng = np.random.default_rng(seed)
    promoted = 0
    for _ in range(reps):
        evaluation = evaluate_run(simulate_rows(rng, layout, turns, shifts, **kwargs), gate, existing_champion="1")
        promoted += evaluation.decision.promote
    return promoted, reps


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return low, high


def _row(label: str, effect: float, k: int, n: int) -> str:
    low, high = clopper_pearson(k, n)
    return f"| {label} | {effect:+.1f} | {k / n:.1%} | [{low:.1%}, {high:.1%}] |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="simulated runs per cell")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--effects", type=float, nargs="*", default=[0.0, 0.5, 1.0],
                        help="true improvements of the candidate arms (0 = no difference)")
    parser.add_argument("--blocks", nargs="*", default=["coverage", "layouts", "seeds"],
                        choices=["coverage", "layouts", "seeds"],
                        help="coverage: of the 95%% intervals (one category of n questions, and the overall of each "
                        "layout); layouts: the test-set layouts, one and two arms; seeds: training-seed variance "
                        "(SD --seed-sd) on the 6 x 7 layout, one arm trained 1, 2, 3 times (--replicates)")
    parser.add_argument("--seed-sd", type=float, default=0.3, help="SD of a training run's shift around its arm's mean")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    worst = (0.0, 0, 1)
    seeds_null: dict[int, float] = {}
    coverage: list[float] = []
    if "coverage" in args.blocks:
        print("| interval | questions | coverage of the 95% interval |")
        print("|---|---|---|")
        for n in (2, 3, 5, 7, 14, 40):
            coverage.append(simulated_coverage((n,), reps=2 * args.reps, seed=args.seed, min_questions=2))
            print(f"| one category | {n} | {coverage[-1]:.1%} |", flush=True)
        for name, (layout, turns) in LAYOUTS.items():
            coverage.append(simulated_coverage(layout, reps=2 * args.reps, seed=args.seed))
            note = " (one turn per question)" if turns > 1 else ""
            print(f"| overall, {name}{note} | {sum(layout)} | {coverage[-1]:.1%} |", flush=True)
        print()
    if "layouts" in args.blocks:
        print("| test-set layout | arms | true difference | promoted | 95% CI |")
        print("|---|---|---|---|---|")
        for i, (name, (layout, turns)) in enumerate(LAYOUTS.items()):
            for n_arms in (1, 2):
                for j, effect in enumerate(args.effects):
                    k, n = promotion_rate(layout, turns, [effect] * n_arms, args.reps,
                                          seed=args.seed * 1000 + i * 100 + n_arms * 10 + j)
                    print(_row(f"{name} | {n_arms}", effect, k, n), flush=True)
                    if effect == 0 and k / n >= worst[0]:
                        worst = (k / n, k, n)
    if "seeds" in args.blocks:
        print(f"\n| training seeds per arm (seed SD {args.seed_sd:g}, 6 x 7, one arm) | true difference | promoted "
              "| 95% CI |")
        print("|---|---|---|---|")
        for replicates in (1, 2, 3):
            for j, effect in enumerate(args.effects):
                k, n = promotion_rate((7,) * 6, 1, [effect], args.reps, seed=args.seed * 1000 + 900 + replicates * 10 + j,
                                      replicates=replicates, seed_sd=args.seed_sd)
                print(_row(str(replicates), effect, k, n), flush=True)
                if effect == 0:
                    seeds_null[replicates] = k / n
    rate, k, n = worst
    figures = [f"false_promotion_max={rate:.4f} ci_high={clopper_pearson(k, n)[1]:.4f}"] if "layouts" in args.blocks else []
    figures += [f"coverage_min={min(coverage):.4f}"] if coverage else []
    figures += [f"seed_sd_false_promotion_k{r}={v:.4f}" for r, v in seeds_null.items()]
    print(f"RESULT {' '.join(figures)} reps={args.reps} seconds={time.perf_counter() - start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
