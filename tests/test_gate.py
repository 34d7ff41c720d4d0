"""The promotion gate: its rules on constructed rows, and its error rates by simulation with the shipped code."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from evaluation_rows import CATS, JUDGE, make_row

from selfguided.components.evaluation.decision import GateDecision, PromotionGate
from selfguided.components.evaluation.gate import decide_promotion, evaluate_run
from selfguided.components.evaluation.paired import compare_rows
from selfguided.components.evaluation.rows import RowJudgments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gate_simulation import LAYOUTS, clopper_pearson, promotion_rate  # noqa: E402


def test_gate_promotes_a_clear_margin_and_quotes_its_figures():
    champion = make_row("champion/v3", "champion", seed=10)
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=1.0, seed=11)
    decision = decide_promotion(challenger, champion, PromotionGate())
    assert decision.promote, decision.reasons
    assert re.match(r"overall paired difference \+\d\.\d\d \[95% CI \+\d\.\d\d, \+\d\.\d\d\] against the champion row "
                    r"over 60 shared questions \(60 \(question, turn\) pairs\); one-sided 98% lower bound \+\d\.\d\d "
                    r"\(alpha 0\.02\) > min_improvement 0\.00", decision.reasons[0]), decision.reasons[0]
    assert decision.figures["n_questions"] == 60 and decision.figures["mode"] == "paired"
    json.dumps(decision.to_dict(), allow_nan=False)
    # the gate's figures are the report's figures: one computation
    cmp = compare_rows([challenger, champion], comparisons=[("tiny/self_guided", "champion/v3", "challenger vs champion")])
    assert decision.figures["overall_difference"] == cmp.pairs[0].overall.estimate.to_dict()


def test_the_bound_is_split_over_the_candidate_arms():
    champion = make_row("champion/v3", "champion", seed=10)
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=1.0, seed=11)
    one = decide_promotion(challenger, champion)
    two = decide_promotion(challenger, champion, n_candidates=2)
    assert two.figures["overall_alpha"] == pytest.approx(0.01)
    assert two.figures["overall_lower_bound"] < one.figures["overall_lower_bound"]
    assert "(alpha 0.02 / 2 candidate arms)" in two.reasons[0]


def test_min_paired_questions_counts_questions_not_turns():
    champion = make_row("champion/v3", "champion", seed=1, questions=5, cats=CATS[:2], turns=2)
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=3.0, seed=2, questions=5, cats=CATS[:2], turns=2)
    decision = decide_promotion(challenger, champion, PromotionGate(min_paired_questions=20))
    assert not decision.promote  # 20 (question, turn) pairs, but 10 questions
    assert decision.reasons[0].startswith("only 10 shared questions (20 scored (question, turn) pairs)")


def test_identical_models_are_never_promoted():
    champion = make_row("champion/v3", "champion", seed=5)
    twin = RowJudgments("tiny/self_guided", "trained", [dict(j) for j in champion.judgments], base_model="tiny",
                        arm="self_guided", judge=JUDGE)
    decision = decide_promotion(twin, champion)
    assert not decision.promote
    figures = decision.figures["overall_difference"]
    assert (figures["mean"], figures["ci_low"], figures["ci_high"], figures["se"]) == (0.0, None, None, 0.0)
    n = figures["n_questions"]
    assert decision.reasons[0].startswith(f"overall paired difference +0.00 (n={n}, all alike: no spread to build an "
                                          "interval from)")
    assert "cannot show an improvement" in decision.reasons[0]


def test_a_challenger_better_by_the_same_amount_on_every_question_is_decided_by_the_exact_sign_test():
    """+1.00 on every question is a spread of 0: no interval (never a width-0 one), but not "no evidence"
    either: the exact sign test gives 2^-60 (issue 28). Five such questions (2^-5 = 0.031) are too few."""
    champion = make_row("champion/v3", "champion", seed=5)
    shifted = [dict(j, score=j["score"] + 1.0, scores={**j["scores"], "overall": j["score"] + 1.0})
               for j in champion.judgments]
    better = RowJudgments("tiny/self_guided", "trained", shifted, base_model="tiny", arm="self_guided", judge=JUDGE)
    decision = decide_promotion(better, champion)
    assert decision.promote, decision.reasons
    assert "all alike: no spread" in decision.reasons[0] and "exact sign test p 8.67e-19 (2^-60) < 0.02" in decision.reasons[0]
    assert decision.figures["overall_difference"]["ci_low"] is None
    few = decide_promotion(RowJudgments("tiny/self_guided", "trained", shifted[:5], base_model="tiny", arm="self_guided",
                                        judge=JUDGE),
                           RowJudgments("champion/v3", "champion", champion.judgments[:5], judge=JUDGE),
                           PromotionGate(min_paired_questions=5))
    assert not few.promote and "p 0.0312 (2^-5) is not below 0.02" in few.reasons[0]


def test_zero_spread_in_a_category_is_never_read_as_certainty():
    """A voting category whose 5 questions are all -0.50: the old rule read it as p = 0 (credibly worse);
    the sign test gives 2^-5 = 0.031 (not below 0.02 after Holm). Under the non-inferiority rule it
    blocks because it does not show it is within -0.25, not because of a width-0 interval."""
    champion = make_row("champion/v3", "champion", seed=80, cats=CATS[:3], noise=0.5)
    judgments = [dict(j) for j in champion.judgments]
    challenger = []
    for j in judgments:
        delta = -0.5 if j["category"] == CATS[0] else 1.5
        challenger.append(dict(j, score=j["score"] + delta, scores={**j["scores"], "overall": j["score"] + delta}))
    poem_five = [j for j in challenger if j["category"] != CATS[0]] + [j for j in challenger if j["category"] == CATS[0]][:5]
    keep = {(j["question_id"], j.get("turn", 1)) for j in poem_five}
    bar = RowJudgments("champion/v3", "champion", [j for j in judgments if (j["question_id"], j.get("turn", 1)) in keep],
                       judge=JUDGE)
    # spread elsewhere so the overall has an interval
    rng = __import__("numpy").random.default_rng(3)
    for j in poem_five:
        if j["category"] != CATS[0]:
            j["score"] += float(rng.normal(0, 0.3))
            j["scores"] = {**j["scores"], "overall": j["score"]}
    row = RowJudgments("tiny/self_guided", "trained", poem_five, base_model="tiny", arm="self_guided", judge=JUDGE)
    old = decide_promotion(row, bar, PromotionGate(category_rule="credibly_worse"))
    cat = old.figures["categories"][CATS[0]]
    assert cat["n_questions"] == 5 and cat["se"] == 0.0
    assert cat["p_worse_holm"] == pytest.approx(3 * 0.5 ** 5)  # Holm over 3 categories, not 0
    assert old.promote, old.reasons
    new = decide_promotion(row, bar)
    assert not new.promote
    assert any(r.startswith(f"category {CATS[0]} does not show it is within -0.25") for r in new.reasons)


def test_a_category_that_does_not_show_it_is_within_tolerance_blocks_and_says_what_it_needs():
    champion = make_row("champion/v3", "champion", seed=30, noise=0.3)
    challenger = make_row("tiny/self_guided", arm="self_guided", shift=1.0, shifts={"poem": -2.5}, seed=31, noise=0.3)
    decision = decide_promotion(challenger, champion)
    assert decision.figures["overall_lower_bound"] > 0  # better overall ...
    assert not decision.promote  # ... but not at poem's expense
    reason = next(r for r in decision.reasons if r.startswith("category poem "))
    assert reason.startswith("category poem does not show it is within -0.25 of the champion row (it must not be worse "
                             "than -0.25 at 60% confidence: its one-sided 60% upper bound must lie above -0.25): -"), reason
    point = decide_promotion(challenger, champion, PromotionGate(noninferiority_alpha=0.5))
    assert any(r.startswith("category poem does not show it is within -0.25 of the champion row (its paired difference "
                            "must lie above -0.25): -") for r in point.reasons), point.reasons
    assert "questions would show it for a category truly no worse (80% power)" in reason
    old = decide_promotion(challenger, champion, PromotionGate(category_rule="credibly_worse"))
    assert not old.promote and any(r.startswith("category poem is credibly worse than -0.25") and "Holm" in r
                                   for r in old.reasons)
    # a category a little worse than the tolerance is no longer waved through for lack of evidence
    slight = make_row("tiny/self_guided", arm="self_guided", shift=1.0, shifts={"poem": -1.4}, seed=31, noise=1.5)
    noisy_champion = make_row("champion/v3", "champion", seed=30, noise=1.5)
    assert not decide_promotion(slight, noisy_champion).promote


def test_small_categories_do_not_vote_and_do_not_crash():
    """14/14/1/1/1 (the pipeline's eval_fraction 0.1 on the bundled seed) crashed the old gate."""
    layout = {"blog": 14, "novel": 14, "scenario": 1, "news": 1, "poem": 1}

    def row(name, kind, shift, seed, **kw):
        rows = [make_row(name, kind, shift=shift, seed=seed + i, cats=(c,), questions=n, **kw).judgments
                for i, (c, n) in enumerate(layout.items())]
        return RowJudgments(name, kind, [j for js in rows for j in js], base_model="tiny", judge=JUDGE, **kw)

    champion = row("champion/v3", "champion", 0.0, 40)
    challenger = row("tiny/self_guided", "trained", 1.5, 50, arm="self_guided")
    decision = decide_promotion(challenger, champion, PromotionGate(min_paired_questions=5))
    votes = {c: f["votes"] for c, f in decision.figures["categories"].items()}
    assert votes == {"poem": False, "blog": True, "novel": True, "scenario": False, "news": False}
    small = next(r for r in decision.reasons if "do not vote" in r)
    assert re.search(r"poem \(n=1: down to -\d\.\d\d\)", small), small  # the largest regression it could hide
    assert decision.figures["categories"]["poem"]["could_hide"] < decision.figures["categories"]["poem"]["mean"]
    assert math.isfinite(decision.figures["overall_lower_bound"])


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
    logged = {"judge/overall": 5.0, "judge/overall_ci_low": 4.7, "judge/overall_ci_high": 5.3,
              **{f"judge/{c}/overall": 5.0 for c in CATS}}
    decision = decide_promotion(challenger, None, fallback_champion_metrics=logged, fallback_champion_judge=JUDGE)
    assert decision.promote, decision.reasons
    # the champion's own uncertainty is carried: its se from the logged interval widens the bound
    assert decision.figures["champion_se"] == pytest.approx(0.3 / 1.959964, rel=1e-4)
    diff = decision.figures["fallback_difference"]
    assert diff["se"] ** 2 == pytest.approx(decision.figures["challenger_overall"]["se"] ** 2 + (0.3 / 1.959964) ** 2)
    # a logged overall without an interval is not a known constant: nothing is promoted
    bare = {k: v for k, v in logged.items() if "_ci_" not in k}
    no_ci = decide_promotion(challenger, None, fallback_champion_metrics=bare, fallback_champion_judge=JUDGE)
    assert not no_ci.promote and any("its own uncertainty is unknown" in r for r in no_ci.reasons)
    assert decision.reasons[0].startswith("fallback: the champion could not be re-evaluated")
    assert decision.figures["mode"] == "fallback_unpaired"
    worse = decide_promotion(challenger, None, fallback_champion_metrics={**logged, "judge/overall": 7.5},
                             fallback_champion_judge=JUDGE)
    assert not worse.promote and worse.reasons[0].startswith("fallback")
    assert not decide_promotion(challenger, None, fallback_champion_metrics={}, fallback_champion_judge=JUDGE).promote
    other_judge = decide_promotion(challenger, None, fallback_champion_metrics=logged, fallback_champion_judge="gpt-4o/v1")
    assert not other_judge.promote and "not comparable" in other_judge.reasons[1]
    # A logged champion whose judge nobody recorded may have been graded by another judge: no promotion.
    unknown_judge = decide_promotion(challenger, None, fallback_champion_metrics=logged)
    assert not unknown_judge.promote and "not recorded" in unknown_judge.reasons[1]


def test_fallback_never_promotes_one_seed_of_several():
    """Unpaired against logged metrics the gate sees one row: it cannot carry the seed-to-seed
    variance, so replicates are never promoted through the fallback (a lucky seed would be)."""
    seeds = [make_row(f"tiny/self_guided#{r}", arm="self_guided", shift=1.0 + r, seed=70 + r) for r in range(2)]
    logged = {"judge/overall": 5.0, **{f"judge/{c}/overall": 5.0 for c in CATS}}
    decision = decide_promotion(seeds, None, fallback_champion_metrics=logged, fallback_champion_judge=JUDGE)
    assert not decision.promote and "2 training replicates cannot be compared unpaired" in decision.reasons[1]


def test_the_first_champion_must_beat_its_base_paired():
    base = make_row("base/tiny", "base", shift=1.0, seed=60)
    worse = make_row("tiny/self_guided", arm="self_guided", shift=-1.0, seed=61)
    decision = decide_promotion(worse, None, base=base)
    assert not decision.promote and decision.figures["mode"] == "first_champion"
    assert decision.reasons[0].startswith("no champion yet: the first champion must beat its untuned base")
    assert "against its untuned base row" in decision.reasons[1]
    better = make_row("tiny/self_guided", arm="self_guided", shift=2.0, seed=62)
    assert decide_promotion(better, None, base=base).promote
    refused = decide_promotion(better, None)
    assert not refused.promote and "no base row" in refused.reasons[0]


def test_evaluate_run_compares_the_challenger_once_against_its_bar():
    rows = [make_row("tiny/unscored", arm="unscored", seed=1), make_row("tiny/self_guided", arm="self_guided", shift=1.0,
                                                                         seed=2),
            make_row("tiny/control", arm="control", shift=3.0, seed=3), make_row("base/tiny", "base", shift=-3.0, seed=4)]
    evaluation = evaluate_run(rows)
    assert evaluation.challenger.row == "tiny/self_guided" and evaluation.challenger.n_candidates == 2  # control: never
    assert [p.label for p in evaluation.comparison.pairs] == [
        "tiny: self_guided vs unscored", "tiny: control vs unscored", "challenger vs base (first champion)"]
    assert evaluation.decision.promote
    assert evaluation.decision.figures["overall_difference"] == evaluation.comparison.pairs[-1].overall.estimate.to_dict()
    # a trained row worse than the base is never the first champion
    low = [make_row("tiny/unscored", arm="unscored", shift=-1.0, seed=1), make_row("base/tiny", "base", seed=4)]
    assert not evaluate_run(low).decision.promote


def test_replicates_average_the_seeds_and_widen_the_interval():
    champion = make_row("champion/v3", "champion", seed=70)
    seeds = [make_row(f"tiny/self_guided#{r}", arm="self_guided", shift=0.6 + s, seed=71 + r, replicate=r)
             for r, s in enumerate((-0.4, 0.4))]
    evaluation = evaluate_run([*seeds, champion])
    assert evaluation.challenger.rows == ["tiny/self_guided#0", "tiny/self_guided#1"]
    assert evaluation.challenger.row == "tiny/self_guided#1"  # the better seed is the one registered
    pair = evaluation.comparison.pairs[-1]
    assert pair.replicates == 2 and pair.overall.seed_se > 0.3
    single = compare_rows([seeds[0], champion], comparisons=[("tiny/self_guided#0", "champion/v3", "x")]).pairs[0]
    assert pair.overall.estimate.half_width > single.overall.estimate.half_width
    assert "2 training seeds averaged" in evaluation.decision.reasons[0]
    # the printed interval and the decision's bound take the seed term's df at different limits: the
    # bound's are fewer (seed-conservative), the interval's ends are the printed ones, and the reason says so
    close = [make_row(f"tiny/self_guided#{r}", arm="self_guided", shift=0.6 + s, seed=71 + r, replicate=r)
             for r, s in enumerate((-0.1, 0.1))]
    evaluation = evaluate_run([*close, champion])
    pair = evaluation.comparison.pairs[-1]
    est, decision = pair.overall.estimate, pair.overall.decision
    assert 1.0 <= pair.overall.decision_df < est.df and decision.df == pair.overall.decision_df
    assert (decision.ci_low, decision.ci_high, decision.se) == (est.ci_low, est.ci_high, est.se)
    assert evaluation.decision.figures["overall_lower_bound"] == pytest.approx(decision.lower_bound(0.02))
    assert decision.lower_bound(0.02) < est.lower_bound(0.02)
    assert f"the seed term's df at its conservative limit: {pair.overall.decision_df:.1f}" in evaluation.decision.reasons[0]
    again = type(pair.overall).from_dict(json.loads(json.dumps(pair.overall.to_dict())))
    assert again.decision_df == pair.overall.decision_df
    # one training seed: nothing differs
    assert math.isnan(single.overall.decision_df) and single.overall.decision is single.overall.estimate


def test_gate_decision_round_trip():
    decision = GateDecision(False, ["x"], {"n_pairs": 3, "ci": float("nan")})
    again = GateDecision.from_dict(json.loads(json.dumps(decision.to_dict(), allow_nan=False)))
    assert again.reasons == ["x"] and again.figures == {"n_pairs": 3, "ci": None}


# --- error rates, by simulation with the shipped gate (benchmarks/gate_simulation.py has the full table) ---


def test_false_promotion_is_held_at_2_5_percent_in_every_layout_the_pipeline_produces():
    """No true difference, the layouts of issue 18 (1- and 2-question categories, 80 x 2), one and two
    candidate arms: 150 runs each (fixed seed), 1200 in all. Pooled, the rate must not exceed 2.5% by
    more than its sampling error (the upper end of its 95% CI must reach down to 2.5%, and the point
    estimate stays below 3.5%); no single cell may reach the old rates (8-50%)."""
    total = promoted = 0
    for i, (layout, turns) in enumerate(LAYOUTS.values()):
        for arms in (1, 2):
            k, n = promotion_rate(layout, turns, [0.0] * arms, reps=150, seed=1800 + 10 * i + arms)
            assert k / n <= 0.07, (layout, arms, k, n)
            promoted, total = promoted + k, total + n
    low, high = clopper_pearson(promoted, total)
    assert promoted / total <= 0.035 and low <= 0.025, (promoted, total, low, high)


def test_power_at_one_point_on_the_bundled_sample_layout():
    k, n = promotion_rate((7,) * 6, 1, [1.0], reps=60, seed=7)
    assert k / n >= 0.9
