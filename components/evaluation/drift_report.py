"""The monitor's report: the live table beside the offline one (markdown) and a plot of live vs
offline per category with their 95% intervals (PNG, matplotlib on the Agg canvas via figures.py)."""

from __future__ import annotations

import math
from typing import Sequence

from selfguided.components.evaluation.drift import CategoryDrift, DriftSettings
from selfguided.components.evaluation.figures import _new_figure, _png
from selfguided.components.evaluation.report import _md_table, difference_cell, mean_cell


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2g}"


def drift_table(rows: Sequence[CategoryDrift]) -> list[str]:
    """The per-category table: live and offline mean ± 95% half-width, the difference with its CI,
    the Holm-adjusted p, the verdict."""
    body = []
    for r in rows:
        verdict = "**DRIFT**" if r.drift else ("ok" if r.tested else f"not tested: {r.note}")
        offline = mean_cell(r.offline)
        if "n=" not in offline:  # mean_cell names n itself when there are too few for an interval
            offline += f" (n={r.offline.n_questions})"
        body.append([r.category, str(r.live.n_questions), mean_cell(r.live), offline,
                     difference_cell(r.difference), _p(r.p_holm), verdict])
    return _md_table(["category", "live prompts", "live", "offline", "live - offline [95% CI]", "p (Holm)", "verdict"],
                     body)


def drift_markdown(rows: Sequence[CategoryDrift], settings: DriftSettings, *, title: str, facts: Sequence[str] = (),
                   notes: Sequence[str] = ()) -> str:
    """The whole report page: a heading, the findings (or none), the table, the facts of the execution
    and the rule."""
    findings = [r for r in rows if r.drift]
    lines = [f"# {title}", ""]
    if findings:
        lines += ["**Drift found** in " + ", ".join(r.category for r in findings) + ":", ""]
        lines += [f"- {r.line(settings.tolerance)}" for r in findings] + [""]
    else:
        lines += ["No drift: no category's live score is credibly more than "
                  f"{settings.tolerance:g} below its offline score.", ""]
    lines += drift_table(rows) + [""]
    lines += [f"- {fact}" for fact in facts]
    lines += [f"- {note}" for note in notes]
    lines += ["", f"Rule: a category drifts when \"live - offline >= -{settings.tolerance:g}\" is rejected at family-wise "
              f"level {settings.alpha:g} (one-sided t test of the unpaired difference, Holm over the "
              f"{sum(r.tested for r in rows)} tested categories); tested from {settings.min_live} live prompts and an "
              "offline estimate with a standard error. Intervals are 95% t intervals clustered by prompt "
              "(components/evaluation/drift.py)."]
    return "\n".join(lines) + "\n"


def drift_png(rows: Sequence[CategoryDrift], settings: DriftSettings) -> bytes | None:
    """Live (coloured: red when it drifted) and offline (grey) per category, each with its 95% interval
    (a mean without an interval is drawn as a hollow marker)."""
    shown = [r for r in rows if math.isfinite(r.live.mean) or math.isfinite(r.offline.mean)]
    if not shown:
        return None
    figure = _new_figure(6.4, 0.5 * len(shown) + 1.4)
    ax = figure.subplots()
    for y, r in enumerate(reversed(shown)):
        for estimate, offset, colour, label in ((r.offline, 0.15, "0.45", "offline (champion's evaluation)"),
                                                (r.live, -0.15, "tab:red" if r.drift else "tab:blue", "live")):
            if not math.isfinite(estimate.mean):
                continue
            if estimate.has_interval:
                ax.errorbar(estimate.mean, y + offset, xerr=[[estimate.mean - estimate.ci_low],
                            [estimate.ci_high - estimate.mean]], fmt="o", color=colour, capsize=3,
                            label=label if y == 0 else None)
            else:
                ax.plot(estimate.mean, y + offset, "o", mfc="none", color=colour, label=label if y == 0 else None)
    ax.set_yticks(range(len(shown)), [r.category + (" (drift)" if r.drift else "") for r in reversed(shown)])
    ax.set_xlabel("judge score (1-10), 95% CI")
    ax.set_title(f"live vs offline per category (tolerance {settings.tolerance:g})", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(figure)
