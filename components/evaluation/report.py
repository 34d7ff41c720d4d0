"""The evaluation report: the paper's Table 4.1 with uncertainty, paired differences, power, length,
cost and the gate's decision, as Markdown (printed by `selfguided run`, logged to MLflow) and as a
self-contained HTML page with the plots of `figures` (shown in the Kubeflow UI).

Other sections (the jury's agreement, `judges_section`; the editors' verdict on the judges) come as
`ReportSection`s passed in `extra`, placed before the promotion gate; a `notice` (a judge's
disclaimer) goes right under the title.
"""

from __future__ import annotations

import base64
import functools
import html
import math
from dataclasses import dataclass
from typing import Sequence

from selfguided.components.evaluation.agreement import JuryAgreement
from selfguided.components.evaluation.decision import GateDecision
from selfguided.components.evaluation.paired import Comparison, PairedComparison
from selfguided.components.evaluation.power import power_lines, power_table
from selfguided.components.evaluation.statistics import Estimate, no_interval_reason, simulated_coverage
from selfguided.components.evaluation.summaries import Correlation, RowSummary, column_label, ordered_rows


@dataclass(frozen=True)
class ReportSection:
    """A section another part of the platform adds to the report: a title, Markdown, and HTML
    (escaped Markdown text in a <pre> when empty)."""

    title: str
    markdown: str
    html: str = ""


def table_section(title: str, text: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> ReportSection:
    """A section of a sentence and a table, as Markdown and as HTML (the report's own tables)."""
    return ReportSection(title, "\n".join([text, "", *_md_table(header, rows)]),
                         f'<p class="note">{html.escape(text)}</p>' + _html_table(header, rows))


def _signed(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.2f}"


def _too_few(est: Estimate) -> str:
    return no_interval_reason(est)


def mean_cell(est: Estimate | None) -> str:
    if est is None or est.n == 0 or not math.isfinite(est.mean):
        return "-"
    if not est.has_interval:
        return f"{est.mean:.2f} ({_too_few(est)})"
    return f"{est.mean:.2f} ± {est.half_width:.2f}"


def difference_cell(est: Estimate | None) -> str:
    if est is None or est.n == 0:
        return "-"
    if not est.has_interval:
        return f"{_signed(est.mean)} ({_too_few(est)})"
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
    header = ["row", "kind"] + [column_label(c, comparison.seen.get(c)) for c in comparison.categories] + ["overall"]
    header += ["seen", "unseen"] if has_seen else []
    header += ["n", "failed"]
    ordered = ordered_rows(comparison.rows)
    body, estimates = [], []
    for r in ordered:
        ests = [r.categories[c].overall if c in r.categories else None for c in comparison.categories] + [r.overall]
        ests += [r.seen, r.unseen] if has_seen else []
        kind = r.row_kind + (f" ({r.arm})" if r.arm and r.row_kind == "trained" else "")
        body.append([r.row, kind] + [mean_cell(e) for e in ests] + [str(r.overall.n), str(r.n_failed)])
        estimates.append([None, None, *ests, None, None])
    return header, body, ordered, estimates


def _spread(diff) -> str:
    """Question and seed parts of the standard error: `se q / se seed` (seeds only with replicates)."""
    est = diff.estimate
    if not math.isfinite(est.se):
        return "-"
    if not math.isfinite(diff.seed_se):
        return f"{est.se:.2f}"
    return f"{math.sqrt(max(0.0, est.se ** 2 - diff.seed_se ** 2)):.2f} / {diff.seed_se:.2f}"


def _pair_header(comparison: Comparison) -> list[str]:
    seeds = any(p.replicates > 1 for p in comparison.pairs)
    return ["comparison", "category", "questions (pairs)", "diff [95% CI]", "p (Holm)",
            "SE questions / seeds" if seeds else "SE", "W/T/L", "length A/B", "length-controlled [95% CI]"]


def _pair_rows(pair: PairedComparison) -> list[list[str]]:
    out = []
    for category, diff in [*pair.categories.items(), ("overall", pair.overall)]:
        p = _p_text(diff.p_holm) if category != "overall" else f"{_p_text(diff.p_value)} (unadj.)"
        ratio = "-" if not math.isfinite(diff.length_ratio) else f"{diff.length_ratio:.2f}x"
        lc = difference_cell(diff.length_controlled) + (" †" if diff.length_controlled and diff.length_extrapolated else "")
        label = pair.label + (f" ({pair.replicates} seeds)" if pair.replicates > 1 else "")
        out.append([label, category, f"{diff.estimate.n_questions} ({diff.estimate.n})", difference_cell(diff.estimate), p,
                    _spread(diff), f"{diff.wins}/{diff.ties}/{diff.losses}", ratio, lc])
    return out
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
    return [[r.row, str(r.answers or r.n_judgments), _money(r.usd_per_1000_answers), r.cost_basis, mean_cell(r.overall)]
            for r in ordered]


@functools.lru_cache(maxsize=64)
def _coverage(layout: tuple[int, ...], min_questions: int) -> float:
    return simulated_coverage(layout, reps=400, min_questions=min_questions)


def _coverage_text(comparison: Comparison) -> str:
    """The simulated coverage of this run's intervals: per category size shown, and the overall."""
    m = int(comparison.settings.get("min_category_questions", 5))
    sizes = sorted({s.overall.n_questions for r in comparison.rows for s in r.categories.values()
                    if s.overall.n_questions >= m})
    layout = tuple(sorted((max((r.categories[c].overall.n_questions for r in comparison.rows if c in r.categories),
                               default=0) for c in comparison.categories), reverse=True))
    layout = tuple(n for n in layout if n)
    parts = [f"n={n}: {_coverage((n,), m):.1%}" for n in sizes[:6]]
    if len(layout) > 1:
        parts.append(f"overall on this layout ({'/'.join(map(str, layout))} questions): {_coverage(layout, m):.1%}")
    return "; ".join(parts)


def _method_note(comparison: Comparison) -> str:
    m = comparison.settings.get("min_category_questions", 5)
    coverage = _coverage_text(comparison)
    return ("Cells: mean ± half-width of the 95% t interval on question means (the turns of a question are one "
            "cluster; cluster-robust variance, n−1 df). A category with fewer than "
            f"{m} questions shows its mean only (too few for an interval) and does not vote in the gate. Overall = "
            "mean of the category means; its variance carries every category (own variance from "
            f"{m} questions on, the pooled within-category variance below; Welch-Satterthwaite df). Paired differences "
            "are A − B on shared (question, turn) items; with several training seeds, of the seeds' mean, the "
            "seed-to-seed variance added. p: t test, Holm-adjusted across the categories with an interval; W/T/L per "
            "item; length-controlled = intercept of the difference regressed on the log-length difference (the "
            "difference expected at equal answer length). "
            + (f"Simulated coverage of these 95% intervals (judge-like integer scores, no true difference, 400 runs): "
               f"{coverage}." if coverage else ""))


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


def _failures(comparison: Comparison) -> str:
    """Why judgments failed, per row (a failed judgment is counted, never scored)."""
    parts = [f"{r.row}: " + ", ".join(f"{reason} ({n})" for reason, n in sorted(r.failure_reasons.items()))
             for r in ordered_rows(comparison.rows) if r.failure_reasons]
    return ("Failed judgments, counted and not scored: " + "; ".join(parts) + ".") if parts else ""


def _gate_pair(comparison: Comparison) -> PairedComparison | None:
    return next((p for p in reversed(comparison.pairs) if p.label.startswith("challenger vs")), None)


def _power(comparison: Comparison, decision: GateDecision | None) -> tuple[list[str], list[list[str]], str] | None:
    pair = _gate_pair(comparison)
    if pair is None or not pair.n_pairs:
        return None
    alpha = float((decision.figures if decision else {}).get("overall_alpha") or 0.025)
    header, rows = power_table(power_lines(pair, overall_alpha=alpha))
    note = (f"{pair.label}: the smallest true difference this run detects with 80% power (one-sided t test; overall at "
            f"alpha {alpha:.4g}, the gate's level, per category at 0.025) and the questions, in the same proportions, "
            "a difference of 0.5 points would need" + (f" with {pair.replicates} training seeds" if pair.replicates > 1
                                                        else "") + ". `selfguided plan-eval` plans a run.")
    return header, rows, note


def _decision_lines(decision: GateDecision) -> list[str]:
    verdict = "**promoted**" if decision.promote else "**not promoted**"
    lines = [f"Challenger {decision.figures.get('challenger', '')}: {verdict}", ""]
    return lines + [f"- {reason}" for reason in decision.reasons]


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.0%}"


def judges_section(agreement: JuryAgreement) -> ReportSection:
    """The Judges section: the jury, its agreement, which row each judge would promote, judge noise,
    circularity and cost (agreement.JuryAgreement's figures)."""
    lines: list[str] = []
    if len(agreement.judges) < 2 and not agreement.noise:
        lines.append(f"One judge ({', '.join(agreement.judges)}): no agreement to measure. A jury (`--judges a,b,c`, "
                     "ideally from different model families) shows how far another judge would agree.")
        return ReportSection("Judges", "\n".join(lines))
    lines.append(f"Jury: {', '.join(agreement.judges)}; the jury's score is the {agreement.aggregate} of the judges'.")
    lines += [f"\n**Warning:** {w}" for w in agreement.warnings()]
    if len(agreement.judges) >= 2:
        categories = [c for c in agreement.alpha if c != "overall"] + ["overall"]
        pairs = list(agreement.spearman)
        lines += ["", "Agreement (Krippendorff's alpha, interval; Spearman's rho per judge pair):", "",
                  "| category | items | alpha | " + " | ".join(pairs) + " |", "|---" * (3 + len(pairs)) + "|"]
        for c in categories:
            lines.append(f"| {c} | {agreement.items.get(c, 0)} | {_num(agreement.alpha.get(c))} | "
                         + " | ".join(_num(agreement.spearman[p].get(c)) for p in pairs) + " |")
        lines += ["", "Which row each would promote: " + "; ".join(f"{j}: {r}" for j, r in agreement.picks.items())]
    if agreement.noise:
        lines += ["", "Judge noise (items graded repeatedly):", "",
                  "| judge | items | gradings per item | judge variance | item variance | share from the judge |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {n.judge} | {n.items} | {n.repeats:g} | {n.judge_variance:.3f} | {n.item_variance:.3f} | "
                  f"{_pct(n.judge_share)} |" for n in agreement.noise]
    if agreement.circularity:
        lines += ["", f"Circularity: the seed data was scored by {agreement.scoring_model}; these judges are of its "
                  "family. Gap = (self_guided - unscored) by that judge minus the same by the other judges:", "",
                  "| judge | base model | pairs | gap | 95% CI |", "|---|---|---|---|---|"]
        lines += [f"| {c.judge} | {c.base_model} | {c.pairs} | {c.gap:+.2f} | [{c.ci_low:+.2f}, {c.ci_high:+.2f}] |"
                  for c in agreement.circularity]
    if agreement.cost:
        lines += ["", "Judging cost:", "", "| judge | answers | cost (USD) | per 1000 answers |", "|---|---|---|---|"]
        lines += [f"| {j} | {c['answers']:g} | {c['cost_usd']:.4f} | {c['per_1000']:.4f} |"
                  for j, c in agreement.cost.items()]
    return ReportSection("Judges", "\n".join(lines))


def report_markdown(comparison: Comparison, decision: GateDecision | None = None,
                    extra: Sequence[ReportSection] = (), notice: str = "") -> str:
    """The paper's Table 4.1 with uncertainty, the paired differences, power, length, cost, `extra`
    sections and the gate; `notice` (e.g. a judge's disclaimer) under the title."""
    header, body, ordered, _ = _table_rows(comparison)
    lines = ["# Evaluation with uncertainty", ""] + ([f"> {notice}", ""] if notice else [])
    lines += [f"Judge: {_judges(comparison)}", ""]
    lines += _md_table(header, body)
    lines += ["", _method_note(comparison)]
    if _failures(comparison):
        lines += ["", _failures(comparison)]
    if comparison.pairs:
        lines += ["", "## Paired differences (A − B)", ""]
        lines += _md_table(_pair_header(comparison), [row for pair in comparison.pairs for row in _pair_rows(pair)])
        if _any_extrapolated(comparison):
            lines += ["", _EXTRAPOLATION_NOTE]
        for pair in comparison.pairs:
            if not pair.same_judge:
                lines += ["", f"Warning: {pair.label} compares rows judged by different judges; not comparable."]
    lines += ["", "## Answer length", ""] + _md_table(_LENGTH_HEADER, _length_rows(ordered))
    power = _power(comparison, decision)
    if power is not None:
        lines += ["", "## Power", ""] + _md_table(power[0], power[1]) + ["", power[2]]
    lines += ["", "## Cost", ""] + _md_table(_COST_HEADER, _cost_rows(ordered))
    for section in extra:
        lines += ["", f"## {section.title}", "", section.markdown.rstrip()]
    if decision is not None:
        lines += ["", "## Promotion gate", ""] + _decision_lines(decision)
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}td{white-space:normal;min-width:6em;max-width:14em}
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
    if not est.has_interval:
        return f"{_too_few(est)}; n={est.n} items"
    return f"95% CI [{est.ci_low:.3f}, {est.ci_high:.3f}], n={est.n} items, {est.n_questions} questions"


def report_html(comparison: Comparison, decision: GateDecision | None = None,
                extra: Sequence[ReportSection] = (), notice: str = "") -> str:
    """A self-contained HTML page: the tables of `report_markdown` and the plots as inline PNGs."""
    from selfguided.components.evaluation.figures import report_figures

    header, body, ordered, estimates = _table_rows(comparison)
    titles = [[_ci_title(e) for e in row] for row in estimates]
    left = [["l", "l"] + [""] * (len(header) - 2) for _ in body]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>selfguided evaluation</title>", f"<style>{_CSS}</style></head><body>",
             *([f"<p><strong>{html.escape(notice)}</strong></p>"] if notice else []),
             "<h1>Evaluation with uncertainty</h1>", f"<p>Judge: {html.escape(_judges(comparison))}</p>",
             _html_table(header, body, classes=left, titles=titles),
             f'<p class="note">{html.escape(_method_note(comparison))}</p>']
    if _failures(comparison):
        parts.append(f'<p class="note">{html.escape(_failures(comparison))}</p>')
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
                sign = "up" if est.has_interval and est.ci_low > 0 else "down" if est.has_interval and est.ci_high < 0 else ""
                classes.append(["l", "l", "", sign, "", "", "", "", ""])
                row_classes.append("overall" if category == "overall" else "")
            rows += _pair_rows(pair)
        parts += ["<h2>Paired differences (A − B)</h2>",
                  _html_table(_pair_header(comparison), rows, classes=classes, row_classes=row_classes)]
        if _any_extrapolated(comparison):
            parts.append(f'<p class="note">{html.escape(_EXTRAPOLATION_NOTE)}</p>')
        parts += [f'<p class="note">Warning: {html.escape(p.label)} compares rows judged by different judges; '
                  "not comparable.</p>" for p in comparison.pairs if not p.same_judge]
        if "forest" in figures:
            parts.append(image("forest", "forest plot of the paired differences per category"))
    parts += ["<h2>Answer length</h2>", _html_table(_LENGTH_HEADER, _length_rows(ordered))]
    if "length" in figures:
        parts.append(image("length", "score against answer length"))
    power = _power(comparison, decision)
    if power is not None:
        parts += ["<h2>Power</h2>", _html_table(power[0], power[1]), f'<p class="note">{html.escape(power[2])}</p>']
    parts += ["<h2>Cost</h2>", _html_table(_COST_HEADER, _cost_rows(ordered))]
    if "cost" in figures:
        parts.append(image("cost", "cost against quality"))
    else:
        parts.append('<p class="note">No row has a measured cost (teacher API usage, or generate time with '
                     "gpu_hour_usd &gt; 0).</p>")
    for section in extra:
        parts += [f"<h2>{html.escape(section.title)}</h2>",
                  section.html or f"<pre>{html.escape(section.markdown)}</pre>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

