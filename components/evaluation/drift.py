"""Drift of the served champion's live quality against its offline evaluation, per category.

The monitor judges a stratified sample of production traces with the same jury as the offline
evaluation and hands the scores here. Live prompts are not the held-out questions, so the
comparison is UNPAIRED, per category:

- live: the mean of the sampled answers' jury scores with its t interval, clustered by prompt
  (the same request asked twice is one cluster: `statistics.clusters`, `statistics.cluster_mean`);
- offline: the champion's own estimate from its evaluation run (its judgments, or its logged
  `judge/<category>/overall` with `_ci_low`/`_ci_high` when the judgments are gone);
- the difference live - offline with the variance of both sides; its df by `statistics.combine`,
  the offline term added by Banerjee's conservative rule (`bounded`): an offline category of 3-4
  questions has 2-3 df and can dominate, where plain Welch-Satterthwaite is anti-conservative (it
  reads a spread that came out small by chance as many df). Simulated with the bundled sample's
  layout (14, 14, 4, 4, 3, 3 offline questions), plain Welch raised false alarms in 7-10% of
  executions at tolerance 0; this rule keeps them under alpha (benchmarks/monitor_simulation.py).

**Finding rule.** A category has drifted when "live - offline >= -tolerance" is rejected at
family-wise level `alpha` across the categories tested: its one-sided p (`statistics.p_below` of the
difference at -tolerance), Holm-adjusted over the tested categories (`statistics.holm`), is below
alpha. Equivalently: the live interval lies below the offline one by more than the tolerance, both
intervals' widths counted, with the family of categories counted once. A category is tested when it
has `min_live` live prompts and the offline estimate has a standard error (2 or more questions).

The rule was chosen by simulation (`simulate_drift`, benchmarks/monitor_simulation.py; the figures
are in docs/production.md): the false-alarm rate per monitor execution on undegraded traffic is at
most alpha (Holm), and the power to see a -1.5 drop in one category depends mostly on the offline
test set's size per category, which live traffic cannot make up for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from selfguided.components.evaluation.statistics import (
    CONFIDENCE, MIN_CATEGORY_QUESTIONS, QUESTION_SD, Estimate, cluster_mean, clusters, combine, holm, jsonable, judge_scores,
    p_below, t_quantile,
)
from selfguided.components.data.categories import category_order

_NAN = float("nan")


@dataclass(frozen=True)
class DriftSettings:
    """When a category's live quality is a drift finding (module docstring).

    tolerance: how far below its offline mean (judge points, 1-10 scale) a category may score live
        before it is a finding.
    alpha: the family-wise one-sided level across the tested categories (Holm).
    min_live: live prompts a category needs to be tested.
    """

    tolerance: float = 0.25
    alpha: float = 0.05
    min_live: int = MIN_CATEGORY_QUESTIONS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5), got {self.alpha}")
        if self.min_live < 2:
            raise ValueError(f"min_live must be >= 2, got {self.min_live}")


@dataclass
class CategoryDrift:
    """One category: live and offline estimates, their difference, and the verdict."""

    category: str
    live: Estimate
    offline: Estimate
    difference: Estimate
    """live - offline, Welch se and df, 95% interval (NaN ends when it cannot be formed)."""
    tested: bool
    p: float = _NAN
    """One-sided p of "difference >= -tolerance" (small: credibly below the offline estimate)."""
    p_holm: float = _NAN
    drift: bool = False
    note: str = ""
    """Why the category was not tested, when it was not."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"category": self.category, "live": self.live.to_dict(), "offline": self.offline.to_dict(),
                         "difference": self.difference.to_dict(), "tested": self.tested, "p": self.p,
                         "p_holm": self.p_holm, "drift": self.drift, "note": self.note})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoryDrift:
        return cls(d["category"], Estimate.from_dict(d["live"]), Estimate.from_dict(d["offline"]),
                   Estimate.from_dict(d["difference"]), bool(d["tested"]), _num(d.get("p")), _num(d.get("p_holm")),
                   bool(d.get("drift")), str(d.get("note") or ""))

    def line(self, tolerance: float) -> str:
        """One sentence: the finding with its interval (what the ALERT line and the report say)."""
        d = self.difference
        return (f"{self.category}: live {self.live.mean:.2f} vs offline {self.offline.mean:.2f}, difference "
                f"{_signed(d.mean)} [95% CI {_signed(d.ci_low)}, {_signed(d.ci_high)}], below -{tolerance:g} "
                f"(p = {self.p_holm:.2g}, Holm over the tested categories)")


def _num(value: Any) -> float:
    return _NAN if value is None else float(value)


def _signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def live_estimate(items: Sequence[tuple[str, float]]) -> Estimate:
    """The live mean of one category from (prompt key, score) items, clustered by prompt."""
    finite = [(k, float(v)) for k, v in items if v is not None and math.isfinite(float(v))]
    return cluster_mean(clusters(finite))


def estimate_from_interval(mean: float, ci_low: float, ci_high: float, n_questions: int) -> Estimate:
    """An offline estimate back from a logged mean and 95% t interval (df = questions - 1): its standard
    error is the half-width over the t quantile. No interval: a mean without a standard error."""
    if not all(math.isfinite(x) for x in (mean, ci_low, ci_high)) or n_questions < 2:
        return Estimate(mean, _NAN, _NAN, n_questions, n_questions)
    df = n_questions - 1.0
    se = (ci_high - ci_low) / 2 / t_quantile(1 - (1 - CONFIDENCE) / 2, df)
    return Estimate(mean, ci_low, ci_high, n_questions, n_questions, se, df)


def drift_difference(live: Estimate, offline: Estimate) -> Estimate:
    """live - offline for independent samples (module docstring): both variances, df by `combine` with
    the offline term bounded (Banerjee); a 95% interval when both sides have a spread, NaN se otherwise."""
    mean = live.mean - offline.mean
    n, nq = live.n + offline.n, live.n_questions + offline.n_questions
    sides = (live, offline)
    if not all(math.isfinite(e.se) and e.df > 0 for e in sides) or live.se + offline.se == 0:
        return Estimate(mean, _NAN, _NAN, n, nq)
    variance, df = combine([(live.se ** 2, live.df)], [(offline.se ** 2, offline.df)])
    se = math.sqrt(variance)
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, df) * se
    return Estimate(mean, mean - half, mean + half, n, nq, se, df)


def drift_findings(live: Mapping[str, Estimate], offline: Mapping[str, Estimate],
                   settings: DriftSettings | None = None) -> list[CategoryDrift]:
    """Every category of `live` (in the paper's order) against `offline`, with the finding rule."""
    settings = settings or DriftSettings()
    rows = []
    for category in category_order(live):
        mine = live[category]
        reference = offline.get(category)
        if reference is None:
            rows.append(CategoryDrift(category, mine, Estimate(_NAN, _NAN, _NAN, 0, 0),
                                      Estimate(_NAN, _NAN, _NAN, mine.n, mine.n_questions), False,
                                      note="no offline estimate for this category"))
            continue
        diff = drift_difference(mine, reference)
        note = ""
        if mine.n_questions < settings.min_live:
            note = f"{mine.n_questions} live prompts, {settings.min_live} needed"
        elif not (math.isfinite(reference.se) and reference.df > 0):
            note = f"the offline estimate has no standard error (n={reference.n_questions})"
        elif not math.isfinite(diff.se):
            note = "the live sample has no spread"
        rows.append(CategoryDrift(category, mine, reference, diff, not note, note=note))
    tested = [r for r in rows if r.tested]
    for r in tested:
        r.p = p_below(r.difference, -settings.tolerance)
    for r, adjusted in zip(tested, holm([r.p for r in tested])):
        r.p_holm = adjusted
        r.drift = math.isfinite(adjusted) and adjusted < settings.alpha
    return rows


# ---------------------------------------------------------------------------------------------
# Simulation: how often the rule raises a false alarm, and how often it sees a real drop
# ---------------------------------------------------------------------------------------------


def simulate_drift(offline_layout: Sequence[int], live_per_category: int, *, shift: float = 0.0, shifted: int = 0,
                   settings: DriftSettings | None = None, reps: int = 400, seed: int = 0,
                   rule: Callable[[dict[str, Estimate], dict[str, Estimate]], set[str]] | None = None) -> dict[str, float]:
    """Monitor executions simulated with judge-like scores (statistics.judge_scores): per category
    `offline_layout[c]` offline questions and `live_per_category` live prompts (fresh prompts of the
    same difficulty distribution), category `shifted`'s live quality shifted by `shift`. Each
    repetition draws a new offline evaluation too, so the rates average over the offline draw.
    `rule` (live, offline estimates -> the categories found) replaces the shipped rule, to compare.

    Returns the share of executions with any finding (`any`: the false-alarm rate when shift = 0),
    with a finding in the shifted category (`shifted`: the detection rate when shift < 0) and with a
    finding in another category (`others`)."""
    settings = settings or DriftSettings()
    rng = np.random.default_rng([seed, live_per_category, *offline_layout, int(round(shift * 1000)) + 10000, shifted])
    rule = rule or (lambda live, offline: {r.category for r in drift_findings(live, offline, settings) if r.drift})
    target = f"c{shifted}"
    hits = {"any": 0, "shifted": 0, "others": 0}
    for _ in range(reps):
        live, offline = {}, {}
        for c, n_offline in enumerate(offline_layout):
            name = f"c{c}"
            base = rng.normal(5.5, 0.5)  # the category's own level, shared by offline and live
            q_off = base + rng.normal(0.0, QUESTION_SD, size=n_offline)
            q_live = base + (shift if c == shifted else 0.0) + rng.normal(0.0, QUESTION_SD, size=live_per_category)
            offline[name] = cluster_mean(clusters(list(zip(map(str, range(n_offline)), judge_scores(rng, q_off)))),
                                         min_questions=2)
            live[name] = live_estimate(list(zip(map(str, range(live_per_category)), judge_scores(rng, q_live))))
        found = rule(live, offline)
        hits["any"] += bool(found)
        hits["shifted"] += target in found
        hits["others"] += bool(found - {target})
    return {k: v / reps for k, v in hits.items()}
