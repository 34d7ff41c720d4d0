"""Compare evaluated models with their uncertainty: the statistics behind the compare step and gate v2.

A *row* is one evaluated model of a run (a trained base x arm, the untuned base, an API teacher,
the re-evaluated champion); `RowJudgments` carries its metadata and its per-(question, turn)
judgments. Everything here is a pure, seeded function of those rows:

- **Per row and category**: mean, n and a 95% bootstrap CI for the overall score and each
  criterion. The overall score of a row is the mean of its category means (every category weighs
  the same, the existing definition of `judge/overall`); its CI comes from a stratified bootstrap
  (questions resampled within each category). Seen and unseen categories are summarised the same
  way, each over its own categories.
- **Paired differences** (A - B) on the (question_id, turn) items both rows were scored on: per
  category and overall (the mean over categories of the per-category mean differences), with a
  paired bootstrap CI, a sign-flip permutation p-value, wins/ties/losses and Holm-adjusted p-values
  across the categories of one comparison.
- **Length**: mean answer length, score-length correlations, and a length-controlled paired
  difference: the intercept of the regression of the paired score difference on the paired
  log-length difference, i.e. the difference expected at equal answer length.
- **Cost**: USD per 1000 answers.
- **Gate v2** (`decide_promotion`): paired against the champion row of the same run.

Statistical choices (all seeded, deterministic for a given `seed`):

- *Unit of resampling.* The scored item is a (question_id, turn) judgment; the resampled unit is
  the question (a cluster): all scored turns of one question move together, so the turns of a
  multi-turn benchmark are not treated as independent. A category mean is the mean over its items
  (a ratio estimator over the resampled questions: sum of item scores / number of items), which
  equals the plain mean when every question has one turn.
- *CI method.* `scipy.stats.bootstrap` with `method="BCa"` (bias-corrected and accelerated; the
  jackknife for the acceleration leaves out one question at a time), 95%, >= 2000 resamples.
  The bootstrap resamples question indices and the statistic sums the per-question sufficient
  statistics of the drawn questions (the same device scipy uses for paired samples). Stratified
  estimates (overall, seen, unseen, paired overall) pass one index sample per category, which
  scipy resamples independently: a stratified bootstrap. Where BCa is undefined (e.g. every
  resample gives the same value: identical models, constant scores) the percentile interval of
  the same resamples is used, which then is the point itself. A category with a single question
  has no CI (NaN); inside a stratified estimate such a category is held at its value.
  Table cells print `mean +- half-width` where half-width = (high - low) / 2; BCa intervals can
  be asymmetric, the JSON and the HTML tooltips keep both ends.
  Like every bootstrap interval these are somewhat narrow with few questions: in a simulation
  with normal differences (6 categories x 7 questions, and 42 questions in one category) each
  side of the 95% BCa interval was missed about 4% of the time instead of 2.5%, so the gate
  promotes a true null difference roughly 4% of the time at min_improvement 0. More questions,
  or a min_improvement above 0, make it stricter.
- *p-value.* Two-sided paired sign-flip permutation test, `scipy.stats.permutation_test` with
  `permutation_type="samples"` on one sample (which flips signs independently): the sample is the
  per-question sums of the differences, so a whole question flips (clusters again). Exact when
  2**n_questions <= n_permutations, otherwise Monte Carlo with `n_permutations` =
  max(n_resamples, 9999). The overall test flips the per-question sums weighted by 1 / (K * n_c),
  whose sum is exactly the mean over the K categories of the per-category mean differences.
  Holm's step-down adjustment across the categories of one comparison (the overall p is not
  part of the family).
- *Length-controlled difference.* OLS of d = score_A - score_B on x = log(chars_A + 1) -
  log(chars_B + 1) over the shared items of a category; the intercept is the difference expected
  at equal length. Overall: one common slope and one intercept per category (category fixed
  effects), reported as the mean of the category intercepts. CIs by the same clustered
  (stratified) BCa bootstrap, which unlike the OLS standard error respects the clustering and
  unequal variances. When the lengths do not vary the intercept is the mean difference.

Only numpy, scipy and (lazily, Agg canvas, no pyplot) matplotlib are used, beside the project's
own `prompting` and `judging` (criteria and row kinds).
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from selfguided.components.judging.rules import ROW_KINDS, SCORE_NAMES
from selfguided.components.model.prompting import CRITERIA

CONFIDENCE = 0.95
MIN_RESAMPLES = 2000
TIE_EPSILON = 1e-6
CI_METHODS: tuple[str, ...] = ("BCa", "percentile")
SCHEMA = "selfguided.compare/v1"
_ARM_ORDER = {"control": 0, "unscored": 1, "self_guided": 2}
_NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


@dataclass
class RowJudgments:
    """One evaluated model of a run and its per-(question, turn) judgments.

    judgments: dicts with `question_id`, `turn` (1-based, default 1), `category`, `seen`,
        `scores` (the four criteria, or None), `score` (overall 1-10; None or -1 when failed),
        `answer_chars`, `error`. A judgment with `error` set or no valid `score` is failed:
        counted, never used in a statistic.
    answers: answers produced (for cost); 0 means "the number of judgments".
    generate_seconds: measured seconds to produce the answers (0 = unknown).
    llm_cost_usd: API cost to produce the answers (teacher rows).
    """

    row: str
    row_kind: str
    judgments: list[dict[str, Any]]
    base_model: str = ""
    arm: str = ""
    judge: str = ""
    answers: int = 0
    generate_seconds: float = 0.0
    llm_cost_usd: float = 0.0

    def __post_init__(self) -> None:
        if not self.row:
            raise ValueError("RowJudgments.row must be a non-empty name")
        if self.row_kind not in ROW_KINDS:
            raise ValueError(f"row {self.row!r}: row_kind must be one of {', '.join(ROW_KINDS)}, got {self.row_kind!r}")


@dataclass(frozen=True)
class _Item:
    question: str
    turn: int
    category: str
    score: float
    criteria: dict[str, float]
    chars: float | None


@dataclass
class _Parsed:
    items: dict[tuple[str, int], _Item]  # scored items only, in judgment order
    categories: list[str]  # every category with a judgment, by first appearance
    failed: dict[str, int]
    seen: dict[str, bool | None]
    n_judgments: int


def _valid_score(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _parse(row: RowJudgments) -> _Parsed:
    items: dict[tuple[str, int], _Item] = {}
    keys: set[tuple[str, int]] = set()
    categories: list[str] = []
    failed: dict[str, int] = defaultdict(int)
    seen: dict[str, bool | None] = {}
    for index, judgment in enumerate(row.judgments):
        where = f"row {row.row!r}, judgment {index + 1}"
        if not isinstance(judgment, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(judgment).__name__}")
        qid = judgment.get("question_id")
        if qid is None or str(qid) == "":
            raise ValueError(f"{where}: missing question_id")
        try:
            turn = int(judgment.get("turn", 1) or 1)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: turn must be an integer, got {judgment.get('turn')!r}") from None
        key = (str(qid), turn)
        if key in keys:
            raise ValueError(f"{where}: question {key[0]} turn {turn} is judged twice")
        keys.add(key)
        category = str(judgment.get("category") or "uncategorized")
        if category not in seen:
            categories.append(category)
            seen[category] = None
        if seen[category] is None and judgment.get("seen") is not None:
            seen[category] = bool(judgment["seen"])
        score = _valid_score(judgment.get("score"))
        if judgment.get("error") or score is None:
            failed[category] += 1
            continue
        raw = judgment.get("scores")
        criteria = {}
        if isinstance(raw, Mapping):
            criteria = {c: v for c in CRITERIA if (v := _valid_score(raw.get(c))) is not None}
        chars = _valid_score(judgment.get("answer_chars"))
        items[key] = _Item(key[0], turn, category, score, criteria, chars)
    return _Parsed(items, categories, dict(failed), seen, len(row.judgments))


# ---------------------------------------------------------------------------------------------
# Estimates and the clustered bootstrap
# ---------------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """A point estimate with its 95% CI; n = scored (question, turn) items, n_questions = clusters."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    n_questions: int

    @property
    def half_width(self) -> float:
        # Floating-point noise on a degenerate interval must not print as "± -0.00".
        return max(0.0, (self.ci_high - self.ci_low) / 2)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high,
                          "n": self.n, "n_questions": self.n_questions})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        return cls(_f(d["mean"]), _f(d["ci_low"]), _f(d["ci_high"]), int(d["n"]), int(d["n_questions"]))


_EMPTY = Estimate(_NAN, _NAN, _NAN, 0, 0)


def _f(value: Any) -> float:
    return _NAN if value is None else float(value)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def _jsonable(value: Any) -> Any:
    """Non-finite floats become None so the result is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _seed(seed: int, *parts: str) -> list[int]:
    """A seed for one estimate: the run's seed and a stable hash of what is estimated, so a figure
    does not depend on which other rows or comparisons were computed alongside it."""
    return [int(seed), zlib.crc32("\x1f".join(parts).encode("utf-8"))]


def _clusters(pairs: Iterable[tuple[str, Sequence[float]]], width: int) -> np.ndarray:
    """Sum per-item statistic vectors within each question: one row per question, first-appearance order."""
    index: dict[str, int] = {}
    rows: list[np.ndarray] = []
    for question, vector in pairs:
        k = index.setdefault(question, len(index))
        if k == len(rows):
            rows.append(np.zeros(width))
        rows[k] += np.asarray(vector, dtype=float)
    return np.array(rows, dtype=float).reshape(-1, width)


Combine = Callable[[list[np.ndarray]], np.ndarray]


def _mean_of_ratios(totals: list[np.ndarray]) -> np.ndarray:
    """Per stratum sum/count, averaged over strata (one stratum: the plain item mean)."""
    return sum(t[..., 0] / t[..., 1] for t in totals) / len(totals)


def _ols_intercept(totals: list[np.ndarray]) -> np.ndarray:
    """Intercept of y on x from the sums [n, Sx, Sy, Sxx, Sxy]; the mean of y when x does not vary."""
    n, sx, sy, sxx, sxy = (totals[0][..., i] for i in range(5))
    den = n * sxx - sx * sx
    flat = den <= 1e-10 * n * sxx + 1e-300
    return np.where(flat, sy / n, (sy * sxx - sx * sxy) / np.where(flat, 1.0, den))


def _fixed_effects_intercept(totals: list[np.ndarray]) -> np.ndarray:
    """One common slope, one intercept per stratum (category fixed effects); the mean intercept."""
    sxy = sum(t[..., 4] - t[..., 1] * t[..., 2] / t[..., 0] for t in totals)
    sxx = sum(t[..., 3] - t[..., 1] ** 2 / t[..., 0] for t in totals)
    scale = sum(t[..., 3] for t in totals)
    flat = sxx <= 1e-10 * scale + 1e-300
    slope = np.where(flat, 0.0, sxy / np.where(flat, 1.0, sxx))
    return sum(t[..., 2] / t[..., 0] - slope * t[..., 1] / t[..., 0] for t in totals) / len(totals)


def _interval(strata: list[np.ndarray], combine: Combine, *, n_resamples: int, seed: Sequence[int],
              method: str) -> tuple[float, float, float]:
    """Point estimate and 95% CI of combine(per-stratum totals), resampling the rows (questions) of
    each stratum independently with scipy.stats.bootstrap."""
    totals = [a.sum(axis=0) for a in strata]
    with np.errstate(all="ignore"):
        point = float(combine(totals))
    free = [k for k, a in enumerate(strata) if a.shape[0] >= 2]
    if not free or not math.isfinite(point):
        return point, _NAN, _NAN

    def statistic(*idx: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = list(totals)
        for k, i in zip(free, idx):
            drawn[k] = strata[k][np.asarray(i, dtype=np.intp)].sum(axis=-2)
        return combine(drawn)

    data = tuple(np.arange(strata[k].shape[0]) for k in free)
    # resamples (and jackknife samples) per batch: at most ~5e6 floats of drawn statistics at a time
    batch = max(1, min(n_resamples, 5_000_000 // sum(strata[k].size for k in free)))
    for how in (method, "percentile"):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.bootstrap(data, statistic, n_resamples=n_resamples, vectorized=True, paired=False,
                                     confidence_level=CONFIDENCE, method=how, batch=batch,
                                     rng=np.random.default_rng(list(seed)))
        low, high = (float(v) for v in result.confidence_interval)
        if math.isfinite(low) and math.isfinite(high):
            return point, low, high
    return point, _NAN, _NAN


def _estimate(strata: list[np.ndarray], combine: Combine, *, n_resamples: int, seed: Sequence[int],
              method: str, n_items: int) -> Estimate:
    strata = [a for a in strata if a.shape[0]]
    if not strata:
        return _EMPTY
    point, low, high = _interval(strata, combine, n_resamples=n_resamples, seed=seed, method=method)
    return Estimate(point, low, high, n_items, sum(a.shape[0] for a in strata))


def bootstrap_mean_ci(values: Sequence[float], questions: Sequence[Any] | None = None, *,
                      n_resamples: int = MIN_RESAMPLES, seed: int | Sequence[int] = 0,
                      method: str = "BCa") -> Estimate:
    """Mean of `values` with its 95% CI, resampling questions (clusters; default: each value its own).

    The same routine the row statistics use, exposed so it can be checked against
    `scipy.stats.bootstrap` directly: with one value per question and `seed` s it draws exactly
    what `scipy.stats.bootstrap((values,), np.mean, rng=np.random.default_rng(s))` draws.
    """
    _check_method(method)
    questions = list(range(len(values))) if questions is None else [str(q) for q in questions]
    strata = _clusters(((q, (v, 1.0)) for q, v in zip(questions, values)), 2)
    seed = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    return _estimate([strata], _mean_of_ratios, n_resamples=n_resamples, seed=seed, method=method,
                     n_items=len(values))


def sign_flip_p_value(question_sums: Sequence[float], *, n_permutations: int = 9999,
                      seed: int | Sequence[int] = 0) -> float:
    """Two-sided paired sign-flip permutation p-value for H0: the sum (mean) of the differences is 0.

    `question_sums`: per question, the (weighted) sum of its paired differences; the signs of whole
    questions are flipped. Exact when 2**n <= n_permutations.
    """
    z = np.asarray(question_sums, dtype=float)
    if z.size == 0:
        return _NAN
    if np.all(np.abs(z) <= 1e-12 * max(1.0, float(np.abs(z).max()))):
        return 1.0
    seed = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    result = stats.permutation_test((z,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                                    vectorized=True, n_resamples=n_permutations, alternative="two-sided",
                                    rng=np.random.default_rng(seed))
    return float(min(1.0, result.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not part of the family."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(1.0, adjusted)
    return [float(v) for v in out]


def _check_method(method: str) -> None:
    if method not in CI_METHODS:
        raise ValueError(f"ci_method must be one of {', '.join(CI_METHODS)}, got {method!r}")


# ---------------------------------------------------------------------------------------------
# Per-row summaries
# ---------------------------------------------------------------------------------------------


@dataclass
class Correlation:
    r: float
    p: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"r": self.r, "p": self.p, "n": self.n})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Correlation | None:
        return None if d is None else cls(_f(d["r"]), _f(d["p"]), int(d["n"]))


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

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
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
            "length_points": self.length_points,
        })

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RowSummary:
        return cls(
            row=d["row"], row_kind=d["row_kind"], base_model=d["base_model"], arm=d["arm"], judge=d["judge"],
            answers=int(d["answers"]), generate_seconds=_f(d["generate_seconds"]), llm_cost_usd=_f(d["llm_cost_usd"]),
            n_judgments=int(d["n_judgments"]), n_failed=int(d["n_failed"]),
            categories={k: CategorySummary.from_dict(v) for k, v in d["categories"].items()},
            overall=Estimate.from_dict(d["overall"]),
            seen=Estimate.from_dict(d["seen"]) if d.get("seen") else None,
            unseen=Estimate.from_dict(d["unseen"]) if d.get("unseen") else None,
            mean_chars=_opt(d.get("mean_chars")),
            length_pearson=Correlation.from_dict(d.get("length_pearson")),
            length_spearman=Correlation.from_dict(d.get("length_spearman")),
            usd_per_1000_answers=_opt(d.get("usd_per_1000_answers")), cost_basis=d.get("cost_basis", ""),
            length_points=[[float(a), float(b)] for a, b in d.get("length_points", [])],
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


def _category_strata(items: Iterable[_Item], name: str) -> tuple[np.ndarray, int]:
    chosen = [(it.question, (it.score if name == "overall" else it.criteria[name], 1.0))
              for it in items if name == "overall" or name in it.criteria]
    return _clusters(chosen, 2), len(chosen)


def _summarise_row(row: RowJudgments, parsed: _Parsed, categories: Sequence[str], seen: Mapping[str, bool | None],
                   *, n_resamples: int, seed: int, method: str, gpu_hour_usd: float) -> RowSummary:
    by_category: dict[str, list[_Item]] = defaultdict(list)
    for item in parsed.items.values():
        by_category[item.category].append(item)
    summaries: dict[str, CategorySummary] = {}
    overall_strata: dict[str, np.ndarray] = {}
    for category in categories:
        if category not in parsed.categories:
            continue
        scores = {}
        for name in SCORE_NAMES:
            strata, n = _category_strata(by_category.get(category, []), name)
            scores[name] = _estimate([strata], _mean_of_ratios, n_resamples=n_resamples, method=method, n_items=n,
                                     seed=_seed(seed, "row", row.row, category, name))
            if name == "overall" and n:
                overall_strata[category] = strata
        summaries[category] = CategorySummary(category, seen.get(category), parsed.failed.get(category, 0), scores)

    def stratified(cats: list[str], what: str) -> Estimate:
        return _estimate([overall_strata[c] for c in cats], _mean_of_ratios, n_resamples=n_resamples, method=method,
                         n_items=sum(summaries[c].overall.n for c in cats), seed=_seed(seed, "row", row.row, what))

    scored = list(overall_strata)
    seen_cats = [c for c in scored if seen.get(c) is True]
    unseen_cats = [c for c in scored if seen.get(c) is False]
    points = [(it.chars, it.score) for it in parsed.items.values() if it.chars is not None]
    chars = np.array([p[0] for p in points], dtype=float)
    values = np.array([p[1] for p in points], dtype=float)
    cost, basis = usd_per_1000_answers(row, gpu_hour_usd)
    return RowSummary(
        row=row.row, row_kind=row.row_kind, base_model=row.base_model, arm=row.arm, judge=row.judge,
        answers=row.answers, generate_seconds=float(row.generate_seconds), llm_cost_usd=float(row.llm_cost_usd),
        n_judgments=parsed.n_judgments, n_failed=sum(parsed.failed.values()), categories=summaries,
        overall=stratified(scored, "overall") if scored else _EMPTY,
        seen=stratified(seen_cats, "seen") if seen_cats else None,
        unseen=stratified(unseen_cats, "unseen") if unseen_cats else None,
        mean_chars=float(chars.mean()) if chars.size else None,
        length_pearson=_correlation(stats.pearsonr, chars, values),
        length_spearman=_correlation(stats.spearmanr, chars, values),
        usd_per_1000_answers=cost, cost_basis=basis,
        length_points=[[float(c), float(s)] for c, s in points],
    )


# ---------------------------------------------------------------------------------------------
# Paired differences
# ---------------------------------------------------------------------------------------------


@dataclass
class PairedDiff:
    """A - B on shared (question, turn) items of one category (or overall)."""

    estimate: Estimate
    p_value: float
    p_holm: float
    wins: int
    ties: int
    losses: int
    length_controlled: Estimate | None
    length_ratio: float = _NAN  # geometric mean of (chars_A + 1) / (chars_B + 1)
    length_extrapolated: bool = False  # equal length lies outside the observed log-length differences

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"estimate": self.estimate.to_dict(), "p_value": self.p_value, "p_holm": self.p_holm,
                          "wins": self.wins, "ties": self.ties, "losses": self.losses,
                          "length_controlled": self.length_controlled.to_dict() if self.length_controlled else None,
                          "length_ratio": self.length_ratio, "length_extrapolated": self.length_extrapolated})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedDiff:
        lc = d.get("length_controlled")
        return cls(Estimate.from_dict(d["estimate"]), _f(d["p_value"]), _f(d["p_holm"]), int(d["wins"]),
                   int(d["ties"]), int(d["losses"]), Estimate.from_dict(lc) if lc else None,
                   _f(d.get("length_ratio")), bool(d.get("length_extrapolated", False)))


@dataclass
class PairedComparison:
    label: str
    row_a: str
    row_b: str
    same_judge: bool
    n_pairs: int
    only_a: int  # items scored for A but not B
    only_b: int
    categories: dict[str, PairedDiff]
    overall: PairedDiff

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "row_a": self.row_a, "row_b": self.row_b, "same_judge": self.same_judge,
                "n_pairs": self.n_pairs, "only_a": self.only_a, "only_b": self.only_b,
                "categories": {k: v.to_dict() for k, v in self.categories.items()}, "overall": self.overall.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedComparison:
        return cls(d["label"], d["row_a"], d["row_b"], bool(d["same_judge"]), int(d["n_pairs"]), int(d["only_a"]),
                   int(d["only_b"]), {k: PairedDiff.from_dict(v) for k, v in d["categories"].items()},
                   PairedDiff.from_dict(d["overall"]))


def _wtl(diffs: Sequence[float], eps: float) -> tuple[int, int, int]:
    d = np.asarray(diffs, dtype=float)
    ties = int(np.sum(np.abs(d) < eps))
    return int(np.sum(d >= eps)), ties, int(np.sum(d <= -eps))


def _paired(a: RowJudgments, pa: _Parsed, b: RowJudgments, pb: _Parsed, label: str, categories: Sequence[str], *,
            n_resamples: int, seed: int, method: str, tie_epsilon: float = TIE_EPSILON) -> PairedComparison:
    shared: dict[str, list[tuple[str, float, float | None]]] = defaultdict(list)
    for key, item in pa.items.items():
        other = pb.items.get(key)
        if other is None:
            continue
        x = None
        if item.chars is not None and other.chars is not None:
            x = math.log(item.chars + 1) - math.log(other.chars + 1)
        shared[item.category].append((item.question, item.score - other.score, x))
    order = [c for c in categories if c in shared] + [c for c in shared if c not in categories]
    n_permutations = max(n_resamples, 9999)

    def seed_for(*parts: str) -> list[int]:
        return _seed(seed, "pair", a.row, b.row, *parts)

    def length_strata(entries: list[tuple[str, float, float | None]]) -> tuple[np.ndarray, int]:
        rows = [(q, (1.0, x, d, x * x, x * d)) for q, d, x in entries if x is not None]
        return _clusters(rows, 5), len(rows)

    def length_shape(entries: list[tuple[str, float, float | None]]) -> tuple[float, bool]:
        xs = np.array([x for _, _, x in entries if x is not None])
        if xs.size == 0:
            return _NAN, False
        spread = 1e-9 + 1e-9 * float(np.abs(xs).max())
        return float(np.exp(xs.mean())), bool(xs.min() > spread or xs.max() < -spread)

    diffs: dict[str, PairedDiff] = {}
    mean_strata: list[np.ndarray] = []
    lc_strata: list[np.ndarray] = []
    for category in order:
        entries = shared[category]
        strata = _clusters(((q, (d, 1.0)) for q, d, _ in entries), 2)
        mean_strata.append(strata)
        est = _estimate([strata], _mean_of_ratios, n_resamples=n_resamples, method=method, n_items=len(entries),
                        seed=seed_for(category, "diff"))
        lstrata, ln = length_strata(entries)
        lc = None
        if ln >= 3:
            lc = _estimate([lstrata], _ols_intercept, n_resamples=n_resamples, method=method, n_items=ln,
                           seed=seed_for(category, "length"))
            lc_strata.append(lstrata)
        p = sign_flip_p_value(strata[:, 0], n_permutations=n_permutations, seed=seed_for(category, "p"))
        diffs[category] = PairedDiff(est, p, _NAN, *_wtl([d for _, d, _ in entries], tie_epsilon), lc,
                                     *length_shape(entries))
    for category, adjusted in zip(order, holm([diffs[c].p_value for c in order])):
        diffs[category].p_holm = adjusted

    all_diffs = [d for c in order for _, d, _ in shared[c]]
    if order:
        k = len(order)
        overall_est = _estimate(mean_strata, _mean_of_ratios, n_resamples=n_resamples, method=method,
                                n_items=len(all_diffs), seed=seed_for("overall", "diff"))
        weighted = np.concatenate([s[:, 0] / (k * s[:, 1].sum()) for s in mean_strata])
        overall_p = sign_flip_p_value(weighted, n_permutations=n_permutations, seed=seed_for("overall", "p"))
        overall_lc = None
        if lc_strata and len(lc_strata) == k:  # every category has lengths: same categories as the difference
            overall_lc = _estimate(lc_strata, _fixed_effects_intercept, n_resamples=n_resamples, method=method,
                                   n_items=int(sum(s[:, 0].sum() for s in lc_strata)), seed=seed_for("overall", "length"))
        overall = PairedDiff(overall_est, overall_p, _NAN, *_wtl(all_diffs, tie_epsilon), overall_lc,
                             *length_shape([e for c in order for e in shared[c]]))
    else:
        overall = PairedDiff(_EMPTY, _NAN, _NAN, 0, 0, 0, None)
    same_judge = not (a.judge and b.judge and a.judge != b.judge)
    return PairedComparison(label, a.row, b.row, same_judge, len(all_diffs), len(pa.items) - len(all_diffs),
                            len(pb.items) - len(all_diffs), diffs, overall)


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
        return _jsonable({"schema": SCHEMA, "categories": self.categories, "seen": self.seen,
                          "rows": [r.to_dict() for r in self.rows], "pairs": [p.to_dict() for p in self.pairs],
                          "settings": self.settings})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        if d.get("schema", SCHEMA) != SCHEMA:
            raise ValueError(f"not a {SCHEMA} comparison: schema {d.get('schema')!r}")
        return cls(list(d["categories"]), dict(d["seen"]), [RowSummary.from_dict(r) for r in d["rows"]],
                   [PairedComparison.from_dict(p) for p in d["pairs"]], dict(d["settings"]))


def default_comparisons(rows: Sequence[RowJudgments], challenger: str | None = None) -> list[tuple[str, str, str]]:
    """(row_a, row_b, label) pairs: every trained arm other than `unscored` against the trained
    `unscored` row of the same base model, and the challenger against the champion row."""
    pairs = []
    unscored = {}
    for r in rows:
        if r.row_kind == "trained" and r.arm == "unscored":
            unscored.setdefault(r.base_model, r)
    for r in rows:
        if r.row_kind == "trained" and r.arm and r.arm != "unscored" and r.base_model in unscored:
            base = r.base_model or "?"
            pairs.append((r.row, unscored[r.base_model].row, f"{base}: {r.arm} vs unscored"))
    champion = next((r for r in rows if r.row_kind == "champion"), None)
    if challenger and champion is not None and challenger != champion.row:
        if not any(r.row == challenger for r in rows):
            raise ValueError(f"challenger {challenger!r} is not one of the rows")
        pairs.append((challenger, champion.row, "challenger vs champion"))
    return pairs


def _category_order(parsed: Iterable[_Parsed], given: Sequence[str] | None) -> list[str]:
    order = list(dict.fromkeys(given or []))
    for p in parsed:
        order += [c for c in p.categories if c not in order]
    return order


def _seen_map(parsed: Iterable[_Parsed]) -> dict[str, bool | None]:
    seen: dict[str, bool | None] = {}
    for p in parsed:
        for category, flag in p.seen.items():
            if seen.get(category) is None:
                seen[category] = flag
    return seen


def _check_resamples(n_resamples: int) -> None:
    if int(n_resamples) < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be at least {MIN_RESAMPLES}, got {n_resamples}")


def compare_rows(rows: Sequence[RowJudgments], *, comparisons: Sequence[tuple[str, str, str]] | None = None,
                 n_resamples: int = MIN_RESAMPLES, seed: int = 0, gpu_hour_usd: float = 0.0,
                 categories: Sequence[str] | None = None, ci_method: str = "BCa",
                 tie_epsilon: float = TIE_EPSILON) -> Comparison:
    """Summarise every row and compute the paired differences of `comparisons`.

    comparisons: (row_a, row_b, label) pairs, differences are A - B; None = `default_comparisons(rows)`.
    categories: the category order to use first; others follow by first appearance.
    """
    _check_resamples(n_resamples)
    _check_method(ci_method)
    names = [r.row for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"row names must be unique, got {names}")
    parsed = {r.row: _parse(r) for r in rows}
    order = _category_order(parsed.values(), categories)
    seen = _seen_map(parsed.values())
    by_name = {r.row: r for r in rows}
    summaries = [_summarise_row(r, parsed[r.row], order, seen, n_resamples=n_resamples, seed=seed, method=ci_method,
                                gpu_hour_usd=gpu_hour_usd) for r in rows]
    pairs = []
    for row_a, row_b, label in (default_comparisons(rows) if comparisons is None else comparisons):
        for name in (row_a, row_b):
            if name not in by_name:
                raise ValueError(f"comparison {label!r} names row {name!r}, which is not one of {names}")
        pairs.append(_paired(by_name[row_a], parsed[row_a], by_name[row_b], parsed[row_b], label, order,
                             n_resamples=n_resamples, seed=seed, method=ci_method, tie_epsilon=tie_epsilon))
    settings = {"n_resamples": int(n_resamples), "seed": int(seed), "ci_method": ci_method, "confidence": CONFIDENCE,
                "n_permutations": max(int(n_resamples), 9999), "gpu_hour_usd": float(gpu_hour_usd),
                "tie_epsilon": float(tie_epsilon), "resampling_unit": "question (its turns move together)"}
    return Comparison(order, {c: seen.get(c) for c in order}, summaries, pairs, settings)


# ---------------------------------------------------------------------------------------------
# Gate v2
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionGate:
    """When a challenger replaces the champion (scores on the judge's 1-10 scale).

    min_improvement: the lower bound of the 95% CI of the overall paired difference must exceed it.
    promotion_tolerance: a category whose difference's CI upper bound is below -promotion_tolerance
        is credibly worse and blocks the promotion.
    min_paired_questions: shared (question, turn) pairs needed to compare at all.
    """

    min_improvement: float = 0.0
    promotion_tolerance: float = 0.25
    min_paired_questions: int = 20
    n_resamples: int = MIN_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_improvement", "promotion_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PromotionGate.{name} must be a finite number >= 0, got {value}")
        if self.min_paired_questions < 1:
            raise ValueError(f"PromotionGate.min_paired_questions must be >= 1, got {self.min_paired_questions}")
        _check_resamples(self.n_resamples)


@dataclass
class GateDecision:
    """The verdict, one sentence per check (blocking ones first), and the figures behind them."""

    promote: bool
    reasons: list[str]
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({"promote": self.promote, "reasons": self.reasons, "figures": self.figures})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateDecision:
        return cls(bool(d["promote"]), list(d["reasons"]), dict(d.get("figures", {})))


def _signed(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.2f}"


def _ci_text(est: Estimate) -> str:
    return f"{_signed(est.mean)} [95% CI {_signed(est.ci_low)}, {_signed(est.ci_high)}]"


def decide_promotion(challenger: RowJudgments, champion: RowJudgments | None, gate: PromotionGate = PromotionGate(),
                     *, fallback_champion_metrics: Mapping[str, float] | None = None,
                     fallback_champion_judge: str | None = None) -> GateDecision:
    """Gate v2: promote the challenger over the champion only on evidence.

    With a champion row judged in this run: refuse if the judges differ; (a) at least
    `min_paired_questions` shared (question, turn) pairs; (b) the lower bound of the 95% CI of the
    overall paired difference > `min_improvement`; (c) no category with shared pairs whose paired
    difference's CI upper bound is < -`promotion_tolerance`, and none present in either row without
    shared pairs. Without a champion row but with `fallback_champion_metrics` (its logged MLflow
    metrics `judge/overall`, `judge/<category>/overall`): an unpaired comparison of the challenger's
    overall CI lower bound with the champion's overall mean, said to be a fallback. With neither:
    the first champion, promoted when every category present has a scored judgment.
    """
    if challenger.row_kind != "trained":
        raise ValueError(f"only trained rows are candidates for promotion; {challenger.row!r} is {challenger.row_kind}")
    parsed = _parse(challenger)
    summary = _summarise_row(challenger, parsed, parsed.categories, parsed.seen, n_resamples=gate.n_resamples,
                             seed=gate.seed, method="BCa", gpu_hour_usd=0.0)
    figures: dict[str, Any] = {"challenger": challenger.row, "min_improvement": gate.min_improvement,
                               "promotion_tolerance": gate.promotion_tolerance,
                               "min_paired_questions": gate.min_paired_questions,
                               "challenger_overall": summary.overall.to_dict()}
    unscored_cats = [c for c, s in summary.categories.items() if s.overall.n == 0]
    if champion is not None:
        return _decide_paired(challenger, parsed, champion, gate, figures)
    if fallback_champion_metrics is not None:
        return _decide_fallback(challenger, summary, unscored_cats, fallback_champion_metrics, fallback_champion_judge,
                                gate, figures)
    figures["mode"] = "first_champion"
    if not summary.categories:
        return GateDecision(False, [f"no champion yet, but {challenger.row} has no judgments at all: nothing to promote"],
                            figures)
    if unscored_cats:
        return GateDecision(False, [f"no champion yet, but {challenger.row} has no scored judgment in "
                                    f"{', '.join(unscored_cats)}: every category must be scored to become the first champion"],
                            figures)
    cats = ", ".join(f"{c} (n={s.overall.n})" for c, s in summary.categories.items())
    return GateDecision(True, [f"no champion yet: {challenger.row} becomes the first champion; every category present "
                               f"is scored: {cats}; overall {_ci_text(summary.overall)}"], figures)


def _decide_paired(challenger: RowJudgments, parsed: _Parsed, champion: RowJudgments, gate: PromotionGate,
                   figures: dict[str, Any]) -> GateDecision:
    figures.update(mode="paired", champion=champion.row, challenger_judge=challenger.judge, champion_judge=champion.judge)
    if challenger.judge != champion.judge:
        return GateDecision(False, [
            f"{challenger.row} was judged by {challenger.judge or 'an unknown judge'}, the champion row {champion.row} by "
            f"{champion.judge or 'an unknown judge'}: the scores are not comparable, nothing is promoted; "
            "re-judge both with the same judge"], figures)
    champion_parsed = _parse(champion)
    order = _category_order([parsed, champion_parsed], None)
    pair = _paired(challenger, parsed, champion, champion_parsed, "challenger vs champion", order,
                   n_resamples=gate.n_resamples, seed=gate.seed, method="BCa")
    figures["n_pairs"] = pair.n_pairs
    figures["overall_difference"] = pair.overall.estimate.to_dict()
    figures["overall_p_value"] = pair.overall.p_value
    figures["categories"] = {c: {**d.estimate.to_dict(), "p_holm": d.p_holm} for c, d in pair.categories.items()}
    if pair.n_pairs < gate.min_paired_questions:
        return GateDecision(False, [
            f"only {pair.n_pairs} shared scored (question, turn) pairs between {challenger.row} and the champion row "
            f"{champion.row}, fewer than min_paired_questions {gate.min_paired_questions}: too few to compare, "
            "nothing is promoted"], figures)
    blocking: list[str] = []
    passing: list[str] = []
    overall = pair.overall.estimate
    head = f"overall paired difference {_ci_text(overall)} over {pair.n_pairs} shared (question, turn) pairs"
    if math.isfinite(overall.ci_low) and overall.ci_low > gate.min_improvement:
        passing.append(f"{head} > min_improvement {gate.min_improvement:.2f}")
    elif not math.isfinite(overall.ci_low):
        blocking.append(f"{head}: no confidence interval (too few questions per category), cannot show an improvement")
    else:
        blocking.append(f"{head}: the lower bound {_signed(overall.ci_low)} is not above min_improvement "
                        f"{gate.min_improvement:.2f}, no evidence of an improvement")
    missing = [c for c in order if c not in pair.categories]
    if missing:
        blocking.append(f"categories {', '.join(missing)} have no shared scored (question, turn) pairs: they cannot be "
                        "compared and could hide a regression")
    worse = []
    for category, diff in pair.categories.items():
        est = diff.estimate
        if math.isfinite(est.ci_high) and est.ci_high < -gate.promotion_tolerance:
            worse.append(category)
            blocking.append(f"category {category} is credibly worse: paired difference {_ci_text(est)} over {est.n} pairs, "
                            f"upper bound below -promotion_tolerance {-gate.promotion_tolerance:.2f}")
    if not worse and pair.categories:
        lowest_cat = min(pair.categories, key=lambda c: (pair.categories[c].estimate.ci_high
                                                         if math.isfinite(pair.categories[c].estimate.ci_high) else math.inf))
        lowest = pair.categories[lowest_cat].estimate
        passing.append(f"no category credibly worse than -{gate.promotion_tolerance:.2f} (lowest CI upper bound: "
                       f"{lowest_cat} {_ci_text(lowest)})")
    lc = pair.overall.length_controlled
    if lc is not None:
        figures["overall_length_controlled"] = lc.to_dict()
        passing.append(f"for information: length-controlled overall difference {_ci_text(lc)} "
                       "(the difference expected at equal answer length)")
    return GateDecision(not blocking, blocking + passing, figures)


def _decide_fallback(challenger: RowJudgments, summary: RowSummary, unscored_cats: list[str],
                     metrics: Mapping[str, float], champion_judge: str | None, gate: PromotionGate,
                     figures: dict[str, Any]) -> GateDecision:
    figures["mode"] = "fallback_unpaired"
    note = ("fallback: the champion could not be re-evaluated in this run, so this is an unpaired comparison "
            "against its logged MLflow metrics, weaker evidence than a paired one")
    blocking: list[str] = []
    passing: list[str] = []
    if champion_judge and challenger.judge and champion_judge != challenger.judge:
        blocking.append(f"{challenger.row} was judged by {challenger.judge}, the champion by {champion_judge}: the "
                        "scores are not comparable, nothing is promoted")
        return GateDecision(False, [note] + blocking, figures)
    champion_overall = _valid_number(metrics.get("judge/overall"))
    figures["champion_overall"] = champion_overall
    overall = summary.overall
    if unscored_cats:
        blocking.append(f"{challenger.row} has no scored judgment in {', '.join(unscored_cats)}")
    if champion_overall is None:
        blocking.append("the champion's metrics have no judge/overall to compare against; promote by hand")
    else:
        head = (f"challenger overall {_ci_text(overall).lstrip('+')} vs the champion's logged overall "
                f"{champion_overall:.2f}: lower bound minus champion {_signed(overall.ci_low - champion_overall)}")
        if math.isfinite(overall.ci_low) and overall.ci_low - champion_overall > gate.min_improvement:
            passing.append(f"{head} > min_improvement {gate.min_improvement:.2f}")
        else:
            blocking.append(f"{head}, not above min_improvement {gate.min_improvement:.2f}")
    for category, cat in summary.categories.items():
        logged = _valid_number(metrics.get(f"judge/{_metric_name(category)}/overall",
                                           metrics.get(f"judge/{category}/overall")))
        est = cat.overall
        if logged is not None and math.isfinite(est.ci_high) and est.ci_high < logged - gate.promotion_tolerance:
            blocking.append(f"category {category} is credibly worse: {est.mean:.2f} [95% CI {est.ci_low:.2f}, "
                            f"{est.ci_high:.2f}], upper bound below the champion's {logged:.2f} - promotion_tolerance "
                            f"{gate.promotion_tolerance:.2f}")
    return GateDecision(not blocking, [note] + blocking + passing, figures)


def _valid_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# MLflow metrics
# ---------------------------------------------------------------------------------------------


def _metric_name(category: str) -> str:
    """A category as one MLflow metric path segment: letters/digits (any script), _ - and space."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_- " else "_" for ch in str(category)).strip()
    return cleaned or "_"


def _metric_names(categories: Sequence[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    used: set[str] = set()
    for category in categories:
        base = candidate = _metric_name(category)
        k = 2
        while candidate in used:
            candidate, k = f"{base}_{k}", k + 1
        used.add(candidate)
        names[category] = candidate
    return names


def metrics_for_row(comparison: Comparison, row: str) -> dict[str, float]:
    """MLflow metrics for one row: `judge/<category>/<criterion|overall>` with `_ci_low`/`_ci_high`,
    `judge/<category>/n`, `judge/overall` (+ CI), `judge/overall_seen`/`_unseen` (+ CI); for a trained
    row compared against `unscored` of its base (same judge): `delta/<category>/overall` (+ CI),
    `delta/overall` (+ CI), `delta/overall_length_controlled` (+ CI), `delta/n_pairs`; and
    `length/mean_chars`, `cost/usd_per_1000_answers` when known. Non-finite values are left out."""
    summary = comparison.row(row)
    names = _metric_names(comparison.categories)
    metrics: dict[str, float] = {}

    def put(name: str, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            metrics[name] = float(value)

    def put_est(prefix: str, est: Estimate | None) -> None:
        if est is not None:
            put(prefix, est.mean)
            put(f"{prefix}_ci_low", est.ci_low)
            put(f"{prefix}_ci_high", est.ci_high)

    for category, cat in summary.categories.items():
        key = names[category]
        for score_name, est in cat.scores.items():
            put_est(f"judge/{key}/{score_name}", est)
        put(f"judge/{key}/n", cat.overall.n)
    put_est("judge/overall", summary.overall)
    put_est("judge/overall_seen", summary.seen)
    put_est("judge/overall_unseen", summary.unseen)
    put("length/mean_chars", summary.mean_chars)
    put("cost/usd_per_1000_answers", summary.usd_per_1000_answers)
    if summary.row_kind == "trained" and summary.arm != "unscored":
        unscored = [r.row for r in comparison.rows
                    if r.row_kind == "trained" and r.arm == "unscored" and r.base_model == summary.base_model]
        pair = next((p for u in unscored if (p := comparison.pair(row, u)) is not None and p.same_judge), None)
        if pair is not None:
            for category, diff in pair.categories.items():
                put_est(f"delta/{names.get(category, _metric_name(category))}/overall", diff.estimate)
            put_est("delta/overall", pair.overall.estimate)
            put_est("delta/overall_length_controlled", pair.overall.length_controlled)
            put("delta/n_pairs", pair.n_pairs)
    return metrics


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def ordered_rows(rows: Sequence[RowSummary]) -> list[RowSummary]:
    """Table order: teachers; per base model (first appearance) its base row, then control, unscored,
    self_guided and other arms; champions; anything else."""
    out: list[RowSummary] = [r for r in rows if r.row_kind == "teacher"]
    bases = list(dict.fromkeys(r.base_model for r in rows if r.row_kind in ("base", "trained")))
    for base in bases:
        out += [r for r in rows if r.row_kind == "base" and r.base_model == base]
        trained = [r for r in rows if r.row_kind == "trained" and r.base_model == base]
        out += sorted(trained, key=lambda r: _ARM_ORDER.get(r.arm, len(_ARM_ORDER)))
    out += [r for r in rows if r.row_kind == "champion"]
    return out + [r for r in rows if r not in out]


def _column(category: str, seen: bool | None) -> str:
    return f"{category} (unseen)" if seen is False else category


def _cell(est: Estimate | None) -> str:
    if est is None or est.n == 0 or not math.isfinite(est.mean):
        return "-"
    if not math.isfinite(est.half_width):
        return f"{est.mean:.2f} (n={est.n})"
    return f"{est.mean:.2f} ± {est.half_width:.2f}"


def _ci_cell(est: Estimate | None) -> str:
    if est is None or est.n == 0:
        return "-"
    return f"{_signed(est.mean)} [{_signed(est.ci_low)}, {_signed(est.ci_high)}]"


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]], list[RowSummary], list[list[Estimate | None]]]:
    """Header, cells, rows in table order, and the estimate behind each score cell (None elsewhere)."""
    has_seen = any(r.seen for r in comparison.rows) and any(r.unseen for r in comparison.rows)
    header = ["row", "kind"] + [_column(c, comparison.seen.get(c)) for c in comparison.categories] + ["overall"]
    header += ["seen", "unseen"] if has_seen else []
    header += ["n", "failed"]
    ordered = ordered_rows(comparison.rows)
    body, estimates = [], []
    for r in ordered:
        ests = [r.categories[c].overall if c in r.categories else None for c in comparison.categories] + [r.overall]
        ests += [r.seen, r.unseen] if has_seen else []
        kind = r.row_kind + (f" ({r.arm})" if r.arm and r.row_kind == "trained" else "")
        body.append([r.row, kind] + [_cell(e) for e in ests] + [str(r.overall.n), str(r.n_failed)])
        estimates.append([None, None, *ests, None, None])
    return header, body, ordered, estimates


def _pair_rows(pair: PairedComparison) -> list[list[str]]:
    out = []
    for category, diff in [*pair.categories.items(), ("overall", pair.overall)]:
        p = _p_text(diff.p_holm) if category != "overall" else f"{_p_text(diff.p_value)} (unadj.)"
        ratio = "-" if not math.isfinite(diff.length_ratio) else f"{diff.length_ratio:.2f}x"
        lc = _ci_cell(diff.length_controlled) + (" †" if diff.length_controlled and diff.length_extrapolated else "")
        out.append([pair.label, category, str(diff.estimate.n), _ci_cell(diff.estimate), p,
                    f"{diff.wins}/{diff.ties}/{diff.losses}", ratio, lc])
    return out


_PAIR_HEADER = ["comparison", "category", "n pairs", "diff [95% CI]", "p (Holm)", "W/T/L", "length A/B",
                "length-controlled [95% CI]"]
_EXTRAPOLATION_NOTE = ("† every answer of A is longer (or every one shorter) than B's: equal length lies outside the "
                       "data, so the length-controlled figure is an extrapolation; read it with care.")
_LENGTH_HEADER = ["row", "mean chars", "Pearson r (p)", "Spearman ρ (p)", "n"]
_COST_HEADER = ["row", "answers", "USD per 1000 answers", "basis", "overall"]


def _corr_text(c: Correlation | None) -> str:
    return "-" if c is None else f"{c.r:+.2f} ({_p_text(c.p)})"


def _length_rows(ordered: Sequence[RowSummary]) -> list[list[str]]:
    return [[r.row, "-" if r.mean_chars is None else f"{r.mean_chars:,.0f}", _corr_text(r.length_pearson),
             _corr_text(r.length_spearman), str(len(r.length_points))] for r in ordered]


def _cost_rows(ordered: Sequence[RowSummary]) -> list[list[str]]:
    return [[r.row, str(r.answers or r.n_judgments), _money(r.usd_per_1000_answers), r.cost_basis, _cell(r.overall)]
            for r in ordered]


def _method_note(comparison: Comparison) -> str:
    s = comparison.settings
    return (f"Cells: mean ± half-width of the 95% {s['ci_method']} bootstrap CI ({s['n_resamples']} resamples, seed "
            f"{s['seed']}; questions resampled within each category, the turns of a question together). Overall = mean "
            "of the category means (stratified bootstrap). Paired differences are A − B on shared (question, turn) "
            "items; p: two-sided sign-flip permutation test on questions, Holm-adjusted across the categories of a "
            "comparison; W/T/L per item; length-controlled = intercept of the difference regressed on the log-length "
            "difference (the difference expected at equal answer length).")


def _any_extrapolated(comparison: Comparison) -> bool:
    return any(d.length_controlled is not None and d.length_extrapolated
               for p in comparison.pairs for d in [*p.categories.values(), p.overall])


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _judges(comparison: Comparison) -> str:
    judges = list(dict.fromkeys(r.judge for r in comparison.rows if r.judge))
    return ", ".join(judges) if judges else "unknown"


def _decision_lines(decision: GateDecision) -> list[str]:
    verdict = "**promoted**" if decision.promote else "**not promoted**"
    lines = [f"Challenger {decision.figures.get('challenger', '')}: {verdict}", ""]
    return lines + [f"- {reason}" for reason in decision.reasons]


def report_markdown(comparison: Comparison, decision: GateDecision | None = None) -> str:
    """The paper's Table 4.1 with uncertainty, the paired differences, length, cost and the gate."""
    header, body, ordered, _ = _table_rows(comparison)
    lines = ["# Evaluation with uncertainty", "", f"Judge: {_judges(comparison)}", ""]
    lines += _md_table(header, body)
    lines += ["", _method_note(comparison)]
    if comparison.pairs:
        lines += ["", "## Paired differences (A − B)", ""]
        lines += _md_table(_PAIR_HEADER, [row for pair in comparison.pairs for row in _pair_rows(pair)])
        if _any_extrapolated(comparison):
            lines += ["", _EXTRAPOLATION_NOTE]
        for pair in comparison.pairs:
            if not pair.same_judge:
                lines += ["", f"Warning: {pair.label} compares rows judged by different judges; not comparable."]
    lines += ["", "## Answer length", ""] + _md_table(_LENGTH_HEADER, _length_rows(ordered))
    lines += ["", "## Cost", ""] + _md_table(_COST_HEADER, _cost_rows(ordered))
    if decision is not None:
        lines += ["", "## Promotion gate", ""] + _decision_lines(decision)
    return "\n".join(lines) + "\n"


# --- figures ------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _row_colours(comparison: Comparison) -> dict[str, Any]:
    """One colour per row, the same in every plot."""
    from matplotlib import colormaps

    rows = ordered_rows(comparison.rows)
    cmap = colormaps["tab10" if len(rows) <= 10 else "tab20"]
    return {r.row: cmap(i % cmap.N) for i, r in enumerate(rows)}


def _forest_png(comparison: Comparison) -> bytes | None:
    pairs = [p for p in comparison.pairs if p.n_pairs]
    if not pairs:
        return None
    ncols = min(len(pairs), 2)
    nrows = math.ceil(len(pairs) / ncols)
    n_cats = max(len(p.categories) for p in pairs) + 1
    same_rows = len({tuple(p.categories) for p in pairs}) == 1
    figure = _new_figure(4.2 * ncols + 2.2, nrows * (0.38 * n_cats + 1.2) + 0.4)
    axes = figure.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=same_rows)
    for index, (ax, pair) in enumerate(zip(axes.flat, pairs)):
        entries = [*pair.categories.items(), ("overall", pair.overall)]
        labels = []
        for y, (category, diff) in enumerate(reversed(entries)):
            est = diff.estimate
            credible = math.isfinite(est.ci_low) and (est.ci_low > 0 or est.ci_high < 0)
            colour = ("tab:green" if est.mean > 0 else "tab:red") if credible else "0.35"
            overall = category == "overall"
            if math.isfinite(est.ci_low):
                ax.plot([est.ci_low, est.ci_high], [y, y], color=colour, lw=3 if overall else 1.8,
                        solid_capstyle="butt")
            ax.plot(est.mean, y, marker="D" if overall else "o", ms=8 if overall else 6, color=colour)
            labels.append(f"{_column(category, comparison.seen.get(category))}  (n={est.n})")
        ax.axvline(0, color="black", lw=0.8)
        ax.axhline(0.5, color="0.8", lw=0.8)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        if same_rows and index % ncols:
            ax.tick_params(labelleft=False)
        ax.set_title(pair.label, fontsize=10)
        ax.grid(axis="x", color="0.9")
        ax.set_xlabel(f"score difference {pair.row_a} − {pair.row_b} (95% CI)", fontsize=8)
        ax.tick_params(labelbottom=True)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    figure.suptitle("Paired differences per category (green/red: CI excludes 0)", fontsize=11)
    return _png(figure)


def _scatter_png(comparison: Comparison) -> bytes | None:
    rows = [r for r in ordered_rows(comparison.rows) if r.length_points]
    if not rows:
        return None
    figure = _new_figure(8.5, 4.8)
    ax = figure.subplots()
    rng = np.random.default_rng(0)
    all_chars = np.concatenate([np.asarray(r.length_points)[:, 0] for r in rows])
    positive = all_chars[all_chars > 0]
    log_x = positive.size and positive.max() / max(positive.min(), 1.0) > 20
    colours = _row_colours(comparison)
    for r in rows:
        colour = colours[r.row]
        points = np.asarray(r.length_points)
        jitter = rng.uniform(-0.12, 0.12, len(points))
        x = np.maximum(points[:, 0], 1.0) if log_x else points[:, 0]
        ax.scatter(x, points[:, 1] + jitter, s=14, alpha=0.55, color=colour, edgecolors="none", label=r.row)
        ax.scatter([np.mean(x)], [np.mean(points[:, 1])], s=90, marker="X", color=colour, edgecolors="black",
                   linewidths=0.7, zorder=3)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("answer length (characters" + (", log scale)" if log_x else ")"))
    ax.set_ylabel("judge score (1-10, jittered ±0.12)")
    ax.set_title("Score against answer length (X: row mean)", fontsize=11)
    ax.grid(color="0.92")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, markerscale=1.5)
    return _png(figure)


def _cost_png(comparison: Comparison) -> bytes | None:
    rows = [r for r in ordered_rows(comparison.rows)
            if r.usd_per_1000_answers is not None and r.usd_per_1000_answers > 0 and r.overall.n]
    if not rows:
        return None
    figure = _new_figure(7.5, 4.6)
    ax = figure.subplots()
    costs = np.array([r.usd_per_1000_answers for r in rows])
    colours = _row_colours(comparison)
    for r in rows:
        colour = colours[r.row]
        est = r.overall
        low = est.mean - est.ci_low if math.isfinite(est.ci_low) else 0.0
        high = est.ci_high - est.mean if math.isfinite(est.ci_high) else 0.0
        ax.errorbar([r.usd_per_1000_answers], [est.mean], yerr=[[low], [high]], fmt="o", color=colour, capsize=4,
                    ms=7, label=r.row)
    from matplotlib.ticker import FuncFormatter, LogLocator

    log_x = costs.max() / costs.min() > 10
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
    ax.set_xlabel("USD per 1000 answers" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("overall judge score (95% CI)")
    ax.set_title("Cost against quality (up and left is better)", fontsize=11)
    ax.grid(color="0.92")
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(figure)


_CJK_FONTS = ("Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "Nanum Gothic", "Malgun Gothic", "AppleGothic",
              "Source Han Sans KR", "UnDotum")


def report_figures(comparison: Comparison) -> dict[str, bytes]:
    """The report's plots as PNG bytes: `forest`, `length`, `cost` (each only when there is data).

    Korean names render with an installed Korean font when there is one (glyph fallback after
    DejaVu Sans); without one they show as boxes, without warnings.
    """
    import matplotlib
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    families = ["DejaVu Sans", *[name for name in _CJK_FONTS if name in installed]]
    with matplotlib.rc_context({"font.family": families}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        figures = {"forest": _forest_png(comparison), "length": _scatter_png(comparison), "cost": _cost_png(comparison)}
    return {name: png for name, png in figures.items() if png is not None}


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td:first-child,th:first-child,td.l{text-align:left}
tr.overall td{font-weight:600;background:#fafafa}td.up{color:#16794a}td.down{color:#b3261e}
p.note{font-size:12px;color:#555;max-width:1000px}img{max-width:100%;display:block;margin:8px 0 20px}
.promote{color:#16794a}.reject{color:#b3261e}
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, classes: Sequence[Sequence[str]] | None = None,
                titles: Sequence[Sequence[str]] | None = None, row_classes: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, value in enumerate(row):
            cls = classes[i][j] if classes else ""
            title = titles[i][j] if titles else ""
            attrs = (f' class="{cls}"' if cls else "") + (f' title="{html.escape(title)}"' if title else "")
            cells.append(f"<td{attrs}>{html.escape(str(value))}</td>")
        out.append(f"<tr{rc}>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _ci_title(est: Estimate | None) -> str:
    if est is None or est.n == 0:
        return ""
    return f"95% CI [{est.ci_low:.3f}, {est.ci_high:.3f}], n={est.n} items, {est.n_questions} questions"


def report_html(comparison: Comparison, decision: GateDecision | None = None) -> str:
    """A self-contained HTML page: the tables of `report_markdown` and the plots as inline PNGs."""
    header, body, ordered, estimates = _table_rows(comparison)
    titles = [[_ci_title(e) for e in row] for row in estimates]
    left = [["l", "l"] + [""] * (len(header) - 2) for _ in body]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>selfguided evaluation</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Evaluation with uncertainty</h1>", f"<p>Judge: {html.escape(_judges(comparison))}</p>",
             _html_table(header, body, classes=left, titles=titles),
             f'<p class="note">{html.escape(_method_note(comparison))}</p>']
    if decision is not None:
        cls, verdict = ("promote", "promoted") if decision.promote else ("reject", "not promoted")
        parts += [f'<h2>Promotion gate: <span class="{cls}">{verdict}</span></h2>',
                  f"<p>Challenger: {html.escape(str(decision.figures.get('challenger', '')))}</p><ul>"]
        parts += [f"<li>{html.escape(reason)}</li>" for reason in decision.reasons] + ["</ul>"]
    figures = report_figures(comparison)

    def image(name: str, alt: str) -> str:
        data = base64.b64encode(figures[name]).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    if comparison.pairs:
        rows, classes, row_classes = [], [], []
        for pair in comparison.pairs:
            for category, diff in [*pair.categories.items(), ("overall", pair.overall)]:
                est = diff.estimate
                sign = "up" if est.ci_low > 0 else "down" if est.ci_high < 0 else ""
                classes.append(["l", "l", "", sign, "", "", "", ""])
                row_classes.append("overall" if category == "overall" else "")
            rows += _pair_rows(pair)
        parts += ["<h2>Paired differences (A − B)</h2>",
                  _html_table(_PAIR_HEADER, rows, classes=classes, row_classes=row_classes)]
        if _any_extrapolated(comparison):
            parts.append(f'<p class="note">{html.escape(_EXTRAPOLATION_NOTE)}</p>')
        parts += [f'<p class="note">Warning: {html.escape(p.label)} compares rows judged by different judges; '
                  "not comparable.</p>" for p in comparison.pairs if not p.same_judge]
        if "forest" in figures:
            parts.append(image("forest", "forest plot of the paired differences per category"))
    parts += ["<h2>Answer length</h2>", _html_table(_LENGTH_HEADER, _length_rows(ordered))]
    if "length" in figures:
        parts.append(image("length", "score against answer length"))
    parts += ["<h2>Cost</h2>", _html_table(_COST_HEADER, _cost_rows(ordered))]
    if "cost" in figures:
        parts.append(image("cost", "cost against quality"))
    else:
        parts.append('<p class="note">No row has a measured cost (teacher API usage, or generate time with '
                     "gpu_hour_usd &gt; 0).</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

