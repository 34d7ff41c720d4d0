"""Judge-human agreement: how close each judge, and the jury, comes to the editors' own scores.

Input: labelled items, one per reviewed answer: the editors' score (1-10, the mean when several
editors graded it), each judge's overall score of the same answer (the mean of its repeats) and the
jury's. Per judge and for the jury, against the humans:

- Spearman's rho (rank agreement: does the judge order the answers as the editors do);
- quadratic-weighted Cohen's kappa on scores rounded to whole points 1-10 (agreement on the
  scale itself, near-misses cost little, far misses a lot);
- mean absolute difference |judge - human| (in score points);
- mean bias, judge - human (positive: the judge is more generous than the editors);

each with a 95% percentile bootstrap interval that resamples the labelled answers (the same
resample for every judge, so the judges are compared on the same draws). Per category as well
when a category has at least `min_labels` labelled answers (fewer: "too few").

"Closest to the editors" is the judge with the smallest mean absolute difference, ties broken by
the higher Spearman; `closest_share` says in how many bootstrap resamples that judge stays the
closest, so a narrow win reads as one. The jury is reported beside the judges but is not a
candidate for "closest judge" (it is what the platform uses; the question is which of its
members the editors would back).

Pure computation (numpy, scipy): reading the labels from MLflow is
`registry/traces.py`'s job, printing them is the CLI's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

JURY = "jury"
MIN_LABELS = 10
"""Fewest labelled answers a category needs for its own agreement rows."""
MEASURES: tuple[str, ...] = ("spearman", "kappa", "mad", "bias")


@dataclass(frozen=True)
class LabelledItem:
    """One reviewed answer: the editors' score and the judges' scores of the same answer."""

    item_id: str
    category: str
    human: float
    judges: Mapping[str, float]
    """judge name -> its overall score of this answer (mean of its repeats); judges that failed are absent."""
    jury: float | None = None
    row: str = ""


@dataclass
class Agreement:
    """One judge (or the jury) against the editors, over `n` labelled answers."""

    judge: str
    n: int
    estimates: dict[str, float | None]
    """measure -> value (None where undefined, e.g. Spearman when every score is the same)."""
    intervals: dict[str, tuple[float, float] | None]
    """measure -> 95% bootstrap interval (None where undefined or too few items)."""

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "n": self.n, "estimates": self.estimates,
                "intervals": {k: list(v) if v else None for k, v in self.intervals.items()}}


@dataclass
class CalibrationResult:
    """Agreement of every judge and the jury with the editors, overall and per category."""

    n_items: int
    overall: list[Agreement]
    by_category: dict[str, list[Agreement]]
    too_few: dict[str, int]
    """categories with fewer than min_labels labelled answers -> how many they have."""
    closest: str | None
    closest_share: float | None
    """share of bootstrap resamples in which `closest` has the smallest mean absolute difference."""
    ignored: dict[str, int] = field(default_factory=dict)
    """why human labels were left out -> how many (filled in by the reader of the labels)."""

    def to_dict(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "overall": [a.to_dict() for a in self.overall],
                "by_category": {c: [a.to_dict() for a in rows] for c, rows in self.by_category.items()},
                "too_few": self.too_few, "closest": self.closest, "closest_share": self.closest_share,
                "ignored": self.ignored}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties averaged (scipy.stats.rankdata's "average", without its per-call overhead:
    this runs once per judge and bootstrap resample)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = np.empty(values.size, dtype=int)
    dense[order] = np.cumsum(first)
    starts = np.r_[np.nonzero(first)[0], values.size]
    return 0.5 * (starts[dense] + starts[dense - 1] + 1)


def rank_correlation(judge: np.ndarray, human: np.ndarray) -> float | None:
    """Spearman's rho, ties averaged (equal to scipy.stats.spearmanr); None below 3 pairs or without variation."""
    if judge.size < 3 or np.ptp(judge) == 0 or np.ptp(human) == 0:
        return None
    return float(np.corrcoef(_ranks(judge), _ranks(human))[0, 1])  # Pearson of the ranks, ties averaged


def _rounded(values: np.ndarray) -> np.ndarray:
    # Half up, not numpy's half to even: 6.5 is 7 for a grader.
    return np.clip(np.floor(values + 0.5), 1, 10).astype(int)


_WEIGHTS = (np.subtract.outer(np.arange(10), np.arange(10)) ** 2) / 81.0


def _kappa(judge: np.ndarray, human: np.ndarray) -> float | None:
    """Quadratic-weighted Cohen's kappa on the 1-10 scale (scikit-learn's cohen_kappa_score with
    weights="quadratic", written out because it runs once per bootstrap resample)."""
    a, b = _rounded(judge) - 1, _rounded(human) - 1
    if a.size < 2:
        return None
    observed = np.zeros((10, 10))
    np.add.at(observed, (a, b), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / a.size
    disagreement = float((_WEIGHTS * expected).sum())
    if disagreement == 0:  # both constant: kappa is undefined
        return None
    return 1.0 - float((_WEIGHTS * observed).sum()) / disagreement


def _measures(judge: np.ndarray, human: np.ndarray) -> dict[str, float | None]:
    diff = judge - human
    return {"spearman": rank_correlation(judge, human), "kappa": _kappa(judge, human),
            "mad": float(np.mean(np.abs(diff))), "bias": float(np.mean(diff))}


def _agreements(items: Sequence[LabelledItem], names: Sequence[str], resamples: np.ndarray
                ) -> tuple[list[Agreement], np.ndarray]:
    """Agreement of each name (a judge, or JURY) over `items`, and each name's MAD per resample."""
    human = np.array([it.human for it in items], dtype=float)
    results, mads = [], []
    for name in names:
        scores = np.array([_score(it, name) for it in items], dtype=float)
        have = ~np.isnan(scores)
        estimates = _measures(scores[have], human[have]) if have.sum() else dict.fromkeys(MEASURES)
        draws: dict[str, list[float]] = defaultdict(list)
        mad_draws = []
        for idx in resamples:
            keep = idx[have[idx]]
            if keep.size == 0:
                mad_draws.append(np.inf)
                continue
            for measure, value in _measures(scores[keep], human[keep]).items():
                if value is not None:
                    draws[measure].append(value)
            mad_draws.append(float(np.mean(np.abs(scores[keep] - human[keep]))))
        intervals = {}
        for measure in MEASURES:
            values = draws.get(measure, [])
            enough = estimates[measure] is not None and len(values) >= 0.9 * len(resamples) and len(values) > 1
            intervals[measure] = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) \
                if enough else None
        results.append(Agreement(name, int(have.sum()), estimates, intervals))
        mads.append(mad_draws)
    return results, np.array(mads, dtype=float).reshape(len(names), len(resamples))


def _score(item: LabelledItem, name: str) -> float:
    value = item.jury if name == JURY else item.judges.get(name)
    return float("nan") if value is None else float(value)


def _closest(agreements: Sequence[Agreement]) -> Agreement | None:
    judges = [a for a in agreements if a.judge != JURY and a.n and a.estimates["mad"] is not None]
    if not judges:
        return None
    return min(judges, key=lambda a: (a.estimates["mad"], -(a.estimates["spearman"] or -1.0), a.judge))


def calibrate(items: Sequence[LabelledItem], *, min_labels: int = MIN_LABELS, n_resamples: int = 1000,
              seed: int = 0) -> CalibrationResult:
    """Agreement of every judge (and the jury, where the items carry one) with the editors.

    items: labelled answers (see LabelledItem); an item without any judge score still counts for
        the judges that have one.
    min_labels: fewest labelled answers a category needs to get its own rows.
    n_resamples, seed: the bootstrap (resampling labelled answers).
    """
    judges = sorted({name for it in items for name in it.judges})
    names = judges + ([JURY] if any(it.jury is not None for it in items) else [])
    if not items:
        return CalibrationResult(0, [], {}, {}, None, None)
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(items), size=(n_resamples, len(items)))
    overall, mads = _agreements(items, names, resamples)
    best = _closest(overall)
    share = None
    if best is not None:
        judge_rows = [i for i, name in enumerate(names) if name != JURY]
        winners = np.array(judge_rows)[np.argmin(mads[judge_rows], axis=0)]
        share = float(np.mean(winners == names.index(best.judge)))
    by_category: dict[str, list[Agreement]] = {}
    too_few: dict[str, int] = {}
    grouped: dict[str, list[LabelledItem]] = defaultdict(list)
    for item in items:
        grouped[item.category].append(item)
    for category in sorted(grouped):
        group = grouped[category]
        if len(group) < min_labels:
            too_few[category] = len(group)
            continue
        sub = rng.integers(0, len(group), size=(n_resamples, len(group)))
        by_category[category] = _agreements(group, names, sub)[0]
    return CalibrationResult(len(items), overall, by_category, too_few, best.judge if best else None, share)


def _cell(agreement: Agreement, measure: str) -> str:
    value, interval = agreement.estimates[measure], agreement.intervals[measure]
    if value is None:
        return "-"
    sign = "+" if measure == "bias" else ""
    text = f"{value:{sign}.2f}"
    return text + (f" [{interval[0]:{sign}.2f}, {interval[1]:{sign}.2f}]" if interval else "")


def _table(agreements: Sequence[Agreement]) -> list[str]:
    lines = ["| judge | n | Spearman ρ | QW kappa | mean abs diff | mean bias (judge - human) |",
             "|---|---|---|---|---|---|"]
    for a in agreements:
        lines.append(f"| {a.judge} | {a.n} | " + " | ".join(_cell(a, m) for m in MEASURES) + " |")
    return lines


def calibration_markdown(result: CalibrationResult, *, min_labels: int = MIN_LABELS) -> str:
    """The agreement table (overall, then per category), the closest judge, and what was ignored."""
    lines = ["## Judges against the editors (HUMAN scores)", ""]
    if result.ignored:
        lines += ["Human labels ignored: " + ", ".join(f"{n} {why}" for why, n in sorted(result.ignored.items())), ""]
    if not result.n_items:
        return "\n".join(lines + ["No labelled answers yet: run `selfguided review --sample N` and add `score` "
                                  "feedback (1-10, source HUMAN) to the sample's traces.", ""])
    lines += [f"{result.n_items} labelled answers; 95% bootstrap intervals over the labelled answers.", ""]
    lines += _table(result.overall)
    if result.closest:
        share = f" (closest in {result.closest_share:.0%} of bootstrap resamples)" if result.closest_share is not None else ""
        lines += ["", f"**Closest to the editors: {result.closest}**{share}, by mean absolute difference."]
    for category, agreements in result.by_category.items():
        lines += ["", f"### {category}", ""] + _table(agreements)
    if result.too_few:
        lines += ["", "Too few labels for a per-category row (fewer than "
                  f"{min_labels}): " + ", ".join(f"{c} ({n})" for c, n in result.too_few.items())]
    return "\n".join(lines) + "\n"
