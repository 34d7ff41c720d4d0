"""Paired differences A - B on the (question, turn) items both rows were scored on, and the run's Comparison.

- *Per category*: the mean paired difference with its t interval on question clusters (the turns of
  a question move together), the matching t-test p-value, Holm-adjusted across the categories of
  one comparison that have an interval (at least `min_category_questions` questions), and
  wins/ties/losses per item.
- *Overall*: the mean over categories of the category mean differences, its variance carrying
  every category (statistics.stratified_mean). With one replicate and 1-question categories the
  printed interval takes their term's df at its upper limit (statistics.SHOWN_LIMIT, Satterthwaite;
  Banerjee's bound covered 97.5-98.1% on 14/14/1/1/1 with 4x noisier big categories), the gate's
  bound Banerjee's df as before (`decision_df`): no decision changes.
- *Replicates* (A trained with several seeds): the difference of each item is the mean over A's
  replicates, its variance carrying the seed term with its K - 1 df (seeds.py). The printed 95%
  interval and the gate's one-sided bound take the seed term's df at different levels: with two
  seeds the interval covers about 95%, the bound (`PairedDiff.decision`) is seed-conservative, so
  that picking the best of two arms cannot promote noise. One replicate: exactly the plain paired
  difference.
- *Length*: the length-controlled difference is the intercept of the regression of the paired
  score difference on the paired log-length difference (the difference expected at equal answer
  length); overall with one common slope and one intercept per category, reported as the mean of
  the intercepts. Cluster-robust (CR1) standard errors over questions.

`compare_rows` summarises every row, picks the pairs to compare and returns the `Comparison`, the
compare step's typed result.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from selfguided.components.data.categories import category_order
from selfguided.components.evaluation.rows import ParsedRow, RowJudgments, parse_row
from selfguided.components.evaluation.statistics import (
    CONFIDENCE, EMPTY, MIN_CATEGORY_QUESTIONS, Estimate, as_float, cluster_mean, clusters, holm, jsonable,
    SHOWN_LIMIT, ols_contrast, stratified_mean, two_sided_p,
)
from selfguided.components.evaluation.seeds import replicate_noise, with_seed_variance
from selfguided.components.evaluation.summaries import RowSummary, summarise_row

TIE_EPSILON = 1e-6
SCHEMA = "selfguided.compare/v2"
_NAN = float("nan")


@dataclass
class PairedDiff:
    """A - B on shared (question, turn) items of one category (or overall).

    seed_se: the between-replicate part of the standard error (NaN with one replicate of A).
    decision_df: the df the gate's one-sided bound uses (the seed term at its SEED_DF_QUANTILE limit;
        one replicate: the 1-question categories' term by Banerjee's bound); NaN: the estimate's own.
    """

    estimate: Estimate
    p_value: float
    p_holm: float
    wins: int
    ties: int
    losses: int
    length_controlled: Estimate | None
    length_ratio: float = _NAN  # geometric mean of (chars_A + 1) / (chars_B + 1)
    length_extrapolated: bool = False  # equal length lies outside the observed log-length differences
    seed_se: float = _NAN
    decision_df: float = _NAN

    @property
    def decision(self) -> Estimate:
        """The estimate the gate decides on: the printed one, its df the seed-conservative `decision_df`
        where there is one (its 95% ends are the printed interval's, not recomputed)."""
        if not math.isfinite(self.decision_df):
            return self.estimate
        return replace(self.estimate, df=self.decision_df)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"estimate": self.estimate.to_dict(), "p_value": self.p_value, "p_holm": self.p_holm,
                         "wins": self.wins, "ties": self.ties, "losses": self.losses,
                         "length_controlled": self.length_controlled.to_dict() if self.length_controlled else None,
                         "length_ratio": self.length_ratio, "length_extrapolated": self.length_extrapolated,
                         "seed_se": self.seed_se, "decision_df": self.decision_df})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedDiff:
        lc = d.get("length_controlled")
        return cls(Estimate.from_dict(d["estimate"]), as_float(d["p_value"]), as_float(d["p_holm"]), int(d["wins"]),
                   int(d["ties"]), int(d["losses"]), Estimate.from_dict(lc) if lc else None,
                   as_float(d.get("length_ratio")), bool(d.get("length_extrapolated", False)),
                   as_float(d.get("seed_se")), as_float(d.get("decision_df")))


@dataclass
class PairedComparison:
    label: str
    row_a: str
    row_b: str
    same_judge: bool
    n_pairs: int  # shared scored (question, turn) items
    only_a: int  # items scored for A but not B
    only_b: int
    categories: dict[str, PairedDiff]
    overall: PairedDiff
    n_questions: int = 0  # shared questions
    replicates: int = 1  # A's training seeds averaged
    rows_a: list[str] = field(default_factory=list)  # A's rows (its replicates)
    missing: list[str] = field(default_factory=list)  # categories of A or B without shared items

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "row_a": self.row_a, "row_b": self.row_b, "same_judge": self.same_judge,
                "n_pairs": self.n_pairs, "only_a": self.only_a, "only_b": self.only_b,
                "categories": {k: v.to_dict() for k, v in self.categories.items()}, "overall": self.overall.to_dict(),
                "n_questions": self.n_questions, "replicates": self.replicates, "rows_a": self.rows_a,
                "missing": self.missing}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedComparison:
        return cls(d["label"], d["row_a"], d["row_b"], bool(d["same_judge"]), int(d["n_pairs"]), int(d["only_a"]),
                   int(d["only_b"]), {k: PairedDiff.from_dict(v) for k, v in d["categories"].items()},
                   PairedDiff.from_dict(d["overall"]), int(d.get("n_questions", 0)), int(d.get("replicates", 1)),
                   list(d.get("rows_a", [d["row_a"]])), list(d.get("missing", [])))


def _wtl(diffs: Sequence[float], eps: float) -> tuple[int, int, int]:
    d = np.asarray(diffs, dtype=float)
    ties = int(np.sum(np.abs(d) < eps))
    return int(np.sum(d >= eps)), ties, int(np.sum(d <= -eps))


def _length_fit(entries: list[tuple[str, float, float | None]], min_questions: int) -> Estimate | None:
    rows = [(q, d, x) for q, d, x in entries if x is not None]
    if len(rows) < 3:
        return None
    x = np.array([r[2] for r in rows])
    design = np.column_stack([np.ones(len(rows)), x]) if np.ptp(x) > 1e-9 else np.ones((len(rows), 1))
    contrast = np.array([1.0, 0.0])[: design.shape[1]]
    return ols_contrast(design, np.array([r[1] for r in rows]), np.array([r[0] for r in rows]), contrast,
                        min_questions=min_questions)


def _length_fit_overall(by_cat: list[list[tuple[str, float, float | None]]], min_questions: int) -> Estimate | None:
    rows = [(k, q, d, x) for k, entries in enumerate(by_cat) for q, d, x in entries if x is not None]
    if len(rows) < 3:
        return None
    k_cats = len(by_cat)
    dummies = np.zeros((len(rows), k_cats))
    dummies[np.arange(len(rows)), [r[0] for r in rows]] = 1.0
    x = np.array([r[3] for r in rows])
    design = np.column_stack([dummies, x]) if np.ptp(x) > 1e-9 else dummies
    contrast = np.concatenate([np.full(k_cats, 1.0 / k_cats), np.zeros(design.shape[1] - k_cats)])
    return ols_contrast(design, np.array([r[2] for r in rows]), np.array([f"{r[0]}\x1f{r[1]}" for r in rows]),
                        contrast, min_questions=min_questions)


def _length_shape(entries: list[tuple[str, float, float | None]]) -> tuple[float, bool]:
    xs = np.array([x for _, _, x in entries if x is not None])
    if xs.size == 0:
        return _NAN, False
    spread = 1e-9 + 1e-9 * float(np.abs(xs).max())
    return float(np.exp(xs.mean())), bool(xs.min() > spread or xs.max() < -spread)


def paired_comparison(a: Sequence[tuple[RowJudgments, ParsedRow]], b: tuple[RowJudgments, ParsedRow], label: str,
                      *, min_questions: int = MIN_CATEGORY_QUESTIONS,
                      tie_epsilon: float = TIE_EPSILON) -> PairedComparison:
    """A - B, A being one row or the replicates (training seeds) of one arm: see the module docstring.

    Items count as shared when every replicate of A and B have them scored."""
    (row_b, pb) = b
    keys = [k for k in a[0][1].items if k in pb.items and all(k in p.items for _, p in a[1:])]
    shared: dict[str, list[tuple[str, float, float | None]]] = defaultdict(list)
    per_rep: dict[str, list[list[tuple[str, float]]]] = defaultdict(lambda: [[] for _ in a])
    for key in keys:
        other = pb.items[key]
        diffs, xs = [], []
        for r, (_, pa) in enumerate(a):
            item = pa.items[key]
            diffs.append(item.score - other.score)
            per_rep[other.category][r].append((key[0], item.score - other.score))
            if item.chars is not None and other.chars is not None:
                xs.append(math.log(item.chars + 1) - math.log(other.chars + 1))
        x = float(np.mean(xs)) if len(xs) == len(a) else None
        shared[other.category].append((key[0], float(np.mean(diffs)), x))
    present = category_order([*(c for _, p in a for c in p.categories), *pb.categories])
    order = [c for c in present if c in shared]
    missing = [c for c in present if c not in shared]

    diffs: dict[str, PairedDiff] = {}
    strata = {c: clusters([(q, d) for q, d, _ in shared[c]]) for c in order}
    noise = replicate_noise(per_rep, order) if len(a) > 1 and order else {}
    for category in order:
        entries = shared[category]
        est = cluster_mean(strata[category], min_questions=min_questions)
        if len(a) > 1:
            est, seed_se, decision_df = with_seed_variance(
                est, [cluster_mean(clusters(reps)).mean for reps in per_rep[category]], est.has_interval,
                noise[category])
        else:
            seed_se = decision_df = _NAN
        p = two_sided_p(est) if est.has_interval else _NAN
        diffs[category] = PairedDiff(est, p, _NAN, *_wtl([d for _, d, _ in entries], tie_epsilon),
                                     _length_fit(entries, min_questions), *_length_shape(entries), seed_se=seed_se,
                                     decision_df=decision_df)
    for category, adjusted in zip(order, holm([diffs[c].p_value for c in order])):
        diffs[category].p_holm = adjusted

    all_entries = [e for c in order for e in shared[c]]
    if order:
        est = stratified_mean([strata[c] for c in order], min_questions=min_questions, skew_floor=False)
        seed_se = decision_df = _NAN
        if len(a) == 1:  # with 1-question categories the printed df is at the upper limit (else the same)
            shown = stratified_mean([strata[c] for c in order], min_questions=min_questions, skew_floor=False,
                                    limit=SHOWN_LIMIT)
            if shown.df != est.df:
                est, decision_df = shown, est.df
        if len(a) > 1:
            per_replicate = [stratified_mean([clusters(per_rep[c][r]) for c in order], min_questions=min_questions).mean
                             for r in range(len(a))]
            est, seed_se, decision_df = with_seed_variance(est, per_replicate, est.has_interval,
                                                            sum(noise.values()) / len(order) ** 2)
        overall_lc = None
        if all(any(x is not None for *_, x in shared[c]) for c in order):  # same categories as the difference
            overall_lc = _length_fit_overall([shared[c] for c in order], min_questions)
        overall = PairedDiff(est, two_sided_p(est), _NAN, *_wtl([d for _, d, _ in all_entries], tie_epsilon),
                             overall_lc, *_length_shape(all_entries), seed_se=seed_se, decision_df=decision_df)
    else:
        overall = PairedDiff(EMPTY, _NAN, _NAN, 0, 0, 0, None)
    judges = {row.judge for row, _ in a} | {row_b.judge}
    same_judge = len({j for j in judges if j}) <= 1
    n_questions = len({q for q, _ in keys})
    return PairedComparison(label, a[0][0].row if len(a) == 1 else arm_label(a[0][0]), row_b.row, same_judge,
                            len(keys), len(a[0][1].items) - len(keys), len(pb.items) - len(keys), diffs, overall,
                            n_questions, len(a), [row.row for row, _ in a], missing)


def arm_label(row: RowJudgments) -> str:
    """The name of an arm's replicates taken together: `<base model>/<arm>`."""
    return f"{row.base_model}/{row.arm}"


# ---------------------------------------------------------------------------------------------
# The comparison of all rows of a run
# ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Everything the compare step computed; `to_dict()` is its JSON output."""

    categories: list[str]
    seen: dict[str, bool | None]
    rows: list[RowSummary]
    pairs: list[PairedComparison]
    settings: dict[str, Any]

    def row(self, name: str) -> RowSummary:
        for summary in self.rows:
            if summary.row == name:
                return summary
        raise KeyError(f"no row named {name!r}; rows: {', '.join(r.row for r in self.rows)}")

    def pair(self, row_a: str, row_b: str) -> PairedComparison | None:
        return next((p for p in self.pairs if p.row_a == row_a and p.row_b == row_b), None)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"schema": SCHEMA, "categories": self.categories, "seen": self.seen,
                         "rows": [r.to_dict() for r in self.rows], "pairs": [p.to_dict() for p in self.pairs],
                         "settings": self.settings})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        if d.get("schema", SCHEMA) != SCHEMA:
            raise ValueError(f"not a {SCHEMA} comparison: schema {d.get('schema')!r}")
        return cls(list(d["categories"]), dict(d["seen"]), [RowSummary.from_dict(r) for r in d["rows"]],
                   [PairedComparison.from_dict(p) for p in d["pairs"]], dict(d["settings"]))


def replicate_groups(rows: Sequence[RowJudgments]) -> dict[tuple[str, str], list[RowJudgments]]:
    """Trained rows grouped by (base model, arm): the replicates (training seeds) of each arm, in row order."""
    groups: dict[tuple[str, str], list[RowJudgments]] = defaultdict(list)
    for r in rows:
        if r.row_kind == "trained":
            groups[(r.base_model, r.arm)].append(r)
    return dict(groups)


def default_comparisons(rows: Sequence[RowJudgments]) -> list[tuple[list[str], str, str]]:
    """([A rows], B row, label): every trained arm other than `unscored` (all its replicates) against
    the first replicate of `unscored` of the same base model."""
    groups = replicate_groups(rows)
    pairs = []
    for (base, arm), members in groups.items():
        unscored = groups.get((base, "unscored"))
        if arm and arm != "unscored" and unscored:
            pairs.append(([r.row for r in members], unscored[0].row, f"{base or '?'}: {arm} vs unscored"))
    return pairs


def _seen_map(parsed: Sequence[ParsedRow]) -> dict[str, bool | None]:
    seen: dict[str, bool | None] = {}
    for p in parsed:
        for category, flag in p.seen.items():
            if seen.get(category) is None:
                seen[category] = flag
    return seen


def paired_comparisons(rows: Sequence[RowJudgments], comparisons: Sequence[tuple[Sequence[str] | str, str, str]],
                       *, min_category_questions: int = MIN_CATEGORY_QUESTIONS,
                       tie_epsilon: float = TIE_EPSILON, parsed: Mapping[str, ParsedRow] | None = None
                       ) -> list[PairedComparison]:
    """The paired differences of `comparisons`: (row_a or [replicate rows of A], row_b, label), A - B."""
    by_name = {r.row: r for r in rows}
    parsed = parsed or {}
    pairs = []
    for row_a, row_b, label in comparisons:
        members = [row_a] if isinstance(row_a, str) else list(row_a)
        for name in (*members, row_b):
            if name not in by_name:
                raise ValueError(f"comparison {label!r} names row {name!r}, which is not one of {list(by_name)}")
        side_a = [(by_name[m], parsed.get(m) or parse_row(by_name[m])) for m in members]
        pairs.append(paired_comparison(side_a, (by_name[row_b], parsed.get(row_b) or parse_row(by_name[row_b])), label,
                                       min_questions=min_category_questions, tie_epsilon=tie_epsilon))
    return pairs


def compare_rows(rows: Sequence[RowJudgments], *, comparisons: Sequence[tuple[Sequence[str] | str, str, str]] | None = None,
                 gpu_hour_usd: float = 0.0, min_category_questions: int = MIN_CATEGORY_QUESTIONS,
                 tie_epsilon: float = TIE_EPSILON, parsed: Mapping[str, ParsedRow] | None = None) -> Comparison:
    """Summarise every row and compute the paired differences of `comparisons` (`parsed`: the rows
    already parsed, by name).

    comparisons: (row_a or [replicate rows of A], row_b, label); differences are A - B;
        None = `default_comparisons(rows)`.
    """
    names = [r.row for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique, got {names}")
    if min_category_questions < 2:
        raise ValueError(f"min_category_questions must be at least 2, got {min_category_questions}")
    parsed = {r.row: (parsed or {}).get(r.row) or parse_row(r) for r in rows}
    order = category_order(c for p in parsed.values() for c in p.categories)
    seen = _seen_map(list(parsed.values()))
    summaries = [summarise_row(r, parsed[r.row], order, seen, gpu_hour_usd=gpu_hour_usd,
                               min_questions=min_category_questions) for r in rows]
    pairs = paired_comparisons(rows, default_comparisons(rows) if comparisons is None else comparisons,
                               min_category_questions=min_category_questions, tie_epsilon=tie_epsilon, parsed=parsed)
    settings = {"confidence": CONFIDENCE, "interval": "t on question means (cluster-robust), Satterthwaite overall",
                "min_category_questions": int(min_category_questions), "gpu_hour_usd": float(gpu_hour_usd),
                "tie_epsilon": float(tie_epsilon), "unit": "question (its turns move together)"}
    return Comparison(order, {c: seen.get(c) for c in order}, summaries, pairs, settings)
