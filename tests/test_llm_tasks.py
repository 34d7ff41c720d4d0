"""LLM-backed scoring and judging: prompts, parsing rules, the Korean rule, and the row shapes."""

from __future__ import annotations

import json
import math

import pytest
from llm_server import FakeOpenAI, ratings_for

from selfguided.components.data.jsonl import DataError
from selfguided.components.llm.config import LLMConfig
from selfguided.components.judging.rules import KOREAN_MIN_RATIO, korean_ratio
from selfguided.components.judging.answers import load_answers
from selfguided.components.judging.llm_judge import judge_with_llm
from selfguided.components.judging.pairwise import judge_pairs
from selfguided.components.judging.prompts import load_prompt
from selfguided.components.judging.scoring import score_with_llm
from selfguided.components.judging.verdicts import parse_pair_verdict, parse_ratings
from selfguided.components.model.prompting import CRITERIA

pytestmark = pytest.mark.timeout(120)

KOREAN_POEM = "봄바람이 불어오면\n꽃잎이 흩날리고\n우리는 다시 걷는다"
ENGLISH_POEM = "When the spring wind blows, petals scatter and we walk again together."


def seed(n: int) -> list[dict]:
    return [
        {"id": f"s{i}", "category": "poem", "instruction": "봄에 대한 시를 써 주세요", "input": "",
         "output": "봄바람 " * (i + 1)}
        for i in range(n)
    ]


QUESTIONS = [
    {"question_id": 1, "category": "poem", "turns": ["봄에 대한 시를 써 주세요"]},
    {"question_id": 2, "category": "news", "turns": ["지역 축제에 대한 뉴스 기사를 써 주세요"]},
]


def answer(question_id, model: str, *texts: str) -> dict:
    return {"question_id": question_id, "answer_id": f"{model}-{question_id}", "model_id": model,
            "choices": [{"index": 0, "turns": list(texts)}], "tstamp": 0.0}


def config(server: FakeOpenAI, **overrides) -> LLMConfig:
    return LLMConfig(**{**dict(base_url=server.base_url, api_key="test", progress=False, backoff_base_s=0.01,
                               concurrency=4), **overrides})


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


# ---------------------------------------------------------------------------------------------
# Prompts, Korean rule, parsing


@pytest.mark.parametrize("prompt_id", ["score-v1", "judge-single-v1", "judge-single-multi-v1", "judge-single-ref-v1", "judge-single-multi-ref-v1", "judge-pair-v1"])
def test_prompts_are_versioned_data_with_working_templates(prompt_id):
    prompt = load_prompt(prompt_id)
    assert prompt.id == prompt_id and prompt.json_schema["strict"] is True
    fields = dict(category="poem", category_label="시", instruction="i", input="(없음)", output="o",
                  question="q", answer="a", answer_a="a", answer_b="b", conversation="c", reference="r")
    request = prompt.request(**fields)
    assert request.response_format["json_schema"] == prompt.json_schema
    assert request.text_fallback.messages[-1]["content"].endswith(prompt.output_format)
    if prompt_id.startswith("judge"):
        assert "Non-Korean answers are penalised" in prompt.system


def test_unknown_prompt_names_the_known_ones():
    with pytest.raises(DataError, match="known: answer-v1, judge-pair-v1, judge-single-multi-ref-v1, judge-single-multi-v1, judge-single-ref-v1, judge-single-v1, score-v1"):
        load_prompt("score-v9")


def test_korean_ratio_counts_hangul_among_letters():
    assert korean_ratio(KOREAN_POEM) == 1.0
    assert korean_ratio(ENGLISH_POEM) == 0.0
    assert korean_ratio("안녕 hello") == pytest.approx(2 / 7)
    assert korean_ratio("2024년 3월, AI 뉴스!") == pytest.approx(4 / 6)  # digits and punctuation ignored
    assert korean_ratio("1234 ...") == 0.0
    assert KOREAN_MIN_RATIO == 0.5


def test_parse_ratings_json_labels_and_bare_numbers():
    as_json = json.dumps({"rationale": "좋음", "helpfulness": 7, "relevance": 8, "accuracy": 6, "detail": 5})
    assert parse_ratings(as_json) == ({"helpfulness": 7, "relevance": 8, "accuracy": 6, "detail": 5}, "좋음")
    fenced = f"평가 결과입니다.\n```json\n{as_json}\n```"
    assert parse_ratings(fenced)[0]["detail"] == 5

    labelled = "논리가 탄탄합니다.\n\nHelpfulness: [[7]]\nRelevance: [[8]]\nAccuracy: [[6.5]]\nDetail: [[5]]"
    ratings, rationale = parse_ratings(labelled, with_overall=True)
    assert ratings == {"helpfulness": 7, "relevance": 8, "accuracy": 6.5, "detail": 5, "overall": 6.625}
    assert rationale == "논리가 탄탄합니다."
    korean = "유용성: [[9]]\n관련성(relevance): [[9]]\n정확성: [[8]]\n상세함: [[7]]\n종합: [[8]]"
    assert parse_ratings(korean, with_overall=True)[0]["overall"] == 8
    assert parse_ratings("점수: [[3]], [[4]], [[5]], [[6]]")[0] == dict(zip(CRITERIA, (3, 4, 5, 6)))


@pytest.mark.parametrize("text", [
    "Rating: [[7]]",  # a single Vicuna rating is not four criteria
    "Helpfulness: [[11]]\nRelevance: [[8]]\nAccuracy: [[6]]\nDetail: [[5]]",  # out of range
    "좋은 글입니다. 8점 정도 줄 수 있겠네요.",
    '{"helpfulness": 7}',
])
def test_parse_ratings_rejects(text):
    assert parse_ratings(text) is None


def test_parse_pair_verdicts():
    assert parse_pair_verdict("A가 더 낫습니다. [[A]]") == ("A", "A가 더 낫습니다.")
    assert parse_pair_verdict("형식은 [[A]] 또는 [[B]]입니다. 결론: [[B]]")[0] == "B"  # the last one counts
    assert parse_pair_verdict("비슷합니다. [[C]]")[0] == "tie"
    assert parse_pair_verdict("점수: [[8, 6]]")[0] == "A"
    assert parse_pair_verdict("점수: [[5, 5]]")[0] == "tie"
    assert parse_pair_verdict('{"rationale": "r", "winner": "tie"}') == ("tie", "r")
    assert parse_pair_verdict("잘 모르겠습니다.") is None


# ---------------------------------------------------------------------------------------------
# Scoring seed data


@pytest.mark.parametrize("mode", ["json", "text"])
def test_score_with_llm_returns_the_design_shape(server, mode):
    records = seed(6)
    scored, usage = score_with_llm(records, config(server, structured_output=mode))
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    for record, row in zip(records, scored):
        expected = {c: float(ratings_for(record["output"])[c]) for c in CRITERIA}
        assert row["scores"] == expected
        assert row["score"] == pytest.approx(sum(expected.values()) / 4)
        assert row["judge"]["model"] == "gpt-4o" and row["judge"]["prompt"] == "score"
        assert row["judge"]["prompt_version"] == "1" and row["judge"]["rationale"]
        assert "error" not in row and row["instruction"] == record["instruction"]
    assert scored[-1]["score"] > scored[0]["score"]  # the fake judge likes longer answers
    assert (usage.records, usage.done, usage.failed, usage.parse_success_rate) == (6, 6, 0, 1.0)
    assert usage.step == "score" and usage.prompt_tokens > 0 and usage.cost_usd > 0


def test_an_unparsable_answer_is_asked_once_more(server):
    server.script("garbage")
    scored, usage = score_with_llm(seed(4), config(server, concurrency=1))
    assert all(r["scores"] for r in scored)
    assert usage.reasked == 1 and usage.parse_success_rate == 0.75
    assert usage.requests_sent == 5


def test_a_record_that_cannot_be_scored_says_why(server):
    server.script("garbage", "garbage")  # the first answer and the re-ask
    [row], usage = score_with_llm(seed(1), config(server))
    assert row["scores"] is None and row["score"] is None
    assert row["error"].startswith("unparsable verdict after one re-ask")
    assert (usage.done, usage.failed) == (0, 1)

    server.fail_rate = 1.0
    [row], usage = score_with_llm(seed(1), config(server, max_attempts=2))
    assert row["scores"] is None and "server error (500)" in row["error"] and usage.failed == 1


# ---------------------------------------------------------------------------------------------
# Judging


def test_single_grading_rows_and_the_korean_penalty(server):
    answers = [answer(1, "m", KOREAN_POEM), answer(2, "m", ENGLISH_POEM)]
    rows, usage = judge_with_llm(QUESTIONS, answers, config(server))
    korean, english = rows
    assert set(korean) >= {"question_id", "model", "judge", "user_prompt", "judgment", "score", "scores",
                           "category", "turn", "tstamp", "error", "korean_penalty"}
    assert korean["judge"] == {"model": "gpt-4o", "prompt": "judge-single", "prompt_version": "1", "mode": "single"} and korean["turn"] == 1
    assert korean["model"] == "m" and korean["category"] == "poem" and korean["error"] is None
    assert KOREAN_POEM in korean["user_prompt"] and '"overall"' in korean["judgment"]
    raw = ratings_for(KOREAN_POEM)
    assert korean["score"] == raw["overall"] and not korean["korean_penalty"]
    assert korean["scores"] == {c: raw[c] for c in CRITERIA}

    raw = ratings_for(ENGLISH_POEM)
    assert english["korean_penalty"]
    assert english["score"] == pytest.approx(math.sqrt(raw["overall"]), abs=1e-3)
    assert english["scores"]["detail"] == pytest.approx(math.sqrt(raw["detail"]), abs=1e-3)
    assert usage.step == "judge" and usage.done == 2


def test_every_turn_is_judged_and_later_turns_see_the_conversation(server):
    question = {"question_id": 7, "category": "poem", "turns": ["봄에 대한 시를 써 주세요", "모든 행이 ㄱ으로 시작하게 고쳐 주세요"]}
    revised = "가을 하늘 아래\n고운 바람이 분다\n기다림은 길다"
    rows, usage = judge_with_llm([question], [answer(7, "m", KOREAN_POEM, revised)], config(server))
    first, second = rows
    assert (first["turn"], second["turn"]) == (1, 2) and usage.done == 2
    assert second["prompt"] == "judge-single-multi-v1" and second["judge"]["prompt"] == "judge-single"
    # The judge of turn 2 sees turn 1 and the model's own first answer, and grades the revision.
    prompt = second["user_prompt"]
    assert question["turns"][0] in prompt and KOREAN_POEM in prompt and question["turns"][1] in prompt
    assert second["score"] == ratings_for(revised)["overall"] and second["answer_chars"] == len(revised)


def test_questions_with_a_reference_answer_are_judged_against_it(server):
    question = {"question_id": 9, "category": "math", "turns": ["2+2는?", "그럼 3+3은?"], "reference": ["4", "6"]}
    rows, _ = judge_with_llm([question], [answer(9, "m", "답은 4입니다.", "답은 6입니다.")], config(server))
    assert [r["prompt"] for r in rows] == ["judge-single-ref-v1", "judge-single-multi-ref-v1"]
    assert "[Reference Answer]\n4\n" in rows[0]["user_prompt"] and "[Reference Answer]\n6\n" in rows[1]["user_prompt"]
    assert all(r["error"] is None for r in rows)


def test_a_failed_judgment_scores_minus_one(server):
    server.fail_rate = 1.0
    [row], usage = judge_with_llm(QUESTIONS, [answer(1, "m", KOREAN_POEM)], config(server, max_attempts=1))
    assert row["score"] == -1 and row["scores"] is None and "500" in row["error"] and usage.failed == 1


def test_pairwise_grading_swaps_positions():
    long_answer, short_answer = KOREAN_POEM + "\n" + KOREAN_POEM, "봄이다"
    answers = [answer(1, "small", long_answer), answer(2, "small", short_answer)]
    baseline = [answer(1, "ref", short_answer), answer(2, "ref", long_answer)]
    with FakeOpenAI() as server:
        rows, usage = judge_pairs(QUESTIONS, answers, baseline, config(server))
    first, second = rows
    assert (first["g1_winner"], first["g2_winner"], first["winner"]) == ("model_1", "model_1", "model_1")
    assert (second["g1_winner"], second["g2_winner"], second["winner"]) == ("model_2", "model_2", "model_2")
    assert first["model_1"] == "small" and first["model_2"] == "ref"
    assert first["judge"] == {"model": "gpt-4o", "prompt": "judge-pair", "prompt_version": "1", "mode": "pair"}
    assert first["g1_user_prompt"].index(long_answer) < first["g1_user_prompt"].index(short_answer)
    assert first["g2_user_prompt"].index(short_answer) < first["g2_user_prompt"].index(long_answer)
    assert usage.pair_consistency == 1.0 and usage.records == 2

    with FakeOpenAI(position_bias=True) as biased:  # always picks the first answer shown
        rows, usage = judge_pairs(QUESTIONS, answers, baseline, config(biased))
    assert [r["winner"] for r in rows] == ["inconsistent", "inconsistent"]
    assert usage.pair_consistency == 0.0


def test_pairwise_korean_answer_beats_a_non_korean_one(server):
    english = ENGLISH_POEM * 3  # longer, so the fake judge prefers it in both orders
    rows, _ = judge_pairs(QUESTIONS[:1], [answer(1, "small", english)], [answer(1, "ref", KOREAN_POEM)], config(server))
    [row] = rows
    assert (row["g1_winner"], row["g2_winner"]) == ("model_1", "model_1")  # the judge's own verdicts
    assert row["winner"] == "model_2"
    assert row["korean_penalty"] == {"model_1": True, "model_2": False}


def test_judge_input_errors_name_the_culprit(server, tmp_path):
    with pytest.raises(DataError, match="question_id 99 is not among the questions"):
        judge_with_llm(QUESTIONS, [answer(99, "m", KOREAN_POEM)], config(server))
    with pytest.raises(ValueError, match="needs the baseline"):
        judge_pairs(QUESTIONS, [answer(1, "m", KOREAN_POEM)], [], config(server))
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps(answer(1, "m", "x")) + "\n" + json.dumps({"question_id": 2, "model_id": "m",
                                                                          "choices": []}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"answers.jsonl:2: 'choices' must be"):
        load_answers(path)


def test_usage_metrics_log_to_mlflow(server, tmp_path):
    import mlflow

    _, usage = score_with_llm(seed(2), config(server))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        mlflow.log_metrics(usage.to_metrics())
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["llm/score/done"] == 2 and logged["llm/score/cost_usd"] == pytest.approx(usage.cost_usd)
