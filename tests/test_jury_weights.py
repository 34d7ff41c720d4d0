"""Judges that learn from the editors: jury weights fit on one half of the labels, checked on the
other, used by the jury.

Simulated as in test_review_calibrate (a hidden truth per answer; `fair`, length-rewarding `long`
and `noisy` judges; editors grade truth + their own noise in whole points), plus a panel with no
bad judge, where the weights must not hurt. The figures compared are agreement with the editors
on the labels the weights were NOT fit on.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from llm_server import FakeOpenAI
from test_review_calibrate import _editor, _panel

from selfguided.components.judging.calibration import JURY, LabelledItem
from selfguided.components.judging.jury import Jury, JuryConfig, JuryUsage, jury_row, parse_judges
from selfguided.components.judging.jury_weights import (
    WEIGHTED, fit_weights, format_weights, learn_weights, parse_weights, split_half, weighted_score, weights_markdown)
from selfguided.components.judging.rules import JudgeIdentity


def _items(n: int, rng: random.Random, panel=_panel) -> list[LabelledItem]:
    items = []
    for i in range(n):
        truth, length = rng.uniform(2, 9), rng.random()
        judges = panel(truth, length, rng)
        items.append(LabelledItem(f"t{i}", ("poem", "news", "blog")[i % 3], float(_editor(truth, rng)), judges,
                                  jury=sum(judges.values()) / len(judges)))
    return items


def _all_fair(truth: float, length: float, rng: random.Random) -> dict[str, float]:
    """No bad judge: three fair judges of different noise."""
    clip = lambda v: float(min(10.0, max(1.0, v)))  # noqa: E731
    return {"a": clip(truth + rng.gauss(0, 0.5)), "b": clip(truth + rng.gauss(0, 0.7)),
            "c": clip(truth + rng.gauss(0, 0.9))}


def test_weights_parse_format_and_refuse_what_would_mislead():
    assert parse_weights("fair=2, long=0,noisy=2") == {"fair": 0.5, "long": 0.0, "noisy": 0.5}
    assert parse_weights("") == {} and format_weights({"b": 0.25, "a": 0.75}) == "a=0.75,b=0.25"
    for bad, message in (("fair", "write judge=weight"), ("fair=x", "not a number"), ("a=1,a=2", "twice"),
                         ("a=-1", ">= 0"), ("a=0,b=0", "all 0"), ("a=nan", ">= 0")):
        with pytest.raises(ValueError, match=message):
            parse_weights(bad)
    specs = parse_judges("fair,long,noisy")
    with pytest.raises(ValueError, match="give every judge a weight"):
        JuryConfig(specs, weights={"fair": 1.0, "long": 0.0})
    with pytest.raises(ValueError, match="apply to the mean"):
        JuryConfig(specs, aggregate="median", weights={"fair": 1, "long": 0, "noisy": 1})


def test_the_split_is_stratified_deterministic_and_disjoint():
    items = _items(61, random.Random(1))
    fit, check = split_half(items, seed=4)
    assert abs(len(fit) - len(check)) <= 1 and not {i.item_id for i in fit} & {i.item_id for i in check}
    assert {i.category for i in fit} == {i.category for i in check} == {"poem", "news", "blog"}
    assert [i.item_id for i in split_half(list(reversed(items)), seed=4)[0]] == [i.item_id for i in fit]
    assert [i.item_id for i in split_half(items, seed=5)[0]] != [i.item_id for i in fit]


def test_the_weighted_jury_agrees_with_editors_on_held_out_labels_as_well_as_the_best_judge():
    """30 simulated review rounds of 60 labels: weights fit on 30, agreement measured on the other 30.
    The issue's measured problem: the equal-weight jury is worse than the fair judge alone."""
    rng = random.Random(30)
    rows = {name: [] for name in ("fair", "long", "noisy", JURY, WEIGHTED)}
    shipped, long_excluded = 0, 0
    for round_ in range(30):
        learned = learn_weights(_items(60, rng), seed=round_, n_resamples=10, min_labels=1000)
        assert learned.fit_items == 30 and learned.check.n_items == 30
        shipped += learned.shipped
        long_excluded += learned.weights["long"] == 0
        for name in rows:
            est = learned.agreement(name)
            rows[name].append((est["mad"], est["spearman"]))
    mean = {name: np.mean(v, axis=0) for name, v in rows.items()}
    assert mean[JURY][0] > mean["fair"][0] + 0.25 and mean[JURY][1] < mean["fair"][1] - 0.08  # the problem
    assert mean[WEIGHTED][0] <= mean["fair"][0] + 0.02 and mean[WEIGHTED][1] >= mean["fair"][1] - 0.01
    assert shipped == 30 and long_excluded >= 28


def test_with_no_bad_judge_the_weights_do_not_hurt():
    """Three fair judges: equal weights are right. What the jury then grades with (the weights if
    shipped, else equal) is scored on 200 fresh answers, not on the labels that decided it."""
    rng = random.Random(31)
    deployed, equal, best = [], [], []
    for round_ in range(30):
        learned = learn_weights(_items(60, rng, _all_fair), seed=round_, n_resamples=10, min_labels=1000)
        used = learned.weights if learned.shipped else {j: 1 / 3 for j in "abc"}
        fresh = _items(200, rng, _all_fair)
        human = np.array([it.human for it in fresh])
        mad = lambda w: float(np.mean(np.abs([weighted_score(it.judges, w) for it in fresh] - human)))  # noqa: E731
        deployed.append(mad(used))
        equal.append(mad({j: 1 / 3 for j in "abc"}))
        best.append(min(mad({j: 1.0}) for j in "abc"))
    assert np.mean(deployed) <= np.mean(best)  # at least as close as the best single judge
    assert np.mean(deployed) <= np.mean(equal) + 0.02  # and close to equal weights, the right answer here


def test_spearman_is_scipys_with_ties():
    from scipy.stats import spearmanr

    from selfguided.components.judging.calibration import rank_correlation as _spearman

    rng = np.random.default_rng(5)
    for _ in range(100):
        a = rng.integers(1, 11, int(rng.integers(3, 60))).astype(float)
        b = np.clip(a + rng.normal(0, 3, a.size).round(), 1, 10)
        if np.ptp(a) and np.ptp(b):
            assert _spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_too_few_labels_keep_equal_weights_and_say_so():
    learned = learn_weights(_items(6, random.Random(2)), n_resamples=20)
    assert learned.weights == pytest.approx({"fair": 1 / 3, "long": 1 / 3, "noisy": 1 / 3})
    assert fit_weights([], ["a", "b"]) == {"a": 0.5, "b": 0.5}
    text = weights_markdown(learned)
    assert "Fit on 3 labelled answers; checked on 3 others" in text and "--jury-weights" not in text


def test_the_markdown_shows_before_and_after_and_the_parameter_to_pass():
    learned = learn_weights(_items(80, random.Random(3)), n_resamples=100)
    text = weights_markdown(learned)
    assert learned.shipped and f"`--jury-weights {format_weights(learned.weights)}`" in text
    assert "| jury | 40 |" in text and f"| {WEIGHTED} | 40 |" in text and "**Shipped**" in text
    assert json.loads(json.dumps(learned.to_dict()))["jury_weights"] == format_weights(learned.weights)


def test_a_weighted_jury_scores_the_weighted_mean_and_names_its_weights(tmp_path):
    """Through the judge step's own entry (the pipeline's `jury_weights` parameter as it arrives)."""
    from selfguided.components.steps.judge import judge_answers

    with FakeOpenAI(judge="fair") as fair, FakeOpenAI(judge="length") as long:
        questions = [{"question_id": f"q{i}", "category": "poem", "turns": [f"시를 써 주세요 {i}"]} for i in range(4)]
        answers = [{"question_id": f"q{i}", "model_id": "m", "choices": [{"index": 0, "turns": [
            f"답변입니다 (품질 {3 + i}). " + "아주 긴 문장입니다. " * (8 - 2 * i)]}]} for i in range(4)]
        judgments, _, usage = judge_answers(questions, answers, "fair", judges=f"fair@{fair.base_url},long@{long.base_url}",
                                            cache=str(tmp_path / "c"), weights="fair=3,long=1")
        with pytest.raises(ValueError, match="give every judge a weight"):
            judge_answers(questions, answers, "fair", judges=f"fair@{fair.base_url},long@{long.base_url}",
                          weights="fair=1")
    assert usage.identity.model == "jury-mean(fair=0.75,long=0.25)"
    assert JuryUsage.from_json(usage.to_json()) == usage and usage.as_judge().identity == usage.identity
    for row in judgments:
        by = {e["judge"]["model"]: e["scores"]["overall"] for e in row["judges"]}
        assert row["score"] == pytest.approx(0.75 * by["fair"] + 0.25 * by["long"], abs=2e-3)
    assert len({round(r["score"] - sum(e["scores"]["overall"] for e in r["judges"]) / 2, 3) for r in judgments}) > 1


def test_a_weighted_jury_without_any_weighted_verdict_fails_the_item_named():
    jury = JuryConfig(parse_judges("fair,long"), weights={"fair": 1, "long": 0}, min_judges=1)
    identity = JudgeIdentity("jury-mean(fair=1,long=0)", "judge-single", "1", "single")
    entry = lambda model, score: {"judge": {"model": model}, "scores": None if score is None else {  # noqa: E731
        "helpfulness": score, "relevance": score, "accuracy": score, "detail": score, "overall": score},
        "rationale": "", "error": None if score is not None else "timeout", "repeat": 0}
    row = jury_row({"question_id": "q"}, [entry("fair", None), entry("long", 9.0)], jury, ["fair", "long"], identity)
    assert row["scores"] is None and "none with a weight above 0" in row["error"] and "fair: timeout" in row["error"]
    row = jury_row({"question_id": "q"}, [entry("fair", 4.0), entry("long", 9.0)], jury, ["fair", "long"], identity)
    assert row["score"] == 4.0 and Jury.__name__ == "Jury"
