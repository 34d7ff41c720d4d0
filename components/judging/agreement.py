"""How far to trust the jury: agreement between its judges, judge noise, circularity, cost.

Input: every row's jury judgments (judging.jury: each row has `judges`, one entry per judge and
repeat) and the judge summaries' jury usage. Output (`jury_agreement` -> `JuryAgreement`):

- Krippendorff's alpha (interval metric) of the judges' overall scores, per category and overall.
  Units are the graded items (row, question, turn); a judge's value of an item is the mean of its
  repeats; items with fewer than two judges' values are not pairable and do not count. alpha = 1 -
  D_o / D_e, with D_o the mean squared difference within units and D_e across all pairable values
  (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"): 1 is perfect agreement, 0 is
  what judges that ignore the answers would reach, below 0 systematic disagreement.
- Spearman's rank correlation between each pair of judges (items both scored), per category and overall.
- Which row each judge would promote: the trained candidate row (arms unscored and self_guided)
  with its highest overall (the mean over categories of its category means, as judge/overall).
- Judge noise, where the jury graded a sample repeatedly: per judge, the share of score variance
  that comes from the judge (the mean variance across repeats of an item) rather than from the
  items (the variance of the item means, less the judge's share of it: a one-way random-effects
  decomposition).
- Circularity: a judge of the same model family as the scoring model may favour the arm its own
  scores chose. Its gap is the self_guided - unscored paired difference as that judge grades it
  minus the same difference as the other judges grade it, per (question, turn) of each base
  model, with a 95% bootstrap CI over questions.
- Cost per 1000 answers per judge and for the jury, and the items each judge lacks.

Warnings, in plain words, when alpha < ALPHA_WARNING or the judges would promote different rows;
`refusal` is the gate's reason to refuse when alpha is below `--min-judge-agreement`.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Mapping, Sequence

ALPHA_WARNING = 0.4
"""Below this alpha the report says the judges do not agree enough to trust one number."""
CANDIDATE_ARMS = ("unscored", "self_guided")
BOOTSTRAP_RESAMPLES = 2000
_FAMILIES = ("gpt", "o1", "o3", "o4", "claude", "gemini", "gemma", "llama", "qwen", "mistral", "mixtral", "deepseek",
             "exaone", "solar", "hyperclova", "phi", "command", "grok")


@dataclass
class JudgedRow:
    """One evaluated row as the agreement statistics need it."""

    row: str
    row_kind: str
    judgments: list[dict[str, Any]]
    base_model: str = ""
    arm: str = ""
    jury: dict[str, Any] | None = None
    """The judge summary's jury usage (judging.jury.judge_with_jury)."""


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


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson of average ranks); NaN below 3 pairs or without variation."""
    if len(x) != len(y) or len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else math.nan


def judge_item_scores(judgment: Mapping[str, Any]) -> dict[str, float]:
    """judge -> its overall score of this item (the mean of its answered repeats)."""
    draws: dict[str, list[float]] = defaultdict(list)
    for entry in judgment.get("judges") or []:
        if entry.get("scores") is not None:
            draws[entry["judge"]["model"]].append(float(entry["scores"]["overall"]))
    return {judge: statistics.fmean(values) for judge, values in draws.items()}


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


def judge_noise(rows: Sequence[JudgedRow]) -> list[JudgeNoise]:
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


def _row_overall(judgments: Sequence[Mapping[str, Any]], judge: str | None) -> float:
    """A row's overall as one judge (None: the jury) grades it: the mean over categories of the
    category means."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for judgment in judgments:
        if judge is None:
            if not judgment.get("error") and judgment.get("scores") is not None:
                by_category[judgment["category"]].append(float(judgment["score"]))
        elif (value := judge_item_scores(judgment).get(judge)) is not None:
            by_category[judgment["category"]].append(value)
    return statistics.fmean(statistics.fmean(v) for v in by_category.values()) if by_category else math.nan


def _category_overall(judgments: Sequence[Mapping[str, Any]], judge: str) -> dict[str, float]:
    by_category: dict[str, list[float]] = defaultdict(list)
    for judgment in judgments:
        if (value := judge_item_scores(judgment).get(judge)) is not None:
            by_category[judgment["category"]].append(value)
    return {c: round(statistics.fmean(v), 3) for c, v in by_category.items()}


@dataclass
class Circularity:
    judge: str
    base_model: str
    pairs: int
    gap: float
    ci_low: float
    ci_high: float


def circularity_gaps(rows: Sequence[JudgedRow], judges: Sequence[str], scoring_model: str,
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
        a = {(j["question_id"], j.get("turn", 1)): judge_item_scores(j) for j in guided.judgments}
        b = {(j["question_id"], j.get("turn", 1)): judge_item_scores(j) for j in plain.judgments}
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
    """The Judges section's figures (see the module docstring)."""

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

    def refusal(self, min_agreement: float) -> str | None:
        """The gate's reason to refuse, or None: alpha below `min_agreement` (0 = never)."""
        if min_agreement <= 0 or len(self.judges) < 2:
            return None
        if not math.isfinite(self.overall_alpha):
            return (f"judge agreement could not be measured (too few items scored by two judges), and "
                    f"--min-judge-agreement {min_agreement:g} asks for it: nothing is promoted")
        if self.overall_alpha < min_agreement:
            return (f"the judges agree too little to promote on their verdict: Krippendorff's alpha "
                    f"{self.overall_alpha:.2f} < --min-judge-agreement {min_agreement:g}")
        return None

    def metrics(self) -> dict[str, dict[str, float]]:
        """row -> each judge's own MLflow metrics (names: evaluation.metrics.per_judge_metric,
        `jury/<judge>/<category>/overall` and `jury/<judge>/overall`), plus `jury/alpha` (overall)."""
        from selfguided.components.evaluation.metrics import per_judge_metric

        out: dict[str, dict[str, float]] = {}
        for row, judges in self.per_judge.items():
            values = {per_judge_metric(judge, None if category == "overall" else category): value
                      for judge, categories in judges.items() for category, value in categories.items()}
            if math.isfinite(self.overall_alpha):
                values["jury/alpha"] = round(self.overall_alpha, 4)
            out[row] = values
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["noise"] = [{**asdict(n), "judge_share": n.judge_share} for n in self.noise]
        data["warnings"] = self.warnings()
        return _finite(data)

    def to_markdown(self) -> str:
        lines = ["## Judges", ""]
        if len(self.judges) < 2 and not self.noise:
            lines.append(f"One judge ({', '.join(self.judges)}): no agreement to measure. A jury (`--judges a,b,c`, "
                         "ideally from different model families) shows how far another judge would agree.")
            return "\n".join(lines) + "\n"
        lines.append(f"Jury: {', '.join(self.judges)}; the jury's score is the {self.aggregate} of the judges'.")
        lines += [f"\n**Warning:** {w}" for w in self.warnings()]
        if len(self.judges) >= 2:
            categories = [c for c in self.alpha if c != "overall"] + ["overall"]
            pairs = list(self.spearman)
            lines += ["", "Agreement (Krippendorff's alpha, interval; Spearman's rho per judge pair):", "",
                      "| category | items | alpha | " + " | ".join(pairs) + " |",
                      "|---" * (3 + len(pairs)) + "|"]
            for c in categories:
                lines.append(f"| {c} | {self.items.get(c, 0)} | {_num(self.alpha.get(c))} | "
                             + " | ".join(_num(self.spearman[p].get(c)) for p in pairs) + " |")
            lines += ["", "Which row each would promote: " + "; ".join(f"{j}: {r}" for j, r in self.picks.items())]
        if self.noise:
            lines += ["", "Judge noise (items graded repeatedly):", "",
                      "| judge | items | gradings per item | judge variance | item variance | share from the judge |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {n.judge} | {n.items} | {n.repeats:g} | {n.judge_variance:.3f} | {n.item_variance:.3f} | "
                      f"{_pct(n.judge_share)} |" for n in self.noise]
        if self.circularity:
            lines += ["", f"Circularity: the seed data was scored by {self.scoring_model}; these judges are of its "
                      "family. Gap = (self_guided - unscored) by that judge minus the same by the other judges:", "",
                      "| judge | base model | pairs | gap | 95% CI |", "|---|---|---|---|---|"]
            lines += [f"| {c.judge} | {c.base_model} | {c.pairs} | {c.gap:+.2f} | [{c.ci_low:+.2f}, {c.ci_high:+.2f}] |"
                      for c in self.circularity]
        if self.cost:
            lines += ["", "Judging cost:", "", "| judge | answers | cost (USD) | per 1000 answers |", "|---|---|---|---|"]
            lines += [f"| {j} | {c['answers']:g} | {c['cost_usd']:.4f} | {c['per_1000']:.4f} |" for j, c in self.cost.items()]
        return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.0%}"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def jury_agreement(rows: Sequence[JudgedRow], *, scoring_model: str = "") -> JuryAgreement:
    """Every figure of the Judges section from the rows' jury judgments."""
    judges: list[str] = []
    aggregate = "mean"
    for row in rows:
        for judgment in row.judgments:
            for entry in judgment.get("judges") or []:
                if entry["judge"]["model"] not in judges:
                    judges.append(entry["judge"]["model"])
            aggregate = (judgment.get("jury") or {}).get("aggregate", aggregate)
    result = JuryAgreement(judges=judges, aggregate=aggregate, scoring_model=scoring_model)
    units: dict[str, list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        for judgment in row.judgments:
            scores = judge_item_scores(judgment)
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
    candidates = [r for r in rows if r.row_kind == "trained" and r.arm in CANDIDATE_ARMS]
    if candidates:
        for judge in [*judges, None]:
            scored = [(r, _row_overall(r.judgments, judge)) for r in candidates]
            scored = [(r, v) for r, v in scored if math.isfinite(v)]
            if scored:
                result.picks[judge or "jury"] = max(scored, key=lambda rv: rv[1])[0].row
    result.noise = judge_noise(rows)
    result.circularity = circularity_gaps(rows, judges, scoring_model)
    for row in rows:
        result.per_judge[row.row] = {}
        for judge in judges:
            categories_of = _category_overall(row.judgments, judge)
            if categories_of:
                overall = _row_overall(row.judgments, judge)
                result.per_judge[row.row][judge] = {**categories_of, "overall": round(overall, 3)}
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        for usage in (row.jury or {}).get("judges", []):
            name = usage["judge"]["model"]
            totals[name][0] += usage["cost_usd"]
            totals[name][1] += usage["items"]
            result.missing[name] = result.missing.get(name, 0) + usage["missing"]
    if totals:
        answers = max(t[1] for t in totals.values())
        totals["jury"] = [sum(t[0] for t in totals.values()), answers]
        result.cost = {j: {"cost_usd": round(c, 6), "answers": n, "per_1000": round(1000 * c / n, 6) if n else 0.0}
                       for j, (c, n) in totals.items()}
    return result


def review_judges(result: dict[str, Any], summary_files: Sequence[str], judgment_files: Sequence[str], *,
                  scoring_model: str = "", min_agreement: float = 0.0) -> str:
    """The compare step's hook: the Judges section (Markdown) of the run's rows, with its effects
    on the compare result: `result["judges"]` (the figures), per-judge metrics added to
    `result["metrics"][row]`, the plain-words warnings appended to the decision's reasons, and a
    refusal (promote false, its reason first) when alpha is below `min_agreement`. A jury of one
    changes nothing but the section, and says so when `min_agreement` was asked for."""
    import json

    from selfguided.components.data import read_jsonl

    rows = []
    for summary_path, judgments_path in zip(summary_files, judgment_files):
        with open(summary_path, encoding="utf-8") as fh:
            summary = json.load(fh)
        judgments = read_jsonl(judgments_path, allow_empty=True)
        if judgments:
            rows.append(JudgedRow(summary["row"], summary["row_kind"], judgments, summary.get("base_model", ""),
                                  summary.get("arm", ""), summary.get("jury")))
    agreement = jury_agreement(rows, scoring_model=scoring_model)
    result["judges"] = agreement.to_dict()
    decision = result["decision"]
    if len(agreement.judges) < 2:
        if min_agreement > 0:  # asked for, not measurable: said, not silent
            decision["reasons"].append(
                f"--min-judge-agreement {min_agreement:g} was not checked: it needs a jury of two or more judges "
                f"(--judges), this run had {len(agreement.judges)} ({', '.join(agreement.judges) or 'none'})")
        return agreement.to_markdown()
    for row, values in agreement.metrics().items():
        result.setdefault("metrics", {}).setdefault(row, {}).update(values)
    refusal = agreement.refusal(min_agreement)
    if refusal and decision["promote"]:
        decision["promote"] = False
        decision["reasons"] = [refusal, *decision["reasons"]]
    elif refusal:
        decision["reasons"].append(refusal)
    decision["reasons"] += agreement.warnings()
    return agreement.to_markdown()
