"""The test set's slices, reported apart: the fixed test set, harvested prompts held out of every
seed version (`unseen`) and harvested prompts that are in the training seed data (`seen`)
(data/questions.question_slice).

The gate decides on fixed + unseen only (rows.decision_rows, applied once, in gate.evaluate_run):
a model trained on the seen prompts would look better on them than it is. This module reports every
slice present: its questions, the challenger's and the bar's overall, and their paired difference
with its interval, computed by the main table's own estimators (paired.compare_rows on the slice's
judgments; no interval of its own), plus the gate's questions (fixed + unseen) when both are there.
With no harvested question in the run there is nothing to report: no table, no metric.

Its MLflow metrics (on the challenger row): `slice/<fixed|unseen|seen|gate>/n_questions`,
`.../challenger`, `.../bar`, `.../difference`, each estimate with `_ci_low` / `_ci_high`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

from selfguided.components.data.questions import SLICES, question_slice
from selfguided.components.evaluation.decision import Challenger
from selfguided.components.evaluation.metrics import slice_metric
from selfguided.components.evaluation.paired import compare_rows
from selfguided.components.evaluation.report import ReportSection, difference_cell, mean_cell, table_section
from selfguided.components.evaluation.rows import DECIDING_SLICES, RowJudgments, slice_rows
from selfguided.components.evaluation.statistics import Estimate

LABELS = {"fixed": "fixed test set", "unseen": "harvested, held out of every seed version (unseen)",
          "seen": "harvested, in the training seed data (seen)", "gate": "the gate's questions (fixed + unseen)"}
_NAN = float("nan")


@dataclass
class SliceFigures:
    """One slice (or the gate's questions, key `gate`): questions compared, the challenger's and the
    bar's overall (mean of category means, with its interval), and the paired difference."""

    key: str
    slices: list[str]
    decides: bool
    n_questions: int
    challenger: Estimate
    bar: Estimate | None
    difference: Estimate | None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "slices": self.slices, "decides": self.decides, "n_questions": self.n_questions,
                "challenger": self.challenger.to_dict(), "bar": self.bar.to_dict() if self.bar else None,
                "difference": self.difference.to_dict() if self.difference else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SliceFigures:
        def est(v: Any) -> Estimate | None:
            return Estimate.from_dict(v) if v else None

        return cls(str(d["key"]), list(d["slices"]), bool(d["decides"]), int(d["n_questions"]),
                   Estimate.from_dict(d["challenger"]), est(d.get("bar")), est(d.get("difference")))


def present_slices(rows: Sequence[RowJudgments]) -> list[str]:
    """The slices the rows' judgments have, in SLICES order."""
    found = {question_slice(j) for r in rows for j in r.judgments if isinstance(j, Mapping)}
    return [s for s in SLICES if s in found]


def slice_figures(rows: Sequence[RowJudgments], challenger: Challenger, bar: str | None, *,
                  min_category_questions: int) -> list[SliceFigures]:
    """Per slice present (and the gate's questions when fixed and unseen both are): the challenger's
    rows (its replicates) against the `bar` row (None: no paired bar, e.g. the unpaired fallback).
    [] when every question is of the fixed set."""
    present = present_slices(rows)
    if not any(s != "fixed" for s in present):
        return []
    groups = [(s, [s]) for s in present]
    if {"fixed", "unseen"} <= set(present):
        groups.append(("gate", list(DECIDING_SLICES)))
    by_name = {r.row: r for r in rows}
    members = [by_name[name] for name in challenger.rows]
    wanted = members + ([by_name[bar]] if bar in by_name else [])
    figures = []
    for key, slices in groups:
        sub = slice_rows(wanted, slices)
        pairs = [(challenger.rows, bar, key)] if bar in by_name else []
        comparison = compare_rows(sub, comparisons=pairs, min_category_questions=min_category_questions)
        own = [comparison.row(m.row).overall for m in members]
        if len(own) == 1:
            mine = own[0]
        else:  # replicates: the mean of their overalls (the difference carries their seed variance)
            means = [e.mean for e in own if math.isfinite(e.mean)]
            mine = Estimate(sum(means) / len(means) if means else _NAN, _NAN, _NAN, sum(e.n for e in own),
                            max(e.n_questions for e in own))
        pair = comparison.pairs[0] if pairs else None
        figures.append(SliceFigures(
            key, slices, all(s in DECIDING_SLICES for s in slices),
            pair.n_questions if pair else mine.n_questions, mine,
            comparison.row(bar).overall if pair else None, pair.overall.estimate if pair else None))
    return figures


def slices_section(figures: Sequence[SliceFigures], challenger: str, bar: str | None) -> ReportSection | None:
    """The report's per-slice table and which slices decided; None when there is no harvested question."""
    if not figures:
        return None
    by_key = {f.key: f for f in figures}
    deciding = [f for f in figures if f.key in DECIDING_SLICES]
    decided = " + ".join(f.key for f in deciding) or "none"
    n_decided = by_key["gate"].n_questions if "gate" in by_key else sum(f.n_questions for f in deciding)
    text = (f"The gate decided on {decided} ({n_decided} questions compared)."
            + (f" The seen slice ({by_key['seen'].n_questions} questions: harvested prompts that are in the training "
               "seed data) is reported, never decided on: a model trained on them would look better than it is."
               if "seen" in by_key else "")
            + ("" if bar else " No paired bar in this run: the slices show the challenger alone."))
    header = ["slice", "decides", "questions", f"challenger ({challenger})", f"bar ({bar or 'none'})",
              "paired difference [95% CI]"]
    rows = [[LABELS.get(f.key, f.key), "yes" if f.decides else "no, reported only", str(f.n_questions),
             mean_cell(f.challenger), mean_cell(f.bar), difference_cell(f.difference)] for f in figures]
    return table_section("Test-set slices", text, header, rows)


def slice_metrics(figures: Sequence[SliceFigures]) -> dict[str, float]:
    """The slices' MLflow metrics (module docstring); non-finite values left out."""
    metrics: dict[str, float] = {}
    for f in figures:
        metrics[slice_metric(f.key, "n_questions")] = float(f.n_questions)
        for name, est in (("challenger", f.challenger), ("bar", f.bar), ("difference", f.difference)):
            if est is None:
                continue
            for suffix, value in (("", est.mean), ("_ci_low", est.ci_low), ("_ci_high", est.ci_high)):
                if math.isfinite(value):
                    metrics[slice_metric(f.key, name) + suffix] = float(value)
    return metrics
