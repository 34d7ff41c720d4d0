"""Row summaries, paired differences, metric names and the reports, on constructed judgments."""

from __future__ import annotations

import base64
import json
import math
import re
import sys

import numpy as np
import pytest
from evaluation_rows import CATS, JUDGE, judgment, make_row, shared_diffs
from scipy import stats

from selfguided.components.evaluation.figures import report_figures
from selfguided.components.evaluation.gate import evaluate_run
from selfguided.components.evaluation.metrics import categories_from_metrics, metrics_for_row, point_metrics
from selfguided.components.evaluation.paired import Comparison, compare_rows, default_comparisons
from selfguided.components.evaluation.report import ReportSection, report_html, report_markdown
from selfguided.components.evaluation.rows import RowJudgments, category_means, parse_row
from selfguided.components.evaluation.statistics import holm
from selfguided.components.evaluation.summaries import ordered_rows, usd_per_1000_answers


# --- per-row figures ---------------------------------------------------------------------------------------


def test_row_means_overall_is_mean_of_category_means_and_failures_are_counted():
    js = [judgment("a1", "poem", 8.0, seen=False), judgment("a2", "poem", 6.0, seen=False),
          judgment("a3", "poem", None, error="judge timeout", seen=False), judgment("a4", "poem", -1, seen=False),
          judgment("a5", "poem", 0, seen=False), judgment("a6", "poem", 11, seen=False),
          *[judgment(f"b{i}", "blog", 4.0 + (i % 2), seen=True) for i in range(6)],
          judgment("c1", "news", 7.0, seen=True, criteria={"helpfulness": 9, "relevance": 7, "accuracy": 6, "detail": 6})]
    row = RowJudgments("tiny/unscored", "trained", js, base_model="tiny", arm="unscored", judge=JUDGE)
    cmp = compare_rows([row], comparisons=[])
    s = cmp.row("tiny/unscored")
    assert cmp.categories == ["poem", "blog", "news"]  # the paper's order, whatever the judgments' order
    assert s.categories["poem"].overall.mean == pytest.approx(7.0)
    assert s.categories["poem"].overall.n == 2 and s.categories["poem"].n_failed == 4 and s.n_failed == 4
    # a score outside 1-10 is a failure with its reason, not a number
    assert s.failure_reasons == {"judge error": 1, "no score (-1, FastChat's mark of a failed judgment)": 1,
                                 "outside the judge's scale 1-10": 2}
    assert "Failed judgments, counted and not scored: tiny/unscored: judge error (1), " in report_markdown(cmp)
    assert s.overall.mean == pytest.approx((7.0 + 4.5 + 7.0) / 3)  # not the item mean 5.56
    assert s.categories["news"].scores["helpfulness"].mean == 9
    assert not s.categories["news"].overall.has_interval  # one question: no CI
    assert not s.categories["poem"].overall.has_interval  # two: too few for one
    assert s.unseen.mean == pytest.approx(7.0) and s.seen.mean == pytest.approx((4.5 + 7.0) / 2)
    blog = s.categories["blog"].overall
    assert blog.ci_low < 4.5 < blog.ci_high
    # the judge step's point figures are the same numbers, in the same order
    means, overall = category_means(js)
    assert list(means) == cmp.categories and overall == pytest.approx(s.overall.mean)
    assert means["poem"]["overall"] == pytest.approx(7.0) and means["poem"]["n"] == 2
    metrics = point_metrics(means, overall)
    assert metrics["judge/overall"] == pytest.approx(s.overall.mean) and "judge/news/helpfulness" in metrics
    assert categories_from_metrics(metrics) == ["poem", "blog", "news"]


def test_a_criterion_outside_the_scale_fails_the_judgment():
    bad = judgment("q1", "blog", 6.0, criteria={"helpfulness": 6, "relevance": 6, "accuracy": 6, "detail": 12})
    parsed = parse_row(RowJudgments("r", "base", [bad, judgment("q2", "blog", 5.0)]))
    assert list(parsed.items) == [("q2", 1)] and parsed.failed == {"blog": 1}
    assert parsed.failure_reasons == {"detail: score 12 is outside the judge's scale 1-10": 1}


def test_length_correlations_and_cost():
    js = [judgment(f"q{i}", "blog", 3.0 + i * 0.5, chars=100 + 40 * i + (i % 3) * 15) for i in range(10)]
    teacher = RowJudgments("teacher/gpt-4o-mini", "teacher", js, judge=JUDGE, answers=200, llm_cost_usd=0.3)
    trained = RowJudgments("tiny/self_guided", "trained", js, base_model="tiny", arm="self_guided", judge=JUDGE,
                           answers=200, generate_seconds=720)
    cmp = compare_rows([teacher, trained], comparisons=[], gpu_hour_usd=2.0)
    s = cmp.row("teacher/gpt-4o-mini")
    chars = [j["answer_chars"] for j in js]
    scores = [j["score"] for j in js]
    assert s.mean_chars == pytest.approx(np.mean(chars))
    assert s.length_pearson.r == pytest.approx(stats.pearsonr(chars, scores).statistic)
    assert s.length_spearman.r == pytest.approx(stats.spearmanr(chars, scores).statistic)
    assert s.usd_per_1000_answers == pytest.approx(0.3 / 200 * 1000)
    assert cmp.row("tiny/self_guided").usd_per_1000_answers == pytest.approx(720 / 3600 * 2.0 / 200 * 1000)
    assert usd_per_1000_answers(trained, 0.0)[0] is None
    assert usd_per_1000_answers(RowJudgments("b", "base", js, answers=10), 2.0)[0] is None  # seconds unknown


# --- paired differences --------------------------------------------------------------------------------------


def test_paired_difference_figures_and_multi_turn_clustering():
    a = make_row("tiny/self_guided", arm="self_guided", shift=0.8, seed=1, turns=2, questions=8)
    b = make_row("tiny/unscored", arm="unscored", seed=2, turns=2, questions=8)
    a.judgments[0] = {**a.judgments[0], "score": None, "scores": None, "error": "parse error"}
    cmp = compare_rows([a, b], comparisons=default_comparisons([a, b]))
    pair = cmp.pair("tiny/self_guided", "tiny/unscored")
    assert pair.label == "tiny: self_guided vs unscored"
    assert pair.n_pairs == 6 * 8 * 2 - 1 and pair.only_a == 0 and pair.only_b == 1
    for category in CATS:
        d = shared_diffs(a, b, category)
        diff = pair.categories[category]
        assert diff.estimate.mean == pytest.approx(d.mean())
        assert diff.estimate.n_questions == 8
        assert (diff.wins, diff.ties, diff.losses) == (int((d > 1e-6).sum()), int((abs(d) < 1e-6).sum()),
                                                       int((d < -1e-6).sum()))
    overall = pair.overall.estimate
    assert overall.mean == pytest.approx(np.mean([pair.categories[c].estimate.mean for c in CATS]))
    assert overall.ci_low > 0.3 and overall.ci_high < 1.3
    assert pair.categories["blog"].p_holm == pytest.approx(
        holm([pair.categories[c].p_value for c in CATS])[CATS.index("blog")])
    # the same comparison computed twice is identical (deterministic)
    again = compare_rows([a, b], comparisons=default_comparisons([a, b])).pair("tiny/self_guided", "tiny/unscored")
    assert again.overall.to_dict() == pair.overall.to_dict()


def test_length_controlled_difference_exposes_a_verbosity_win():
    # the judge likes length (+1.5 per log-unit) in every row; self_guided only writes 1.8x longer
    b = make_row("tiny/unscored", arm="unscored", seed=2, noise=0.3, length_effect=1.5)
    same_length = make_row("tiny/control", arm="control", seed=3, noise=0.3, length_effect=1.5)
    verbose = make_row("tiny/self_guided", arm="self_guided", seed=4, noise=0.3, length_scale=1.8, length_effect=1.5)
    cmp = compare_rows([verbose, same_length, b], comparisons=default_comparisons([verbose, same_length, b]))
    win = cmp.pair("tiny/self_guided", "tiny/unscored").overall
    assert win.estimate.ci_low > 0.5  # judged better...
    assert win.length_ratio > 1.5
    lc = win.length_controlled
    assert lc.ci_low < 0 < lc.ci_high  # ...but not at equal length
    assert abs(lc.mean) < 0.3


def test_default_comparisons_and_unknown_rows():
    rows = [make_row("tiny/unscored", arm="unscored", questions=2, cats=("blog",)),
            make_row("tiny/self_guided", arm="self_guided", questions=2, cats=("blog",)),
            make_row("tiny/control", arm="control", questions=2, cats=("blog",)),
            make_row("small/unscored", arm="unscored", base="small", questions=2, cats=("blog",)),
            make_row("small/self_guided", arm="self_guided", base="small", questions=2, cats=("blog",)),
            make_row("small/self_guided#1", arm="self_guided", base="small", questions=2, cats=("blog",), replicate=1),
            make_row("champion/v3", "champion", questions=2, cats=("blog",))]
    assert default_comparisons(rows) == [
        (["tiny/self_guided"], "tiny/unscored", "tiny: self_guided vs unscored"),
        (["tiny/control"], "tiny/unscored", "tiny: control vs unscored"),
        (["small/self_guided", "small/self_guided#1"], "small/unscored", "small: self_guided vs unscored")]
    with pytest.raises(ValueError, match="nope"):
        compare_rows(rows, comparisons=[("nope", "tiny/unscored", "x")])
    with pytest.raises(ValueError, match="at least 2"):
        compare_rows(rows, comparisons=[], min_category_questions=1)


# --- outputs -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_rows():
    return [make_row("tiny/unscored", arm="unscored", seed=2, generate_seconds=300),
            make_row("tiny/self_guided", arm="self_guided", shift=0.7, seed=3, generate_seconds=320, length_scale=1.3),
            make_row("tiny/control", arm="control", shift=0.1, seed=4, generate_seconds=310),
            make_row("base/<tiny>", "base", shift=-2.0, seed=5, generate_seconds=290),
            make_row("champion/v3", "champion", shift=0.3, seed=6, generate_seconds=330),
            make_row("teacher/gpt-4o-mini", "teacher", base="", shift=1.8, seed=7, llm_cost_usd=0.05)]


@pytest.fixture(scope="module")
def run_evaluation(run_rows):
    return evaluate_run(run_rows, gpu_hour_usd=2.5)


@pytest.fixture(scope="module")
def run_comparison(run_evaluation):
    return run_evaluation.comparison


def test_comparison_json_round_trip(run_comparison):
    text = json.dumps(run_comparison.to_dict(), allow_nan=False)
    again = Comparison.from_dict(json.loads(text))
    assert again.to_dict() == run_comparison.to_dict()
    assert report_markdown(again) == report_markdown(run_comparison)
    assert [r.row for r in ordered_rows(again.rows)] == [
        "teacher/gpt-4o-mini", "base/<tiny>", "tiny/control", "tiny/unscored", "tiny/self_guided", "champion/v3"]


def test_metrics_for_row_are_valid_mlflow_names(run_comparison):
    metrics = metrics_for_row(run_comparison, "tiny/self_guided")
    for key in ("judge/poem/overall", "judge/poem/overall_ci_low", "judge/poem/overall_ci_high", "judge/poem/detail",
                "judge/poem/n", "judge/overall", "judge/overall_ci_low", "judge/overall_ci_high",
                "delta/poem/overall", "delta/poem/overall_ci_low", "delta/poem/overall_ci_high",
                "delta/overall", "delta/overall_ci_low", "delta/overall_ci_high", "cost/usd_per_1000_answers"):
        assert key in metrics, key
    assert metrics["judge/overall"] == pytest.approx(run_comparison.row("tiny/self_guided").overall.mean)
    assert all(re.fullmatch(r"[\w\-. /]+", k) and all(math.isfinite(v) for v in metrics.values()) for k in metrics)
    assert not any(k.startswith("delta/") for k in metrics_for_row(run_comparison, "tiny/unscored"))

    odd = [judgment("q1", "story/long", 5.0), judgment("q2", "story/long", 6.0), judgment("q3", "시 쓰기", 6.0),
           judgment("q4", "a.b:c", 4.0)]
    cmp = compare_rows([RowJudgments("r", "base", odd)], comparisons=[])
    keys = set(metrics_for_row(cmp, "r"))
    assert {"judge/story_long/overall", "judge/시 쓰기/overall", "judge/a_b_c/overall"} <= keys


def test_markdown_report_has_ci_cells_unseen_marks_and_the_decision(run_evaluation, run_comparison):
    decision = run_evaluation.decision
    text = report_markdown(run_comparison, decision)
    header = next(line for line in text.splitlines() if line.startswith("| row | kind"))
    assert "cover_letter (unseen)" in header and "poem (unseen)" in header and "| blog |" in header
    assert re.search(r"\| teacher/gpt-4o-mini \| teacher \| \d\.\d\d ± \d\.\d\d \|", text)
    assert "## Paired differences" in text and "challenger vs champion" in text and "W/T/L" in text
    assert "## Answer length" in text and "## Cost" in text and "$" in text
    assert "## Promotion gate" in text and decision.reasons[0] in text


def test_html_report_renders_tables_plots_and_escapes(run_evaluation, run_comparison, tmp_path):
    decision = run_evaluation.decision
    page = report_html(run_comparison, decision, extra=[ReportSection("Judges", "agreement", "<p>alpha 0.8</p>")])
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 5  # rows, pairs, length, power, cost
    assert "<h2>Judges</h2>\n<p>alpha 0.8</p>" in page
    assert page.count('<img alt="') == 3 and "data:image/png;base64," in page
    assert "base/&lt;tiny&gt;" in page and "base/<tiny>" not in page
    assert "± " in page and "(unseen)" in page
    figures = report_figures(run_comparison)
    assert set(figures) == {"forest", "length", "cost"}
    for png in figures.values():
        assert png.startswith(b"\x89PNG")
    first = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(first).startswith(b"\x89PNG")
    assert "matplotlib.pyplot" not in sys.modules  # the Agg canvas only, no global pyplot state


def test_duplicate_judgments_and_bad_rows_are_clear_errors():
    with pytest.raises(ValueError, match="judged twice"):
        compare_rows([RowJudgments("r", "base", [judgment("q", "blog", 5.0), judgment("q", "blog", 6.0)])],
                     comparisons=[])
    with pytest.raises(ValueError, match="row_kind"):
        RowJudgments("r", "student", [])
    assert holm([]) == []
