"""One row's scores per category with their intervals, its overall, answer length and cost.

The overall score of a row is computed here and only here: the mean of its category means (every
category weighs the same, `judge/overall`), with the stratified interval of `statistics`. The
challenger is picked with this figure (gate.pick_challenger).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from selfguided.components.evaluation.rows import Item, ParsedRow, RowJudgments
from selfguided.components.evaluation.statistics import (
    EMPTY, MIN_CATEGORY_QUESTIONS, Estimate, as_float, cluster_mean, clusters, jsonable, stratified_mean,
)
from selfguided.components.judging.rules import SCORE_NAMES


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class Correlation:
    r: float
    p: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"r": self.r, "p": self.p, "n": self.n})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Correlation | None:
        return None if d is None else cls(as_float(d["r"]), as_float(d["p"]), int(d["n"]))


@dataclass
class CategorySummary:
    """One row's scores in one category: `scores` maps each criterion and "overall" to its Estimate."""

    category: str
    seen: bool | None
    n_failed: int
    scores: dict[str, Estimate]

    @property
    def overall(self) -> Estimate:
        return self.scores["overall"]

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "seen": self.seen, "n_failed": self.n_failed,
                "scores": {k: v.to_dict() for k, v in self.scores.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategorySummary:
        return cls(d["category"], d["seen"], int(d["n_failed"]),
                   {k: Estimate.from_dict(v) for k, v in d["scores"].items()})


@dataclass
class RowSummary:
    row: str
    row_kind: str
    base_model: str
    arm: str
    judge: str
    answers: int
    generate_seconds: float
    llm_cost_usd: float
    n_judgments: int
    n_failed: int
    categories: dict[str, CategorySummary]
    overall: Estimate
    seen: Estimate | None
    unseen: Estimate | None
    mean_chars: float | None
    length_pearson: Correlation | None
    length_spearman: Correlation | None
    usd_per_1000_answers: float | None
    cost_basis: str
    length_points: list[list[float]] = field(default_factory=list)  # [answer_chars, score] per scored item
    failure_reasons: dict[str, int] = field(default_factory=dict)
    replicate: int = 0

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "row": self.row, "row_kind": self.row_kind, "base_model": self.base_model, "arm": self.arm,
            "judge": self.judge, "answers": self.answers, "generate_seconds": self.generate_seconds,
            "llm_cost_usd": self.llm_cost_usd, "n_judgments": self.n_judgments, "n_failed": self.n_failed,
            "categories": {k: v.to_dict() for k, v in self.categories.items()},
            "overall": self.overall.to_dict(),
            "seen": self.seen.to_dict() if self.seen else None,
            "unseen": self.unseen.to_dict() if self.unseen else None,
            "mean_chars": self.mean_chars,
            "length_pearson": self.length_pearson.to_dict() if self.length_pearson else None,
            "length_spearman": self.length_spearman.to_dict() if self.length_spearman else None,
            "usd_per_1000_answers": self.usd_per_1000_answers, "cost_basis": self.cost_basis,
            "length_points": self.length_points, "failure_reasons": self.failure_reasons,
            "replicate": self.replicate,
        })

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RowSummary:
        return cls(
            row=d["row"], row_kind=d["row_kind"], base_model=d["base_model"], arm=d["arm"], judge=d["judge"],
            answers=int(d["answers"]), generate_seconds=as_float(d["generate_seconds"]),
            llm_cost_usd=as_float(d["llm_cost_usd"]), n_judgments=int(d["n_judgments"]), n_failed=int(d["n_failed"]),
            categories={k: CategorySummary.from_dict(v) for k, v in d["categories"].items()},
            overall=Estimate.from_dict(d["overall"]),
            seen=Estimate.from_dict(d["seen"]) if d.get("seen") else None,
            unseen=Estimate.from_dict(d["unseen"]) if d.get("unseen") else None,
            mean_chars=_opt(d.get("mean_chars")),
            length_pearson=Correlation.from_dict(d.get("length_pearson")),
            length_spearman=Correlation.from_dict(d.get("length_spearman")),
            usd_per_1000_answers=_opt(d.get("usd_per_1000_answers")), cost_basis=d.get("cost_basis", ""),
            length_points=[[float(a), float(b)] for a, b in d.get("length_points", [])],
            failure_reasons=dict(d.get("failure_reasons", {})), replicate=int(d.get("replicate", 0)),
        )


def usd_per_1000_answers(row: RowJudgments, gpu_hour_usd: float = 0.0) -> tuple[float | None, str]:
    """USD per 1000 answers and how it was measured; None when it cannot be measured.

    Teacher rows: the API cost of their answers (None when 0, i.e. not reported). Other rows: the
    generate step's measured seconds at `gpu_hour_usd` per hour (None when either is 0).
    """
    answers = row.answers if row.answers > 0 else len(row.judgments)
    if answers <= 0:
        return None, "no answers"
    if row.row_kind == "teacher":
        if row.llm_cost_usd > 0:
            return row.llm_cost_usd / answers * 1000, "LLM API usage"
        return None, "API cost not reported"
    if gpu_hour_usd > 0 and row.generate_seconds > 0:
        return row.generate_seconds / 3600 * gpu_hour_usd / answers * 1000, f"generate time at ${gpu_hour_usd:g}/GPU-hour"
    return None, "set gpu_hour_usd" if row.generate_seconds > 0 else "generate time unknown"


def _correlation(fn: Callable, x: np.ndarray, y: np.ndarray) -> Correlation | None:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fn(x, y)
    return Correlation(float(result.statistic), float(result.pvalue), int(x.size))


def score_clusters(items: Sequence[Item], name: str) -> np.ndarray:
    """Per question [sum, count] of one score (a criterion or "overall") over its items."""
    return clusters([(it.question, it.score if name == "overall" else it.criteria[name])
                     for it in items if name == "overall" or name in it.criteria])


def summarise_row(row: RowJudgments, parsed: ParsedRow, categories: Sequence[str], seen: Mapping[str, bool | None],
                  *, gpu_hour_usd: float = 0.0, min_questions: int = MIN_CATEGORY_QUESTIONS) -> RowSummary:
    """Per category (in `categories` order) each criterion and overall with its interval; the row's
    overall, seen and unseen (stratified); length correlations; cost."""
    by_category = parsed.by_category()
    summaries: dict[str, CategorySummary] = {}
    overall_strata: dict[str, np.ndarray] = {}
    for category in categories:
        if category not in parsed.categories:
            continue
        scores = {}
        for name in SCORE_NAMES:
            strata = score_clusters(by_category.get(category, []), name)
            scores[name] = cluster_mean(strata, min_questions=min_questions)
            if name == "overall" and strata.shape[0]:
                overall_strata[category] = strata
        summaries[category] = CategorySummary(category, seen.get(category), parsed.failed.get(category, 0), scores)

    def stratified(cats: list[str]) -> Estimate:
        return stratified_mean([overall_strata[c] for c in cats], min_questions=min_questions)

    scored = list(overall_strata)
    seen_cats = [c for c in scored if seen.get(c) is True]
    unseen_cats = [c for c in scored if seen.get(c) is False]
    points = [(it.chars, it.score) for it in parsed.items.values() if it.chars is not None]
    chars = np.array([p[0] for p in points], dtype=float)
    values = np.array([p[1] for p in points], dtype=float)
    cost, basis = usd_per_1000_answers(row, gpu_hour_usd)
    from scipy import stats

    return RowSummary(
        row=row.row, row_kind=row.row_kind, base_model=row.base_model, arm=row.arm, judge=row.judge,
        answers=row.answers, generate_seconds=float(row.generate_seconds), llm_cost_usd=float(row.llm_cost_usd),
        n_judgments=parsed.n_judgments, n_failed=sum(parsed.failed.values()), categories=summaries,
        overall=stratified(scored) if scored else EMPTY,
        seen=stratified(seen_cats) if seen_cats else None,
        unseen=stratified(unseen_cats) if unseen_cats else None,
        mean_chars=float(chars.mean()) if chars.size else None,
        length_pearson=_correlation(stats.pearsonr, chars, values),
        length_spearman=_correlation(stats.spearmanr, chars, values),
        usd_per_1000_answers=cost, cost_basis=basis,
        length_points=[[float(c), float(s)] for c, s in points],
        failure_reasons=dict(parsed.failure_reasons), replicate=row.replicate,
    )


_ARM_ORDER = {"control": 0, "unscored": 1, "self_guided": 2}


def ordered_rows(rows: Sequence[RowSummary]) -> list[RowSummary]:
    """Table order: teachers; per base model (first appearance) its base row, then control, unscored,
    self_guided and other arms; champions; anything else."""
    out: list[RowSummary] = [r for r in rows if r.row_kind == "teacher"]
    bases = list(dict.fromkeys(r.base_model for r in rows if r.row_kind in ("base", "trained")))
    for base in bases:
        out += [r for r in rows if r.row_kind == "base" and r.base_model == base]
        trained = [r for r in rows if r.row_kind == "trained" and r.base_model == base]
        out += sorted(trained, key=lambda r: (_ARM_ORDER.get(r.arm, len(_ARM_ORDER)), r.replicate))
    out += [r for r in rows if r.row_kind == "champion"]
    return out + [r for r in rows if r not in out]


def column_label(category: str, seen: bool | None) -> str:
    return f"{category} (unseen)" if seen is False else category
