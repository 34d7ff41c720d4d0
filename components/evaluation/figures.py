"""The report's plots (matplotlib on the Agg canvas, no pyplot state; imported only when a page is drawn).

`forest`: paired differences per category with their 95% CIs, coloured when the interval excludes 0
(a category with too few questions for an interval shows its mean in grey, uncoloured); `length`:
score against answer length; `cost`: cost against quality.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np

from selfguided.components.evaluation.paired import Comparison
from selfguided.components.evaluation.summaries import column_label, ordered_rows

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
            credible = est.has_interval and (est.ci_low > 0 or est.ci_high < 0)
            colour = ("tab:green" if est.mean > 0 else "tab:red") if credible else "0.35" if est.has_interval else "0.65"
            overall = category == "overall"
            if math.isfinite(est.ci_low):
                ax.plot([est.ci_low, est.ci_high], [y, y], color=colour, lw=3 if overall else 1.8,
                        solid_capstyle="butt")
            ax.plot(est.mean, y, marker="D" if overall else "o", ms=8 if overall else 6, color=colour,
                    mfc=colour if est.has_interval else "none")
            labels.append(f"{column_label(category, comparison.seen.get(category))}  (n={est.n_questions})")
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
    figure.suptitle("Paired differences per category (green/red: CI excludes 0; hollow: too few questions for "
                   "an interval)", fontsize=11)
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
