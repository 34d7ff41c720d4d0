"""Power: the smallest difference a run could have detected, and the questions (and seeds) a target needs.

For a paired comparison (the challenger against its bar), per category and overall:

- *minimal detectable difference* (MDD): the smallest true difference the gate's one-sided test
  detects with 80% power at this run's number of questions and observed variance,
  (t_{1-alpha} + t_{0.8}) * se; overall at the gate's alpha / k, per category at 0.025;
- *questions needed* for a target difference (0.5 points by default), the categories keeping their
  proportions: the standard error's question part shrinks as 1/sqrt(questions); with training-seed
  replicates the seed part, seed_sd^2 / K, does not, so the planner also says how many seeds.

`plan_lines` is what `selfguided plan-eval --from-run RUN_ID --delta 0.5` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from selfguided.components.evaluation.paired import PairedComparison, PairedDiff
from selfguided.components.evaluation.statistics import (
    POWER, Estimate, minimal_detectable_difference, questions_needed, t_quantile,
)

CATEGORY_ALPHA = 0.025  # one-sided, the level of a category's 95% interval
DEFAULT_DELTA = 0.5


@dataclass
class PowerLine:
    """One category (or `overall`) of a comparison: its questions, the MDD at 80% power, and the
    questions needed for `delta` with `replicates` training seeds (inf: more seeds are needed)."""

    what: str
    n_questions: int
    alpha: float
    mdd: float
    delta: float
    questions_for_delta: float
    replicates: int = 1


def _needed(diff: PairedDiff, k_run: int, alpha: float, delta: float, k_plan: int) -> float:
    """Questions for `delta` with `k_plan` seeds, from the run's question and seed variance parts."""
    est = diff.estimate
    if not math.isfinite(diff.seed_se) or k_run < 2:
        return questions_needed(est, delta, alpha) if k_plan == 1 or not math.isfinite(diff.seed_se) else math.nan
    if not (math.isfinite(est.se) and est.n_questions > 0):
        return math.nan
    seed_var_one = diff.seed_se ** 2 * k_run  # variance of one seed's estimate
    question_var_one = max(0.0, est.se ** 2 - diff.seed_se ** 2) * est.n_questions  # at one question
    z = t_quantile(1 - alpha, est.df) + t_quantile(POWER, est.df)
    room = (delta / z) ** 2 - seed_var_one / k_plan
    if room <= 0:
        return math.inf
    return float(math.ceil(max(2.0, question_var_one / room)))


def power_lines(pair: PairedComparison, *, overall_alpha: float, delta: float = DEFAULT_DELTA,
                replicates: int | None = None) -> list[PowerLine]:
    """Per category and overall: MDD at 80% power and questions needed for `delta` (at `replicates`
    seeds; default: as many as the run had)."""
    k_plan = replicates or pair.replicates
    out = []
    for what, diff, alpha in [*((c, d, CATEGORY_ALPHA) for c, d in pair.categories.items()),
                              ("overall", pair.overall, overall_alpha)]:
        est: Estimate = diff.estimate
        out.append(PowerLine(what, est.n_questions, alpha, minimal_detectable_difference(est, alpha), delta,
                             _needed(diff, pair.replicates, alpha, delta, k_plan), k_plan))
    return out


def _number(value: float, digits: int = 2) -> str:
    if math.isinf(value):
        return "more seeds needed"
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}" if digits else f"{value:.0f}"


POWER_HEADER = ["category", "questions", "detectable at 80% power", "questions for {delta:g} points"]


def power_table(lines: Sequence[PowerLine]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the report's power table."""
    delta = lines[0].delta if lines else DEFAULT_DELTA
    header = [h.format(delta=delta) for h in POWER_HEADER]
    return header, [[line.what, str(line.n_questions), _number(line.mdd), _number(line.questions_for_delta, 0)]
                    for line in lines]


def plan_lines(pair: PairedComparison, *, overall_alpha: float, delta: float,
               replicate_options: Sequence[int] = (1, 2, 4)) -> list[str]:
    """What plan-eval prints: this run's power and the questions needed for `delta` at 1, 2, 4 seeds."""
    lines = power_lines(pair, overall_alpha=overall_alpha, delta=delta)
    overall = lines[-1]
    out = [f"{pair.label}: {pair.n_questions} shared questions, {pair.replicates} training seed(s)",
           f"  smallest overall difference detectable at 80% power (one-sided alpha {overall_alpha:g}): "
           f"{_number(overall.mdd)}"]
    for line in lines[:-1]:
        out.append(f"  {line.what}: n={line.n_questions}, detectable {_number(line.mdd)}, "
                   f"questions for {delta:g}: {_number(line.questions_for_delta, 0)}")
    if pair.replicates >= 2 and math.isfinite(pair.overall.seed_se):
        for k in replicate_options:
            need = _needed(pair.overall, pair.replicates, overall_alpha, delta, k)
            out.append(f"  overall {delta:g} points with {k} seed(s): {_number(need, 0)} questions")
    else:
        out.append(f"  overall {delta:g} points: {_number(overall.questions_for_delta, 0)} questions "
                   "(one training seed: the seed-to-seed spread is not measured; run with --replicates 2 to plan seeds)")
    return out
