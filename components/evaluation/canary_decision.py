"""The canary's verdict on live traffic: roll back, promote to 100%, or wait for more answers.

The monitor judges a sample of production traces (components/registry/production.py: tag
`deployment` = stable | canary) with the jury and hands the scores here. Canary and stable answered
different requests, so the comparison is UNPAIRED, per category:

- each side's mean with its t interval on answer clusters (statistics.cluster_mean: one cluster per
  answer, several jury scores of one answer share it);
- the difference canary - stable with Welch's standard error sqrt(se_c^2 + se_s^2) and the
  Welch-Satterthwaite df (statistics.combine);
- a category *votes* once both sides have `min_category_answers` answers; smaller ones are listed
  and wait.

Rules (scores on the judge's 1-10 scale, `tolerance` on that scale):

- **rollback**: some voting category is credibly worse than stable by more than the tolerance: its
  one-sided p of "difference >= -tolerance" is below alpha / (voting categories) (Bonferroni: the
  family of categories is tested at alpha);
- **promote**: no rollback, at least `min_canary_answers` canary answers judged, and every voting
  category non-inferior: its one-sided (1 - alpha) lower bound above -tolerance (an
  intersection-union test: every category must pass on its own, no multiplicity correction needed);
- **wait** otherwise (too few answers, or intervals still too wide to tell). A small regression
  (within the tolerance) is never rolled back and never promoted either: it waits; a person
  decides with `selfguided canary rollback` if it waits too long.

The monitor looks again and again while the canary runs; every look is another chance for a false
rollback. benchmarks/canary_simulation.py measures the rates of the rule as it is used (repeated
looks, judge-like scores) and tests/test_canary.py checks them loosely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from selfguided.components.evaluation.statistics import (
    CONFIDENCE, Estimate, cluster_mean, clusters, combine, jsonable, p_below, t_quantile,
)

ROLLBACK, PROMOTE, WAIT = "rollback", "promote", "wait"
STABLE, CANARY = "stable", "canary"  # the values of registry/production.py's `deployment` tag


class CanaryScore(NamedTuple):
    """One jury score of one served answer. `answer_id` (the trace id) groups the scores of several
    judges of one answer into one cluster; "" makes the score its own answer."""

    deployment: str  # "stable" | "canary"
    category: str
    score: float
    answer_id: str = ""


@dataclass(frozen=True)
class CanaryPolicy:
    """When the canary is judged.

    tolerance: how much worse than stable (judge points, 1-10 scale) a category may be: a credible
        regression beyond it rolls back; promotion needs every voting category's lower bound above
        -tolerance. 0.5 by default: half a point, twice the offline gate's promotion_tolerance,
        since live answers are unpaired and a canary sees few of them.
    alpha: one-sided level of both tests (split over the voting categories for the rollback test).
    min_category_answers: answers (each side) a category needs to vote.
    min_canary_answers: canary answers judged (all categories) before a promotion.
    """

    tolerance: float = 0.5
    alpha: float = 0.05
    min_category_answers: int = 20
    min_canary_answers: int = 100

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"CanaryPolicy.tolerance must be a finite number >= 0, got {self.tolerance}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"CanaryPolicy.alpha must lie in (0, 0.5), got {self.alpha}")
        if self.min_category_answers < 2:
            raise ValueError(f"CanaryPolicy.min_category_answers must be >= 2, got {self.min_category_answers}")
        if self.min_canary_answers < 1:
            raise ValueError(f"CanaryPolicy.min_canary_answers must be >= 1, got {self.min_canary_answers}")


@dataclass
class CategoryComparison:
    """Canary vs stable in one category: both sides' means and their Welch difference."""

    category: str
    canary: Estimate
    stable: Estimate
    difference: Estimate  # canary - stable, Welch se and df; NaN ends when it cannot be formed
    votes: bool
    p_worse: float = math.nan  # one-sided p of "difference >= -tolerance" (small: credibly worse)
    lower_bound: float = math.nan  # one-sided (1 - alpha) lower bound of the difference

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"category": self.category, "canary": self.canary.to_dict(), "stable": self.stable.to_dict(),
                         "difference": self.difference.to_dict(), "votes": self.votes, "p_worse": self.p_worse,
                         "lower_bound": self.lower_bound})


@dataclass
class CanaryDecision:
    """The verdict (`action`: rollback | promote | wait), one sentence per reason (the deciding ones
    first), and the per-category figures behind it."""

    action: str
    reasons: list[str]
    categories: list[CategoryComparison] = field(default_factory=list)
    canary_answers: int = 0
    stable_answers: int = 0
    policy: CanaryPolicy = field(default_factory=CanaryPolicy)

    def line(self) -> str:
        return f"canary: {self.action}: {self.reasons[0]}" if self.reasons else f"canary: {self.action}"

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"action": self.action, "reasons": self.reasons, "canary_answers": self.canary_answers,
                         "stable_answers": self.stable_answers, "policy": self.policy.__dict__,
                         "categories": [c.to_dict() for c in self.categories]})


def welch_difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b for independent samples: Welch's standard error and Welch-Satterthwaite df (95% interval
    when both sides have a spread); NaN se when either side has none."""
    mean = a.mean - b.mean
    if not (math.isfinite(a.se) and math.isfinite(b.se) and a.df > 0 and b.df > 0) or a.se + b.se == 0:
        return Estimate(mean, math.nan, math.nan, a.n + b.n, a.n_questions + b.n_questions)
    variance, df = combine([(a.se ** 2, a.df), (b.se ** 2, b.df)])
    se = math.sqrt(variance)
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, df) * se
    return Estimate(mean, mean - half, mean + half, a.n + b.n, a.n_questions + b.n_questions, se, df)


def _by_category(scores: Iterable[CanaryScore]) -> dict[str, dict[str, list[tuple[str, float]]]]:
    grouped: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for i, s in enumerate(scores):
        if s.deployment not in (STABLE, CANARY):
            raise ValueError(f"deployment {s.deployment!r} is neither {STABLE!r} nor {CANARY!r}")
        score = float(s.score)
        if not math.isfinite(score):
            continue  # an unscored answer (the judge failed) carries no evidence
        sides = grouped.setdefault(s.category or "(none)", {STABLE: [], CANARY: []})
        sides[s.deployment].append((s.answer_id or f"#{i}", score))
    return grouped


def decide_canary(scores: Iterable[CanaryScore], policy: CanaryPolicy | None = None) -> CanaryDecision:
    """Roll back, promote or wait, from jury scores of canary and stable answers (module docstring)."""
    policy = policy or CanaryPolicy()
    grouped = _by_category(scores)
    comparisons: list[CategoryComparison] = []
    for category in sorted(grouped):
        canary = cluster_mean(clusters(grouped[category][CANARY]), min_questions=2)
        stable = cluster_mean(clusters(grouped[category][STABLE]), min_questions=2)
        diff = welch_difference(canary, stable)
        votes = min(canary.n_questions, stable.n_questions) >= policy.min_category_answers and math.isfinite(diff.se)
        comparisons.append(CategoryComparison(category, canary, stable, diff, votes))
    voting = [c for c in comparisons if c.votes]
    for c in voting:
        c.p_worse = p_below(c.difference, -policy.tolerance)
        c.lower_bound = c.difference.lower_bound(policy.alpha)
    n_canary = sum(c.canary.n_questions for c in comparisons)
    n_stable = sum(c.stable.n_questions for c in comparisons)
    decision = CanaryDecision(WAIT, [], comparisons, n_canary, n_stable, policy)
    waiting = [f"{c.category} (canary {c.canary.n_questions}, stable {c.stable.n_questions} answers)"
               for c in comparisons if not c.votes]
    family = max(1, len(voting))
    worse = [c for c in voting if c.p_worse < policy.alpha / family]
    if worse:
        decision.action = ROLLBACK
        decision.reasons = [f"{c.category}: canary {c.canary.mean:.2f} vs stable {c.stable.mean:.2f}, difference "
                            f"{_signed(c.difference.mean)} [95% CI {_signed(c.difference.ci_low)}, "
                            f"{_signed(c.difference.ci_high)}], credibly worse than -{policy.tolerance:g} "
                            f"(p = {c.p_worse:.2g} < {policy.alpha:g}/{family})" for c in worse]
        return decision
    if not voting:
        decision.reasons = [f"no category has {policy.min_category_answers} judged answers on both sides yet"
                            + (f": {'; '.join(waiting)}" if waiting else "")]
        return decision
    unsure = [c for c in voting if not c.lower_bound > -policy.tolerance]
    if n_canary < policy.min_canary_answers:
        decision.reasons.append(f"{n_canary} canary answers judged, {policy.min_canary_answers} needed to promote")
    decision.reasons += [f"{c.category}: difference {_signed(c.difference.mean)}, its one-sided "
                         f"{100 * (1 - policy.alpha):g}% lower bound {_signed(c.lower_bound)} is not above "
                         f"-{policy.tolerance:g} yet" for c in unsure]
    if decision.reasons:
        decision.reasons += [f"not voting yet: {'; '.join(waiting)}"] if waiting else []
        return decision
    decision.action = PROMOTE
    decision.reasons = [f"every voting category is within -{policy.tolerance:g} of stable at "
                        f"{100 * (1 - policy.alpha):g}% ({n_canary} canary answers): "
                        + ", ".join(f"{c.category} {_signed(c.difference.mean)} (bound {_signed(c.lower_bound)})"
                                    for c in voting)]
    if waiting:
        decision.reasons.append(f"not voting (too few answers): {'; '.join(waiting)}")
    return decision


def _signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"
