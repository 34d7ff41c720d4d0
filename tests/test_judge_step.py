"""The judge step: the offline judge's behaviour, the Korean rule, summaries and reports."""

import json

import pytest

from selfguided.components.data.categories import CATEGORIES
from selfguided.components.data.jsonl import DataError
from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME, heuristic_scores, judge_offline
from selfguided.components.judging.rules import mean_of_criteria as mean_score
from selfguided.components.model.prompting import CRITERIA
from selfguided.components.evaluation.judge_summary import JudgeSummary
from selfguided.components.steps.judge import judge_report_html, judge_report_markdown, run_judge_step

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


def test_offline_judge_grades_garbled_output_at_the_bottom():
    """Broken characters (U+FFFD from a token cut inside a UTF-8 character, control characters) are
    what a model that never learned the language writes, e.g. an untuned random-init base: graded
    at the bottom however long and Korean the text looks. A stray one costs little."""
    strong = mean_score(heuristic_scores("blog", REQUEST, STRONG_BLOG)[0])
    words = STRONG_BLOG.split(" ")
    garbled_text = " ".join(w + "\ufffd" for w in words) + "\x04"  # about 1 character in 7 broken
    garbled, why = heuristic_scores("blog", REQUEST, garbled_text)
    one_stray = mean_score(heuristic_scores("blog", REQUEST, STRONG_BLOG + "\ufffd")[0])
    assert mean_score(garbled) <= strong - 5.5 and "garbled 1.00" in why
    assert strong - 1.0 < one_stray < strong


def test_offline_judge_is_deterministic_and_in_range():
    a = heuristic_scores("news", "기사", "본문입니다.")
    assert a == heuristic_scores("news", "기사", "본문입니다.")
    assert set(a[0]) == set(CRITERIA) and all(1 <= v <= 10 for v in a[0].values())

def test_reference_answers_reach_the_questions_of_the_reference_categories(tmp_path):
    from selfguided.components.data.questions import attach_references, load_reference_answers

    (tmp_path / "ref.jsonl").write_text(json.dumps({"question_id": 2, "model_id": "gpt-4",
                                                    "choices": [{"index": 0, "turns": ["4", "6"]}]}) + "\n", "utf-8")
    questions = [{"question_id": 1, "category": "writing", "turns": ["q"], "reference": ["not used"]},
                 {"question_id": 2, "category": "math", "turns": ["2+2?", "3+3?"]},
                 {"question_id": 3, "category": "reasoning", "turns": ["q"], "reference": ["inline"]}]
    attached = attach_references(questions, load_reference_answers(tmp_path / "ref.jsonl"), ["math", "reasoning"])
    assert [q.get("reference") for q in attached] == [None, ["4", "6"], ["inline"]]
    rows = judge_offline(attached[1:2], _answers(attached[1:2], "답은 4", "답은 6"))
    assert "vs ~1 expected" in rows[0]["judgment"]  # the reference's length is the offline judge's target


def _answers(questions, *texts):
    return [{"question_id": q["question_id"], "answer_id": str(q["question_id"]), "model_id": "tiny/unscored",
             "choices": [{"index": 0, "turns": list(texts)}], "tstamp": 0.0} for q in questions]


def _judge_step(tmp_path, questions, answers, **options) -> JudgeSummary:
    """The judge step on question and answer files, its summary read back from its file."""
    from selfguided.components.data.jsonl import write_jsonl

    write_jsonl(tmp_path / "q.jsonl", questions)
    write_jsonl(tmp_path / "a.jsonl", answers)
    out = {name: str(tmp_path / name) for name in ("j.jsonl", "s.json", "r.md", "r.html")}
    returned = run_judge_step(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"), OFFLINE_JUDGE_NAME,
                              out["j.jsonl"], out["s.json"], out["r.md"], out["r.html"], **options)
    summary = JudgeSummary.read(out["s.json"])
    assert summary == returned  # the file holds the whole summary, typed
    return summary


def test_judge_summary_has_every_category_and_the_metric_names_of_the_design(tmp_path):
    questions = [{"question_id": i, "category": c, "turns": [f"{c} 글을 써 주세요"]} for i, c in enumerate(CATEGORIES)]
    judgments = judge_offline(questions, _answers(questions, STRONG_BLOG))
    assert all(j["judge"]["model"] == OFFLINE_JUDGE_NAME and set(j["scores"]) == set(CRITERIA) for j in judgments)
    summary = _judge_step(tmp_path, questions, _answers(questions, STRONG_BLOG), row_kind="trained",
                          base_model="tiny", arm="unscored", replicate=2)
    assert (summary.row, summary.base_model, summary.arm, summary.replicate) == ("tiny/unscored#2", "tiny", "unscored", 2)
    assert summary.judge.label == "offline-heuristic/heuristic-v1" and summary.jury.size == 1
    assert list(summary.categories) == list(CATEGORIES)
    for category in CATEGORIES:
        for name in (*CRITERIA, "overall"):
            assert f"judge/{category}/{name}" in summary.metrics
    assert summary.metrics["judge/overall"] == pytest.approx(
        sum(v["overall"] for v in summary.categories.values()) / len(CATEGORIES), abs=1e-3)
    report = judge_report_markdown(summary)
    assert "| news | 1 |" in report and summary.row in report
    assert "Judge: `offline-heuristic/heuristic-v1`" in report and "it does not measure quality" in report
    assert "data:image/png;base64," in judge_report_html(summary)


def test_a_judge_summary_file_that_is_not_one_says_which_field(tmp_path):
    questions = [{"question_id": 1, "category": "poem", "turns": ["시를 써 주세요"]}]
    _judge_step(tmp_path, questions, _answers(questions, STRONG_BLOG), row_kind="base", base_model="tiny")
    data = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    for broken, message in (({**data, "arm": None}, "field 'arm' is missing"),
                            ({**data, "metrics": {}}, "has no 'judge/overall'"),
                            ({**data, "row_kind": "mystery"}, "row_kind must be one of"),
                            ({k: v for k, v in data.items() if k != "jury"}, "not a judge summary"),
                            ({**data, "judge": {**data["judge"], "model": "gpt-4o"}}, "not the jury's identity")):
        (tmp_path / "bad.json").write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(DataError, match=message):
            JudgeSummary.read(tmp_path / "bad.json")


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


def test_the_judge_steps_figures_are_compares_on_the_same_judgments():
    """One rule of what counts (judging.rules.judgment_problem): a judgment that gives no criteria,
    or an overall off the 1-10 scale, is counted or dropped by the judge step exactly as compare does."""
    from selfguided.components.evaluation.gate import evaluate_run
    from selfguided.components.evaluation.rows import RowJudgments

    judgments = [{"question_id": f"q{i}", "turn": 1, "category": "poem", "score": 4.0 + i,
                  "scores": {c: 4.0 + i for c in CRITERIA}, "error": None} for i in range(5)]
    judgments.append({"question_id": "q5", "turn": 1, "category": "poem", "score": 9.0, "error": None})  # no criteria
    judgments.append({"question_id": "q6", "turn": 1, "category": "poem", "score": 11.0,
                      "scores": {c: 11.0 for c in CRITERIA}, "error": None})  # off the scale
    from registry_fixtures import jury_of

    summary = JudgeSummary.of_judgments(judgments, jury_of(), row_kind="trained", base_model="tiny", arm="unscored")
    evaluation = evaluate_run([RowJudgments("tiny/unscored", "trained", judgments, base_model="tiny", arm="unscored")])
    compared = evaluation.comparison.rows[0].categories["poem"].overall
    assert summary.n_judged == compared.n == 6
    assert summary.categories["poem"]["overall"] == round(compared.mean, 3)
    assert summary.categories["poem"]["helpfulness"] == 6.0  # over the five that give it
