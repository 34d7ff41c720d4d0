"""The promotion gate's vocabulary: its settings (`PromotionGate`), its verdict (`GateDecision`) and the
challenger it judges (`Challenger`). The rule that uses them is gate.py; the rules outside the scores
are gate_rules.py; the compare result carries them to register (compare_result.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from selfguided.components.evaluation.statistics import MIN_CATEGORY_QUESTIONS, as_float, jsonable


@dataclass(frozen=True)
class PromotionGate:
    """When a challenger replaces the champion (scores on the judge's 1-10 scale).

    min_improvement: the one-sided lower confidence bound of the overall paired difference must
        exceed it (0: any credible improvement).
    promotion_tolerance: every voting category must show its paired difference above
        -promotion_tolerance (`noninferiority_alpha`, `category_rule`), or the promotion is blocked.
    min_paired_questions: shared questions (not (question, turn) pairs) needed to compare at all.
    min_category_questions: questions a category needs to get an interval and a vote in the
        per-category rule; smaller ones show their mean and feed the overall only.
    alpha: the one-sided level of the overall test, split over the candidate arms (Bonferroni), and
        of the Holm family of the per-category rule. 0.02, not 0.025: on discrete, clipped judge
        scores the t approximation ran about 0.1-0.3 points above its nominal rate in the layouts
        with 1- to 3-question categories, and the gate is meant to promote noise at most 2.5% of the
        time (benchmarks/gate_simulation.py measures it).
    """

    min_improvement: float = 0.0
    promotion_tolerance: float = 0.25
    min_paired_questions: int = 20
    min_category_questions: int = MIN_CATEGORY_QUESTIONS
    alpha: float = 0.02
    noninferiority_alpha: float = 0.6
    """The per-category rule (issue 28): a voting category must show it is within -promotion_tolerance
    of the bar, its one-sided (1 - noninferiority_alpha) bound above -promotion_tolerance. Below 0.5
    a lower confidence bound; at 0.5 its paired difference itself; at 0.6 (the default) it blocks
    when it is worse than -promotion_tolerance at 60% confidence (its one-sided 60% upper bound at or
    below it). Chosen by benchmarks/gate_simulation.py --blocks rules: at 0.5, 8 categories of 10
    questions each passing at about 98.8% left the power at a true +0.5 on 80 x 2 at 90%; at 0.6 it
    is 93.4% while a -1.0 regression in one 10-question category is still blocked 98.0% of the time
    (87.8% when the big categories are 4x noisier; 500 runs each, docs/evaluation.md); a stricter
    level costs that power."""
    category_rule: str = "non_inferior"
    """`non_inferior` (the rule above) or `credibly_worse` (the rule before issue 28, kept to measure
    against: a category blocks only when credibly worse, Holm-adjusted at alpha)."""

    def __post_init__(self) -> None:
        for name in ("min_improvement", "promotion_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PromotionGate.{name} must be a finite number >= 0, got {value}")
        if self.min_paired_questions < 1:
            raise ValueError(f"PromotionGate.min_paired_questions must be >= 1, got {self.min_paired_questions}")
        if self.min_category_questions < 2:
            raise ValueError(f"PromotionGate.min_category_questions must be >= 2, got {self.min_category_questions}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"PromotionGate.alpha must lie in (0, 0.5), got {self.alpha}")
        if not 0 < self.noninferiority_alpha < 1:
            raise ValueError(f"PromotionGate.noninferiority_alpha must lie in (0, 1), got {self.noninferiority_alpha}")
        if self.category_rule not in ("non_inferior", "credibly_worse"):
            raise ValueError(f"PromotionGate.category_rule must be non_inferior or credibly_worse, got "
                             f"{self.category_rule!r}")


@dataclass
class GateDecision:
    """The verdict, one sentence per check (blocking ones first), and the figures behind them."""

    promote: bool
    reasons: list[str]
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"promote": self.promote, "reasons": self.reasons, "figures": self.figures})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateDecision:
        return cls(bool(d["promote"]), list(d["reasons"]), dict(d.get("figures", {})))


@dataclass
class Challenger:
    """The run's best candidate arm: its replicate rows, and the one registered as the challenger.

    row: the replicate promoted when the arm passes (its best-scoring replicate; the only one when
        trained once). n_candidates: candidate arms it was picked from (the gate's Bonferroni k).
    """

    base_model: str
    arm: str
    rows: list[str]
    row: str
    overall: float
    n_candidates: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"row": self.row, "base_model": self.base_model, "arm": self.arm, "rows": self.rows,
                         "overall": self.overall, "n_candidates": self.n_candidates})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Challenger:
        return cls(d["base_model"], d["arm"], list(d["rows"]), d["row"], as_float(d["overall"]), int(d["n_candidates"]))
