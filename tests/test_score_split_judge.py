"""Score, split and judge logic: offline judge behaviour, reports, split rules, summaries."""

import json

import pytest

from selfguided.components.data import CATEGORIES, DataError, read_jsonl
from selfguided.components.steps.judge import judge_offline, judge_report_html, judge_report_markdown, summarize_judgments
from selfguided.components.judging.rules import mean_of_criteria as mean_score
from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME, heuristic_scores
from selfguided.components.model.prompting import CRITERIA, TOP_SCORES, format_prompt, inference_prompt
from selfguided.components.steps.score import run_score_step, score_offline
from selfguided.components.steps.split import SplitConfig, in_eval, mark_and_cap, run_split_step, split_records

STRONG_BLOG = (
    "오늘은 집에서 쉽게 따라 할 수 있는 베란다 텃밭 가꾸기 방법을 소개해 드릴게요. 먼저 햇빛이 잘 드는 자리를 고르는 것이 "
    "가장 중요합니다. 상추와 방울토마토처럼 키우기 쉬운 작물로 시작하면 실패가 적어요.\n흙은 배수가 잘되는 상토를 쓰고, "
    "물은 겉흙이 말랐을 때 듬뿍 주세요. 일주일에 한 번은 잎 뒷면을 살펴 벌레가 없는지 확인하는 습관도 필요합니다. "
    "수확한 상추로 비빔밥을 만들어 먹으면 그 맛이 정말 특별하답니다! 여러분도 이번 주말에 작은 화분 하나로 시작해 보세요."
)
REQUEST = "베란다 텃밭 가꾸기 방법을 소개하는 블로그 글을 써 주세요."


def test_offline_judge_ranks_a_full_answer_above_thin_off_topic_and_english_ones():
    strong = mean_score(heuristic_scores("blog", REQUEST, STRONG_BLOG)[0])
    thin = mean_score(heuristic_scores("blog", REQUEST, "텃밭은 좋아요.")[0])
    off_topic = mean_score(heuristic_scores("blog", REQUEST, "주식 투자는 장기적으로 보는 것이 중요합니다. " * 3)[0])
    english = mean_score(heuristic_scores("blog", REQUEST, "Balcony gardening is fun. Choose a sunny spot and "
                                                          "water the plants when the soil is dry. " * 3)[0])
    assert strong > 6.5
    assert strong > thin + 2 and strong > off_topic + 2 and strong > english + 2


def test_offline_judge_is_deterministic_and_in_range():
    a = heuristic_scores("news", "기사", "본문입니다.")
    assert a == heuristic_scores("news", "기사", "본문입니다.")
    assert set(a[0]) == set(CRITERIA) and all(1 <= v <= 10 for v in a[0].values())


def test_scored_records_follow_the_contract():
    record = {"id": "x", "category": "blog", "instruction": REQUEST, "input": "", "output": STRONG_BLOG}
    (scored,) = score_offline([record])
    assert {k: scored[k] for k in record} == record
    assert set(scored["scores"]) == set(CRITERIA)
    assert scored["score"] == pytest.approx(sum(scored["scores"].values()) / 4, abs=1e-3)
    assert scored["judge"]["model"] == OFFLINE_JUDGE_NAME and scored["judge"]["rationale"]


def test_score_step_writes_scored_rejects_and_a_report_that_counts_them(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text("\n".join([
        json.dumps({"id": "a", "category": "블로그", "instruction": REQUEST, "output": STRONG_BLOG}, ensure_ascii=False),
        json.dumps({"id": "b", "category": "blog", "instruction": REQUEST, "output": ""}),
    ]), encoding="utf-8")
    metrics = run_score_step(str(seed), OFFLINE_JUDGE_NAME, str(tmp_path / "s.jsonl"), str(tmp_path / "r.jsonl"),
                             str(tmp_path / "report.md"))
    assert metrics["scored"] == 1 and metrics["rejected"] == 1
    assert read_jsonl(tmp_path / "r.jsonl")[0]["line"] == 2
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "rejected as unusable input: 1" in report and f"seed.jsonl:2: empty output" in report
    assert "| blog | 1 |" in report


def test_an_llm_model_without_an_endpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    from selfguided.components.steps.score import score_records

    with pytest.raises(RuntimeError, match="selfguided-openai Secret"):
        score_records([{"id": "a"}], "gpt-4o")


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


def test_reference_answers_reach_the_questions_of_the_reference_categories(tmp_path):
    from selfguided.components.data import attach_references, load_reference_answers

    (tmp_path / "ref.jsonl").write_text(json.dumps({"question_id": 2, "model_id": "gpt-4",
                                                    "choices": [{"index": 0, "turns": ["4", "6"]}]}) + "\n", "utf-8")
    questions = [{"question_id": 1, "category": "writing", "turns": ["q"], "reference": ["not used"]},
                 {"question_id": 2, "category": "math", "turns": ["2+2?", "3+3?"]},
                 {"question_id": 3, "category": "reasoning", "turns": ["q"], "reference": ["inline"]}]
    attached = attach_references(questions, load_reference_answers(tmp_path / "ref.jsonl"), ["math", "reasoning"])
    assert [q.get("reference") for q in attached] == [None, ["4", "6"], ["inline"]]
    rows = judge_offline(attached[1:2], _answers(attached[1:2], "답은 4", "답은 6"))
    assert "vs ~1 expected" in rows[0]["judgment"]  # the reference's length is the offline judge's target


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


def _answers(questions, *texts):
    return [{"question_id": q["question_id"], "answer_id": str(q["question_id"]), "model_id": "tiny/unscored",
             "choices": [{"index": 0, "turns": list(texts)}], "tstamp": 0.0} for q in questions]


def test_judge_summary_has_every_category_and_the_metric_names_of_the_design():
    questions = [{"question_id": i, "category": c, "turns": [f"{c} 글을 써 주세요"]} for i, c in enumerate(CATEGORIES)]
    judgments = judge_offline(questions, _answers(questions, STRONG_BLOG))
    assert all(j["judge"][0] == OFFLINE_JUDGE_NAME and set(j["scores"]) == set(CRITERIA) for j in judgments)
    summary = summarize_judgments(judgments, row_kind="trained", base_model="tiny", arm="unscored",
                                  judge_model=OFFLINE_JUDGE_NAME, prompt_version="heuristic-v1")
    assert (summary["row"], summary["base_model"], summary["arm"]) == ("tiny/unscored", "tiny", "unscored")
    assert list(summary["categories"]) == list(CATEGORIES)
    for category in CATEGORIES:
        for name in (*CRITERIA, "overall"):
            assert f"judge/{category}/{name}" in summary["metrics"]
    assert summary["metrics"]["judge/overall"] == pytest.approx(
        sum(v["overall"] for v in summary["categories"].values()) / len(CATEGORIES), abs=1e-3)
    assert "| news | 1 |" in judge_report_markdown(summary)
    assert "data:image/png;base64," in judge_report_html(summary)
    assert summary["row"] in judge_report_markdown(summary)


def test_english_answers_are_flagged_and_score_lower():
    questions = [{"question_id": 1, "category": "blog", "turns": [REQUEST]}]
    english = judge_offline(questions, _answers(questions, "This is a blog post about balcony gardens. " * 8))[0]
    korean = judge_offline(questions, _answers(questions, STRONG_BLOG))[0]
    assert english["korean_penalty"] and not korean["korean_penalty"]
    assert english["score"] < korean["score"] - 2


def test_the_offline_judge_applies_the_square_root_penalty_like_the_llm_judge():
    from selfguided.components.judging.rules import apply_korean_rule

    text = "This is a blog post about balcony gardens. " * 8
    (row,) = judge_offline([{"question_id": 1, "category": "blog", "turns": [REQUEST]}],
                           _answers([{"question_id": 1}], text))
    raw, _ = heuristic_scores("blog", REQUEST, text)
    expected, overall, _, penalised = apply_korean_rule(raw, mean_score(raw), text)
    assert penalised and row["korean_penalty"]
    assert row["scores"] == expected and row["score"] == overall
    assert row["score"] == pytest.approx(mean_score(raw) ** 0.5, abs=1e-3)


def test_every_turn_is_judged_with_its_own_question():
    question = {"question_id": 1, "category": "poem", "turns": ["봄에 대한 시를 써 주세요.", "모든 행이 ㄱ으로 시작하게 고쳐 주세요."]}
    rows = judge_offline([question], _answers([question], STRONG_BLOG, "가을 하늘\n고운 바람"))
    assert [(r["turn"], r["user_prompt"]) for r in rows] == [(1, question["turns"][0]), (2, question["turns"][1])]
    assert [r["answer_chars"] for r in rows] == [len(STRONG_BLOG), len("가을 하늘\n고운 바람")]


def test_judge_rejects_answers_to_unknown_questions():
    with pytest.raises(DataError, match="question_id 7 is not among the questions"):
        judge_offline([], _answers([{"question_id": 7}], "x"))
