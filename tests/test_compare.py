"""The compare statistics: checked against scipy.stats and hand-computed cases, and the gate on constructed judgments."""

from __future__ import annotations

import base64
import json
import math
import re
import sys

import numpy as np
import pytest
from scipy import stats

from selfguided.components.evaluation.compare import (
    Comparison, GateDecision, PromotionGate, RowJudgments, bootstrap_mean_ci, compare_rows, decide_promotion,
    default_comparisons, holm, metrics_for_row, ordered_rows, report_figures, report_html, report_markdown,
    sign_flip_p_value, usd_per_1000_answers,
)
from selfguided.components.model.prompting import CRITERIA

CATS = ("cover_letter", "poem", "blog", "novel", "scenario", "news")
UNSEEN = {"cover_letter", "poem"}
JUDGE = "gpt-4o/v2"


def judgment(qid, category, score, *, turn=1, chars=500, seen=None, error=None, criteria=None):
    return {"question_id": qid, "turn": turn, "category": category, "seen": seen,
            "scores": None if score is None else (criteria or {c: score for c in CRITERIA}),
            "score": score, "answer_chars": chars, "error": error}


def quality(category: str, q: int) -> float:
    """A question's difficulty, shared by every model: what makes pairing pay."""
    return float(np.random.default_rng([CATS.index(category) if category in CATS else 99, q]).normal(0, 1.2))


def make_row(name, kind="trained", *, shift=0.0, noise=0.6, seed=0, cats=CATS, questions=10, turns=1, arm="",
             base="tiny", judge=JUDGE, shifts=None, length_effect=0.0, length_scale=1.0, **meta) -> RowJudgments:
    """Scores = question difficulty + row shift (+ per-category shift) + judge noise, clipped to 1-10."""
    rng = np.random.default_rng(seed)
    rows = []
    for category in cats:
        for q in range(questions):
            for turn in range(1, turns + 1):
                base_chars = 300 + 1000 * np.random.default_rng([CATS.index(category) if category in CATS else 99,
                                                                 q, turn, 7]).random()
                chars = base_chars * length_scale * rng.lognormal(0, 0.3)
                x = math.log(chars + 1) - math.log(base_chars + 1)
                score = 5.5 + quality(category, q) + shift + (shifts or {}).get(category, 0.0) \
                    + length_effect * x + rng.normal(0, noise)
                rows.append(judgment(f"{category}-{q}", category, float(np.clip(score, 1, 10)), turn=turn,
                                     chars=int(chars), seen=category not in UNSEEN))
    return RowJudgments(name, kind, rows, base_model=base, arm=arm, judge=judge, answers=len(rows), **meta)


def shared_diffs(a: RowJudgments, b: RowJudgments, category: str) -> np.ndarray:
    bs = {(j["question_id"], j["turn"]): j["score"] for j in b.judgments}
    return np.array([j["score"] - bs[(j["question_id"], j["turn"])] for j in a.judgments
                     if j["category"] == category and j["score"] is not None])


# --- bootstrap, p-values, Holm against scipy and hand-computed cases -----------------------------------------


def test_bootstrap_ci_equals_scipy_bootstrap_for_one_turn_per_question():
    values = np.random.default_rng(3).normal(6, 1.5, 25)  # no ties: rounding cannot flip BCa's bias count
    for method in ("BCa", "percentile"):
        ours = bootstrap_mean_ci(values, n_resamples=2000, seed=11, method=method)
        ref = stats.bootstrap((values,), np.mean, n_resamples=2000, method=method, confidence_level=0.95,
                              rng=np.random.default_rng(11)).confidence_interval
        assert ours.mean == pytest.approx(values.mean())
        assert (ours.ci_low, ours.ci_high) == pytest.approx((ref.low, ref.high), abs=1e-9)
        assert ours.n == ours.n_questions == 25


def test_clustered_bootstrap_resamples_questions_with_their_turns():
    """Two turns per question: a hand-rolled percentile cluster bootstrap gives the same interval, and
    two identical turns carry no more information than one (no false precision from turns)."""
    rng = np.random.default_rng(5)
    per_question = rng.normal(6, 1.5, 12)
    turn2 = per_question + rng.normal(0, 0.5, 12)
    values = np.concatenate([per_question, turn2])
    questions = [f"q{i}" for i in range(12)] * 2
    ours = bootstrap_mean_ci(values, questions, n_resamples=2000, seed=2, method="percentile")
    draws = np.random.default_rng(2).integers(0, 12, (2000, 12))
    sums = (per_question + turn2)[draws].sum(axis=1)
    manual = np.percentile(sums / (2 * 12), [2.5, 97.5])
    assert (ours.ci_low, ours.ci_high) == pytest.approx(tuple(manual), abs=1e-9)
    assert (ours.n, ours.n_questions) == (24, 12)

    doubled = bootstrap_mean_ci(np.concatenate([per_question, per_question]), questions, seed=4)
    single = bootstrap_mean_ci(per_question, [f"q{i}" for i in range(12)], seed=4)
    assert (doubled.mean, doubled.ci_low, doubled.ci_high) == pytest.approx((single.mean, single.ci_low, single.ci_high))
    as_if_independent = bootstrap_mean_ci(np.concatenate([per_question, per_question]), seed=4)
    assert as_if_independent.half_width < 0.8 * doubled.half_width


def test_sign_flip_p_value_hand_case_and_scipy_paired_permutation():
    # differences 1, 2, 3: of the 8 sign patterns only +++ and --- reach |mean| >= 2
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0
    rng = np.random.default_rng(8)
    a, b = rng.normal(6, 1, 12), rng.normal(5.6, 1, 12)
    ref = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                 vectorized=True, n_resamples=9999, rng=0).pvalue  # 2**12 < 9999: exact
    assert sign_flip_p_value(a - b, n_permutations=9999) == pytest.approx(ref, abs=1e-12)
    # a question's two turns flip together: the test runs on the per-question sums
    assert sign_flip_p_value([1.0 + 0.5, 2.0 - 0.5, 3.0 + 1.0]) == pytest.approx(0.25)


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.02, float("nan"), 0.01])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


# --- per-row figures ---------------------------------------------------------------------------------------


def test_row_means_overall_is_mean_of_category_means_and_failures_are_counted():
    js = [judgment("a1", "poem", 8.0, seen=False), judgment("a2", "poem", 6.0, seen=False),
          judgment("a3", "poem", None, error="judge timeout", seen=False), judgment("a4", "poem", -1, seen=False),
          *[judgment(f"b{i}", "blog", 4.0 + (i % 2), seen=True) for i in range(6)],
          judgment("c1", "news", 7.0, seen=True, criteria={"helpfulness": 9, "relevance": 7, "accuracy": 6, "detail": 6})]
    row = RowJudgments("tiny/unscored", "trained", js, base_model="tiny", arm="unscored", judge=JUDGE)
    cmp = compare_rows([row], comparisons=[])
    s = cmp.row("tiny/unscored")
    assert cmp.categories == ["poem", "blog", "news"]
    assert s.categories["poem"].overall.mean == pytest.approx(7.0)
    assert s.categories["poem"].overall.n == 2 and s.categories["poem"].n_failed == 2 and s.n_failed == 2
    assert s.overall.mean == pytest.approx((7.0 + 4.5 + 7.0) / 3)  # not the item mean 5.56
    assert s.categories["news"].scores["helpfulness"].mean == 9
    assert math.isnan(s.categories["news"].overall.ci_low)  # one question: no CI
    assert s.unseen.mean == pytest.approx(7.0) and s.seen.mean == pytest.approx((4.5 + 7.0) / 2)
    blog = s.categories["blog"].overall
    assert blog.ci_low < 4.5 < blog.ci_high


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
    # the same comparison computed twice is identical (seeded)
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
            make_row("champion/v3", "champion", questions=2, cats=("blog",))]
    assert default_comparisons(rows, challenger="small/self_guided") == [
        ("tiny/self_guided", "tiny/unscored", "tiny: self_guided vs unscored"),
        ("tiny/control", "tiny/unscored", "tiny: control vs unscored"),
        ("small/self_guided", "small/unscored", "small: self_guided vs unscored"),
        ("small/self_guided", "champion/v3", "challenger vs champion")]
    with pytest.raises(ValueError, match="nope"):
        compare_rows(rows, comparisons=[("nope", "tiny/unscored", "x")])
    with pytest.raises(ValueError, match="at least 2000"):
        compare_rows(rows, comparisons=[], n_resamples=500)


# --- the gate ----------------------------------------------------------------------------------------------


def test_gate_promotes_a_clear_margin_and_quotes_its_figures():
    champion = make_row("champion/v3", "champion", seed=10)
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=1.0, seed=11)
    decision = decide_promotion(challenger, champion, PromotionGate())
    assert decision.promote, decision.reasons
    assert re.match(r"overall paired difference \+\d\.\d\d \[95% CI \+\d\.\d\d, \+\d\.\d\d\] over 60 shared "
                    r"\(question, turn\) pairs > min_improvement 0\.00", decision.reasons[0])
    assert decision.figures["n_pairs"] == 60 and decision.figures["mode"] == "paired"
    json.dumps(decision.to_dict(), allow_nan=False)
    # the gate's figures are the report's figures for the same seed and resamples
    cmp = compare_rows([challenger, champion], comparisons=[("tiny/self_guided", "champion/v3", "challenger vs champion")])
    assert decision.figures["overall_difference"] == cmp.pairs[0].overall.estimate.to_dict()


def test_gate_does_not_promote_noise():
    """A +0.05 true difference under judge noise 1.0 (the FastChat run-to-run level is 0.16-0.2 on
    a mean) is promoted only at about the CI's one-sided error rate."""
    decisions = []
    for seed in range(16):
        champion = make_row("champion/v3", "champion", seed=100 + 2 * seed, noise=1.0)
        challenger = make_row("tiny/self_guided", arm="self_guided", shift=0.05, seed=101 + 2 * seed, noise=1.0)
        decisions.append(decide_promotion(challenger, champion))
    assert sum(d.promote for d in decisions) <= 2
    refused = next(d for d in decisions if not d.promote)
    assert "is not above min_improvement 0.00, no evidence of an improvement" in refused.reasons[0]


def test_gate_refuses_too_few_shared_pairs_and_names_the_count():
    champion = make_row("champion/v3", "champion", seed=1, questions=3, cats=CATS[:3])
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=3.0, seed=2, questions=3, cats=CATS[:3])
    decision = decide_promotion(challenger, champion, PromotionGate(min_paired_questions=20))
    assert not decision.promote
    assert "only 9 shared scored (question, turn) pairs" in decision.reasons[0]
    assert "min_paired_questions 20" in decision.reasons[0]


def test_identical_models_are_never_promoted():
    champion = make_row("champion/v3", "champion", seed=5)
    twin = RowJudgments("tiny/self_guided", "trained", [dict(j) for j in champion.judgments], base_model="tiny",
                        arm="self_guided", judge=JUDGE)
    decision = decide_promotion(twin, champion)
    assert not decision.promote
    figures = decision.figures["overall_difference"]
    assert (figures["mean"], figures["ci_low"], figures["ci_high"]) == (0.0, 0.0, 0.0)
    assert decision.reasons[0].startswith("overall paired difference +0.00 [95% CI +0.00, +0.00] over 60")


def test_a_credibly_worse_category_blocks():
    champion = make_row("champion/v3", "champion", seed=30, noise=0.3)
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=1.0, shifts={"poem": -2.5}, seed=31, noise=0.3)
    decision = decide_promotion(challenger, champion)
    assert decision.figures["overall_difference"]["ci_low"] > 0  # better overall ...
    assert not decision.promote  # ... but not at poem's expense
    assert any(r.startswith("category poem is credibly worse: paired difference -") for r in decision.reasons)


def test_a_category_without_shared_pairs_blocks():
    champion = make_row("champion/v3", "champion", seed=40)
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=1.5, seed=41, cats=CATS[:5])
    decision = decide_promotion(challenger, champion)
    assert not decision.promote
    assert any(r.startswith("categories news have no shared scored (question, turn) pairs") for r in decision.reasons)


def test_judge_mismatch_refuses():
    champion = make_row("champion/v3", "champion", seed=1, judge="gpt-4o/v1")
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=2.0, seed=2, judge="gpt-4o/v2")
    decision = decide_promotion(challenger, champion)
    assert not decision.promote
    assert "gpt-4o/v2" in decision.reasons[0] and "gpt-4o/v1" in decision.reasons[0]
    assert "not comparable" in decision.reasons[0]


def test_fallback_without_a_champion_row_says_so():
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=1.0, seed=2)
    logged = {"judge/overall": 5.0, **{f"judge/{c}/overall": 5.0 for c in CATS}}
    decision = decide_promotion(challenger, None, fallback_champion_metrics=logged)
    assert decision.promote, decision.reasons
    assert decision.reasons[0].startswith("fallback: the champion could not be re-evaluated")
    assert decision.figures["mode"] == "fallback_unpaired"
    worse = decide_promotion(challenger, None, fallback_champion_metrics={**logged, "judge/overall": 7.5})
    assert not worse.promote and worse.reasons[0].startswith("fallback")
    no_overall = decide_promotion(challenger, None, fallback_champion_metrics={})
    assert not no_overall.promote
    other_judge = decide_promotion(challenger, None, fallback_champion_metrics=logged,
                                   fallback_champion_judge="gpt-4o/v1")
    assert not other_judge.promote and "not comparable" in other_judge.reasons[1]


def test_first_champion_needs_every_category_scored():
    challenger = make_row("tiny/self_guided", arm="self_guided", seed=2, questions=2)
    decision = decide_promotion(challenger, None)
    assert decision.promote and decision.reasons[0].startswith("no champion yet")
    failed = [dict(j, score=None, scores=None, error="judge failed") if j["category"] == "news" else j
              for j in challenger.judgments]
    refused = decide_promotion(RowJudgments("tiny/self_guided", "trained", failed, judge=JUDGE), None)
    assert not refused.promote and "news" in refused.reasons[0]


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
def run_comparison(run_rows):
    return compare_rows(run_rows, comparisons=default_comparisons(run_rows, challenger="tiny/self_guided"),
                        gpu_hour_usd=2.5)


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


def test_markdown_report_has_ci_cells_unseen_marks_and_the_decision(run_rows, run_comparison):
    decision = decide_promotion(run_rows[1], run_rows[4])
    text = report_markdown(run_comparison, decision)
    header = next(line for line in text.splitlines() if line.startswith("| row | kind"))
    assert "cover_letter (unseen)" in header and "poem (unseen)" in header and "| blog |" in header
    assert re.search(r"\| teacher/gpt-4o-mini \| teacher \| \d\.\d\d ± \d\.\d\d \|", text)
    assert "## Paired differences" in text and "challenger vs champion" in text and "W/T/L" in text
    assert "## Answer length" in text and "## Cost" in text and "$" in text
    assert "## Promotion gate" in text and decision.reasons[0] in text


def test_html_report_renders_tables_plots_and_escapes(run_rows, run_comparison, tmp_path):
    decision = decide_promotion(run_rows[1], run_rows[4])
    page = report_html(run_comparison, decision)
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 4
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


def test_gate_decision_round_trip():
    decision = GateDecision(False, ["x"], {"n_pairs": 3, "ci": float("nan")})
    again = GateDecision.from_dict(json.loads(json.dumps(decision.to_dict(), allow_nan=False)))
    assert again.reasons == ["x"] and again.figures == {"n_pairs": 3, "ci": None}


def test_duplicate_judgments_and_bad_rows_are_clear_errors():
    with pytest.raises(ValueError, match="judged twice"):
        compare_rows([RowJudgments("r", "base", [judgment("q", "blog", 5.0), judgment("q", "blog", 6.0)])],
                     comparisons=[])
    with pytest.raises(ValueError, match="row_kind"):
        RowJudgments("r", "student", [])
    assert holm([]) == []
