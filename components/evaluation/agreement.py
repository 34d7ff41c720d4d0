"""How far to trust the jury: agreement between its judges, judge noise, circularity, cost.

Input: the run's judged rows (rows.RowJudgments, read with their jury usage by
judge_summary.load_row); each judgment carries every judge's verdicts (`judges`, judging/jury.py).
Output: `jury_agreement` -> `JuryAgreement`, whose figures are

- Krippendorff's alpha (interval metric) of the judges' overall scores, per category and overall.
  Units are the graded items (row, question, turn); a judge's value of an item is the mean of its
  repeats (jury.judge_scores); items with fewer than two judges' values are not pairable and do not
  count. alpha = 1 - D_o / D_e, with D_o the mean squared difference within units and D_e across all
  pairable values (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"): 1 is perfect
  agreement, 0 is what judges that ignore the answers would reach, below 0 systematic disagreement.
- Spearman's rank correlation (scipy) between each pair of judges (items both scored), per category
  and overall.
- Which row each judge (and the jury) would promote: the gate's own rule (gate.best_candidate) on
  the row's overall as that judge grades it (rows.category_means: the mean of the category means).
- Judge noise, where the jury graded a sample repeatedly: per judge, the share of score variance
  that comes from the judge (the mean variance across repeats of an item) rather than from the
  items (the variance of the item means, less the judge's share of it: a one-way random-effects
  decomposition).
- Circularity: a judge of the same model family as the scoring model may favour the arm its own
  scores chose. Its gap is the self_guided - unscored paired difference as that judge grades it
  minus the same difference as the other judges grade it, per (question, turn) of each base
  model, with a 95% bootstrap CI over questions.
- Cost per 1000 answers per judge and for the jury, and the items each judge lacks.

`warnings()` says in plain words when alpha < ALPHA_WARNING or the judges would promote different
rows; the gate's judge-agreement rule (gate_rules.judge_agreement_rule) reads alpha and the
warnings. The Markdown section is report.judges_section's.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Sequence

import numpy as np

from selfguided.components.evaluation.gate import best_candidate
from selfguided.components.evaluation.rows import RowJudgments, category_means
from selfguided.components.judging.calibration import rank_correlation
from selfguided.components.judging.jury import judge_scores

ALPHA_WARNING = 0.4
"""Below this alpha the report says the judges do not agree enough to trust one number."""
BOOTSTRAP_RESAMPLES = 2000
_FAMILIES = ("gpt", "o1", "o3", "o4", "claude", "gemini", "gemma", "llama", "qwen", "mistral", "mixtral", "deepseek",
             "exaone", "solar", "hyperclova", "phi", "command", "grok")


def model_family(model: str) -> str:
    """The family of a model name: `gpt-4o-mini` -> gpt, `openai/gpt-4.1` -> gpt, `Qwen2.5-72B` ->
    qwen, `claude-sonnet-4` -> claude; otherwise its first word."""
    name = model.lower().rsplit("/", 1)[-1]
    for family in _FAMILIES:
        if name.startswith(family):
            return family
    return re.split(r"[^a-z]+", name)[0] or name


def krippendorff_alpha_interval(units: Sequence[Sequence[float]]) -> float:
    """Krippendorff's alpha, interval metric, of `units` (each: the values the coders gave it;
    missing values simply absent). NaN when fewer than two pairable values or no variation."""
    pairable = [list(map(float, u)) for u in units if len(u) >= 2]
    n = sum(len(u) for u in pairable)
    if n < 2:
        return math.nan
    observed = sum(_pair_sq_sum(u) / (len(u) - 1) for u in pairable) / n
    values = [v for u in pairable for v in u]
    expected = _pair_sq_sum(values) / (n * (n - 1))
    if expected == 0:
        return math.nan if observed == 0 else -math.inf
    return 1 - observed / expected


def _pair_sq_sum(values: Sequence[float]) -> float:
    """Sum over ordered pairs i != j of (v_i - v_j)^2 = 2 n sum(v^2) - 2 (sum v)^2."""
    n, total = len(values), sum(values)
    return 2 * n * sum(v * v for v in values) - 2 * total * total


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (ties averaged: judging/calibration.rank_correlation); NaN below 3 pairs or
    without variation."""
    if len(x) != len(y):
        return math.nan
    rho = rank_correlation(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return math.nan if rho is None else rho


def item_overall(judgment: dict[str, Any]) -> dict[str, float]:
    """judge -> its overall score of this item (jury.judge_scores: the mean of its answered repeats)."""
    return {judge: scores["overall"] for judge, scores in judge_scores(judgment.get("judges") or []).items()}


def judge_view(judgments: Sequence[dict[str, Any]], judge: str) -> list[dict[str, Any]]:
    """The judgments as `judge` alone graded them (its overall as each item's score; items it did not
    score left out), for rows.category_means."""
    return [{"category": j.get("category"), "score": value, "error": None}
            for j in judgments if (value := item_overall(j).get(judge)) is not None]


@dataclass
class JudgeNoise:
    judge: str
    items: int
    """Items graded at least twice."""
    repeats: float
    """Mean gradings per such item."""
    judge_variance: float
    """Mean variance of an item's scores across repeats (the judge's own noise)."""
    item_variance: float
    """Variance of the items' true scores (variance of item means less the judge's share of it)."""

    @property
    def judge_share(self) -> float:
        total = self.judge_variance + self.item_variance
        return self.judge_variance / total if total > 0 else math.nan


def judge_noise(rows: Sequence[RowJudgments]) -> list[JudgeNoise]:
    """Per judge, the variance decomposition of its repeated gradings (none without repeats)."""
    draws: dict[str, list[list[float]]] = defaultdict(list)
    for row in rows:
        for judgment in row.judgments:
            per_judge: dict[str, list[float]] = defaultdict(list)
            for entry in judgment.get("judges") or []:
                if entry.get("scores") is not None:
                    per_judge[entry["judge"]["model"]].append(float(entry["scores"]["overall"]))
            for judge, values in per_judge.items():
                if len(values) >= 2:
                    draws[judge].append(values)
    noise = []
    for judge, items in draws.items():
        within = statistics.fmean(statistics.variance(v) for v in items)
        means = [statistics.fmean(v) for v in items]
        k = statistics.fmean(len(v) for v in items)
        between = max(0.0, (statistics.variance(means) if len(means) >= 2 else 0.0) - within / k)
        noise.append(JudgeNoise(judge, len(items), round(k, 2), within, between))
    return noise


@dataclass
class Circularity:
    judge: str
    base_model: str
    pairs: int
    gap: float
    ci_low: float
    ci_high: float


def circularity_gaps(rows: Sequence[RowJudgments], judges: Sequence[str], scoring_model: str,
                     seed: int = 0) -> list[Circularity]:
    """For each judge of the scoring model's family, per base model: its self_guided - unscored
    difference minus the other judges' mean difference, per shared (question, turn), with a 95%
    percentile bootstrap CI over questions (fixed seed)."""
    family = model_family(scoring_model) if scoring_model else ""
    suspects = [j for j in judges if family and model_family(j) == family]
    if not suspects or len(judges) < 2:
        return []
    out = []
    trained = {(r.base_model, r.arm): r for r in rows if r.row_kind == "trained"}
    for base in sorted({b for b, _ in trained}):
        guided, plain = trained.get((base, "self_guided")), trained.get((base, "unscored"))
        if guided is None or plain is None:
            continue
        a = {(j["question_id"], j.get("turn", 1)): item_overall(j) for j in guided.judgments}
        b = {(j["question_id"], j.get("turn", 1)): item_overall(j) for j in plain.judgments}
        for suspect in suspects:
            others = [j for j in judges if j != suspect]
            by_question: dict[Any, list[float]] = defaultdict(list)
            for key in sorted(set(a) & set(b), key=str):
                sa, sb = a[key], b[key]
                both = [o for o in others if o in sa and o in sb]
                if suspect in sa and suspect in sb and both:
                    own = sa[suspect] - sb[suspect]
                    rest = statistics.fmean(sa[o] - sb[o] for o in both)
                    by_question[key[0]].append(own - rest)
            if not by_question:
                continue
            clusters = list(by_question.values())
            gap = _cluster_mean(clusters)
            rng = random.Random(seed)
            boots = sorted(_cluster_mean([rng.choice(clusters) for _ in clusters]) for _ in range(BOOTSTRAP_RESAMPLES))
            out.append(Circularity(suspect, base, sum(map(len, clusters)), gap,
                                   boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]))
    return out


def _cluster_mean(clusters: Sequence[Sequence[float]]) -> float:
    return sum(map(sum, clusters)) / sum(map(len, clusters))


@dataclass
class JuryAgreement:
    """The Judges section's figures (see the module docstring); `to_json`/`from_json` its form in the
    compare result."""

    judges: list[str]
    aggregate: str = "mean"
    alpha: dict[str, float] = field(default_factory=dict)
    """category (and "overall") -> Krippendorff's alpha (NaN: not computable)."""
    items: dict[str, int] = field(default_factory=dict)
    """category (and "overall") -> items with at least two judges' scores."""
    spearman: dict[str, dict[str, float]] = field(default_factory=dict)
    """"a vs b" -> category (and "overall") -> rho."""
    picks: dict[str, str] = field(default_factory=dict)
    """judge (and "jury") -> the candidate row it would promote."""
    noise: list[JudgeNoise] = field(default_factory=list)
    circularity: list[Circularity] = field(default_factory=list)
    scoring_model: str = ""
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    """judge (and "jury") -> {"cost_usd", "answers", "per_1000"}."""
    missing: dict[str, int] = field(default_factory=dict)
    """judge -> items it has no verdict for, over every row."""
    failed_items: int = 0
    """Items the jury could not score (fewer judges answered than needed)."""
    per_judge: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """row -> judge -> category (and "overall") -> its mean."""

    @property
    def overall_alpha(self) -> float:
        return self.alpha.get("overall", math.nan)

    def warnings(self) -> list[str]:
        out = []
        if len(self.judges) < 2:
            return out
        if math.isfinite(self.overall_alpha) and self.overall_alpha < ALPHA_WARNING:
            out.append(f"The judges disagree: Krippendorff's alpha is {self.overall_alpha:.2f} (below "
                       f"{ALPHA_WARNING}); one judge's verdict would differ from another's, so read every score "
                       "and difference in this report as uncertain beyond its interval.")
        chosen = {row for judge, row in self.picks.items() if judge != "jury"}
        if len(chosen) > 1:
            out.append("The judges would promote different rows: " + ", ".join(
                f"{judge} -> {row}" for judge, row in self.picks.items() if judge != "jury") + ".")
        for judge, count in self.missing.items():
            if count:
                out.append(f"Judge {judge} has no verdict for {count} item(s); those were scored by the others "
                           f"only where enough judges answered ({self.failed_items} item(s) failed for a partial jury).")
        return out

    def metrics(self) -> dict[str, dict[str, float]]:
        """row -> each judge's own MLflow metrics (names: metrics.per_judge_metric,
        `jury/<judge>/<category>/overall` and `jury/<judge>/overall`), plus `jury/alpha` (overall);
        none for a jury of one."""
        from selfguided.components.evaluation.metrics import JURY_ALPHA, per_judge_metric

        if len(self.judges) < 2:
            return {}
        out: dict[str, dict[str, float]] = {}
        for row, judges in self.per_judge.items():
            values = {per_judge_metric(judge, None if category == "overall" else category): value
                      for judge, categories in judges.items() for category, value in categories.items()}
            if math.isfinite(self.overall_alpha):
                values[JURY_ALPHA] = round(self.overall_alpha, 4)
            out[row] = values
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["noise"] = [{**asdict(n), "judge_share": n.judge_share} for n in self.noise]
        data["warnings"] = self.warnings()
        return _finite(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JuryAgreement:
        nan = lambda v: math.nan if v is None else float(v)  # noqa: E731 - to_json wrote NaN as null
        return cls(
            judges=list(data["judges"]), aggregate=data["aggregate"],
            alpha={k: nan(v) for k, v in data["alpha"].items()}, items=dict(data["items"]),
            spearman={p: {c: nan(v) for c, v in cats.items()} for p, cats in data["spearman"].items()},
            picks=dict(data["picks"]),
            noise=[JudgeNoise(n["judge"], n["items"], n["repeats"], nan(n["judge_variance"]), nan(n["item_variance"]))
                   for n in data["noise"]],
            circularity=[Circularity(**{k: (nan(v) if k in ("gap", "ci_low", "ci_high") else v) for k, v in c.items()})
                         for c in data["circularity"]],
            scoring_model=data["scoring_model"], cost=dict(data["cost"]), missing=dict(data["missing"]),
            failed_items=int(data["failed_items"]), per_judge=dict(data["per_judge"]))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def jury_agreement(rows: Sequence[RowJudgments], *, scoring_model: str = "") -> JuryAgreement:
    """Every figure of the Judges section from the rows' jury judgments."""
    judges: list[str] = []
    aggregate = "mean"
    for row in rows:
        for usage in row.jury.judges if row.jury else []:  # the jury as its summary records it
            if usage.judge.model not in judges:
                judges.append(usage.judge.model)
        for judgment in row.judgments:
            for entry in judgment.get("judges") or []:
                if entry["judge"]["model"] not in judges:
                    judges.append(entry["judge"]["model"])
            aggregate = (judgment.get("jury") or {}).get("aggregate", aggregate)
    result = JuryAgreement(judges=judges, aggregate=aggregate, scoring_model=scoring_model)
    units: dict[str, list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        for judgment in row.judgments:
            scores = item_overall(judgment)
            units[judgment["category"]].append(scores)
            units["overall"].append(scores)
            result.failed_items += bool(judgment.get("judges")) and judgment.get("scores") is None
    categories = [c for c in units if c != "overall"] + ["overall"]
    for c in categories:
        values = [list(u.values()) for u in units[c]]
        result.alpha[c] = krippendorff_alpha_interval(values)
        result.items[c] = sum(1 for v in values if len(v) >= 2)
    for a, b in combinations(judges, 2):
        result.spearman[f"{a} vs {b}"] = {
            c: spearman([u[a] for u in units[c] if a in u and b in u], [u[b] for u in units[c] if a in u and b in u])
            for c in categories}
    overall_of: dict[str | None, dict[str, float]] = {
        judge: {r.row: category_means(r.judgments if judge is None else judge_view(r.judgments, judge))[1]
                for r in rows} for judge in [*judges, None]}
    for judge, overall in overall_of.items():
        try:
            result.picks[judge or "jury"] = best_candidate(rows, overall).row
        except ValueError:  # no candidate row: nothing to pick
            break
    result.noise = judge_noise(rows)
    result.circularity = circularity_gaps(rows, judges, scoring_model)
    for row in rows:
        result.per_judge[row.row] = {}
        for judge in judges:
            means, overall = category_means(judge_view(row.judgments, judge))
            if means:
                result.per_judge[row.row][judge] = {**{c: round(m["overall"], 3) for c, m in means.items()},
                                                    "overall": round(overall, 3)}
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        for usage in row.jury.judges if row.jury else []:
            name = usage.judge.model
            totals[name][0] += usage.cost_usd
            totals[name][1] += usage.items
            result.missing[name] = result.missing.get(name, 0) + usage.missing
    if totals:
        answers = max(t[1] for t in totals.values())
        totals["jury"] = [sum(t[0] for t in totals.values()), answers]
        result.cost = {j: {"cost_usd": round(c, 6), "answers": n, "per_1000": round(1000 * c / n, 6) if n else 0.0}
                       for j, (c, n) in totals.items()}
    return result
