"""The split step: held-out categories, strategies, controls, the test set."""

import json

import pytest

from selfguided.components.data.categories import CATEGORIES
from selfguided.components.data.jsonl import DataError, read_jsonl
from selfguided.components.model.prompting import CRITERIA, TOP_SCORES, format_prompt, inference_prompt
from selfguided.components.steps.split import SplitConfig, in_eval, mark_and_cap, run_split_step, split_records


def _scored(n_per_category=10):
    rows = []
    for category in CATEGORIES:
        for i in range(n_per_category):
            s = 3 + i % 7
            rows.append({"id": f"{category}-{i}", "category": category, "instruction": f"{category} 과제 {i}",
                         "input": "", "output": "답", "scores": {c: s for c in CRITERIA}, "score": float(s),
                         "judge": {"model": "m"}})
    rows[0]["scores"], rows[0]["score"], rows[0]["error"] = None, None, "timeout"
    return rows


def test_held_out_categories_never_reach_training_and_the_split_is_stable():
    scored = _scored()
    result = split_records(scored, SplitConfig(eval_fraction=0.2))
    for rows in result.train.values():
        assert not {r["category"] for r in rows} & {"cover_letter", "poem"}
    assert {r["category"] for r in result.held_out} == {"cover_letter", "poem"}
    again = split_records(list(reversed(scored)), SplitConfig(eval_fraction=0.2))
    assert {r["id"] for r in again.eval} == {r["id"] for r in result.eval}
    train_ids = {r["id"] for r in result.train["unscored"]}
    assert not train_ids & {r["id"] for r in result.eval}
    assert in_eval("x", 0.0, "s") is False


def test_condition_strategy_puts_scores_in_the_prompt_and_asks_for_top_scores():
    result = split_records(_scored(), SplitConfig(strategy="condition", eval_fraction=0.0))
    guided = {r["id"]: r for r in result.train["self_guided"]}
    plain = {r["id"]: r for r in result.train["unscored"]}
    assert "목표 평가" in guided["blog-1"]["prompt"] and "유용성 4" in guided["blog-1"]["prompt"]
    assert "목표 평가" not in plain["blog-1"]["prompt"]
    assert plain["blog-1"]["prompt"] == format_prompt("blog 과제 1")
    assert "유용성 10" in inference_prompt("질문", "self_guided", "condition")
    assert inference_prompt("질문", "unscored", "condition") == format_prompt("질문")
    assert TOP_SCORES == {c: 10 for c in CRITERIA}


def test_filter_strategy_keeps_records_at_or_above_the_threshold_and_says_what_it_left_out():
    result = split_records(_scored(), SplitConfig(strategy="filter", filter_threshold=7, eval_fraction=0.0))
    kept = {r["id"] for r in result.train["self_guided"]}
    assert kept and all(int(i.rsplit("-", 1)[1]) % 7 >= 4 for i in kept)
    assert "목표 평가" not in result.train["self_guided"][0]["prompt"]
    assert result.excluded["self_guided"]["score below 7"] > 0
    with pytest.raises(DataError, match="arm 'self_guided' has no training records"):
        split_records(_scored(), SplitConfig(strategy="filter", filter_threshold=10, eval_fraction=0.0))


def test_unscorable_records_stay_in_the_baseline_but_not_in_the_guided_arm():
    scored = _scored()
    scored[20]["scores"], scored[20]["score"] = None, None
    result = split_records(scored, SplitConfig(eval_fraction=0.0))
    assert scored[20]["id"] in {r["id"] for r in result.train["unscored"]}
    assert scored[20]["id"] not in {r["id"] for r in result.train["self_guided"]}
    assert result.excluded["self_guided"]["could not be scored"] == 1


def test_filter_control_is_a_random_subset_with_the_filtered_sets_size_and_category_mix():
    from collections import Counter

    config = SplitConfig(arms=["unscored", "self_guided", "control"], strategy="filter", filter_threshold=7,
                         eval_fraction=0.0)
    result = split_records(_scored(), config)
    guided, control = result.train["self_guided"], result.train["control"]
    assert Counter(r["category"] for r in control) == Counter(r["category"] for r in guided)
    assert {r["id"] for r in control} != {r["id"] for r in guided}  # drawn without regard to scores
    assert "목표 평가" not in control[0]["prompt"] and "random subset" in result.control
    assert split_records(_scored(), config).train["control"] == control  # seeded


def test_condition_control_shuffles_the_scores_across_the_same_records():
    config = SplitConfig(arms=["self_guided", "control"], strategy="condition", eval_fraction=0.0)
    result = split_records(_scored(), config)
    guided, control = result.train["self_guided"], result.train["control"]
    assert [r["id"] for r in control] == [r["id"] for r in guided]
    assert [r["response"] for r in control] == [r["response"] for r in guided]
    assert sorted(r["prompt"].split("목표 평가:\n")[1] for r in control) == \
        sorted(r["prompt"].split("목표 평가:\n")[1] for r in guided)
    assert sum(a["prompt"] != b["prompt"] for a, b in zip(control, guided)) > len(guided) / 2
    assert "shuffled" in result.control


def test_without_a_questions_file_the_test_set_is_the_held_out_seed_records(tmp_path):
    scored = _scored()
    (tmp_path / "scored.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in scored), "utf-8")
    config = SplitConfig(eval_fraction=0.3)
    result, questions = run_split_step(str(tmp_path / "scored.jsonl"), "", str(tmp_path / "train"),
                                       str(tmp_path / "q.jsonl"), str(tmp_path / "report.md"), config)
    ids = {q["question_id"] for q in questions}
    assert ids == {r["id"] for r in result.held_out + result.eval}
    assert {r["id"] for r in scored if r["category"] in ("cover_letter", "poem")} <= ids
    assert all(q["seen"] is (q["category"] not in ("cover_letter", "poem")) for q in questions)
    assert read_jsonl(tmp_path / "q.jsonl") == questions
    assert "(unseen)" in (tmp_path / "report.md").read_text(encoding="utf-8")

def test_max_eval_questions_caps_each_category_deterministically():
    questions = [{"question_id": f"{c}-{i}", "category": c, "turns": ["q"]} for c in ("blog", "poem") for i in range(9)]
    capped = mark_and_cap(questions, SplitConfig(max_eval_questions=4), trained={"blog"})
    assert [sum(q["category"] == c for q in capped) for c in ("blog", "poem")] == [4, 4]
    assert capped == mark_and_cap(list(questions), SplitConfig(max_eval_questions=4), trained={"blog"})
    assert {q["seen"] for q in capped if q["category"] == "poem"} == {False}


@pytest.mark.parametrize("bad", [dict(arms=["both"]), dict(strategy="sample"), dict(eval_fraction=1.0)])
def test_bad_split_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        split_records(_scored(), SplitConfig(**bad))
