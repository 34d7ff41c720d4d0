"""Interval estimates on question clusters: the one place where evaluation's numbers get their error bars.

Why t-based and not the bootstrap. Judge scores are clustered by question and test sets are small
(2-14 questions a category): a percentile or BCa bootstrap interval covers far less than 95% at such
n (normal data: 50% at n=2, 74% at n=3, 83% at n=5, 91.5% at n=14, issue 18); the Student t interval
on question means is exact for normal question means and close for judge scores
(`simulated_coverage`, quoted by the report's method note). So:

- *Unit.* A question is a cluster: `clusters` holds, per question, [sum of its item values, number
  of items] (an item is a scored (question, turn)). A mean is the ratio estimator sum/count (the
  plain item mean), its variance the cluster-robust (linearised) one, n/(n-1) sum (s_q - R c_q)^2 / C^2,
  with n - 1 degrees of freedom; it is s^2/n when every question has one item.
- *Small n.* n = 0: no estimate; n = 1: a mean, no variance; below `min_questions` (default 5,
  `MIN_CATEGORY_QUESTIONS`) the interval is not shown (NaN ends) although its standard error is
  kept for planning.
- *Overall = mean of the category means* (each weighs the same, `judge/overall`); its variance
  sum_c V_c / K^2 carries each category's own noise (issue 28: 8-35% false promotions when small
  categories borrowed the big ones' variance): 2+ questions, its own (n - 1 df; Satterthwaite across
  them); the 1-question categories, the spread of their values between each other (m - 1 df; never
  borrowed; a true difference between them only widens it), a lone one its distance from the others'
  mean (1 df). That term has few df and can dominate, where Satterthwaite is anti-conservative, so it
  is added by Banerjee's rule, half-width^2 = t_{df_rest}^2 V_rest + t_{m-1}^2 V_1, as an effective
  df (`combine`). A row's own scores near the ceiling are skewed: three 1-question values close
  together at 9-10 gave a short interval (90-91%), so `_skew_floor` adds to their spread what the
  skew of the 2+-question categories implies (not to paired differences). Training-seed variance:
  Satterthwaite, the seed term at an upper confidence limit (seeds.py).
- *No spread*: values all alike give no interval (a spread of 0 estimates nothing); the tests fall
  back on the exact sign test (`p_above`, `p_below`): n questions all on one side of the
  threshold give p = 2^-n, never 0 or 1 by fiat.
- *p-values* are the matching t tests (so p < 0.05 exactly when the 95% interval excludes 0);
  Holm's step-down adjustment for families. Only numpy here; scipy.special where it is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

CONFIDENCE = 0.95
MIN_CATEGORY_QUESTIONS = 5
POWER = 0.8
_NAN = float("nan")
_SPECIAL: Any = None


def _special() -> Any:
    global _SPECIAL
    if _SPECIAL is None:
        from scipy import special

        _SPECIAL = special
    return _SPECIAL


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (the normal one for df = inf)."""
    if not (df > 0):
        return _NAN
    special = _special()
    return float(special.ndtri(p)) if math.isinf(df) else float(special.stdtrit(df, p))


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with df degrees of freedom."""
    special = _special()
    return float(special.ndtr(x)) if math.isinf(df) else float(special.stdtr(df, x))


def jsonable(value: Any) -> Any:
    """Non-finite floats become None so a result is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.floating, np.integer)):
        return jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def as_float(value: Any) -> float:
    """A JSON number back to a float (None = NaN)."""
    return _NAN if value is None else float(value)


@dataclass
class Estimate:
    """A mean with its 95% CI (NaN ends when there is none), standard error and degrees of freedom.
    n = scored (question, turn) items, n_questions = clusters; `se` and `df` give one-sided bounds at
    any level (`lower_bound`) and the planner's minimal detectable difference."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    n_questions: int
    se: float = _NAN
    df: float = _NAN

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    @property
    def half_width(self) -> float:
        return max(0.0, (self.ci_high - self.ci_low) / 2) if self.has_interval else _NAN

    @property
    def no_spread(self) -> bool:
        """Every question gave the same value: a spread of 0 estimates nothing, so no interval (a width-0
        one would claim certainty from a model that always answers alike, scored alike)."""
        return self.se == 0.0

    def lower_bound(self, alpha: float) -> float:
        """One-sided (1 - alpha) lower confidence bound; NaN without a standard error or a spread."""
        if not (math.isfinite(self.se) and self.se > 0 and self.df > 0):
            return _NAN
        return self.mean - t_quantile(1 - alpha, self.df) * self.se

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n,
                         "n_questions": self.n_questions, "se": self.se, "df": self.df})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        return cls(as_float(d["mean"]), as_float(d["ci_low"]), as_float(d["ci_high"]), int(d["n"]),
                   int(d["n_questions"]), as_float(d.get("se")), as_float(d.get("df")))


EMPTY = Estimate(_NAN, _NAN, _NAN, 0, 0)


def clusters(pairs: Sequence[tuple[str, float]]) -> np.ndarray:
    """(question, value) items -> one row [sum, count] per question, in first-appearance order."""
    index: dict[str, int] = {}
    out: list[list[float]] = []
    for question, value in pairs:
        k = index.setdefault(question, len(index))
        if k == len(out):
            out.append([0.0, 0.0])
        out[k][0] += float(value)
        out[k][1] += 1.0
    return np.array(out, dtype=float).reshape(-1, 2)


def _ratio_parts(c: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(ratio mean, cluster-robust variance or NaN, per-question mean residuals)."""
    n = c.shape[0]
    total = c[:, 1].sum()
    mean = float(c[:, 0].sum() / total)
    residual = c[:, 0] - mean * c[:, 1]
    variance = float(n / (n - 1) * np.sum(residual ** 2) / total ** 2) if n >= 2 else _NAN
    return mean, variance, c[:, 0] / c[:, 1] - mean


def _interval(mean: float, variance: float, df: float, n: int, nq: int, show: bool) -> Estimate:
    if math.isfinite(variance) and math.isfinite(mean) and variance <= (1e-12 * max(1.0, abs(mean))) ** 2:
        variance = 0.0  # every value alike, up to rounding
    se = math.sqrt(variance) if math.isfinite(variance) and variance >= 0 else _NAN
    if show and math.isfinite(se) and se > 0 and df > 0:
        half = t_quantile(1 - (1 - CONFIDENCE) / 2, df) * se
        return Estimate(mean, mean - half, mean + half, n, nq, se, df)
    return Estimate(mean, _NAN, _NAN, n, nq, se, df)  # too few questions, or no spread (Estimate.no_spread)


def no_interval_reason(est: Estimate) -> str:
    """Why `est` has no interval, in the words every table and gate reason uses."""
    if est.no_spread and est.n_questions >= 2:
        return f"n={est.n_questions}, all alike: no spread to build an interval from"
    return f"n={est.n_questions}: too few for an interval"


def cluster_mean(c: np.ndarray, *, min_questions: int = MIN_CATEGORY_QUESTIONS) -> Estimate:
    """The mean of `c`'s items with its t interval on n - 1 df, shown from `min_questions` (>= 2) on."""
    n = c.shape[0]
    if n == 0:
        return EMPTY
    mean, variance, _ = _ratio_parts(c)
    return _interval(mean, variance, n - 1.0, int(c[:, 1].sum()), n, n >= max(2, min_questions))


BANERJEE_LEVEL = 0.98  # the one-sided level at which `combine`'s effective df matches Banerjee's bound
SHOWN_LIMIT = 0.3  # the printed paired difference: its 1-question term's chi^2 quantile (paired.py)


def combine(terms: Sequence[tuple[float, float]], bounded: Sequence[tuple[float, float]] = (),
            limit: float | None = None) -> tuple[float, float]:
    """(variance, df) of a sum of independent variance estimates (v, df): Welch-Satterthwaite across
    `terms`; `bounded` terms (few df, able to dominate: the 1-question categories, an offline
    reference) are added by Banerjee's conservative rule, half-width^2 = t_rest^2 V_rest + sum t_i^2 v_i,
    returned as the df whose t quantile gives that half-width at BANERJEE_LEVEL (one-sided); with
    `limit`, by Satterthwaite with each at its upper confidence limit v d / chi^2_{d, limit} instead."""
    terms = [(float(v), float(d)) for v, d in terms if math.isfinite(v) and d > 0]
    bounded = [(float(v), float(d)) for v, d in bounded if math.isfinite(v) and d > 0]
    v_rest = sum(v for v, _ in terms)
    denominator = sum(v * v / d for v, d in terms if v > 0)
    df_rest = v_rest ** 2 / denominator if denominator > 0 else (sum(d for _, d in terms) or math.inf)
    extra = [(v, d) for v, d in bounded if v > 0]
    variance = v_rest + sum(v for v, _ in extra)
    if not extra:
        return variance, df_rest
    if limit is not None:
        upper = [(v * d / (2.0 * float(_special().gammaincinv(d / 2.0, limit))), d) for v, d in extra]
        rest = v_rest * v_rest / df_rest if v_rest > 0 and math.isfinite(df_rest) else 0.0
        return variance, (v_rest + sum(u for u, _ in upper)) ** 2 / (rest + sum(u * u / d for u, d in upper))
    p = BANERJEE_LEVEL
    q = math.sqrt(t_quantile(p, df_rest) ** 2 * v_rest + sum(t_quantile(p, d) ** 2 * v for v, d in extra)) \
        / math.sqrt(variance)
    if q <= t_quantile(p, math.inf) * (1 + 1e-12):
        return variance, math.inf
    df = float(_special().stdtridf(p, q))  # the df whose p-quantile is q
    return variance, df if math.isfinite(df) and df < 1e9 else math.inf


def _skew_floor(parts: list, strata: Sequence[np.ndarray]) -> float:
    """For skew seen in the 2+-question categories: their pooled per-question variance x max(0, g^2 -
    6/N), g the skewness of their N question residuals (6/N: g^2's mean for symmetric data)."""
    own = [(p, s.shape[0]) for p, s in zip(parts, strata) if s.shape[0] >= 2]
    r = np.concatenate([p[2] for p, _ in own]) if own else np.zeros(0)
    m2 = float(np.mean(r ** 2)) if r.size >= 3 else 0.0
    if not m2 > 0:
        return 0.0
    excess = max(0.0, float(np.mean(r ** 3)) ** 2 / m2 ** 3 - 6.0 / r.size)
    return excess * sum(p[1] * n * (n - 1) for p, n in own) / sum(n - 1 for _, n in own)


def stratified_mean(strata: Sequence[np.ndarray], *, min_questions: int = MIN_CATEGORY_QUESTIONS,
                    skew_floor: bool = True, limit: float | None = None) -> Estimate:
    """The mean over strata (categories) of their means, every stratum weighing the same, with a t
    interval whose variance carries every stratum with its own noise (the module docstring: own
    variance from 2 questions on, the 1-question strata's spread between each other, `combine`).
    `min_questions` is where a stratum shows its own interval; it does not change the overall's.
    `skew_floor`: add `_skew_floor` to the 1-question spread (a row's own scores; differences: False).
    `limit`: the 1-question term's df by `combine`'s upper limit, not Banerjee's (printed differences)."""
    strata = [s for s in strata if s.shape[0]]
    if not strata:
        return EMPTY
    k = len(strata)
    parts = [_ratio_parts(s) for s in strata]
    means = [p[0] for p in parts]
    mean = sum(means) / k
    n_items = int(sum(s[:, 1].sum() for s in strata))
    nq = sum(s.shape[0] for s in strata)
    own = [(p[1] / k ** 2, s.shape[0] - 1.0) for p, s in zip(parts, strata) if s.shape[0] >= 2]
    ones = [i for i, s in enumerate(strata) if s.shape[0] == 1]
    bounded: list[tuple[float, float]] = []
    if len(ones) >= 2:
        spread = float(np.var([means[i] for i in ones], ddof=1)) + (_skew_floor(parts, strata) if skew_floor else 0.0)
        bounded.append((len(ones) * spread / k ** 2, len(ones) - 1.0))
    elif ones and k >= 2:
        others = float(np.mean([m for i, m in enumerate(means) if i != ones[0]]))
        bounded.append(((means[ones[0]] - others) ** 2 / k ** 2, 1.0))
    elif ones:
        return Estimate(mean, _NAN, _NAN, n_items, nq)  # one stratum of one question: no spread at all
    variance, df = combine(own, bounded, limit)
    return _interval(mean, variance, df, n_items, nq, True)


def one_question_spread(means: Sequence[float]) -> tuple[float, float]:
    """(se, df) of a 1-question category's mean: the 1-question values' spread (NaN below two)."""
    if len(means) < 2:
        return _NAN, _NAN
    return float(np.std(means, ddof=1)), len(means) - 1.0


def sign_test_p(n_questions: int) -> float:
    """Exact one-sided p of the sign test when all n question values lie on the tested side: 2^-n."""
    return 0.5 ** n_questions if n_questions > 0 else 1.0


def two_sided_p(est: Estimate) -> float:
    """The t test of mean = 0 matching the interval (NaN without a standard error); with no spread
    the exact sign test (2 x 2^-n when the common value is not 0)."""
    if not (math.isfinite(est.se) and est.df > 0):
        return _NAN
    if est.se == 0:
        return 1.0 if abs(est.mean) < 1e-12 else min(1.0, 2 * sign_test_p(est.n_questions))
    return float(min(1.0, 2 * t_cdf(-abs(est.mean) / est.se, est.df)))


def p_below(est: Estimate, threshold: float) -> float:
    """One-sided p of H0: true mean >= threshold against H1: below it (small = credibly below).
    No spread: the exact sign test, 2^-n when every question lies below, else 1."""
    if not (math.isfinite(est.se) and est.df > 0):
        return _NAN
    if est.se == 0:
        return sign_test_p(est.n_questions) if est.mean < threshold - 1e-12 else 1.0
    return t_cdf((est.mean - threshold) / est.se, est.df)


def p_above(est: Estimate, threshold: float) -> float:
    """One-sided p of H0: true mean <= threshold against H1: above it (small = credibly above).
    No spread: the exact sign test, 2^-n when every question lies above, else 1."""
    if not (math.isfinite(est.se) and est.df > 0):
        return _NAN
    if est.se == 0:
        return sign_test_p(est.n_questions) if est.mean > threshold + 1e-12 else 1.0
    return t_cdf((threshold - est.mean) / est.se, est.df)


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


def ols_contrast(design: np.ndarray, y: np.ndarray, groups: np.ndarray, contrast: np.ndarray, *,
                 min_questions: int = MIN_CATEGORY_QUESTIONS) -> Estimate:
    """contrast . beta of the OLS fit y ~ design, with a cluster-robust (CR1) standard error over
    `groups` (questions) and G - 1 df. Used for the length-controlled difference (an intercept)."""
    g_ids, g_index = np.unique(groups, return_inverse=True)
    n_groups = g_ids.size
    bread = np.linalg.pinv(design.T @ design)
    beta = bread @ design.T @ y
    value = float(contrast @ beta)
    if n_groups < 2:
        return Estimate(value, _NAN, _NAN, int(y.size), int(n_groups))
    scores = np.zeros((n_groups, design.shape[1]))
    np.add.at(scores, g_index, design * (y - design @ beta)[:, None])
    covariance = n_groups / (n_groups - 1) * bread @ (scores.T @ scores) @ bread
    variance = max(0.0, float(contrast @ covariance @ contrast))
    return _interval(value, variance, n_groups - 1.0, int(y.size), int(n_groups), n_groups >= max(2, min_questions))


# --- Power and planning ---


def minimal_detectable_difference(est: Estimate, alpha: float, power: float = POWER) -> float:
    """The smallest true difference a one-sided level-alpha test on `est` detects with `power`."""
    if not (math.isfinite(est.se) and est.df > 0):
        return _NAN
    return (t_quantile(1 - alpha, est.df) + t_quantile(power, est.df)) * est.se


def questions_needed(est: Estimate, delta: float, alpha: float, power: float = POWER) -> float:
    """Questions (same proportions) for the test on `est` to detect `delta` with `power` (se ~ 1/sqrt(n))."""
    if not (math.isfinite(est.se) and est.se > 0 and est.n_questions > 0 and delta > 0):
        return _NAN
    spread = est.se * math.sqrt(est.n_questions)  # se at one question
    n = max(2.0, float(est.n_questions))
    for _ in range(50):  # fixed point: the df grow with n (in proportion, as est.df / n_questions)
        df = max(1.0, est.df * n / est.n_questions) if math.isfinite(est.df) else math.inf
        z = t_quantile(1 - alpha, df) + t_quantile(power, df)
        new = max(2.0, (z * spread / delta) ** 2)
        if abs(new - n) < 1e-6:
            break
        n = new
    return float(math.ceil(n))


# --- Judge-like scores, for coverage and the gate's simulation ---

QUESTION_SD, TURN_SD, ANSWER_SD = 1.2, 0.5, 1.0  # issue 18's simulation model


def judge_scores(rng: np.random.Generator, true_mean: np.ndarray, answer_sd: float | np.ndarray = ANSWER_SD, *,
                 criteria: int = 4, tails: float = math.inf) -> np.ndarray:
    """What a judge prints for answers of true quality `true_mean`: `criteria` integer criteria (answer
    noise SD `answer_sd`, broadcast; each criterion its own noise SD 0.5), rounded, clipped to 1-10,
    averaged. `tails`: the answer noise is Student t with that many df, scaled to SD `answer_sd`."""
    shape = true_mean.shape
    if math.isinf(tails):
        base = rng.normal(0.0, 1.0, size=shape)
    else:
        base = rng.standard_t(tails, size=shape) / math.sqrt(tails / (tails - 2))
    noise = (base * answer_sd)[..., None] + rng.normal(0.0, 0.5, size=(*shape, criteria))
    return np.clip(np.rint(true_mean[..., None] + noise), 1, 10).mean(axis=-1)


def simulated_coverage(layout: Sequence[int], *, reps: int = 400, seed: int = 0,
                       min_questions: int = MIN_CATEGORY_QUESTIONS) -> float:
    """Coverage of the printed overall paired difference's 95% interval (`stratified_mean`) on the
    layout (questions per category), judge-like scores, no true difference: the share containing 0."""
    rng = np.random.default_rng([seed, *layout])
    hits = total = 0
    for _ in range(reps):
        strata = []
        for n in layout:
            quality = 5.5 + rng.normal(0.0, QUESTION_SD, size=n)
            diff = judge_scores(rng, quality) - judge_scores(rng, quality)
            strata.append(np.column_stack([diff, np.ones(n)]))
        est = stratified_mean(strata, min_questions=min_questions, skew_floor=False, limit=SHOWN_LIMIT) \
            if len(layout) > 1 else \
            cluster_mean(strata[0], min_questions=2)
        if est.has_interval:
            total += 1
            hits += est.ci_low <= 0 <= est.ci_high
    return hits / total if total else _NAN
