"""MLflow metric names of the evaluation: the one owner of `judge/...` and `delta/...`.

The judge step (its point figures), the compare step (with intervals) and the registry (reading
categories back) all name metrics through these functions:

- `judge/<category>/<criterion|overall>` with `_ci_low` / `_ci_high`, `judge/<category>/n`,
  `judge/overall` (+ CI), `judge/overall_seen` / `_unseen` (+ CI);
- on a trained row compared with `unscored` of its base: `delta/<category>/overall` (+ CI),
  `delta/overall` (+ CI), `delta/overall_length_controlled` (+ CI), `delta/n_pairs`;
- `length/mean_chars`, `cost/usd_per_1000_answers` when known;
- on the challenger, with harvested questions in the test set: `slice/<fixed|unseen|seen|gate>/<figure>`
  (`slice_metric`, evaluation/slices.py);
- a jury member's own scores: `jury/<judge>/<category>/overall`, `jury/<judge>/overall` (`per_judge_metric`),
  and the jury's agreement `jury/alpha`.

A category becomes one path segment (`metric_name`: letters and digits of any script, `_ - ` and
space; anything else `_`), made unique within a run (`metric_names`). Light: no numpy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping

from selfguided.components.data.categories import category_order

if TYPE_CHECKING:
    from selfguided.components.evaluation.paired import Comparison
    from selfguided.components.evaluation.statistics import Estimate

OVERALL = "judge/overall"
JURY_ALPHA = "jury/alpha"
"""The jury's overall Krippendorff's alpha, on every row of a run with two or more judges."""


def is_judge_metric(name: str) -> bool:
    """Whether a metric is one of the judge's scores (`judge/...`): what a champion's fallback carries
    and what a registered version reports."""
    return name.startswith("judge/")


def metric_name(category: str) -> str:
    """A category as one MLflow metric path segment: letters/digits (any script), _ - and space."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_- " else "_" for ch in str(category)).strip()
    return cleaned or "_"


def metric_names(categories: Iterable[str]) -> dict[str, str]:
    """category -> its unique metric segment, in `category_order`."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for category in category_order(categories):
        base = candidate = metric_name(category)
        k = 2
        while candidate in used:
            candidate, k = f"{base}_{k}", k + 1
        used.add(candidate)
        names[category] = candidate
    return names


def judge_metric(category: str, score_name: str) -> str:
    """`judge/<category segment>/<criterion|overall>` (a single category, no run-wide de-duplication)."""
    return f"judge/{metric_name(category)}/{score_name}"


def slice_metric(key: str, figure: str) -> str:
    """A test-set slice's figure (evaluation/slices.py): `slice/<fixed|unseen|seen|gate>/<figure>`."""
    return f"slice/{metric_name(key)}/{figure}"


def per_judge_metric(judge: str, category: str | None = None) -> str:
    """A jury member's own figure: `jury/<judge>/<category>/overall`, or `jury/<judge>/overall` for its
    overall. Under `jury/`, not `judge/`, so a judge's name is never read back as a category."""
    middle = f"/{metric_name(category)}" if category is not None else ""
    return f"jury/{metric_name(judge)}{middle}/overall"


def point_metrics(means: Mapping[str, Mapping[str, float]], overall: float) -> dict[str, float]:
    """The judge step's metrics from rows.category_means: `judge/<category>/<score>` and `judge/overall`."""
    names = metric_names(means)
    metrics = {f"judge/{names[c]}/{k}": float(v) for c, values in means.items() for k, v in values.items() if k != "n"}
    if math.isfinite(overall):
        metrics[OVERALL] = float(overall)
    return metrics


def categories_from_metrics(metrics: Iterable[str]) -> list[str]:
    """The category segments that have a `judge/<category>/overall` metric, in `category_order`."""
    return category_order(name.split("/")[1] for name in metrics
                          if name.startswith("judge/") and name.endswith("/overall") and name.count("/") == 2)


def metrics_for_row(comparison: Comparison, row: str) -> dict[str, float]:
    """MLflow metrics for one row of the comparison (see the module docstring); non-finite values left out."""
    summary = comparison.row(row)
    names = metric_names(comparison.categories)
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
    put_est(OVERALL, summary.overall)
    put_est("judge/overall_seen", summary.seen)
    put_est("judge/overall_unseen", summary.unseen)
    put("length/mean_chars", summary.mean_chars)
    put("cost/usd_per_1000_answers", summary.usd_per_1000_answers)
    if summary.row_kind == "trained" and summary.arm != "unscored":
        unscored = {r.row for r in comparison.rows
                    if r.row_kind == "trained" and r.arm == "unscored" and r.base_model == summary.base_model}
        pair = next((p for p in comparison.pairs
                     if row in (p.rows_a or [p.row_a]) and p.row_b in unscored and p.same_judge), None)
        if pair is not None:
            for category, diff in pair.categories.items():
                put_est(f"delta/{names.get(category, metric_name(category))}/overall", diff.estimate)
            put_est("delta/overall", pair.overall.estimate)
            put_est("delta/overall_length_controlled", pair.overall.length_controlled)
            put("delta/n_pairs", pair.n_pairs)
    return metrics

