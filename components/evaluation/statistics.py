"""Interval estimates on question clusters: the one place where evaluation's numbers get their error bars.

Why t-based and not the bootstrap. Judge scores are clustered by question (the turns of a question,
and every model's answer to it, share its difficulty), and test sets are small: a category of the
bundled sample holds 2-14 questions. A percentile or BCa bootstrap interval of a mean of n values
covers far less than 95% at such n (simulated, normal data: 50% at n=2, 74% at n=3, 83% at n=5,
91.5% at n=14, issue 18). The Student t interval on question means is exact for normal question
means and close for judge scores (`simulated_coverage` measures it with the shipped code; the
report's method note quotes it). So:

- *Unit.* A question is a cluster: `clusters` holds, per question, [sum of its item values, number
  of items] (an item is a scored (question, turn)). A mean is the ratio estimator sum/count (the
  plain item mean), its variance the cluster-robust (linearised) one, n/(n-1) sum (s_q - R c_q)^2 / C^2,
  with n - 1 degrees of freedom; it is s^2/n when every question has one item.
- *Small n.* n = 0: no estimate; n = 1: a mean, no variance; below `min_questions` (default 5,
  `MIN_CATEGORY_QUESTIONS`) the interval is not shown (NaN ends) although its standard error is
  kept for planning.
- *Overall = mean of the category means* (every category weighs the same, `judge/overall`). Its
  variance is sum_c V_c / K^2 and carries every category: a category with at least `min_questions`
  questions brings its own variance; a smaller one (1-question categories included) the pooled
  within-category variance of question means of all categories, divided by its n. Degrees of
  freedom by Welch-Satterthwaite, the pooled variance counting once with its own df.
- *p-values* are the matching t tests (so p < 0.05 exactly when the 95% interval excludes 0);
  Holm's step-down adjustment for families.

Only numpy here; scipy.special (the t distribution) is imported where it is used.
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


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (the normal one for df = inf)."""
    from scipy import special

    if not (df > 0):
        return _NAN
    return float(special.ndtri(p)) if math.isinf(df) else float(special.stdtrit(df, p))


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with df degrees of freedom."""
    from scipy import special

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

    n = scored (question, turn) items, n_questions = clusters. `se` and `df` let the gate take a
    one-sided bound at any level (`lower_bound`) and the planner a minimal detectable difference.
    """

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
        """Every question gave the same value: a sample spread of 0 estimates nothing, so there is no
        interval (a width-0 t interval would claim certainty from, e.g., a model that always answers
        alike and is always scored alike)."""
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
    """The mean of the items of `c` (rows [sum, count] per question) with its t interval on n - 1 df,
    shown only from `min_questions` questions on (and never below 2)."""
    n = c.shape[0]
    if n == 0:
        return EMPTY
    mean, variance, _ = _ratio_parts(c)
    return _interval(mean, variance, n - 1.0, int(c[:, 1].sum()), n, n >= max(2, min_questions))


def stratified_mean(strata: Sequence[np.ndarray], *, min_questions: int = MIN_CATEGORY_QUESTIONS) -> Estimate:
    """The mean over strata (categories) of their means, every stratum weighing the same, with a t
    interval whose variance carries every stratum (see the module docstring: own variance from
    `min_questions` questions on, the pooled within-stratum variance below, Satterthwaite df)."""
    strata = [s for s in strata if s.shape[0]]
    if not strata:
        return EMPTY
    k = len(strata)
    parts = [_ratio_parts(s) for s in strata]
    mean = sum(p[0] for p in parts) / k
    n_items = int(sum(s[:, 1].sum() for s in strata))
    nq = sum(s.shape[0] for s in strata)
    own = [(p[1] / k ** 2, s.shape[0] - 1.0) for p, s in zip(parts, strata) if s.shape[0] >= max(2, min_questions)]
    small = [s.shape[0] for s in strata if s.shape[0] < max(2, min_questions)]
    variance, terms = sum(v for v, _ in own), [t for t in own]
    if small:
        pooled_df = float(sum(s.shape[0] - 1 for s in strata))
        if pooled_df < 1:
            return Estimate(mean, _NAN, _NAN, n_items, nq)
        pooled = float(sum(np.sum(p[2] ** 2) for p in parts)) / pooled_df
        v_small = sum(pooled / n for n in small) / k ** 2
        variance += v_small
        terms.append((v_small, pooled_df))
    nonzero = [(v, d) for v, d in terms if v > 0]
    denominator = sum(v * v / d for v, d in nonzero)
    df = variance ** 2 / denominator if denominator > 0 else float(sum(d for _, d in terms))
    return _interval(mean, variance, df, n_items, nq, True)


def two_sided_p(est: Estimate) -> float:
    """The t test of mean = 0 matching the interval (NaN without a standard error)."""
    if not (math.isfinite(est.se) and est.df > 0):
        return _NAN
    if est.se == 0:
        return 1.0 if abs(est.mean) < 1e-12 else 0.0
    return float(min(1.0, 2 * t_cdf(-abs(est.mean) / est.se, est.df)))


def p_below(est: Estimate, threshold: float) -> float:
    """One-sided p of H0: true mean >= threshold against H1: below it (small = credibly below)."""
    if not (math.isfinite(est.se) and est.df > 0):
        return _NAN
    if est.se == 0:
        return 0.0 if est.mean < threshold else 1.0
    return t_cdf((est.mean - threshold) / est.se, est.df)


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


# ---------------------------------------------------------------------------------------------
# Power and planning
# ---------------------------------------------------------------------------------------------


def minimal_detectable_difference(est: Estimate, alpha: float, power: float = POWER) -> float:
    """The smallest true difference a one-sided level-alpha test on `est` detects with `power`,
    at its standard error and df: (t_{1-alpha} + t_{power}) * se."""
    if not (math.isfinite(est.se) and est.df > 0):
        return _NAN
    return (t_quantile(1 - alpha, est.df) + t_quantile(power, est.df)) * est.se


def questions_needed(est: Estimate, delta: float, alpha: float, power: float = POWER) -> float:
    """Questions (in the same proportions across categories) for the test on `est` to detect `delta`
    with `power`: the standard error scales as 1/sqrt(questions); t quantiles at the new df."""
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


# ---------------------------------------------------------------------------------------------
# Judge-like scores, for coverage and the gate's simulation
# ---------------------------------------------------------------------------------------------

QUESTION_SD, TURN_SD, ANSWER_SD = 1.2, 0.5, 1.0  # issue 18's simulation model


def judge_scores(rng: np.random.Generator, true_mean: np.ndarray) -> np.ndarray:
    """What a judge prints for answers whose true quality is `true_mean`: four integer criteria
    (answer noise SD `ANSWER_SD`, rounded, clipped to 1-10), averaged."""
    noise = rng.normal(0.0, ANSWER_SD, size=true_mean.shape)[..., None] + rng.normal(0.0, 0.5, size=(*true_mean.shape, 4))
    return np.clip(np.rint(true_mean[..., None] + noise), 1, 10).mean(axis=-1)


def simulated_coverage(layout: Sequence[int], *, reps: int = 400, seed: int = 0,
                       min_questions: int = MIN_CATEGORY_QUESTIONS) -> float:
    """Coverage of the overall paired difference's 95% interval (`stratified_mean`), simulated on the
    layout (questions per category) with judge-like scores and no true difference between the two
    models: the share of intervals that contain 0. One category = that category's own interval."""
    rng = np.random.default_rng([seed, *layout])
    hits = total = 0
    for _ in range(reps):
        strata = []
        for n in layout:
            quality = 5.5 + rng.normal(0.0, QUESTION_SD, size=n)
            diff = judge_scores(rng, quality) - judge_scores(rng, quality)
            strata.append(np.column_stack([diff, np.ones(n)]))
        est = stratified_mean(strata, min_questions=min_questions) if len(layout) > 1 else \
            cluster_mean(strata[0], min_questions=2)
        if est.has_interval:
            total += 1
            hits += est.ci_low <= 0 <= est.ci_high
    return hits / total if total else _NAN
